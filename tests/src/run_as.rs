//! [`RunAs`]: a user other than the test's (root) to run a `ckptd` and its programs as, with
//! or without `CAP_CHECKPOINT_RESTORE`, through util-linux's `setpriv` (as the README tells
//! users to).

use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::Command;

/// A user, and whether the ckptd run as that user holds `CAP_CHECKPOINT_RESTORE`.
#[derive(Debug, Clone)]
pub struct RunAs {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// Give the ckptd `CAP_CHECKPOINT_RESTORE` (inheritable and ambient, so that it keeps it
    /// across the exec; its programs never get it).
    pub cap: bool,
    home: String,
}

impl RunAs {
    /// The user `name` from the password database.
    pub fn user(name: &str, cap: bool) -> Result<RunAs> {
        let passwd = std::fs::read_to_string("/etc/passwd").context("reading /etc/passwd")?;
        let Some(fields) = passwd
            .lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .find(|f| f.len() >= 7 && f[0] == name)
        else {
            bail!("no user {name} on this machine");
        };
        Ok(RunAs {
            name: name.to_string(),
            uid: fields[2].parse().context("uid in /etc/passwd")?,
            gid: fields[3].parse().context("gid in /etc/passwd")?,
            cap,
            home: fields[5].to_string(),
        })
    }

    /// `prog` as this user, with its groups, without any capability.
    pub fn command(&self, prog: &Path) -> Command {
        let mut c = Command::new("setpriv");
        c.args(["--reuid", &self.uid.to_string(), "--regid", &self.gid.to_string()]);
        c.arg("--init-groups").env("USER", &self.name).env("HOME", &self.home);
        c.arg(prog);
        c
    }

    /// `ckptd` as this user, holding `CAP_CHECKPOINT_RESTORE` when [`RunAs::cap`] says so.
    pub fn ckptd_command(&self, ckptd: &Path) -> Command {
        let mut c = Command::new("setpriv");
        c.args(["--reuid", &self.uid.to_string(), "--regid", &self.gid.to_string()]);
        // Changing the user would clear the harness's parent-death signal (see `Daemon`).
        c.args(["--init-groups", "--pdeathsig", "keep"])
            .env("USER", &self.name)
            .env("HOME", &self.home);
        if self.cap {
            c.args([
                "--inh-caps",
                "+checkpoint_restore",
                "--ambient-caps",
                "+checkpoint_restore",
            ]);
        }
        c.arg(ckptd);
        c
    }

    /// Makes `path` this user's.
    pub fn own(&self, path: &Path) -> Result<()> {
        std::os::unix::fs::chown(path, Some(self.uid), Some(self.gid))
            .with_context(|| format!("chown {} to {}", path.display(), self.name))
    }
}

/// The capability lines (`CapInh` … `CapAmb`) and `Uid` of every thread of `pid`, as
/// `TID Key: value` lines.
pub fn cap_lines(pid: i32) -> Vec<String> {
    let mut out = Vec::new();
    for tid in crate::task_tids(pid) {
        let text = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).unwrap_or_default();
        for l in text.lines().filter(|l| l.starts_with("Cap") || l.starts_with("Uid:")) {
            out.push(format!("{tid} {}", l.split_whitespace().collect::<Vec<_>>().join(" ")));
        }
    }
    out
}

/// Every capability line of every thread of `pid` that is not zero (the bounding set aside):
/// what a restored unprivileged program must not have.
pub fn held_caps(pid: i32) -> Vec<String> {
    cap_lines(pid)
        .into_iter()
        .filter(|l| l.contains(" Cap") && !l.contains("CapBnd"))
        .filter(|l| !l.ends_with(" 0000000000000000"))
        .collect()
}
