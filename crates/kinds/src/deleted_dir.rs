//! Directories that were removed while a program holds them (an open directory fd, or its
//! working directory after `rmdir` while in it): such a directory is empty, has no name and
//! takes no new entries. It comes back as a new directory made in the same place (the nearest
//! existing one if that is gone too), with its mode and owner, and removed again at once;
//! every description and working directory of one such directory shares the new one.

use crate::reopen::{self, check};
use crate::{KindError, Source};
use serde::{Deserialize, Serialize};
use std::collections::hash_map::{Entry, HashMap};
use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Record {
    /// The path it had.
    pub path: String,
    /// The directory on the host at the checkpoint: holders of one share it again.
    pub dev: u64,
    pub ino: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Open flags of this description, without `O_CLOEXEC` (0 for a working directory).
    pub flags: i32,
}

pub fn claims(src: &Source) -> bool {
    src.meta.is_dir() && src.link.ends_with(" (deleted)")
}

pub fn capture(src: &Source) -> Result<Record, KindError> {
    Ok(of(src.link, src.meta, src.flags))
}

/// The record of a removed directory whose `/proc` link reads `link`.
pub fn of(link: &str, meta: &std::fs::Metadata, flags: i32) -> Record {
    Record {
        path: link.strip_suffix(" (deleted)").unwrap_or(link).to_string(),
        dev: meta.dev(),
        ino: meta.ino(),
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        flags,
    }
}

/// The directories made so far, by their inode at the checkpoint.
#[derive(Default)]
pub struct Made {
    dirs: HashMap<(u64, u64), OwnedFd>,
}

/// One description of the re-made directory.
pub fn recreate(rec: &Record, made: &mut Made) -> Result<OwnedFd, KindError> {
    let what = || format!("removed directory {}", rec.path);
    let dir = match made.dirs.entry((rec.dev, rec.ino)) {
        Entry::Occupied(e) => e.into_mut(),
        Entry::Vacant(e) => e.insert(make(rec).map_err(KindError::recreate(what()))?),
    };
    reopen::of_own(dir.as_raw_fd(), rec.flags | libc::O_DIRECTORY).map_err(KindError::recreate(what()))
}

/// Makes the directory under its old name (or a spare one beside it), opens it, removes it.
pub fn make(rec: &Record) -> std::io::Result<OwnedFd> {
    let (parent, name) = rec.path.rsplit_once('/').unwrap_or(("", &rec.path));
    let mut parent = if parent.is_empty() { "/" } else { parent };
    let original = std::path::Path::new(parent).is_dir();
    while !std::path::Path::new(parent).is_dir() {
        parent = match parent.rsplit_once('/') {
            Some(("", _)) | None => "/",
            Some((up, _)) => up,
        };
    }
    let sep = if parent.ends_with('/') { "" } else { "/" };
    let first = (original && !name.is_empty()).then(|| format!("{parent}{sep}{name}"));
    let spare = format!("{parent}{sep}.ckpt-removed-dir-");
    let dir = reopen::create_unlinked(
        first.into_iter().chain(reopen::spare_names(&spare)),
        |path| {
            let c = CString::new(path).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
            // SAFETY: mkdir with a valid C string.
            check(unsafe { libc::mkdir(c.as_ptr(), 0o700) } as i64)?;
            reopen::open(path, libc::O_RDONLY | libc::O_DIRECTORY)
        },
        |path| std::fs::remove_dir(path),
    )?;
    reopen::set_owner_mode(dir.as_raw_fd(), rec.uid, rec.gid, rec.mode)?;
    Ok(dir)
}

pub fn describe(rec: &Record) -> String {
    format!("removed directory {}", rec.path)
}
