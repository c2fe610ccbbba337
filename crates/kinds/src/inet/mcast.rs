//! Multicast group memberships of a UDP socket. The kernel lists groups per interface
//! (/proc/PID/net/igmp, igmp6), not per socket; a socket's own memberships are found by asking
//! it, for every group an interface of its network namespace has joined, for its source filter
//! (`getsockopt(MCAST_MSFILTER)`): the kernel answers for a group the socket joined on that
//! interface and says EADDRNOTAVAIL otherwise. The filter (include or exclude, and its sources)
//! comes with the answer, so source-specific memberships come back too.

use super::raw;
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::RawFd;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Membership {
    pub group: IpAddr,
    /// The interface, by name: its index may differ after a reboot.
    pub ifname: String,
    /// `MCAST_EXCLUDE` (the plain join: every source but these) or `MCAST_INCLUDE`.
    pub exclude: bool,
    pub sources: Vec<IpAddr>,
}

const MCAST_EXCLUDE: u32 = 0;
const MCAST_INCLUDE: u32 = 1;
/// `struct group_filter` up to its source list: interface, padding, group, mode, count.
const GF_HEAD: usize = 144;
const SS_LEN: usize = 128;

fn put_addr(buf: &mut [u8], a: IpAddr) {
    match a {
        IpAddr::V4(v4) => {
            buf[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
            buf[4..8].copy_from_slice(&v4.octets());
        }
        IpAddr::V6(v6) => {
            buf[..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
            buf[8..24].copy_from_slice(&v6.octets());
        }
    }
}

fn addr_at(buf: &[u8]) -> Option<IpAddr> {
    let fam = u16::from_ne_bytes([buf[0], buf[1]]) as i32;
    if fam == libc::AF_INET {
        let o: [u8; 4] = buf[4..8].try_into().ok()?;
        Some(IpAddr::V4(Ipv4Addr::from(o)))
    } else if fam == libc::AF_INET6 {
        let o: [u8; 16] = buf[8..24].try_into().ok()?;
        Some(IpAddr::V6(Ipv6Addr::from(o)))
    } else {
        None
    }
}

fn level(group: IpAddr) -> i32 {
    if group.is_ipv4() {
        libc::IPPROTO_IP
    } else {
        libc::IPPROTO_IPV6
    }
}

/// The socket's filter for `group` on interface `ifindex`; None when it has not joined it.
fn filter(fd: RawFd, ifindex: u32, group: IpAddr) -> std::io::Result<Option<(bool, Vec<IpAddr>)>> {
    let mut room = 16usize;
    loop {
        let mut b = vec![0u8; GF_HEAD + room * SS_LEN];
        b[..4].copy_from_slice(&ifindex.to_ne_bytes());
        put_addr(&mut b[8..8 + SS_LEN], group);
        b[140..144].copy_from_slice(&(room as u32).to_ne_bytes());
        match raw::get(fd, level(group), libc::MCAST_MSFILTER, &mut b) {
            Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => return Ok(None),
            Err(e) => return Err(e),
            Ok(_) => {}
        }
        let mode = u32::from_ne_bytes([b[136], b[137], b[138], b[139]]);
        let n = u32::from_ne_bytes([b[140], b[141], b[142], b[143]]) as usize;
        if n > room {
            room = n;
            continue;
        }
        let sources = (0..n)
            .filter_map(|i| addr_at(&b[GF_HEAD + i * SS_LEN..GF_HEAD + (i + 1) * SS_LEN]))
            .collect();
        return Ok(Some((mode == MCAST_EXCLUDE, sources)));
    }
}

/// (interface index, interface name, group) of every group joined on the host's interfaces.
fn candidates(pid: i32, v6: bool) -> std::io::Result<Vec<(u32, String, IpAddr)>> {
    let mut out = Vec::new();
    let igmp = std::fs::read_to_string(format!("/proc/{pid}/net/igmp"))?;
    let mut dev: Option<(u32, String)> = None;
    for line in igmp.lines().skip(1) {
        let t: Vec<&str> = line.split_whitespace().collect();
        if line.starts_with(char::is_whitespace) {
            if let (Some((idx, name)), Some(hex)) = (&dev, t.first()) {
                // The group as the kernel stores it (network order), printed as a number.
                if let Ok(v) = u32::from_str_radix(hex, 16) {
                    out.push((*idx, name.clone(), IpAddr::V4(Ipv4Addr::from(v.to_ne_bytes()))));
                }
            }
        } else if t.len() >= 2 {
            dev = t[0].parse().ok().map(|i| (i, t[1].trim_end_matches(':').to_string()));
        }
    }
    if v6 {
        // Absent when IPv6 is off.
        let igmp6 = std::fs::read_to_string(format!("/proc/{pid}/net/igmp6")).unwrap_or_default();
        for line in igmp6.lines() {
            let t: Vec<&str> = line.split_whitespace().collect();
            let (Some(idx), Some(name), Some(hex)) = (t.first(), t.get(1), t.get(2)) else {
                continue;
            };
            let (Ok(idx), Ok(g)) = (idx.parse(), u128::from_str_radix(hex, 16)) else {
                continue;
            };
            out.push((idx, name.to_string(), IpAddr::V6(Ipv6Addr::from(g))));
        }
    }
    Ok(out)
}

/// Every membership of the socket `fd` of process `pid`.
pub fn read(pid: i32, fd: RawFd, v6: bool) -> std::io::Result<Vec<Membership>> {
    let mut out = Vec::new();
    for (idx, ifname, group) in candidates(pid, v6)? {
        if let Some((exclude, sources)) = filter(fd, idx, group)? {
            out.push(Membership {
                group,
                ifname,
                exclude,
                sources,
            });
        }
    }
    Ok(out)
}

/// Joins the group on its interface with its source filter.
pub fn join(fd: RawFd, m: &Membership) -> std::io::Result<()> {
    let ifindex = nix::net::if_::if_nametoindex(m.ifname.as_str()).map_err(std::io::Error::from)?;
    let mut req = vec![0u8; 8 + SS_LEN];
    req[..4].copy_from_slice(&ifindex.to_ne_bytes());
    put_addr(&mut req[8..], m.group);
    raw::set(fd, level(m.group), libc::MCAST_JOIN_GROUP, &req)?;
    if m.exclude && m.sources.is_empty() {
        return Ok(());
    }
    let mut f = vec![0u8; GF_HEAD + m.sources.len() * SS_LEN];
    f[..4].copy_from_slice(&ifindex.to_ne_bytes());
    put_addr(&mut f[8..8 + SS_LEN], m.group);
    let mode = if m.exclude { MCAST_EXCLUDE } else { MCAST_INCLUDE };
    f[136..140].copy_from_slice(&mode.to_ne_bytes());
    f[140..144].copy_from_slice(&(m.sources.len() as u32).to_ne_bytes());
    for (i, s) in m.sources.iter().enumerate() {
        put_addr(&mut f[GF_HEAD + i * SS_LEN..], *s);
    }
    raw::set(fd, level(m.group), libc::MCAST_MSFILTER, &f)
}

pub fn describe(m: &Membership) -> String {
    let mut s = format!("{} on {}", m.group, m.ifname);
    if !m.sources.is_empty() {
        let list: Vec<String> = m.sources.iter().map(|a| a.to_string()).collect();
        let how = if m.exclude { "excluding" } else { "from" };
        s.push_str(&format!(" {how} {}", list.join(",")));
    }
    s
}
