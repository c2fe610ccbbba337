//! The store: one directory per checkpoint id; a checkpoint exists once its MANIFEST does.

use crate::private::{create_private_dir, create_private_dir_all};
use crate::{read_record, write_record, FormatError, Manifest, RecordKind};
use std::path::{Path, PathBuf};

const MANIFEST: &str = "MANIFEST";

#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

/// The directory of one checkpoint, committed or in progress.
#[derive(Debug, Clone)]
pub struct CheckpointDir {
    pub id: String,
    pub path: PathBuf,
}

impl CheckpointDir {
    pub fn process_dir(&self, host: &str, pid: i32) -> PathBuf {
        self.path.join(host).join(pid.to_string())
    }
    pub fn meta_path(&self, host: &str, pid: i32) -> PathBuf {
        self.process_dir(host, pid).join("meta.img")
    }
    /// Creates the folder of process `pid` of `host` (and those above it), private.
    pub fn create_process_dir(&self, host: &str, pid: i32) -> Result<PathBuf, FormatError> {
        let dir = self.process_dir(host, pid);
        create_private_dir_all(&dir).map_err(|e| FormatError::io(&dir, e))?;
        Ok(dir)
    }
    pub fn pages_path(&self, host: &str, pid: i32) -> PathBuf {
        self.process_dir(host, pid).join("pages.img")
    }
    /// The SysV IPC objects of `host` (see [`crate::SysvImage`]), when its processes used any.
    pub fn sysv_path(&self, host: &str) -> PathBuf {
        self.path.join(host).join("sysv.img")
    }
    /// The contents of `host`'s SysV shared memory segments.
    pub fn sysv_pages_path(&self, host: &str) -> PathBuf {
        self.path.join(host).join("sysv.pages")
    }
    pub fn manifest_path(&self) -> PathBuf {
        self.path.join(MANIFEST)
    }
}

impl Store {
    /// Opens the store at `root`, created (private) if missing. An existing root is taken as
    /// it is: ckptd checks who may use it before opening it.
    pub fn open(root: &Path) -> Result<Self, FormatError> {
        create_private_dir_all(root).map_err(|e| FormatError::io(root, e))?;
        Ok(Self { root: root.to_owned() })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn dir(&self, id: &str) -> CheckpointDir {
        CheckpointDir {
            id: id.to_string(),
            path: self.root.join(id),
        }
    }

    /// Reserves the next id (one more than any directory present, committed or not) and
    /// creates its directory.
    pub fn begin(&self) -> Result<CheckpointDir, FormatError> {
        let mut next = self.numeric_ids()?.into_iter().max().unwrap_or(0) + 1;
        loop {
            let dir = self.dir(&next.to_string());
            match create_private_dir(&dir.path) {
                Ok(()) => return Ok(dir),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => next += 1,
                Err(e) => return Err(FormatError::io(&dir.path, e)),
            }
        }
    }

    fn numeric_ids(&self) -> Result<Vec<u64>, FormatError> {
        let rd = std::fs::read_dir(&self.root).map_err(|e| FormatError::io(&self.root, e))?;
        Ok(rd
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<u64>().ok()))
            .collect())
    }

    /// The directory of checkpoint `id` (committed or in progress), created if missing: a
    /// node writes its part there.
    pub fn dir_for(&self, id: &str) -> Result<CheckpointDir, FormatError> {
        let valid = !id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !valid {
            return Err(FormatError::UnknownId { id: id.to_string() });
        }
        let dir = self.dir(id);
        create_private_dir_all(&dir.path).map_err(|e| FormatError::io(&dir.path, e))?;
        Ok(dir)
    }

    /// Writes the manifest: from this instant the checkpoint is restorable.
    pub fn commit(&self, dir: &CheckpointDir, manifest: &Manifest) -> Result<(), FormatError> {
        write_record(&dir.manifest_path(), RecordKind::Manifest, manifest)?;
        // The rename inside write_record is durable only once the directory is synced.
        if let Ok(d) = std::fs::File::open(&dir.path) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// Removes a checkpoint directory, committed or not. The manifest goes first so a crash
    /// half-way never leaves a listed checkpoint with missing files.
    pub fn remove(&self, dir: &CheckpointDir) -> Result<(), FormatError> {
        let m = dir.manifest_path();
        if m.exists() {
            std::fs::remove_file(&m).map_err(|e| FormatError::io(&m, e))?;
        }
        std::fs::remove_dir_all(&dir.path).map_err(|e| FormatError::io(&dir.path, e))
    }

    /// The committed checkpoint `id`.
    pub fn get(&self, id: &str) -> Result<(CheckpointDir, Manifest), FormatError> {
        let valid = !id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        let dir = self.dir(id);
        if !valid || !dir.path.is_dir() {
            return Err(FormatError::UnknownId { id: id.to_string() });
        }
        if !dir.manifest_path().exists() {
            return Err(FormatError::Incomplete { id: id.to_string() });
        }
        let m = read_record(&dir.manifest_path(), RecordKind::Manifest)?;
        Ok((dir, m))
    }

    /// Every committed checkpoint, oldest first; directories without a valid manifest are
    /// in-progress or torn and are not listed.
    pub fn list(&self) -> Result<Vec<Manifest>, FormatError> {
        let mut ids = self.numeric_ids()?;
        ids.sort_unstable();
        Ok(ids
            .into_iter()
            .filter_map(|id| self.get(&id.to_string()).ok().map(|(_, m)| m))
            .collect())
    }

    /// Deletes the directories of checkpoints that were never committed (a crash mid-way).
    pub fn sweep_incomplete(&self) -> Vec<String> {
        let mut swept = Vec::new();
        for id in self.numeric_ids().unwrap_or_default() {
            let dir = self.dir(&id.to_string());
            if !dir.manifest_path().exists() && self.remove(&dir).is_ok() {
                swept.push(dir.id);
            }
        }
        swept
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn begin_commit_list() {
        let t = tempfile::tempdir().unwrap();
        let s = Store::open(t.path()).unwrap();
        let a = s.begin().unwrap();
        let b = s.begin().unwrap();
        assert_eq!((a.id.as_str(), b.id.as_str()), ("1", "2"));
        let m = Manifest {
            id: b.id.clone(),
            parent: None,
            created_unix_ms: 1,
            hosts: vec![],
            duration_us: 0,
        };
        s.commit(&b, &m).unwrap();
        let listed: Vec<_> = s.list().unwrap().into_iter().map(|m| m.id).collect();
        assert_eq!(listed, vec!["2".to_string()]);
        assert!(matches!(s.get("1"), Err(FormatError::Incomplete { .. })));
        assert!(matches!(s.get("77"), Err(FormatError::UnknownId { .. })));
        assert!(matches!(s.get("../x"), Err(FormatError::UnknownId { .. })));
        assert_eq!(s.sweep_incomplete(), vec!["1".to_string()]);
    }
}
