//! Files and folders only their owner may open: a checkpoint holds a program's whole memory
//! (keys, passwords, whatever it had). Modes are set explicitly after creation: the umask can
//! only take bits away, and one that takes the owner's own bits would leave a folder ckptd
//! cannot use.

use std::fs::{File, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Mode of every folder of the store.
pub const DIR_MODE: u32 = 0o700;
/// Mode of every file of the store.
pub const FILE_MODE: u32 = 0o600;

/// Creates (or truncates) `path` for reading and writing, readable and writable by its owner
/// alone. A file that was there keeps its owner but gets the mode too.
pub fn create_private_file(path: &Path) -> io::Result<File> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .mode(FILE_MODE)
        .open(path)?;
    f.set_permissions(Permissions::from_mode(FILE_MODE))?;
    Ok(f)
}

/// Creates the folder `path` (its parent must exist), usable by its owner alone; fails with
/// `AlreadyExists` if it is there.
pub fn create_private_dir(path: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new().mode(DIR_MODE).create(path)?;
    std::fs::set_permissions(path, Permissions::from_mode(DIR_MODE))
}

/// Creates `path` and the folders missing above it, each usable by its owner alone; folders
/// already there are left as they are.
pub fn create_private_dir_all(path: &Path) -> io::Result<()> {
    if path.is_dir() {
        return Ok(());
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_private_dir_all(parent)?;
    }
    match create_private_dir(path) {
        // Made meanwhile by someone else (another thread of ckptd): fine if it is a folder.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => Ok(()),
        r => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
    }

    #[test]
    fn owner_only() {
        let t = tempfile::tempdir().unwrap();
        let deep = t.path().join("a/b/c");
        create_private_dir_all(&deep).unwrap();
        for d in ["a", "a/b", "a/b/c"] {
            assert_eq!(mode(&t.path().join(d)), DIR_MODE, "{d}");
        }
        // A file that was there, open to all, becomes private and empty.
        let file = deep.join("f");
        std::fs::write(&file, b"x").unwrap();
        std::fs::set_permissions(&file, Permissions::from_mode(0o666)).unwrap();
        create_private_file(&file).unwrap();
        assert_eq!(mode(&file), FILE_MODE);
        assert_eq!(std::fs::read(&file).unwrap(), b"");
        let e = create_private_dir(&deep).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
    }
}
