//! Loopback ports for servers under test.

use anyhow::{Context, Result};
use std::time::{Duration, Instant};

/// A free loopback port below the ephemeral range, so that no connection of another program
/// takes it between a checkpoint and its restore.
pub fn free_low_port() -> Result<u16> {
    let start = 20000 + (std::process::id() % 5000) as u16 + (seq() * 37 % 1000) as u16;
    (0..2000u16)
        .map(|i| 20000 + (start - 20000 + i) % 10000)
        .find(|&p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok())
        .context("no free loopback port between 20000 and 30000")
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
