//! The metadata record of one process: everything but the page contents.

use serde::{Deserialize, Serialize};

/// One process as it was at the checkpoint instant.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcessImage {
    pub pid: i32,
    /// Its parent, group, session, terminal and unreaped children.
    pub tree: crate::tree::Tree,
    pub exe: String,
    pub args: Vec<String>,
    pub comm: String,
    pub cwd: String,
    /// The working directory when it was removed (`cwd` then ends in ` (deleted)`): made
    /// again and removed, shared with an fd of the process on the same directory.
    pub cwd_removed: Option<ckpt_kinds::deleted_dir::Record>,
    /// Its root directory (`chroot`), as ckptd sees the path; `/` for most.
    pub root: String,
    pub umask: u32,
    pub personality: u64,
    pub creds: Creds,
    /// `oom_score_adj`, `loginuid` and what `prctl` sets for the process (see
    /// [`crate::attrs`]).
    pub attrs: crate::attrs::ProcAttrs,
    pub rlimits: Vec<Rlimit>,
    pub mm: MmFields,
    pub auxv: Vec<u8>,
    pub sigactions: Vec<SigAction>,
    /// Signals pending for the whole process (bit n-1 = signal n).
    pub shared_pending: u64,
    /// The process's queue of pending signals, in queue order. A signal in `shared_pending`
    /// with no entry here had none (the kernel could not allocate one).
    pub shared_queue: Vec<QueuedSignal>,
    /// `ITIMER_REAL`, `ITIMER_VIRTUAL`, `ITIMER_PROF`: interval and value, in microseconds.
    pub itimers: [Itimer; 3],
    /// POSIX timers (`timer_create`), re-created with the same ids.
    pub posix_timers: Vec<ckpt_kinds::posix_timer::Record>,
    pub threads: Vec<ThreadImage>,
    pub mappings: Vec<Mapping>,
    /// vdso/vvar of the checkpointed process: the restorer moves the new kernel's ones there.
    pub special: Vec<SpecialMapping>,
    pub fds: Vec<FdImage>,
    /// The fd number of the interposer's control connection (re-created at restore).
    pub control_fd: i32,
    /// Address of the interposer's "restored" word, set to 1 by the restorer.
    pub restored_flag_addr: u64,
    /// Length of `pages.img`, to detect truncation before anything is mapped.
    pub pages_len: u64,
    /// Page stores the runs point into, as paths relative to the store root: the first is this
    /// checkpoint's own `pages.img`, the others belong to ancestors (or hold pages folded in
    /// when an ancestor was deleted).
    pub stores: Vec<String>,
    /// The checkpoint this one is incremental to, for this process.
    pub parent: Option<String>,
    /// fd number of the interposer's userfaultfd (dirty-page tracking), -1 if none.
    pub uffd_fd: i32,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Creds {
    pub uid: [u32; 3],
    pub gid: [u32; 3],
    pub groups: Vec<u32>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Rlimit {
    pub resource: u32,
    pub cur: u64,
    pub max: u64,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Itimer {
    pub interval_us: u64,
    pub value_us: u64,
}

/// The kernel's view of the address-space layout, restored with `PR_SET_MM_MAP`.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct MmFields {
    pub start_code: u64,
    pub end_code: u64,
    pub start_data: u64,
    pub end_data: u64,
    pub start_brk: u64,
    pub brk: u64,
    pub start_stack: u64,
    pub arg_start: u64,
    pub arg_end: u64,
    pub env_start: u64,
    pub env_end: u64,
}

/// A signal disposition in the kernel's layout.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct SigAction {
    pub signo: u32,
    pub handler: u64,
    pub flags: u64,
    pub restorer: u64,
    pub mask: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ThreadImage {
    pub tid: i32,
    pub comm: String,
    /// Address of the `ucontext` the kernel pushed when the thread was parked; the thread is
    /// resumed with `rt_sigreturn` on it, which restores every register, FPU state, the signal
    /// mask and the alternate signal stack.
    pub uc_addr: u64,
    pub fs_base: u64,
    pub gs_base: u64,
    pub robust_head: u64,
    pub robust_len: u64,
    pub clear_tid: u64,
    pub rseq_addr: u64,
    pub rseq_len: u32,
    pub rseq_sig: u32,
    /// Signals pending for this thread only.
    pub pending: u64,
    /// This thread's own queue of pending signals, in queue order (see
    /// [`ProcessImage::shared_queue`]).
    pub queue: Vec<QueuedSignal>,
    /// The interposer's control thread: resumed like the others, it then reconnects.
    pub is_control: bool,
    /// The signal it gets when its parent ends (`PR_SET_PDEATHSIG`; 0: none).
    pub pdeathsig: i32,
    /// Scheduling, affinity, I/O priority, timer slack, `no_new_privs`, seccomp filters.
    pub attrs: crate::attrs::ThreadAttrs,
    /// Its capability sets (each thread has its own).
    pub caps: Caps,
}

/// A thread's capability sets, as `/proc/PID/task/TID/status` shows them (bit n = capability
/// n). The restorer gives them back as they were: a restored program never keeps the
/// capability its restorer held to choose pids.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Caps {
    pub inheritable: u64,
    pub permitted: u64,
    pub effective: u64,
    pub bounding: u64,
    pub ambient: u64,
}

/// A queued pending signal: its `siginfo_t` as the kernel held it, queued again as is.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct QueuedSignal {
    /// The 128 bytes of the `siginfo_t` (x86_64 layout).
    pub info: Vec<u8>,
}

impl QueuedSignal {
    pub const SIZE: usize = 128;

    /// `si_signo`, 0 when the record is too short to hold one.
    pub fn signo(&self) -> i32 {
        self.info
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .map_or(0, i32::from_ne_bytes)
    }
}

pub const PROT_READ: u32 = 1;
pub const PROT_WRITE: u32 = 2;
pub const PROT_EXEC: u32 = 4;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    pub prot: u32,
    pub shared: bool,
    pub kind: MappingKind,
    /// The name shown in /proc/PID/maps, for `ckptctl show` and anonymous names.
    pub name: String,
    /// Pages whose content is in a page store (runs sorted by address).
    pub pages: Vec<PageRun>,
    /// Memory saved with the process (`Saved { shmem: true }`) that other processes of the
    /// checkpoint map too: made once at restore by ckptd and mapped by each holder.
    pub shared_with: Option<SharedMem>,
    /// Locked in memory (`mlock`, `mlockall`), locked again once its content is back.
    pub locked: crate::attrs::Locked,
    /// Registered for dirty-page tracking at the checkpoint: the restorer registers and
    /// protects it again before the program runs (see `ProcSlot::RESTORED_TRACKED`).
    pub tracked: bool,
    /// The program may make it writable (VmFlags `mw`). Only a shared file mapping can lack
    /// it (its file was opened read-only): it is mapped again from a read-only fd, one that
    /// has it from a writable fd, whatever its protection now.
    pub may_write: bool,
}

/// One piece of shared memory held by several processes of a host: `ident` names it among the
/// host's images, `pgoff` is where this mapping starts in it.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct SharedMem {
    pub ident: u64,
    pub pgoff: u64,
    /// The (device, inode) of a deleted file a process of the checkpoint also holds through
    /// an fd: the memory is that file again, not a copy of it.
    pub held: Option<(u64, u64)>,
}

impl SharedMem {
    /// The number the memory's fd is handed to the restorer under (among fd numbers, which are
    /// never negative).
    pub fn handed_as(&self) -> i32 {
        -1 - (self.ident.min(i32::MAX as u64 - 1) as i32)
    }
}

impl Mapping {
    /// For an attachment of a SysV segment, the whole range its `shmat` covers.
    pub fn sysv_attach_range(&self) -> Option<(u64, u64)> {
        match self.kind {
            MappingKind::SysvShm { attach, size, .. } => Some((attach, attach + size.div_ceil(4096) * 4096)),
            _ => None,
        }
    }
    pub fn len(&self) -> u64 {
        self.end - self.start
    }
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }
    /// Bytes this checkpoint itself stored for the mapping.
    pub fn stored_bytes(&self) -> u64 {
        self.pages.iter().filter(|r| r.store == 0).map(|r| r.len).sum()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum MappingKind {
    /// Private anonymous memory; pages never touched are not stored and come back as zero.
    Anon,
    /// The brk heap.
    Heap,
    /// The main thread's stack (grows down).
    Stack,
    /// A file mapped from disk; re-mapped from the file at restore when it is unchanged, with
    /// the privately modified pages from the page store on top.
    File(FileId),
    /// Memory whose content exists nowhere else (shared anonymous, memfd, a deleted file):
    /// every non-zero page is stored.
    Saved { shmem: bool },
    /// An attachment of SysV shared memory segment `shmid` (one of the host's
    /// [`crate::SysvImage`]) of `size` bytes, made at `attach` (the address `shmat` returned;
    /// the mapping may be a part of it), read-only (`SHM_RDONLY`: it can never be made
    /// writable) or not. The restorer attaches the segment again there and gives back the
    /// parts the program had unmapped, so the memory is the segment's own, never a copy.
    SysvShm {
        shmid: i32,
        attach: u64,
        size: u64,
        rdonly: bool,
    },
    /// The ring of a kernel AIO context (`io_setup`), whose id is the mapping's start: never
    /// stored as memory. The restorer makes the context again with this ring and moves the
    /// ring here, which makes its start the context's id again.
    AioRing(crate::aio::AioRing),
}

/// Identity of a file at checkpoint time, to refuse a restore over a changed file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileId {
    pub path: String,
    pub offset: u64,
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i128,
}

/// A run of contiguous pages stored contiguously in a page store.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct PageRun {
    pub addr: u64,
    pub len: u64,
    /// Index in [`ProcessImage::stores`] of the store holding the run (0 = this checkpoint's).
    /// Runs of a mapping are applied in order and later ones win, so an ancestor's run may be
    /// partly overwritten by a newer one; runs are clipped to their mapping at restore.
    pub store: u32,
    pub offset: u64,
    /// CRC32C of the run's bytes (uncompressed).
    pub crc: u32,
    /// Length of the run in the store when it is zstd-compressed; 0 when stored as is.
    pub clen: u64,
}

impl PageRun {
    /// Bytes the run takes in its store.
    pub fn stored_len(&self) -> u64 {
        if self.clen > 0 {
            self.clen
        } else {
            self.len
        }
    }
}

/// The kernel's own mappings of a process (vdso and its data pages): never stored, moved into
/// place at restore.
pub fn is_kernel_special(name: &str) -> bool {
    matches!(name, "[vdso]" | "[vvar]" | "[vvar_vclock]")
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SpecialMapping {
    pub name: String,
    pub start: u64,
    pub end: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FdImage {
    pub fd: i32,
    /// `F_GETFL` flags (access mode, O_APPEND, O_NONBLOCK, …).
    pub flags: i32,
    pub cloexec: bool,
    /// Another fd of this process sharing the same open file description.
    pub dup_of: Option<i32>,
    pub kind: FdKind,
    /// The locks and leases taken through it (a regular file or directory; recorded on the
    /// first fd of a description only), taken again at restore.
    pub locks: Vec<ckpt_kinds::lock::Lock>,
    /// A regular file or directory whose open file description several processes of the host
    /// hold (inherited across fork): the same number, not 0, in each. ckptd opens it once at
    /// restore and hands it to every holder, so that they share its offset (and its locks)
    /// again.
    pub shared: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum FdKind {
    /// A regular file, reopened at its offset; one open for writing has the policy of its file
    /// (see [`crate::FilePolicy`]; what the policy needs is in the host's file records), and
    /// one with the append policy is positioned at the file's end.
    File {
        path: String,
        pos: u64,
        size: u64,
        writable: bool,
        dev: u64,
        ino: u64,
        policy: Option<crate::FilePolicy>,
    },
    Dir {
        path: String,
    },
    /// A character device such as /dev/null, reopened by path.
    CharDev {
        path: String,
        rdev: u64,
    },
    /// A terminal, named FIFO or socket on stdin/stdout/stderr (a pipe there is a
    /// [`FdKind::Pipe`], a Unix socket an [`FdKind::Object`], with `stdio`): replaced at restore
    /// by the stdio of the `ckptctl restore` that brings the process back.
    Stdio {
        what: String,
    },
    /// A terminal that is not stdio, reopened by path.
    Tty {
        path: String,
    },
    /// The interposer's connection to ckptd.
    Control,
    /// The interposer's userfaultfd; the restored interposer makes a new one at this number.
    Uffd,
    /// A listening TCP socket, bound again at restore with its options, then listening with
    /// the same backlog.
    TcpListen {
        local: String,
        opts: SockOpts,
        backlog: u32,
    },
    /// A connected TCP socket. `queued` are the bytes that had arrived but were not read yet:
    /// at restore they are delivered first. `sent`/`received` are the kernel's byte counts at the
    /// checkpoint, which the manager matched between the two ends. `shutdown` holds the sides
    /// this end's program shut down (1: receive, 2: send, which sent its FIN: a half-closed
    /// connection, this end in FIN_WAIT2 and its peer in CLOSE_WAIT); the peer's FIN comes back
    /// with the peer's own `shutdown`.
    TcpConn {
        local: String,
        peer: String,
        sent: u64,
        received: u64,
        queued: Vec<u8>,
        opts: SockOpts,
        shutdown: u8,
    },
    /// A TCP socket made and perhaps bound (`local` then has its address or port), neither
    /// connected nor listening yet: made again with its options and bound again. Holders of
    /// one socket (across fork) share `ino`, its inode at the checkpoint, and share it again.
    TcpSocket {
        ino: u64,
        local: String,
        opts: SockOpts,
    },
    /// An end of a pipe. Ends with the same `ino` are one pipe. A read end carries the bytes
    /// that were buffered in the pipe. At restore the pipe is made anew; an end whose other end
    /// is not in the checkpoint comes back with that end closed (EOF or EPIPE), except a stdio
    /// end (see [`crate::StdioPeers`]).
    Pipe {
        ino: u64,
        write: bool,
        buffered: Vec<u8>,
        /// When `buffered` holds packets (written in packet mode, `O_DIRECT`), the length of
        /// each, in order (each is one `read` for the program); empty for a plain stream.
        packets: Vec<u32>,
        /// `F_GETPIPE_SZ`: the pipe's capacity in bytes (the program may have changed it).
        capacity: u32,
        /// The job's stdin, stdout or stderr (0-2) this end is: at fd 0-2, or the pipe the job
        /// was started with kept at another number (tcsh writes through fd 17). When the
        /// pipe's other end is not in the checkpoint (the user's shell, a test harness), this
        /// end is that stdio of the `ckptctl restore` instead.
        stdio: Option<u8>,
    },
    /// A UDP socket, bound (and connected) again at restore with its options and multicast
    /// memberships; datagrams in flight may be lost. `shutdown` holds the `shutdown(2)` sides
    /// (1: receive, 2: send). `kind` tells a UDP socket from an ICMP echo ("ping") socket,
    /// whose port is its echo identifier, and a raw IP socket.
    Udp {
        local: String,
        peer: Option<String>,
        opts: SockOpts,
        shutdown: u8,
        kind: DgramKind,
    },
    /// A kernel object of a kind `ckpt_kinds` handles (eventfd, epoll, Unix socket…), made once
    /// per host at restore by ckptd and handed to every holder. Holders of one object (across
    /// the host's processes) share its `ident`; `owner` marks the first, which sets up state
    /// that is shared (an epoll's interest list).
    Object {
        ident: u64,
        owner: bool,
        obj: ckpt_kinds::Object,
        /// A Unix socket at fd 0-2 (or an fd sharing its description), or the one the job was
        /// started with on stdio kept at another number: made again only when its peer is in
        /// the checkpoint, else replaced by that stdio of the `ckptctl restore` (see
        /// [`crate::StdioPeers`]).
        stdio: Option<u8>,
    },
}

/// What kind of IP datagram socket an [`FdKind::Udp`] is.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum DgramKind {
    Udp,
    /// `socket(AF_INET, SOCK_DGRAM, IPPROTO_ICMP)` or its IPv6 counterpart.
    Ping,
    /// `socket(AF_INET, SOCK_RAW, protocol)`; its holders (across fork) share `ino`, the
    /// socket's inode at the checkpoint, and share one socket again.
    Raw {
        protocol: i32,
        ino: u64,
    },
}

/// Socket options carried over to the re-created socket (their home is `ckpt_kinds::inet`).
pub use ckpt_kinds::inet::Opts as SockOpts;

impl FdKind {
    pub fn describe(&self) -> String {
        match self {
            FdKind::File {
                path,
                pos,
                policy: Some(p),
                ..
            } => format!("file {path} @{pos} ({p})"),
            FdKind::File { path, pos, .. } => format!("file {path} @{pos}"),
            FdKind::Dir { path } => format!("dir {path}"),
            FdKind::CharDev { path, .. } => format!("device {path}"),
            FdKind::Stdio { what } => format!("stdio ({what})"),
            FdKind::Tty { path } => format!("tty {path}"),
            FdKind::Control => "ckpt control socket".to_string(),
            FdKind::Uffd => "ckpt dirty-page tracker (userfaultfd)".to_string(),
            FdKind::TcpListen { local, .. } => format!("tcp listen {local}"),
            FdKind::TcpConn {
                local,
                peer,
                queued,
                shutdown,
                ..
            } => {
                let half = match shutdown & 3 {
                    0 => "",
                    1 => ", shut for reading",
                    2 => ", shut for writing",
                    _ => ", shut both ways",
                };
                format!("tcp {local} -> {peer} ({} bytes queued unread{half})", queued.len())
            }
            FdKind::TcpSocket { local, .. } => format!("tcp {local} (not connected)"),
            FdKind::Pipe {
                ino,
                write,
                buffered,
                stdio,
                ..
            } => {
                let end = if *write { "write" } else { "read" };
                let stdio = stdio.map(|n| format!(", stdio {n}")).unwrap_or_default();
                format!("pipe:[{ino}] {end} end ({} bytes buffered{stdio})", buffered.len())
            }
            FdKind::Udp {
                local,
                peer,
                opts,
                kind,
                ..
            } => {
                let kind = match kind {
                    DgramKind::Udp => "udp".to_string(),
                    DgramKind::Ping => "ping".to_string(),
                    DgramKind::Raw { protocol, .. } => format!("raw ip protocol {protocol}"),
                };
                match peer {
                    Some(p) => format!("{kind} {local} -> {p}{}", opts.describe()),
                    None => format!("{kind} {local}{}", opts.describe()),
                }
            }
            FdKind::Object {
                obj, stdio: Some(n), ..
            } => format!("{} (stdio {n})", obj.describe()),
            FdKind::Object { obj, .. } => obj.describe(),
        }
    }
}

impl FdKind {
    pub fn is_socket(&self) -> bool {
        matches!(
            self,
            FdKind::TcpListen { .. } | FdKind::TcpConn { .. } | FdKind::TcpSocket { .. } | FdKind::Udp { .. }
        )
    }

    /// A pipe or Unix socket end that is one of the job's stdio: reconnected or replaced at
    /// restore (see [`crate::StdioPeers`]).
    pub fn is_stdio_end(&self) -> bool {
        self.stdio_of().is_some()
    }

    /// Which of the job's stdin, stdout, stderr this pipe or Unix socket end is.
    pub fn stdio_of(&self) -> Option<u8> {
        match self {
            FdKind::Pipe { stdio, .. } | FdKind::Object { stdio, .. } => *stdio,
            _ => None,
        }
    }

    /// Kinds that ckptd re-creates and hands to the restorer.
    pub fn is_handed(&self) -> bool {
        self.is_socket() || matches!(self, FdKind::Pipe { .. } | FdKind::Object { .. })
    }
}

impl ProcessImage {
    pub fn stored_bytes(&self) -> u64 {
        self.mappings.iter().map(Mapping::stored_bytes).sum()
    }
    pub fn mapped_bytes(&self) -> u64 {
        self.mappings.iter().map(Mapping::len).sum()
    }
}
