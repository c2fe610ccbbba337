//! The restore's check for pseudo-terminals: each pair a checkpointed process held the master
//! of comes back as the same `/dev/pts/N`, so that number must be free.

use ckpt_format::{FdKind, ProcessImage};
use ckpt_kinds::{pty, Object};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// One line per pair whose number is in use by a program outside the checkpoint.
pub fn check(id: &str, images: &[&ProcessImage]) -> Vec<String> {
    let wanted: BTreeMap<u32, &str> = images
        .iter()
        .flat_map(|i| i.fds.iter())
        .filter_map(|f| match &f.kind {
            FdKind::Object {
                obj: Object::Pty(r), ..
            } => pty::master_index(r).map(|n| (n, r.slave.as_str())),
            _ => None,
        })
        .collect();
    let mut problems = Vec::new();
    for (n, path) in wanted {
        // The killed program's own pair goes once its last holder has exited.
        if !gone_within(Path::new(path), Duration::from_secs(1)) {
            let who = holder(n, path)
                .map(|(pid, comm)| format!("held by pid {pid} ({comm})"))
                .unwrap_or_else(|| "held by another program".to_string());
            problems.push(format!(
                "pseudo-terminal {path} of checkpoint {id} is in use ({who}); the restored programs need that number, so stop it, then restore again"
            ));
        }
    }
    problems
}

fn gone_within(path: &Path, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while path.exists() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

/// A process holding either end of pair `n`, for the message.
fn holder(n: u32, slave: &str) -> Option<(i32, String)> {
    let procs = std::fs::read_dir("/proc").ok()?;
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let target = target.to_string_lossy();
            let master = target.ends_with("/ptmx")
                && std::fs::read_to_string(p.path().join("fdinfo").join(fd.file_name())).is_ok_and(|t| {
                    t.lines().any(|l| {
                        l.split_once(':')
                            .is_some_and(|(k, v)| k == "tty-index" && v.trim() == n.to_string())
                    })
                });
            if target == slave || master {
                return Some((pid, ckpt_sys::spawn::describe_pid(pid)));
            }
        }
    }
    None
}
