//! Which sends leave this host: the gate holds those in phase 1, the others run until the
//! phase-2 barrier.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicUsize, Ordering::*};

const MAX_ADDRS: usize = 64;

/// This host's addresses, IPv4 ones mapped into IPv6; written by the control thread before it
/// shuts the gate, read by the wrappers while it is shut.
struct Addrs(UnsafeCell<[[u8; 16]; MAX_ADDRS]>);
// SAFETY: written only by the control thread while the gate is open (no reader looks), the
// count is published with SeqCst before the gate shuts.
unsafe impl Sync for Addrs {}
static LOCAL: Addrs = Addrs(UnsafeCell::new([[0; 16]; MAX_ADDRS]));
static LOCAL_N: AtomicUsize = AtomicUsize::new(0);

fn mapped_v4(a: [u8; 4]) -> [u8; 16] {
    let mut m = [0u8; 16];
    m[10] = 0xff;
    m[11] = 0xff;
    m[12..].copy_from_slice(&a);
    m
}

/// Re-reads the interface addresses (normal context: getifaddrs allocates).
pub fn refresh_local_addrs() {
    let mut n = 0;
    // SAFETY: only the control thread writes, with the gate open.
    let table = unsafe { &mut *LOCAL.0.get() };
    let mut ifap: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills a list we free below.
    if unsafe { libc::getifaddrs(&mut ifap) } == 0 {
        let mut p = ifap;
        // SAFETY: walking the list getifaddrs returned.
        while let Some(ifa) = unsafe { p.as_ref() } {
            if let Some(a) = addr_of(ifa.ifa_addr) {
                if n < MAX_ADDRS {
                    table[n] = a;
                    n += 1;
                }
            }
            p = ifa.ifa_next;
        }
        // SAFETY: freeing what getifaddrs allocated.
        unsafe { libc::freeifaddrs(ifap) };
    }
    LOCAL_N.store(n, SeqCst);
}

/// The IP address of a sockaddr, as 16 bytes.
fn addr_of(sa: *const libc::sockaddr) -> Option<[u8; 16]> {
    // SAFETY: reading the family of a sockaddr the kernel or libc gave us.
    let fam = unsafe { sa.as_ref()? }.sa_family as i32;
    match fam {
        libc::AF_INET => {
            // SAFETY: the family says this is a sockaddr_in.
            let v4 = unsafe { &*(sa as *const libc::sockaddr_in) };
            Some(mapped_v4(v4.sin_addr.s_addr.to_ne_bytes()))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this is a sockaddr_in6.
            let v6 = unsafe { &*(sa as *const libc::sockaddr_in6) };
            Some(v6.sin6_addr.s6_addr)
        }
        _ => None,
    }
}

fn is_local(a: &[u8; 16]) -> bool {
    let v4_loopback = a[..12] == mapped_v4([0; 4])[..12] && a[12] == 127;
    let v6_loopback = a[..15].iter().all(|&b| b == 0) && a[15] == 1;
    if v4_loopback || v6_loopback {
        return true;
    }
    let n = LOCAL_N.load(SeqCst).min(MAX_ADDRS);
    // SAFETY: entries below LOCAL_N were written before it was published.
    let table = unsafe { &*LOCAL.0.get() };
    table[..n].contains(a)
}

/// True when a send on `fd` (to `dest` if given) goes to another host. Makes raw syscalls
/// only; the caller keeps errno.
pub fn leaves_host(fd: i32, dest: Option<(*const libc::sockaddr, libc::socklen_t)>) -> bool {
    if let Some((sa, _)) = dest.filter(|(sa, _)| !sa.is_null()) {
        return addr_of(sa).is_some_and(|a| !is_local(&a));
    }
    // SAFETY: fstat into a local struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: st is a valid out-pointer.
    if unsafe { libc::fstat(fd, &mut st) } != 0 || st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return false;
    }
    // SAFETY: a zeroed sockaddr_storage is a valid out-buffer of the given length.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: ss and len are valid out-pointers.
    if unsafe { libc::getpeername(fd, (&mut ss as *mut libc::sockaddr_storage).cast(), &mut len) } != 0 {
        return false;
    }
    addr_of((&ss as *const libc::sockaddr_storage).cast()).is_some_and(|a| !is_local(&a))
}
