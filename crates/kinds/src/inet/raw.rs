//! getsockopt/setsockopt on plain buffers: the one place the kinds call them (IP, Unix,
//! netlink and packet sockets, socket-level options).

use std::io::{Error, Result};
use std::os::fd::RawFd;

/// Reads an option into `buf`; returns the length the kernel reported (for SO_GET_FILTER
/// with an empty buffer, the filter's length).
pub fn get(fd: RawFd, level: i32, opt: i32, buf: &mut [u8]) -> Result<usize> {
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: buf is writable for `len` bytes and len is a valid in/out pointer.
    let r = unsafe { libc::getsockopt(fd, level, opt, buf.as_mut_ptr().cast(), &mut len) };
    if r != 0 {
        return Err(Error::last_os_error());
    }
    Ok(len as usize)
}

pub fn set(fd: RawFd, level: i32, opt: i32, buf: &[u8]) -> Result<()> {
    // SAFETY: buf is readable for its length.
    let r = unsafe { libc::setsockopt(fd, level, opt, buf.as_ptr().cast(), buf.len() as libc::socklen_t) };
    if r != 0 {
        return Err(Error::last_os_error());
    }
    Ok(())
}

pub fn get_int(fd: RawFd, level: i32, opt: i32) -> Result<i32> {
    let mut b = [0u8; 4];
    get(fd, level, opt, &mut b)?;
    Ok(i32::from_ne_bytes(b))
}

pub fn set_int(fd: RawFd, level: i32, opt: i32, v: i32) -> Result<()> {
    set(fd, level, opt, &v.to_ne_bytes())
}

/// A NUL-terminated name option (SO_BINDTODEVICE, TCP_CONGESTION, TCP_ULP); empty when unset.
pub fn get_name(fd: RawFd, level: i32, opt: i32) -> Result<String> {
    let mut b = [0u8; 64];
    let n = get(fd, level, opt, &mut b)?.min(b.len());
    let end = b[..n].iter().position(|&c| c == 0).unwrap_or(n);
    Ok(String::from_utf8_lossy(&b[..end]).into_owned())
}

/// (seconds, microseconds) of SO_RCVTIMEO/SO_SNDTIMEO.
pub fn get_timeval(fd: RawFd, opt: i32) -> Result<(i64, i64)> {
    let mut b = [0u8; 16];
    get(fd, libc::SOL_SOCKET, opt, &mut b)?;
    let sec = i64::from_ne_bytes(b[..8].try_into().unwrap_or_default());
    let usec = i64::from_ne_bytes(b[8..].try_into().unwrap_or_default());
    Ok((sec, usec))
}

pub fn set_timeval(fd: RawFd, opt: i32, (sec, usec): (i64, i64)) -> Result<()> {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&sec.to_ne_bytes());
    b[8..].copy_from_slice(&usec.to_ne_bytes());
    set(fd, libc::SOL_SOCKET, opt, &b)
}

/// `struct linger` as (l_onoff, l_linger).
pub fn get_linger(fd: RawFd) -> Result<(i32, i32)> {
    let mut b = [0u8; 8];
    get(fd, libc::SOL_SOCKET, libc::SO_LINGER, &mut b)?;
    Ok((
        i32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
        i32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
    ))
}

pub fn set_linger(fd: RawFd, (on, secs): (i32, i32)) -> Result<()> {
    let mut b = [0u8; 8];
    b[..4].copy_from_slice(&on.to_ne_bytes());
    b[4..].copy_from_slice(&secs.to_ne_bytes());
    set(fd, libc::SOL_SOCKET, libc::SO_LINGER, &b)
}
