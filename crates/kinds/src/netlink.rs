//! Netlink sockets of the protocols whose per-socket state is all in the socket: route
//! (iproute2, libnl, NetworkManager-like watchers), generic netlink, uevents and sock_diag.
//! A socket comes back with its type and protocol, its port id (bound again to the same one,
//! which the killed program no longer holds), every multicast group it joined, the peer it
//! connected to, its netlink flags (`NETLINK_EXT_ACK`, `NETLINK_GET_STRICT_CHK`…), buffer sizes,
//! socket-level options and classic filter.
//!
//! What the kernel keeps for a port id elsewhere cannot be made again, so other protocols
//! (audit, netfilter queues and logs, connector, xfrm…) are refused, as is a socket with
//! messages unread (kernel replies and notifications nobody can send again) or a dump in
//! progress. Read from /proc/PID/net/netlink (queued bytes, dump in progress) and getsockopt.

use crate::inet::raw::{get, get_int, set_int};
use crate::sockfilter::{self, Filter};
use crate::socklevel;
use crate::{KindError, Source};
use serde::{Deserialize, Serialize};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;

const SOL_NETLINK: i32 = 270;
const NETLINK_ADD_MEMBERSHIP: i32 = 1;
const NETLINK_LIST_MEMBERSHIPS: i32 = 9;

/// The protocols re-created, by number, with their names.
const PROTOCOLS: &[(i32, &str)] = &[
    (0, "NETLINK_ROUTE"),
    (4, "NETLINK_SOCK_DIAG"),
    (15, "NETLINK_KOBJECT_UEVENT"),
    (16, "NETLINK_GENERIC"),
];

/// Netlink-level flags a program sets and reads back, by name.
const FLAGS: &[(&str, i32)] = &[
    ("NETLINK_PKTINFO", 3),
    ("NETLINK_BROADCAST_ERROR", 4),
    ("NETLINK_NO_ENOBUFS", 5),
    ("NETLINK_LISTEN_ALL_NSID", 8),
    ("NETLINK_CAP_ACK", 10),
    ("NETLINK_EXT_ACK", 11),
    ("NETLINK_GET_STRICT_CHK", 12),
];

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Record {
    /// SOCK_RAW or SOCK_DGRAM (the same to netlink, but the program can read it).
    pub ty: i32,
    pub protocol: i32,
    /// The bound port id; 0 when never bound (the kernel binds on first send).
    pub portid: u32,
    /// Multicast groups joined, by number (1-based).
    pub groups: Vec<u32>,
    /// The connected peer (port id, group); (0, 0) when not connected.
    pub peer: (u32, u32),
    pub flags: Vec<(String, i32)>,
    /// As getsockopt reports them (twice what was asked for).
    pub rcvbuf: i32,
    pub sndbuf: i32,
    pub level: Vec<(String, i32)>,
    pub filter: Filter,
}

/// Whether `src` is a netlink socket.
pub fn handles(src: &Source) -> bool {
    src.link.starts_with("socket:")
        && src
            .file()
            .is_ok_and(|fd| get_int(fd, libc::SOL_SOCKET, libc::SO_DOMAIN).ok() == Some(libc::AF_NETLINK))
}

/// (queued bytes, dump in progress) of socket `ino` from /proc/PID/net/netlink.
fn proc_line(pid: i32, ino: u64) -> std::io::Result<(u64, bool)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/net/netlink"))?;
    for line in text.lines().skip(1) {
        let t: Vec<&str> = line.split_whitespace().collect();
        if t.len() >= 10 && t[9].parse::<u64>().ok() == Some(ino) {
            return Ok((t[4].parse().unwrap_or(0), t[6] != "0"));
        }
    }
    Err(std::io::Error::other("the socket is not listed in /proc/net/netlink"))
}

fn name(fd: RawFd, peer: bool) -> std::io::Result<(u32, u32)> {
    // SAFETY: sockaddr_nl is plain data.
    let mut a: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
    let p = (&mut a as *mut libc::sockaddr_nl).cast();
    // SAFETY: a and len are valid out-pointers of the right size.
    let r = unsafe {
        if peer {
            libc::getpeername(fd, p, &mut len)
        } else {
            libc::getsockname(fd, p, &mut len)
        }
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((a.nl_pid, a.nl_groups))
}

pub fn capture(src: &Source) -> Result<Record, KindError> {
    let fd = src.file().map_err(KindError::read("the netlink socket"))?;
    let protocol = get_int(fd, libc::SOL_SOCKET, libc::SO_PROTOCOL).map_err(KindError::read("SO_PROTOCOL"))?;
    if !PROTOCOLS.iter().any(|&(p, _)| p == protocol) {
        return Err(KindError::Unsupported(format!(
            "a netlink socket of protocol {protocol} (the kernel keeps state of its port elsewhere; ckpt re-creates route, generic, uevent and sock_diag netlink sockets only)"
        )));
    }
    let (portid, _) = name(fd, false).map_err(KindError::read("the netlink address"))?;
    // A socket never bound is not listed: nothing can have reached it (it has no port id), and
    // a dump would have bound it.
    let (queued, dump) = match portid {
        0 => (0, false),
        _ => proc_line(src.pid, src.meta.ino()).map_err(KindError::read("/proc/net/netlink"))?,
    };
    if dump {
        return Err(KindError::Refused(
            "a netlink dump is in progress on it (the kernel's part of it cannot be made again); checkpoint once the program has read it to its end".into(),
        ));
    }
    if queued > 0 {
        return Err(KindError::Refused(format!(
            "{queued} bytes of netlink messages wait unread on it (kernel replies or notifications ckpt cannot send again); checkpoint once the program has read them"
        )));
    }
    let ty = get_int(fd, libc::SOL_SOCKET, libc::SO_TYPE).map_err(KindError::read("SO_TYPE"))?;
    let peer = name(fd, true).unwrap_or((0, 0));
    let mut bits = vec![0u8; 128];
    loop {
        let n = get(fd, SOL_NETLINK, NETLINK_LIST_MEMBERSHIPS, &mut bits)
            .map_err(KindError::read("NETLINK_LIST_MEMBERSHIPS"))?;
        if n <= bits.len() {
            bits.truncate(n);
            break;
        }
        bits = vec![0u8; n];
    }
    let groups = bits
        .chunks(4)
        .enumerate()
        .flat_map(|(w, c)| {
            let word = u32::from_ne_bytes(c.try_into().unwrap_or_default());
            (0..32)
                .filter(move |b| word & (1 << b) != 0)
                .map(move |b| w as u32 * 32 + b + 1)
        })
        .collect();
    let flags = FLAGS
        .iter()
        .filter_map(|&(n, o)| get_int(fd, SOL_NETLINK, o).ok().map(|v| (n.to_string(), v)))
        .collect();
    Ok(Record {
        ty,
        protocol,
        portid,
        groups,
        peer,
        flags,
        rcvbuf: get_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUF).map_err(KindError::read("SO_RCVBUF"))?,
        sndbuf: get_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUF).map_err(KindError::read("SO_SNDBUF"))?,
        level: socklevel::read(fd),
        filter: sockfilter::capture(fd)?,
    })
}

fn addr(portid: u32, groups: u32) -> libc::sockaddr_nl {
    // SAFETY: sockaddr_nl is plain data.
    let mut a: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    a.nl_family = libc::AF_NETLINK as u16;
    a.nl_pid = portid;
    a.nl_groups = groups;
    a
}

fn check(r: i32) -> std::io::Result<()> {
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A buffer size, set where it differs (past the system maximum with SO_*BUFFORCE).
fn set_buf(fd: RawFd, opt: i32, force: i32, reported: i32) -> std::io::Result<()> {
    if get_int(fd, libc::SOL_SOCKET, opt)? != reported {
        set_int(fd, libc::SOL_SOCKET, force, reported / 2)
            .or_else(|_| set_int(fd, libc::SOL_SOCKET, opt, reported / 2))?;
    }
    Ok(())
}

fn make(rec: &Record) -> std::io::Result<OwnedFd> {
    // SAFETY: socket returns a new fd or -1.
    let s = unsafe { libc::socket(libc::AF_NETLINK, rec.ty | libc::SOCK_CLOEXEC, rec.protocol) };
    if s < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the fd was just created and is ours.
    let s = unsafe { OwnedFd::from_raw_fd(s) };
    let fd = std::os::fd::AsRawFd::as_raw_fd(&s);
    for (name, v) in &rec.flags {
        let Some(&(_, o)) = FLAGS.iter().find(|(n, _)| n == name) else {
            return Err(std::io::Error::other(format!(
                "{name} is unknown to this version of ckpt"
            )));
        };
        if get_int(fd, SOL_NETLINK, o)? != *v {
            set_int(fd, SOL_NETLINK, o, *v).map_err(|e| std::io::Error::new(e.kind(), format!("{name}: {e}")))?;
        }
    }
    set_buf(fd, libc::SO_RCVBUF, libc::SO_RCVBUFFORCE, rec.rcvbuf)?;
    set_buf(fd, libc::SO_SNDBUF, libc::SO_SNDBUFFORCE, rec.sndbuf)?;
    socklevel::apply(fd, &rec.level)?;
    if rec.portid != 0 {
        let a = addr(rec.portid, 0);
        // SAFETY: a is a valid sockaddr_nl of the given size.
        check(unsafe {
            libc::bind(
                fd,
                (&a as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        })
        .map_err(|e| std::io::Error::new(e.kind(), format!("binding port id {} again: {e}", rec.portid)))?;
    }
    for &g in &rec.groups {
        set_int(fd, SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, g as i32)
            .map_err(|e| std::io::Error::new(e.kind(), format!("joining group {g}: {e}")))?;
    }
    if rec.peer != (0, 0) {
        let a = addr(rec.peer.0, rec.peer.1);
        // SAFETY: a is a valid sockaddr_nl of the given size.
        check(unsafe {
            libc::connect(
                fd,
                (&a as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        })?;
    }
    sockfilter::attach(fd, &rec.filter)?;
    Ok(s)
}

pub fn recreate(rec: &Record) -> Result<OwnedFd, KindError> {
    make(rec).map_err(KindError::recreate(describe(rec)))
}

pub fn describe(rec: &Record) -> String {
    let proto = PROTOCOLS
        .iter()
        .find(|(p, _)| *p == rec.protocol)
        .map(|(_, n)| n.to_string())
        .unwrap_or_else(|| rec.protocol.to_string());
    let groups: Vec<String> = rec.groups.iter().map(u32::to_string).collect();
    let groups = if groups.is_empty() {
        String::new()
    } else {
        format!(", groups {}", groups.join(","))
    };
    format!(
        "netlink {proto} port {}{groups}{}",
        rec.portid,
        sockfilter::describe(&rec.filter)
    )
}
