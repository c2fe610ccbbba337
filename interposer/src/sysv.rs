//! SysV IPC objects the program uses, noted in its slots for ckptd (which checkpoints exactly
//! those, with every segment it has attached): the ids `shmget`/`semget`/`msgget` return and
//! the ids it passes to the calls that use one. A forked child inherits its parent's list
//! (the same memory); an object removed with `IPC_RMID` through these calls is forgotten.
//! Noting is a few atomic operations on plain memory: no allocation, no lock, errno untouched.

use crate::checkpoint::SLOTS;
use crate::sys;
use ckpt_proto::slots::{SysvKind, MAX_SYSV};
use libc::{c_int, c_void, key_t, size_t};
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, AtomicUsize, Ordering::*};

/// The entries of the slots' list, as atomics.
fn entries() -> &'static [AtomicU64] {
    let p = SLOTS.sysv_addr() as *mut u64;
    // SAFETY: `sysv` is an aligned [u64; MAX_SYSV] inside the static slots, alive for the whole
    // program; every access to it goes through these atomics (ckptd reads it while parked).
    unsafe { std::slice::from_raw_parts(AtomicU64::from_ptr(p), MAX_SYSV) }
}

/// Notes that the program uses object `id` of `kind`.
pub fn note(kind: SysvKind, id: c_int) {
    if id < 0 {
        return;
    }
    let want = kind.entry(id);
    let list = entries();
    if list.iter().any(|e| e.load(Relaxed) == want) {
        return;
    }
    for e in list {
        match e.compare_exchange(0, want, AcqRel, Relaxed) {
            Ok(_) => return,
            Err(v) if v == want => return,
            Err(_) => {}
        }
    }
    // SAFETY: an aligned u32 inside the static slots.
    unsafe { AtomicU32::from_ptr(SLOTS.sysv_overflow_addr() as *mut u32) }.store(1, Relaxed);
}

/// Forgets object `id` of `kind` (the program removed it).
fn forget(kind: SysvKind, id: c_int) {
    let want = kind.entry(id);
    for e in entries() {
        let _ = e.compare_exchange(want, 0, AcqRel, Relaxed);
    }
}

/// Notes semaphore set `id` and whether one of `ops` asks for `SEM_UNDO` (once it succeeded).
pub fn note_sem(id: c_int, ops: *const libc::sembuf, n: size_t, ok: bool) {
    note(SysvKind::Sem, id);
    if !ok || ops.is_null() {
        return;
    }
    // SAFETY: the kernel just read these `n` operations from the caller's array.
    let ops = unsafe { std::slice::from_raw_parts(ops, n) };
    if ops.iter().any(|o| o.sem_flg as c_int & libc::SEM_UNDO != 0) {
        // SAFETY: getpid has no preconditions and leaves errno alone.
        let pid = unsafe { libc::getpid() };
        // SAFETY: an aligned i32 inside the static slots.
        unsafe { AtomicI32::from_ptr(SLOTS.sem_undo_pid_addr() as *mut i32) }.store(pid, Relaxed);
    }
}

macro_rules! real {
    ($name:literal, $ty:ty, $fail:expr) => {{
        static CELL: AtomicUsize = AtomicUsize::new(0);
        match sys::libc_symbol_or_enosys(&CELL, $name) {
            // SAFETY: the symbol libc exports under this name has this signature.
            Some(f) => unsafe { std::mem::transmute::<usize, $ty>(f) },
            None => return $fail,
        }
    }};
}

/// Defines `$name(key, …) -> id`, noting the id it returns as `$kind`.
macro_rules! getter {
    ($name:ident, $cname:literal, $kind:expr, ($($arg:ident: $ty:ty),*)) => {
        #[no_mangle]
        pub unsafe extern "C" fn $name($($arg: $ty),*) -> c_int {
            let f = real!($cname, unsafe extern "C" fn($($ty),*) -> c_int, -1);
            // SAFETY: the caller's arguments, passed through unchanged.
            let id = unsafe { f($($arg),*) };
            note($kind, id);
            id
        }
    };
}

getter!(shmget, c"shmget", SysvKind::Shm, (key: key_t, size: size_t, flags: c_int));
getter!(semget, c"semget", SysvKind::Sem, (key: key_t, n: c_int, flags: c_int));
getter!(msgget, c"msgget", SysvKind::Msg, (key: key_t, flags: c_int));

#[no_mangle]
pub unsafe extern "C" fn shmat(id: c_int, addr: *const c_void, flags: c_int) -> *mut c_void {
    let fail = usize::MAX as *mut c_void;
    let f = real!(
        c"shmat",
        unsafe extern "C" fn(c_int, *const c_void, c_int) -> *mut c_void,
        fail
    );
    // SAFETY: the caller's arguments, passed through unchanged.
    let r = unsafe { f(id, addr, flags) };
    if r != fail {
        note(SysvKind::Shm, id);
    }
    r
}

/// Whether `cmd` of a `*ctl` call of `kind` takes an object id (the `*_STAT` and `*_INFO`
/// commands take an index into the kernel's table instead).
fn takes_id(kind: SysvKind, cmd: c_int) -> bool {
    let c = cmd & 0xff;
    match kind {
        // IPC_RMID, IPC_SET, IPC_STAT, SHM_LOCK, SHM_UNLOCK.
        SysvKind::Shm => matches!(c, 0 | 1 | 2 | 11 | 12),
        // IPC_RMID, IPC_SET, IPC_STAT, GETPID…SETALL.
        SysvKind::Sem => matches!(c, 0 | 1 | 2 | 11..=17),
        SysvKind::Msg => matches!(c, 0..=2),
    }
}

/// After a `*ctl` call that succeeded: an object removed is forgotten, any other noted.
fn after_ctl(kind: SysvKind, id: c_int, cmd: c_int, r: c_int) {
    if r == -1 || !takes_id(kind, cmd) {
        return;
    }
    if cmd & 0xff == libc::IPC_RMID {
        forget(kind, id);
    } else {
        note(kind, id);
    }
}

#[no_mangle]
pub unsafe extern "C" fn shmctl(id: c_int, cmd: c_int, buf: *mut libc::shmid_ds) -> c_int {
    let f = real!(
        c"shmctl",
        unsafe extern "C" fn(c_int, c_int, *mut libc::shmid_ds) -> c_int,
        -1
    );
    // SAFETY: the caller's arguments, passed through unchanged.
    let r = unsafe { f(id, cmd, buf) };
    let errno = sys::errno();
    after_ctl(SysvKind::Shm, id, cmd, r);
    sys::set_errno(errno);
    r
}

#[no_mangle]
pub unsafe extern "C" fn msgctl(id: c_int, cmd: c_int, buf: *mut libc::msqid_ds) -> c_int {
    let f = real!(
        c"msgctl",
        unsafe extern "C" fn(c_int, c_int, *mut libc::msqid_ds) -> c_int,
        -1
    );
    // SAFETY: the caller's arguments, passed through unchanged.
    let r = unsafe { f(id, cmd, buf) };
    let errno = sys::errno();
    after_ctl(SysvKind::Msg, id, cmd, r);
    sys::set_errno(errno);
    r
}

/// `semctl(id, num, cmd, ...)`: the optional fourth argument (`union semun`, one word) is passed
/// on as it came; on x86-64 a variadic word travels in the same register as a fixed one.
#[no_mangle]
pub unsafe extern "C" fn semctl(id: c_int, num: c_int, cmd: c_int, arg: usize) -> c_int {
    let f = real!(c"semctl", unsafe extern "C" fn(c_int, c_int, c_int, usize) -> c_int, -1);
    // SAFETY: the caller's arguments, passed through unchanged.
    let r = unsafe { f(id, num, cmd, arg) };
    let errno = sys::errno();
    after_ctl(SysvKind::Sem, id, cmd, r);
    sys::set_errno(errno);
    r
}
