//! An fd of a parked process, as the kinds read it.

use std::cell::OnceCell;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// One fd of a parked process: its number, what `/proc/PID/fd/N` links to, its fdinfo text,
/// and a duplicate of it taken with `pidfd_getfd` on first use.
pub struct Source<'a> {
    pub pid: i32,
    pub fd: RawFd,
    /// The `/proc/PID/fd/N` link: `anon_inode:[eventfd]`, `socket:[123]`, a path…
    pub link: &'a str,
    /// `/proc/PID/fdinfo/N` as text.
    pub fdinfo: &'a str,
    /// `F_GETFL` flags without `O_CLOEXEC`.
    pub flags: i32,
    /// `stat` of the fd's file (through /proc/PID/fd/N).
    pub meta: &'a std::fs::Metadata,
    grabbed: OnceCell<Result<OwnedFd, i32>>,
}

impl<'a> Source<'a> {
    pub fn new(pid: i32, fd: RawFd, link: &'a str, fdinfo: &'a str, flags: i32, meta: &'a std::fs::Metadata) -> Self {
        Source {
            pid,
            fd,
            link,
            fdinfo,
            flags,
            meta,
            grabbed: OnceCell::new(),
        }
    }

    /// The name inside `anon_inode:[…]` (or `anon_inode:name`), if the fd is one.
    pub fn anon_name(&self) -> Option<&'a str> {
        let inner = self.link.strip_prefix("anon_inode:")?;
        Some(inner.trim_start_matches('[').trim_end_matches(']'))
    }

    /// The value of `key:` in fdinfo (first line that has it), trimmed.
    pub fn info(&self, key: &str) -> Option<&'a str> {
        self.fdinfo
            .lines()
            .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(':')))
            .map(str::trim)
    }

    /// The file offset of the description (fdinfo `pos`).
    pub fn pos(&self) -> Result<u64, crate::KindError> {
        self.info("pos")
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| crate::KindError::Read {
                what: format!("the offset of fd {}", self.fd),
                source: std::io::ErrorKind::InvalidData.into(),
            })
    }

    /// This process's copy of the fd (same open file description), close-on-exec.
    pub fn file(&self) -> std::io::Result<RawFd> {
        let r = self
            .grabbed
            .get_or_init(|| grab(self.pid, self.fd).map_err(|e| e.raw_os_error().unwrap_or(libc::EIO)));
        match r {
            Ok(fd) => Ok(fd.as_raw_fd()),
            Err(e) => Err(std::io::Error::from_raw_os_error(*e)),
        }
    }
}

/// A duplicate of `fd` of process `pid` (`pidfd_getfd`).
pub fn grab(pid: i32, fd: RawFd) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open returns a new fd or -1.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as i32;
    if pidfd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: we own pidfd.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    // SAFETY: pidfd_getfd returns a new fd (close-on-exec) or -1.
    let dup = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) } as i32;
    if dup < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just installed `dup` for us.
    Ok(unsafe { OwnedFd::from_raw_fd(dup) })
}
