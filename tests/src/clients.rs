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
