//! pidfds (`pidfd_open`, `clone(CLONE_PIDFD)`): a handle on one process. A process of the
//! checkpoint comes back with the same pid, so its pidfd is opened again on that pid once
//! every process of the restore exists (zombies too: a pidfd of an exited child not reaped
//! yet still reads its status). ckptd refuses a pidfd of a process outside the checkpoint
//! (the pid could name another process by then) and one of a process already reaped.

use crate::{KindError, Source};
use serde::{Deserialize, Serialize};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// `PIDFD_THREAD` (a pidfd of one thread), which is `O_EXCL`.
const PIDFD_THREAD: i32 = libc::O_EXCL;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Record {
    /// The process (or thread, with `PIDFD_THREAD`) it refers to.
    pub pid: i32,
    /// `PIDFD_NONBLOCK` and `PIDFD_THREAD` as the description has them.
    pub flags: i32,
}

pub fn capture(src: &Source) -> Result<Record, KindError> {
    let pid: i32 = src
        .info("Pid")
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| KindError::Read {
            what: format!("the process of pidfd {}", src.fd),
            source: std::io::ErrorKind::InvalidData.into(),
        })?;
    match pid {
        -1 => Err(KindError::Refused(format!(
            "fd {} is a pidfd of a process that has exited and was reaped, which cannot be made \
             again",
            src.fd
        ))),
        0 => Err(KindError::Refused(format!(
            "fd {} is a pidfd of a process in another pid namespace",
            src.fd
        ))),
        pid => Ok(Record {
            pid,
            flags: src.flags & (libc::O_NONBLOCK | PIDFD_THREAD),
        }),
    }
}

/// A placeholder at the fd's number until every process exists ([`open_again`]).
pub fn recreate(rec: &Record) -> Result<OwnedFd, KindError> {
    crate::reopen::open("/dev/null", libc::O_RDONLY).map_err(KindError::recreate(format!(
        "a placeholder for the pidfd of {}",
        rec.pid
    )))
}

/// Puts a pidfd of `rec.pid` at `fd` (close-on-exec if `cloexec`), in the restored process once
/// every process of the restore exists.
pub fn open_again(fd: RawFd, rec: &Record, cloexec: bool) -> Result<(), KindError> {
    let what = || format!("a pidfd of process {}", rec.pid);
    // SAFETY: pidfd_open returns a new fd or -1.
    let new = unsafe { libc::syscall(libc::SYS_pidfd_open, rec.pid, rec.flags) } as i32;
    if new < 0 {
        return Err(KindError::recreate(what())(std::io::Error::last_os_error()));
    }
    // SAFETY: the kernel just gave us `new`.
    let new = unsafe { OwnedFd::from_raw_fd(new) };
    let fl = if cloexec { libc::O_CLOEXEC } else { 0 };
    // SAFETY: dup3 of an fd we hold onto the program's number, which holds the placeholder.
    if unsafe { libc::dup3(std::os::fd::AsRawFd::as_raw_fd(&new), fd, fl) } < 0 {
        return Err(KindError::recreate(what())(std::io::Error::last_os_error()));
    }
    Ok(())
}

pub fn describe(rec: &Record) -> String {
    let nb = if rec.flags & libc::O_NONBLOCK != 0 {
        ", non-blocking"
    } else {
        ""
    };
    let th = if rec.flags & PIDFD_THREAD != 0 {
        "thread"
    } else {
        "process"
    };
    format!("pidfd of {th} {}{nb}", rec.pid)
}
