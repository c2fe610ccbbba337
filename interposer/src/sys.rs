//! Raw system calls used while threads are parked: no allocation, no locks, errno untouched
//! where the caller cares.

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering::Relaxed};

pub fn gettid() -> i32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

pub fn getpid() -> i32 {
    // SAFETY: getpid has no preconditions.
    unsafe { libc::getpid() }
}

pub fn tgkill(pid: i32, tid: i32, sig: i32) -> i64 {
    // SAFETY: sending a signal has no memory-safety preconditions.
    unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, sig) }
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
    // SAFETY: `word` is a valid aligned u32 for the duration of the call; FUTEX_WAIT only reads it.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            expected,
            tsp,
        );
    }
}

pub fn futex_wake(word: &AtomicU32, n: i32) {
    // SAFETY: FUTEX_WAKE only uses the address as a key.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            n,
        );
    }
}

pub fn now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
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
        // SAFETY: pfd is a valid pollfd; a zero timeout never blocks.
        if unsafe { libc::poll(&mut pfd, 1, 0) } != 0 {
            return true;
        }
        if now_ns() > until {
            return false;
        }
        // SAFETY: sched_yield has no arguments.
        unsafe { libc::sched_yield() };
    }
}

/// Writes all of `buf` to `fd`.
pub fn write_all(fd: i32, mut buf: &[u8]) -> bool {
    while !buf.is_empty() {
        // Raw syscall: libc's write is our own gated wrapper.
        // SAFETY: buf is a valid readable slice.
        let n = unsafe { libc::syscall(libc::SYS_write, fd, buf.as_ptr(), buf.len()) };
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
        // SAFETY: pfd is a valid pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
        if r < 0 && errno() == libc::EINTR {
            continue;
        }
        if r <= 0 {
            return false;
        }
        // SAFETY: the destination range is inside buf.
        let n = unsafe { libc::syscall(libc::SYS_read, fd, buf[got..].as_mut_ptr(), buf.len() - got) };
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
