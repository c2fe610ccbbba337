//! NETLINK_SOCK_DIAG, the kernel's interface for listing sockets (inet_diag, unix_diag) and
//! destroying them: the netlink framing, once. Each family's request and answer structs are
//! written by its own caller (`inet::diag`, `unix::diag`, ckptd's orphan clearing).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const NETLINK_SOCK_DIAG: i32 = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const HEADER: usize = 16;

pub fn u32_at(b: &[u8], o: usize) -> u32 {
    b.get(o..o + 4)
        .map(|s| u32::from_ne_bytes([s[0], s[1], s[2], s[3]]))
        .unwrap_or(0)
}

pub fn u16_at(b: &[u8], o: usize) -> u16 {
    b.get(o..o + 2).map(|s| u16::from_ne_bytes([s[0], s[1]])).unwrap_or(0)
}

/// The attributes (type, value) that follow a message's fixed part at `from`.
pub fn attrs(body: &[u8], from: usize) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    let mut o = from;
    while o + 4 <= body.len() {
        let len = u16_at(body, o) as usize;
        if len < 4 || o + len > body.len() {
            break;
        }
        out.push((u16_at(body, o + 2) & 0x3fff, &body[o + 4..o + len]));
        o += (len + 3) & !3;
    }
    out
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

fn send(fd: &OwnedFd, ty: u16, flags: u16, body: &[u8]) -> std::io::Result<()> {
    let mut m = Vec::with_capacity(HEADER + body.len());
    m.extend_from_slice(&((HEADER + body.len()) as u32).to_ne_bytes());
    m.extend_from_slice(&ty.to_ne_bytes());
    m.extend_from_slice(&(NLM_F_REQUEST | flags).to_ne_bytes());
    m.extend_from_slice(&1u32.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(body);
    // SAFETY: sending a buffer we own on our netlink socket (to the kernel: no address needed).
    if unsafe { libc::send(fd.as_raw_fd(), m.as_ptr().cast(), m.len(), 0) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Reads answers until the kernel is done: the bodies of its SOCK_DIAG_BY_FAMILY messages.
/// An exact lookup (not `dump`) ends with its one answer; an error answer is an error.
fn answers(fd: &OwnedFd, dump: bool) -> std::io::Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        // SAFETY: buf is writable for its length.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let data = &buf[..n as usize];
        let mut done = n == 0;
        let mut o = 0;
        while o + HEADER <= data.len() {
            let len = u32_at(data, o) as usize;
            if len < HEADER || o + len > data.len() {
                break;
            }
            let body = &data[o + HEADER..o + len];
            match u16_at(data, o + 4) {
                NLMSG_DONE => done = true,
                NLMSG_ERROR => {
                    let err = u32_at(body, 0) as i32;
                    if err != 0 {
                        return Err(std::io::Error::from_raw_os_error(-err));
                    }
                    done = true;
                }
                SOCK_DIAG_BY_FAMILY => out.push(body.to_vec()),
                _ => {}
            }
            o += (len + 3) & !3;
        }
        if done || (!dump && !out.is_empty()) {
            return Ok(out);
        }
    }
}

/// Sends a request (its family's request struct) and returns every answer's body.
pub fn query(req: &[u8], dump: bool) -> std::io::Result<Vec<Vec<u8>>> {
    let fd = open()?;
    send(&fd, SOCK_DIAG_BY_FAMILY, if dump { NLM_F_DUMP } else { 0 }, req)?;
    answers(&fd, dump)
}

/// Destroys the socket a request names exactly (`SOCK_DESTROY`); one gone meanwhile is no
/// error.
pub fn destroy(req: &[u8]) -> std::io::Result<()> {
    let fd = open()?;
    send(&fd, SOCK_DESTROY, NLM_F_ACK, req)?;
    match answers(&fd, false) {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        r => r.map(|_| ()),
    }
}
