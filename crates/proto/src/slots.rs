//! The interposer's parking slots: plain memory inside the program that its signal handler fills
//! without allocating, and that ckptd reads through /proc/PID/mem once the program is parked.
//! The layout is a contract between the two sides, so it lives here with the rest of the wire
//! format.

/// Threads a process may have for a checkpoint to be taken.
pub const MAX_THREADS: usize = 1024;
/// Threads whose park signal ckptd may unblock in one park (see [`ProcSlot::reblock`]).
pub const MAX_REBLOCK: usize = 64;
/// POSIX timers a process may have for a checkpoint to be taken.
pub const MAX_TIMERS: usize = 64;
/// `ntimers` when the process has more POSIX timers than fit, or their list was unreadable.
pub const TIMERS_OVERFLOW: u32 = u32::MAX;
/// SysV IPC objects a process may note (see [`ProcSlot::sysv`]); more set `sysv_overflow`.
pub const MAX_SYSV: usize = 256;
/// Kernel AIO contexts (`io_setup`) a process may note (see [`ProcSlot::aio`]); more set
/// `aio_overflow`, and the checkpoint refuses the contexts that did not fit.
pub const MAX_AIO: usize = 64;
/// Changed with the layout: a process restored from an older layout is refused, not misread.
pub const SLOT_MAGIC: u64 = 0x3654_4c53_5450_4b43; // "CKPTSLT6"

/// What kind of SysV object an entry of [`ProcSlot::sysv`] names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SysvKind {
    Shm = 1,
    Sem = 2,
    Msg = 3,
}

impl SysvKind {
    /// The entry for object `id` of this kind (never 0, the empty entry).
    pub const fn entry(self, id: i32) -> u64 {
        ((self as u64) << 32) | id as u32 as u64
    }

    /// The kind and id an entry names; None for an empty or unknown one.
    pub fn decode(entry: u64) -> Option<(SysvKind, i32)> {
        let id = entry as u32 as i32;
        let kind = match entry >> 32 {
            1 => SysvKind::Shm,
            2 => SysvKind::Sem,
            3 => SysvKind::Msg,
            _ => return None,
        };
        (id >= 0).then_some((kind, id))
    }
}

/// One parked thread.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct ThreadSlot {
    pub tid: i32,
    pub flags: u32,
    /// Address of the kernel's `ucontext` for the parking signal, on the thread's stack.
    pub uc_addr: u64,
    pub fs_base: u64,
    pub gs_base: u64,
    pub robust_head: u64,
    pub robust_len: u64,
    pub clear_tid: u64,
    pub rseq_addr: u64,
    pub rseq_len: u32,
    pub rseq_sig: u32,
    /// `PR_GET_PDEATHSIG` of the thread (0: none).
    pub pdeathsig: i32,
    /// `PR_GET_SECUREBITS` of the thread.
    pub securebits: u16,
    /// `PR_MCE_KILL_GET` of the thread (0 late, 1 early, 2 the system's default).
    pub mce_kill: u16,
    /// `PR_GET_TIMERSLACK` of the thread, in ns.
    pub timerslack_ns: u64,
}

/// A signal disposition as `rt_sigaction` returns it.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct KSigAction {
    pub handler: u64,
    pub flags: u64,
    pub restorer: u64,
    pub mask: u64,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct Itimerval {
    pub interval_sec: i64,
    pub interval_usec: i64,
    pub value_sec: i64,
    pub value_usec: i64,
}

/// One POSIX timer (`timer_create`) as `timer_gettime` and `timer_getoverrun` give it at the
/// park; how it notifies comes from /proc/PID/timers.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct TimerSlot {
    pub id: i32,
    pub overrun: i32,
    pub value_ns: u64,
    pub interval_ns: u64,
}

/// One kernel AIO context the program made (`io_setup`), noted by the interposer's wrappers: the
/// kernel shows neither what `io_setup` was asked for nor how many requests are in flight.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct AioSlot {
    /// The context's id, which is its ring's address; 0: a free entry, 1: one being filled.
    pub ctx: u64,
    /// Requests `io_submit` took for the context since it was made (the system call's results,
    /// summed). Every request ends as one event in the ring, so the requests in flight are this
    /// less the ring's tail, modulo the ring's size.
    pub submitted: u64,
    /// Threads inside the interposer's `io_submit` code (between `aio_code[0]` and
    /// `aio_code[4]`) for this context: ckptd finds each among the parked threads by its
    /// registers, or tries again.
    pub armed: u64,
    /// What `io_setup` was asked for (the kernel counts it in `fs.aio-nr`).
    pub nr_events: u32,
    /// Set at the park when the context is one of the process's own (an `io_submit` of no
    /// request on it succeeded): a forked child maps its parent's rings but has no context.
    pub live: u32,
}

/// The process-wide part, followed in memory by the thread slots.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ProcSlot {
    pub magic: u64,
    /// Set by the restorer (1, or [`ProcSlot::RESTORED_TRACKED`] when it armed a new
    /// dirty-page tracker before the program ran); the control thread sees it when it
    /// resumes.
    pub restored: u64,
    /// Set by the restorer to a value no earlier restore used: threads resuming a timed call
    /// learn from it that they were restored (their deadlines then start again).
    pub nonce: u64,
    pub nthreads: u32,
    pub control_tid: i32,
    /// The interposer's own descriptors and park signal as they are at this park (a program
    /// can make the descriptors move; see the interposer's `fds`).
    pub control_fd: i32,
    pub uffd_fd: i32,
    pub park_signal: i32,
    /// Threads (tids, 0 = unused) that block the park signal themselves: ckptd unblocked it
    /// from outside so that they could park, and they block it again as they resume.
    pub reblock: [i32; MAX_REBLOCK],
    pub brk: u64,
    pub sigactions: [KSigAction; 64],
    pub itimers: [Itimerval; 3],
    pub ntimers: u32,
    pub timers: [TimerSlot; MAX_TIMERS],
    pub threads: [ThreadSlot; MAX_THREADS],
    /// SysV objects the program obtained or used ([`SysvKind::entry`]; 0 = free), noted by the
    /// interposer's wrappers as the program runs and inherited by its forked children; an
    /// object the program removes (`IPC_RMID`) is forgotten.
    pub sysv: [u64; MAX_SYSV],
    /// Set when an object did not fit in `sysv`.
    pub sysv_overflow: u32,
    /// The pid of the process when it made a semaphore operation with `SEM_UNDO` (the kernel
    /// keeps undo entries per process, unseen from outside; a forked child has none, and its
    /// pid differs).
    pub sem_undo_pid: i32,
    /// Children this process has made that do not share its memory (`fork`, `_Fork`, `clone`
    /// without `CLONE_VM`), counted since it started: a child that wrote to shared memory and
    /// is gone took the record of its writes (its page tables) with it, and ckptd tells from
    /// this count that one may be gone.
    pub forks: u64,
    /// `PR_GET_CHILD_SUBREAPER` and `PR_GET_DUMPABLE` at the park.
    pub child_subreaper: i32,
    pub dumpable: i32,
    /// The flags of the program's last `mlockall` (0 after `munlockall`), noted by the
    /// interposer's wrappers: the kernel shows `MCL_FUTURE` nowhere.
    pub mlockall: i32,
    /// `membarrier` registrations the program made through `syscall()` (bit `n`: command
    /// `1 << n`), noted by the interposer: the kernel shows them nowhere.
    pub membarrier: u32,
    /// The program's AIO contexts (see [`AioSlot`]), noted by the interposer's wrappers. A
    /// forked child keeps the list, which tells the rings it maps from its parent (the kernel
    /// copies the mappings, not the contexts) from rings made unseen.
    pub aio: [AioSlot; MAX_AIO],
    /// Set when a context did not fit in `aio`.
    pub aio_overflow: u32,
    /// Threads inside the interposer's `io_setup` between its system call and noting the
    /// context: a ring with no entry then may be one being noted.
    pub aio_setup_busy: u32,
    /// Addresses in the interposer's `io_submit` code, set at the park: where the context's
    /// `armed` count has been raised, where the system call has returned (its result in rax),
    /// the instruction that adds it to `submitted`, the one that lowers `armed`, and the end.
    pub aio_code: [u64; 5],
}

impl ProcSlot {
    pub const fn new() -> Self {
        const T: ThreadSlot = ThreadSlot {
            tid: 0,
            flags: 0,
            uc_addr: 0,
            fs_base: 0,
            gs_base: 0,
            robust_head: 0,
            robust_len: 0,
            clear_tid: 0,
            rseq_addr: 0,
            rseq_len: 0,
            rseq_sig: 0,
            pdeathsig: 0,
            securebits: 0,
            mce_kill: 0,
            timerslack_ns: 0,
        };
        const S: KSigAction = KSigAction {
            handler: 0,
            flags: 0,
            restorer: 0,
            mask: 0,
        };
        const I: Itimerval = Itimerval {
            interval_sec: 0,
            interval_usec: 0,
            value_sec: 0,
            value_usec: 0,
        };
        Self {
            magic: SLOT_MAGIC,
            restored: 0,
            nonce: 0,
            nthreads: 0,
            control_tid: 0,
            control_fd: -1,
            uffd_fd: -1,
            park_signal: 0,
            reblock: [0; MAX_REBLOCK],
            brk: 0,
            sigactions: [S; 64],
            itimers: [I; 3],
            ntimers: 0,
            timers: [TimerSlot {
                id: 0,
                overrun: 0,
                value_ns: 0,
                interval_ns: 0,
            }; MAX_TIMERS],
            threads: [T; MAX_THREADS],
            sysv: [0; MAX_SYSV],
            sysv_overflow: 0,
            sem_undo_pid: 0,
            forks: 0,
            child_subreaper: 0,
            dumpable: 0,
            mlockall: 0,
            membarrier: 0,
            aio: [AioSlot {
                ctx: 0,
                submitted: 0,
                armed: 0,
                nr_events: 0,
                live: 0,
            }; MAX_AIO],
            aio_overflow: 0,
            aio_setup_busy: 0,
            aio_code: [0; 5],
        }
    }

    /// Offset of `restored`, poked by the restorer.
    pub const RESTORED_OFFSET: u64 = std::mem::offset_of!(ProcSlot, restored) as u64;
    /// `restored` when the restorer armed the tracker: every page the program writes from its
    /// first instruction on shows, so its next checkpoint is incremental to the restored one.
    pub const RESTORED_TRACKED: u64 = 2;
    /// Offset of `nonce`, poked by the restorer.
    pub const NONCE_OFFSET: u64 = std::mem::offset_of!(ProcSlot, nonce) as u64;
    /// Offset of `reblock`, written by ckptd while the process parks.
    pub const REBLOCK_OFFSET: u64 = std::mem::offset_of!(ProcSlot, reblock) as u64;
    /// Offset of `sysv`, read by ckptd at the park.
    pub const SYSV_OFFSET: u64 = std::mem::offset_of!(ProcSlot, sysv) as u64;

    /// Offset of `forks`, read by ckptd at the park.
    pub const FORKS_OFFSET: u64 = std::mem::offset_of!(ProcSlot, forks) as u64;

    /// Offset of `aio`: the address of entry `i` in the program is the slot's address plus
    /// this plus `i` times the size of an [`AioSlot`].
    pub const AIO_OFFSET: u64 = std::mem::offset_of!(ProcSlot, aio) as u64;

    /// Rebuilds a slot from the bytes read out of the program's memory.
    pub fn from_bytes(bytes: &[u8]) -> Option<Box<ProcSlot>> {
        if bytes.len() < std::mem::size_of::<ProcSlot>() {
            return None;
        }
        let mut slot = Box::new(ProcSlot::new());
        // SAFETY: ProcSlot is repr(C) plain data (integers only), so any byte pattern of the right
        // length is a valid value; the source has at least size_of::<ProcSlot>() bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                (&mut *slot as *mut ProcSlot).cast::<u8>(),
                std::mem::size_of::<ProcSlot>(),
            )
        };
        (slot.magic == SLOT_MAGIC).then_some(slot)
    }
}

impl Default for ProcSlot {
    fn default() -> Self {
        Self::new()
    }
}
