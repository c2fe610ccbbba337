//! eventfd: a 64-bit counter, in semaphore mode or not.

use crate::{KindError, Source};
use serde::{Deserialize, Serialize};
use std::os::fd::{FromRawFd, OwnedFd};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Record {
    /// The counter: what a `read` would return (or count down, in semaphore mode).
    pub count: u64,
    pub semaphore: bool,
}

pub fn capture(src: &Source) -> Result<Record, KindError> {
    let bad = |what: &str| KindError::Read {
        what: format!("the {what} of eventfd {}", src.fd),
        source: std::io::Error::from(std::io::ErrorKind::InvalidData),
    };
    let count = src
        .info("eventfd-count")
        .and_then(|v| u64::from_str_radix(v, 16).ok())
        .ok_or_else(|| bad("counter"))?;
    // Kernels before 5.2 do not say; the mode cannot then be known.
    let semaphore = src.info("eventfd-semaphore").ok_or_else(|| bad("mode"))? == "1";
    Ok(Record { count, semaphore })
}

pub fn recreate(rec: &Record) -> Result<OwnedFd, KindError> {
    let what = || format!("an eventfd with count {}", rec.count);
    let mut flags = libc::EFD_CLOEXEC;
    if rec.semaphore {
        flags |= libc::EFD_SEMAPHORE;
    }
    // eventfd's initial value is 32 bits; a larger count is written after.
    let initial = u32::try_from(rec.count).unwrap_or(0);
    // SAFETY: eventfd returns a new fd or -1.
    let fd = unsafe { libc::eventfd(initial, flags) };
    if fd < 0 {
        return Err(KindError::recreate(what())(std::io::Error::last_os_error()));
    }
    // SAFETY: the fd was just created and is ours.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    if u64::from(initial) != rec.count {
        let v = rec.count;
        // SAFETY: writing 8 bytes from a local u64 to our eventfd.
        let n = unsafe { libc::write(std::os::fd::AsRawFd::as_raw_fd(&fd), (&v as *const u64).cast(), 8) };
        if n != 8 {
            return Err(KindError::recreate(what())(std::io::Error::last_os_error()));
        }
    }
    Ok(fd)
}

pub fn describe(rec: &Record) -> String {
    let mode = if rec.semaphore { ", semaphore" } else { "" };
    format!("eventfd (count {}{mode})", rec.count)
}
