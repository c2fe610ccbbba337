//! The options of TCP and UDP sockets: what a program set on a socket that changes what it
//! sees (reuse, keepalive timers, linger, buffer sizes, timeouts, TTL and TOS, multicast
//! settings and memberships, v6-only, …), read from the parked program's socket and set on the
//! re-created one before it binds, so that a bind the program could make succeeds again.
//!
//! The socket itself (addresses, queues, the connection) is made by ckptd; this module owns the
//! options record, reading it ([`capture`]), checking at checkpoint time that ckptd will be
//! able to set it back ([`Opts::check`]) and setting it back ([`Opts::apply`], [`Opts::join`]).
//!
//! Buffer sizes: the kernel reports twice what the program asked for, and a size the program
//! set stops the kernel's autotuning for that buffer (SOCK_RCVBUF_LOCK/SOCK_SNDBUF_LOCK). Which
//! sizes were set is read exactly with SO_BUF_LOCK (Linux 5.14); only those are set back, so
//! that an autotuned connection stays autotuned.

pub mod diag;
pub mod mcast;
pub mod ping;
pub(crate) mod raw;
mod table;

pub use mcast::Membership;

use crate::sockfilter::{self, Filter};
use crate::KindError;
use serde::{Deserialize, Serialize};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use table::SO_BUF_LOCK;

const SOCK_SNDBUF_LOCK: i32 = 1;
const SOCK_RCVBUF_LOCK: i32 = 2;
/// linux/icmpv6.h
const ICMP6_FILTER: i32 = 1;

/// What kind of socket the options belong to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sock {
    pub v6: bool,
    pub tcp: bool,
    pub listener: bool,
    /// The protocol of a raw socket (`SOCK_RAW`); 0 for others.
    pub raw: i32,
}

/// The options of one TCP, UDP, ping or raw IP socket.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Opts {
    /// Every integer option that applies to the socket, by name, as getsockopt reported it.
    pub ints: Vec<(String, i32)>,
    /// SO_LINGER (l_onoff, l_linger).
    pub linger: (i32, i32),
    /// As getsockopt reports them (twice what was asked for).
    pub rcvbuf: i32,
    pub sndbuf: i32,
    /// SO_BUF_LOCK: which sizes the program set (1: send, 2: receive).
    pub buf_lock: i32,
    /// (seconds, microseconds); zero: no timeout.
    pub rcvtimeo: (i64, i64),
    pub sndtimeo: (i64, i64),
    /// SO_BINDTODEVICE; empty when unbound.
    pub bind_device: String,
    /// TCP_CONGESTION; empty for UDP.
    pub congestion: String,
    /// IP_MULTICAST_IF as an address (UDP).
    pub mcast_if: [u8; 4],
    /// Multicast groups the socket joined (UDP).
    pub memberships: Vec<Membership>,
    /// ICMP6_FILTER of a raw ICMPv6 socket (`struct icmp6_filter`); empty for others.
    pub icmp6_filter: Vec<u8>,
    /// A classic BPF socket filter and SO_LOCK_FILTER, attached again last.
    pub filter: Filter,
}

impl Opts {
    /// The value of an integer option (0 when it was not read).
    pub fn int(&self, name: &str) -> i32 {
        self.ints.iter().find(|(n, _)| n == name).map(|(_, v)| *v).unwrap_or(0)
    }
}

fn refused(what: String) -> KindError {
    KindError::Refused(what)
}

/// Reads the options of socket `fd` (a duplicate of process `pid`'s). Options that cannot be
/// brought back are refused by name.
pub fn capture(pid: i32, fd: RawFd, sock: Sock) -> Result<Opts, KindError> {
    let read = |what: &str| KindError::read(what.to_string());
    let mut o = Opts::default();
    for spec in table::TABLE.iter().filter(|s| s.applies(sock)) {
        // An option this kernel does not know is one the program could not set either.
        if let Ok(v) = raw::get_int(fd, spec.level, spec.opt) {
            o.ints.push((spec.name.to_string(), v));
        }
    }
    o.linger = raw::get_linger(fd).map_err(read("SO_LINGER"))?;
    o.rcvbuf = raw::get_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUF).map_err(read("SO_RCVBUF"))?;
    o.sndbuf = raw::get_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUF).map_err(read("SO_SNDBUF"))?;
    o.buf_lock = raw::get_int(fd, libc::SOL_SOCKET, SO_BUF_LOCK).map_err(|_| {
        refused("its buffer sizes cannot be told set or autotuned: SO_BUF_LOCK needs Linux 5.14 or later".into())
    })?;
    o.rcvtimeo = raw::get_timeval(fd, libc::SO_RCVTIMEO).map_err(read("SO_RCVTIMEO"))?;
    o.sndtimeo = raw::get_timeval(fd, libc::SO_SNDTIMEO).map_err(read("SO_SNDTIMEO"))?;
    o.bind_device = raw::get_name(fd, libc::SOL_SOCKET, libc::SO_BINDTODEVICE).map_err(read("SO_BINDTODEVICE"))?;
    o.filter = sockfilter::capture(fd)?;
    if sock.tcp {
        o.congestion = raw::get_name(fd, libc::IPPROTO_TCP, libc::TCP_CONGESTION).map_err(read("TCP_CONGESTION"))?;
        let ulp = raw::get_name(fd, libc::IPPROTO_TCP, libc::TCP_ULP).unwrap_or_default();
        if !ulp.is_empty() {
            return Err(refused(format!(
                "it runs the upper-layer protocol {ulp} (TCP_ULP, e.g. kernel TLS), whose state ckpt cannot bring back"
            )));
        }
    } else {
        let mut a = [0u8; 4];
        raw::get(fd, libc::IPPROTO_IP, libc::IP_MULTICAST_IF, &mut a).map_err(read("IP_MULTICAST_IF"))?;
        o.mcast_if = a;
        o.memberships = mcast::read(pid, fd, sock.v6)
            .map_err(|e| refused(format!("its multicast memberships cannot be read exactly ({e})")))?;
    }
    if sock.v6 && sock.raw == libc::IPPROTO_ICMPV6 {
        let mut f = vec![0u8; 32];
        let n = raw::get(fd, libc::IPPROTO_ICMPV6, ICMP6_FILTER, &mut f).map_err(read("ICMP6_FILTER"))?;
        f.truncate(n);
        o.icmp6_filter = f;
    }
    Ok(o)
}

/// The option that could not be set, and why.
type SetError = (String, std::io::Error);

fn set_buf(fd: RawFd, opt: i32, name: &str, reported: i32) -> Result<(), SetError> {
    let err = |e| (format!("{name}={}", reported / 2), e);
    if raw::get_int(fd, libc::SOL_SOCKET, opt).map_err(err)? != reported {
        let force = if opt == libc::SO_SNDBUF {
            libc::SO_SNDBUFFORCE
        } else {
            libc::SO_RCVBUFFORCE
        };
        // Past the system's maximum only with CAP_NET_ADMIN, which the program may have had.
        raw::set_int(fd, libc::SOL_SOCKET, force, reported / 2)
            .or_else(|_| raw::set_int(fd, libc::SOL_SOCKET, opt, reported / 2))
            .map_err(err)?;
        let now = raw::get_int(fd, libc::SOL_SOCKET, opt).map_err(err)?;
        if now != reported {
            return Err(err(std::io::Error::other(format!(
                "the kernel gave {} (the limit is net.core.{}mem_max)",
                now / 2,
                if opt == libc::SO_SNDBUF { "w" } else { "r" }
            ))));
        }
    }
    Ok(())
}

impl Opts {
    /// Sets every option but the memberships on a socket not bound yet (or a re-created
    /// connection), only where its value differs, and checks that each one took.
    fn set_all(&self, fd: RawFd, sock: Sock) -> Result<(), SetError> {
        if !self.bind_device.is_empty() {
            raw::set(fd, libc::SOL_SOCKET, libc::SO_BINDTODEVICE, self.bind_device.as_bytes())
                .map_err(|e| (format!("SO_BINDTODEVICE={}", self.bind_device), e))?;
        }
        for (name, v) in &self.ints {
            let spec = table::find(name)
                .filter(|s| s.applies(sock))
                .ok_or_else(|| (name.clone(), std::io::Error::other("unknown to this version of ckpt")))?;
            let m = spec.mask(sock);
            let err = |e| (format!("{name}={v}"), e);
            if raw::get_int(fd, spec.level, spec.opt).map_err(err)? & m == v & m {
                continue;
            }
            raw::set_int(fd, spec.level, spec.opt, *v).map_err(err)?;
            let now = raw::get_int(fd, spec.level, spec.opt).map_err(err)?;
            if now & m != v & m {
                return Err(err(std::io::Error::other(format!("the kernel kept {now}"))));
            }
        }
        if self.linger.0 != 0 {
            raw::set_linger(fd, self.linger).map_err(|e| (format!("SO_LINGER={}s", self.linger.1), e))?;
        }
        if self.buf_lock & SOCK_RCVBUF_LOCK != 0 {
            set_buf(fd, libc::SO_RCVBUF, "SO_RCVBUF", self.rcvbuf)?;
        }
        if self.buf_lock & SOCK_SNDBUF_LOCK != 0 {
            set_buf(fd, libc::SO_SNDBUF, "SO_SNDBUF", self.sndbuf)?;
        }
        let lock_err = |e| (format!("SO_BUF_LOCK={}", self.buf_lock), e);
        if raw::get_int(fd, libc::SOL_SOCKET, SO_BUF_LOCK).map_err(lock_err)? != self.buf_lock {
            raw::set_int(fd, libc::SOL_SOCKET, SO_BUF_LOCK, self.buf_lock).map_err(lock_err)?;
        }
        for (opt, name, tv) in [
            (libc::SO_RCVTIMEO, "SO_RCVTIMEO", self.rcvtimeo),
            (libc::SO_SNDTIMEO, "SO_SNDTIMEO", self.sndtimeo),
        ] {
            if tv != (0, 0) {
                raw::set_timeval(fd, opt, tv).map_err(|e| (format!("{name}={}.{:06}s", tv.0, tv.1), e))?;
            }
        }
        if sock.tcp && !self.congestion.is_empty() {
            let err = |e| (format!("TCP_CONGESTION={}", self.congestion), e);
            if raw::get_name(fd, libc::IPPROTO_TCP, libc::TCP_CONGESTION).map_err(err)? != self.congestion {
                raw::set(fd, libc::IPPROTO_TCP, libc::TCP_CONGESTION, self.congestion.as_bytes()).map_err(err)?;
            }
        }
        if !sock.tcp && self.mcast_if != [0; 4] {
            raw::set(fd, libc::IPPROTO_IP, libc::IP_MULTICAST_IF, &self.mcast_if).map_err(|e| {
                let a = std::net::Ipv4Addr::from(self.mcast_if);
                (format!("IP_MULTICAST_IF={a}"), e)
            })?;
        }
        if !self.icmp6_filter.is_empty() {
            raw::set(fd, libc::IPPROTO_ICMPV6, ICMP6_FILTER, &self.icmp6_filter)
                .map_err(|e| ("ICMP6_FILTER".to_string(), e))?;
        }
        // Last. A connection gets its options once ckptd has made it and refilled its queue,
        // so its filter never sees ckptd's own traffic.
        sockfilter::attach(fd, &self.filter).map_err(|e| {
            let what = format!("SO_ATTACH_FILTER ({} instructions)", self.filter.insns.len());
            (what, e)
        })?;
        Ok(())
    }

    /// Sets the options on a re-created socket, before it binds (or once connected).
    pub fn apply(&self, fd: RawFd, sock: Sock) -> Result<(), KindError> {
        self.set_all(fd, sock).map_err(|(what, source)| KindError::Recreate {
            what: format!("socket option {what}"),
            source,
        })
    }

    /// Joins the multicast groups again, with their source filters.
    pub fn join(&self, fd: RawFd) -> Result<(), KindError> {
        for m in &self.memberships {
            mcast::join(fd, m).map_err(KindError::recreate(format!(
                "multicast membership {}",
                mcast::describe(m)
            )))?;
        }
        Ok(())
    }

    /// At checkpoint time: sets every option on a scratch socket of the same kind, so that an
    /// option ckptd could not set back (SO_MARK or IP_TRANSPARENT without the privilege, a
    /// congestion control no longer available, …) refuses the checkpoint instead of the restore.
    pub fn check(&self, sock: Sock) -> Result<(), KindError> {
        let dom = if sock.v6 { libc::AF_INET6 } else { libc::AF_INET };
        let (ty, proto) = match (sock.tcp, sock.raw) {
            (true, _) => (libc::SOCK_STREAM, 0),
            (false, 0) => (libc::SOCK_DGRAM, 0),
            (false, p) => (libc::SOCK_RAW, p),
        };
        // SAFETY: socket returns a new fd or -1.
        let s = unsafe { libc::socket(dom, ty | libc::SOCK_CLOEXEC, proto) };
        if s < 0 {
            return Err(KindError::read("a scratch socket")(std::io::Error::last_os_error()));
        }
        // SAFETY: the fd was just created and is ours.
        let s = unsafe { OwnedFd::from_raw_fd(s) };
        self.set_all(s.as_raw_fd(), sock)
            .map_err(|(what, e)| refused(format!("its socket option {what} cannot be set back by ckptd ({e})")))
    }

    /// A short summary for `ckptctl show`: the memberships and the filter.
    pub fn describe(&self) -> String {
        let filter = sockfilter::describe(&self.filter);
        if self.memberships.is_empty() {
            return filter;
        }
        let list: Vec<String> = self.memberships.iter().map(mcast::describe).collect();
        format!(" (member of {}){filter}", list.join("; "))
    }
}
