//! Work a checkpoint does while its programs run (pre-copy, storing pages) must not take the
//! CPU from them: on a machine with few cores, a program that wakes every few hundred
//! microseconds would otherwise wait a scheduler slice behind ckptd's copy. It runs on its own
//! thread at the lowest priority, which a waking program preempts at once but which still
//! progresses when the program keeps every core busy.

use std::sync::{mpsc, Mutex};
use std::time::Instant;

/// The lowest priority, and the ordinary one.
const LOW: i32 = 19;
const NORMAL: i32 = 0;

/// Runs `f` on a fresh thread at nice 19 (threads it starts inherit that) and returns its
/// result. What is still running at `deadline` is work someone waits for (the cut, which a
/// user asked for at that moment; the end of the checkpoint): the thread gets back the
/// ordinary priority then. Raising a priority takes `CAP_SYS_NICE` (or a high enough
/// `RLIMIT_NICE`); without it, the thread stays as it is.
pub fn run_until<T: Send>(deadline: Instant, f: impl FnOnce() -> T + Send) -> T {
    // The thread's id, and whether it was raised already (then it must not lower itself).
    let state: Mutex<(i32, bool)> = Mutex::new((0, false));
    let (done, finished) = mpsc::channel::<()>();
    std::thread::scope(|sc| {
        let h = sc.spawn(|| {
            {
                let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
                // SAFETY: gettid has no arguments and cannot fail.
                s.0 = unsafe { libc::gettid() };
                if !s.1 {
                    set_nice(0, LOW);
                }
            }
            let v = f();
            drop(done);
            v
        });
        let left = deadline.saturating_duration_since(Instant::now());
        if let Err(mpsc::RecvTimeoutError::Timeout) = finished.recv_timeout(left) {
            let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
            s.1 = true;
            if s.0 != 0 && !set_nice(s.0, NORMAL) {
                tracing::debug!("cannot raise a background copy's priority (no CAP_SYS_NICE): it stays at nice {LOW}");
            }
        }
        match h.join() {
            Ok(v) => v,
            Err(p) => std::panic::resume_unwind(p),
        }
    })
}

/// Sets the nice value of thread `tid` (0: the calling one); false if not allowed.
fn set_nice(tid: i32, nice: i32) -> bool {
    // SAFETY: setpriority on one thread (PRIO_PROCESS with a thread id names that thread).
    unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice) == 0 }
}
