//! Every live child of a checkpointed process is in the checkpoint, or the checkpoint is
//! refused: a parent restored without a child it had would get `ECHILD` from `wait`, and the
//! child's work would be lost without a word.
//!
//! Phase 1 closes the set over children: once the gates of the registry's snapshot are shut
//! (no process of it creates another any more, see the interposer's `spawn`), a live child of
//! one of them outside the set — forked just before, still registering from its fork handler,
//! or exec'ing (a `posix_spawn` child registers only from the new program's constructor) — is
//! waited for, a few seconds at most, and its gate shut too; and so on for its own children.
//! At the park, with every process parked, a live child of a parked process that is not parked
//! itself, and does not end within a moment, makes the checkpoint fail: refused, naming it and
//! why, when it runs without the interposer; to be taken again when it does (it came in too
//! late). Zombies are fine: they are their parent's state, recorded with it.

use crate::registry::{Proc, Registry};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long phase 1 waits for children that are still registering.
const REGISTER_WAIT: Duration = Duration::from_secs(3);
/// How long the park check gives a child outside the checkpoint to end (a `vfork` child that
/// exec'd a short command just before its parent parked) before it judges.
const EXIT_WAIT: Duration = Duration::from_millis(200);
const LOOK_EVERY: Duration = Duration::from_millis(2);

/// A child outside the checkpoint, found at the park.
#[derive(Debug, thiserror::Error)]
pub enum StrayChild {
    #[error(
        "process {pid} ({comm}), a child of process {parent} ({parent_comm}), is not under checkpoint \
         control: {why}; every live child of a checkpointed process must be in the checkpoint: start it \
         with the interposer (under ckpt-run, LD_PRELOAD kept), or let it end before checkpointing"
    )]
    Uncontrolled {
        pid: i32,
        comm: String,
        parent: i32,
        parent_comm: String,
        why: String,
    },
    #[error(
        "process {pid} ({comm}), a child of process {parent} ({parent_comm}), was started while the \
         checkpoint ran and was not in it yet; try again"
    )]
    Late {
        pid: i32,
        comm: String,
        parent: i32,
        parent_comm: String,
    },
}

/// The processes `pid`'s threads have forked that are still there (zombies included).
pub fn children(pid: i32) -> Vec<i32> {
    let Ok(tids) = ckpt_sys::procfs::list_numeric(&format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut out: Vec<i32> = tids
        .iter()
        .filter_map(|t| std::fs::read_to_string(format!("/proc/{pid}/task/{t}/children")).ok())
        .flat_map(|s| {
            s.split_whitespace()
                .filter_map(|c| c.parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// The command name of `pid`, or "gone".
fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).map_or_else(|_| "gone".into(), |s| s.trim_end().to_string())
}

/// The live children of the processes in `inside` that are not in it, with their parent.
fn strays(inside: &HashSet<i32>) -> Vec<(i32, i32)> {
    let mut out = Vec::new();
    for &parent in inside {
        for c in children(parent) {
            if !inside.contains(&c) && ckpt_sys::procfs::alive(c) {
                out.push((c, parent));
            }
        }
    }
    out
}

/// How long ago `pid` started.
fn age(pid: i32) -> Option<Duration> {
    let started = ckpt_sys::procfs::start_time(pid)?;
    let up: f64 = std::fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    // SAFETY: sysconf takes an integer and returns one.
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some(Duration::from_secs_f64((up - started as f64 / tick).max(0.0)))
}

/// A value of the auxiliary vector of `pid`.
fn auxv(pid: i32, key: u64) -> Option<u64> {
    let b = std::fs::read(format!("/proc/{pid}/auxv")).ok()?;
    b.chunks_exact(16)
        .map(|c| {
            (
                u64::from_ne_bytes(c[..8].try_into().unwrap_or_default()),
                u64::from_ne_bytes(c[8..].try_into().unwrap_or_default()),
            )
        })
        .find(|&(k, _)| k == key)
        .map(|(_, v)| v)
}

/// Why `pid` runs, and will keep running, without the interposer; None when it has the
/// interposer (registering, or refused by ckptd) or may still load it (its loader has not
/// mapped it yet, or it shares its parent's memory until it execs).
pub fn why_uncontrolled(pid: i32) -> Option<String> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
    if maps.contains("libckpt_interposer") {
        // A forked child registers from its fork handler at once; one that has not after this
        // long never will.
        return age(pid).filter(|&a| a > REGISTER_WAIT).map(|_| {
            "it has the interposer but never registered with ckptd (made by clone() or _Fork, which \
             run no fork handler, or refused by ckptd: see its stderr)"
                .to_string()
        });
    }
    let exe = ckpt_sys::procfs::readlink(&format!("/proc/{pid}/exe")).unwrap_or_default();
    if auxv(pid, libc::AT_SECURE).is_some_and(|v| v != 0) {
        return Some(format!(
            "it runs {exe} set-user-ID or set-group-ID (or with file capabilities), for which the dynamic \
             loader ignores LD_PRELOAD"
        ));
    }
    if auxv(pid, libc::AT_BASE) == Some(0) {
        return Some(format!(
            "it runs {exe}, a statically linked program, which cannot preload the interposer"
        ));
    }
    let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    let vars: Vec<&[u8]> = env.split(|&b| b == 0).collect();
    let preloads = vars
        .iter()
        .any(|v| v.starts_with(b"LD_PRELOAD=") && v.windows(18).any(|w| w == b"libckpt_interposer"));
    if !preloads {
        return Some(format!(
            "it runs {exe} with an environment that has no LD_PRELOAD of the interposer (it was removed)"
        ));
    }
    if !vars.iter().any(|v| v.starts_with(b"CKPT_SOCKET=")) {
        return Some(format!("it runs {exe} with an environment that has no CKPT_SOCKET"));
    }
    // Its loader is still mapping what it preloads.
    None
}

/// Phase 1's closure: the processes to add to `stopped` (whose gates are shut), found among
/// the live children of stopped processes and among `left_out` pids that registered again
/// (they exec'd), each added only once `stop` shut its gate. `stop` says Ok(false) when the
/// process went away meanwhile. Children that will never register are left to the park check.
pub fn close(
    registry: &Registry,
    stopped: &[Arc<Proc>],
    left_out: &[i32],
    mut stop: impl FnMut(&Arc<Proc>) -> anyhow::Result<bool>,
) -> anyhow::Result<Vec<Arc<Proc>>> {
    let mut inside: HashSet<i32> = stopped.iter().map(|p| p.reg.pid).collect();
    let mut added = Vec::new();
    let deadline = Instant::now() + REGISTER_WAIT;
    loop {
        let mut candidates = strays(&inside);
        candidates.extend(
            left_out
                .iter()
                .filter(|&&pid| !inside.contains(&pid) && ckpt_sys::procfs::alive(pid))
                .map(|&pid| (pid, 0)),
        );
        let mut waiting = false;
        let mut grew = false;
        for (pid, parent) in candidates {
            // A pid can be found twice (a stray child that is also a left-out pid back from
            // its exec): stopped once, held once (a second hold would deadlock on its stream).
            if inside.contains(&pid) {
                continue;
            }
            match registry.get(pid) {
                Some(p) if stop(&p)? => {
                    tracing::debug!(pid, parent, "joined the checkpoint after its snapshot");
                    inside.insert(pid);
                    added.push(p);
                    grew = true;
                }
                // Gone meanwhile, or exec'ing: it registers again.
                Some(_) => waiting = true,
                None if why_uncontrolled(pid).is_none() => waiting = true,
                None => {}
            }
        }
        if grew {
            continue;
        }
        if !waiting {
            return Ok(added);
        }
        if Instant::now() > deadline {
            tracing::info!("children still not registered after {REGISTER_WAIT:?}: left to the park");
            return Ok(added);
        }
        std::thread::sleep(LOOK_EVERY);
    }
}

/// With every process of `parked` parked: each live child of one of them must be one of them.
pub fn check_parked(parked: &[i32]) -> Result<(), StrayChild> {
    let inside: HashSet<i32> = parked.iter().copied().collect();
    let deadline = Instant::now() + EXIT_WAIT;
    let found = loop {
        let found = strays(&inside);
        // One that ends becomes a zombie (its parent cannot reap it now): that is fine.
        if found.is_empty() || Instant::now() > deadline {
            break found;
        }
        std::thread::sleep(LOOK_EVERY);
    };
    let Some(&(pid, parent)) = found.first() else {
        return Ok(());
    };
    // One that runs without the interposer first: taking the checkpoint again would not help.
    let uncontrolled = found
        .iter()
        .find_map(|&(pid, parent)| why_uncontrolled(pid).map(|why| (pid, parent, why)));
    Err(match uncontrolled {
        Some((pid, parent, why)) => StrayChild::Uncontrolled {
            pid,
            comm: comm(pid),
            parent,
            parent_comm: comm(parent),
            why,
        },
        None => StrayChild::Late {
            pid,
            comm: comm(pid),
            parent,
            parent_comm: comm(parent),
        },
    })
}
