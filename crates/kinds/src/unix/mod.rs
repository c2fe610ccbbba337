//! Unix domain sockets (stream, datagram, seqpacket): name, state, peer, options and the
//! bytes or datagrams queued unread. Both ends of a connection in the checkpoint come back
//! connected to each other with their queues; an end whose peer is outside the checkpoint
//! comes back with its peer closed. The peer is known by inode through unix_diag
//! ([`diag`]); queues are read without consuming ([`queue`]) and refilled by sending from
//! the peer end at restore ([`restore`]).

pub mod diag;
mod opts;
pub mod queue;
pub mod restore;

pub use opts::Opts;
pub use restore::Restore;

use crate::{KindError, Source};
use serde::{Deserialize, Serialize};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum SockType {
    Stream,
    Dgram,
    SeqPacket,
}

impl SockType {
    pub fn raw(self) -> i32 {
        match self {
            SockType::Stream => libc::SOCK_STREAM,
            SockType::Dgram => libc::SOCK_DGRAM,
            SockType::SeqPacket => libc::SOCK_SEQPACKET,
        }
    }
    fn word(self) -> &'static str {
        match self {
            SockType::Stream => "stream",
            SockType::Dgram => "datagram",
            SockType::SeqPacket => "seqpacket",
        }
    }
}

/// A socket's address: a path in the file system or a name in the abstract namespace
/// (without its leading NUL byte).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Hash)]
pub enum Name {
    Path(Vec<u8>),
    Abstract(Vec<u8>),
}

impl Name {
    /// From the bytes of `sun_path` as the kernel gives them (length without the family).
    pub fn from_sun_path(b: &[u8]) -> Option<Name> {
        match b.first() {
            None => None,
            Some(0) => Some(Name::Abstract(b[1..].to_vec())),
            Some(_) => {
                let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
                Some(Name::Path(b[..end].to_vec()))
            }
        }
    }

    /// A `sockaddr_un` for this name and its length.
    pub fn sockaddr(&self) -> (libc::sockaddr_un, libc::socklen_t) {
        // SAFETY: sockaddr_un is plain data; all zeroes is valid.
        let mut sa: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        sa.sun_family = libc::AF_UNIX as libc::sa_family_t;
        let (bytes, skip) = match self {
            Name::Path(p) => (p.as_slice(), 0),
            Name::Abstract(a) => (a.as_slice(), 1),
        };
        let n = bytes.len().min(sa.sun_path.len() - skip);
        for (i, b) in bytes[..n].iter().enumerate() {
            sa.sun_path[i + skip] = *b as libc::c_char;
        }
        let base = std::mem::size_of::<libc::sa_family_t>();
        let len = match self {
            Name::Path(_) => base + n + usize::from(n < sa.sun_path.len()),
            Name::Abstract(_) => base + 1 + n,
        };
        (sa, len as libc::socklen_t)
    }

    pub fn show(&self) -> String {
        match self {
            Name::Path(p) => String::from_utf8_lossy(p).into_owned(),
            Name::Abstract(a) => format!("@{}", String::from_utf8_lossy(a)),
        }
    }
}

/// The sender's credentials attached to queued data (seen when the receiver has
/// `SO_PASSCRED`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Creds {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
}

/// Data queued unread: one datagram or seqpacket record, or a run of stream bytes sent with
/// the same credentials.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Message {
    pub data: Vec<u8>,
    /// The sender's address, for datagrams from a named socket.
    pub from: Option<Name>,
    pub creds: Option<Creds>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum State {
    /// Neither connected nor listening (it may be bound).
    Unconnected,
    /// Listening with `backlog`; `waiting` are the inodes of the clients whose connections
    /// wait to be accepted, oldest first.
    Listening { backlog: u32, waiting: Vec<u64> },
    /// Connected to the socket with inode `peer` (0: the peer was closed), named `peer_name`.
    Connected { peer: u64, peer_name: Option<Name> },
    /// A client whose connection waits in the accept queue of listener `listener`.
    Waiting { listener: u64, listener_name: Option<Name> },
}

/// The file a socket bound to a path made: who owns it and who may connect.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct SockFile {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Record {
    /// The socket's inode at checkpoint: how its peer and listener name it.
    pub ino: u64,
    /// The socket file of a path-bound socket, when it is still there.
    pub file: Option<SockFile>,
    pub ty: SockType,
    pub name: Option<Name>,
    pub state: State,
    /// The kernel's shutdown bits (1: no more receives, 2: no more sends).
    pub shutdown: u8,
    pub opts: Opts,
    pub queue: Vec<Message>,
}

impl Record {
    /// The peer's inode when connected to a live peer.
    pub fn peer(&self) -> Option<u64> {
        match self.state {
            State::Connected { peer, .. } if peer != 0 => Some(peer),
            _ => None,
        }
    }
}

fn is_relative(n: &Option<Name>) -> bool {
    matches!(n, Some(Name::Path(p)) if p.first() != Some(&b'/'))
}

/// Whether `src` is a Unix socket (other sockets are left to the caller).
pub fn handles(src: &Source) -> bool {
    src.link.starts_with("socket:")
        && src
            .file()
            .is_ok_and(|fd| opts::int(fd, libc::SOL_SOCKET, libc::SO_DOMAIN) == libc::AF_UNIX)
}

pub fn capture(src: &Source) -> Result<Record, KindError> {
    let what = || format!("Unix socket fd {}", src.fd);
    if let Some(n) = src
        .info("scm_fds")
        .and_then(|v| v.parse::<u32>().ok())
        .filter(|&n| n > 0)
    {
        return Err(KindError::Refused(format!(
            "{n} fds in flight on a Unix socket (sent with SCM_RIGHTS, not yet received); let the receiver take them before checkpointing"
        )));
    }
    let fd = src.file().map_err(KindError::read(what()))?;
    let ty = match opts::int(fd, libc::SOL_SOCKET, libc::SO_TYPE) {
        libc::SOCK_STREAM => SockType::Stream,
        libc::SOCK_DGRAM => SockType::Dgram,
        libc::SOCK_SEQPACKET => SockType::SeqPacket,
        t => return Err(KindError::Unsupported(format!("a Unix socket of type {t}"))),
    };
    let ino = src.meta.ino();
    let d = diag::lookup(ino).map_err(KindError::read(format!("unix_diag of {}", what())))?;
    let refuse_name = |n: &Option<Name>| {
        if is_relative(n) {
            let shown = n.as_ref().map(Name::show).unwrap_or_default();
            return Err(KindError::Refused(format!(
                "a Unix socket bound to the relative path {shown}; bind it to an absolute path to checkpoint it"
            )));
        }
        Ok(())
    };
    refuse_name(&d.name)?;
    let state = match d.state {
        diag::TCP_LISTEN => {
            for client in &d.icons {
                let c = diag::lookup(*client).unwrap_or_default();
                if c.wqueue > 0 {
                    return Err(KindError::Refused(format!(
                        "a listening Unix socket with a connection not yet accepted whose client already sent data (socket {client}); let the program accept it before checkpointing"
                    )));
                }
            }
            State::Listening {
                backlog: d.wqueue,
                waiting: d.icons.clone(),
            }
        }
        diag::TCP_ESTABLISHED if d.peer == 0 && ty != SockType::Dgram => {
            let ls = diag::listeners().map_err(KindError::read(format!("unix_diag listeners for {}", what())))?;
            match ls.into_iter().find(|l| l.icons.contains(&ino)) {
                Some(l) => {
                    if d.wqueue > 0 {
                        return Err(KindError::Refused(
                            "a Unix socket whose connection is not yet accepted already sent data; let the server accept it before checkpointing".to_string(),
                        ));
                    }
                    refuse_name(&l.name)?;
                    State::Waiting {
                        listener: l.ino,
                        listener_name: l.name,
                    }
                }
                None => State::Connected {
                    peer: 0,
                    peer_name: None,
                },
            }
        }
        // A datagram socket others connected to is marked established too: only its own
        // peer says whether it is connected.
        diag::TCP_ESTABLISHED | 7 if ty == SockType::Dgram => match peer_address(fd) {
            None => State::Unconnected,
            Some(peer_name) => {
                refuse_name(&peer_name)?;
                State::Connected {
                    peer: d.peer,
                    peer_name,
                }
            }
        },
        diag::TCP_ESTABLISHED => {
            let peer_name = if d.peer != 0 {
                diag::lookup(d.peer).ok().and_then(|p| p.name)
            } else {
                None
            };
            refuse_name(&peer_name)?;
            State::Connected {
                peer: d.peer,
                peer_name,
            }
        }
        7 => State::Unconnected,
        s => {
            return Err(KindError::Unsupported(format!(
                "a Unix socket in state {s} (connecting)"
            )))
        }
    };
    refuse_foreign_creds(fd, &state)?;
    let file = match (&d.name, d.vfs_ino) {
        (Some(Name::Path(p)), Some(vfs)) => std::fs::symlink_metadata(std::ffi::OsStr::from_bytes(p))
            .ok()
            .filter(|m| m.file_type().is_socket() && m.ino() & 0xffff_ffff == vfs)
            .map(|m| SockFile {
                mode: m.mode() & 0o7777,
                uid: m.uid(),
                gid: m.gid(),
            }),
        _ => None,
    };
    let opts = Opts::read(fd)?;
    let queue = match state {
        State::Listening { .. } => Vec::new(),
        _ => queue::peek(fd, ty, opts.passcred).map_err(|e| match e {
            queue::PeekError::Io(e) => KindError::Read {
                what: format!("the queue of {}", what()),
                source: e,
            },
            queue::PeekError::Refused(m) => KindError::Refused(m),
        })?,
    };
    Ok(Record {
        ino,
        file,
        ty,
        name: d.name,
        state,
        shutdown: d.shutdown,
        opts,
        queue,
    })
}

/// ckptd makes the restored connections and listeners itself, so the credentials the kernel
/// gives their peers (`SO_PEERCRED`: a listener's are what its clients see) are ckptd's. A
/// socket whose peer credentials are another user's would come back with them changed (a
/// server checking its clients' uid would see root): refused, with the way out.
fn refuse_foreign_creds(fd: std::os::fd::RawFd, state: &State) -> Result<(), KindError> {
    if matches!(state, State::Unconnected) {
        return Ok(());
    }
    let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: cred and len are valid out-pointers of the right size.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    // SAFETY: geteuid/getegid have no preconditions.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    // pid 0: no credentials were ever recorded (a datagram socket connected by name).
    if r != 0 || cred.pid == 0 || (cred.uid, cred.gid) == (uid, gid) {
        return Ok(());
    }
    Err(KindError::Refused(format!(
        "a Unix socket whose peer credentials (SO_PEERCRED uid {} gid {}) ckptd, running as uid {uid} gid {gid}, cannot give back; checkpoint this program with a ckptd of its own user",
        cred.uid, cred.gid
    )))
}

/// The peer's address of a connected socket (`Some(None)`: an unnamed peer), `None` when
/// it is not connected.
fn peer_address(fd: std::os::fd::RawFd) -> Option<Option<Name>> {
    // SAFETY: plain data, all zeroes valid.
    let mut sa: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: sa and len are valid out-pointers of the right size.
    if unsafe { libc::getpeername(fd, (&mut sa as *mut libc::sockaddr_un).cast(), &mut len) } != 0 {
        return None;
    }
    let base = std::mem::size_of::<libc::sa_family_t>();
    let n = (len as usize).saturating_sub(base).min(sa.sun_path.len());
    // SAFETY: the kernel wrote `len` bytes of `sa`; sun_path holds n of them.
    let path: &[u8] = unsafe { std::slice::from_raw_parts(sa.sun_path.as_ptr().cast(), n) };
    Some(Name::from_sun_path(path))
}

/// Whether `rec` is connected to a socket not among `inos` (the Unix sockets of the
/// checkpoint): it comes back with its peer closed.
pub fn peer_outside(rec: &Record, inos: &std::collections::HashSet<u64>) -> bool {
    match &rec.state {
        State::Connected { peer, .. } => *peer == 0 || !inos.contains(peer),
        _ => false,
    }
}

/// Whether `rec` is connected to a socket among `inos` (the Unix sockets of one host's images):
/// on stdio, such a socket is made again connected to its peer instead of being replaced by the
/// restoring `ckptctl`'s stdio.
pub fn peer_within(rec: &Record, inos: &std::collections::HashSet<u64>) -> bool {
    matches!(&rec.state, State::Connected { peer, .. } if *peer != 0 && inos.contains(peer))
}

pub fn describe(rec: &Record) -> String {
    let name = rec.name.as_ref().map(|n| format!(" {}", n.show())).unwrap_or_default();
    let state = match &rec.state {
        State::Unconnected => String::new(),
        State::Listening { backlog, waiting } => {
            format!(", listening (backlog {backlog}, {} waiting)", waiting.len())
        }
        State::Connected { peer: 0, .. } => ", peer closed".to_string(),
        State::Connected { peer, peer_name } => {
            let pn = peer_name.as_ref().map(|n| format!(" {}", n.show())).unwrap_or_default();
            format!(", connected to socket {peer}{pn}")
        }
        State::Waiting { listener_name, .. } => {
            let ln = listener_name.as_ref().map(Name::show).unwrap_or_default();
            format!(", waiting to be accepted by {ln}")
        }
    };
    let queued = match rec.queue.len() {
        0 => String::new(),
        _ if rec.ty == SockType::Stream => {
            format!(
                ", {} bytes queued",
                rec.queue.iter().map(|m| m.data.len()).sum::<usize>()
            )
        }
        n => format!(", {n} messages queued"),
    };
    format!("unix {} socket{name}{state}{queued}", rec.ty.word())
}
