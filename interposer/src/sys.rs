//! Raw system calls used while threads are parked: no allocation, no locks, errno untouched
//! where the caller cares.
//!
//! The interposer exports `syscall`, `close`, `dup2`, `poll`… for the program; a call from inside
//! the interposer to libc's function of the same name would land in its own wrapper. Everything
//! here therefore enters the kernel directly.

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering::Relaxed};

/// A system call with up to six arguments, straight into the kernel: the raw return value
/// (`-errno` on failure), errno untouched.
///
/// # Safety
/// As with libc's `syscall()`: every argument the call reads or writes through must point to
/// memory valid for that use, and the call must not break what Rust relies on (unmapping
/// memory in use, closing descriptors owned elsewhere).
#[inline(always)]
pub unsafe fn raw6(nr: i64, a: [u64; 6]) -> i64 {
    let ret: i64;
    // SAFETY: the `syscall` instruction clobbers only rax, rcx and r11 (declared); memory the
    // arguments point to is the caller's responsibility, as with libc's syscall().
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") nr => ret,
            in("rdi") a[0],
            in("rsi") a[1],
            in("rdx") a[2],
            in("r10") a[3],
            in("r8") a[4],
            in("r9") a[5],
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret
}

/// Like [`raw6`], setting errno on failure the way libc's wrappers do: -1 and errno.
///
/// # Safety
/// As for [`raw6`].
pub unsafe fn sys6(nr: i64, a: [u64; 6]) -> i64 {
    // SAFETY: the caller's arguments, under the caller's contract.
    let r = unsafe { raw6(nr, a) };
    if (-4095..0).contains(&r) {
        set_errno(-r as i32);
        return -1;
    }
    r
}

pub fn close(fd: i32) -> i64 {
    // SAFETY: integer arguments only.
    unsafe { sys6(libc::SYS_close, [fd as u64, 0, 0, 0, 0, 0]) }
}

pub fn dup3(old: i32, new: i32, flags: i32) -> i64 {
    // SAFETY: integer arguments only.
    unsafe { sys6(libc::SYS_dup3, [old as u64, new as u64, flags as u64, 0, 0, 0]) }
}

/// `fcntl(fd, cmd, arg)` without going through libc.
pub fn fcntl(fd: i32, cmd: i32, arg: u64) -> i64 {
    // SAFETY: integer arguments only.
    unsafe { sys6(libc::SYS_fcntl, [fd as u64, cmd as u64, arg, 0, 0, 0]) }
}

pub fn poll(pfd: &mut libc::pollfd, timeout_ms: i32) -> i64 {
    // SAFETY: every pointer argument points to live memory of the size the call expects.
    unsafe {
        sys6(
            libc::SYS_poll,
            [pfd as *mut libc::pollfd as u64, 1, timeout_ms as i64 as u64, 0, 0, 0],
        )
    }
}

pub fn gettid() -> i32 {
    // SAFETY: integer arguments only.
    (unsafe { raw6(libc::SYS_gettid, [0; 6]) }) as i32
}

pub fn getpid() -> i32 {
    // SAFETY: integer arguments only.
    (unsafe { raw6(libc::SYS_getpid, [0; 6]) }) as i32
}

pub fn tgkill(pid: i32, tid: i32, sig: i32) -> i64 {
    // SAFETY: integer arguments only.
    unsafe { sys6(libc::SYS_tgkill, [pid as u64, tid as u64, sig as u64, 0, 0, 0]) }
}

pub fn errno() -> i32 {
    // SAFETY: __errno_location returns this thread's errno slot.
    unsafe { *libc::__errno_location() }
}

pub fn set_errno(v: i32) {
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = v }
}

/// Waits while `*word == expected`, at most `timeout_ns` (0 = forever).
pub fn futex_wait(word: &AtomicU32, expected: u32, timeout_ns: u64) {
    let ts = libc::timespec {
        tv_sec: (timeout_ns / 1_000_000_000) as i64,
        tv_nsec: (timeout_ns % 1_000_000_000) as i64,
    };
    let tsp = if timeout_ns == 0 {
        std::ptr::null()
    } else {
        &ts as *const libc::timespec
    };
    // `word` is a valid aligned u32 for the duration of the call; FUTEX_WAIT only reads it.
    // SAFETY: every pointer argument points to live memory of the size the call expects.
    unsafe {
        raw6(
            libc::SYS_futex,
            [
                word.as_ptr() as u64,
                (libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG) as u64,
                expected as u64,
                tsp as u64,
                0,
                0,
            ],
        )
    };
}

pub fn futex_wake(word: &AtomicU32, n: i32) {
    // FUTEX_WAKE only uses the address as a key.
    // SAFETY: every pointer argument points to live memory of the size the call expects.
    unsafe {
        raw6(
            libc::SYS_futex,
            [
                word.as_ptr() as u64,
                (libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG) as u64,
                n as u64,
                0,
                0,
                0,
            ],
        )
    };
}

/// `clock`'s time in ns (vDSO; clock_gettime is not one of the interposer's wrappers).
pub fn clock_ns(clock: i32) -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is a valid out-pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec.max(0) as u64 * 1_000_000_000 + ts.tv_nsec.max(0) as u64
}

pub fn now_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// Waits up to `spin_ns` for `fd` to become readable by polling it, yielding the CPU between
/// polls, rather than sleeping: on an idle core, being woken can take longer than the whole
/// wait. Async-signal-safe; returns whether it is readable.
pub fn spin_until_readable(fd: i32, spin_ns: u64) -> bool {
    let until = now_ns() + spin_ns;
    loop {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // A zero timeout never blocks.
        if poll(&mut pfd, 0) != 0 {
            return true;
        }
        if now_ns() > until {
            return false;
        }
        // SAFETY: integer arguments only.
        unsafe { raw6(libc::SYS_sched_yield, [0; 6]) };
    }
}

/// Writes all of `buf` to `fd`.
pub fn write_all(fd: i32, mut buf: &[u8]) -> bool {
    while !buf.is_empty() {
        // Raw syscall: libc's write is our own gated wrapper. buf is a valid readable slice.
        // SAFETY: every pointer argument points to live memory of the size the call expects.
        let n = unsafe {
            sys6(
                libc::SYS_write,
                [fd as u64, buf.as_ptr() as u64, buf.len() as u64, 0, 0, 0],
            )
        };
        if n < 0 && errno() == libc::EINTR {
            continue;
        }
        if n <= 0 {
            return false;
        }
        buf = &buf[n as usize..];
    }
    true
}

/// Reads exactly `buf.len()` bytes, waiting at most `timeout_ms` for each chunk.
pub fn read_exact_timeout(fd: i32, buf: &mut [u8], timeout_ms: i32) -> bool {
    let mut got = 0;
    while got < buf.len() {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let r = poll(&mut pfd, timeout_ms);
        if r < 0 && errno() == libc::EINTR {
            continue;
        }
        if r <= 0 {
            return false;
        }
        // The destination range is inside buf.
        // SAFETY: integer arguments only.
        let n = unsafe {
            sys6(
                libc::SYS_read,
                [
                    fd as u64,
                    buf[got..].as_mut_ptr() as u64,
                    (buf.len() - got) as u64,
                    0,
                    0,
                    0,
                ],
            )
        };
        if n < 0 && errno() == libc::EINTR {
            continue;
        }
        if n <= 0 {
            return false;
        }
        got += n as usize;
    }
    true
}

/// libc's function `name` (the next definition after ours), resolved once into `cell`; 0 if
/// there is none.
pub fn libc_symbol(cell: &AtomicUsize, name: &std::ffi::CStr) -> usize {
    let v = cell.load(Relaxed);
    if v != 0 {
        return v;
    }
    // SAFETY: dlsym with a NUL-terminated name.
    let p = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr()) } as usize;
    cell.store(p, Relaxed);
    p
}

/// [`libc_symbol`], or None with errno ENOSYS when libc has no such function (a wrapper then
/// fails the way the missing call would).
pub fn libc_symbol_or_enosys(cell: &AtomicUsize, name: &std::ffi::CStr) -> Option<usize> {
    match libc_symbol(cell, name) {
        0 => {
            set_errno(libc::ENOSYS);
            None
        }
        f => Some(f),
    }
}
