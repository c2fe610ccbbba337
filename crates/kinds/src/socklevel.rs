//! Socket-level (`SOL_SOCKET`) options any socket takes and reports back, for the sockets
//! whose options are not ckptd's own table (Unix and netlink sockets; TCP and UDP have
//! theirs in [`crate::inet`]). Recorded by name (stable across versions of this list) and set
//! back only where the new socket's value differs.

use std::os::fd::RawFd;

// Not in the libc crate yet (asm-generic/socket.h); the IP table uses them too.
pub const SO_TIMESTAMPING_OLD: i32 = 37;
pub const SO_WIFI_STATUS: i32 = 41;
pub const SO_NOFCS: i32 = 43;
pub const SO_SELECT_ERR_QUEUE: i32 = 45;
/// Read as an int: capped at 2^32-1, which is also what an unset rate reads as.
pub const SO_MAX_PACING_RATE: i32 = 47;
pub const SO_TXREHASH: i32 = 74;
pub const SO_RCVMARK: i32 = 75;
const SO_PASSPIDFD: i32 = 76;
const SO_PASSRIGHTS: i32 = 83;

/// Socket-level integer options any socket takes and reports back, by name (stable across
/// versions of this list); each is set back only where the new socket's value differs. One a
/// kernel does not know is one the program could not set either: it is not read.
pub const GENERIC: &[(&str, i32)] = &[
    ("SO_PASSCRED", libc::SO_PASSCRED),
    ("SO_REUSEADDR", libc::SO_REUSEADDR),
    ("SO_KEEPALIVE", libc::SO_KEEPALIVE),
    ("SO_BROADCAST", libc::SO_BROADCAST),
    ("SO_DONTROUTE", libc::SO_DONTROUTE),
    ("SO_OOBINLINE", libc::SO_OOBINLINE),
    ("SO_RCVLOWAT", libc::SO_RCVLOWAT),
    ("SO_PRIORITY", libc::SO_PRIORITY),
    ("SO_MARK", libc::SO_MARK),
    ("SO_TIMESTAMP", libc::SO_TIMESTAMP),
    ("SO_TIMESTAMPNS", libc::SO_TIMESTAMPNS),
    ("SO_PASSSEC", libc::SO_PASSSEC),
    ("SO_PASSPIDFD", SO_PASSPIDFD),
    ("SO_PASSRIGHTS", SO_PASSRIGHTS),
    // The flags only: a PHC binding (SOF_TIMESTAMPING_BIND_PHC) does not set back as an int.
    ("SO_TIMESTAMPING", SO_TIMESTAMPING_OLD),
    ("SO_WIFI_STATUS", SO_WIFI_STATUS),
    ("SO_NOFCS", SO_NOFCS),
    ("SO_SELECT_ERR_QUEUE", SO_SELECT_ERR_QUEUE),
    ("SO_MAX_PACING_RATE", SO_MAX_PACING_RATE),
    ("SO_TXREHASH", SO_TXREHASH),
    ("SO_RCVMARK", SO_RCVMARK),
];

fn get_int(fd: RawFd, opt: i32) -> std::io::Result<i32> {
    crate::inet::raw::get_int(fd, libc::SOL_SOCKET, opt)
}

pub fn linger(fd: RawFd) -> (i32, i32) {
    let mut l = libc::linger {
        l_onoff: 0,
        l_linger: 0,
    };
    let mut len = std::mem::size_of::<libc::linger>() as libc::socklen_t;
    // SAFETY: l and len are valid out-pointers of the right size.
    unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&mut l as *mut libc::linger).cast(),
            &mut len,
        )
    };
    (l.l_onoff, l.l_linger)
}

pub fn set_linger(fd: RawFd, (on, secs): (i32, i32)) -> std::io::Result<()> {
    let l = libc::linger {
        l_onoff: on,
        l_linger: secs,
    };
    // SAFETY: l is a valid linger of the given size.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn set_int(fd: RawFd, opt: i32, v: i32) -> std::io::Result<()> {
    crate::inet::raw::set_int(fd, libc::SOL_SOCKET, opt, v)
}

/// The [`GENERIC`] options this kernel reports for the socket.
pub fn read(fd: RawFd) -> Vec<(String, i32)> {
    GENERIC
        .iter()
        .filter_map(|&(name, opt)| get_int(fd, opt).ok().map(|v| (name.to_string(), v)))
        .collect()
}

/// Sets each option where the socket's value differs.
pub fn apply(fd: RawFd, opts: &[(String, i32)]) -> std::io::Result<()> {
    for (name, v) in opts {
        let Some(&(_, opt)) = GENERIC.iter().find(|(n, _)| n == name) else {
            return Err(std::io::Error::other(format!(
                "{name} is unknown to this version of ckpt"
            )));
        };
        let err = |e: std::io::Error| std::io::Error::new(e.kind(), format!("{name}={v}: {e}"));
        if get_int(fd, opt).map_err(err)? != *v {
            set_int(fd, opt, *v).map_err(err)?;
        }
    }
    Ok(())
}
