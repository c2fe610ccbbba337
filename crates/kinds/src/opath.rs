//! `O_PATH` descriptors: a place in the file tree, not an open file (no offset, no I/O), of
//! any type, a symbolic link itself included (`O_PATH|O_NOFOLLOW`). They come back opened
//! again by their path with the same flags, which must name an object of the same type.

use crate::{KindError, Source};
use serde::{Deserialize, Serialize};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Record {
    pub path: String,
    /// The open flags (`O_PATH`, `O_NOFOLLOW`, `O_DIRECTORY`…), without `O_CLOEXEC`.
    pub flags: i32,
    /// The type bits of its mode (`S_IFLNK`, `S_IFDIR`…): the path must name the same type.
    pub file_type: u32,
}

pub fn claims(src: &Source) -> bool {
    src.flags & libc::O_PATH != 0
}

pub fn capture(src: &Source) -> Result<Record, KindError> {
    if src.link.ends_with(" (deleted)") {
        return Err(KindError::Refused(format!(
            "fd {} is an O_PATH descriptor of {}, whose name was removed (ckpt reopens O_PATH \
             descriptors by their path)",
            src.fd, src.link
        )));
    }
    if !src.link.starts_with('/') {
        return Err(KindError::Unsupported(format!("an O_PATH descriptor of {}", src.link)));
    }
    Ok(Record {
        path: src.link.to_string(),
        flags: src.flags,
        file_type: src.meta.mode() & libc::S_IFMT,
    })
}

pub fn recreate(rec: &Record) -> Result<OwnedFd, KindError> {
    let what = || format!("O_PATH descriptor of {}", rec.path);
    let fd = crate::reopen::open(&rec.path, rec.flags).map_err(KindError::recreate(what()))?;
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat fills the stat buffer for an fd we hold.
    if unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) } < 0 {
        return Err(KindError::recreate(what())(std::io::Error::last_os_error()));
    }
    // SAFETY: fstat succeeded and filled it.
    let now = unsafe { st.assume_init() }.st_mode & libc::S_IFMT;
    if now != rec.file_type {
        return Err(KindError::Refused(format!(
            "{} is now a {} where the checkpointed program had an O_PATH descriptor of a {}; put \
             it back as it was",
            rec.path,
            type_name(now),
            type_name(rec.file_type)
        )));
    }
    Ok(fd)
}

fn type_name(t: u32) -> &'static str {
    match t {
        libc::S_IFLNK => "symbolic link",
        libc::S_IFDIR => "directory",
        libc::S_IFREG => "regular file",
        libc::S_IFIFO => "FIFO",
        libc::S_IFSOCK => "socket",
        libc::S_IFCHR => "character device",
        libc::S_IFBLK => "block device",
        _ => "file of another type",
    }
}

pub fn describe(rec: &Record) -> String {
    format!("O_PATH descriptor of {} ({})", rec.path, type_name(rec.file_type))
}
