//! The terminal ioctls the pty kind uses, each a small safe wrapper.

use std::io::{Error, Result};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

fn check(r: i32) -> Result<()> {
    if r < 0 {
        Err(Error::last_os_error())
    } else {
        Ok(())
    }
}

/// An ioctl that reads an `int`.
pub fn get_int(fd: RawFd, req: libc::Ioctl) -> Result<i32> {
    let mut v: libc::c_int = 0;
    // SAFETY: the request writes one int into `v`.
    check(unsafe { libc::ioctl(fd, req, &mut v) })?;
    Ok(v)
}

/// An ioctl that takes a pointer to an `int`.
pub fn set_int(fd: RawFd, req: libc::Ioctl, v: i32) -> Result<()> {
    let v: libc::c_int = v;
    // SAFETY: the request reads one int from `v`.
    check(unsafe { libc::ioctl(fd, req, &v) })
}

/// An ioctl that takes an integer argument (not a pointer).
pub fn arg(fd: RawFd, req: libc::Ioctl, v: libc::c_ulong) -> Result<()> {
    // SAFETY: the request takes its argument by value.
    check(unsafe { libc::ioctl(fd, req, v) })
}

pub fn get_termios(fd: RawFd) -> Result<libc::termios2> {
    // SAFETY: termios2 is plain data; zero is a valid value.
    let mut t: libc::termios2 = unsafe { std::mem::zeroed() };
    // SAFETY: TCGETS2 fills a termios2.
    check(unsafe { libc::ioctl(fd, libc::TCGETS2, &mut t) })?;
    Ok(t)
}

pub fn set_termios(fd: RawFd, t: &libc::termios2) -> Result<()> {
    // SAFETY: TCSETS2 reads a termios2.
    check(unsafe { libc::ioctl(fd, libc::TCSETS2, t) })
}

pub fn get_winsize(fd: RawFd) -> Result<libc::winsize> {
    let mut w = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ fills a winsize.
    check(unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut w) })?;
    Ok(w)
}

pub fn set_winsize(fd: RawFd, w: &libc::winsize) -> Result<()> {
    // SAFETY: TIOCSWINSZ reads a winsize.
    check(unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, w) })
}

/// Puts one byte into the line discipline of `fd`'s terminal as if it had just arrived
/// (`TIOCSTI`): processed at once, by the termios in force, with nothing left in flight.
pub fn sti(fd: RawFd, b: u8) -> Result<()> {
    // SAFETY: TIOCSTI reads one byte.
    check(unsafe { libc::ioctl(fd, libc::TIOCSTI, &b) })
}

/// Opens the slave of the master `fd` (`TIOCGPTPEER`): a description of our own.
pub fn open_peer(fd: RawFd, flags: i32) -> Result<OwnedFd> {
    // SAFETY: TIOCGPTPEER returns a new fd or -1.
    let s = unsafe { libc::ioctl(fd, libc::TIOCGPTPEER, flags as libc::c_ulong) };
    check(s)?;
    // SAFETY: the kernel just installed `s` for us.
    Ok(unsafe { OwnedFd::from_raw_fd(s) })
}

pub fn get_fl(fd: RawFd) -> Result<i32> {
    // SAFETY: F_GETFL on an fd we hold.
    let f = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    check(f)?;
    Ok(f)
}

pub fn set_fl(fd: RawFd, flags: i32) -> Result<()> {
    // SAFETY: F_SETFL on an fd we hold.
    check(unsafe { libc::fcntl(fd, libc::F_SETFL, flags) })
}

/// `read` that retries on EINTR; `Ok(None)` when nothing is there (EAGAIN, or EIO: the other
/// end closed with nothing left).
pub fn read_some(fd: RawFd, buf: &mut [u8]) -> Result<Option<usize>> {
    loop {
        // SAFETY: reading into a buffer we own, within its length.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            return Ok(Some(n as usize));
        }
        let e = Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EAGAIN) | Some(libc::EIO) => return Ok(None),
            _ => return Err(e),
        }
    }
}
