//! The file contract: every regular file a checkpointed process writes to gets a policy, and
//! what the policy needs at restore is recorded once per file per host per checkpoint, in
//! `<id>/<host>/files.img`; the content of snapshot files is cut in blocks kept in block stores
//! (see [`crate::BlockStoreWriter`]).

use crate::{read_record, write_record, CheckpointDir, FormatError, RecordKind};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Files are cut in blocks of this size; a block equal to the parent checkpoint's is referenced,
/// not stored again.
pub const FILE_BLOCK: u64 = 64 << 10;

/// What a restore does with a file the program wrote to. Ordered: when holders of one file
/// imply different policies, the greatest wins.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "lowercase")]
pub enum FilePolicy {
    /// Nothing checked, nothing changed; the fd is reopened at its offset.
    Keep,
    /// A log: checked to still begin with what it held at the checkpoint; cut back to that size
    /// only with proof that nobody else wrote to it since; the fd is positioned at its end.
    Append,
    /// The content at the checkpoint is saved and put back at restore.
    Snapshot,
}

impl FilePolicy {
    pub fn name(self) -> &'static str {
        match self {
            FilePolicy::Keep => "keep",
            FilePolicy::Append => "append",
            FilePolicy::Snapshot => "snapshot",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "keep" => Some(FilePolicy::Keep),
            "append" => Some(FilePolicy::Append),
            "snapshot" => Some(FilePolicy::Snapshot),
            _ => None,
        }
    }
}

impl std::fmt::Display for FilePolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A per-path override, `GLOB=POLICY`. The glob is matched against the file's absolute path;
/// `*` also matches `/`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileRule {
    pub glob: String,
    pub policy: FilePolicy,
}

impl FileRule {
    pub fn parse(s: &str) -> Result<Self, String> {
        let Some((glob, policy)) = s.rsplit_once('=') else {
            return Err(format!(
                "--file-policy {s}: expected GLOB=POLICY, e.g. '/data/*.db=snapshot'"
            ));
        };
        let Some(policy) = FilePolicy::parse(policy) else {
            return Err(format!(
                "--file-policy {s}: unknown policy {policy:?}; use snapshot, append or keep"
            ));
        };
        if glob.is_empty() {
            return Err(format!("--file-policy {s}: the pattern is empty"));
        }
        glob::Pattern::new(glob).map_err(|e| format!("--file-policy {s}: bad pattern: {e}"))?;
        Ok(Self {
            glob: glob.to_string(),
            policy,
        })
    }

    pub fn matches(&self, path: &str) -> bool {
        glob::Pattern::new(&self.glob).is_ok_and(|p| p.matches(path))
    }
}

impl std::str::FromStr for FileRule {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::parse(s)
    }
}

impl std::fmt::Display for FileRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}={}", self.glob, self.policy)
    }
}

/// The first rule of `rules` matching `path`.
pub fn first_match<'a>(rules: &'a [FileRule], path: &str) -> Option<&'a FileRule> {
    rules.iter().find(|r| r.matches(path))
}

/// Every file of one host in one checkpoint.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HostFiles {
    pub files: Vec<FileRecord>,
    /// Block stores the blocks point into, relative to the store root: the first is this
    /// checkpoint's own, the others belong to ancestors (or hold blocks folded in when an
    /// ancestor was deleted).
    pub stores: Vec<String>,
    /// Length of this checkpoint's own block store, to detect truncation.
    pub blocks_len: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileRecord {
    pub path: String,
    pub dev: u64,
    pub ino: u64,
    pub policy: FilePolicy,
    /// Why this policy: the holder that implied it, or the override.
    pub why: String,
    /// The checkpointed processes that held the file.
    pub pids: Vec<i32>,
    pub content: FileContent,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum FileContent {
    Snapshot(Snapshot),
    Append(AppendMark),
    Keep,
}

/// A file's content at the checkpoint: its blocks that are not all zero, and its attributes.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Snapshot {
    pub size: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub blocks: Vec<Block>,
    /// The companions beside the file at the checkpoint (sqlite's `NAME-journal`, `NAME-wal`,
    /// `NAME-shm`): one that appears or changes later belongs to a future the restore abandons.
    pub companions: Vec<Companion>,
}

/// A companion file as it was at the checkpoint.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Companion {
    pub name: String,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i128,
}

impl Snapshot {
    /// Bytes this checkpoint itself stored for the file.
    pub fn stored_bytes(&self) -> u64 {
        self.blocks.iter().filter(|b| b.store == 0).map(|b| b.len as u64).sum()
    }
}

/// One block of a file, `index * FILE_BLOCK` from its start.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Block {
    pub index: u64,
    pub len: u32,
    /// xxh3-128 of the block's bytes: finds equal blocks and verifies the stored copy.
    pub hash: u128,
    /// Index in [`HostFiles::stores`].
    pub store: u32,
    pub offset: u64,
}

/// A log at the checkpoint: its size and checksums of samples of the bytes before it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AppendMark {
    pub size: u64,
    pub samples: Vec<Sample>,
}

/// CRC32C of `len` bytes at `offset`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Sample {
    pub offset: u64,
    pub len: u32,
    pub crc: u32,
}

/// Bytes sampled at the start and the end of a log, and at the offsets between.
pub const SAMPLE_EDGE: u64 = 64 << 10;
pub const SAMPLE_INNER: u64 = 4 << 10;

/// The ranges of a log of `size` bytes whose checksums are kept: the first and the last
/// 64 KiB (a log rewritten from the start, or cut and written again, differs there) and 4 KiB
/// at `size/2`, `size/4`, … (cheap: a few dozen reads however long the log).
pub fn sample_ranges(size: u64) -> Vec<(u64, u64)> {
    let mut v = vec![(0, size.min(SAMPLE_EDGE))];
    let tail = size.saturating_sub(SAMPLE_EDGE);
    if tail > 0 {
        v.push((tail, size - tail));
    }
    let mut at = size / 2;
    while at > SAMPLE_EDGE {
        v.push((at, SAMPLE_INNER.min(size - at)));
        at /= 2;
    }
    v.retain(|&(_, len)| len > 0);
    v
}

/// What `ckptctl show` lists of a file (kept in the manifest).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileSummary {
    pub path: String,
    pub policy: FilePolicy,
    pub why: String,
    pub pids: Vec<i32>,
    /// Size at the checkpoint.
    pub size: u64,
    /// Bytes of its content this checkpoint stored (snapshot files).
    pub stored_bytes: u64,
    /// Companions present at the checkpoint (snapshot files).
    pub companions: Vec<String>,
}

impl FileRecord {
    pub fn summary(&self) -> FileSummary {
        let (size, stored_bytes, companions) = match &self.content {
            FileContent::Snapshot(s) => (
                s.size,
                s.stored_bytes(),
                s.companions.iter().map(|c| c.name.clone()).collect(),
            ),
            FileContent::Append(a) => (a.size, 0, Vec::new()),
            FileContent::Keep => (0, 0, Vec::new()),
        };
        FileSummary {
            path: self.path.clone(),
            policy: self.policy,
            why: self.why.clone(),
            pids: self.pids.clone(),
            size,
            stored_bytes,
            companions,
        }
    }
}

impl CheckpointDir {
    pub fn host_dir(&self, host: &str) -> PathBuf {
        self.path.join(host)
    }
    /// The host's file records.
    pub fn files_path(&self, host: &str) -> PathBuf {
        self.host_dir(host).join("files.img")
    }
    /// The host's block store, as a path and relative to the store root.
    pub fn blocks_path(&self, host: &str) -> PathBuf {
        self.host_dir(host).join("files.blocks")
    }
    pub fn blocks_rel(&self, host: &str) -> String {
        format!("{}/{host}/files.blocks", self.id)
    }
}

/// Reads a host's file records; a checkpoint without any is an empty set.
pub fn read_host_files(dir: &CheckpointDir, host: &str) -> Result<HostFiles, FormatError> {
    let path = dir.files_path(host);
    if !path.exists() {
        return Ok(HostFiles::default());
    }
    read_record(&path, RecordKind::Files)
}

pub fn write_host_files(dir: &CheckpointDir, host: &str, files: &HostFiles) -> Result<u64, FormatError> {
    write_record(&dir.files_path(host), RecordKind::Files, files)
}

/// Creates a directory (and its parents) accessible to its owner only, whatever the umask.
pub fn create_private_dir(path: &Path) -> Result<(), FormatError> {
    crate::private::create_private_dir_all(path).map_err(|e| FormatError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse_and_match() {
        let r = FileRule::parse("/tmp/*.db=snapshot").unwrap();
        assert_eq!(r.policy, FilePolicy::Snapshot);
        assert!(r.matches("/tmp/a.db"));
        assert!(r.matches("/tmp/x/a.db"), "* also matches /");
        assert!(!r.matches("/tmp/a.db-journal"));
        assert!(FileRule::parse("/x=maybe").unwrap_err().contains("unknown policy"));
        assert!(FileRule::parse("nothing").unwrap_err().contains("GLOB=POLICY"));
        assert!(FileRule::parse("[=keep").unwrap_err().contains("bad pattern"));
        let rules = [
            FileRule::parse("*.log=keep").unwrap(),
            FileRule::parse("*=append").unwrap(),
        ];
        assert_eq!(first_match(&rules, "/a.log").unwrap().policy, FilePolicy::Keep);
        assert_eq!(first_match(&rules, "/a.txt").unwrap().policy, FilePolicy::Append);
        assert!(FilePolicy::Snapshot > FilePolicy::Append && FilePolicy::Append > FilePolicy::Keep);
    }

    #[test]
    fn samples_cover_both_ends() {
        assert_eq!(sample_ranges(0), vec![]);
        assert_eq!(sample_ranges(100), vec![(0, 100)]);
        let s = sample_ranges(1 << 30);
        assert!(s.contains(&(0, SAMPLE_EDGE)));
        assert!(s.contains(&((1 << 30) - SAMPLE_EDGE, SAMPLE_EDGE)));
        assert!(s.contains(&(1 << 29, SAMPLE_INNER)));
        assert!(s.len() < 20);
    }
}
