//! Reading a Unix socket's receive queue without consuming it, and writing it back.
//!
//! Reading peeks with SO_PEEK_OFF on the program's socket (our duplicate shares it): set to
//! 0, every MSG_PEEK moves past what it returned, so each datagram is seen once and stream
//! bytes are seen to the end; the program's own offset is put back after. Writing sends each
//! message from the socket's peer (or a stand-in) with the credentials it carried.

use super::{Creds, Message, Name, SockType};
use std::os::fd::RawFd;

#[derive(Debug)]
pub enum PeekError {
    Io(std::io::Error),
    /// State that cannot be brought back: the message says what to do.
    Refused(String),
}

impl From<std::io::Error> for PeekError {
    fn from(e: std::io::Error) -> Self {
        PeekError::Io(e)
    }
}

/// Room for credentials and a few fds in one control message buffer.
const CONTROL: usize = 512;
/// A bound on messages read from one queue (the kernel's default datagram queue is 512).
const MAX_MESSAGES: usize = 1 << 20;

/// What one peek returned.
struct Peeked {
    len: usize,
    from: Option<Name>,
    creds: Option<Creds>,
    fds: usize,
}

fn peek_once(fd: RawFd, buf: &mut [u8], flags: i32) -> std::io::Result<Option<Peeked>> {
    // SAFETY: plain data, all zeroes valid.
    let mut name: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    let mut control = [0u64; CONTROL / 8];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: plain data, all zeroes valid.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&mut name as *mut libc::sockaddr_un).cast();
    msg.msg_namelen = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = CONTROL;
    let flags = flags | libc::MSG_PEEK | libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC;
    // SAFETY: every pointer in msg points to a live local buffer of the stated size.
    let n = unsafe { libc::recvmsg(fd, &mut msg, flags) };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EAGAIN) {
            return Ok(None);
        }
        return Err(e);
    }
    let base = std::mem::size_of::<libc::sa_family_t>();
    let from = if msg.msg_namelen as usize > base {
        // SAFETY: the kernel wrote msg_namelen bytes of `name`.
        let path: &[u8] =
            unsafe { std::slice::from_raw_parts(name.sun_path.as_ptr().cast(), msg.msg_namelen as usize - base) };
        Name::from_sun_path(path)
    } else {
        None
    };
    let mut creds = None;
    let mut fds = 0;
    // SAFETY: walking the control messages the kernel wrote into `control` with the libc
    // macros, which stay within msg_controllen.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            let data = libc::CMSG_DATA(c);
            let len = (*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_CREDENTIALS {
                let u: libc::ucred = std::ptr::read_unaligned(data.cast());
                creds = Some(Creds {
                    pid: u.pid,
                    uid: u.uid,
                    gid: u.gid,
                });
            } else if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                // A peek hands us copies of fds in flight: closed at once.
                for i in 0..len / 4 {
                    let f: i32 = std::ptr::read_unaligned(data.cast::<i32>().add(i));
                    libc::close(f);
                    fds += 1;
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 && fds == 0 {
        fds = 1;
    }
    Ok(Some(Peeked {
        len: n as usize,
        from,
        creds,
        fds,
    }))
}

fn in_flight(n: usize) -> PeekError {
    PeekError::Refused(format!(
        "{n} fds in flight on a Unix socket (sent with SCM_RIGHTS, not yet received); let the receiver take them before checkpointing"
    ))
}

/// Every message queued on `fd`, oldest first, left in place for the program.
pub fn peek(fd: RawFd, ty: SockType, passcred: bool) -> Result<Vec<Message>, PeekError> {
    let mut inq: i32 = 0;
    // SAFETY: SIOCINQ writes one int.
    unsafe { libc::ioctl(fd, libc::FIONREAD, &mut inq) };
    let old = super::opts::int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF);
    if let Err(e) = super::opts::set_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, 0) {
        if inq == 0 && ty == SockType::Stream {
            return Ok(Vec::new());
        }
        return Err(PeekError::Io(e));
    }
    let out = peek_all(fd, ty, passcred);
    // The program's own offset, as it was.
    let restored = super::opts::set_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, old);
    let out = out?;
    restored?;
    if ty == SockType::Stream {
        let total: usize = out.iter().map(|m| m.data.len()).sum();
        if total != inq.max(0) as usize {
            return Err(PeekError::Io(std::io::Error::other(format!(
                "read {total} queued bytes of the {inq} the kernel counts"
            ))));
        }
    }
    Ok(out)
}

fn peek_all(fd: RawFd, ty: SockType, passcred: bool) -> Result<Vec<Message>, PeekError> {
    let mut out: Vec<Message> = Vec::new();
    let mut buf = vec![0u8; 256 * 1024];
    let keep_creds = |c: Option<Creds>| if passcred { c } else { None };
    for _ in 0..MAX_MESSAGES {
        if ty == SockType::Stream {
            let Some(p) = peek_once(fd, &mut buf, 0)? else {
                return Ok(out);
            };
            if p.fds > 0 {
                return Err(in_flight(p.fds));
            }
            if p.len == 0 {
                return Ok(out);
            }
            let creds = keep_creds(p.creds);
            match out.last_mut() {
                Some(m) if m.creds == creds => m.data.extend_from_slice(&buf[..p.len]),
                _ => out.push(Message {
                    data: buf[..p.len].to_vec(),
                    from: None,
                    creds,
                }),
            }
            continue;
        }
        // A datagram's size first (a zero-length read moves the offset by nothing), then
        // the datagram; a datagram of zero bytes is whole after the first read.
        let Some(p) = peek_once(fd, &mut [], libc::MSG_TRUNC)? else {
            return Ok(out);
        };
        if p.fds > 0 {
            return Err(in_flight(p.fds));
        }
        let mut data = Vec::new();
        if p.len > 0 {
            if buf.len() < p.len {
                buf.resize(p.len, 0);
            }
            let Some(q) = peek_once(fd, &mut buf[..p.len], 0)? else {
                return Err(PeekError::Io(std::io::Error::other(
                    "a queued datagram went away while read",
                )));
            };
            data = buf[..q.len].to_vec();
        }
        out.push(Message {
            data,
            from: p.from,
            creds: keep_creds(p.creds),
        });
    }
    Err(PeekError::Io(std::io::Error::other(
        "more than a million queued messages",
    )))
}

/// Sends `msg` on `fd` (to `to`, for an unconnected datagram socket), with its credentials
/// when it carried some (on every part, so that the receiver reads them as one run): the
/// sender's pid when it exists now, else ckptd's own.
pub fn send(fd: RawFd, msg: &Message, to: Option<&Name>) -> std::io::Result<()> {
    let mut control = [0u64; 8];
    let mut sent = 0;
    loop {
        let rest = &msg.data[sent..];
        let mut iov = libc::iovec {
            iov_base: rest.as_ptr() as *mut libc::c_void,
            iov_len: rest.len(),
        };
        // SAFETY: plain data, all zeroes valid.
        let mut m: libc::msghdr = unsafe { std::mem::zeroed() };
        let addr = to.map(Name::sockaddr);
        if let Some((sa, len)) = &addr {
            m.msg_name = (sa as *const libc::sockaddr_un as *mut libc::sockaddr_un).cast();
            m.msg_namelen = *len;
        }
        m.msg_iov = &mut iov;
        m.msg_iovlen = 1;
        if let Some(c) = msg.creds {
            // SAFETY: kill with signal 0 only checks that the pid exists.
            let alive = unsafe { libc::kill(c.pid, 0) } == 0
                || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
            let u = libc::ucred {
                pid: if alive { c.pid } else { std::process::id() as i32 },
                uid: c.uid,
                gid: c.gid,
            };
            // SAFETY: the control buffer holds one cmsg with a ucred (CMSG_SPACE of 12 bytes
            // fits in 64); the libc macros stay within it.
            unsafe {
                m.msg_control = control.as_mut_ptr().cast();
                m.msg_controllen = libc::CMSG_SPACE(std::mem::size_of::<libc::ucred>() as u32) as usize;
                let h = libc::CMSG_FIRSTHDR(&m);
                (*h).cmsg_level = libc::SOL_SOCKET;
                (*h).cmsg_type = libc::SCM_CREDENTIALS;
                (*h).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<libc::ucred>() as u32) as usize;
                std::ptr::write_unaligned(libc::CMSG_DATA(h).cast(), u);
            }
        }
        // SAFETY: every pointer in m points to live data of the stated size.
        let n = unsafe { libc::sendmsg(fd, &m, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        sent += n as usize;
        if sent >= msg.data.len() {
            return Ok(());
        }
    }
}
