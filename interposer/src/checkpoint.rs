//! Parking: every thread stops in the park-signal handler, where the kernel has saved its
//! complete register state in a signal frame on its own stack. ckptd reads the process while it
//! is parked; a restored thread resumes by `rt_sigreturn` on that same frame.
//!
//! Everything here runs either in a signal handler or while other threads are parked (and may
//! hold the malloc lock), so it never allocates and takes no lock.

use crate::sys::{self, futex_wait, futex_wake, gettid, now_ns, raw6};
use ckpt_proto::slots::{KSigAction, ProcSlot, MAX_THREADS};
use ckpt_proto::{AppMsg, NodeMsg, ParkFailure};
use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicI32, AtomicI64, AtomicU32, AtomicU64, Ordering::*};

/// The slots ckptd reads. Written by handlers (each thread its own slot) and by the control
/// thread; read by ckptd only while every thread is parked.
pub struct Slots(UnsafeCell<ProcSlot>);
// SAFETY: concurrent writers touch disjoint slots (indices handed out by NEXT_SLOT); the
// process-wide part is written by the control thread alone.
unsafe impl Sync for Slots {}
pub static SLOTS: Slots = Slots(UnsafeCell::new(ProcSlot::new()));

impl Slots {
    pub fn addr(&self) -> u64 {
        self.0.get() as u64
    }
    fn get(&self) -> *mut ProcSlot {
        self.0.get()
    }
    /// Where the restorer writes its nonce.
    pub fn nonce_addr(&self) -> u64 {
        // SAFETY: a field address inside the static; nothing is read.
        unsafe { &raw const (*self.get()).nonce as u64 }
    }
    /// Where the list of SysV objects is (see `sysv`).
    pub fn sysv_addr(&self) -> u64 {
        // SAFETY: a field address inside the static; nothing is read.
        unsafe { &raw const (*self.get()).sysv as u64 }
    }
    pub fn sysv_overflow_addr(&self) -> u64 {
        // SAFETY: as above.
        unsafe { &raw const (*self.get()).sysv_overflow as u64 }
    }
    pub fn sem_undo_pid_addr(&self) -> u64 {
        // SAFETY: as above.
        unsafe { &raw const (*self.get()).sem_undo_pid as u64 }
    }
    /// Counts a child made by this process that does not share its memory (see
    /// [`ProcSlot::forks`]).
    pub fn count_fork(&self) {
        // SAFETY: an aligned u64 inside the static slots, only ever updated atomically.
        unsafe { AtomicU64::from_ptr(&raw mut (*self.get()).forks) }.fetch_add(1, Relaxed);
    }
    /// Where the program's `mlockall` flags and `membarrier` registrations are noted.
    pub fn mlockall_addr(&self) -> u64 {
        // SAFETY: a field address inside the static; nothing is read.
        unsafe { &raw const (*self.get()).mlockall as u64 }
    }
    pub fn membarrier_addr(&self) -> u64 {
        // SAFETY: a field address inside the static; nothing is read.
        unsafe { &raw const (*self.get()).membarrier as u64 }
    }
    /// The word the restorer sets (see [`ProcSlot::restored`]); the control thread clears it.
    pub fn take_restored(&self) -> u64 {
        // SAFETY: aligned u64 inside the static; only the control thread reads it.
        let p = unsafe { &raw mut (*self.get()).restored };
        // SAFETY: as above.
        unsafe {
            let v = p.read_volatile();
            p.write_volatile(0);
            v
        }
    }
}

pub static PARK_SIGNAL: AtomicI32 = AtomicI32::new(0);
pub static CONTROL_TID: AtomicI32 = AtomicI32::new(0);
pub static CONTROL_FD: AtomicI32 = AtomicI32::new(-1);
/// `__rseq_offset`/`__rseq_size` of glibc, when it registers rseq for its threads.
pub static RSEQ_OFFSET: AtomicI64 = AtomicI64::new(0);
pub static RSEQ_SIZE: AtomicU32 = AtomicU32::new(0);

/// A park session is open while SESSION != RELEASED.
static SESSION: AtomicU32 = AtomicU32::new(0);
static RELEASED: AtomicU32 = AtomicU32::new(0);
static PARKED: AtomicU32 = AtomicU32::new(0);
static NEXT_SLOT: AtomicU32 = AtomicU32::new(0);

const RSEQ_SIG: u32 = 0x5305_3053;
/// How long the parked control thread waits for ckptd to finish reading the process.
const DUMP_TIMEOUT_MS: i32 = 600_000;
/// How long the control thread, parked last, polls for ckptd's answer before it sleeps.
const RESUME_SPIN_NS: u64 = 20_000_000;

/// Scratch used by the control thread only.
struct Scratch {
    signaled: [i32; MAX_THREADS],
    nsignaled: usize,
    dents: [u8; 32768],
}
struct ScratchCell(UnsafeCell<Scratch>);
// SAFETY: only the control thread touches it.
unsafe impl Sync for ScratchCell {}
static SCRATCH: ScratchCell = ScratchCell(UnsafeCell::new(Scratch {
    signaled: [0; MAX_THREADS],
    nsignaled: 0,
    dents: [0; 32768],
}));

/// The park-signal handler, for every thread.
pub extern "C" fn on_park_signal(_sig: libc::c_int, _info: *mut libc::siginfo_t, uc: *mut libc::c_void) {
    let saved_errno = sys::errno();
    let tid = gettid();
    let sig = PARK_SIGNAL.load(Relaxed);
    // Whether or not a park is on (a late signal of a park given up): a thread ckptd unblocked
    // blocks the signal again, and a call it interrupted is noted. Before the frame is read,
    // so that a restored thread gets its own mask back too.
    reblock_if_asked(tid, uc);
    let noted = crate::restart::on_park(uc, sig);
    let session = SESSION.load(Acquire);
    if session != RELEASED.load(Acquire) {
        record_thread(tid, uc as u64);
        if tid == CONTROL_TID.load(Relaxed) {
            control_park(session);
        } else {
            PARKED.fetch_add(1, AcqRel);
            futex_wake(&PARKED, 1);
            loop {
                let r = RELEASED.load(Acquire);
                if r.wrapping_sub(session) as i32 >= 0 {
                    break;
                }
                futex_wait(&RELEASED, r, 0);
            }
        }
    }
    crate::restart::on_release(uc, sig, noted);
    sys::set_errno(saved_errno);
}

/// A thread that blocks the park signal itself parks only because ckptd unblocked it from
/// outside (having listed it first): it resumes with the signal blocked again, as the program
/// left it, here and in any process restored from this park.
fn reblock_if_asked(tid: i32, uc: *mut libc::c_void) {
    // SAFETY: ckptd wrote the list before it let this thread take the signal; read-only here.
    let asked = unsafe { (*SLOTS.get()).reblock.contains(&tid) };
    let sig = PARK_SIGNAL.load(Relaxed);
    if asked && sig > 0 {
        let uc = uc as *mut libc::ucontext_t;
        // SAFETY: the first 8 bytes of uc_sigmask are the kernel's mask restored by sigreturn.
        unsafe { *(&raw mut (*uc).uc_sigmask as *mut u64) |= 1u64 << (sig - 1) };
    }
}

fn record_thread(tid: i32, uc_addr: u64) {
    let idx = NEXT_SLOT.fetch_add(1, AcqRel) as usize;
    if idx >= MAX_THREADS {
        return;
    }
    let mut fs = 0u64;
    let mut gs = 0u64;
    let mut head = 0u64;
    let mut len = 0u64;
    let mut clear = 0u64;
    // SAFETY: each call writes one value through a pointer to a local of its size.
    unsafe {
        raw6(
            libc::SYS_arch_prctl,
            [0x1003 /* ARCH_GET_FS */, &mut fs as *mut u64 as u64, 0, 0, 0, 0],
        );
        raw6(
            libc::SYS_arch_prctl,
            [0x1004 /* ARCH_GET_GS */, &mut gs as *mut u64 as u64, 0, 0, 0, 0],
        );
        raw6(
            libc::SYS_get_robust_list,
            [0, &mut head as *mut u64 as u64, &mut len as *mut u64 as u64, 0, 0, 0],
        );
        raw6(
            libc::SYS_prctl,
            [
                40, /* PR_GET_TID_ADDRESS */
                &mut clear as *mut u64 as u64,
                0,
                0,
                0,
                0,
            ],
        );
    }
    let mut pdeathsig: i32 = 0;
    // SAFETY: PR_GET_PDEATHSIG writes one int into a local.
    unsafe {
        raw6(
            libc::SYS_prctl,
            [
                libc::PR_GET_PDEATHSIG as u64,
                &mut pdeathsig as *mut i32 as u64,
                0,
                0,
                0,
                0,
            ],
        );
    }
    // SAFETY: PR_GET_TIMERSLACK has no pointer argument; it returns the value.
    let timerslack = unsafe { raw6(libc::SYS_prctl, [libc::PR_GET_TIMERSLACK as u64, 0, 0, 0, 0, 0]) };
    // SAFETY: as above: no pointer arguments, the value is returned. Only the thread itself can
    // read either.
    let securebits = unsafe { raw6(libc::SYS_prctl, [libc::PR_GET_SECUREBITS as u64, 0, 0, 0, 0, 0]) };
    // SAFETY: as above.
    let mce_kill = unsafe { raw6(libc::SYS_prctl, [libc::PR_MCE_KILL_GET as u64, 0, 0, 0, 0, 0]) };
    let rseq_size = RSEQ_SIZE.load(Relaxed);
    // SAFETY: slot `idx` was handed to this thread alone by NEXT_SLOT.
    let slot = unsafe { &mut (*SLOTS.get()).threads[idx] };
    slot.timerslack_ns = timerslack.max(0) as u64;
    slot.tid = tid;
    slot.uc_addr = uc_addr;
    slot.fs_base = fs;
    slot.gs_base = gs;
    slot.robust_head = head;
    slot.robust_len = len;
    slot.clear_tid = clear;
    slot.pdeathsig = pdeathsig;
    slot.securebits = securebits.clamp(0, u16::MAX as i64) as u16;
    // The default (2) when it cannot be read: nothing to set at restore.
    slot.mce_kill = if (0..=2).contains(&mce_kill) {
        mce_kill as u16
    } else {
        2
    };
    if rseq_size > 0 {
        slot.rseq_addr = fs.wrapping_add(RSEQ_OFFSET.load(Relaxed) as u64);
        slot.rseq_len = rseq_size.max(32).div_ceil(32) * 32;
        slot.rseq_sig = RSEQ_SIG;
    } else {
        slot.rseq_addr = 0;
        slot.rseq_len = 0;
        slot.rseq_sig = 0;
    }
}

/// The control thread, in its own handler: record the process-wide state, tell ckptd, wait for
/// its verdict, release everybody.
fn control_park(session: u32) {
    let fd = CONTROL_FD.load(Relaxed);
    // SAFETY: only the control thread writes the process-wide part, and only here.
    let p = unsafe { &mut *SLOTS.get() };
    p.nthreads = NEXT_SLOT.load(Acquire).min(MAX_THREADS as u32);
    p.control_tid = CONTROL_TID.load(Relaxed);
    p.control_fd = fd;
    p.uffd_fd = crate::pages::UFFD.load(Relaxed);
    p.park_signal = PARK_SIGNAL.load(Relaxed);
    // brk(0) only queries; rt_sigaction/getitimer write into the slot arrays.
    // SAFETY: integer arguments only.
    p.brk = unsafe { raw6(libc::SYS_brk, [0; 6]) } as u64;
    for (i, sa) in p.sigactions.iter_mut().enumerate() {
        *sa = KSigAction::default();
        // SAFETY: every pointer argument points to live memory of the size the call expects.
        unsafe {
            raw6(
                libc::SYS_rt_sigaction,
                [i as u64 + 1, 0, sa as *mut KSigAction as u64, 8, 0, 0],
            )
        };
    }
    for (i, it) in p.itimers.iter_mut().enumerate() {
        // SAFETY: every pointer argument points to live memory of the size the call expects.
        unsafe { raw6(libc::SYS_getitimer, [i as u64, it as *mut _ as u64, 0, 0, 0, 0]) };
    }
    crate::timers::record(p);
    crate::aio::record(p);
    let mut subreaper: i32 = 0;
    // SAFETY: PR_GET_CHILD_SUBREAPER writes one int into a local; PR_GET_DUMPABLE returns it.
    unsafe {
        raw6(
            libc::SYS_prctl,
            [
                libc::PR_GET_CHILD_SUBREAPER as u64,
                &mut subreaper as *mut i32 as u64,
                0,
                0,
                0,
                0,
            ],
        );
        p.dumpable = raw6(libc::SYS_prctl, [libc::PR_GET_DUMPABLE as u64, 0, 0, 0, 0, 0]) as i32;
    }
    p.child_subreaper = subreaper;
    let mut buf = [0u8; 64];
    let sent = ckpt_proto::encode_small(&AppMsg::Parked { nthreads: p.nthreads }, &mut buf)
        .is_some_and(|n| sys::write_all(fd, &buf[..n]));
    if sent {
        // The stop is short: stay on the CPU to see the answer at once.
        sys::spin_until_readable(fd, RESUME_SPIN_NS);
        // Resume and Abort both let the threads go; EOF or a timeout (ckptd died) too.
        let _ = read_node_msg(fd, DUMP_TIMEOUT_MS);
    }
    // Files were copied while their writes were held; the image is taken.
    crate::gate::release_files();
    release(session);
}

fn read_node_msg(fd: i32, timeout_ms: i32) -> Option<NodeMsg> {
    let mut len = [0u8; 4];
    if !sys::read_exact_timeout(fd, &mut len, timeout_ms) {
        return None;
    }
    let n = u32::from_le_bytes(len) as usize;
    let mut buf = [0u8; 64];
    if n > buf.len() || !sys::read_exact_timeout(fd, &mut buf[..n], timeout_ms) {
        return None;
    }
    ckpt_proto::decode_small(&buf[..n])
}

fn release(session: u32) {
    RELEASED.store(session, Release);
    futex_wake(&RELEASED, i32::MAX);
}

/// Lists this process's threads into `out` with raw getdents64; returns how many.
fn list_tasks(dents: &mut [u8], out: &mut [i32; MAX_THREADS]) -> Option<usize> {
    let dfd = crate::fds::open_proc(c"self/task", libc::O_RDONLY | libc::O_DIRECTORY) as i32;
    if dfd < 0 {
        return None;
    }
    // Other threads still run while they are listed: a number of the program's (the lowest
    // free one, which a program opening a file expects to get) is held as briefly as possible.
    let dfd = crate::fds::protect(dfd);
    let mut n = 0;
    loop {
        // dents is a valid writable buffer of the given length.
        // SAFETY: integer arguments only.
        let got = unsafe {
            raw6(
                libc::SYS_getdents64,
                [dfd as u64, dents.as_mut_ptr() as u64, dents.len() as u64, 0, 0, 0],
            )
        };
        if got <= 0 {
            break;
        }
        let mut off = 0usize;
        while off + 19 < got as usize {
            let reclen = u16::from_ne_bytes([dents[off + 16], dents[off + 17]]) as usize;
            let name = &dents[off + 19..off + reclen];
            let mut tid: i32 = 0;
            let mut ok = false;
            for &c in name {
                if c == 0 {
                    break;
                }
                if !c.is_ascii_digit() {
                    ok = false;
                    break;
                }
                tid = tid.saturating_mul(10).saturating_add((c - b'0') as i32);
                ok = true;
            }
            if ok && n < out.len() {
                out[n] = tid;
                n += 1;
            }
            if reclen == 0 {
                break;
            }
            off += reclen;
        }
    }
    sys::close(dfd);
    Some(n)
}

/// Parks every thread, the calling control thread last. Returns once ckptd has read the process
/// (or gave up), with every thread running again. Must not allocate: the other threads may be
/// parked inside malloc.
pub fn park_all(timeout_ms: u32) -> Result<(), (ParkFailure, i32)> {
    let me = gettid();
    let pid = sys::getpid();
    let sig = PARK_SIGNAL.load(Relaxed);
    // SAFETY: the scratch is used by the control thread only, and this is it.
    let s = unsafe { &mut *SCRATCH.0.get() };
    let mut tasks = [0i32; MAX_THREADS];
    s.nsignaled = 0;
    // SAFETY: no thread is parked yet, so none reads the list; ckptd writes it during the park.
    unsafe { (*SLOTS.get()).reblock = [0; ckpt_proto::slots::MAX_REBLOCK] };
    NEXT_SLOT.store(0, Release);
    PARKED.store(0, Release);
    let session = RELEASED.load(Acquire).wrapping_add(1);
    SESSION.store(session, Release);
    let started = now_ns();
    let deadline = started + timeout_ms as u64 * 1_000_000;
    let mut leader_checked = false;

    let fail = |why, tid| {
        release(session);
        Err((why, tid))
    };
    loop {
        let Some(n) = list_tasks(&mut s.dents, &mut tasks) else {
            return fail(ParkFailure::Signal, me);
        };
        let mut new = false;
        let mut alive = 0u32;
        for &tid in &tasks[..n] {
            if tid == me {
                continue;
            }
            if s.signaled[..s.nsignaled].contains(&tid) {
                alive += 1;
                continue;
            }
            if s.nsignaled == MAX_THREADS {
                return fail(ParkFailure::TooManyThreads, tid);
            }
            if sys::tgkill(pid, tid, sig) == 0 {
                s.signaled[s.nsignaled] = tid;
                s.nsignaled += 1;
                alive += 1;
                new = true;
            }
        }
        let parked = PARKED.load(Acquire);
        if parked >= alive {
            if !new {
                break;
            }
            // Every thread signaled is parked already: list again at once for threads made
            // meanwhile (waiting for a wake-up that already happened would sleep the timeout).
            continue;
        }
        if now_ns() > deadline {
            let stuck = first_unparked(&s.signaled[..s.nsignaled]);
            return fail(ParkFailure::Timeout, stuck);
        }
        // A main thread that called pthread_exit stays listed, a zombie that never parks.
        if !leader_checked && now_ns() > started + LEADER_CHECK_NS {
            leader_checked = true;
            if pid != me && s.signaled[..s.nsignaled].contains(&pid) && zombie(&mut s.dents) {
                return fail(ParkFailure::LeaderExited, pid);
            }
        }
        futex_wait(&PARKED, parked, 2_000_000);
    }
    if sys::tgkill(pid, me, sig) != 0 {
        return fail(ParkFailure::Signal, me);
    }
    // The handler ran on this thread before tgkill returned: the session is over.
    Ok(())
}

/// How long parking may take before the control thread checks whether the main thread exited.
const LEADER_CHECK_NS: u64 = 20_000_000;

/// Whether this process's main thread is a zombie (read with raw calls into `buf`).
fn zombie(buf: &mut [u8]) -> bool {
    let fd = crate::fds::open_proc(c"self/stat", libc::O_RDONLY);
    if fd < 0 {
        return false;
    }
    // As in `list_tasks`: the program's threads run.
    let fd = crate::fds::protect(fd as i32) as i64;
    // SAFETY: integer arguments only.
    let n = unsafe {
        sys::sys6(
            libc::SYS_read,
            [fd as u64, buf.as_mut_ptr() as u64, buf.len() as u64, 0, 0, 0],
        )
    };
    sys::close(fd as i32);
    if n <= 0 {
        return false;
    }
    // "pid (comm) S …": the state follows the last ')'.
    let text = &buf[..n as usize];
    text.iter()
        .rposition(|&c| c == b')')
        .and_then(|i| text.get(i + 2))
        .is_some_and(|&c| c == b'Z')
}

/// A signaled thread with no slot yet: the one that did not stop.
fn first_unparked(signaled: &[i32]) -> i32 {
    // SAFETY: read-only look at slots handed out so far.
    let p = unsafe { &*SLOTS.get() };
    let n = (NEXT_SLOT.load(Acquire) as usize).min(MAX_THREADS);
    signaled
        .iter()
        .copied()
        .find(|t| !p.threads[..n].iter().any(|s| s.tid == *t))
        .unwrap_or(0)
}
