//! Packet sockets (`AF_PACKET`, `SOCK_RAW` or `SOCK_DGRAM`): tcpdump-like capture, DHCP and
//! LLDP clients. A socket comes back with its type and protocol, its interface (by name: its
//! index may differ after a reboot), its memberships (`PACKET_ADD_MEMBERSHIP`: promiscuous,
//! all-multicast, multicast addresses, each as many times as it was added), its `SOL_PACKET`
//! options, socket-level options and classic filter. Memberships and the options getsockopt
//! does not give back are read with packet_diag (NETLINK_SOCK_DIAG).
//!
//! Refused: a mapped ring (`PACKET_RX_RING`/`PACKET_TX_RING`: the kernel's ring and the
//! program's mapping of it), a fanout group, the obsolete `SOCK_PACKET`. Lost: packets queued
//! unread (as UDP datagrams in flight) and the counters of `PACKET_STATISTICS` (reading them
//! resets them: they start again from zero).

use crate::inet::raw::{get_int, set};
use crate::sock_diag::{self, attrs, u16_at, u32_at};
use crate::sockfilter::{self, Filter};
use crate::socklevel;
use crate::{KindError, Source};
use serde::{Deserialize, Serialize};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;

const SOL_PACKET: i32 = 263;
const PACKET_ADD_MEMBERSHIP: i32 = 1;
const PACKET_COPY_THRESH: i32 = 7;

/// `SOL_PACKET` options a program sets and reads back, by name.
const OPTIONS: &[(&str, i32)] = &[
    ("PACKET_AUXDATA", 8),
    ("PACKET_ORIGDEV", 9),
    ("PACKET_VERSION", 10),
    ("PACKET_RESERVE", 12),
    ("PACKET_LOSS", 14),
    ("PACKET_VNET_HDR", 15),
    ("PACKET_TIMESTAMP", 17),
    ("PACKET_QDISC_BYPASS", 20),
    ("PACKET_IGNORE_OUTGOING", 23),
    ("PACKET_VNET_HDR_SZ", 24),
];

/// packet_diag (linux/packet_diag.h).
const SHOW_INFO: u32 = 1;
const SHOW_MCLIST: u32 = 2;
const SHOW_RING_CFG: u32 = 4;
const SHOW_FANOUT: u32 = 8;
const DIAG_INFO: u16 = 0;
const DIAG_MCLIST: u16 = 1;
const DIAG_RX_RING: u16 = 2;
const DIAG_TX_RING: u16 = 3;
const DIAG_FANOUT: u16 = 4;
const MSG_LEN: usize = 16;
const MCLIST_LEN: usize = 44;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Membership {
    pub ifname: String,
    /// PACKET_MR_MULTICAST, PACKET_MR_PROMISC, PACKET_MR_ALLMULTI, PACKET_MR_UNICAST.
    pub ty: u16,
    pub addr: Vec<u8>,
    /// How many times the program added it.
    pub count: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Record {
    pub ty: i32,
    /// The protocol in network order, as `socket` and `sockaddr_ll` take it.
    pub protocol: u16,
    /// The interface it is bound to; empty when bound to none (every interface).
    pub ifname: String,
    pub memberships: Vec<Membership>,
    pub options: Vec<(String, i32)>,
    pub copy_thresh: u32,
    /// As getsockopt reports them (twice what was asked for).
    pub rcvbuf: i32,
    pub sndbuf: i32,
    pub level: Vec<(String, i32)>,
    pub filter: Filter,
}

/// Whether `src` is a packet socket.
pub fn handles(src: &Source) -> bool {
    src.link.starts_with("socket:")
        && src
            .file()
            .is_ok_and(|fd| get_int(fd, libc::SOL_SOCKET, libc::SO_DOMAIN).ok() == Some(libc::AF_PACKET))
}

fn ifname(index: u32) -> std::io::Result<String> {
    nix::net::if_::if_indextoname(index)
        .map(|n| n.to_string_lossy().into_owned())
        .map_err(std::io::Error::from)
}

/// What packet_diag says of socket `ino`: (copy threshold, memberships), refusing rings and
/// fanout.
fn diag(ino: u64) -> Result<(u32, Vec<Membership>), KindError> {
    let mut req = vec![libc::AF_PACKET as u8, 0, 0, 0];
    req.extend_from_slice(&(ino as u32).to_ne_bytes());
    req.extend_from_slice(&(SHOW_INFO | SHOW_MCLIST | SHOW_RING_CFG | SHOW_FANOUT).to_ne_bytes());
    req.extend_from_slice(&[0xff; 8]);
    let read = KindError::read("packet_diag");
    let msg = sock_diag::query(&req, true)
        .map_err(read)?
        .into_iter()
        .find(|m| m.len() >= MSG_LEN && u64::from(u32_at(m, 4)) == ino)
        .ok_or_else(|| KindError::read("packet_diag")(std::io::Error::other("the socket is not listed")))?;
    let mut copy_thresh = 0;
    let mut members = Vec::new();
    for (ty, v) in attrs(&msg, MSG_LEN) {
        match ty {
            DIAG_RX_RING | DIAG_TX_RING => {
                return Err(KindError::Refused(
                    "a packet socket with a mapped ring (PACKET_RX_RING/PACKET_TX_RING), which ckpt cannot make again"
                        .into(),
                ))
            }
            DIAG_FANOUT => {
                return Err(KindError::Refused(
                    "a packet socket in a fanout group (PACKET_FANOUT), which ckpt cannot make again".into(),
                ))
            }
            DIAG_INFO => copy_thresh = u32_at(v, 12),
            DIAG_MCLIST => {
                for m in v.chunks_exact(MCLIST_LEN) {
                    let alen = (u16_at(m, 10) as usize).min(32);
                    members.push(Membership {
                        ifname: ifname(u32_at(m, 0)).map_err(KindError::read("a membership's interface"))?,
                        ty: u16_at(m, 8),
                        addr: m[12..12 + alen].to_vec(),
                        count: u32_at(m, 4),
                    });
                }
            }
            _ => {}
        }
    }
    Ok((copy_thresh, members))
}

pub fn capture(src: &Source) -> Result<Record, KindError> {
    let fd = src.file().map_err(KindError::read("the packet socket"))?;
    let ty = get_int(fd, libc::SOL_SOCKET, libc::SO_TYPE).map_err(KindError::read("SO_TYPE"))?;
    if ty != libc::SOCK_RAW && ty != libc::SOCK_DGRAM {
        return Err(KindError::Unsupported(format!(
            "a packet socket of type {ty} (SOCK_PACKET is obsolete; ckpt re-creates SOCK_RAW and SOCK_DGRAM ones)"
        )));
    }
    // SAFETY: sockaddr_ll is plain data.
    let mut a: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    // SAFETY: a and len are valid out-pointers of the right size.
    if unsafe { libc::getsockname(fd, (&mut a as *mut libc::sockaddr_ll).cast(), &mut len) } != 0 {
        return Err(KindError::read("the packet socket's address")(
            std::io::Error::last_os_error(),
        ));
    }
    let ifname = match a.sll_ifindex {
        0 => String::new(),
        i => ifname(i as u32).map_err(KindError::read("its interface"))?,
    };
    let (copy_thresh, memberships) = diag(src.meta.ino())?;
    let options = OPTIONS
        .iter()
        .filter_map(|&(n, o)| get_int(fd, SOL_PACKET, o).ok().map(|v| (n.to_string(), v)))
        .collect();
    Ok(Record {
        ty,
        protocol: a.sll_protocol,
        ifname,
        memberships,
        options,
        copy_thresh,
        rcvbuf: get_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUF).map_err(KindError::read("SO_RCVBUF"))?,
        sndbuf: get_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUF).map_err(KindError::read("SO_SNDBUF"))?,
        level: socklevel::read(fd),
        filter: sockfilter::capture(fd)?,
    })
}

fn index(name: &str) -> std::io::Result<i32> {
    nix::net::if_::if_nametoindex(name)
        .map(|i| i as i32)
        .map_err(|e| std::io::Error::new(std::io::Error::from(e).kind(), format!("interface {name}: {e}")))
}

fn set_buf(fd: RawFd, opt: i32, force: i32, reported: i32) -> std::io::Result<()> {
    if get_int(fd, libc::SOL_SOCKET, opt)? != reported {
        let half = (reported / 2).to_ne_bytes();
        set(fd, libc::SOL_SOCKET, force, &half).or_else(|_| set(fd, libc::SOL_SOCKET, opt, &half))?;
    }
    Ok(())
}

fn make(rec: &Record) -> std::io::Result<OwnedFd> {
    // SAFETY: socket returns a new fd or -1.
    let s = unsafe { libc::socket(libc::AF_PACKET, rec.ty | libc::SOCK_CLOEXEC, i32::from(rec.protocol)) };
    if s < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the fd was just created and is ours.
    let s = unsafe { OwnedFd::from_raw_fd(s) };
    let fd = s.as_raw_fd();
    for (name, v) in &rec.options {
        let Some(&(_, o)) = OPTIONS.iter().find(|(n, _)| n == name) else {
            return Err(std::io::Error::other(format!(
                "{name} is unknown to this version of ckpt"
            )));
        };
        if get_int(fd, SOL_PACKET, o)? != *v {
            set(fd, SOL_PACKET, o, &v.to_ne_bytes())
                .map_err(|e| std::io::Error::new(e.kind(), format!("{name}={v}: {e}")))?;
        }
    }
    if rec.copy_thresh != 0 {
        set(fd, SOL_PACKET, PACKET_COPY_THRESH, &rec.copy_thresh.to_ne_bytes())?;
    }
    set_buf(fd, libc::SO_RCVBUF, libc::SO_RCVBUFFORCE, rec.rcvbuf)?;
    set_buf(fd, libc::SO_SNDBUF, libc::SO_SNDBUFFORCE, rec.sndbuf)?;
    socklevel::apply(fd, &rec.level)?;
    sockfilter::attach(fd, &rec.filter)?;
    if !rec.ifname.is_empty() {
        // SAFETY: sockaddr_ll is plain data.
        let mut a: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        a.sll_family = libc::AF_PACKET as u16;
        a.sll_protocol = rec.protocol;
        a.sll_ifindex = index(&rec.ifname)?;
        // SAFETY: a is a valid sockaddr_ll of the given size.
        let r = unsafe {
            libc::bind(
                fd,
                (&a as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    for m in &rec.memberships {
        // struct packet_mreq_max: ifindex, type, alen, address[MAX_ADDR_LEN].
        let mut req = [0u8; 40];
        req[..4].copy_from_slice(&index(&m.ifname)?.to_ne_bytes());
        req[4..6].copy_from_slice(&m.ty.to_ne_bytes());
        let alen = m.addr.len().min(32);
        req[6..8].copy_from_slice(&(alen as u16).to_ne_bytes());
        req[8..8 + alen].copy_from_slice(&m.addr[..alen]);
        for _ in 0..m.count {
            set(fd, SOL_PACKET, PACKET_ADD_MEMBERSHIP, &req)?;
        }
    }
    Ok(s)
}

pub fn recreate(rec: &Record) -> Result<OwnedFd, KindError> {
    make(rec).map_err(KindError::recreate(describe(rec)))
}

pub fn describe(rec: &Record) -> String {
    let on = if rec.ifname.is_empty() {
        "every interface".to_string()
    } else {
        rec.ifname.clone()
    };
    let ty = if rec.ty == libc::SOCK_DGRAM { "dgram" } else { "raw" };
    format!(
        "packet {ty} protocol 0x{:04x} on {on}, {} memberships{}",
        u16::from_be(rec.protocol),
        rec.memberships.len(),
        sockfilter::describe(&rec.filter)
    )
}
