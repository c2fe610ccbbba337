//! The interposer's own descriptors — its link to ckptd, its dirty-page tracker and its handle on
//! `/proc` — survive what programs do to descriptors they believe are theirs.
//!
//! They live at high numbers (daemons close low ones, shells keep theirs near 255). A `close` of
//! one of them succeeds without closing it, `close_range`/`closefrom` close everything around
//! them, and `dup2`/`dup3` onto one first move ours to another free number, so that the program
//! gets the number it asked for. ckptd learns the current numbers from the slots at each park.

use crate::checkpoint::CONTROL_FD;
use crate::pages::UFFD;
use crate::sys;
use libc::{c_int, c_uint};
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering::*};

/// Where the interposer's own descriptors go, when the fd limit allows.
const HIGH: i32 = 1000;

/// `/proc`, opened (`O_PATH`) when the interposer starts: a program that moves its root
/// (`chroot`) or its mounts still has its `/proc/self/…` read through it (see [`open_proc`]).
pub static PROC_FD: AtomicI32 = AtomicI32::new(-1);

fn cells() -> [&'static AtomicI32; 3] {
    [&CONTROL_FD, &UFFD, &PROC_FD]
}

/// Opens `/proc` for [`PROC_FD`], at the interposer's high numbers; -1 if there is none.
pub fn open_proc_dir() -> i32 {
    // SAFETY: a NUL-terminated literal path; returns an fd or a negative errno.
    let fd = unsafe {
        sys::raw6(
            libc::SYS_openat,
            [
                libc::AT_FDCWD as u64,
                c"/proc".as_ptr() as u64,
                (libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) as u64,
                0,
                0,
                0,
            ],
        )
    };
    if fd < 0 {
        return -1;
    }
    protect(fd as i32)
}

/// Opens `rel` (`self/task`, NUL-terminated, below `/proc`) through [`PROC_FD`], or by its
/// absolute path when there is none; the raw result (an fd or a negative errno). Allocates
/// nothing: usable while other threads are parked.
pub fn open_proc(rel: &std::ffi::CStr, flags: i32) -> i64 {
    let dir = PROC_FD.load(Acquire);
    let mut path = [0u8; 64];
    let (at, p) = if dir >= 0 {
        (dir as i64, rel.as_ptr() as u64)
    } else {
        let bytes = rel.to_bytes_with_nul();
        if bytes.len() + 6 > path.len() {
            return -(libc::ENAMETOOLONG as i64);
        }
        path[..6].copy_from_slice(b"/proc/");
        path[6..6 + bytes.len()].copy_from_slice(bytes);
        (libc::AT_FDCWD as i64, path.as_ptr() as u64)
    };
    // SAFETY: `p` points to a NUL-terminated path that lives for the call.
    unsafe {
        sys::raw6(
            libc::SYS_openat,
            [at as u64, p, (flags | libc::O_CLOEXEC) as u64, 0, 0, 0],
        )
    }
}

/// Whether `fd` is one of the interposer's own descriptors.
pub fn own(fd: i64) -> bool {
    fd >= 0 && cells().iter().any(|c| c.load(Acquire) as i64 == fd)
}

/// The soft limit on descriptors (read without libc).
fn fd_limit() -> u64 {
    let mut lim = libc::rlimit64 {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // A null new limit only reads.
    // SAFETY: every pointer argument points to live memory of the size the call expects.
    unsafe {
        sys::raw6(
            libc::SYS_prlimit64,
            [
                0,
                libc::RLIMIT_NOFILE as u64,
                0,
                &mut lim as *mut libc::rlimit64 as u64,
                0,
                0,
            ],
        )
    };
    lim.rlim_cur
}

/// The lowest number the interposer's descriptors take: HIGH, or lower when the soft fd limit
/// would not allow it.
fn base() -> i32 {
    let cur = fd_limit().min(i32::MAX as u64) as i32;
    if cur > HIGH + 64 {
        HIGH
    } else {
        (cur - 16).max(3)
    }
}

/// Moves a descriptor the interposer just made up to its high numbers (close-on-exec); the
/// number it has now.
pub fn protect(fd: i32) -> i32 {
    let b = base();
    if fd < 0 || fd >= b {
        return fd;
    }
    let n = sys::fcntl(fd, libc::F_DUPFD_CLOEXEC, b as u64);
    if n < 0 {
        return fd;
    }
    sys::close(fd);
    n as i32
}

/// The program is about to put something at `fd`: if ours is there, it moves to another free
/// number first (the program's call then replaces the old number atomically).
fn step_aside(fd: i64) {
    for c in cells() {
        if c.load(Acquire) as i64 != fd {
            continue;
        }
        let n = sys::fcntl(fd as i32, libc::F_DUPFD_CLOEXEC, base() as u64);
        if n >= 0 && c.compare_exchange(fd as i32, n as i32, AcqRel, Acquire).is_err() {
            sys::close(n as i32);
        }
    }
}

/// Our descriptors within [first, last], sorted.
fn own_within(first: u32, last: u32) -> [i64; 3] {
    let mut v = cells().map(|c| c.load(Acquire) as i64);
    v.sort_unstable();
    v.map(|fd| {
        if fd >= first as i64 && fd <= last as i64 {
            fd
        } else {
            -1
        }
    })
}

/// `close_range` that leaves ours open: the range is closed around them, piece by piece.
/// `real` closes one piece and returns what close_range returns.
pub fn close_range_around(first: u32, last: u32, flags: c_int, real: impl Fn(u32, u32, c_int) -> i64) -> i64 {
    // Marking close-on-exec leaves ours as they are (they have it already).
    if flags & libc::CLOSE_RANGE_CLOEXEC as c_int != 0 || first > last {
        return real(first, last, flags);
    }
    let mut at = first as i64;
    let mut result = 0;
    for fd in own_within(first, last) {
        if fd < 0 {
            continue;
        }
        if fd > at {
            result = real(at as u32, (fd - 1) as u32, flags);
            if result < 0 {
                return result;
            }
        }
        at = fd + 1;
    }
    if at <= last as i64 {
        result = real(at as u32, last, flags);
    }
    result
}

/// libc's `close_range` (or the system call when libc has none).
fn real_close_range(first: u32, last: u32, flags: c_int) -> i64 {
    static REAL: AtomicUsize = AtomicUsize::new(0);
    match sys::libc_symbol(&REAL, c"close_range") {
        // SAFETY: integer arguments only.
        0 => unsafe {
            sys::sys6(
                libc::SYS_close_range,
                [first as u64, last as u64, flags as u64, 0, 0, 0],
            )
        },
        f => {
            // SAFETY: libc's close_range has this signature.
            let f: unsafe extern "C" fn(c_uint, c_uint, c_int) -> c_int = unsafe { std::mem::transmute(f) };
            // SAFETY: plain integer arguments.
            unsafe { f(first, last, flags) as i64 }
        }
    }
}

#[no_mangle]
pub unsafe extern "C" fn close(fd: c_int) -> c_int {
    if own(fd as i64) {
        return 0;
    }
    static REAL: AtomicUsize = AtomicUsize::new(0);
    match sys::libc_symbol(&REAL, c"close") {
        0 => sys::close(fd) as c_int,
        f => {
            // SAFETY: libc's close has this signature.
            let f: unsafe extern "C" fn(c_int) -> c_int = unsafe { std::mem::transmute(f) };
            // SAFETY: passing the caller's argument.
            unsafe { f(fd) }
        }
    }
}

#[no_mangle]
pub unsafe extern "C" fn close_range(first: c_uint, last: c_uint, flags: c_int) -> c_int {
    close_range_around(first, last, flags, real_close_range) as c_int
}

#[no_mangle]
pub unsafe extern "C" fn closefrom(low: c_int) {
    let saved = sys::errno();
    if close_range_around(low.max(0) as u32, u32::MAX, 0, real_close_range) < 0 {
        // As libc does when close_range is refused: close them one by one.
        for fd in low.max(0) as u64..fd_limit().min(1 << 20) {
            if !own(fd as i64) {
                sys::close(fd as i32);
            }
        }
    }
    sys::set_errno(saved);
}

#[no_mangle]
pub unsafe extern "C" fn dup2(old: c_int, new: c_int) -> c_int {
    if old != new {
        step_aside(new as i64);
    }
    static REAL: AtomicUsize = AtomicUsize::new(0);
    match sys::libc_symbol(&REAL, c"dup2") {
        // SAFETY: integer arguments only.
        0 => (unsafe { sys::sys6(libc::SYS_dup2, [old as u64, new as u64, 0, 0, 0, 0]) }) as c_int,
        f => {
            // SAFETY: libc's dup2 has this signature.
            let f: unsafe extern "C" fn(c_int, c_int) -> c_int = unsafe { std::mem::transmute(f) };
            // SAFETY: passing the caller's arguments.
            unsafe { f(old, new) }
        }
    }
}

#[no_mangle]
pub unsafe extern "C" fn dup3(old: c_int, new: c_int, flags: c_int) -> c_int {
    if old != new {
        step_aside(new as i64);
    }
    static REAL: AtomicUsize = AtomicUsize::new(0);
    match sys::libc_symbol(&REAL, c"dup3") {
        0 => sys::dup3(old, new, flags) as c_int,
        f => {
            // SAFETY: libc's dup3 has this signature.
            let f: unsafe extern "C" fn(c_int, c_int, c_int) -> c_int = unsafe { std::mem::transmute(f) };
            // SAFETY: passing the caller's arguments.
            unsafe { f(old, new, flags) }
        }
    }
}

/// The fd system calls made through `syscall()`: ours are kept as above. None for other calls.
pub fn raw_call(nr: i64, a: &[i64; 6], real: &dyn Fn(&[i64; 6]) -> i64) -> Option<i64> {
    match nr {
        libc::SYS_close if own(a[0]) => Some(0),
        libc::SYS_close_range => Some(close_range_around(
            a[0] as u32,
            a[1] as u32,
            a[2] as c_int,
            |f, l, fl| real(&[f as i64, l as i64, fl as i64, 0, 0, 0]),
        )),
        libc::SYS_dup2 | libc::SYS_dup3 => {
            if a[0] != a[1] {
                step_aside(a[1]);
            }
            Some(real(a))
        }
        _ => None,
    }
}
