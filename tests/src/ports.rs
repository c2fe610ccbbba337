//! Loopback ports for servers under test.

use anyhow::{Context, Result};
use std::time::{Duration, Instant};

/// A free loopback port below the ephemeral range, so that no connection of another program
/// takes it between a checkpoint and its restore. Free for a program that does not set
/// SO_REUSEADDR too: no socket of an earlier test lingers on it (TIME_WAIT, FIN_WAIT).
pub fn free_low_port() -> Result<u16> {
    let start = 20000 + (std::process::id() % 5000) as u16 + (seq() * 37 % 1000) as u16;
    (0..2000u16)
        .map(|i| 20000 + (start - 20000 + i) % 10000)
        .find(|&p| bindable_without_reuse(p))
        .context("no free loopback port between 20000 and 30000")
}

/// Whether a TCP socket without SO_REUSEADDR (std's listeners set it) binds 127.0.0.1:`port`.
fn bindable_without_reuse(port: u16) -> bool {
    // SAFETY: socket returns a new fd or -1.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return false;
    }
    let sa = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(std::net::Ipv4Addr::LOCALHOST).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sa is a valid sockaddr_in of its size; fd is ours and closed after.
    let ok = unsafe {
        libc::bind(
            fd,
            (&sa as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        ) == 0
    };
    // SAFETY: closing our own socket.
    unsafe { libc::close(fd) };
    ok
}

/// Different ports for the tests of one binary, which run at the same time.
fn seq() -> u32 {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Waits until something accepts connections on 127.0.0.1:`port`.
pub fn wait_listening(port: u16, timeout: Duration) -> Result<()> {
    let t0 = Instant::now();
    loop {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        if t0.elapsed() > timeout {
            anyhow::bail!("nothing listens on 127.0.0.1:{port} after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
