//! Socket filters, for every family of socket ckpt re-creates (TCP, UDP, ping, Unix, netlink).
//! A classic BPF filter (`SO_ATTACH_FILTER`) is kept by the kernel as the program gave it and
//! read back exactly with `SO_GET_FILTER`, then attached again to the new socket; an eBPF
//! program (`SO_ATTACH_BPF`) has no such copy (the kernel answers EACCES) and is refused.
//! `SO_LOCK_FILTER` (the filter can no longer be changed or removed) is set back last.

use crate::KindError;
use serde::{Deserialize, Serialize};
use std::io::Error;
use std::os::fd::RawFd;

/// A classic BPF program: (code, jt, jf, k) per instruction, as `struct sock_filter`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Filter {
    pub insns: Vec<(u16, u8, u8, u32)>,
    /// SO_LOCK_FILTER: no filter may be attached, detached or replaced any more.
    pub locked: bool,
}

impl Filter {
    pub fn is_empty(&self) -> bool {
        self.insns.is_empty() && !self.locked
    }
}

fn get(fd: RawFd, opt: i32, buf: *mut libc::c_void, len: &mut libc::socklen_t) -> std::io::Result<()> {
    // SAFETY: the caller gives a buffer writable for `*len` bytes (or none with 0).
    if unsafe { libc::getsockopt(fd, libc::SOL_SOCKET, opt, buf, len) } != 0 {
        return Err(Error::last_os_error());
    }
    Ok(())
}

/// Reads the socket's filter and lock. For SO_GET_FILTER the kernel reports a length in
/// instructions, not bytes.
pub fn capture(fd: RawFd) -> Result<Filter, KindError> {
    let mut len: libc::socklen_t = 0;
    match get(fd, libc::SO_GET_FILTER, std::ptr::null_mut(), &mut len) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EACCES) => {
            return Err(KindError::Refused(
                "an eBPF program is attached as its socket filter (SO_ATTACH_BPF); the kernel does not give it back, ckpt cannot attach it again"
                    .into(),
            ))
        }
        Err(e) => return Err(KindError::read("its socket filter (SO_GET_FILTER)")(e)),
    }
    let mut insns = Vec::new();
    if len > 0 {
        let mut raw = vec![
            libc::sock_filter {
                code: 0,
                jt: 0,
                jf: 0,
                k: 0
            };
            len as usize
        ];
        get(fd, libc::SO_GET_FILTER, raw.as_mut_ptr().cast(), &mut len)
            .map_err(KindError::read("its socket filter (SO_GET_FILTER)"))?;
        raw.truncate(len as usize);
        insns = raw.iter().map(|i| (i.code, i.jt, i.jf, i.k)).collect();
    }
    let mut locked: i32 = 0;
    let mut l = std::mem::size_of::<i32>() as libc::socklen_t;
    get(fd, libc::SO_LOCK_FILTER, (&mut locked as *mut i32).cast(), &mut l)
        .map_err(KindError::read("SO_LOCK_FILTER"))?;
    Ok(Filter {
        insns,
        locked: locked != 0,
    })
}

fn set(fd: RawFd, opt: i32, val: *const libc::c_void, len: usize) -> std::io::Result<()> {
    // SAFETY: the caller gives a value readable for `len` bytes.
    if unsafe { libc::setsockopt(fd, libc::SOL_SOCKET, opt, val, len as libc::socklen_t) } != 0 {
        return Err(Error::last_os_error());
    }
    Ok(())
}

/// Attaches the filter to a new socket, then locks it if it was.
pub fn attach(fd: RawFd, f: &Filter) -> std::io::Result<()> {
    if !f.insns.is_empty() {
        let mut insns: Vec<libc::sock_filter> = f
            .insns
            .iter()
            .map(|&(code, jt, jf, k)| libc::sock_filter { code, jt, jf, k })
            .collect();
        let prog = libc::sock_fprog {
            len: insns.len() as u16,
            filter: insns.as_mut_ptr(),
        };
        set(
            fd,
            libc::SO_ATTACH_FILTER,
            (&prog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>(),
        )?;
    }
    if f.locked {
        let one: i32 = 1;
        set(
            fd,
            libc::SO_LOCK_FILTER,
            (&one as *const i32).cast(),
            std::mem::size_of::<i32>(),
        )?;
    }
    Ok(())
}

/// For `ckptctl show`.
pub fn describe(f: &Filter) -> String {
    match (f.insns.len(), f.locked) {
        (0, false) => String::new(),
        (0, true) => " (filter locked)".into(),
        (n, l) => format!(
            " (socket filter of {n} instructions{})",
            if l { ", locked" } else { "" }
        ),
    }
}
