//! The file contract, in one place: every regular file a checkpointed process writes to, or
//! maps shared writable, gets a policy (`snapshot`, `append`, `keep`; see [`policy`]); a
//! checkpoint records what the policy needs ([`capture`]); ckptd watches who writes to those
//! files afterwards ([`proof`]); a restore checks every file before it changes any, then puts
//! snapshots back, cuts logs back where it has proof and sets aside companions that appeared
//! since ([`restore`]); what the program did to its directories since (files created, renamed,
//! removed) is undone where it can be ([`dirs`]).

pub mod capture;
pub mod dirs;
pub mod fid;
pub mod policy;
pub mod proof;
pub mod restore;
pub mod unheld;

use ckpt_format::{FdKind, FilePolicy, FileRule, ProcessImage};

/// A file by (device, inode).
pub type FileKey = (u64, u64);

/// ckptd's side of the contract: its default overrides and its watch.
pub struct Files {
    /// `ckptd --file-policy` rules, after those of each checkpoint.
    pub rules: Vec<FileRule>,
    pub watch: proof::Watch,
    /// What programs do to their directories, undone at restore.
    pub dirs: dirs::DirWatch,
}

impl Files {
    pub fn new(rules: Vec<FileRule>) -> Self {
        Self {
            rules,
            watch: proof::Watch::start(),
            dirs: dirs::DirWatch::start(),
        }
    }

    /// The overrides of a checkpoint: its own first (first match wins), then ckptd's.
    pub fn rules_for(&self, checkpoint: &[FileRule]) -> Vec<(FileRule, &'static str)> {
        let mine = checkpoint.iter().map(|r| (r.clone(), "ckptctl checkpoint"));
        mine.chain(self.rules.iter().map(|r| (r.clone(), "ckptd"))).collect()
    }
}

/// Writes each file's policy into the fds of the images that hold it for writing.
pub fn set_fd_policies(images: &mut [&mut ProcessImage], decided: &[policy::Decided]) {
    for img in images.iter_mut() {
        for f in &mut img.fds {
            if let FdKind::File {
                writable: true,
                dev,
                ino,
                policy,
                ..
            } = &mut f.kind
            {
                *policy = decided
                    .iter()
                    .find(|d| d.key == (*dev, *ino))
                    .map(|d| d.policy)
                    .or(Some(FilePolicy::Keep));
            }
        }
    }
}

#[cfg(test)]
mod tests;
