//! Command-line clients of the real servers that tests and benchmarks restore.

use crate::describe;
use anyhow::{ensure, Context, Result};
use std::process::Command;

/// `redis-cli -h 127.0.0.1 -p PORT ARGS…`: its answer, trimmed.
pub fn redis_cli(port: u16, args: &[&str]) -> Result<String> {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .context("running redis-cli")?;
    ensure!(out.status.success(), "redis-cli {args:?}: {}", describe(&out));
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Starts redis-server under ckpt-run on a free loopback port, without persistence, with
/// `extra` arguments, and waits until it accepts connections: the program and its port.
pub fn start_redis(d: &crate::Daemon, extra: &[&str]) -> Result<(crate::App, u16)> {
    let port = crate::free_low_port()?;
    let p = port.to_string();
    let mut args = vec!["--port", &p, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"];
    args.extend_from_slice(extra);
    let app = d.run(std::path::Path::new("/usr/bin/redis-server"), &args)?;
    crate::wait_listening(port, std::time::Duration::from_secs(20)).map_err(|e| e.context(app.context()))?;
    Ok((app, port))
}
