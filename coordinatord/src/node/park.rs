//! Waiting for a program's answer to `Park`, and helping it meanwhile: a thread that blocks the
//! park signal itself never parks on its own (see `crate::unblock`).

use super::Node;
use crate::registry::Proc;
use ckpt_proto::slots::ProcSlot;
use ckpt_proto::{AppMsg, FrameError};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

/// How long a program may take to park before ckptd looks for threads that block the signal,
/// and how often it looks again. Only a thread found asleep with the signal blocked and pending
/// at two looks in a row is helped: glibc blocks every signal for a moment in threads being
/// created or exiting (a detached thread's stack is handed back before it exits: running a
/// handler there would corrupt another thread's stack), and those finish by themselves.
const FIRST_LOOK: Duration = Duration::from_millis(50);
const LOOK_EVERY: Duration = Duration::from_millis(100);

/// The program's answer to `Park` (sent already on `s`), within `timeout`.
pub fn answer(node: &Node, p: &Proc, s: &UnixStream, timeout: Duration) -> Result<AppMsg, FrameError> {
    let pid = p.reg.pid;
    let start = Instant::now();
    let mut wait = FIRST_LOOK;
    let mut helped: Vec<i32> = Vec::new();
    let mut seen: Vec<i32> = Vec::new();
    loop {
        if readable(s, wait) {
            return ckpt_proto::recv::<AppMsg>(s).map(|(m, _)| m);
        }
        if start.elapsed() > timeout {
            return Err(FrameError::Io(std::io::ErrorKind::TimedOut.into()));
        }
        wait = LOOK_EVERY;
        let sig = park_signal(p);
        let now = crate::unblock::stuck_threads(pid, sig);
        let stuck: Vec<i32> = now
            .iter()
            .copied()
            .filter(|t| seen.contains(t) && !helped.contains(t))
            .collect();
        seen = now;
        if stuck.is_empty() {
            continue;
        }
        tracing::info!(pid, ?stuck, "threads block the park signal: unblocking it from outside");
        if let Err(e) = crate::unblock::unblock(&node.reaper, pid, sig, p.reg.slot_addr, &stuck) {
            // The program's own park times out and says which thread did not stop.
            tracing::warn!(pid, "{e:#}");
        }
        helped.extend(stuck);
    }
}

/// The program's park signal: as registered, or (a restored program registers without it)
/// as its interposer recorded it in the slots.
fn park_signal(p: &Proc) -> i32 {
    if p.reg.park_signal > 0 {
        return p.reg.park_signal;
    }
    let at = p.reg.slot_addr + std::mem::offset_of!(ProcSlot, park_signal) as u64;
    let mut b = [0u8; 4];
    match std::fs::File::open(format!("/proc/{}/mem", p.reg.pid)).and_then(|m| m.read_exact_at(&mut b, at)) {
        Ok(()) if i32::from_ne_bytes(b) > 0 => i32::from_ne_bytes(b),
        _ => libc::SIGRTMAX() - 1,
    }
}

fn readable(s: &UnixStream, wait: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd: s.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: pfd is a valid pollfd.
    let r = unsafe { libc::poll(&mut pfd, 1, wait.as_millis() as i32) };
    r > 0
}
