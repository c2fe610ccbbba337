//! Files and directories under `/proc/PID/` opened by a process of the checkpoint (its own
//! `/proc/self/status`, a child's `/proc/PID/stat`, the `/proc/self/fd` directory,
//! `/proc/self/mem`). `/proc/self` is `/proc/PID` once opened, and every process comes back
//! with its pid, so the same path names the restored process again: it is opened once every
//! process of the restore exists (a child's files need the child), at the same offset. ckptd
//! refuses one of a process outside the checkpoint (that pid could name another process).

use crate::{KindError, Source};
use serde::{Deserialize, Serialize};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Record {
    /// `/proc/PID/…` as the fd's link reads.
    pub path: String,
    /// The process the path names.
    pub pid: i32,
    /// Open flags without `O_CLOEXEC`.
    pub flags: i32,
    pub pos: u64,
}

/// The pid a `/proc/PID/…` path names.
fn pid_of(link: &str) -> Option<i32> {
    let rest = link.strip_prefix("/proc/")?;
    let pid = rest.split('/').next()?;
    pid.parse().ok()
}

pub fn claims(src: &Source) -> bool {
    pid_of(src.link).is_some() && (src.meta.is_file() || src.meta.is_dir())
}

pub fn capture(src: &Source) -> Result<Record, KindError> {
    let pos = src.pos()?;
    Ok(Record {
        path: src.link.to_string(),
        pid: pid_of(src.link).unwrap_or(0),
        flags: src.flags,
        pos,
    })
}

/// A placeholder at the fd's number until every process exists ([`open_again`]).
pub fn recreate(rec: &Record) -> Result<OwnedFd, KindError> {
    crate::reopen::open("/dev/null", libc::O_RDONLY)
        .map_err(KindError::recreate(format!("a placeholder for {}", rec.path)))
}

/// Opens the path again at `fd` (close-on-exec if `cloexec`), at its offset, in the restored
/// process once every process of the restore exists.
pub fn open_again(fd: RawFd, rec: &Record, cloexec: bool) -> Result<(), KindError> {
    let what = || rec.path.clone();
    let new = crate::reopen::open(&rec.path, rec.flags).map_err(KindError::recreate(what()))?;
    if rec.pos != 0 {
        // SAFETY: lseek on the fd just opened.
        let r = unsafe { libc::lseek(new.as_raw_fd(), rec.pos as i64, libc::SEEK_SET) };
        crate::reopen::check(r).map_err(KindError::recreate(format!("the offset of {}", rec.path)))?;
    }
    let fl = if cloexec { libc::O_CLOEXEC } else { 0 };
    // SAFETY: dup3 of an fd we hold onto the program's number, which holds the placeholder.
    if unsafe { libc::dup3(new.as_raw_fd(), fd, fl) } < 0 {
        return Err(KindError::recreate(what())(std::io::Error::last_os_error()));
    }
    Ok(())
}

pub fn describe(rec: &Record) -> String {
    format!("{} (at offset {})", rec.path, rec.pos)
}
