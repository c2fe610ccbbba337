//! Calls whose effect the kernel keeps but shows nowhere, noted for ckptd: the flags of the
//! last `mlockall` (which future mappings are locked) and the `membarrier` registrations made
//! through `syscall()`. Neither is inherited by a forked child (its memory is new to the
//! kernel), so a child forgets them. The program's calls go through unchanged, errno included.

use crate::checkpoint::SLOTS;
use crate::sys;
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicUsize, Ordering::Relaxed};

fn mlockall_word() -> &'static AtomicI32 {
    // SAFETY: an aligned i32 inside the static slots, only ever accessed atomically.
    unsafe { AtomicI32::from_ptr(SLOTS.mlockall_addr() as *mut i32) }
}

fn membarrier_word() -> &'static AtomicU32 {
    // SAFETY: an aligned u32 inside the static slots, only ever accessed atomically.
    unsafe { AtomicU32::from_ptr(SLOTS.membarrier_addr() as *mut u32) }
}

/// In a forked child: the kernel gave its memory no locks and no registrations.
pub fn reset_in_child() {
    mlockall_word().store(0, Relaxed);
    membarrier_word().store(0, Relaxed);
}

#[no_mangle]
pub unsafe extern "C" fn mlockall(flags: libc::c_int) -> libc::c_int {
    static REAL: AtomicUsize = AtomicUsize::new(0);
    let Some(f) = sys::libc_symbol_or_enosys(&REAL, c"mlockall") else {
        return -1;
    };
    // SAFETY: libc's mlockall has this signature.
    let f: unsafe extern "C" fn(libc::c_int) -> libc::c_int = unsafe { std::mem::transmute(f) };
    // SAFETY: the program's own call.
    let r = unsafe { f(flags) };
    if r == 0 {
        // Each call replaces which future mappings are locked (none without MCL_FUTURE).
        let future = if flags & libc::MCL_FUTURE != 0 {
            flags & (libc::MCL_FUTURE | libc::MCL_ONFAULT)
        } else {
            0
        };
        mlockall_word().store(future, Relaxed);
    }
    r
}

#[no_mangle]
pub unsafe extern "C" fn munlockall() -> libc::c_int {
    static REAL: AtomicUsize = AtomicUsize::new(0);
    let Some(f) = sys::libc_symbol_or_enosys(&REAL, c"munlockall") else {
        return -1;
    };
    // SAFETY: libc's munlockall has this signature.
    let f: unsafe extern "C" fn() -> libc::c_int = unsafe { std::mem::transmute(f) };
    // SAFETY: the program's own call.
    let r = unsafe { f() };
    if r == 0 {
        mlockall_word().store(0, Relaxed);
    }
    r
}

/// After the program's `membarrier(cmd, …)` returned `ret`: a registration that took is noted.
pub fn membarrier_done(cmd: libc::c_long, ret: libc::c_long) {
    // The MEMBARRIER_CMD_REGISTER_* commands (1 << 4, 6, 8, 9 today), up to bit 31.
    const REGISTER: libc::c_long = 1 << 4 | 1 << 6 | 1 << 8 | 1 << 9;
    if ret == 0 && cmd & REGISTER != 0 && cmd.count_ones() == 1 {
        membarrier_word().fetch_or(cmd as u32, Relaxed);
    }
}
