//! A checkpoint is invisible to the program's blocking calls.
//!
//! Parking a thread means delivering the park signal to it, and a signal that runs a handler
//! makes the kernel end some blocking calls with EINTR whatever `SA_RESTART` says: `poll`,
//! `select`, `epoll_wait`, the sleeps, `sigtimedwait`, `sigsuspend`/`pause`, a futex wait with a
//! timeout, SysV `semop`/`msgrcv`/`msgsnd`… (calls that end with `ERESTARTSYS` — `read`, `accept`,
//! `wait4`, `flock` — are restarted by the kernel, since the park handler has `SA_RESTART`).
//!
//! The park handler notes, per thread, when its own frame is the one returning EINTR from a
//! system call ([`on_park`]). Each wrapper below calls the real function; when it fails with
//! EINTR and the note says the park caused it, the wrapper calls it again with what is left of
//! its timeout, as if the thread had been preempted just before the call. The note is dropped
//! ([`on_release`]) when a signal of the program's, with a handler and not blocked by the
//! interrupted call's mask, is pending as the thread resumes: its handler runs then, and the
//! program must see the EINTR it would have seen without ckpt.
//!
//! Timeouts keep what was left of them. A relative timeout becomes a deadline on the call's
//! clock when the call starts; after a restore (the restorer writes a fresh nonce into the
//! slots) what was left at the park, computed by the handler, starts again from the restore.
//!
//! Wrappers are thin outside a checkpoint: a thread-local store and, for calls with a relative
//! timeout, one clock read (vDSO).

mod calls;

use crate::inflight::InFlight;
use crate::sys::{self, clock_ns};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering::*};

/// Calls in progress in the wrappers, one entry each (see `inflight`).
const CALLS_MAX: usize = 1024;
static CALLS: InFlight<CALLS_MAX> = InFlight::new();
/// Per entry: the park handler interrupted the call's system call (set in [`on_park`]).
static INTERRUPTED: [AtomicBool; CALLS_MAX] = [const { AtomicBool::new(false) }; CALLS_MAX];
/// Per entry: the deadline of the call's relative timeout (clock, ns), 0 if none.
static CLOCK: [AtomicI32; CALLS_MAX] = [const { AtomicI32::new(0) }; CALLS_MAX];
static DEADLINE: [AtomicU64; CALLS_MAX] = [const { AtomicU64::new(0) }; CALLS_MAX];
/// Per entry: what was left of that timeout when the park interrupted the call.
static LEFT_AT_PARK: [AtomicU64; CALLS_MAX] = [const { AtomicU64::new(0) }; CALLS_MAX];

/// Changed by every restore (the restorer pokes a fresh value into the slots); read through
/// [`restore_nonce`].
pub static NONCE_ADDR: AtomicU64 = AtomicU64::new(0);

fn restore_nonce() -> u64 {
    let p = NONCE_ADDR.load(Relaxed) as *const u64;
    if p.is_null() {
        return 0;
    }
    // SAFETY: the address of a u64 inside the static slots, set once at start.
    unsafe { p.read_volatile() }
}

/// In the park handler, before the thread parks: notes whether its frame returns EINTR from a
/// system call (rax holds -EINTR and the instruction before rip is `syscall`) of a call in
/// progress in a wrapper, unless a signal of the program's will run its handler first (then
/// the EINTR is the program's). Runs for a late park signal too (a park given up). The entry
/// noted, for [`on_release`]; the table is looked at only for a thread the park interrupted
/// in a system call (a flag left from an earlier attempt is cleared by the next one's begin).
pub fn on_park(uc: *mut libc::c_void, park_signal: i32) -> Option<usize> {
    let ucp = uc as *const libc::ucontext_t;
    // SAFETY: the kernel's ucontext for this delivery, valid for the handler's duration.
    let (rax, rip) = unsafe {
        let g = &(*ucp).uc_mcontext.gregs;
        (g[libc::REG_RAX as usize], g[libc::REG_RIP as usize] as u64)
    };
    if rax != -(libc::EINTR as i64) || !follows_syscall(rip) || program_signal_due(uc, park_signal) {
        return None;
    }
    let i = CALLS.mine()?;
    let deadline = DEADLINE[i].load(Acquire);
    let left = if deadline == 0 {
        0
    } else {
        deadline.saturating_sub(clock_ns(CLOCK[i].load(Acquire)))
    };
    LEFT_AT_PARK[i].store(left, Release);
    INTERRUPTED[i].store(true, Release);
    Some(i)
}

/// In the park handler, once the thread may run again (`noted`: what [`on_park`] returned): a
/// program's signal that arrived meanwhile and will run its handler as soon as the thread
/// resumes means the call must end with EINTR after all.
pub fn on_release(uc: *mut libc::c_void, park_signal: i32, noted: Option<usize>) {
    let Some(i) = noted else { return };
    if program_signal_due(uc, park_signal) {
        INTERRUPTED[i].store(false, Release);
    }
}

/// Whether a signal of the program's with a handler is pending and not blocked by the mask
/// the thread resumes with (`uc`'s).
fn program_signal_due(uc: *mut libc::c_void, park_signal: i32) -> bool {
    let uc = uc as *const libc::ucontext_t;
    // SAFETY: the first 8 bytes of uc_sigmask are the kernel's mask restored by sigreturn.
    let resumed_mask = unsafe { *(&(*uc).uc_sigmask as *const libc::sigset_t as *const u64) };
    let mut pending = 0u64;
    // SAFETY: every pointer argument points to live memory of the size the call expects.
    unsafe {
        sys::raw6(
            libc::SYS_rt_sigpending,
            [&mut pending as *mut u64 as u64, 8, 0, 0, 0, 0],
        )
    };
    let mut deliverable = pending & !resumed_mask;
    if park_signal > 0 {
        deliverable &= !(1u64 << (park_signal - 1));
    }
    while deliverable != 0 {
        let sig = deliverable.trailing_zeros() as u64 + 1;
        deliverable &= deliverable - 1;
        let mut act = [0u64; 4];
        // SAFETY: integer arguments only.
        let r = unsafe { sys::raw6(libc::SYS_rt_sigaction, [sig, 0, act.as_mut_ptr() as u64, 8, 0, 0]) };
        // Not SIG_DFL (0) nor SIG_IGN (1): a handler of the program's will run.
        if r == 0 && act[0] > 1 {
            return true;
        }
    }
    false
}

/// Whether the two bytes before `rip` are the `syscall` instruction, read without faulting:
/// on rip's own page (mapped and executable, so readable) directly, else with
/// process_vm_readv.
fn follows_syscall(rip: u64) -> bool {
    if rip & 0xfff >= 2 {
        // SAFETY: rip-2 lies on the page holding rip, the code the thread resumes into.
        let code = unsafe { std::ptr::read_volatile((rip - 2) as *const [u8; 2]) };
        return code == [0x0f, 0x05];
    }
    let mut code = [0u8; 2];
    let local = libc::iovec {
        iov_base: code.as_mut_ptr().cast(),
        iov_len: 2,
    };
    let remote = libc::iovec {
        iov_base: rip.wrapping_sub(2) as *mut libc::c_void,
        iov_len: 2,
    };
    // SAFETY: every pointer argument points to live memory of the size the call expects.
    let n = unsafe {
        sys::raw6(
            libc::SYS_process_vm_readv,
            [
                sys::getpid() as u64,
                &local as *const libc::iovec as u64,
                1,
                &remote as *const libc::iovec as u64,
                1,
                0,
            ],
        )
    };
    n == 2 && code == [0x0f, 0x05]
}

/// One call of the program's that may be interrupted by a park, and its timeout. It holds an
/// entry of the table for its duration (none when the table is full: then it is not tried
/// again).
pub(crate) struct Call {
    entry: Option<usize>,
    clock: i32,
    /// Deadline on `clock`, when the call has a relative timeout.
    deadline: Option<u64>,
    nonce: u64,
    /// errno as the call found it: a call tried again must not leave its EINTR behind.
    errno: i32,
}

impl Call {
    /// A call without timeout, or with an absolute one (tried again as it is).
    pub fn plain() -> Call {
        Call {
            entry: CALLS.claim_latest(),
            clock: libc::CLOCK_MONOTONIC,
            deadline: None,
            nonce: 0,
            errno: sys::errno(),
        }
    }

    /// A call with a relative timeout of `ns` on `clock` (None: no timeout).
    pub fn timed(clock: i32, ns: Option<u64>) -> Call {
        let mut c = Call::plain();
        if let Some(ns) = ns {
            c.clock = clock;
            c.deadline = Some(clock_ns(clock).saturating_add(ns).max(1));
            c.nonce = restore_nonce();
        }
        c
    }

    /// Before each attempt.
    pub fn begin(&self) {
        if let Some(i) = self.entry {
            INTERRUPTED[i].store(false, Release);
            CLOCK[i].store(self.clock, Release);
            DEADLINE[i].store(self.deadline.unwrap_or(0), Release);
        }
    }

    /// After an attempt that failed with `err`: whether to call again, the park having caused
    /// it. errno is then as the caller found it; otherwise as the attempt set it.
    pub fn again(&mut self, err: i32) -> bool {
        let Some(i) = self.entry else { return false };
        let ours = err == libc::EINTR && INTERRUPTED[i].swap(false, AcqRel);
        if !ours {
            return false;
        }
        if self.deadline.is_some() {
            let now_nonce = restore_nonce();
            if now_nonce != self.nonce {
                // Restored since the call began: what was left at the park starts again now.
                let left = LEFT_AT_PARK[i].load(Acquire);
                self.deadline = Some(clock_ns(self.clock).saturating_add(left).max(1));
                self.nonce = now_nonce;
            }
        }
        sys::set_errno(self.errno);
        true
    }

    /// What is left of the timeout, in ns (0 once past the deadline); None without one.
    pub fn left_ns(&self) -> Option<u64> {
        self.deadline.map(|d| d.saturating_sub(clock_ns(self.clock)))
    }

    /// What is left, as a timespec.
    pub fn left_ts(&self) -> Option<libc::timespec> {
        self.left_ns().map(ts_of)
    }

    /// What is left, in whole milliseconds rounded up (for poll and epoll_wait).
    pub fn left_ms(&self) -> Option<i32> {
        self.left_ns()
            .map(|ns| ns.div_ceil(1_000_000).min(i32::MAX as u64) as i32)
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        if let Some(i) = self.entry {
            CALLS.release(i);
        }
    }
}

pub(crate) fn ts_of(ns: u64) -> libc::timespec {
    libc::timespec {
        tv_sec: (ns / 1_000_000_000) as i64,
        tv_nsec: (ns % 1_000_000_000) as i64,
    }
}

/// A timespec as ns; None when invalid (negative), to let the kernel report EINVAL.
pub(crate) fn ns_of(ts: *const libc::timespec) -> Option<u64> {
    // SAFETY: the caller's timespec, read only when non-null as the real call would.
    let ts = unsafe { ts.as_ref()? };
    if ts.tv_sec < 0 || !(0..1_000_000_000).contains(&ts.tv_nsec) {
        return None;
    }
    Some(
        (ts.tv_sec as u64)
            .saturating_mul(1_000_000_000)
            .saturating_add(ts.tv_nsec as u64),
    )
}

pub(crate) use calls::futex_syscall;
