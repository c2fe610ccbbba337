//! The integer options of TCP and UDP sockets that change what a program sees, with where each
//! one applies. They are recorded by name (stable across versions of this table) and set back
//! only where the re-created socket's value differs, so that an option the program never
//! touched keeps following the system's defaults.

use super::Sock;
use crate::socklevel::{
    SO_MAX_PACING_RATE, SO_NOFCS, SO_RCVMARK, SO_SELECT_ERR_QUEUE, SO_TIMESTAMPING_OLD, SO_TXREHASH, SO_WIFI_STATUS,
};

// Not in the libc crate yet (asm-generic/socket.h, linux/in.h).
pub const SO_BUF_LOCK: i32 = 72;
const SO_ZEROCOPY: i32 = 60;
const SO_PREFER_BUSY_POLL: i32 = 69;
const IP_RECVERR_RFC4884: i32 = 26;
const IP_LOCAL_PORT_RANGE: i32 = 51;
const TCP_TX_DELAY: i32 = 37;
const IP_NODEFRAG: i32 = 22;
const IPV6_HDRINCL: i32 = 36;
const SOL_RAW: i32 = 255;

/// Which sockets an option is read from and set on.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    All,
    Tcp,
    Udp,
    /// Listening TCP sockets: the value passes to the connections they accept.
    Listener,
    /// Not on a connected TCP socket (only meaningful before bind/connect, refused after).
    NotConn,
    /// Raw sockets only.
    Raw,
}

pub struct Spec {
    pub name: &'static str,
    pub level: i32,
    pub opt: i32,
    pub scope: Scope,
    /// Read on IPv6 sockets only.
    pub v6: bool,
}

const fn s(name: &'static str, level: i32, opt: i32, scope: Scope) -> Spec {
    Spec {
        name,
        level,
        opt,
        scope,
        v6: false,
    }
}

const fn s6(name: &'static str, opt: i32, scope: Scope) -> Spec {
    Spec {
        name,
        level: libc::IPPROTO_IPV6,
        opt,
        scope,
        v6: true,
    }
}

const SOL: i32 = libc::SOL_SOCKET;
const TCP: i32 = libc::IPPROTO_TCP;
const IP: i32 = libc::IPPROTO_IP;

/// TCP_QUICKACK is left out on purpose: the kernel leaves quick-ack mode by itself, the value
/// read is a passing state, not a setting. TCP_MAXSEG and TCP_WINDOW_CLAMP are read on
/// listeners only: on a connection they report what was negotiated.
pub const TABLE: &[Spec] = &[
    s("SO_REUSEADDR", SOL, libc::SO_REUSEADDR, Scope::All),
    s("SO_REUSEPORT", SOL, libc::SO_REUSEPORT, Scope::All),
    s("SO_BROADCAST", SOL, libc::SO_BROADCAST, Scope::All),
    s("SO_KEEPALIVE", SOL, libc::SO_KEEPALIVE, Scope::All),
    s("SO_DONTROUTE", SOL, libc::SO_DONTROUTE, Scope::All),
    // Refused by kernels that keep them to Unix and netlink sockets (Linux 6.16): not read.
    s("SO_PASSCRED", SOL, libc::SO_PASSCRED, Scope::All),
    s("SO_PASSSEC", SOL, libc::SO_PASSSEC, Scope::All),
    s("SO_MARK", SOL, libc::SO_MARK, Scope::All),
    s("SO_RCVLOWAT", SOL, libc::SO_RCVLOWAT, Scope::All),
    s("SO_OOBINLINE", SOL, libc::SO_OOBINLINE, Scope::All),
    s("SO_TIMESTAMP", SOL, libc::SO_TIMESTAMP, Scope::All),
    s("SO_TIMESTAMPNS", SOL, libc::SO_TIMESTAMPNS, Scope::All),
    s("SO_RXQ_OVFL", SOL, libc::SO_RXQ_OVFL, Scope::All),
    s("SO_BUSY_POLL", SOL, libc::SO_BUSY_POLL, Scope::All),
    s("SO_PREFER_BUSY_POLL", SOL, SO_PREFER_BUSY_POLL, Scope::All),
    s("SO_ZEROCOPY", SOL, SO_ZEROCOPY, Scope::All),
    // An offset into the receive queue (Linux 6.9 for TCP): set once a connection's queue is
    // refilled, as every option of a connection is.
    s("SO_PEEK_OFF", SOL, libc::SO_PEEK_OFF, Scope::All),
    s("SO_TIMESTAMPING", SOL, SO_TIMESTAMPING_OLD, Scope::All),
    s("SO_WIFI_STATUS", SOL, SO_WIFI_STATUS, Scope::All),
    s("SO_NOFCS", SOL, SO_NOFCS, Scope::All),
    s("SO_SELECT_ERR_QUEUE", SOL, SO_SELECT_ERR_QUEUE, Scope::All),
    s("SO_MAX_PACING_RATE", SOL, SO_MAX_PACING_RATE, Scope::All),
    s("SO_TXREHASH", SOL, SO_TXREHASH, Scope::All),
    s("SO_RCVMARK", SOL, SO_RCVMARK, Scope::All),
    s("TCP_NODELAY", TCP, libc::TCP_NODELAY, Scope::Tcp),
    s("TCP_CORK", TCP, libc::TCP_CORK, Scope::Tcp),
    s("TCP_KEEPIDLE", TCP, libc::TCP_KEEPIDLE, Scope::Tcp),
    s("TCP_KEEPINTVL", TCP, libc::TCP_KEEPINTVL, Scope::Tcp),
    s("TCP_KEEPCNT", TCP, libc::TCP_KEEPCNT, Scope::Tcp),
    s("TCP_USER_TIMEOUT", TCP, libc::TCP_USER_TIMEOUT, Scope::Tcp),
    s("TCP_NOTSENT_LOWAT", TCP, libc::TCP_NOTSENT_LOWAT, Scope::Tcp),
    s("TCP_LINGER2", TCP, libc::TCP_LINGER2, Scope::Tcp),
    s("TCP_SYNCNT", TCP, libc::TCP_SYNCNT, Scope::Tcp),
    s(
        "TCP_THIN_LINEAR_TIMEOUTS",
        TCP,
        libc::TCP_THIN_LINEAR_TIMEOUTS,
        Scope::Tcp,
    ),
    s("TCP_INQ", TCP, libc::TCP_INQ, Scope::Tcp),
    s("TCP_TX_DELAY", TCP, TCP_TX_DELAY, Scope::Tcp),
    s("TCP_DEFER_ACCEPT", TCP, libc::TCP_DEFER_ACCEPT, Scope::Listener),
    s("TCP_FASTOPEN", TCP, libc::TCP_FASTOPEN, Scope::Listener),
    s("TCP_SAVE_SYN", TCP, libc::TCP_SAVE_SYN, Scope::Listener),
    s("TCP_MAXSEG", TCP, libc::TCP_MAXSEG, Scope::Listener),
    s("TCP_WINDOW_CLAMP", TCP, libc::TCP_WINDOW_CLAMP, Scope::Listener),
    s("IP_TTL", IP, libc::IP_TTL, Scope::All),
    s("IP_TOS", IP, libc::IP_TOS, Scope::All),
    // After IP_TOS, which sets the priority from the TOS.
    s("SO_PRIORITY", SOL, libc::SO_PRIORITY, Scope::All),
    s("IP_FREEBIND", IP, libc::IP_FREEBIND, Scope::All),
    s("IP_TRANSPARENT", IP, libc::IP_TRANSPARENT, Scope::All),
    s(
        "IP_BIND_ADDRESS_NO_PORT",
        IP,
        libc::IP_BIND_ADDRESS_NO_PORT,
        Scope::NotConn,
    ),
    s("IP_LOCAL_PORT_RANGE", IP, IP_LOCAL_PORT_RANGE, Scope::NotConn),
    s("IP_MTU_DISCOVER", IP, libc::IP_MTU_DISCOVER, Scope::All),
    s("IP_RECVERR", IP, libc::IP_RECVERR, Scope::All),
    s("IP_RECVERR_RFC4884", IP, IP_RECVERR_RFC4884, Scope::All),
    s("IP_UNICAST_IF", IP, libc::IP_UNICAST_IF, Scope::Udp),
    s("IP_MULTICAST_TTL", IP, libc::IP_MULTICAST_TTL, Scope::Udp),
    s("IP_MULTICAST_LOOP", IP, libc::IP_MULTICAST_LOOP, Scope::All),
    s("IP_MULTICAST_ALL", IP, libc::IP_MULTICAST_ALL, Scope::All),
    s("IP_PKTINFO", IP, libc::IP_PKTINFO, Scope::All),
    s("IP_RECVTTL", IP, libc::IP_RECVTTL, Scope::All),
    s("IP_RECVTOS", IP, libc::IP_RECVTOS, Scope::All),
    s("IP_RECVORIGDSTADDR", IP, libc::IP_RECVORIGDSTADDR, Scope::All),
    s("IP_HDRINCL", IP, libc::IP_HDRINCL, Scope::Raw),
    s("IP_NODEFRAG", IP, IP_NODEFRAG, Scope::Raw),
    // struct icmp_filter is one u32 (a raw ICMP socket's; others answer EOPNOTSUPP).
    s("ICMP_FILTER", SOL_RAW, 1, Scope::Raw),
    s6("IPV6_V6ONLY", libc::IPV6_V6ONLY, Scope::NotConn),
    s6("IPV6_CHECKSUM", libc::IPV6_CHECKSUM, Scope::Raw),
    s6("IPV6_HDRINCL", IPV6_HDRINCL, Scope::Raw),
    s6("IPV6_UNICAST_HOPS", libc::IPV6_UNICAST_HOPS, Scope::All),
    s6("IPV6_TCLASS", libc::IPV6_TCLASS, Scope::All),
    s6("IPV6_MTU_DISCOVER", libc::IPV6_MTU_DISCOVER, Scope::All),
    s6("IPV6_RECVERR", libc::IPV6_RECVERR, Scope::All),
    s6("IPV6_AUTOFLOWLABEL", libc::IPV6_AUTOFLOWLABEL, Scope::All),
    s6("IPV6_DONTFRAG", libc::IPV6_DONTFRAG, Scope::Udp),
    s6("IPV6_ADDR_PREFERENCES", libc::IPV6_ADDR_PREFERENCES, Scope::NotConn),
    s6("IPV6_UNICAST_IF", libc::IPV6_UNICAST_IF, Scope::Udp),
    s6("IPV6_MULTICAST_HOPS", libc::IPV6_MULTICAST_HOPS, Scope::Udp),
    s6("IPV6_MULTICAST_LOOP", libc::IPV6_MULTICAST_LOOP, Scope::Udp),
    s6("IPV6_MULTICAST_IF", libc::IPV6_MULTICAST_IF, Scope::Udp),
    s6("IPV6_MULTICAST_ALL", libc::IPV6_MULTICAST_ALL, Scope::Udp),
    s6("IPV6_RECVPKTINFO", libc::IPV6_RECVPKTINFO, Scope::Udp),
    s6("IPV6_RECVHOPLIMIT", libc::IPV6_RECVHOPLIMIT, Scope::Udp),
    s6("IPV6_RECVTCLASS", libc::IPV6_RECVTCLASS, Scope::Udp),
    s6("IPV6_RECVORIGDSTADDR", libc::IPV6_RECVORIGDSTADDR, Scope::Udp),
];

impl Spec {
    pub fn applies(&self, sock: Sock) -> bool {
        if self.v6 && !sock.v6 {
            return false;
        }
        match self.scope {
            Scope::All => true,
            Scope::Tcp => sock.tcp,
            Scope::Udp => !sock.tcp,
            Scope::Listener => sock.tcp && sock.listener,
            Scope::NotConn => !sock.tcp || sock.listener,
            Scope::Raw => sock.raw != 0,
        }
    }

    /// The bits of the value that are the program's: the kernel keeps the ECN bits of a TCP
    /// socket's TOS/traffic class to itself.
    pub fn mask(&self, sock: Sock) -> i32 {
        let ecn = matches!(self.name, "IP_TOS" | "IPV6_TCLASS") && sock.tcp;
        if ecn {
            !3
        } else {
            !0
        }
    }
}

pub fn find(name: &str) -> Option<&'static Spec> {
    TABLE.iter().find(|s| s.name == name)
}
