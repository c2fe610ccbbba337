//! Regular files and directories whose open file description several restored processes share
//! (see `FdImage::shared`): ckptd opens each once, at its offset, and hands a copy to every
//! holder, so that a write by one moves the offset the others write at, as before the
//! checkpoint (a shell's `> out` inherited by its children), and a lock the description owns
//! is one lock again. Opened after the file contract has put the files back.

use anyhow::Context;
use ckpt_format::{FdKind, FilePolicy, ProcessImage};
use std::collections::HashMap;
use std::io::{Seek, SeekFrom};
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;

/// Every holder's fd of a shared description, by (pid, fd number).
pub fn make_shared(images: &[&ProcessImage]) -> anyhow::Result<HashMap<(i32, i32), OwnedFd>> {
    let mut made: HashMap<u64, OwnedFd> = HashMap::new();
    let mut out = HashMap::new();
    for img in images {
        for f in img.fds.iter().filter(|f| f.shared != 0 && f.dup_of.is_none()) {
            let fd = match made.get(&f.shared) {
                Some(fd) => fd.try_clone()?,
                None => {
                    let fd = open(&f.kind, f.flags)
                        .with_context(|| format!("process {} fd {}: {}", img.pid, f.fd, f.kind.describe()))?;
                    made.insert(f.shared, fd.try_clone()?);
                    fd
                }
            };
            out.insert((img.pid, f.fd), fd);
        }
    }
    Ok(out)
}

/// Opens the file of `kind` again with the program's `flags` (never creating or truncating it)
/// at its offset; a log (append policy) at its end, as the restorer does for one holder.
fn open(kind: &FdKind, flags: i32) -> anyhow::Result<OwnedFd> {
    let (path, pos) = match kind {
        FdKind::File { path, pos, policy, .. } => match policy {
            Some(FilePolicy::Append) => (path, SeekFrom::End(0)),
            _ => (path, SeekFrom::Start(*pos)),
        },
        FdKind::Dir { path } => (path, SeekFrom::Start(0)),
        k => anyhow::bail!("internal: {} cannot be a shared file", k.describe()),
    };
    let access = flags & libc::O_ACCMODE;
    let mut file = std::fs::OpenOptions::new()
        .read(access != libc::O_WRONLY)
        .write(access != libc::O_RDONLY)
        .custom_flags(flags & !(libc::O_ACCMODE | libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC) | libc::O_NOCTTY)
        .open(path)
        .with_context(|| format!("cannot reopen {path}"))?;
    if matches!(kind, FdKind::File { .. }) {
        file.seek(pos).with_context(|| format!("cannot seek in {path}"))?;
    }
    Ok(file.into())
}
