//! The communication gate. While the comm-stop flag is set (phase 1 of a checkpoint), calls of
//! the send family wait before entering the kernel; receives, reads and everything else go on.
//! A call already in the kernel is counted in flight and finishes first: the control thread
//! acknowledges phase 1 only once none is.
//!
//! Outside a checkpoint a wrapper costs one atomic increment, one load and one decrement.

use crate::sys::{self, futex_wait, futex_wake};
use std::cell::Cell;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering::*};

static STOP: AtomicU32 = AtomicU32::new(0);
static IN_FLIGHT: AtomicU32 = AtomicU32::new(0);

thread_local! {
    /// Set on the control thread, which must talk to ckptd while the gate is shut.
    static BYPASS: Cell<bool> = const { Cell::new(false) };
}

pub fn bypass_this_thread() {
    BYPASS.with(|b| b.set(true));
}

/// Before a send-family call.
fn enter() {
    loop {
        IN_FLIGHT.fetch_add(1, SeqCst);
        let stop = STOP.load(SeqCst);
        if stop == 0 || BYPASS.with(|b| b.get()) {
            return;
        }
        let saved = sys::errno();
        if IN_FLIGHT.fetch_sub(1, SeqCst) == 1 {
            futex_wake(&IN_FLIGHT, i32::MAX);
        }
        futex_wait(&STOP, stop, 0);
        sys::set_errno(saved);
    }
}

/// After a send-family call; errno is the call's.
fn leave() {
    if IN_FLIGHT.fetch_sub(1, SeqCst) == 1 && STOP.load(SeqCst) != 0 {
        let saved = sys::errno();
        futex_wake(&IN_FLIGHT, i32::MAX);
        sys::set_errno(saved);
    }
}

/// Shuts the gate and waits until no send-family call is in the kernel. False on timeout (a
/// send blocked on a peer that does not read): the gate is then opened again.
pub fn shut(timeout_ms: u32) -> bool {
    STOP.store(1, SeqCst);
    let deadline = sys::now_ns() + timeout_ms as u64 * 1_000_000;
    loop {
        // The calling (control) thread is not counted: it bypasses.
        let n = IN_FLIGHT.load(SeqCst);
        if n == 0 {
            return true;
        }
        if sys::now_ns() > deadline {
            open();
            return false;
        }
        futex_wait(&IN_FLIGHT, n, 1_000_000);
    }
}

pub fn open() {
    STOP.store(0, SeqCst);
    futex_wake(&STOP, i32::MAX);
}

/// Resolves libc's function `name` once.
fn real(cell: &AtomicUsize, name: &std::ffi::CStr) -> usize {
    let v = cell.load(Relaxed);
    if v != 0 {
        return v;
    }
    // SAFETY: dlsym with a NUL-terminated name.
    let p = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr()) } as usize;
    cell.store(p, Relaxed);
    p
}

/// Defines an exported wrapper that passes through the gate to libc's function.
macro_rules! gated {
    ($name:ident, $cname:literal, ($($arg:ident: $ty:ty),*) -> $ret:ty) => {
        #[no_mangle]
        pub unsafe extern "C" fn $name($($arg: $ty),*) -> $ret {
            static REAL: AtomicUsize = AtomicUsize::new(0);
            let f = real(&REAL, $cname);
            if f == 0 {
                sys::set_errno(libc::ENOSYS);
                return -1 as $ret;
            }
            enter();
            // SAFETY: `f` is libc's function of this exact signature; arguments are passed
            // through unchanged.
            let r = unsafe {
                let f: unsafe extern "C" fn($($ty),*) -> $ret = std::mem::transmute(f);
                f($($arg),*)
            };
            leave();
            r
        }
    };
}

use libc::{
    c_int, c_uint, c_void, iovec, loff_t, mmsghdr, msghdr, off64_t, off_t, size_t, sockaddr, socklen_t, ssize_t,
};

gated!(send, c"send", (fd: c_int, buf: *const c_void, n: size_t, flags: c_int) -> ssize_t);
gated!(sendto, c"sendto", (fd: c_int, buf: *const c_void, n: size_t, flags: c_int, to: *const sockaddr, tolen: socklen_t) -> ssize_t);
gated!(sendmsg, c"sendmsg", (fd: c_int, msg: *const msghdr, flags: c_int) -> ssize_t);
gated!(sendmmsg, c"sendmmsg", (fd: c_int, vec: *mut mmsghdr, vlen: c_uint, flags: c_int) -> c_int);
gated!(write, c"write", (fd: c_int, buf: *const c_void, n: size_t) -> ssize_t);
gated!(writev, c"writev", (fd: c_int, iov: *const iovec, cnt: c_int) -> ssize_t);
gated!(pwrite, c"pwrite", (fd: c_int, buf: *const c_void, n: size_t, off: off_t) -> ssize_t);
gated!(pwrite64, c"pwrite64", (fd: c_int, buf: *const c_void, n: size_t, off: off64_t) -> ssize_t);
gated!(pwritev, c"pwritev", (fd: c_int, iov: *const iovec, cnt: c_int, off: off_t) -> ssize_t);
gated!(pwritev64, c"pwritev64", (fd: c_int, iov: *const iovec, cnt: c_int, off: off64_t) -> ssize_t);
gated!(pwritev2, c"pwritev2", (fd: c_int, iov: *const iovec, cnt: c_int, off: off_t, flags: c_int) -> ssize_t);
gated!(pwritev64v2, c"pwritev64v2", (fd: c_int, iov: *const iovec, cnt: c_int, off: off64_t, flags: c_int) -> ssize_t);
gated!(sendfile, c"sendfile", (out: c_int, inp: c_int, off: *mut off_t, n: size_t) -> ssize_t);
gated!(sendfile64, c"sendfile64", (out: c_int, inp: c_int, off: *mut off64_t, n: size_t) -> ssize_t);
gated!(splice, c"splice", (fin: c_int, offin: *mut loff_t, fout: c_int, offout: *mut loff_t, n: size_t, flags: c_uint) -> ssize_t);
gated!(copy_file_range, c"copy_file_range", (fin: c_int, offin: *mut loff_t, fout: c_int, offout: *mut loff_t, n: size_t, flags: c_uint) -> ssize_t);
