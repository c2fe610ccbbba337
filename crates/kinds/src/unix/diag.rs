//! What the kernel says of Unix sockets through NETLINK_SOCK_DIAG (unix_diag): a socket's
//! state, name, peer, queue lengths and, for a listener, the clients waiting to be accepted.
//! The request is a few fixed-size structs, written by hand (see linux/unix_diag.h).

use super::Name;
use crate::sock_diag::{self, attrs, u32_at};

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

/// `struct unix_diag_req`.
fn request(ino: u32, states: u32, show: u32) -> Vec<u8> {
    let mut m = Vec::with_capacity(24);
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

fn parse_msg(body: &[u8]) -> Diag {
    let mut d = Diag {
        ty: body.get(1).copied().unwrap_or(0),
        state: body.get(2).copied().unwrap_or(0),
        ino: u64::from(u32_at(body, 4)),
        ..Diag::default()
    };
    for (ty, val) in attrs(body, 16) {
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
    }
    d
}

fn query(req: &[u8], dump: bool) -> std::io::Result<Vec<Diag>> {
    Ok(sock_diag::query(req, dump)?.iter().map(|b| parse_msg(b)).collect())
}

const SHOW_ALL: u32 = UDIAG_SHOW_NAME | UDIAG_SHOW_VFS | UDIAG_SHOW_PEER | UDIAG_SHOW_ICONS | UDIAG_SHOW_RQLEN;

/// The socket with inode `ino` (in ckptd's network namespace, the programs' too).
pub fn lookup(ino: u64) -> std::io::Result<Diag> {
    let ino = u32::try_from(ino).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    query(&request(ino, u32::MAX, SHOW_ALL), false)?
        .into_iter()
        .next()
        .ok_or_else(|| std::io::Error::from_raw_os_error(libc::ENOENT))
}

/// Every listening socket, with its waiting connections.
pub fn listeners() -> std::io::Result<Vec<Diag>> {
    query(&request(0, 1 << TCP_LISTEN, SHOW_ALL), true)
}

/// Whether a live socket is bound to the file with inode `file_ino` (a path-bound socket
/// whose owner still runs), so that its file is not taken for a dead program's leftover.
pub fn bound_to_file(file_ino: u64) -> std::io::Result<bool> {
    let all = query(&request(0, u32::MAX, UDIAG_SHOW_VFS), true)?;
    // Sockets this restore made itself (accepted ones carry their listener's file) are not
    // another program's.
    let ours: Vec<u64> = std::fs::read_dir("/proc/self/fd")?
        .filter_map(|e| {
            let target = std::fs::read_link(e.ok()?.path()).ok()?;
            let t = target.to_str()?;
            t.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect();
    // The diag reports the file's inode in 32 bits.
    Ok(all
        .iter()
        .any(|d| d.vfs_ino == Some(file_ino & 0xffff_ffff) && !ours.contains(&d.ino)))
}
