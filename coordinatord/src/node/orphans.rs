//! Connections a killed program left behind. A TCP socket the program had accepted lingers in
//! FIN_WAIT or LAST_ACK once the program is killed (until its peer closes, which can be never),
//! or in TIME_WAIT for a minute when the program had closed it first; owned by nobody, it keeps
//! the listening port from being bound again when the program had not set SO_REUSEADDR. The
//! kernel's sock_diag interface lists such orphans (inode 0) and destroys them (SOCK_DESTROY):
//! the peer of a live one gets the reset it would have got from the dead program's exit anyway.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const NETLINK_SOCK_DIAG: i32 = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const TCP_LISTEN: u8 = 10;

/// `struct inet_diag_sockid`: ports and addresses in network order, then the socket cookie.
const SOCKID_LEN: usize = 48;
/// `struct inet_diag_req_v2`.
const REQ_LEN: usize = 8 + SOCKID_LEN;
/// `struct inet_diag_msg` up to and including `idiag_inode`.
const MSG_LEN: usize = 4 + SOCKID_LEN + 20;

fn request(ty: u16, flags: u16, family: u8, sockid: &[u8; SOCKID_LEN]) -> Vec<u8> {
    let mut m = Vec::with_capacity(16 + REQ_LEN);
    m.extend_from_slice(&((16 + REQ_LEN) as u32).to_ne_bytes());
    m.extend_from_slice(&ty.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&1u32.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(&[family, libc::IPPROTO_TCP as u8, 0, 0]);
    // Every state but LISTEN.
    m.extend_from_slice(&(!(1u32 << TCP_LISTEN)).to_ne_bytes());
    m.extend_from_slice(sockid);
    m
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
    let tv = libc::timeval { tv_sec: 5, tv_usec: 0 };
    // SAFETY: passing a valid timeval of its size.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        )
    };
    Ok(fd)
}

fn send(fd: &OwnedFd, msg: &[u8]) -> std::io::Result<()> {
    // SAFETY: sending a buffer we own on our netlink socket (to the kernel: no address needed).
    if unsafe { libc::send(fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Netlink messages of one read: (type, payload).
fn messages(buf: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 16 <= buf.len() {
        let len = u32::from_ne_bytes(buf[at..at + 4].try_into().unwrap_or_default()) as usize;
        let ty = u16::from_ne_bytes(buf[at + 4..at + 6].try_into().unwrap_or_default());
        if len < 16 || at + len > buf.len() {
            break;
        }
        out.push((ty, &buf[at + 16..at + len]));
        at += (len + 3) & !3;
    }
    out
}

fn recv(fd: &OwnedFd, buf: &mut [u8]) -> std::io::Result<usize> {
    // SAFETY: buf is writable for its length.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Orphaned TCP sockets (no owner, TIME_WAIT included) on `addr`'s port and address (any address
/// when `addr` is unspecified): their sock ids.
fn orphans_on(fd: &OwnedFd, addr: SocketAddr) -> std::io::Result<Vec<[u8; SOCKID_LEN]>> {
    let family = if addr.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 } as u8;
    send(
        fd,
        &request(
            SOCK_DIAG_BY_FAMILY,
            NLM_F_REQUEST | NLM_F_DUMP,
            family,
            &[0; SOCKID_LEN],
        ),
    )?;
    let mut found = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = recv(fd, &mut buf)?;
        for (ty, body) in messages(&buf[..n]) {
            match ty {
                NLMSG_DONE => return Ok(found),
                NLMSG_ERROR => return Err(std::io::Error::other("sock_diag dump failed")),
                SOCK_DIAG_BY_FAMILY if body.len() >= MSG_LEN => {
                    let id: [u8; SOCKID_LEN] = body[4..4 + SOCKID_LEN].try_into().unwrap_or([0; SOCKID_LEN]);
                    let sport = u16::from_be_bytes([id[0], id[1]]);
                    let inode = u32::from_ne_bytes(body[MSG_LEN - 4..MSG_LEN].try_into().unwrap_or_default());
                    let src = match addr.ip() {
                        IpAddr::V4(_) => IpAddr::from(<[u8; 4]>::try_from(&id[4..8]).unwrap_or_default()),
                        IpAddr::V6(_) => IpAddr::from(<[u8; 16]>::try_from(&id[4..20]).unwrap_or_default()),
                    };
                    let same_addr = addr.ip().is_unspecified() || src == addr.ip();
                    if inode == 0 && sport == addr.port() && same_addr {
                        found.push(id);
                    }
                }
                _ => {}
            }
        }
    }
}

/// Destroys the orphaned connections that hold `addr`'s port; returns how many.
pub fn clear_port(addr: SocketAddr) -> std::io::Result<usize> {
    let fd = open()?;
    let ids = orphans_on(&fd, addr)?;
    let family = if addr.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 } as u8;
    let mut buf = vec![0u8; 8192];
    for id in &ids {
        send(&fd, &request(SOCK_DESTROY, NLM_F_REQUEST | NLM_F_ACK, family, id))?;
        let n = recv(&fd, &mut buf)?;
        for (ty, body) in messages(&buf[..n]) {
            if ty == NLMSG_ERROR && body.len() >= 4 {
                let err = i32::from_ne_bytes(body[..4].try_into().unwrap_or_default());
                // Gone meanwhile (its peer closed): as good as destroyed.
                if err != 0 && -err != libc::ENOENT {
                    return Err(std::io::Error::from_raw_os_error(-err));
                }
            }
        }
    }
    Ok(ids.len())
}
