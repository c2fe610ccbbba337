//! Sockets of a stopped program, read through a duplicate of its fd (`pidfd_getfd`): addresses,
//! options, the kernel's byte counts and the bytes queued unread (peeked, not consumed).

use super::DumpError;
use ckpt_format::{DgramKind, FdKind, SockOpts};
use ckpt_kinds::inet::{self, Sock};
pub use ckpt_kinds::source::grab;
use nix::sys::socket::{getpeername, getsockname, SockaddrStorage};
use std::os::fd::{AsRawFd, RawFd};

/// The kernel's counts for one TCP connection end.
#[derive(Debug, Clone, Copy, Default)]
pub struct TcpCounts {
    /// Bytes the program has handed to the kernel.
    pub sent: u64,
    /// Bytes that arrived at this host in order (read by the program + queued unread).
    pub received: u64,
    pub state: u8,
}

const TCP_ESTABLISHED: u8 = 1;
const TCP_FIN_WAIT2: u8 = 5;
const TCP_CLOSE: u8 = 7;
const TCP_CLOSE_WAIT: u8 = 8;
const TCP_LISTEN: u8 = 10;
/// `sk_shutdown` bits as inet_diag reports them.
const RCV_SHUTDOWN: u8 = 1;

/// A connection ckptd makes again: open both ways, or half-closed and quiet (one side has
/// sent its FIN and had it acknowledged).
fn remade_state(state: u8) -> bool {
    matches!(state, TCP_ESTABLISHED | TCP_FIN_WAIT2 | TCP_CLOSE_WAIT)
}

/// The kernel's name of a TCP state, for messages.
fn state_name(state: u8) -> &'static str {
    match state {
        1 => "ESTABLISHED",
        2 => "SYN_SENT (a connect in progress)",
        3 => "SYN_RECV",
        4 => "FIN_WAIT1 (its FIN not acknowledged yet)",
        5 => "FIN_WAIT2",
        6 => "TIME_WAIT",
        7 => "CLOSE",
        8 => "CLOSE_WAIT",
        9 => "LAST_ACK (its FIN not acknowledged yet)",
        10 => "LISTEN",
        11 => "CLOSING (its FIN not acknowledged yet)",
        _ => "unknown",
    }
}

fn sockopt_int(fd: RawFd, level: i32, opt: i32) -> i32 {
    let mut v: i32 = 0;
    let mut len = std::mem::size_of::<i32>() as libc::socklen_t;
    // SAFETY: v and len are valid out-pointers of the right size.
    unsafe { libc::getsockopt(fd, level, opt, (&mut v as *mut i32).cast(), &mut len) };
    v
}

pub fn tcp_counts(fd: RawFd) -> TcpCounts {
    let mut info = [0u8; 256];
    let mut len = info.len() as libc::socklen_t;
    // SAFETY: info is a writable buffer of `len` bytes.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if r != 0 || len < 216 {
        return TcpCounts::default();
    }
    let u64_at = |o: usize| u64::from_ne_bytes(info[o..o + 8].try_into().unwrap_or_default());
    let u32_at = |o: usize| u32::from_ne_bytes(info[o..o + 4].try_into().unwrap_or_default()) as u64;
    // Handed to the kernel = transmitted at least once (bytes_sent counts retransmissions again)
    // + not yet transmitted. bytes_acked would count the SYN of the side that connected.
    let sent = u64_at(200).saturating_sub(u64_at(208)) + u32_at(144);
    TcpCounts {
        sent,
        received: u64_at(128),
        state: info[0],
    }
}

fn addr_string(a: &SockaddrStorage) -> String {
    if let Some(v4) = a.as_sockaddr_in() {
        return std::net::SocketAddrV4::from(*v4).to_string();
    }
    if let Some(v6) = a.as_sockaddr_in6() {
        return std::net::SocketAddrV6::from(*v6).to_string();
    }
    "?".to_string()
}

/// The socket's options, refused by name when ckptd could not set them back.
fn opts(pid: i32, fd: RawFd, raw: RawFd, sock: Sock) -> Result<SockOpts, DumpError> {
    let kind = |err| DumpError::Kind { pid, fd, err };
    let o = inet::capture(pid, raw, sock).map_err(kind)?;
    o.check(sock).map_err(kind)?;
    Ok(o)
}

/// What inet_diag says of the socket (its backlog, its shutdown state); None when it does
/// not list it.
fn diag_of(pid: i32, fd: RawFd, raw: RawFd, family: i32, protocol: i32) -> Result<Option<inet::diag::Diag>, DumpError> {
    let io = |source| DumpError::Io {
        pid,
        what: format!("the kernel's socket list for fd {fd}"),
        source,
    };
    let ino = nix::sys::stat::fstat(raw).map_err(|e| io(e.into()))?.st_ino;
    inet::diag::find(family, protocol, ino).map_err(io)
}

/// What inet_diag says of a socket it must list (a listener, a connection).
fn diag(pid: i32, fd: RawFd, raw: RawFd, family: i32, protocol: i32) -> Result<inet::diag::Diag, DumpError> {
    diag_of(pid, fd, raw, family, protocol)?.ok_or_else(|| DumpError::Io {
        pid,
        what: format!("the kernel's socket list for fd {fd}"),
        source: std::io::Error::other("the socket is not listed"),
    })
}

/// The bytes queued unread, without consuming them. A peek offset the program set
/// (`SO_PEEK_OFF`, Linux 6.9 for TCP) would make the peek start there and move it: it is put
/// at 0 for the peek, then back.
fn peek_queue(fd: RawFd) -> std::io::Result<Vec<u8>> {
    let mut n: i32 = 0;
    // SAFETY: SIOCINQ writes one int.
    unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) };
    let mut buf = vec![0u8; n.max(0) as usize];
    if buf.is_empty() {
        return Ok(buf);
    }
    let set_peek_off = |v: i32| {
        // SAFETY: passing a pointer to a local int of the right size.
        let r = unsafe { libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, (&v as *const i32).cast(), 4) };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    };
    let peek_off = sockopt_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF);
    if peek_off > 0 {
        set_peek_off(0)?;
    }
    // SAFETY: buf is writable for its length.
    let got = unsafe {
        libc::recv(
            fd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    let err = std::io::Error::last_os_error();
    if peek_off >= 0 {
        set_peek_off(peek_off)?;
    }
    if got < 0 {
        return Err(err);
    }
    buf.truncate(got as usize);
    Ok(buf)
}

/// A pipe end's capacity, and for a read end the bytes buffered in it, copied so the program
/// still reads them.
pub fn pipe_state(pid: i32, fd: RawFd, read_end: bool) -> std::io::Result<(u32, Vec<u8>, Vec<u32>)> {
    let end = grab(pid, fd)?;
    // SAFETY: F_GETPIPE_SZ only reads the pipe's capacity.
    let capacity = unsafe { libc::fcntl(end.as_raw_fd(), libc::F_GETPIPE_SZ) };
    if capacity < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let (buffered, packets) = if read_end {
        ckpt_kinds::fifo::peek_pipe_packets(end.as_raw_fd())?
    } else {
        Default::default()
    };
    Ok((capacity as u32, buffered, packets))
}

/// Addresses and byte counts of a TCP connection fd, without touching its queues.
pub fn tcp_end(pid: i32, fd: RawFd) -> Option<(String, String, TcpCounts)> {
    let s = grab(pid, fd).ok()?;
    let raw = s.as_raw_fd();
    if sockopt_int(raw, libc::SOL_SOCKET, libc::SO_TYPE) != libc::SOCK_STREAM {
        return None;
    }
    let c = tcp_counts(raw);
    if !remade_state(c.state) {
        return None;
    }
    let local = getsockname::<SockaddrStorage>(raw).ok()?;
    let peer = getpeername::<SockaddrStorage>(raw).ok()?;
    Some((addr_string(&local), addr_string(&peer), c))
}

/// The sides of a connection end its program shut down itself (1: receive, 2: send): a
/// receive side closed by the peer's FIN (CLOSE_WAIT) comes back with the peer's shutdown.
fn own_shutdown(state: u8, shutdown: u8) -> u8 {
    if state == TCP_CLOSE_WAIT {
        shutdown & !RCV_SHUTDOWN
    } else {
        shutdown
    }
}

/// Describes a socket fd of a parked program, or says why it cannot be checkpointed.
pub fn dump_socket(pid: i32, fd: RawFd, target: &str) -> Result<FdKind, DumpError> {
    let unsupported = |kind: String| DumpError::UnsupportedFd { pid, fd, kind };
    let io = |source| DumpError::Io {
        pid,
        what: format!("socket fd {fd}"),
        source,
    };
    let s = grab(pid, fd).map_err(io)?;
    let raw = s.as_raw_fd();
    let domain = sockopt_int(raw, libc::SOL_SOCKET, libc::SO_DOMAIN);
    let ty = sockopt_int(raw, libc::SOL_SOCKET, libc::SO_TYPE);
    let protocol = sockopt_int(raw, libc::SOL_SOCKET, libc::SO_PROTOCOL);
    if domain != libc::AF_INET && domain != libc::AF_INET6 {
        return Err(unsupported(format!("{} ({target})", family_name(domain))));
    }
    let v6 = domain == libc::AF_INET6;
    let local = getsockname::<SockaddrStorage>(raw)
        .map(|a| addr_string(&a))
        .map_err(|e| io(e.into()))?;
    match (ty, protocol) {
        (libc::SOCK_STREAM, libc::IPPROTO_TCP) => {
            let c = tcp_counts(raw);
            if c.state == TCP_CLOSE {
                // Not in the kernel's socket lists (inet_diag) until it connects or listens.
                // A connection that ended, was reset or failed has its receive side shut.
                if inet::diag::by_poll(raw) & 1 != 0 || getpeername::<SockaddrStorage>(raw).is_ok() {
                    return Err(unsupported(format!(
                        "a TCP socket whose connection has ended (closed by both sides, reset, or failed to connect) ({target})"
                    )));
                }
                // Made, maybe bound, not connected yet: options that act before connect or
                // listen are read as on a listener.
                let sock = Sock {
                    v6,
                    tcp: true,
                    listener: true,
                    raw: 0,
                };
                let ino = nix::sys::stat::fstat(raw).map_err(|e| io(e.into()))?.st_ino;
                return Ok(FdKind::TcpSocket {
                    ino,
                    local,
                    opts: opts(pid, fd, raw, sock)?,
                });
            }
            let d = diag(pid, fd, raw, domain, libc::IPPROTO_TCP)?;
            if c.state == TCP_LISTEN {
                let sock = Sock {
                    v6,
                    tcp: true,
                    listener: true,
                    raw: 0,
                };
                return Ok(FdKind::TcpListen {
                    local,
                    opts: opts(pid, fd, raw, sock)?,
                    backlog: d.wqueue,
                });
            }
            if !remade_state(c.state) {
                return Err(unsupported(format!(
                    "a TCP socket in state {} ({target}; a passing state: checkpoint again once it has settled)",
                    state_name(c.state)
                )));
            }
            let peer = getpeername::<SockaddrStorage>(raw)
                .map(|a| addr_string(&a))
                .map_err(|e| io(e.into()))?;
            let queued = peek_queue(raw).map_err(io)?;
            Ok(FdKind::TcpConn {
                local,
                peer,
                sent: c.sent,
                received: c.received,
                queued,
                opts: opts(
                    pid,
                    fd,
                    raw,
                    Sock {
                        v6,
                        tcp: true,
                        listener: false,
                        raw: 0,
                    },
                )?,
                shutdown: own_shutdown(c.state, d.shutdown),
            })
        }
        (libc::SOCK_DGRAM, libc::IPPROTO_UDP | libc::IPPROTO_ICMP | libc::IPPROTO_ICMPV6) => {
            let icmp = protocol != libc::IPPROTO_UDP;
            let kind = if icmp { DgramKind::Ping } else { DgramKind::Udp };
            let peer = getpeername::<SockaddrStorage>(raw).ok().map(|a| addr_string(&a));
            let sock = Sock {
                v6,
                tcp: false,
                listener: false,
                raw: 0,
            };
            if icmp {
                inet::ping::check(v6).map_err(|e| unsupported(format!("{e} ({target})")))?;
            }
            let opts = opts(pid, fd, raw, sock)?;
            // inet_diag lists a UDP socket only once it is bound, and never a ping socket.
            let listed = if icmp {
                None
            } else {
                diag_of(pid, fd, raw, domain, libc::IPPROTO_UDP)?
            };
            let shutdown = listed.map_or_else(|| inet::diag::by_poll(raw), |d| d.shutdown);
            Ok(FdKind::Udp {
                local,
                peer,
                opts,
                shutdown,
                kind,
            })
        }
        (libc::SOCK_RAW, p) => {
            let peer = getpeername::<SockaddrStorage>(raw).ok().map(|a| addr_string(&a));
            let sock = Sock {
                v6,
                tcp: false,
                listener: false,
                raw: p,
            };
            let ino = nix::sys::stat::fstat(raw).map_err(|e| io(e.into()))?.st_ino;
            Ok(FdKind::Udp {
                local,
                peer,
                opts: opts(pid, fd, raw, sock)?,
                // Raw sockets are listed by raw_diag, not inet_diag's UDP table.
                shutdown: inet::diag::by_poll(raw),
                kind: DgramKind::Raw { protocol: p, ino },
            })
        }
        (_, p) => Err(unsupported(format!(
            "an IP socket of type {ty} and protocol {} ({target})",
            proto_name(p)
        ))),
    }
}

/// A refused socket family, named for the user.
fn family_name(domain: i32) -> String {
    match domain {
        libc::AF_UNIX => "a unix socket".into(),
        libc::AF_NETLINK => "a netlink socket".into(),
        libc::AF_PACKET => "a packet socket (AF_PACKET; ckpt does not read its ring, fanout and memberships)".into(),
        libc::AF_VSOCK => "a vsock socket".into(),
        libc::AF_ALG => "a kernel crypto socket (AF_ALG)".into(),
        libc::AF_BLUETOOTH => "a bluetooth socket".into(),
        libc::AF_XDP => "an XDP socket".into(),
        d => format!("a socket of family {d}"),
    }
}

fn proto_name(p: i32) -> String {
    match p {
        libc::IPPROTO_SCTP => "SCTP".into(),
        libc::IPPROTO_MPTCP => "MPTCP".into(),
        libc::IPPROTO_UDPLITE => "UDP-Lite".into(),
        p => p.to_string(),
    }
}
