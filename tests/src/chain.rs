//! Checkpoint chains as `ckptctl --json` shows them.

use crate::{App, CkptStats, Daemon};
use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

impl Daemon {
    /// `ckptctl checkpoint --json [extra]` -> stats.
    pub fn checkpoint_json(&self, extra: &[&str]) -> Result<CkptStats> {
        let mut args = vec!["checkpoint", "--json"];
        args.extend_from_slice(extra);
        let out = self.ckptctl_ok(&args)?;
        CkptStats::parse(&out).with_context(|| self.context())
    }

    /// `manifest.parent` of `ckptctl show ID --json` (None when null), and the
    /// `parent` of each process entry (for messages).
    pub fn manifest_parent(&self, id: &str) -> Result<(Option<String>, Vec<Option<String>>)> {
        let s = self.ckptctl_ok(&["show", id, "--json"])?;
        let v: Value =
            serde_json::from_str(&s).map_err(|e| anyhow!("ckptctl show {id} --json: not JSON ({e}): {s:.300}"))?;
        let m = v
            .get("manifest")
            .ok_or_else(|| anyhow!("ckptctl show {id} --json: no \"manifest\" object: {s:.300}"))?;
        let as_id = |p: &Value| -> Result<Option<String>> {
            match p {
                Value::Null => Ok(None),
                Value::String(p) => Ok(Some(p.clone())),
                Value::Number(n) => Ok(Some(n.to_string())),
                other => bail!("ckptctl show {id} --json: unexpected parent {other}"),
            }
        };
        let parent = match m.get("parent") {
            None => bail!("ckptctl show {id} --json: manifest has no \"parent\" key: {m:.300}"),
            Some(p) => as_id(p)?,
        };
        let mut procs = Vec::new();
        for h in m.get("hosts").and_then(|h| h.as_array()).into_iter().flatten() {
            for p in h.get("processes").and_then(|p| p.as_array()).into_iter().flatten() {
                procs.push(as_id(p.get("parent").unwrap_or(&Value::Null))?);
            }
        }
        Ok((parent, procs))
    }
}

impl App {
    /// Sends SIGUSR1 to a self-checking example and returns its `verify ok …` line; a
    /// `VERIFY FAILED`/`STEP FAILED` line (or none within `timeout`) is an error.
    pub fn verify(&self, timeout: std::time::Duration) -> Result<String> {
        self.signal(libc::SIGUSR1)?;
        let l = self.expect_line(
            "`verify ok` (the answer to SIGUSR1)",
            |l| l.starts_with("verify ok") || l.starts_with("VERIFY FAILED") || l.starts_with("STEP FAILED"),
            timeout,
        )?;
        if !l.starts_with("verify ok") {
            bail!("{} (pid {}): {l}\n{}", self.label(), self.pid, self.context());
        }
        Ok(l)
    }
}
