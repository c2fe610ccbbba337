//! ICMP echo ("ping") sockets: `socket(AF_INET, SOCK_DGRAM, IPPROTO_ICMP)` and its IPv6
//! counterpart. ckptd makes them like UDP sockets (their "port" is the echo identifier the
//! kernel writes into every request, bound again as it was), with two differences owned here:
//! who may make one (`net.ipv4.ping_group_range`, which holds even for root) and that their
//! shutdown state is read by poll (inet_diag does not list them: [`super::diag::by_poll`]).

use std::io::Error;
use std::os::fd::{FromRawFd, OwnedFd};

/// A new ping socket of the family.
pub fn socket(v6: bool) -> std::io::Result<OwnedFd> {
    let (dom, proto) = if v6 {
        (libc::AF_INET6, libc::IPPROTO_ICMPV6)
    } else {
        (libc::AF_INET, libc::IPPROTO_ICMP)
    };
    // SAFETY: socket returns a new fd or -1.
    let s = unsafe { libc::socket(dom, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, proto) };
    if s < 0 {
        return Err(Error::last_os_error());
    }
    // SAFETY: the fd was just created and is ours.
    Ok(unsafe { OwnedFd::from_raw_fd(s) })
}

/// At checkpoint time: whether ckptd will be able to make the socket again.
pub fn check(v6: bool) -> Result<(), String> {
    socket(v6).map(drop).map_err(|e| {
        format!("an ICMP echo (ping) socket that ckptd cannot make ({e}; ckptd's group must be in net.ipv4.ping_group_range)")
    })
}
