//! What only NETLINK_SOCK_DIAG (inet_diag) tells of a TCP or UDP socket: a listener's backlog
//! (reported as its send-queue length) and the shutdown state; for sockets it does not list,
//! what poll tells of the shutdown state ([`by_poll`]). The request and answer are
//! fixed-size structs (see linux/inet_diag.h), written by hand.

use crate::sock_diag::{self, attrs, u32_at};

const INET_DIAG_SHUTDOWN: u16 = 8;
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

/// Finds the socket with inode `ino` among the host's sockets of that family and protocol.
pub fn find(family: i32, protocol: i32, ino: u64) -> std::io::Result<Option<Diag>> {
    // struct inet_diag_req_v2: family, protocol, ext, pad, states (all), a zero sockid.
    let mut req = vec![family as u8, protocol as u8, 0, 0];
    req.extend_from_slice(&u32::MAX.to_ne_bytes());
    req.extend_from_slice(&[0u8; 48]);
    Ok(sock_diag::query(&req, true)?
        .into_iter()
        .find(|m| m.len() >= MSG_LEN && u64::from(u32_at(m, 68)) == ino)
        .map(|m| parse(&m)))
}

fn parse(msg: &[u8]) -> Diag {
    let shutdown = attrs(msg, MSG_LEN)
        .into_iter()
        .find(|(ty, _)| *ty == INET_DIAG_SHUTDOWN)
        .and_then(|(_, v)| v.first().copied())
        .unwrap_or(0);
    Diag {
        state: msg[1],
        wqueue: u32_at(msg, 60),
        shutdown,
    }
}

/// The shutdown sides (1: receive, 2: send) of a socket inet_diag does not list (a ping socket,
/// a UDP or TCP socket never bound), as poll shows them: a receive side shut raises
/// POLLRDHUP, both sides POLLHUP as well (a datagram socket). A send side shut alone shows nowhere
/// but in a send (which would send): it is not seen.
pub fn by_poll(fd: std::os::fd::RawFd) -> u8 {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no wait.
    if unsafe { libc::poll(&mut p, 1, 0) } <= 0 {
        return 0;
    }
    // A TCP socket in state CLOSE raises POLLHUP alone.
    match (p.revents & libc::POLLRDHUP != 0, p.revents & libc::POLLHUP != 0) {
        (false, _) => 0,
        (true, false) => 1,
        (true, true) => 3,
    }
}
