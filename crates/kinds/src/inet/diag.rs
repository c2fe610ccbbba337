//! What only NETLINK_SOCK_DIAG (inet_diag) tells of a TCP or UDP socket: a listener's backlog
//! (reported as its send-queue length) and the shutdown state. The request and answer are
//! fixed-size structs (see linux/inet_diag.h), written by hand.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const NETLINK_SOCK_DIAG: i32 = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const INET_DIAG_SHUTDOWN: u16 = 8;
/// `struct inet_diag_req_v2`: family, protocol, ext, pad, states, then a 48-byte sockid.
const REQ_LEN: usize = 56;
/// `struct inet_diag_msg`: 4 bytes, the sockid, expires, rqueue, wqueue, uid, inode.
const MSG_LEN: usize = 72;

/// One socket as inet_diag reports it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Diag {
    pub state: u8,
    /// A listener's backlog (what listen() was given, capped by somaxconn).
    pub wqueue: u32,
    /// `SHUTDOWN_MASK` bits: 1 receive side, 2 send side.
    pub shutdown: u8,
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    b.get(o..o + 4)
        .map(|s| u32::from_ne_bytes([s[0], s[1], s[2], s[3]]))
        .unwrap_or(0)
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    b.get(o..o + 2).map(|s| u16::from_ne_bytes([s[0], s[1]])).unwrap_or(0)
}

fn open() -> std::io::Result<OwnedFd> {
    // SAFETY: socket returns a new fd or -1.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the fd was just created and is ours.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    super::raw::set_timeval(fd.as_raw_fd(), libc::SO_RCVTIMEO, (5, 0))?;
    Ok(fd)
}

/// Finds the socket with inode `ino` among the host's sockets of that family and protocol.
pub fn find(family: i32, protocol: i32, ino: u64) -> std::io::Result<Option<Diag>> {
    let nl = open()?;
    let mut m = Vec::with_capacity(16 + REQ_LEN);
    m.extend_from_slice(&((16 + REQ_LEN) as u32).to_ne_bytes());
    m.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    m.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    m.extend_from_slice(&1u32.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(&[family as u8, protocol as u8, 0, 0]);
    m.extend_from_slice(&u32::MAX.to_ne_bytes()); // every state
    m.extend_from_slice(&[0u8; 48]);
    // SAFETY: sending a buffer we own on our netlink socket (to the kernel: no address needed).
    if unsafe { libc::send(nl.as_raw_fd(), m.as_ptr().cast(), m.len(), 0) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut buf = vec![0u8; 64 << 10];
    let mut found = None;
    loop {
        // SAFETY: buf is writable for its length.
        let n = unsafe { libc::recv(nl.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut off = 0usize;
        let n = n as usize;
        while off + 16 <= n {
            let len = u32_at(&buf, off) as usize;
            let ty = u16_at(&buf, off + 4);
            if len < 16 || off + len > n {
                break;
            }
            match ty {
                NLMSG_DONE => return Ok(found),
                NLMSG_ERROR => {
                    let errno = -(u32_at(&buf, off + 16) as i32);
                    return Err(std::io::Error::from_raw_os_error(errno));
                }
                _ => {
                    let msg = &buf[off + 16..off + len];
                    if msg.len() >= MSG_LEN && u32_at(msg, 68) as u64 == ino {
                        found = Some(parse(msg));
                    }
                }
            }
            off += (len + 3) & !3;
        }
    }
}

fn parse(msg: &[u8]) -> Diag {
    let mut d = Diag {
        state: msg[1],
        wqueue: u32_at(msg, 60),
        shutdown: 0,
    };
    let mut off = MSG_LEN;
    while off + 4 <= msg.len() {
        let len = u16_at(msg, off) as usize;
        let ty = u16_at(msg, off + 2);
        if len < 4 {
            break;
        }
        if ty == INET_DIAG_SHUTDOWN {
            d.shutdown = msg.get(off + 4).copied().unwrap_or(0);
        }
        off += (len + 3) & !3;
    }
    d
}
