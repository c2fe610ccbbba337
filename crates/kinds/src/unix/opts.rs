//! The socket options of a Unix socket that a program can notice: credentials passing,
//! buffer sizes, timeouts, its own peek offset, the generic socket-level flags and values it
//! can set and read back, and a classic socket filter.

use crate::sockfilter::{self, Filter};
use crate::socklevel;
use crate::KindError;
use serde::{Deserialize, Serialize};
use std::os::fd::RawFd;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Opts {
    pub passcred: bool,
    /// As getsockopt reports them (twice what was asked for).
    pub rcvbuf: i32,
    pub sndbuf: i32,
    /// (seconds, microseconds); zero: no timeout.
    pub rcvtimeo: (i64, i64),
    pub sndtimeo: (i64, i64),
    /// The program's SO_PEEK_OFF (-1: off).
    pub peek_off: i32,
    /// The generic socket-level options this kernel reported ([`socklevel`]).
    pub generic: Vec<(String, i32)>,
    /// SO_LINGER (l_onoff, l_linger): no effect on a Unix socket, but read back.
    pub linger: (i32, i32),
    /// A classic BPF filter and SO_LOCK_FILTER, attached once the queue is refilled (the
    /// datagrams in it already passed the filter).
    pub filter: Filter,
}

pub fn int(fd: RawFd, level: i32, opt: i32) -> i32 {
    crate::inet::raw::get_int(fd, level, opt).unwrap_or(0)
}

pub use crate::inet::raw::set_int;

fn timeo(fd: RawFd, opt: i32) -> (i64, i64) {
    // SAFETY: timeval is plain data.
    let mut tv: libc::timeval = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::timeval>() as libc::socklen_t;
    // SAFETY: tv and len are valid out-pointers of the right size.
    unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (&mut tv as *mut libc::timeval).cast(),
            &mut len,
        )
    };
    (tv.tv_sec, tv.tv_usec)
}

fn set_timeo(fd: RawFd, opt: i32, (sec, usec): (i64, i64)) -> std::io::Result<()> {
    let tv = libc::timeval {
        tv_sec: sec,
        tv_usec: usec,
    };
    // SAFETY: tv is a valid timeval of the given size.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Sets a buffer size to what getsockopt reported (`reported` = twice the request), past
/// the system's maximum when ckptd may (the program may have been allowed more).
pub fn set_buf(fd: RawFd, opt: i32, reported: i32) -> std::io::Result<()> {
    if int(fd, libc::SOL_SOCKET, opt) == reported {
        return Ok(());
    }
    let force = if opt == libc::SO_SNDBUF {
        libc::SO_SNDBUFFORCE
    } else {
        libc::SO_RCVBUFFORCE
    };
    set_int(fd, libc::SOL_SOCKET, force, reported / 2).or_else(|_| set_int(fd, libc::SOL_SOCKET, opt, reported / 2))
}

impl Opts {
    /// Reads the options; an eBPF filter is refused.
    pub fn read(fd: RawFd) -> Result<Opts, KindError> {
        Ok(Opts {
            passcred: int(fd, libc::SOL_SOCKET, libc::SO_PASSCRED) != 0,
            rcvbuf: int(fd, libc::SOL_SOCKET, libc::SO_RCVBUF),
            sndbuf: int(fd, libc::SOL_SOCKET, libc::SO_SNDBUF),
            rcvtimeo: timeo(fd, libc::SO_RCVTIMEO),
            sndtimeo: timeo(fd, libc::SO_SNDTIMEO),
            peek_off: int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF),
            generic: socklevel::read(fd),
            linger: socklevel::linger(fd),
            filter: sockfilter::capture(fd)?,
        })
    }

    /// Attaches the filter (once the queue is refilled).
    pub fn attach_filter(&self, fd: RawFd) -> std::io::Result<()> {
        sockfilter::attach(fd, &self.filter)
    }

    /// Applies every option but the peek offset (set once the queue is refilled).
    pub fn apply(&self, fd: RawFd) -> std::io::Result<()> {
        if self.passcred {
            set_int(fd, libc::SOL_SOCKET, libc::SO_PASSCRED, 1)?;
        }
        set_buf(fd, libc::SO_RCVBUF, self.rcvbuf)?;
        set_buf(fd, libc::SO_SNDBUF, self.sndbuf)?;
        if self.rcvtimeo != (0, 0) {
            set_timeo(fd, libc::SO_RCVTIMEO, self.rcvtimeo)?;
        }
        if self.sndtimeo != (0, 0) {
            set_timeo(fd, libc::SO_SNDTIMEO, self.sndtimeo)?;
        }
        socklevel::apply(fd, &self.generic)?;
        if self.linger.0 != 0 {
            socklevel::set_linger(fd, self.linger)?;
        }
        Ok(())
    }
}
