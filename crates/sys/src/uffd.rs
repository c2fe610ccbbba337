//! The userfaultfd ABI, in one place: the interposer creates its descriptors and registers
//! memory with them; ckptd, given them, registers, protects and answers faults. Each call acts
//! on the memory of the process that created the descriptor, whichever process makes it.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// userfaultfd(2) flag: only faults raised in user mode are reported.
pub const USER_MODE_ONLY: i32 = 1;
pub const FEATURE_EVENT_FORK: u64 = 1 << 1;
pub const FEATURE_EVENT_REMAP: u64 = 1 << 2;
pub const FEATURE_EVENT_REMOVE: u64 = 1 << 3;
pub const FEATURE_EVENT_UNMAP: u64 = 1 << 6;
pub const FEATURE_WP_UNPOPULATED: u64 = 1 << 13;
pub const FEATURE_WP_ASYNC: u64 = 1 << 15;

const UFFD_API: u64 = 0xAA;
/// `_IOWR(0xAA, 0x3F, struct uffdio_api)`, `_IOWR(0xAA, 0x00, struct uffdio_register)` and
/// friends.
const UFFDIO_API: u64 = 0xc018_aa3f;
const UFFDIO_REGISTER: u64 = 0xc020_aa00;
const UFFDIO_UNREGISTER: u64 = 0x8010_aa01;
const UFFDIO_WAKE: u64 = 0x8010_aa02;
const UFFDIO_WRITEPROTECT: u64 = 0xc018_aa06;
const UFFDIO_COPY: u64 = 0xc028_aa03;
const UFFDIO_ZEROPAGE: u64 = 0xc020_aa04;
const UFFDIO_REGISTER_MODE_MISSING: u64 = 1;
const UFFDIO_REGISTER_MODE_WP: u64 = 2;
const UFFDIO_WRITEPROTECT_MODE_WP: u64 = 1;

const UFFD_EVENT_PAGEFAULT: u8 = 0x12;
const UFFD_EVENT_FORK: u8 = 0x13;
const UFFD_EVENT_REMAP: u8 = 0x14;
const UFFD_EVENT_REMOVE: u8 = 0x15;
const UFFD_EVENT_UNMAP: u8 = 0x16;
const MSG_SIZE: usize = 32;

#[repr(C)]
struct Api {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
struct Range {
    start: u64,
    len: u64,
}

#[repr(C)]
struct Register {
    range: Range,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
struct WriteProtect {
    range: Range,
    mode: u64,
}

#[repr(C)]
struct Copy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    /// Bytes copied, or a negated errno.
    copy: i64,
}

#[repr(C)]
struct ZeroPage {
    range: Range,
    mode: u64,
    /// Bytes zero-filled, or a negated errno.
    zeropage: i64,
}

fn ioctl<T>(fd: BorrowedFd<'_>, req: u64, arg: &mut T) -> io::Result<()> {
    loop {
        // SAFETY: `arg` is the structure `req` expects; the kernel only touches that memory.
        let r = unsafe { libc::ioctl(fd.as_raw_fd(), req as _, arg as *mut T) };
        if r == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        // EAGAIN (the address space is changing: an event waits to be read) goes back to the
        // caller: repeating here could wait forever on the caller itself reading that event.
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

/// A new non-blocking, close-on-exec userfaultfd of the calling process with `features`
/// enabled (`flags`: [`USER_MODE_ONLY`] or 0). Allocates nothing.
pub fn open(flags: i32, features: u64) -> io::Result<OwnedFd> {
    // SAFETY: userfaultfd returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | libc::O_NONBLOCK | flags) } as i32;
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the fd was just created and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut api = Api {
        api: UFFD_API,
        features,
        ioctls: 0,
    };
    ioctl(fd.as_fd(), UFFDIO_API, &mut api)?;
    Ok(fd)
}

/// Registers [start, start+len) for write-protect faults.
pub fn register_wp(fd: BorrowedFd<'_>, start: u64, len: u64) -> io::Result<()> {
    let mut r = Register {
        range: Range { start, len },
        mode: UFFDIO_REGISTER_MODE_WP,
        ioctls: 0,
    };
    ioctl(fd, UFFDIO_REGISTER, &mut r)
}

fn bytes_of<T>(v: &T) -> Vec<u8> {
    // SAFETY: viewing a plain #[repr(C)] struct of integers as its bytes for its lifetime.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>()) }.to_vec()
}

/// The `ioctl` that registers [start, start+len) for write-protect, as another's system call
/// (a restorer's last steps): the request and its argument's bytes.
pub fn register_wp_call(start: u64, len: u64) -> (u64, Vec<u8>) {
    let r = Register {
        range: Range { start, len },
        mode: UFFDIO_REGISTER_MODE_WP,
        ioctls: 0,
    };
    (UFFDIO_REGISTER, bytes_of(&r))
}

/// The `ioctl` that write-protects [start, start+len), likewise.
pub fn write_protect_call(start: u64, len: u64) -> (u64, Vec<u8>) {
    let w = WriteProtect {
        range: Range { start, len },
        mode: UFFDIO_WRITEPROTECT_MODE_WP,
    };
    (UFFDIO_WRITEPROTECT, bytes_of(&w))
}

/// The `ioctl` that registers [start, start+len) for missing-page faults, as another's system
/// call (a lazy restorer's last steps).
pub fn register_missing_call(start: u64, len: u64) -> (u64, Vec<u8>) {
    let r = Register {
        range: Range { start, len },
        mode: UFFDIO_REGISTER_MODE_MISSING,
        ioctls: 0,
    };
    (UFFDIO_REGISTER, bytes_of(&r))
}

/// The descriptor of a lazy restore (`ckptctl restore --lazy`): missing-page faults of its
/// registered memory, the kernel's own included (a system call reading a page not there yet
/// waits for it), and every change to that memory's layout (forks, moves, discards, unmaps),
/// so that whoever serves it always knows which pages are still to come and where.
pub fn open_lazy() -> io::Result<OwnedFd> {
    open(
        0,
        FEATURE_EVENT_FORK | FEATURE_EVENT_REMAP | FEATURE_EVENT_REMOVE | FEATURE_EVENT_UNMAP,
    )
}

/// How a [`copy`] or [`zero`] ended: bytes filled from the start of the range (all of it, or
/// part of it when the kernel stopped), or why nothing was.
fn fill_result(ret: i32, done: i64, len: u64) -> io::Result<u64> {
    match (ret, done) {
        (0, _) => Ok(len),
        // Stopped part-way: the kernel says EAGAIN with what it did.
        (_, n) if n > 0 => Ok(n as u64),
        (_, n) if n < 0 => Err(io::Error::from_raw_os_error(-n as i32)),
        _ => Err(io::Error::last_os_error()),
    }
}

/// Copies `src` into the registered memory at `dst` (page-aligned, whole pages) and wakes
/// whoever waits there. Bytes copied from the start; errors as the kernel gives them: EEXIST
/// (the first page is there already), EAGAIN (a layout change waits to be read), ENOENT (not
/// registered there any more), ESRCH (the address space is gone).
pub fn copy(fd: BorrowedFd<'_>, dst: u64, src: &[u8]) -> io::Result<u64> {
    let mut c = Copy {
        dst,
        src: src.as_ptr() as u64,
        len: src.len() as u64,
        mode: 0,
        copy: 0,
    };
    // SAFETY: `c` is the structure UFFDIO_COPY expects; the kernel reads `src.len()` bytes of
    // `src`, which we borrow for the call.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), UFFDIO_COPY as _, &mut c as *mut Copy) };
    fill_result(r, c.copy, c.len)
}

/// Fills [dst, dst+len) with zero pages and wakes whoever waits there; results as [`copy`].
pub fn zero(fd: BorrowedFd<'_>, dst: u64, len: u64) -> io::Result<u64> {
    let mut z = ZeroPage {
        range: Range { start: dst, len },
        mode: 0,
        zeropage: 0,
    };
    // SAFETY: `z` is the structure UFFDIO_ZEROPAGE expects.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), UFFDIO_ZEROPAGE as _, &mut z as *mut ZeroPage) };
    fill_result(r, z.zeropage, len)
}

/// The tracker a program's interposer makes (asynchronous write-protect, unpopulated pages
/// too), or the user-mode-only one an unprivileged process may have.
pub fn open_tracker() -> io::Result<OwnedFd> {
    let features = FEATURE_WP_ASYNC | FEATURE_WP_UNPOPULATED;
    open(0, features).or_else(|_| open(USER_MODE_ONLY, features))
}

/// Ends the registration of [start, start+len) (the kernel clears its write-protection).
pub fn unregister(fd: BorrowedFd<'_>, start: u64, len: u64) -> io::Result<()> {
    ioctl(fd, UFFDIO_UNREGISTER, &mut Range { start, len })
}

/// Write-protects [start, start+len), or lifts the protection and wakes whoever waits on it.
pub fn write_protect(fd: BorrowedFd<'_>, start: u64, len: u64, on: bool) -> io::Result<()> {
    let mut w = WriteProtect {
        range: Range { start, len },
        mode: if on { UFFDIO_WRITEPROTECT_MODE_WP } else { 0 },
    };
    ioctl(fd, UFFDIO_WRITEPROTECT, &mut w)
}

/// Wakes the threads waiting on a fault in [start, start+len).
pub fn wake(fd: BorrowedFd<'_>, start: u64, len: u64) -> io::Result<()> {
    ioctl(fd, UFFDIO_WAKE, &mut Range { start, len })
}

/// What a userfaultfd reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A thread waits on a fault at this address.
    Fault { addr: u64 },
    /// [from, from+len) moved to `to` (mremap).
    Remap { from: u64, to: u64, len: u64 },
    /// [start, end) was discarded (madvise DONTNEED or REMOVE).
    Remove { start: u64, end: u64 },
    /// [start, end) was unmapped.
    Unmap { start: u64, end: u64 },
}

/// What a userfaultfd with [`FEATURE_EVENT_FORK`] reports: an event, or a fork of the process
/// whose registered memory the child got, registered with the new descriptor that comes with
/// it (the child waits on that one for its missing pages).
#[derive(Debug)]
pub enum Message {
    Event(Event),
    Fork(OwnedFd),
}

/// Reads the events waiting on a non-blocking userfaultfd (none: an empty list). Each one
/// read lets the thread that caused an unmap, move or discard go on.
pub fn read_events(fd: BorrowedFd<'_>) -> io::Result<Vec<Event>> {
    Ok(read_messages(fd)?
        .into_iter()
        .filter_map(|m| match m {
            Message::Event(e) => Some(e),
            // Not asked for: its descriptor is closed.
            Message::Fork(_) => None,
        })
        .collect())
}

/// [`read_events`], with forks.
pub fn read_messages(fd: BorrowedFd<'_>) -> io::Result<Vec<Message>> {
    let mut buf = [0u8; MSG_SIZE * 64];
    // SAFETY: reading into our own buffer.
    let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(Vec::new()),
            _ => Err(e),
        };
    }
    let word = |m: &[u8], i: usize| u64::from_ne_bytes(m[8 + 8 * i..16 + 8 * i].try_into().unwrap_or_default());
    let event = |m: &[u8]| match m[0] {
        UFFD_EVENT_PAGEFAULT => Some(Event::Fault { addr: word(m, 1) }),
        UFFD_EVENT_REMAP => Some(Event::Remap {
            from: word(m, 0),
            to: word(m, 1),
            len: word(m, 2),
        }),
        UFFD_EVENT_REMOVE => Some(Event::Remove {
            start: word(m, 0),
            end: word(m, 1),
        }),
        UFFD_EVENT_UNMAP => Some(Event::Unmap {
            start: word(m, 0),
            end: word(m, 1),
        }),
        _ => None,
    };
    Ok(buf[..n as usize]
        .chunks_exact(MSG_SIZE)
        .filter_map(|m| match m[0] {
            UFFD_EVENT_FORK => {
                let ufd = u32::from_ne_bytes(m[8..12].try_into().unwrap_or_default()) as i32;
                // SAFETY: the kernel installed this new descriptor in our table for us.
                Some(Message::Fork(unsafe { OwnedFd::from_raw_fd(ufd) }))
            }
            _ => event(m).map(Message::Event),
        })
        .collect())
}
