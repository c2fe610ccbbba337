//! Re-creating a host's Unix sockets. Both ends of a connection are made when the first is
//! asked for (the second waits here, by the inode the checkpoint gave it); queues, waiting
//! connections, datagram connections and shutdowns are put back in [`Restore::finish`], once
//! every socket exists and before any program runs.

use super::{queue, Name, Record, SockType, State};
use crate::KindError;
use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

struct Made {
    rec: Record,
    fd: OwnedFd,
}

#[derive(Default)]
pub struct Restore {
    /// The second end of a pair, until its record comes: (peer inode) → (fd, first end's inode).
    waiting: HashMap<u64, (OwnedFd, u64)>,
    /// Ends standing in for peers outside the checkpoint, by the inode of the end they
    /// serve: they send its queue, then are closed.
    standins: HashMap<u64, OwnedFd>,
    made: Vec<Made>,
}

fn io_err(msg: String) -> std::io::Error {
    std::io::Error::other(msg)
}

fn new_socket(ty: SockType) -> std::io::Result<OwnedFd> {
    // SAFETY: socket returns a new fd or -1.
    let fd = unsafe { libc::socket(libc::AF_UNIX, ty.raw() | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the fd was just created and is ours.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn socketpair(ty: SockType) -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut sv = [0i32; 2];
    // SAFETY: sv has room for the two fds.
    if unsafe { libc::socketpair(libc::AF_UNIX, ty.raw() | libc::SOCK_CLOEXEC, 0, sv.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both fds were just created and are ours.
    Ok(unsafe { (OwnedFd::from_raw_fd(sv[0]), OwnedFd::from_raw_fd(sv[1])) })
}

fn check(r: i32) -> std::io::Result<()> {
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn connect_name(fd: RawFd, name: &Name) -> std::io::Result<()> {
    let (sa, len) = name.sockaddr();
    // A full backlog must fail here, not hang the restore.
    // SAFETY: fcntl flags on our own socket; restored by the restorer (F_SETFL) after.
    let fl = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    unsafe { libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK) };
    // SAFETY: sa is a valid sockaddr_un of `len` bytes.
    let r = unsafe { libc::connect(fd, (&sa as *const libc::sockaddr_un).cast(), len) };
    let e = std::io::Error::last_os_error();
    // SAFETY: as above.
    unsafe { libc::fcntl(fd, libc::F_SETFL, fl) };
    if r != 0 {
        return Err(e);
    }
    Ok(())
}

/// Makes way for binding `path`: a socket file no live socket is bound to (a dead
/// program's) is removed; anything else is left and refused. Returns whether one was there.
fn clear_path(path: &[u8]) -> std::io::Result<bool> {
    let p = std::path::Path::new(std::ffi::OsStr::from_bytes(path));
    let meta = match std::fs::symlink_metadata(p) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    let shown = p.display();
    if !meta.file_type().is_socket() {
        return Err(io_err(format!(
            "{shown} exists and is not a socket; move it away to restore the socket bound there"
        )));
    }
    if super::diag::bound_to_file(meta.ino())? {
        return Err(io_err(format!(
            "{shown} is bound by a running program outside the checkpoint; stop it to restore the socket bound there"
        )));
    }
    std::fs::remove_file(p)?;
    Ok(true)
}

fn bind_name(fd: RawFd, name: &Name) -> std::io::Result<()> {
    if let Name::Path(p) = name {
        clear_path(p)?;
    }
    let (sa, len) = name.sockaddr();
    // SAFETY: sa is a valid sockaddr_un of `len` bytes.
    let r = unsafe { libc::bind(fd, (&sa as *const libc::sockaddr_un).cast(), len) };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EADDRINUSE) {
            return Err(io_err(format!(
                "the name {} is taken by a running program outside the checkpoint; stop it to restore the socket bound there",
                name.show()
            )));
        }
        return Err(e);
    }
    Ok(())
}

fn accept(listener: RawFd) -> std::io::Result<OwnedFd> {
    // SAFETY: accept4 with no address wanted returns a new fd or -1.
    let fd = unsafe { libc::accept4(listener, std::ptr::null_mut(), std::ptr::null_mut(), libc::SOCK_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the fd was just accepted and is ours.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Makes `fd` (a datagram socket) connected to a peer that is gone: it sees what a program
/// sees when its peer closed.
fn connect_to_closed(fd: RawFd, ty: SockType) -> std::io::Result<()> {
    let t = new_socket(ty)?;
    let name = Name::Abstract(format!("ckpt-closed-{}-{}", std::process::id(), t.as_raw_fd()).into_bytes());
    bind_name(t.as_raw_fd(), &name)?;
    if ty != SockType::Dgram {
        // SAFETY: listen on our own socket.
        check(unsafe { libc::listen(t.as_raw_fd(), 1) })?;
    }
    connect_name(fd, &name)
}

/// Gives a re-created socket file the owner and mode the program's had (ckptd made it).
fn own_file(name: &Name, file: Option<super::SockFile>) -> std::io::Result<()> {
    let (Name::Path(p), Some(f)) = (name, file) else {
        return Ok(());
    };
    let path = std::path::Path::new(std::ffi::OsStr::from_bytes(p));
    std::os::unix::fs::lchown(path, Some(f.uid), Some(f.gid))?;
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(f.mode))
}

/// Whether the connection `accepted` is the one `client` made: a program outside the
/// checkpoint may connect to the name between our connect and accept, and would then be
/// handed to the restored program as its peer.
fn ours(accepted: &OwnedFd, client: &OwnedFd, name: &Name) -> std::io::Result<()> {
    let client_ino = std::fs::metadata(format!("/proc/self/fd/{}", client.as_raw_fd()))?.ino();
    let accepted_ino = std::fs::metadata(format!("/proc/self/fd/{}", accepted.as_raw_fd()))?.ino();
    if super::diag::lookup(accepted_ino)?.peer != client_ino {
        return Err(io_err(format!(
            "a program outside the checkpoint connected to {} while it was being restored; restore again",
            name.show()
        )));
    }
    Ok(())
}

impl Restore {
    fn listener_named(&self, name: &Name) -> Option<RawFd> {
        self.made
            .iter()
            .find(|m| matches!(m.rec.state, State::Listening { .. }) && m.rec.name.as_ref() == Some(name))
            .map(|m| m.fd.as_raw_fd())
    }

    /// A connected stream or seqpacket pair whose server end is named `server` (the name an
    /// accepted socket shares with its listener): the client connects to the re-created
    /// listener when there is one, else to a listener bound to the name for the moment.
    fn named_pair(
        &self,
        ty: SockType,
        server: &Name,
        client_name: Option<&Name>,
    ) -> std::io::Result<(OwnedFd, OwnedFd)> {
        let client = new_socket(ty)?;
        if let Some(n) = client_name {
            bind_name(client.as_raw_fd(), n)?;
        }
        if let Some(l) = self.listener_named(server) {
            connect_name(client.as_raw_fd(), server)?;
            let s = accept(l)?;
            ours(&s, &client, server)?;
            return Ok((client, s));
        }
        let t = new_socket(ty)?;
        let was_there = match server {
            Name::Path(p) => clear_path(p)?,
            Name::Abstract(_) => false,
        };
        bind_name(t.as_raw_fd(), server)?;
        // SAFETY: listen on our own socket.
        check(unsafe { libc::listen(t.as_raw_fd(), 1) })?;
        connect_name(client.as_raw_fd(), server)?;
        let s = accept(t.as_raw_fd())?;
        ours(&s, &client, server)?;
        drop(t);
        // A dead socket's file was there: the stand-in's is one like it. Otherwise none was.
        if let (Name::Path(p), false) = (server, was_there) {
            let _ = std::fs::remove_file(std::ffi::OsStr::from_bytes(p));
        }
        Ok((client, s))
    }

    /// Both ends of `rec`'s connection: (rec's end, the peer's end).
    fn pair(&self, rec: &Record, peer: u64, peer_name: Option<&Name>) -> std::io::Result<(OwnedFd, OwnedFd)> {
        // The accepted end has the listener's name; a client has a name only if it bound one
        // itself, which is rarer: with two names, the later socket is the accepted one.
        let me_server = rec.name.is_some() && (peer_name.is_none() || rec.ino > peer);
        let (server, client) = if me_server {
            (rec.name.as_ref(), peer_name)
        } else {
            (peer_name, rec.name.as_ref())
        };
        let Some(server) = server.filter(|_| rec.ty != SockType::Dgram) else {
            return socketpair(rec.ty);
        };
        // A name held by a program outside the checkpoint stops the restore (named_pair says
        // so): an unnamed pair would answer getsockname/getpeername differently.
        let (c, s) = self.named_pair(rec.ty, server, client)?;
        Ok(if me_server { (s, c) } else { (c, s) })
    }

    fn make(&mut self, rec: &Record) -> std::io::Result<OwnedFd> {
        if let Some((fd, _)) = self.waiting.remove(&rec.ino) {
            return Ok(fd);
        }
        let bind_own = |fd: &OwnedFd| match &rec.name {
            Some(n) => {
                bind_name(fd.as_raw_fd(), n)?;
                own_file(n, rec.file)
            }
            None => Ok(()),
        };
        match &rec.state {
            State::Listening { backlog, .. } => {
                let s = new_socket(rec.ty)?;
                bind_own(&s)?;
                // SAFETY: listen on our own socket.
                check(unsafe { libc::listen(s.as_raw_fd(), *backlog as i32) })?;
                Ok(s)
            }
            State::Unconnected | State::Waiting { .. } => {
                let s = new_socket(rec.ty)?;
                bind_own(&s)?;
                Ok(s)
            }
            // A named datagram socket, or one connected to a name: connected in `finish`.
            State::Connected { peer_name, .. }
                if rec.ty == SockType::Dgram && (rec.name.is_some() || peer_name.is_some()) =>
            {
                let s = new_socket(rec.ty)?;
                bind_own(&s)?;
                Ok(s)
            }
            State::Connected { peer, peer_name } => {
                let (mine, other) = self.pair(rec, *peer, peer_name.as_ref())?;
                if *peer != 0 {
                    self.waiting.insert(*peer, (other, rec.ino));
                } else {
                    self.standins.insert(rec.ino, other);
                }
                Ok(mine)
            }
        }
    }

    pub fn recreate(&mut self, rec: &Record) -> Result<OwnedFd, KindError> {
        let what = || super::describe(rec);
        let fd = self.make(rec).map_err(KindError::recreate(what()))?;
        rec.opts.apply(fd.as_raw_fd()).map_err(KindError::recreate(what()))?;
        self.made.push(Made {
            rec: rec.clone(),
            fd: fd.try_clone().map_err(KindError::recreate(what()))?,
        });
        Ok(fd)
    }

    fn made_fd(&self, ino: u64) -> Option<RawFd> {
        self.made.iter().find(|m| m.rec.ino == ino).map(|m| m.fd.as_raw_fd())
    }

    /// Connections waiting in a listener's queue, in their order: a client of the checkpoint
    /// connects again; one from outside is a connection already closed by its client.
    fn reconnect_waiting(&self) -> std::io::Result<()> {
        let mut done: Vec<u64> = Vec::new();
        for m in &self.made {
            let (State::Listening { waiting, .. }, Some(name)) = (&m.rec.state, &m.rec.name) else {
                continue;
            };
            for client in waiting {
                match self.made_fd(*client) {
                    Some(c) => {
                        connect_name(c, name)?;
                        done.push(*client);
                    }
                    None => {
                        let t = new_socket(m.rec.ty)?;
                        connect_name(t.as_raw_fd(), name)?;
                    }
                }
            }
        }
        // Clients waiting on a listener outside the checkpoint connect to it again if it
        // still runs, else find their connection closed.
        for m in &self.made {
            if let State::Waiting { listener_name, .. } = &m.rec.state {
                if done.contains(&m.rec.ino) {
                    continue;
                }
                let ok = listener_name
                    .as_ref()
                    .is_some_and(|n| connect_name(m.fd.as_raw_fd(), n).is_ok());
                if !ok {
                    connect_to_closed(m.fd.as_raw_fd(), m.rec.ty)?;
                }
            }
        }
        Ok(())
    }

    /// Puts `m`'s queue back, sent from its peer (or a stand-in for it).
    fn refill(&self, m: &Made) -> std::io::Result<()> {
        let independent = m.rec.ty == SockType::Dgram
            && (m.rec.name.is_some() || matches!(&m.rec.state, State::Connected { peer_name: Some(_), .. }))
            || !matches!(m.rec.state, State::Connected { .. });
        let total: usize = m.rec.queue.iter().map(|q| q.data.len()).sum();
        let room = i32::try_from(2 * total + (1 << 18)).unwrap_or(i32::MAX);
        if !independent {
            let peer = m.rec.peer();
            let (sender, peer_rec) = match peer.and_then(|p| self.made.iter().find(|o| o.rec.ino == p)) {
                Some(o) => (o.fd.as_raw_fd(), Some(&o.rec)),
                None => match self.standins.get(&m.rec.ino) {
                    Some(s) => (s.as_raw_fd(), None),
                    None => return Err(io_err("no end left to send its queue from".to_string())),
                },
            };
            let _ = super::opts::set_buf(sender, libc::SO_SNDBUF, room);
            for q in &m.rec.queue {
                queue::send(sender, q, None)?;
            }
            if let Some(p) = peer_rec {
                super::opts::set_buf(sender, libc::SO_SNDBUF, p.opts.sndbuf)?;
            }
            return Ok(());
        }
        let Some(to) = &m.rec.name else {
            return Err(io_err(
                "datagrams are queued on an unnamed socket that is not one of a pair; they cannot be sent to it again"
                    .to_string(),
            ));
        };
        for q in &m.rec.queue {
            // From the re-created sender when it is in the checkpoint; else from a stand-in
            // with the sender's abstract name when it is free, else unnamed.
            let own = q.from.as_ref().and_then(|f| {
                self.made
                    .iter()
                    .find(|o| o.rec.name.as_ref() == Some(f) && o.rec.ino != m.rec.ino)
            });
            match own {
                Some(o) => queue::send(o.fd.as_raw_fd(), q, Some(to))?,
                None => {
                    let t = new_socket(SockType::Dgram)?;
                    if let Some(f @ Name::Abstract(_)) = &q.from {
                        let _ = bind_name(t.as_raw_fd(), f);
                    }
                    let _ = super::opts::set_buf(t.as_raw_fd(), libc::SO_SNDBUF, room);
                    queue::send(t.as_raw_fd(), q, Some(to))?;
                }
            }
        }
        Ok(())
    }

    pub fn finish(&mut self) -> Result<(), KindError> {
        // Second ends never asked for: their peers are outside the checkpoint.
        for (_, (fd, first)) in self.waiting.drain() {
            self.standins.insert(first, fd);
        }
        self.reconnect_waiting()
            .map_err(KindError::recreate("the connections waiting on a Unix listener"))?;
        for m in &self.made {
            if !m.rec.queue.is_empty() {
                self.refill(m)
                    .map_err(KindError::recreate(format!("the queue of {}", super::describe(&m.rec))))?;
            }
        }
        for m in &self.made {
            let fd = m.fd.as_raw_fd();
            if let State::Connected { peer, peer_name } = &m.rec.state {
                let named_dgram = m.rec.ty == SockType::Dgram && (m.rec.name.is_some() || peer_name.is_some());
                if named_dgram {
                    let ok = peer_name.as_ref().is_some_and(|n| connect_name(fd, n).is_ok());
                    if !ok {
                        tracing::info!(peer, "a Unix datagram socket's peer is gone: connected to a closed one");
                        connect_to_closed(fd, m.rec.ty).map_err(KindError::recreate(super::describe(&m.rec)))?;
                    }
                }
                if m.rec.shutdown & 2 != 0 && self.made_fd(*peer).is_some() {
                    // SAFETY: shutdown on our own socket.
                    unsafe { libc::shutdown(fd, libc::SHUT_WR) };
                }
            }
            m.rec.opts.attach_filter(fd).map_err(KindError::recreate(format!(
                "the socket filter of {}",
                super::describe(&m.rec)
            )))?;
            if m.rec.opts.peek_off >= 0 {
                super::opts::set_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, m.rec.opts.peek_off)
                    .map_err(KindError::recreate(super::describe(&m.rec)))?;
            }
        }
        self.standins.clear();
        self.made.clear();
        Ok(())
    }
}
