//! The process manager's registry: every program under checkpoint control on this host.

use ckpt_proto::Registration;
use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

pub struct Proc {
    pub reg: Registration,
    /// The control connection; held for the duration of one exchange.
    pub stream: Mutex<UnixStream>,
    pub restored_from: Option<String>,
    /// The pipes or sockets (inodes) that were its stdin, stdout, stderr when it came under
    /// control (see `dump::stdio`).
    pub stdio: [Option<u64>; 3],
    /// The committed checkpoint this process's dirty-page tracking is relative to: the base of
    /// its next incremental checkpoint.
    pub track_base: Mutex<Option<String>>,
}

#[derive(Default)]
pub struct Registry {
    procs: Mutex<BTreeMap<i32, Arc<Proc>>>,
}

impl Registry {
    pub fn insert(
        &self,
        reg: Registration,
        stream: UnixStream,
        restored_from: Option<String>,
        stdio: [Option<u64>; 3],
    ) -> Arc<Proc> {
        let p = Arc::new(Proc {
            reg,
            stream: Mutex::new(stream),
            restored_from,
            stdio,
            track_base: Mutex::new(None),
        });
        self.lock().insert(p.reg.pid, p.clone());
        p
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<i32, Arc<Proc>>> {
        self.procs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Live processes; entries whose program exited or hung up are dropped first.
    pub fn alive(&self) -> Vec<Arc<Proc>> {
        let mut map = self.lock();
        map.retain(|_, p| p.is_alive());
        map.values().cloned().collect()
    }

    /// The live registration of `pid`, if any.
    pub fn get(&self, pid: i32) -> Option<Arc<Proc>> {
        self.lock().get(&pid).filter(|p| p.is_alive()).cloned()
    }

    pub fn remove(&self, pid: i32) {
        self.lock().remove(&pid);
    }
}

impl Proc {
    fn is_alive(&self) -> bool {
        if !ckpt_sys::procfs::alive(self.reg.pid) {
            return false;
        }
        // A busy stream (a checkpoint in progress) is alive by definition.
        let Ok(s) = self.stream.try_lock() else { return true };
        !hung_up(&s)
    }
}

/// Whether the program's end of its connection is closed (it exited, or exec'd: the program
/// it became registers anew).
pub fn hung_up(s: &UnixStream) -> bool {
    let mut pfd = libc::pollfd {
        fd: s.as_raw_fd(),
        events: libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: pfd is a valid pollfd; zero timeout.
    let r = unsafe { libc::poll(&mut pfd, 1, 0) };
    r > 0 && pfd.revents & (libc::POLLHUP | libc::POLLRDHUP | libc::POLLERR) != 0
}
