//! The page management unit's in-process half: a userfaultfd in asynchronous write-protect
//! mode, and the registration of the program's private writable memory with it (anonymous,
//! and private file mappings), and of its shared memory that lives only in memory (shared
//! anonymous memory, memfds).
//! ckptd reads and re-arms the written pages from the outside (PAGEMAP_SCAN on
//! /proc/PID/pagemap); the kernel drops a registration when a mapping is moved or replaced, so
//! such memory is stored in full at the next checkpoint.
//!
//! `register_all` runs on the control thread before each checkpoint; a range registered then
//! reads as entirely written until ckptd arms it while reading it. It allocates nothing.
//!
//! `window` makes a second userfaultfd, in synchronous mode, for ckptd alone: memory written
//! just before a stop moves to it while its pages are stored, so that a write to one of them
//! waits for that page to be copied. The program keeps no descriptor of it; when ckptd closes
//! its own (or dies), the kernel drops every registration and wakes every waiter.

use ckpt_sys::uffd;
use std::cell::UnsafeCell;
use std::os::fd::{BorrowedFd, IntoRawFd};
use std::sync::atomic::{AtomicI32, Ordering::*};

pub static UFFD: AtomicI32 = AtomicI32::new(-1);

/// Creates the tracking userfaultfd; -1 when the kernel cannot (tracking is then off and every
/// checkpoint is full).
pub fn create() -> i32 {
    // An unprivileged program may only watch its own user-mode faults; that is enough to track
    // writes, which async write-protect resolves in the kernel whoever writes.
    uffd::open_tracker().map_or(-1, IntoRawFd::into_raw_fd)
}

/// A userfaultfd for one store window (see the module's comment); -1 when the kernel cannot,
/// and ckptd then copies what was written last while the program is stopped. Unmapping,
/// moving or discarding its memory is reported to it, so that ckptd knows when pages it has
/// not stored yet are gone.
pub fn window() -> i32 {
    // Unpopulated pages are protected too: a page absent at the stop must read as absent.
    // Never user-mode only: a system call writing to a protected page must wait for it, not
    // fail.
    let features = uffd::FEATURE_EVENT_REMAP
        | uffd::FEATURE_EVENT_REMOVE
        | uffd::FEATURE_EVENT_UNMAP
        | uffd::FEATURE_WP_UNPOPULATED;
    uffd::open(0, features).map_or(-1, IntoRawFd::into_raw_fd)
}

/// After a restore whose restorer could not arm a tracker: a new one at the fd number the
/// program's image recorded (the restorer left a placeholder there).
pub fn recreate() {
    let old = UFFD.load(Acquire);
    let new = create();
    if old >= 0 && new >= 0 && new != old {
        // Onto our own recorded number, then the temporary goes.
        crate::sys::dup3(new, old, libc::O_CLOEXEC);
        crate::sys::close(new);
    } else if new >= 0 {
        UFFD.store(new, Release);
    }
}

struct Buf(UnsafeCell<[u8; 65536]>);
// SAFETY: used by the control thread only, inside its park handler.
unsafe impl Sync for Buf {}
static MAPS: Buf = Buf(UnsafeCell::new([0; 65536]));

fn hex(s: &[u8]) -> Option<u64> {
    let mut v: u64 = 0;
    if s.is_empty() {
        return None;
    }
    for &c in s {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => return None,
        };
        v = v.checked_mul(16)?.checked_add(d as u64)?;
    }
    Some(v)
}

/// One line of /proc/self/maps: registers it if it is private writable memory, anonymous or
/// of a file.
fn consider(line: &[u8], uffd: i32) {
    let mut fields = line.split(|&c| c == b' ').filter(|f| !f.is_empty());
    let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
        return;
    };
    let path = fields.nth(3).unwrap_or(b"");
    let anon = path.is_empty() || path == b"[heap]" || path == b"[stack]" || path.starts_with(b"[anon:");
    // A private file mapping's pages copied on write are its own data (.data, a file mapped
    // MAP_PRIVATE and written): async write-protect tracks any kind of memory.
    let deleted = fields.any(|f| f == b"(deleted)");
    let file = path.starts_with(b"/") && !path.starts_with(b"/dev/") && !deleted;
    // Shared memory that exists only in memory (shared anonymous memory, a memfd): the kernel
    // keeps write-protection per page table, so ckptd joins what each process that maps it
    // wrote (see its `dump::shared_dirty`).
    let shmem = deleted && (path == b"/dev/zero" || path.starts_with(b"/memfd:"));
    let private = perms == b"rw-p" && (anon || file);
    let shared = (perms == b"rw-s" || perms == b"r--s") && shmem;
    if !(private || shared) || path == ckpt_proto::RESTORER_VMA_NAME.as_bytes() {
        return;
    }
    let Some(dash) = range.iter().position(|&c| c == b'-') else {
        return;
    };
    let (Some(start), Some(end)) = (hex(&range[..dash]), hex(&range[dash + 1..])) else {
        return;
    };
    // SAFETY: `uffd` is the tracker, open for the whole call.
    let uffd = unsafe { BorrowedFd::borrow_raw(uffd) };
    // Failure leaves the range untracked: it is stored in full.
    let _ = uffd::register_wp(uffd, start, end - start);
}

/// Registers every private writable mapping, anonymous or of a file, and every mapping of
/// shared anonymous memory or a memfd (already registered ones stay so).
pub fn register_all() {
    let uffd = UFFD.load(Acquire);
    if uffd < 0 {
        return;
    }
    let fd = crate::fds::open_proc(c"self/maps", libc::O_RDONLY) as i32;
    if fd < 0 {
        return;
    }
    // The program's threads run: the lowest free number, which a program opening a file
    // expects to get, is held only until the fd moves up, not for the whole read.
    let fd = crate::fds::protect(fd);
    // SAFETY: only the control thread uses the buffer.
    let buf = unsafe { &mut *MAPS.0.get() };
    let mut have = 0usize;
    loop {
        // SAFETY: reading into the free tail of our buffer.
        let n = unsafe { libc::syscall(libc::SYS_read, fd, buf[have..].as_mut_ptr(), buf.len() - have) };
        if n <= 0 {
            if have > 0 {
                consider(&buf[..have], uffd);
            }
            break;
        }
        have += n as usize;
        let mut from = 0;
        while let Some(nl) = buf[from..have].iter().position(|&c| c == b'\n') {
            consider(&buf[from..from + nl], uffd);
            from += nl + 1;
        }
        buf.copy_within(from..have, 0);
        have -= from;
        if have == buf.len() {
            // A line longer than the buffer: skip it.
            have = 0;
        }
    }
    crate::sys::close(fd);
}
