//! Re-creating the sockets of restored programs. A connection whose two ends are both in the
//! checkpoint is made anew between the two nodes (one end accepts on a rendezvous listener, the
//! other connects), then each side sends its own end's unread bytes through the new connection
//! and the peer writes them straight back, so that they wait in the right receive queue before
//! the program runs. An end whose peer is not in the checkpoint comes back reset.

use anyhow::{bail, Context};
use ckpt_format::{DgramKind, FdKind, ProcessImage, SockOpts};
use ckpt_kinds::inet::Sock;
use ckpt_proto::EndPlan;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::Duration;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

pub type Key = (String, String);

fn setopt(fd: RawFd, level: i32, opt: i32, v: i32) {
    // SAFETY: passing a pointer to a local int of the right size.
    unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            (&v as *const i32).cast(),
            std::mem::size_of::<i32>() as u32,
        )
    };
}

fn sock(addr: SocketAddr, tcp: bool, listener: bool, raw: i32) -> Sock {
    Sock {
        v6: addr.is_ipv6(),
        tcp,
        listener,
        raw,
    }
}

/// The kind of IP socket to make.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A listener, or a TCP socket not connected yet.
    Tcp,
    Udp,
    /// An ICMP echo socket.
    Ping,
    /// A raw socket of that protocol.
    Raw(i32),
}

/// A socket of `addr`'s family with the program's options, bound to `addr` (not bound when
/// `addr` is the unspecified address with port 0: a socket the program never bound). A TCP
/// socket binds with SO_REUSEADDR whatever the program had (its old connections may linger
/// in TIME_WAIT), and gets the program's value back once bound.
fn bound(addr: SocketAddr, kind: Kind, opts: &SockOpts) -> anyhow::Result<OwnedFd> {
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
    let tcp = kind == Kind::Tcp;
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let s = match kind {
        Kind::Tcp => socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?,
        Kind::Udp => socket(family, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None)?,
        Kind::Ping => ckpt_kinds::inet::ping::socket(addr.is_ipv6())
            .with_context(|| format!("cannot make the ICMP echo socket {addr} again"))?,
        Kind::Raw(p) => raw_socket(addr.is_ipv6(), p)
            .with_context(|| format!("cannot make the raw socket of protocol {p} again"))?,
    };
    let raw = if let Kind::Raw(p) = kind { p } else { 0 };
    opts.apply(s.as_raw_fd(), sock(addr, tcp, tcp, raw))
        .with_context(|| format!("cannot re-create the socket bound to {addr}"))?;
    // A raw socket's port is its protocol, not a binding.
    if addr.ip().is_unspecified() && (addr.port() == 0 || raw != 0) {
        return Ok(s);
    }
    if tcp {
        setopt(s.as_raw_fd(), libc::SOL_SOCKET, libc::SO_REUSEADDR, 1);
    }
    let sa = nix::sys::socket::SockaddrStorage::from(addr);
    match nix::sys::socket::bind(s.as_raw_fd(), &sa) {
        Err(nix::errno::Errno::EADDRINUSE) if tcp => {
            // The killed program's own connections may hold the port (see `orphans`).
            let n =
                super::orphans::clear_port(addr).with_context(|| format!("cannot bind {addr} again: it is in use"))?;
            tracing::info!(%addr, orphans = n, "cleared the connections a killed program left on its port");
            nix::sys::socket::bind(s.as_raw_fd(), &sa).with_context(|| format!("cannot bind {addr} again"))?;
        }
        r => r.with_context(|| format!("cannot bind {addr} again"))?,
    }
    if tcp {
        setopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            opts.int("SO_REUSEADDR"),
        );
    }
    Ok(s)
}

/// A raw IP socket of `protocol`.
fn raw_socket(v6: bool, protocol: i32) -> std::io::Result<OwnedFd> {
    let dom = if v6 { libc::AF_INET6 } else { libc::AF_INET };
    // SAFETY: socket returns a new fd or -1.
    let s = unsafe { libc::socket(dom, libc::SOCK_RAW | libc::SOCK_CLOEXEC, protocol) };
    if s < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the fd was just created and is ours.
    Ok(unsafe { std::os::fd::FromRawFd::from_raw_fd(s) })
}

fn parse(a: &str) -> anyhow::Result<SocketAddr> {
    a.parse().with_context(|| format!("bad socket address {a}"))
}

/// The rendezvous listener for an end that accepts: on the end's own address, any port.
pub fn acceptor(local: &str, queued: usize) -> anyhow::Result<TcpListener> {
    let mut at = parse(local)?;
    at.set_port(0);
    let l = TcpListener::bind(at).with_context(|| format!("cannot listen on {at} to re-create a connection"))?;
    grow_buffers(l.as_raw_fd(), queued);
    Ok(l)
}

/// Room for the unread bytes that will wait in the new socket's queues.
fn grow_buffers(fd: RawFd, queued: usize) {
    if queued > 32 << 10 {
        let n = (queued * 2 + (256 << 10)).min(i32::MAX as usize) as i32;
        setopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, n);
        setopt(fd, libc::SOL_SOCKET, libc::SO_SNDBUF, n);
    }
}

/// A connected socket already reset by its peer: what a program sees of a connection to a
/// process that is not in the checkpoint.
fn reset_socket(local: &str) -> anyhow::Result<TcpStream> {
    let loopback: SocketAddr = if parse(local)?.is_ipv4() {
        "127.0.0.1:0".parse()?
    } else {
        "[::1]:0".parse()?
    };
    let l = TcpListener::bind(loopback)?;
    let c = TcpStream::connect(l.local_addr()?)?;
    let (a, _) = l.accept()?;
    // SO_LINGER 0 makes close send a reset.
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: passing a valid linger struct.
    unsafe {
        libc::setsockopt(
            a.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as u32,
        )
    };
    drop(a);
    let mut pfd = libc::pollfd {
        fd: c.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: valid pollfd; waits for the reset to arrive.
    unsafe { libc::poll(&mut pfd, 1, 1000) };
    Ok(c)
}

/// Sends our unread bytes to the peer and writes back the peer's, so each side finds its own.
fn exchange(s: &TcpStream, ours: &[u8]) -> anyhow::Result<()> {
    s.set_read_timeout(Some(CONNECT_TIMEOUT))?;
    s.set_write_timeout(Some(CONNECT_TIMEOUT))?;
    let theirs = std::thread::scope(|sc| -> anyhow::Result<Vec<u8>> {
        let w = sc.spawn(|| -> std::io::Result<()> {
            let mut out = s;
            out.write_all(&(ours.len() as u64).to_le_bytes())?;
            out.write_all(ours)
        });
        let mut inp = s;
        let mut len = [0u8; 8];
        inp.read_exact(&mut len)?;
        let mut theirs = vec![0u8; u64::from_le_bytes(len) as usize];
        inp.read_exact(&mut theirs)?;
        w.join().map_err(|_| anyhow::anyhow!("writer panicked"))??;
        Ok(theirs)
    })?;
    let mut out = s;
    out.write_all(&theirs)?;
    s.set_read_timeout(None)?;
    s.set_write_timeout(None)?;
    Ok(())
}

/// A re-created connection: (pid, fd), the socket, its end's unread bytes, its options, the
/// sides its program shut down.
type Conn<'a> = ((i32, i32), TcpStream, &'a [u8], &'a SockOpts, u8);

/// Every socket of the images, by (pid, fd number).
pub fn make_sockets(
    images: &[&ProcessImage],
    plan: &HashMap<Key, EndPlan>,
    listeners: &HashMap<Key, TcpListener>,
) -> anyhow::Result<HashMap<(i32, i32), OwnedFd>> {
    let mut out: HashMap<(i32, i32), OwnedFd> = HashMap::new();
    let mut conns: Vec<Conn> = Vec::new();
    let mut accepts = Vec::new();
    // Sockets bound to an address no other socket can share, by address ("udp " for UDP).
    let mut shared_listeners: HashMap<String, OwnedFd> = HashMap::new();
    for img in images {
        for f in &img.fds {
            let id = (img.pid, f.fd);
            match &f.kind {
                FdKind::TcpListen { local, opts, backlog } => {
                    let reuseport = opts.int("SO_REUSEPORT") != 0;
                    // Without SO_REUSEPORT no two sockets listen on one address: processes
                    // listening there share one socket (inherited across fork, like nginx's
                    // workers), and get one again.
                    if !reuseport {
                        if let Some(first) = shared_listeners.get(local) {
                            let s: &OwnedFd = first;
                            out.insert(id, s.try_clone()?);
                            continue;
                        }
                    }
                    let s = bound(parse(local)?, Kind::Tcp, opts)?;
                    // The kernel caps the backlog at net.core.somaxconn, which may be above
                    // the compile-time SOMAXCONN nix's Backlog allows.
                    let n = (*backlog).min(i32::MAX as u32) as i32;
                    // SAFETY: listen on a socket we own.
                    if unsafe { libc::listen(s.as_raw_fd(), n) } != 0 {
                        return Err(std::io::Error::last_os_error())
                            .with_context(|| format!("cannot listen on {local} again"));
                    }
                    if !reuseport {
                        shared_listeners.insert(local.clone(), s.try_clone()?);
                    }
                    out.insert(id, s);
                }
                FdKind::TcpSocket { ino, local, opts } => {
                    let key = format!("tcp socket {ino}");
                    if let Some(first) = shared_listeners.get(&key) {
                        out.insert(id, first.try_clone()?);
                        continue;
                    }
                    let s = bound(parse(local)?, Kind::Tcp, opts)?;
                    shared_listeners.insert(key, s.try_clone()?);
                    out.insert(id, s);
                }
                FdKind::Udp {
                    local,
                    peer,
                    opts,
                    shutdown,
                    kind,
                } => {
                    // Without SO_REUSEADDR or SO_REUSEPORT no two UDP sockets bind one
                    // address: holders of one there share it (fork, dup), and get one again.
                    // (An unbound socket, port 0, is its own.)
                    let alone =
                        opts.int("SO_REUSEADDR") == 0 && opts.int("SO_REUSEPORT") == 0 && parse(local)?.port() != 0;
                    let (kind, key) = match kind {
                        DgramKind::Ping => (Kind::Ping, format!("ping {local}")),
                        DgramKind::Udp => (Kind::Udp, format!("udp {local}")),
                        // Raw sockets never exclude each other: one is shared only by its
                        // holders (fork, dup).
                        DgramKind::Raw { protocol, ino } => (Kind::Raw(*protocol), format!("raw {ino}")),
                    };
                    let alone = alone || matches!(kind, Kind::Raw(_));
                    if alone {
                        if let Some(first) = shared_listeners.get(&key) {
                            let s: &OwnedFd = first;
                            out.insert(id, s.try_clone()?);
                            continue;
                        }
                    }
                    let s = UdpSocket::from(bound(parse(local)?, kind, opts)?);
                    opts.join(s.as_raw_fd())
                        .with_context(|| format!("cannot re-create the UDP socket on {local}"))?;
                    if let Some(p) = peer {
                        s.connect(parse(p)?)?;
                    }
                    shut(&s, *shutdown).with_context(|| format!("cannot shut the UDP socket on {local} down again"))?;
                    if alone {
                        shared_listeners.insert(key, OwnedFd::from(s.try_clone()?));
                    }
                    out.insert(id, s.into());
                }
                FdKind::TcpConn {
                    local,
                    peer,
                    queued,
                    opts,
                    shutdown,
                    ..
                } => {
                    let key = (local.clone(), peer.clone());
                    match plan.get(&key).unwrap_or(&EndPlan::Closed) {
                        EndPlan::Connect { to } => {
                            let to = parse(to)?;
                            let s = TcpStream::connect_timeout(&to, CONNECT_TIMEOUT)
                                .with_context(|| format!("cannot re-create connection {local} -> {peer} via {to}"))?;
                            conns.push((id, s, queued, opts, *shutdown));
                        }
                        EndPlan::Accept => accepts.push((id, key, queued.as_slice(), opts, *shutdown)),
                        EndPlan::Closed => {
                            let s = reset_socket(local)?;
                            out.insert(id, s.into());
                        }
                    }
                }
                _ => {}
            }
        }
    }
    for (id, key, queued, opts, shutdown) in accepts {
        let Some(l) = listeners.get(&key) else {
            bail!("internal: no rendezvous for {} -> {}", key.0, key.1)
        };
        l.set_nonblocking(false)?;
        let (s, _) = accept_timeout(l, CONNECT_TIMEOUT)
            .with_context(|| format!("the peer of {} -> {} did not reconnect", key.0, key.1))?;
        conns.push((id, s, queued, opts, shutdown));
    }
    std::thread::scope(|sc| -> anyhow::Result<()> {
        let hs: Vec<_> = conns
            .iter()
            .map(|(_, s, q, _, _)| sc.spawn(move || exchange(s, q)))
            .collect();
        for h in hs {
            h.join().map_err(|_| anyhow::anyhow!("exchange panicked"))??;
        }
        Ok(())
    })?;
    // Every queue is refilled: the sides the programs had shut down are shut again (a FIN
    // goes after the bytes its peer had not read).
    for (_, s, queued, _, shutdown) in &conns {
        let at = s.local_addr()?;
        shut_conn(s, queued.len(), *shutdown)
            .with_context(|| format!("cannot shut the connection from {at} down again"))?;
    }
    for (id, s, _, opts, _) in conns {
        let at = s.local_addr()?;
        opts.apply(s.as_raw_fd(), sock(at, true, false, 0))
            .with_context(|| format!("cannot re-create the connection from {at}"))?;
        out.insert(id, s.into());
    }
    Ok(out)
}

/// The sides of a UDP socket the program had shut down (1: receive, 2: send). The kernel
/// records them on an unconnected socket too, though it answers ENOTCONN.
fn shut(s: &UdpSocket, how: u8) -> anyhow::Result<()> {
    let how = match how & 3 {
        0 => return Ok(()),
        1 => libc::SHUT_RD,
        2 => libc::SHUT_WR,
        _ => libc::SHUT_RDWR,
    };
    // SAFETY: shutdown on a socket we own.
    if unsafe { libc::shutdown(s.as_raw_fd(), how) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ENOTCONN) {
            return Err(e.into());
        }
    }
    Ok(())
}

/// TCP state of a side whose FIN is not acknowledged yet.
const FIN_WAIT1: u8 = 4;

/// Shuts the sides of a re-made connection its program had shut (1: receive, 2: send). The
/// receive side only once this end's unread bytes are back in its queue.
fn shut_conn(s: &TcpStream, queued: usize, how: u8) -> anyhow::Result<()> {
    if how & 2 != 0 {
        s.shutdown(std::net::Shutdown::Write)?;
        // The program had its FIN acknowledged (only FIN_WAIT2 is taken): it must not find
        // the re-made side still waiting for that (FIN_WAIT1) on a busy machine.
        if !settles(|| crate::dump::sockets::tcp_counts(s.as_raw_fd()).state != FIN_WAIT1) {
            bail!("its FIN was not acknowledged");
        }
    }
    if how & 1 != 0 {
        let unread = || {
            let mut n: i32 = 0;
            // SAFETY: FIONREAD writes one int.
            unsafe { libc::ioctl(s.as_raw_fd(), libc::FIONREAD, &mut n) };
            n as usize
        };
        if !settles(|| unread() >= queued) {
            bail!("its unread bytes did not come back ({} of {queued})", unread());
        }
        s.shutdown(std::net::Shutdown::Read)?;
    }
    Ok(())
}

/// Whether `done` holds within [`CONNECT_TIMEOUT`] (what the kernel does on loopback by
/// itself, looked at every millisecond).
fn settles(mut done: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + CONNECT_TIMEOUT;
    while !done() {
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    true
}

fn accept_timeout(l: &TcpListener, t: Duration) -> anyhow::Result<(TcpStream, SocketAddr)> {
    let mut pfd = libc::pollfd {
        fd: l.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: valid pollfd.
    let r = unsafe { libc::poll(&mut pfd, 1, t.as_millis() as i32) };
    if r <= 0 {
        bail!("timed out");
    }
    Ok(l.accept()?)
}
