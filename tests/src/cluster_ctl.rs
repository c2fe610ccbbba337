//! `ckptctl` against a [`Cluster`]: running it via any host's socket, and
//! reading its JSON answers (checkpoint reports, lists, status).

use anyhow::{anyhow, bail, Context, Result};
use std::process::{Command, Output};
use std::thread;
use std::time::{Duration, Instant};

use crate::*;

impl Cluster {
    /// `ckptctl --socket <socket of host i> ARGS…` (not started).
    pub fn ckptctl_cmd(&self, i: usize, args: &[&str]) -> Command {
        let mut c = Command::new(self.bin_dir.join("ckptctl"));
        c.arg("--socket").arg(&self.host(i).socket).args(args);
        c
    }

    /// Runs ckptctl against host `i` to completion ([`CKPTCTL_TIMEOUT`]).
    pub fn ckptctl(&self, i: usize, args: &[&str]) -> Output {
        match run_with_timeout(&mut self.ckptctl_cmd(i, args), CKPTCTL_TIMEOUT) {
            Ok(o) => o,
            Err(e) => Output {
                status: std::os::unix::process::ExitStatusExt::from_raw(127 << 8),
                stdout: Vec::new(),
                stderr: format!("[harness: could not run ckptctl: {e:#}]").into_bytes(),
            },
        }
    }

    /// Runs ckptctl against host `i`, requires success; trimmed stdout.
    pub fn ckptctl_ok(&self, i: usize, args: &[&str]) -> Result<String> {
        let out = self.ckptctl(i, args);
        if !out.status.success() {
            bail!(
                "ckptctl (via h{i}) {} failed\n{}\n{}",
                args.join(" "),
                describe(&out),
                self.context()
            );
        }
        Ok(stdout_str(&out))
    }

    /// `ckptctl checkpoint --json EXTRA…` via host `i`.
    pub fn checkpoint(&self, i: usize, extra: &[&str]) -> Result<CkptStats> {
        let mut args = vec!["checkpoint", "--json"];
        args.extend_from_slice(extra);
        let s = self.ckptctl_ok(i, &args)?;
        CkptStats::parse(&s)
    }

    /// Starts `ckptctl checkpoint --json EXTRA…` via host `i` in the
    /// background.
    pub fn checkpoint_bg(&self, i: usize, extra: &[&str]) -> Result<Background> {
        let mut args = vec!["checkpoint", "--json"];
        args.extend_from_slice(extra);
        Background::start(self.ckptctl_cmd(i, &args), CKPTCTL_TIMEOUT)
    }

    /// Ids listed by `ckptctl list --json` via host `i`.
    pub fn list_ids(&self, i: usize) -> Result<Vec<String>> {
        let s = self.ckptctl_ok(i, &["list", "--json"])?;
        let v: serde_json::Value =
            serde_json::from_str(&s).with_context(|| format!("ckptctl list --json: not JSON: {s:?}"))?;
        let arr = v
            .as_array()
            .or_else(|| v.get("checkpoints").and_then(|c| c.as_array()))
            .ok_or_else(|| anyhow!("ckptctl list --json: not an array: {s}"))?;
        Ok(arr
            .iter()
            .filter_map(|e| match e.get("id") {
                Some(serde_json::Value::String(s)) => Some(s.clone()),
                Some(serde_json::Value::Number(n)) => Some(n.to_string()),
                _ => None,
            })
            .collect())
    }

    /// `(host, pid)` of every process listed by `ckptctl status --json` via
    /// host `i`, sorted.
    pub fn status(&self, i: usize) -> Result<Vec<(String, i32)>> {
        let mut out = parse_status(&self.ckptctl_ok(i, &["status", "--json"])?)?;
        out.sort();
        Ok(out)
    }

    /// Waits until `ckptctl status` via host `i` lists every `(host, pid)`
    /// of `want`.
    pub fn wait_status(&self, i: usize, want: &[(&str, i32)], timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.status(i)?;
            if want.iter().all(|(h, p)| got.iter().any(|(gh, gp)| gh == h && gp == p)) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "ckptctl status via h{i} should list {want:?} within {timeout:?}; it lists {got:?}\n{}",
                    self.context()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until status lists every program of `apps` on its host
    /// (`(host index, app)`).
    pub fn wait_registered(&self, apps: &[(usize, &App)], timeout: Duration) -> Result<()> {
        let names: Vec<(String, i32)> = apps.iter().map(|(h, a)| (self.host(*h).name.clone(), a.pid)).collect();
        let want: Vec<(&str, i32)> = names.iter().map(|(h, p)| (h.as_str(), *p)).collect();
        self.wait_status(1, &want, timeout)
    }

    /// pid -> size at checkpoint `id` of the regular file on its fd 1, from
    /// `ckptctl show ID --json`.
    pub fn stdout_sizes(&self, via: usize, id: &str) -> Result<std::collections::HashMap<i32, u64>> {
        let s = self.ckptctl_ok(via, &["show", id, "--json"])?;
        let v: serde_json::Value =
            serde_json::from_str(&s).with_context(|| format!("ckptctl show --json: not JSON: {s:?}"))?;
        let mut sizes = std::collections::HashMap::new();
        fn walk(v: &serde_json::Value, sizes: &mut std::collections::HashMap<i32, u64>) {
            match v {
                serde_json::Value::Object(m) => {
                    if let (Some(pid), Some(fds)) = (m.get("pid").and_then(|p| p.as_i64()), m.get("fds")) {
                        for fd in fds.as_array().into_iter().flatten() {
                            if fd.get("fd").and_then(|x| x.as_i64()) == Some(1) {
                                if let Some(n) = fd.pointer("/kind/File/size").and_then(|x| x.as_u64()) {
                                    sizes.insert(pid as i32, n);
                                }
                            }
                        }
                    }
                    m.values().for_each(|x| walk(x, sizes));
                }
                serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, sizes)),
                _ => {}
            }
        }
        walk(&v, &mut sizes);
        Ok(sizes)
    }
}
