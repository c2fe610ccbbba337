//! Kernel AIO contexts (`io_setup`, `io_submit`, `io_destroy`, `io_getevents`), noted for
//! ckptd: what `io_setup` was asked for, and how many requests `io_submit` took for each
//! context. The kernel shows neither. Every request ends as exactly one event in the context's
//! ring, so the requests in flight are those taken less the ring's tail, modulo the ring's
//! size (never more than it holds): ckptd refuses a checkpoint while any is in flight, and
//! makes the context again with what `io_setup` was asked for.
//!
//! The calls reach the kernel from here, whether the program called libaio's functions (this
//! library comes first) or libc's `syscall()` (libaio's own functions use it too); each returns
//! what its function would (libaio's `-errno`, `syscall()`'s -1 and errno). A context made by
//! the program's own system call instruction has no entry, and ckptd refuses it.
//!
//! A thread may be parked anywhere, also between the `io_submit` system call and the moment
//! its result is counted. So the system call is made by a few instructions of our own
//! (`ckpt_aio_submit`), whose addresses ckptd gets at the park: from a parked thread's
//! registers it tells whether the result is counted yet, and if not reads it in rax. Each
//! context counts the threads inside them; when ckptd finds fewer there (one was interrupted
//! by a handler of the program's, whose frame is the one parked), it tries again.

use crate::checkpoint::SLOTS;
use crate::restart::{ns_of, Call};
use crate::sys::{raw6, set_errno};
use ckpt_proto::slots::{AioSlot, ProcSlot, MAX_AIO};
use libc::{c_int, c_long, c_void};
use std::cell::UnsafeCell;
use std::mem::offset_of;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::*};

// The offsets and the system call number the instructions below are written with.
const _: () = assert!(offset_of!(AioSlot, submitted) == 8);
const _: () = assert!(offset_of!(AioSlot, armed) == 16);
const _: () = assert!(libc::SYS_io_submit == 209);

// ckpt_aio_submit(ctx: rdi, nr: rsi, iocbpp: rdx, entry: rcx) -> rax: io_submit, its result
// added to the entry's `submitted` (when positive) by the same few instructions, the entry's
// `armed` count raised around them. The labels are ckptd's landmarks (`ProcSlot::aio_code`).
std::arch::global_asm!(
    ".pushsection .text.ckpt_aio_submit,\"ax\",@progbits",
    ".globl ckpt_aio_submit",
    ".hidden ckpt_aio_submit",
    ".type ckpt_aio_submit,@function",
    "ckpt_aio_submit:",
    "    mov r8, rcx",
    "    lock inc qword ptr [r8 + 16]",
    ".globl ckpt_aio_armed",
    ".hidden ckpt_aio_armed",
    "ckpt_aio_armed:",
    "    mov eax, 209",
    "    syscall",
    ".globl ckpt_aio_returned",
    ".hidden ckpt_aio_returned",
    "ckpt_aio_returned:",
    "    test rax, rax",
    "    jle ckpt_aio_disarm",
    ".globl ckpt_aio_add",
    ".hidden ckpt_aio_add",
    "ckpt_aio_add:",
    "    lock add qword ptr [r8 + 8], rax",
    ".globl ckpt_aio_disarm",
    ".hidden ckpt_aio_disarm",
    "ckpt_aio_disarm:",
    "    lock dec qword ptr [r8 + 16]",
    ".globl ckpt_aio_end",
    ".hidden ckpt_aio_end",
    "ckpt_aio_end:",
    "    ret",
    ".size ckpt_aio_submit, . - ckpt_aio_submit",
    ".popsection",
);

extern "C" {
    fn ckpt_aio_submit(ctx: u64, nr: i64, iocbpp: u64, entry: *mut AioSlot) -> i64;
    static ckpt_aio_armed: u8;
    static ckpt_aio_returned: u8;
    static ckpt_aio_add: u8;
    static ckpt_aio_disarm: u8;
    static ckpt_aio_end: u8;
}

/// The entry `io_submit` counts into for a context without one (not ours, or not seen made):
/// its counts are never read.
struct Spare(UnsafeCell<AioSlot>);
// SAFETY: only ever touched by the instructions above, with atomic operations.
unsafe impl Sync for Spare {}
static SPARE: Spare = Spare(UnsafeCell::new(AioSlot {
    ctx: 0,
    submitted: 0,
    armed: 0,
    nr_events: 0,
    live: 0,
}));

fn entry(i: usize) -> *mut AioSlot {
    (SLOTS.addr() + ProcSlot::AIO_OFFSET + (i * std::mem::size_of::<AioSlot>()) as u64) as *mut AioSlot
}

/// A field of the slots, used atomically.
fn word64(p: *mut u64) -> &'static AtomicU64 {
    // SAFETY: an aligned u64 inside the static slots, only ever accessed atomically while the
    // program runs (the control thread writes plainly only while every other thread is parked).
    unsafe { AtomicU64::from_ptr(p) }
}

fn word32(p: *mut u32) -> &'static AtomicU32 {
    // SAFETY: as for `word64`.
    unsafe { AtomicU32::from_ptr(p) }
}

fn ctx_of(i: usize) -> &'static AtomicU64 {
    // SAFETY: a field address inside the static slots; nothing is read.
    word64(unsafe { &raw mut (*entry(i)).ctx })
}

fn proc_word(offset: usize) -> &'static AtomicU32 {
    word32((SLOTS.addr() + offset as u64) as *mut u32)
}

/// The entry of context `ctx`, if it has one.
fn find(ctx: u64) -> Option<usize> {
    if ctx <= 1 {
        return None;
    }
    let start = (ctx >> 12) as usize % MAX_AIO;
    (0..MAX_AIO)
        .map(|k| (start + k) % MAX_AIO)
        .find(|&i| ctx_of(i).load(Acquire) == ctx)
}

/// Notes a context `io_setup` just made, with what it was asked for.
fn note(ctx: u64, nr_events: u32) {
    // An entry left for the same id (its context destroyed by a call not seen here) is reused.
    let claimed = find(ctx).or_else(|| {
        let start = (ctx >> 12) as usize % MAX_AIO;
        (0..MAX_AIO)
            .map(|k| (start + k) % MAX_AIO)
            .find(|&i| ctx_of(i).compare_exchange(0, 1, AcqRel, Relaxed).is_ok())
    });
    let Some(i) = claimed else {
        proc_word(offset_of!(ProcSlot, aio_overflow)).store(1, Release);
        return;
    };
    let e = entry(i);
    // SAFETY: field addresses inside entry `i`, which this call holds (1) or which names the
    // context just made (an entry a forked child inherited: no thread of the child uses it).
    unsafe {
        word64(&raw mut (*e).submitted).store(0, Relaxed);
        word64(&raw mut (*e).armed).store(0, Relaxed);
        word32(&raw mut (*e).nr_events).store(nr_events, Relaxed);
        word32(&raw mut (*e).live).store(0, Relaxed);
    }
    ctx_of(i).store(ctx, Release);
}

fn forget(ctx: u64) {
    if let Some(i) = find(ctx) {
        ctx_of(i).store(0, Release);
    }
}

/// `io_setup`: the kernel's result.
fn setup(nr_events: u64, ctxp: u64) -> i64 {
    let busy = proc_word(offset_of!(ProcSlot, aio_setup_busy));
    busy.fetch_add(1, AcqRel);
    // SAFETY: the program's own call, as it made it.
    let r = unsafe { raw6(libc::SYS_io_setup, [nr_events, ctxp, 0, 0, 0, 0]) };
    if r == 0 {
        // SAFETY: the kernel just stored the new context's id there.
        let ctx = unsafe { (ctxp as *const u64).read_volatile() };
        note(ctx, nr_events as u32);
    }
    busy.fetch_sub(1, AcqRel);
    r
}

/// `io_submit`: the kernel's result, counted for the context.
fn submit(ctx: u64, nr: i64, iocbpp: u64) -> i64 {
    let e = find(ctx).map_or(SPARE.0.get(), entry);
    // SAFETY: the program's own call, as it made it; `e` is a live entry of the static slots
    // or the spare one.
    unsafe { ckpt_aio_submit(ctx, nr, iocbpp, e) }
}

/// `io_destroy`: the kernel's result.
fn destroy(ctx: u64) -> i64 {
    // SAFETY: the program's own call, as it made it.
    let r = unsafe { raw6(libc::SYS_io_destroy, [ctx, 0, 0, 0, 0, 0]) };
    if r == 0 {
        forget(ctx);
    }
    r
}

/// `io_getevents`: the kernel's result. A wait the park ended with EINTR (no event taken) is
/// made again with what was left of its timeout, as `restart` does for other blocking calls.
fn getevents(ctx: u64, min_nr: i64, nr: i64, events: u64, timeout: *const libc::timespec) -> i64 {
    let mut call = Call::timed(libc::CLOCK_MONOTONIC, ns_of(timeout));
    loop {
        call.begin();
        let left = call.left_ts();
        let ts = match &left {
            Some(t) => t as *const libc::timespec as u64,
            // No timeout, or one the kernel must judge (invalid): passed on as it came.
            None => timeout as u64,
        };
        // SAFETY: the program's own call; `ts` is its timeout or what is left of it.
        let r = unsafe { raw6(libc::SYS_io_getevents, [ctx, min_nr as u64, nr as u64, events, ts, 0]) };
        if r == -(libc::EINTR as i64) && call.again(libc::EINTR) {
            continue;
        }
        return r;
    }
}

/// In a forked child, whose only thread is the one that forked: no other thread is inside an
/// AIO call. The entries stay: the kernel copied the rings' mappings but none of the contexts,
/// and the park finds them not live, which tells ckptd such a ring is not the child's own.
pub fn reset_in_child() {
    for i in 0..MAX_AIO {
        // SAFETY: a field address inside the static slots; nothing is read.
        word64(unsafe { &raw mut (*entry(i)).armed }).store(0, Release);
    }
    proc_word(offset_of!(ProcSlot, aio_setup_busy)).store(0, Release);
}

/// At the park, on the control thread with every other thread parked: where the `io_submit`
/// code lies, and which noted contexts are this process's own (an `io_submit` of no request
/// looks the context up and does nothing else).
pub fn record(p: &mut ProcSlot) {
    // Addresses of labels of the code above; nothing is read.
    p.aio_code = [
        &raw const ckpt_aio_armed as u64,
        &raw const ckpt_aio_returned as u64,
        &raw const ckpt_aio_add as u64,
        &raw const ckpt_aio_disarm as u64,
        &raw const ckpt_aio_end as u64,
    ];
    for e in p.aio.iter_mut().filter(|e| e.ctx > 1) {
        // SAFETY: integer arguments only; no request is read (nr is 0).
        let r = unsafe { raw6(libc::SYS_io_submit, [e.ctx, 0, 0, 0, 0, 0]) };
        e.live = (r == 0) as u32;
    }
}

/// libc's `syscall()` with an AIO call's number: its result as `syscall()` returns it.
pub fn raw_call(nr: c_long, a: &[c_long; 6]) -> Option<c_long> {
    let r = match nr {
        libc::SYS_io_setup => setup(a[0] as u64, a[1] as u64),
        libc::SYS_io_submit => submit(a[0] as u64, a[1], a[2] as u64),
        libc::SYS_io_destroy => destroy(a[0] as u64),
        libc::SYS_io_getevents => getevents(a[0] as u64, a[1], a[2], a[3] as u64, a[4] as *const libc::timespec),
        _ => return None,
    };
    if (-4095..0).contains(&r) {
        set_errno(-r as i32);
        return Some(-1);
    }
    Some(r)
}

// libaio's functions: they return `-errno` and leave errno alone.

#[no_mangle]
pub unsafe extern "C" fn io_setup(nr_events: c_int, ctxp: *mut u64) -> c_int {
    setup(nr_events as u32 as u64, ctxp as u64) as c_int
}

#[no_mangle]
pub unsafe extern "C" fn io_submit(ctx: u64, nr: c_long, iocbpp: *mut *mut c_void) -> c_int {
    submit(ctx, nr, iocbpp as u64) as c_int
}

#[no_mangle]
pub unsafe extern "C" fn io_destroy(ctx: u64) -> c_int {
    destroy(ctx) as c_int
}

#[no_mangle]
pub unsafe extern "C" fn io_getevents(
    ctx: u64,
    min_nr: c_long,
    nr: c_long,
    events: *mut c_void,
    timeout: *mut libc::timespec,
) -> c_int {
    getevents(ctx, min_nr, nr, events as u64, timeout) as c_int
}
