//! Keeps the park signal working whatever the program does with signals: it cannot block it nor
//! replace its handler (its calls succeed and it sees its own view), everything else passes
//! through untouched, errno included.

use crate::checkpoint::{on_park_signal, PARK_SIGNAL};
use std::sync::atomic::{AtomicUsize, Ordering::*};

type SigactionFn = unsafe extern "C" fn(libc::c_int, *const libc::sigaction, *mut libc::sigaction) -> libc::c_int;
type SigmaskFn = unsafe extern "C" fn(libc::c_int, *const libc::sigset_t, *mut libc::sigset_t) -> libc::c_int;

static REAL_SIGACTION: AtomicUsize = AtomicUsize::new(0);
static REAL_SIGPROCMASK: AtomicUsize = AtomicUsize::new(0);
static REAL_PTHREAD_SIGMASK: AtomicUsize = AtomicUsize::new(0);

/// Resolves the real functions up front, so the wrappers never call dlsym in a signal handler.
pub fn resolve() {
    crate::sys::libc_symbol(&REAL_SIGACTION, c"sigaction");
    crate::sys::libc_symbol(&REAL_SIGPROCMASK, c"sigprocmask");
    crate::sys::libc_symbol(&REAL_PTHREAD_SIGMASK, c"pthread_sigmask");
}

pub fn install_park_handler(sig: i32) -> bool {
    let real = crate::sys::libc_symbol(&REAL_SIGACTION, c"sigaction");
    if real == 0 {
        return false;
    }
    // SAFETY: `real` is libc's sigaction; the struct is fully initialised.
    unsafe {
        let f: SigactionFn = std::mem::transmute(real);
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_park_signal as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
        libc::sigfillset(&mut sa.sa_mask);
        f(sig, &sa, std::ptr::null_mut()) == 0
    }
}

fn park_signal() -> i32 {
    PARK_SIGNAL.load(Relaxed)
}

#[no_mangle]
pub unsafe extern "C" fn sigaction(
    sig: libc::c_int,
    act: *const libc::sigaction,
    old: *mut libc::sigaction,
) -> libc::c_int {
    let ps = park_signal();
    if ps != 0 && sig == ps {
        // The program keeps its view (default disposition); the park handler stays.
        if !old.is_null() {
            // SAFETY: the caller passed a writable sigaction.
            unsafe { *old = std::mem::zeroed() };
        }
        return 0;
    }
    let real = crate::sys::libc_symbol(&REAL_SIGACTION, c"sigaction");
    if real == 0 {
        crate::sys::set_errno(libc::ENOSYS);
        return -1;
    }
    // SAFETY: forwarding the caller's arguments unchanged to libc's sigaction.
    unsafe {
        let f: SigactionFn = std::mem::transmute(real);
        f(sig, act, old)
    }
}

/// Forwards a mask change with the park signal taken out of any set that blocks.
unsafe fn filtered(
    cell: &AtomicUsize,
    name: &std::ffi::CStr,
    how: libc::c_int,
    set: *const libc::sigset_t,
    old: *mut libc::sigset_t,
) -> libc::c_int {
    let real = crate::sys::libc_symbol(cell, name);
    if real == 0 {
        // Only reachable if libc lacks the symbol; sigprocmask turns this into errno.
        return libc::ENOSYS;
    }
    // SAFETY: `real` is the libc function of the same signature.
    let f: SigmaskFn = unsafe { std::mem::transmute(real) };
    let ps = park_signal();
    // SAFETY: `set`, when non-null, points to a valid sigset_t supplied by the caller.
    if ps != 0 && !set.is_null() && how != libc::SIG_UNBLOCK && unsafe { libc::sigismember(set, ps) } == 1 {
        // SAFETY: copying the caller's set into a local we may edit.
        let mut copy = unsafe { *set };
        // SAFETY: copy is a valid sigset_t.
        unsafe { libc::sigdelset(&mut copy, ps) };
        // SAFETY: forwarding with our local set.
        return unsafe { f(how, &copy, old) };
    }
    // SAFETY: forwarding the caller's arguments unchanged.
    unsafe { f(how, set, old) }
}

#[no_mangle]
pub unsafe extern "C" fn sigprocmask(
    how: libc::c_int,
    set: *const libc::sigset_t,
    old: *mut libc::sigset_t,
) -> libc::c_int {
    // SAFETY: same contract as sigprocmask(2).
    match unsafe { filtered(&REAL_SIGPROCMASK, c"sigprocmask", how, set, old) } {
        libc::ENOSYS => {
            crate::sys::set_errno(libc::ENOSYS);
            -1
        }
        r => r,
    }
}

#[no_mangle]
pub unsafe extern "C" fn pthread_sigmask(
    how: libc::c_int,
    set: *const libc::sigset_t,
    old: *mut libc::sigset_t,
) -> libc::c_int {
    // SAFETY: same contract as pthread_sigmask(3).
    unsafe { filtered(&REAL_PTHREAD_SIGMASK, c"pthread_sigmask", how, set, old) }
}
