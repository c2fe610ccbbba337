//! The communication gate. While the comm-stop flag is set (phase 1 of a checkpoint), calls of
//! the send family that go to another host wait before entering the kernel; receives, reads,
//! intra-host communication (pipes, files, local sockets: stopped at the phase-2 barrier) and
//! everything else go on. A call already in the kernel finishes first: each thread publishes
//! the fd it is sending on, and the control thread acknowledges phase 1 once no inter-host
//! send is in flight.
//!
//! The same gate holds writes to given files (the snapshot files ckptd copies while their
//! writes wait): the write family, `ftruncate` and `fallocate` on an fd whose (device, inode),
//! found by `fstat` only while the gate is shut, is in a fixed table wait until the park ends.
//!
//! Outside a checkpoint a wrapper claims an entry of a table for its call and gives it back
//! (no thread-locals: `write` is called from signal handlers; see `inflight`).
//!
//! Creating a process is communication too (see `spawn`): while the gate is shut, `fork`,
//! `posix_spawn`, `exec`… wait, and the gate counts as shut only once none is in the kernel, so
//! that every child made before it shut can be seen by ckptd then.

use crate::inflight::{self, InFlight};
use crate::sys::{futex_wait, futex_wake};
use crate::{hosts, sys};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, AtomicUsize, Ordering::*};

static STOP: AtomicU32 = AtomicU32::new(0);
/// Bumped when an in-flight call ends while the gate is shut, to wake the control thread.
static CHANGED: AtomicU32 = AtomicU32::new(0);

/// Send-family calls in progress (see `inflight`), with the fd each is on (-1: waiting at
/// the gate).
const CALLS_MAX: usize = 1024;
static CALLS: InFlight<CALLS_MAX> = InFlight::new();
static FD: [AtomicI32; CALLS_MAX] = [const { AtomicI32::new(-1) }; CALLS_MAX];
/// Calls in progress beyond CALLS_MAX, counted without their fd (waited for in full).
static OVERFLOW: AtomicU32 = AtomicU32::new(0);
/// The control thread (its `pthread_self`), which must talk to ckptd while the gate is shut.
static CONTROL: AtomicU64 = AtomicU64::new(0);
/// The process whose gate this is: a child made by `fork` while the gate shut has a copy of
/// it saying "shut" that nobody would ever open (see [`mine`]).
static GATE_PID: AtomicI32 = AtomicI32::new(0);
/// Process-creating calls in the kernel now (see `spawn`).
static SPAWNING: AtomicU32 = AtomicU32::new(0);

/// Files whose writes are held: (device, inode) pairs, the first HOLD_N valid. Written by the
/// control thread before the gate shuts; read by the wrappers while it is shut.
const HOLD_MAX: usize = 256;
static HOLD_DEV: [AtomicU64; HOLD_MAX] = [const { AtomicU64::new(0) }; HOLD_MAX];
static HOLD_INO: [AtomicU64; HOLD_MAX] = [const { AtomicU64::new(0) }; HOLD_MAX];
static HOLD_N: AtomicUsize = AtomicUsize::new(0);
/// More files than the table holds: every regular file is held.
static HOLD_ALL: AtomicBool = AtomicBool::new(false);
/// 1 while file writes are held (futex word the held writers wait on).
static FILES: AtomicU32 = AtomicU32::new(0);

pub fn bypass_this_thread() {
    CONTROL.store(inflight::me(), Release);
}

/// A call's place in the table: an entry, none left (counted in OVERFLOW), or the control
/// thread's call, which the gate lets through.
#[derive(Clone, Copy)]
enum Slot {
    Entry(usize),
    Overflow,
    Bypass,
}

fn mark(slot: Slot, fd: i32) {
    match slot {
        Slot::Entry(i) => FD[i].store(fd, SeqCst),
        Slot::Overflow => {
            OVERFLOW.fetch_add(1, SeqCst);
        }
        Slot::Bypass => {}
    }
}

fn unmark(slot: Slot) {
    match slot {
        Slot::Entry(i) => FD[i].store(-1, SeqCst),
        Slot::Overflow => {
            OVERFLOW.fetch_sub(1, SeqCst);
        }
        Slot::Bypass => return,
    }
    if STOP.load(SeqCst) != 0 {
        CHANGED.fetch_add(1, SeqCst);
        futex_wake(&CHANGED, i32::MAX);
    }
}

/// Whether `fd` is a regular file whose writes are held now. Raw syscalls only.
fn held_file(fd: i32) -> bool {
    if FILES.load(SeqCst) == 0 {
        return false;
    }
    // SAFETY: fstat into a local struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: st is a valid out-pointer.
    if unsafe { libc::fstat(fd, &mut st) } != 0 || st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return false;
    }
    if HOLD_ALL.load(SeqCst) {
        return true;
    }
    let n = HOLD_N.load(SeqCst).min(HOLD_MAX);
    (0..n).any(|i| HOLD_DEV[i].load(Relaxed) == st.st_dev && HOLD_INO[i].load(Relaxed) == st.st_ino)
}

/// Whether the shut gate seen is this process's own, not a copy a child inherited. Only asked
/// while the gate reads shut: `getpid` costs nothing outside a checkpoint.
fn mine() -> bool {
    GATE_PID.load(SeqCst) == sys::getpid()
}

/// Before a send-family call on `fd` (to `dest`, when the call names one). Returns the slot
/// to pass to [`leave`].
fn enter(fd: i32, dest: Option<(*const libc::sockaddr, libc::socklen_t)>) -> Slot {
    if CONTROL.load(Relaxed) == inflight::me() {
        return Slot::Bypass;
    }
    let slot = CALLS.claim().map_or(Slot::Overflow, Slot::Entry);
    loop {
        mark(slot, fd);
        let stop = STOP.load(SeqCst);
        if stop == 0 || !mine() {
            return slot;
        }
        let saved = sys::errno();
        let files = FILES.load(SeqCst);
        if dest.is_none() && files != 0 && held_file(fd) {
            unmark(slot);
            futex_wait(&FILES, files, 0);
        } else if hosts::leaves_host(fd, dest) {
            unmark(slot);
            futex_wait(&STOP, stop, 0);
        } else {
            sys::set_errno(saved);
            return slot;
        }
        sys::set_errno(saved);
    }
}

/// After a send-family call; errno is the call's.
fn leave(slot: Slot) {
    let saved = sys::errno();
    unmark(slot);
    if let Slot::Entry(i) = slot {
        CALLS.release(i);
    }
    sys::set_errno(saved);
}

/// An inter-host send, or a call creating a process, is in the kernel.
fn busy() -> bool {
    if OVERFLOW.load(SeqCst) > 0 || SPAWNING.load(SeqCst) > 0 {
        return true;
    }
    CALLS.held().any(|i| {
        let fd = FD[i].load(SeqCst);
        fd >= 0 && (hosts::leaves_host(fd, None) || held_file(fd))
    })
}

/// Shuts the gate and waits until no inter-host send, no write to a held file and no call
/// creating a process is in the kernel. False on timeout (a send blocked on a peer that does
/// not read, a `vfork` child that does not exec): the gate is then opened again. Writes to
/// `hold_files` (device, inode) are held until [`release_files`].
pub fn shut(timeout_ms: u32, hold_files: &[(u64, u64)]) -> bool {
    hosts::refresh_local_addrs();
    for (i, &(dev, ino)) in hold_files.iter().take(HOLD_MAX).enumerate() {
        HOLD_DEV[i].store(dev, Relaxed);
        HOLD_INO[i].store(ino, Relaxed);
    }
    HOLD_N.store(hold_files.len().min(HOLD_MAX), SeqCst);
    HOLD_ALL.store(hold_files.len() > HOLD_MAX, SeqCst);
    FILES.store(u32::from(!hold_files.is_empty()), SeqCst);
    GATE_PID.store(sys::getpid(), SeqCst);
    STOP.store(1, SeqCst);
    let deadline = sys::now_ns() + timeout_ms as u64 * 1_000_000;
    loop {
        let seen = CHANGED.load(SeqCst);
        if !busy() {
            return true;
        }
        if sys::now_ns() > deadline {
            open();
            return false;
        }
        futex_wait(&CHANGED, seen, 1_000_000);
    }
}

/// The park is over: held file writes may go on (inter-host sends stay held until [`open`]).
/// Called from the control thread's park handler: must not allocate or lock.
pub fn release_files() {
    if FILES.swap(0, SeqCst) != 0 {
        futex_wake(&FILES, i32::MAX);
    }
}

/// Opens the gate: sends and held file writes go on (the checkpoint is over or aborted).
pub fn open() {
    release_files();
    STOP.store(0, SeqCst);
    futex_wake(&STOP, i32::MAX);
}

/// Before a call that creates a process (or replaces this one): waits while the gate is shut,
/// then counts the call in flight until [`leave_spawn`]. The wait is a futex wait: a park
/// signal interrupts it, parks the thread and the wait goes on.
pub fn enter_spawn() {
    loop {
        SPAWNING.fetch_add(1, SeqCst);
        let stop = STOP.load(SeqCst);
        if stop == 0 || !mine() {
            return;
        }
        leave_spawn();
        let saved = sys::errno();
        futex_wait(&STOP, stop, 0);
        sys::set_errno(saved);
    }
}

/// After a call counted by [`enter_spawn`] returned (in the parent); errno untouched.
pub fn leave_spawn() {
    SPAWNING.fetch_sub(1, SeqCst);
    if STOP.load(SeqCst) != 0 {
        CHANGED.fetch_add(1, SeqCst);
        futex_wake(&CHANGED, i32::MAX);
    }
}

/// Waits while the gate is shut, for calls that cannot be counted in flight (they run for
/// long, like `system`, or are variadic trampolines that never come back, like `execl`).
pub fn wait_open() {
    enter_spawn();
    leave_spawn();
}

/// In a forked child that registers as a process of its own: the gate it inherited is the
/// parent's, caught at any moment; its own starts open and empty. Only the forking thread
/// exists here, and it is in `fork`: entries of the parent's other threads are stale.
pub fn reset_in_child() {
    STOP.store(0, SeqCst);
    release_files();
    HOLD_N.store(0, SeqCst);
    HOLD_ALL.store(false, SeqCst);
    OVERFLOW.store(0, SeqCst);
    SPAWNING.store(0, SeqCst);
    for fd in &FD {
        fd.store(-1, SeqCst);
    }
    CALLS.reset();
    GATE_PID.store(0, SeqCst);
}

/// Defines an exported wrapper that passes through the gate to libc's function.
macro_rules! gated {
    ($name:ident, $cname:literal, ($($arg:ident: $ty:ty),*) -> $ret:ty, $fd:expr, $dest:expr) => {
        #[no_mangle]
        pub unsafe extern "C" fn $name($($arg: $ty),*) -> $ret {
            static REAL: AtomicUsize = AtomicUsize::new(0);
            let f = sys::libc_symbol(&REAL, $cname);
            if f == 0 {
                sys::set_errno(libc::ENOSYS);
                return -1 as $ret;
            }
            let slot = enter($fd, $dest);
            // SAFETY: `f` is libc's function of this exact signature; arguments are passed
            // through unchanged.
            let r = unsafe {
                let f: unsafe extern "C" fn($($ty),*) -> $ret = std::mem::transmute(f);
                f($($arg),*)
            };
            leave(slot);
            r
        }
    };
}

/// The destination named by a sendmsg, if any.
fn msg_dest(msg: *const msghdr) -> Option<(*const sockaddr, socklen_t)> {
    // SAFETY: the caller's msghdr, read only when non-null as sendmsg itself would.
    let m = unsafe { msg.as_ref()? };
    (!m.msg_name.is_null()).then_some((m.msg_name as *const sockaddr, m.msg_namelen))
}

fn mmsg_dest(vec: *mut mmsghdr, vlen: c_uint) -> Option<(*const sockaddr, socklen_t)> {
    if vlen == 0 || vec.is_null() {
        return None;
    }
    // SAFETY: the first of the caller's vlen entries.
    msg_dest(unsafe { &(*vec).msg_hdr })
}

use libc::{
    c_int, c_uint, c_void, iovec, loff_t, mmsghdr, msghdr, off64_t, off_t, size_t, sockaddr, socklen_t, ssize_t,
};

gated!(send, c"send", (fd: c_int, buf: *const c_void, n: size_t, flags: c_int) -> ssize_t, fd, None);
gated!(sendto, c"sendto", (fd: c_int, buf: *const c_void, n: size_t, flags: c_int, to: *const sockaddr, tolen: socklen_t) -> ssize_t, fd, Some((to, tolen)));
gated!(sendmsg, c"sendmsg", (fd: c_int, msg: *const msghdr, flags: c_int) -> ssize_t, fd, msg_dest(msg));
gated!(sendmmsg, c"sendmmsg", (fd: c_int, vec: *mut mmsghdr, vlen: c_uint, flags: c_int) -> c_int, fd, mmsg_dest(vec, vlen));
gated!(write, c"write", (fd: c_int, buf: *const c_void, n: size_t) -> ssize_t, fd, None);
gated!(writev, c"writev", (fd: c_int, iov: *const iovec, cnt: c_int) -> ssize_t, fd, None);
gated!(pwrite, c"pwrite", (fd: c_int, buf: *const c_void, n: size_t, off: off_t) -> ssize_t, fd, None);
gated!(pwrite64, c"pwrite64", (fd: c_int, buf: *const c_void, n: size_t, off: off64_t) -> ssize_t, fd, None);
gated!(pwritev, c"pwritev", (fd: c_int, iov: *const iovec, cnt: c_int, off: off_t) -> ssize_t, fd, None);
gated!(pwritev64, c"pwritev64", (fd: c_int, iov: *const iovec, cnt: c_int, off: off64_t) -> ssize_t, fd, None);
gated!(pwritev2, c"pwritev2", (fd: c_int, iov: *const iovec, cnt: c_int, off: off_t, flags: c_int) -> ssize_t, fd, None);
gated!(pwritev64v2, c"pwritev64v2", (fd: c_int, iov: *const iovec, cnt: c_int, off: off64_t, flags: c_int) -> ssize_t, fd, None);
gated!(sendfile, c"sendfile", (out: c_int, inp: c_int, off: *mut off_t, n: size_t) -> ssize_t, out, None);
gated!(sendfile64, c"sendfile64", (out: c_int, inp: c_int, off: *mut off64_t, n: size_t) -> ssize_t, out, None);
gated!(splice, c"splice", (fin: c_int, offin: *mut loff_t, fout: c_int, offout: *mut loff_t, n: size_t, flags: c_uint) -> ssize_t, fout, None);
gated!(copy_file_range, c"copy_file_range", (fin: c_int, offin: *mut loff_t, fout: c_int, offout: *mut loff_t, n: size_t, flags: c_uint) -> ssize_t, fout, None);
gated!(ftruncate, c"ftruncate", (fd: c_int, len: off_t) -> c_int, fd, None);
gated!(ftruncate64, c"ftruncate64", (fd: c_int, len: off64_t) -> c_int, fd, None);
gated!(fallocate, c"fallocate", (fd: c_int, mode: c_int, off: off_t, len: off_t) -> c_int, fd, None);
gated!(fallocate64, c"fallocate64", (fd: c_int, mode: c_int, off: off64_t, len: off64_t) -> c_int, fd, None);
