//! `syscall()`: programs that make system calls by number still get what the named wrappers give
//! them — a futex wait a park interrupted is made again, the interposer's own descriptors
//! are kept, AIO calls are noted (see `aio`) — and every other call goes to libc's `syscall`
//! untouched.

use crate::{fds, restart, sys};
use libc::c_long;
use std::sync::atomic::AtomicUsize;

type SyscallFn = unsafe extern "C" fn(c_long, ...) -> c_long;

fn real(nr: c_long, a: &[c_long; 6]) -> c_long {
    static REAL: AtomicUsize = AtomicUsize::new(0);
    match sys::libc_symbol(&REAL, c"syscall") {
        // SAFETY: the program's own system call, as it asked for it.
        0 => unsafe { sys::sys6(nr, a.map(|v| v as u64)) },
        f => {
            // SAFETY: libc's syscall has this (variadic) signature.
            let f: SyscallFn = unsafe { std::mem::transmute(f) };
            // SAFETY: the caller's arguments, passed through as libc's syscall takes them.
            unsafe { f(nr, a[0], a[1], a[2], a[3], a[4], a[5]) }
        }
    }
}

/// Declared with six fixed arguments: on x86-64 a variadic caller passes the first six integer
/// arguments in the same registers, and those it did not pass are never looked at by the kernel.
#[no_mangle]
pub unsafe extern "C" fn syscall(
    nr: c_long,
    a0: c_long,
    a1: c_long,
    a2: c_long,
    a3: c_long,
    a4: c_long,
    a5: c_long,
) -> c_long {
    let a = [a0, a1, a2, a3, a4, a5];
    if nr == libc::SYS_futex {
        return restart::futex_syscall(a, |args| real(nr, args));
    }
    if let Some(r) = fds::raw_call(nr, &a, &|args| real(nr, args)) {
        return r;
    }
    if let Some(r) = crate::aio::raw_call(nr, &a) {
        return r;
    }
    let r = real(nr, &a);
    if nr == libc::SYS_membarrier {
        crate::attrs::membarrier_done(a0, r);
    }
    r
}
