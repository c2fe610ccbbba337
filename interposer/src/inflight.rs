//! Calls of the program's in progress, each found by the thread making it, without
//! thread-locals.
//!
//! The wrappers run inside calls a program may make from its own signal handlers (`write`,
//! `poll`, `sleep` are async-signal-safe), and the park handler looks up the call it
//! interrupted: neither may allocate. A Rust thread-local in a preloaded library is reached
//! through `__tls_get_addr`, which allocates the first time a thread touches it after the
//! program loaded a library with thread-locals of its own. So a call claims an entry in a fixed
//! table, keyed by the calling thread's `pthread_self()` (a register read), for its duration.

use std::sync::atomic::{AtomicU64, Ordering::*};

/// Numbers claims, so that a thread's latest call (a call made by a signal handler that
/// interrupted another call of the same thread) is told from the one it interrupted.
static CLAIMS: AtomicU64 = AtomicU64::new(1);

/// The calling thread's key.
pub fn me() -> u64 {
    // SAFETY: pthread_self reads the thread pointer; it cannot fail.
    unsafe { libc::pthread_self() as u64 }
}

/// A table of `N` entries for calls in progress.
pub struct InFlight<const N: usize> {
    /// The thread whose call holds the entry, 0 when free.
    owner: [AtomicU64; N],
    /// When the call claimed it (see [`CLAIMS`]).
    claim: [AtomicU64; N],
}

impl<const N: usize> InFlight<N> {
    pub const fn new() -> Self {
        Self {
            owner: [const { AtomicU64::new(0) }; N],
            claim: [const { AtomicU64::new(0) }; N],
        }
    }

    /// An entry for a call of this thread; None when every entry is taken.
    pub fn claim(&self) -> Option<usize> {
        let key = me();
        let start = (key >> 12) as usize % N;
        (0..N)
            .map(|k| (start + k) % N)
            .find(|&i| self.owner[i].compare_exchange(0, key, AcqRel, Relaxed).is_ok())
    }

    /// Like [`InFlight::claim`], for a table whose [`InFlight::mine`] must find this call
    /// rather than one it interrupted (a shared counter is bumped: not for the busiest calls).
    pub fn claim_latest(&self) -> Option<usize> {
        let i = self.claim()?;
        self.claim[i].store(CLAIMS.fetch_add(1, Relaxed), Release);
        Some(i)
    }

    pub fn release(&self, i: usize) {
        self.owner[i].store(0, Release);
    }

    /// This thread's latest call in progress.
    pub fn mine(&self) -> Option<usize> {
        let key = me();
        (0..N)
            .filter(|&i| self.owner[i].load(Acquire) == key)
            .max_by_key(|&i| self.claim[i].load(Acquire))
    }

    /// Frees every entry (a forked child: the threads that held them are not in it).
    pub fn reset(&self) {
        for o in &self.owner {
            o.store(0, Release);
        }
    }

    /// Every entry held now.
    pub fn held(&self) -> impl Iterator<Item = usize> + '_ {
        (0..N).filter(|&i| self.owner[i].load(Acquire) != 0)
    }
}
