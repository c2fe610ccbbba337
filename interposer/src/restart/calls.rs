//! The blocking calls a park can interrupt with EINTR, each called again when the park caused
//! it (see the module above). Masks a call installs for its duration (`ppoll`, `pselect`,
//! `epoll_pwait`, `sigsuspend`) never block the park signal, as with `sigprocmask`.

use super::{ns_of, ts_of, Call};
use crate::checkpoint::PARK_SIGNAL;
use crate::sys;
use crate::sysv;
use ckpt_proto::slots::SysvKind;
use libc::{c_int, c_long, c_uint, c_void, nfds_t, pollfd, sigset_t, size_t, ssize_t, timespec, timeval};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// libc's function `$name` as a fn pointer of type `$ty`, or the ENOSYS failure `$fail`.
macro_rules! real {
    ($name:literal, $ty:ty, $fail:expr) => {{
        static CELL: AtomicUsize = AtomicUsize::new(0);
        match sys::libc_symbol(&CELL, $name) {
            0 => {
                sys::set_errno(libc::ENOSYS);
                return $fail;
            }
            // SAFETY: the symbol libc exports under this name has this signature.
            f => unsafe { std::mem::transmute::<usize, $ty>(f) },
        }
    }};
}

/// `set` without the park signal, copied into `buf` when it had it.
fn without_park(set: *const sigset_t, buf: &mut sigset_t) -> *const sigset_t {
    let ps = PARK_SIGNAL.load(Relaxed);
    // SAFETY: the caller's set, read only when non-null as the real call would.
    if ps == 0 || set.is_null() || unsafe { libc::sigismember(set, ps) } != 1 {
        return set;
    }
    // SAFETY: copying the caller's set into ours, then editing ours.
    unsafe {
        *buf = *set;
        libc::sigdelset(buf, ps);
    }
    buf
}

/// Calls `f` with a timeout in milliseconds — the caller's first, then what is left of it —
/// again each time a park interrupted it; its result.
fn again_ms(call: impl FnOnce() -> Call, timeout: c_int, mut f: impl FnMut(c_int) -> c_int) -> c_int {
    // A call that does not wait is never interrupted by a park: nothing to hold for it.
    if timeout == 0 {
        return f(0);
    }
    let mut call = call();
    let mut t = timeout;
    loop {
        call.begin();
        let r = f(t);
        if r == -1 && call.again(sys::errno()) {
            t = call.left_ms().unwrap_or(t);
            continue;
        }
        return r;
    }
}

/// Like [`again_ms`] with a timespec: the caller's, then one of ours with what is left.
fn again_ts(mut call: Call, tmo: *const timespec, mut f: impl FnMut(*const timespec) -> c_int) -> c_int {
    let mut left: timespec;
    let mut t = tmo;
    loop {
        call.begin();
        let r = f(t);
        if r == -1 && call.again(sys::errno()) {
            if let Some(ts) = call.left_ts() {
                left = ts;
                t = &left;
            }
            continue;
        }
        return r;
    }
}

/// A timeout in ms as ns; None for none (negative: forever) or zero (never blocks).
fn ns_of_ms(ms: c_int) -> Option<u64> {
    (ms > 0).then(|| ms as u64 * 1_000_000)
}

fn mono(ns: Option<u64>) -> Call {
    Call::timed(libc::CLOCK_MONOTONIC, ns)
}

#[no_mangle]
pub unsafe extern "C" fn poll(fds: *mut pollfd, n: nfds_t, timeout: c_int) -> c_int {
    let f = real!(c"poll", unsafe extern "C" fn(*mut pollfd, nfds_t, c_int) -> c_int, -1);
    // SAFETY: the caller's arguments, passed through, with what is left of the timeout.
    again_ms(|| mono(ns_of_ms(timeout)), timeout, |t| unsafe { f(fds, n, t) })
}

#[no_mangle]
pub unsafe extern "C" fn __poll_chk(fds: *mut pollfd, n: nfds_t, timeout: c_int, len: size_t) -> c_int {
    let f = real!(
        c"__poll_chk",
        unsafe extern "C" fn(*mut pollfd, nfds_t, c_int, size_t) -> c_int,
        -1
    );
    // SAFETY: as for poll.
    again_ms(|| mono(ns_of_ms(timeout)), timeout, |t| unsafe { f(fds, n, t, len) })
}

type PpollFn = unsafe extern "C" fn(*mut pollfd, nfds_t, *const timespec, *const sigset_t) -> c_int;

#[no_mangle]
pub unsafe extern "C" fn ppoll(fds: *mut pollfd, n: nfds_t, tmo: *const timespec, mask: *const sigset_t) -> c_int {
    let f = real!(c"ppoll", PpollFn, -1);
    // SAFETY: zeroed sigset_t is a valid value.
    let mut buf: sigset_t = unsafe { std::mem::zeroed() };
    let mask = without_park(mask, &mut buf);
    // SAFETY: the caller's arguments, or our own timespec for what is left.
    again_ts(mono(ns_of(tmo)), tmo, |t| unsafe { f(fds, n, t, mask) })
}

#[no_mangle]
pub unsafe extern "C" fn __ppoll_chk(
    fds: *mut pollfd,
    n: nfds_t,
    tmo: *const timespec,
    mask: *const sigset_t,
    len: size_t,
) -> c_int {
    type F = unsafe extern "C" fn(*mut pollfd, nfds_t, *const timespec, *const sigset_t, size_t) -> c_int;
    let f = real!(c"__ppoll_chk", F, -1);
    // SAFETY: zeroed sigset_t is a valid value.
    let mut buf: sigset_t = unsafe { std::mem::zeroed() };
    let mask = without_park(mask, &mut buf);
    // SAFETY: as for ppoll.
    again_ts(mono(ns_of(tmo)), tmo, |t| unsafe { f(fds, n, t, mask, len) })
}

type SelectFn = unsafe extern "C" fn(c_int, *mut c_void, *mut c_void, *mut c_void, *mut timeval) -> c_int;

#[no_mangle]
pub unsafe extern "C" fn select(
    n: c_int,
    r: *mut c_void,
    w: *mut c_void,
    e: *mut c_void,
    timeout: *mut timeval,
) -> c_int {
    let f = real!(c"select", SelectFn, -1);
    // SAFETY: the caller's timeval, read only when non-null as select itself would.
    let ns = unsafe { timeout.as_ref() }
        .filter(|tv| tv.tv_sec >= 0 && (0..1_000_000).contains(&tv.tv_usec))
        .map(|tv| {
            (tv.tv_sec as u64)
                .saturating_mul(1_000_000_000)
                .saturating_add(tv.tv_usec as u64 * 1000)
        });
    let mut call = mono(ns);
    loop {
        call.begin();
        // SAFETY: the caller's arguments, passed through. On EINTR the kernel leaves the sets
        // as they were and writes what is left into the timeval, as Linux's select does.
        let ret = unsafe { f(n, r, w, e, timeout) };
        if ret == -1 && call.again(sys::errno()) {
            if let (Some(left), Some(tv)) = (call.left_ns(), unsafe { timeout.as_mut() }) {
                tv.tv_sec = (left / 1_000_000_000) as i64;
                tv.tv_usec = ((left % 1_000_000_000) / 1000) as i64;
            }
            continue;
        }
        return ret;
    }
}

type PselectFn =
    unsafe extern "C" fn(c_int, *mut c_void, *mut c_void, *mut c_void, *const timespec, *const sigset_t) -> c_int;

#[no_mangle]
pub unsafe extern "C" fn pselect(
    n: c_int,
    r: *mut c_void,
    w: *mut c_void,
    e: *mut c_void,
    tmo: *const timespec,
    mask: *const sigset_t,
) -> c_int {
    let f = real!(c"pselect", PselectFn, -1);
    // SAFETY: zeroed sigset_t is a valid value.
    let mut buf: sigset_t = unsafe { std::mem::zeroed() };
    let mask = without_park(mask, &mut buf);
    // SAFETY: the caller's arguments, or our own timespec for what is left.
    again_ts(mono(ns_of(tmo)), tmo, |t| unsafe { f(n, r, w, e, t, mask) })
}

type EpollWaitFn = unsafe extern "C" fn(c_int, *mut libc::epoll_event, c_int, c_int) -> c_int;
type EpollPwaitFn = unsafe extern "C" fn(c_int, *mut libc::epoll_event, c_int, c_int, *const sigset_t) -> c_int;
type EpollPwait2Fn =
    unsafe extern "C" fn(c_int, *mut libc::epoll_event, c_int, *const timespec, *const sigset_t) -> c_int;

#[no_mangle]
pub unsafe extern "C" fn epoll_wait(ep: c_int, ev: *mut libc::epoll_event, max: c_int, timeout: c_int) -> c_int {
    let f = real!(c"epoll_wait", EpollWaitFn, -1);
    // SAFETY: the caller's arguments, passed through, with what is left of the timeout.
    again_ms(|| mono(ns_of_ms(timeout)), timeout, |t| unsafe { f(ep, ev, max, t) })
}

#[no_mangle]
pub unsafe extern "C" fn epoll_pwait(
    ep: c_int,
    ev: *mut libc::epoll_event,
    max: c_int,
    timeout: c_int,
    mask: *const sigset_t,
) -> c_int {
    let f = real!(c"epoll_pwait", EpollPwaitFn, -1);
    // SAFETY: zeroed sigset_t is a valid value.
    let mut buf: sigset_t = unsafe { std::mem::zeroed() };
    let mask = without_park(mask, &mut buf);
    // SAFETY: the caller's arguments, passed through, with what is left of the timeout.
    again_ms(
        || mono(ns_of_ms(timeout)),
        timeout,
        |t| unsafe { f(ep, ev, max, t, mask) },
    )
}

#[no_mangle]
pub unsafe extern "C" fn epoll_pwait2(
    ep: c_int,
    ev: *mut libc::epoll_event,
    max: c_int,
    tmo: *const timespec,
    mask: *const sigset_t,
) -> c_int {
    let f = real!(c"epoll_pwait2", EpollPwait2Fn, -1);
    // SAFETY: zeroed sigset_t is a valid value.
    let mut buf: sigset_t = unsafe { std::mem::zeroed() };
    let mask = without_park(mask, &mut buf);
    // SAFETY: the caller's arguments, or our own timespec for what is left.
    again_ts(mono(ns_of(tmo)), tmo, |t| unsafe { f(ep, ev, max, t, mask) })
}

type NanosleepFn = unsafe extern "C" fn(*const timespec, *mut timespec) -> c_int;

#[no_mangle]
pub unsafe extern "C" fn nanosleep(req: *const timespec, rem: *mut timespec) -> c_int {
    let f = real!(c"nanosleep", NanosleepFn, -1);
    // SAFETY: the caller's arguments, or our own timespec for what is left.
    again_ts(mono(ns_of(req)), req, |t| unsafe { f(t, rem) })
}

/// The clock a relative sleep on `clock` is measured against: CPU-time clocks keep theirs, the
/// others count elapsed time.
fn sleep_clock(clock: libc::clockid_t) -> libc::clockid_t {
    match clock {
        libc::CLOCK_PROCESS_CPUTIME_ID | libc::CLOCK_THREAD_CPUTIME_ID => clock,
        c if c < 0 => clock,
        _ => libc::CLOCK_MONOTONIC,
    }
}

#[no_mangle]
pub unsafe extern "C" fn clock_nanosleep(
    clock: libc::clockid_t,
    flags: c_int,
    req: *const timespec,
    rem: *mut timespec,
) -> c_int {
    type F = unsafe extern "C" fn(libc::clockid_t, c_int, *const timespec, *mut timespec) -> c_int;
    let f = real!(c"clock_nanosleep", F, libc::ENOSYS);
    let mut call = if flags & libc::TIMER_ABSTIME != 0 {
        Call::plain()
    } else {
        Call::timed(sleep_clock(clock), ns_of(req))
    };
    let mut left: timespec;
    let mut t = req;
    loop {
        call.begin();
        // SAFETY: the caller's arguments, or our own timespec for what is left.
        let r = unsafe { f(clock, flags, t, rem) };
        // This one returns the error instead of setting errno.
        if r != 0 && call.again(r) {
            if let Some(ts) = call.left_ts() {
                left = ts;
                t = &left;
            }
            continue;
        }
        return r;
    }
}

/// Sleeps what is left of `call` with nanosleep, again after each park; the real call's result.
fn sleep_rest(mut call: Call, rem: &mut timespec) -> c_int {
    let f = real!(c"nanosleep", NanosleepFn, -1);
    loop {
        let left = call.left_ts().unwrap_or(ts_of(0));
        call.begin();
        // SAFETY: our own timespecs.
        let r = unsafe { f(&left, rem) };
        if r == -1 && call.again(sys::errno()) {
            continue;
        }
        return r;
    }
}

#[no_mangle]
pub unsafe extern "C" fn sleep(secs: c_uint) -> c_uint {
    let f = real!(c"sleep", unsafe extern "C" fn(c_uint) -> c_uint, secs);
    let mut call = mono(Some(secs as u64 * 1_000_000_000));
    call.begin();
    // SAFETY: passing the caller's argument.
    let r = unsafe { f(secs) };
    if r == 0 || !call.again(libc::EINTR) {
        return r;
    }
    let saved = sys::errno();
    let mut rem = ts_of(0);
    if sleep_rest(call, &mut rem) == 0 {
        sys::set_errno(saved);
        return 0;
    }
    // As libc's sleep reports an interrupted sleep: the seconds left, rounded.
    rem.tv_sec as c_uint + (rem.tv_nsec >= 500_000_000) as c_uint
}

#[no_mangle]
pub unsafe extern "C" fn usleep(usec: libc::useconds_t) -> c_int {
    let f = real!(c"usleep", unsafe extern "C" fn(libc::useconds_t) -> c_int, -1);
    let mut call = mono(Some(usec as u64 * 1000));
    call.begin();
    // SAFETY: passing the caller's argument.
    let r = unsafe { f(usec) };
    if r == 0 || !call.again(sys::errno()) {
        return r;
    }
    let mut rem = ts_of(0);
    sleep_rest(call, &mut rem)
}

type SigtimedwaitFn = unsafe extern "C" fn(*const sigset_t, *mut libc::siginfo_t, *const timespec) -> c_int;

#[no_mangle]
pub unsafe extern "C" fn sigtimedwait(set: *const sigset_t, info: *mut libc::siginfo_t, tmo: *const timespec) -> c_int {
    let f = real!(c"sigtimedwait", SigtimedwaitFn, -1);
    // SAFETY: the caller's arguments, or our own timespec for what is left.
    again_ts(mono(ns_of(tmo)), tmo, |t| unsafe { f(set, info, t) })
}

/// Defines a wrapper that calls the real function again, unchanged, when a park interrupted it.
/// `before` runs first (it must leave errno alone).
macro_rules! again_same {
    ($name:ident, $cname:literal, ($($arg:ident: $ty:ty),*) -> $ret:ty $(, before: $before:expr)?) => {
        #[no_mangle]
        pub unsafe extern "C" fn $name($($arg: $ty),*) -> $ret {
            let f = real!($cname, unsafe extern "C" fn($($ty),*) -> $ret, -1 as $ret);
            $($before;)?
            let mut call = Call::plain();
            loop {
                call.begin();
                // SAFETY: the caller's arguments, passed through unchanged.
                let r = unsafe { f($($arg),*) };
                if r == -1 as $ret && call.again(sys::errno()) {
                    continue;
                }
                return r;
            }
        }
    };
}

again_same!(sigwaitinfo, c"sigwaitinfo", (set: *const sigset_t, info: *mut libc::siginfo_t) -> c_int);
again_same!(pause, c"pause", () -> c_int);
again_same!(sem_wait, c"sem_wait", (sem: *mut libc::sem_t) -> c_int);
again_same!(sem_timedwait, c"sem_timedwait", (sem: *mut libc::sem_t, abs: *const timespec) -> c_int);
again_same!(sem_clockwait, c"sem_clockwait", (sem: *mut libc::sem_t, clock: libc::clockid_t, abs: *const timespec) -> c_int);
again_same!(msgsnd, c"msgsnd", (id: c_int, msg: *const c_void, size: size_t, flags: c_int) -> c_int,
    before: sysv::note(SysvKind::Msg, id));
again_same!(msgrcv, c"msgrcv", (id: c_int, msg: *mut c_void, size: size_t, kind: c_long, flags: c_int) -> ssize_t,
    before: sysv::note(SysvKind::Msg, id));

#[no_mangle]
pub unsafe extern "C" fn semop(id: c_int, ops: *mut libc::sembuf, n: size_t) -> c_int {
    let f = real!(
        c"semop",
        unsafe extern "C" fn(c_int, *mut libc::sembuf, size_t) -> c_int,
        -1
    );
    // Noted before it waits: a checkpoint may come meanwhile.
    sysv::note(SysvKind::Sem, id);
    // SAFETY: the caller's arguments, passed through unchanged.
    let r = again_ts(Call::plain(), std::ptr::null(), |_| unsafe { f(id, ops, n) });
    sysv::note_sem(id, ops, n, r == 0);
    r
}

#[no_mangle]
pub unsafe extern "C" fn sigsuspend(mask: *const sigset_t) -> c_int {
    let f = real!(c"sigsuspend", unsafe extern "C" fn(*const sigset_t) -> c_int, -1);
    // SAFETY: zeroed sigset_t is a valid value.
    let mut buf: sigset_t = unsafe { std::mem::zeroed() };
    let mask = without_park(mask, &mut buf);
    // SAFETY: the caller's mask, or our copy of it.
    again_ts(Call::plain(), std::ptr::null(), |_| unsafe { f(mask) })
}

#[no_mangle]
pub unsafe extern "C" fn semtimedop(id: c_int, ops: *mut libc::sembuf, n: size_t, tmo: *const timespec) -> c_int {
    type F = unsafe extern "C" fn(c_int, *mut libc::sembuf, size_t, *const timespec) -> c_int;
    let f = real!(c"semtimedop", F, -1);
    sysv::note(SysvKind::Sem, id);
    // SAFETY: the caller's arguments, or our own timespec for what is left.
    let r = again_ts(mono(ns_of(tmo)), tmo, |t| unsafe { f(id, ops, n, t) });
    sysv::note_sem(id, ops, n, r == 0);
    r
}

/// `syscall(SYS_futex, …)`: waits with a timeout end with EINTR when a handler runs (without
/// one the kernel restarts them). `call` makes the real system call with the given arguments.
pub(crate) fn futex_syscall(a: [c_long; 6], call: impl Fn(&[c_long; 6]) -> c_long) -> c_long {
    const CMD_MASK: c_long = !(libc::FUTEX_PRIVATE_FLAG | libc::FUTEX_CLOCK_REALTIME) as c_long;
    let cmd = (a[1] & CMD_MASK) as c_int;
    let relative = cmd == libc::FUTEX_WAIT;
    let timed = a[3] != 0
        && matches!(
            cmd,
            libc::FUTEX_WAIT
                | libc::FUTEX_WAIT_BITSET
                | libc::FUTEX_LOCK_PI
                | libc::FUTEX_LOCK_PI2
                | libc::FUTEX_WAIT_REQUEUE_PI
        );
    if !timed {
        return call(&a);
    }
    let mut c = if relative {
        mono(ns_of(a[3] as *const timespec))
    } else {
        Call::plain()
    };
    let mut args = a;
    let mut left: timespec;
    loop {
        c.begin();
        let r = call(&args);
        if r == -1 && c.again(sys::errno()) {
            if let Some(ts) = c.left_ts() {
                left = ts;
                args[3] = &left as *const timespec as c_long;
            }
            continue;
        }
        return r;
    }
}
