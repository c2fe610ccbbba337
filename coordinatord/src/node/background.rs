//! Work a checkpoint does while its programs run (pre-copy, storing pages) must not take the
//! CPU from them: on a machine with few cores, a program that wakes every few hundred
//! microseconds would otherwise wait a scheduler slice behind ckptd's copy. It runs on its own
//! thread at the lowest priority, which a waking program preempts at once but which still
//! progresses when the program keeps every core busy.

/// Runs `f` on a fresh thread at nice 19 (threads it starts inherit that) and returns its
/// result.
pub fn run<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|sc| {
        let h = sc.spawn(|| {
            // SAFETY: setpriority on this thread only (who = 0 is the calling thread).
            unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) };
            f()
        });
        match h.join() {
            Ok(v) => v,
            Err(p) => std::panic::resume_unwind(p),
        }
    })
}
