//! Connections a killed program left behind. A TCP socket the program had accepted lingers in
//! FIN_WAIT or LAST_ACK once the program is killed (until its peer closes, which can be never),
//! or in TIME_WAIT for a minute when the program had closed it first; owned by nobody, it keeps
//! the listening port from being bound again when the program had not set SO_REUSEADDR. The
//! kernel's sock_diag interface lists such orphans (inode 0) and destroys them (SOCK_DESTROY):
//! the peer of a live one gets the reset it would have got from the dead program's exit anyway.

use ckpt_kinds::sock_diag::{self, u32_at};
use std::net::{IpAddr, SocketAddr};

const TCP_LISTEN: u8 = 10;
/// `struct inet_diag_sockid`: ports and addresses in network order, then the socket cookie.
const SOCKID_LEN: usize = 48;
/// `struct inet_diag_msg` up to and including `idiag_inode`.
const MSG_LEN: usize = 4 + SOCKID_LEN + 20;

/// `struct inet_diag_req_v2` for TCP sockets of `addr`'s family in the `states` given.
fn request(addr: SocketAddr, states: u32, sockid: &[u8]) -> Vec<u8> {
    let family = if addr.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 } as u8;
    let mut m = vec![family, libc::IPPROTO_TCP as u8, 0, 0];
    m.extend_from_slice(&states.to_ne_bytes());
    m.extend_from_slice(sockid);
    m
}

const NOT_LISTENING: u32 = !(1u32 << TCP_LISTEN);

/// TCP sockets in `states` on `addr`'s port and address (any address when `addr` is
/// unspecified): (sock id, owner inode, 0 for an orphan).
fn sockets_on(addr: SocketAddr, states: u32) -> std::io::Result<Vec<(Vec<u8>, u32)>> {
    let all = sock_diag::query(&request(addr, states, &[0; SOCKID_LEN]), true)?;
    Ok(all
        .into_iter()
        .filter(|m| m.len() >= MSG_LEN)
        .filter_map(|m| {
            let id = &m[4..4 + SOCKID_LEN];
            let sport = u16::from_be_bytes([id[0], id[1]]);
            let src = match addr.ip() {
                IpAddr::V4(_) => IpAddr::from(<[u8; 4]>::try_from(&id[4..8]).ok()?),
                IpAddr::V6(_) => IpAddr::from(<[u8; 16]>::try_from(&id[4..20]).ok()?),
            };
            let same_addr = addr.ip().is_unspecified() || src.is_unspecified() || src == addr.ip();
            (sport == addr.port() && same_addr).then(|| (id.to_vec(), u32_at(&m, MSG_LEN - 4)))
        })
        .collect())
}

/// Destroys the orphaned connections that hold `addr`'s port; returns how many. When a running
/// program listens there, nothing is destroyed: the port is its.
pub fn clear_port(addr: SocketAddr) -> std::io::Result<usize> {
    if !sockets_on(addr, 1 << TCP_LISTEN)?.is_empty() {
        return Err(std::io::Error::other(format!(
            "a running program listens on {addr}; stop it to restore the listener there"
        )));
    }
    let ids: Vec<Vec<u8>> = sockets_on(addr, NOT_LISTENING)?
        .into_iter()
        .filter(|(_, inode)| *inode == 0)
        .map(|(id, _)| id)
        .collect();
    for id in &ids {
        sock_diag::destroy(&request(addr, NOT_LISTENING, id))?;
    }
    Ok(ids.len())
}
