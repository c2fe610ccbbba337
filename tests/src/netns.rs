//! Hosts as network namespaces: a namespace holding a bridge `br0`, and one
//! namespace per host with an `eth0` (a veth whose other end is a port of
//! the bridge) on a private /24.  Names and subnet derive from a per-test
//! key, so tests running in parallel never share anything; every namespace
//! (and every process left inside one) is removed on drop.

use anyhow::{bail, Result};
use std::process::Command;
use std::time::Duration;

use crate::*;

/// Timeout of one `ip` command.
const IP_TIMEOUT: Duration = Duration::from_secs(20);

/// A LAN of `n` hosts (network namespaces) joined by a bridge.
pub struct Net {
    key: u8,
    n: usize,
    /// Namespaces created so far (deleted on drop, hosts first).
    created: Vec<String>,
}

/// Runs `ip ARGS…`, failing with its stderr.
pub fn ip(args: &[&str]) -> Result<String> {
    let out = run_with_timeout(Command::new("ip").args(args), IP_TIMEOUT)?;
    if !out.status.success() {
        bail!("ip {} failed: {}", args.join(" "), describe(&out));
    }
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

/// Names of the existing network namespaces (`ip netns list`).
pub fn netns_list() -> Vec<String> {
    ip(&["netns", "list"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// Kills (SIGKILL) every process inside namespace `ns` and waits for them
/// to be gone, then deletes the namespace.  Errors are ignored (best effort,
/// for teardown).
pub fn netns_destroy(ns: &str) {
    for _ in 0..3 {
        let pids: Vec<i32> = ip(&["netns", "pids", ns])
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|s| s.parse().ok())
            .collect();
        if pids.is_empty() {
            break;
        }
        for &p in &pids {
            let _ = send_signal(p, libc::SIGKILL);
        }
        for &p in &pids {
            let _ = wait_proc_gone(p, Duration::from_secs(5));
        }
    }
    let _ = ip(&["netns", "del", ns]);
}

impl Net {
    /// Creates hosts `1..=n`: namespace [`Net::ns`]`(i)` with address
    /// [`Net::ip`]`(i)` = `10.<77+key>.0.<i>/24`.  Namespaces of the same
    /// names left by an earlier, crashed run are removed first.
    pub fn create(key: u8, n: usize) -> Result<Net> {
        if key > 170 {
            bail!("netns key {key} too large (the subnet is 10.<77+key>.0.0/24)");
        }
        if n == 0 || n > 200 {
            bail!("bad host count {n}");
        }
        init();
        let mut net = Net {
            key,
            n,
            created: Vec::new(),
        };
        let existing = netns_list();
        let br = net.bridge_ns();
        for name in std::iter::once(br.clone()).chain((1..=n).map(|i| net.ns(i))) {
            if existing.contains(&name) {
                eprintln!("[harness] removing stale network namespace {name}");
                netns_destroy(&name);
            }
        }
        ip(&["netns", "add", &br])?;
        net.created.push(br.clone());
        ip(&["-n", &br, "link", "set", "lo", "up"])?;
        ip(&["-n", &br, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &br, "link", "set", "br0", "up"])?;
        for i in 1..=n {
            let ns = net.ns(i);
            ip(&["netns", "add", &ns])?;
            net.created.push(ns.clone());
            let veth = format!("v{i}");
            ip(&[
                "-n", &br, "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ])?;
            ip(&["-n", &br, "link", "set", &veth, "master", "br0"])?;
            ip(&["-n", &br, "link", "set", &veth, "up"])?;
            ip(&["-n", &ns, "addr", "add", &format!("{}/24", net.ip(i)), "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(net)
    }

    /// Number of hosts.
    pub fn hosts(&self) -> usize {
        self.n
    }

    /// Namespace of host `i` (1-based): `ckt<key>h<i>`.
    pub fn ns(&self, i: usize) -> String {
        format!("ckt{}h{i}", self.key)
    }

    /// The namespace holding the bridge.
    pub fn bridge_ns(&self) -> String {
        format!("ckt{}br", self.key)
    }

    /// Address of host `i`.
    pub fn ip(&self, i: usize) -> String {
        format!("10.{}.0.{i}", 77 + self.key as u32)
    }

    /// `ip netns exec <ns(i)> PROG` (the program keeps the spawned pid:
    /// `ip netns exec` execs it).
    pub fn exec_cmd(&self, i: usize, prog: &std::path::Path) -> Command {
        let mut c = Command::new("ip");
        c.arg("netns").arg("exec").arg(self.ns(i)).arg(prog);
        c
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in self.created.iter().rev() {
            netns_destroy(ns);
        }
        reap_orphans();
    }
}
