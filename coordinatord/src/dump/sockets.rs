//! Sockets of a stopped program, read through a duplicate of its fd (`pidfd_getfd`): addresses,
//! options, the kernel's byte counts and the bytes queued unread (peeked, not consumed).

use super::DumpError;
use ckpt_format::{FdKind, SockOpts};
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
const TCP_LISTEN: u8 = 10;

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

/// What inet_diag says of the socket (its backlog, its shutdown state).
fn diag(pid: i32, fd: RawFd, raw: RawFd, family: i32, protocol: i32) -> Result<inet::diag::Diag, DumpError> {
    let io = |source| DumpError::Io {
        pid,
        what: format!("the kernel's socket list for fd {fd}"),
        source,
    };
    let ino = nix::sys::stat::fstat(raw).map_err(|e| io(e.into()))?.st_ino;
    inet::diag::find(family, protocol, ino)
        .map_err(io)?
        .ok_or_else(|| io(std::io::Error::other("the socket is not listed")))
}

/// The bytes queued unread, without consuming them.
fn peek_queue(fd: RawFd) -> std::io::Result<Vec<u8>> {
    let mut n: i32 = 0;
    // SAFETY: SIOCINQ writes one int.
    unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) };
    let mut buf = vec![0u8; n.max(0) as usize];
    if buf.is_empty() {
        return Ok(buf);
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
    if got < 0 {
        return Err(std::io::Error::last_os_error());
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
    if c.state != TCP_ESTABLISHED {
        return None;
    }
    let local = getsockname::<SockaddrStorage>(raw).ok()?;
    let peer = getpeername::<SockaddrStorage>(raw).ok()?;
    Some((addr_string(&local), addr_string(&peer), c))
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
    if domain != libc::AF_INET && domain != libc::AF_INET6 {
        let fam = if domain == libc::AF_UNIX {
            "a unix socket"
        } else {
            "a socket of an unsupported family"
        };
        return Err(unsupported(format!("{fam} ({target})")));
    }
    let local = getsockname::<SockaddrStorage>(raw)
        .map(|a| addr_string(&a))
        .map_err(|e| io(e.into()))?;
    match ty {
        libc::SOCK_STREAM => {
            let c = tcp_counts(raw);
            let v6 = domain == libc::AF_INET6;
            if c.state == TCP_LISTEN {
                let sock = Sock {
                    v6,
                    tcp: true,
                    listener: true,
                };
                let backlog = diag(pid, fd, raw, domain, libc::IPPROTO_TCP)?.wqueue;
                return Ok(FdKind::TcpListen {
                    local,
                    opts: opts(pid, fd, raw, sock)?,
                    backlog,
                });
            }
            if c.state != TCP_ESTABLISHED {
                return Err(unsupported(format!("a TCP socket in state {} ({target})", c.state)));
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
                    },
                )?,
            })
        }
        libc::SOCK_DGRAM => {
            let peer = getpeername::<SockaddrStorage>(raw).ok().map(|a| addr_string(&a));
            let sock = Sock {
                v6: domain == libc::AF_INET6,
                tcp: false,
                listener: false,
            };
            let shutdown = diag(pid, fd, raw, domain, libc::IPPROTO_UDP)?.shutdown;
            Ok(FdKind::Udp {
                local,
                peer,
                opts: opts(pid, fd, raw, sock)?,
                shutdown,
            })
        }
        _ => Err(unsupported(format!("a socket of an unsupported type ({target})"))),
    }
}
