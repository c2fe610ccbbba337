//! What the kernel says of Unix sockets through NETLINK_SOCK_DIAG (unix_diag): a socket's
//! state, name, peer, queue lengths and, for a listener, the clients waiting to be accepted.
//! The request is a few fixed-size structs, written by hand (see linux/unix_diag.h).

use super::Name;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const NETLINK_SOCK_DIAG: i32 = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;

const UDIAG_SHOW_NAME: u32 = 0x01;
const UDIAG_SHOW_VFS: u32 = 0x02;
const UDIAG_SHOW_PEER: u32 = 0x04;
const UDIAG_SHOW_ICONS: u32 = 0x08;
const UDIAG_SHOW_RQLEN: u32 = 0x10;

const UNIX_DIAG_NAME: u16 = 0;
const UNIX_DIAG_VFS: u16 = 1;
const UNIX_DIAG_PEER: u16 = 2;
const UNIX_DIAG_ICONS: u16 = 3;
const UNIX_DIAG_RQLEN: u16 = 4;
const UNIX_DIAG_SHUTDOWN: u16 = 6;

pub const TCP_ESTABLISHED: u8 = 1;
pub const TCP_LISTEN: u8 = 10;

/// One socket as unix_diag reports it.
#[derive(Debug, Clone, Default)]
pub struct Diag {
    pub ino: u64,
    pub ty: u8,
    pub state: u8,
    pub name: Option<Name>,
    /// The peer's inode; 0 when there is none or it is closed, or an accept is pending.
    pub peer: u64,
    /// Listener: connections waiting to be accepted (sk_ack_backlog); others: bytes unread.
    pub rqueue: u32,
    /// Listener: the backlog given to listen(); others: memory of what it sent and its peer
    /// has not read yet.
    pub wqueue: u32,
    /// A listener's waiting connections, oldest first, as the inodes of their clients.
    pub icons: Vec<u64>,
    pub shutdown: u8,
    /// The inode of the file a path-bound socket made.
    pub vfs_ino: Option<u64>,
}

fn request(ino: u32, states: u32, show: u32, dump: bool) -> Vec<u8> {
    let mut m = Vec::with_capacity(40);
    m.extend_from_slice(&40u32.to_ne_bytes());
    m.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    let flags = NLM_F_REQUEST | if dump { NLM_F_DUMP } else { 0 };
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&1u32.to_ne_bytes()); // seq
    m.extend_from_slice(&0u32.to_ne_bytes()); // pid
                                              // struct unix_diag_req
    m.push(libc::AF_UNIX as u8);
    m.push(0);
    m.extend_from_slice(&0u16.to_ne_bytes());
    m.extend_from_slice(&states.to_ne_bytes());
    m.extend_from_slice(&ino.to_ne_bytes());
    m.extend_from_slice(&show.to_ne_bytes());
    // No cookie: INET_DIAG_NOCOOKIE twice.
    m.extend_from_slice(&u32::MAX.to_ne_bytes());
    m.extend_from_slice(&u32::MAX.to_ne_bytes());
    m
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    b.get(o..o + 4)
        .map(|s| u32::from_ne_bytes([s[0], s[1], s[2], s[3]]))
        .unwrap_or(0)
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    b.get(o..o + 2).map(|s| u16::from_ne_bytes([s[0], s[1]])).unwrap_or(0)
}

fn parse_msg(body: &[u8]) -> Diag {
    let mut d = Diag {
        ty: body.get(1).copied().unwrap_or(0),
        state: body.get(2).copied().unwrap_or(0),
        ino: u64::from(u32_at(body, 4)),
        ..Diag::default()
    };
    let mut o = 16;
    while o + 4 <= body.len() {
        let len = u16_at(body, o) as usize;
        let ty = u16_at(body, o + 2) & 0x3fff;
        if len < 4 || o + len > body.len() {
            break;
        }
        let val = &body[o + 4..o + len];
        match ty {
            UNIX_DIAG_NAME => d.name = Name::from_sun_path(val),
            UNIX_DIAG_VFS => d.vfs_ino = Some(u64::from(u32_at(val, 0))),
            UNIX_DIAG_PEER => d.peer = u64::from(u32_at(val, 0)),
            UNIX_DIAG_ICONS => d.icons = val.chunks_exact(4).map(|c| u64::from(u32_at(c, 0))).collect(),
            UNIX_DIAG_RQLEN => {
                d.rqueue = u32_at(val, 0);
                d.wqueue = u32_at(val, 4);
            }
            UNIX_DIAG_SHUTDOWN => d.shutdown = val.first().copied().unwrap_or(0),
            _ => {}
        }
        o += (len + 3) & !3;
    }
    d
}

fn query(req: &[u8], dump: bool) -> std::io::Result<Vec<Diag>> {
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
    // SAFETY: sending our own buffer; the kernel's netlink address is the zeroed default.
    let sent = unsafe { libc::send(fd.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) };
    if sent < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: buf is writable for its length.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let data = &buf[..n as usize];
        let mut o = 0;
        let mut done = n == 0;
        while o + 16 <= data.len() {
            let len = u32_at(data, o) as usize;
            let ty = u16_at(data, o + 4);
            if len < 16 || o + len > data.len() {
                break;
            }
            let body = &data[o + 16..o + len];
            match ty {
                NLMSG_DONE => done = true,
                NLMSG_ERROR => {
                    let err = u32_at(body, 0) as i32;
                    if err != 0 {
                        return Err(std::io::Error::from_raw_os_error(-err));
                    }
                    done = true;
                }
                SOCK_DIAG_BY_FAMILY => out.push(parse_msg(body)),
                _ => {}
            }
            o += (len + 3) & !3;
        }
        // An exact lookup answers with one message and no DONE.
        if done || (!dump && !out.is_empty()) {
            return Ok(out);
        }
    }
}

const SHOW_ALL: u32 = UDIAG_SHOW_NAME | UDIAG_SHOW_PEER | UDIAG_SHOW_ICONS | UDIAG_SHOW_RQLEN;

/// The socket with inode `ino` (in ckptd's network namespace, the programs' too).
pub fn lookup(ino: u64) -> std::io::Result<Diag> {
    let ino = u32::try_from(ino).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    query(&request(ino, u32::MAX, SHOW_ALL, false), false)?
        .into_iter()
        .next()
        .ok_or_else(|| std::io::Error::from_raw_os_error(libc::ENOENT))
}

/// Every listening socket, with its waiting connections.
pub fn listeners() -> std::io::Result<Vec<Diag>> {
    query(&request(0, 1 << TCP_LISTEN, SHOW_ALL, true), true)
}

/// Whether a live socket is bound to the file with inode `file_ino` (a path-bound socket
/// whose owner still runs), so that its file is not taken for a dead program's leftover.
pub fn bound_to_file(file_ino: u64) -> std::io::Result<bool> {
    let all = query(&request(0, u32::MAX, UDIAG_SHOW_VFS, true), true)?;
    // The diag reports the file's inode in 32 bits.
    Ok(all.iter().any(|d| d.vfs_ino == Some(file_ino & 0xffff_ffff)))
}
