//! The node (process manager): this host's registry of programs, its part of each checkpoint
//! and restore, and the child processes it restored.

mod attach;
mod background;
pub(crate) mod children;
mod descriptions;
mod handle;
mod netrestore;
mod objects;
mod orphans;
mod park;
mod phases;
mod pipes;
mod prepare;
mod pty;
mod restore;
mod shared_memory;
mod shared_seen;
mod store;
mod sysv;
mod tree;

use crate::registry::Registry;
pub use attach::attach;
use ckpt_format::Store;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

pub struct Node {
    pub host: String,
    pub store: Store,
    pub registry: Registry,
    /// The restorer binary, shipped next to ckptd.
    pub restorer: PathBuf,
    pub reaper: Reaper,
    /// Page stores are zstd-compressed.
    pub compress: bool,
    /// Long stretches written just before a stop are stored while the program runs (see
    /// `dump::window`) rather than copied while it waits.
    pub store_window: bool,
    /// A testing hook: how long to wait before reading store windows.
    pub window_delay: std::time::Duration,
    /// How long the pre-copy of a checkpoint may take, over all of the host's programs.
    pub precopy_budget: std::time::Duration,
    /// The checkpoint between phase 1 and its end, on this node.
    pub pending: Mutex<Option<phases::Pending>>,
    /// The restore between its prepare and connect steps.
    pub pending_restore: Mutex<Option<restore::PendingRestore>>,
    /// Processes restored by the last restore, to take back if it is aborted elsewhere, and
    /// the topmost of them (ckptd's own children, which an attached ckptctl follows).
    pub last_restored: Mutex<(String, Vec<i32>, Vec<i32>)>,
    /// stdio handed over by a local `ckptctl restore`, for the processes restored here.
    pub restore_stdio: Mutex<Vec<std::os::fd::OwnedFd>>,
    /// The file contract: default overrides and the watch of who writes to files.
    pub files: crate::files::Files,
    /// What the last committed checkpoint saw of this host's shared memory (see
    /// `dump::shared_dirty`); None when the next one must read it all.
    pub shared_seen: Mutex<Option<crate::dump::shared_dirty::Seen>>,
    /// Progress of the checkpoint or restore under way, for the `ckptctl` that asked.
    pub meter: crate::progress::Meter,
    /// Lazy restores loading pages on this host.
    pub lazy: crate::lazy::Loads,
}

impl Node {
    pub fn new(host: String, store: Store, restorer: PathBuf, compress: bool) -> Self {
        Self {
            host,
            store,
            registry: Default::default(),
            restorer,
            reaper: Default::default(),
            compress,
            store_window: true,
            window_delay: Default::default(),
            precopy_budget: std::time::Duration::from_millis(750),
            pending: Default::default(),
            pending_restore: Default::default(),
            last_restored: Default::default(),
            restore_stdio: Default::default(),
            files: crate::files::Files::new(Vec::new()),
            shared_seen: Default::default(),
            meter: Default::default(),
            lazy: Default::default(),
        }
    }
}

/// Collects the exit status of every child (restored programs are children of ckptd).
#[derive(Default)]
pub struct Reaper {
    exited: Mutex<HashMap<i32, i32>>,
    cv: Condvar,
    /// Set by [`Reaper::child_started`]: wakes a reaper that found no child to wait for.
    started: Mutex<bool>,
    wake: Condvar,
}

impl Reaper {
    /// Reaps children forever; run on a thread of its own.
    pub fn run(&self) {
        loop {
            let mut status = 0;
            // SAFETY: status is a valid out-pointer.
            let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
            if pid > 0 {
                tracing::info!(pid, status = %describe_status(status), "child exited");
                let mut m = self.exited.lock().unwrap_or_else(|e| e.into_inner());
                if m.len() > 4096 {
                    m.clear();
                }
                m.insert(pid, status);
                self.cv.notify_all();
            } else {
                // No child yet: wait for one, without missing one started meanwhile.
                let g = self.started.lock().unwrap_or_else(|e| e.into_inner());
                let (mut g, _) = self
                    .wake
                    .wait_timeout_while(g, Duration::from_millis(100), |started| !*started)
                    .unwrap_or_else(|e| e.into_inner());
                *g = false;
            }
        }
    }

    /// Says a child was just started, whose exit is awaited at once (a helper in a stop): the
    /// reaper waits for it now rather than at its next look.
    pub fn child_started(&self) {
        *self.started.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.wake.notify_one();
    }

    /// Waits up to `timeout` for `pid` to have exited; its status if it did.
    pub fn wait_exit(&self, pid: i32, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        let mut m = self.exited.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(s) = m.remove(&pid) {
                return Some(s);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            m = self
                .cv
                .wait_timeout(m, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Waits up to `timeout` for one of `pids` to have exited; that pid and its status.
    pub fn wait_any(&self, pids: &[i32], timeout: Duration) -> Option<(i32, i32)> {
        let deadline = Instant::now() + timeout;
        let mut m = self.exited.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some((pid, s)) = pids.iter().find_map(|p| m.remove(p).map(|s| (*p, s))) {
                return Some((pid, s));
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            m = self
                .cv
                .wait_timeout(m, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    pub fn forget(&self, pid: i32) {
        self.exited.lock().unwrap_or_else(|e| e.into_inner()).remove(&pid);
    }
}

pub fn describe_status(status: i32) -> String {
    if libc::WIFEXITED(status) {
        format!("exit code {}", libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        // SAFETY: strsignal returns a pointer to a static or thread-local string.
        let name = unsafe { std::ffi::CStr::from_ptr(libc::strsignal(sig)) }
            .to_string_lossy()
            .into_owned();
        format!("killed by signal {sig} ({name})")
    } else {
        format!("status {status:#x}")
    }
}
