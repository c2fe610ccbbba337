//! Every message exchanged between ckpt processes.

use ckpt_format::{FileRule, FileSummary, Manifest, ProcessImage};
use serde::{Deserialize, Serialize};

/// First message on every connection to ckptd.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Hello {
    /// The interposer inside a program.
    App { version: u32 },
    /// `ckptctl` or `ckpt-run`.
    Ctl { version: u32 },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Welcome {
    Ok { version: u32 },
    Refused { reason: String },
}

/// What a program registers with: enough for ckptd to find the interposer's state in memory.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Registration {
    pub pid: i32,
    pub exe: String,
    pub args: Vec<String>,
    /// Address and size of the interposer's [`crate::slots::ProcSlot`].
    pub slot_addr: u64,
    pub slot_len: u64,
    /// fd number of this connection inside the program.
    pub control_fd: i32,
    /// The signal the interposer parks threads with.
    pub park_signal: i32,
    /// fd number of the dirty-page tracker (userfaultfd), -1 if none.
    pub uffd_fd: i32,
}

/// Interposer → ckptd.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum AppMsg {
    Register(Registration),
    /// Every thread is parked and the slots are filled; ckptd may read the process now.
    Parked {
        nthreads: u32,
    },
    /// Parking failed (a thread did not stop in time, too many threads); threads run again.
    ParkFailed {
        reason: ParkFailure,
        tid: i32,
    },
    /// Sent by the control thread of a restored process on its new connection.
    Restored {
        pid: i32,
    },
    /// Phase 1 done: the gate is shut and no send-family call is in the kernel.
    CommStopped,
    /// Every private anonymous writable mapping is registered for tracking. When the kernel
    /// allows, two fds ride along: a fresh synchronous write-protect userfaultfd for the store
    /// window, and the tracker.
    Tracked,
    /// A send stayed blocked in the kernel past the timeout; the gate is open again.
    CommStopFailed,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum ParkFailure {
    Timeout,
    TooManyThreads,
    Signal,
    /// The main thread has exited (`pthread_exit` in `main`) while the others run on.
    LeaderExited,
}

impl std::fmt::Display for ParkFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ParkFailure::Timeout => "it did not stop in time",
            ParkFailure::TooManyThreads => "the process has more threads than ckpt can park",
            ParkFailure::Signal => "the park signal could not be sent",
            ParkFailure::LeaderExited => {
                "it is the main thread and has exited while the other threads run on; ckpt cannot checkpoint such a process yet"
            }
        })
    }
}

/// ckptd → interposer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum NodeMsg {
    Registered,
    /// Phase 1: shut the communication gate and answer `CommStopped`. Writes to the files
    /// named in `hold_files` (device, inode) are held too, until the process's park ends, so
    /// that ckptd can copy them meanwhile.
    CommStop {
        timeout_ms: u32,
        hold_files: Vec<(u64, u64)>,
    },
    /// Open the gate again (the checkpoint was aborted before phase 2).
    CommResume,
    /// Park every thread (stop the world) and answer `Parked`.
    Park {
        timeout_ms: u32,
    },
    /// Before a checkpoint: register memory for dirty-page tracking and answer `Tracked`.
    Track,
    /// The process has been read: let the threads run.
    Resume,
    /// The checkpoint failed: let the threads run, nothing was taken.
    Abort,
}

/// `ckptctl` → ckptd.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum CtlRequest {
    Ping,
    /// `hold_phase1_ms` keeps every gate shut that long between the phases (a testing hook).
    /// `file_policies` override the policies of files (first match wins; before ckptd's own).
    /// `progress`: send [`CtlReply::Progress`] events before the answer.
    Checkpoint {
        hold_phase1_ms: u32,
        mode: CheckpointMode,
        file_policies: Vec<FileRule>,
        progress: bool,
    },
    List,
    Show {
        id: String,
    },
    Status,
    /// Restore checkpoint `id`; the requester's stdin, stdout and stderr ride along as fds.
    /// `file_policies`: `keep` leaves a file alone (unchecked), `snapshot` forces a rollback a
    /// check would refuse.
    Restore {
        id: String,
        file_policies: Vec<FileRule>,
        progress: bool,
        /// `--lazy`: the programs run as soon as their threads and fds are back; their private
        /// memory is brought in after (see `WaitLoaded`).
        lazy: bool,
    },
    /// After a lazy restore of `id`: wait until this host has brought in every page of it,
    /// with [`CtlReply::Progress`] events meanwhile if `progress`; answered `Loaded`, or an
    /// error when the pages could not be read (the restored processes were then killed).
    /// Answered by the local ckptd only.
    WaitLoaded {
        id: String,
        progress: bool,
    },
    Delete {
        id: String,
    },
    /// `ckptctl restore --attach`, once `Restored` came back on this connection: follow the
    /// processes the restore of `id` brought back on this host. The connection then carries
    /// [`JobEvent`]s from ckptd and [`JobControl`]s from ckptctl until the job has ended;
    /// closing it detaches (the job runs on).
    Attach {
        id: String,
    },
}

/// ckptd → an attached `ckptctl restore`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum JobEvent {
    /// The processes waited for, lowest pid first: the job ends when all have exited, with the
    /// status of the first.
    Attached { pids: Vec<i32> },
    /// Nothing to attach to (no restore of that id here).
    Refused { message: String },
    /// One process of the job exited with this wait status.
    Exited { pid: i32, status: i32 },
    /// Every process of the job has exited; `status` is the first one's wait status.
    Ended { pid: i32, status: i32 },
    /// The pages of a lazy restore could not all be brought in: the job was killed.
    LoadFailed { message: String },
}

/// An attached `ckptctl restore` → ckptd.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum JobControl {
    /// Send `sig` to every process of the job still running (a signal ckptctl caught, or
    /// SIGSTOP/SIGCONT for the shell's job control).
    Signal { sig: i32 },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointSummary {
    pub id: String,
    pub parent: Option<String>,
    pub created_unix_ms: u64,
    pub processes: u32,
    pub stored_bytes: u64,
    pub duration_us: u64,
}

impl From<&Manifest> for CheckpointSummary {
    fn from(m: &Manifest) -> Self {
        Self {
            id: m.id.clone(),
            parent: m.parent.clone(),
            created_unix_ms: m.created_unix_ms,
            processes: m.processes().count() as u32,
            stored_bytes: m.stored_bytes(),
            duration_us: m.duration_us,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcessStatus {
    pub host: String,
    pub pid: i32,
    pub exe: String,
    pub args: Vec<String>,
    pub threads: u32,
    /// `Some(n)` for a process brought back by `ckptctl restore` from checkpoint n.
    pub restored_from: Option<String>,
    /// Percent of its pages brought in so far, while a lazy restore still loads them.
    pub loading: Option<u8>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointReport {
    pub id: String,
    pub processes: u32,
    pub stored_bytes: u64,
    pub duration_us: u64,
    /// The longest time any process had its threads parked.
    pub max_stop_us: u64,
    /// When the first process was parked (µs since the Unix epoch).
    pub first_parked_at_us: u64,
    /// The longest time any process had its communication gate shut.
    pub max_held_us: u64,
    /// The longest time storing a host's pages took after its programs ran again.
    pub max_store_us: u64,
    /// Bytes read from store windows once the programs ran again, and the pages of them a
    /// program's thread waited for.
    pub window_bytes: u64,
    pub window_faults: u64,
    /// Time to stop communication everywhere (phase 1).
    pub phase1_us: u64,
    /// Time of the local checkpoints (phase 2).
    pub phase2_us: u64,
}

/// ckptd → `ckptctl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum CtlReply {
    Pong {
        version: u32,
    },
    Checkpointed(CheckpointReport),
    List(Vec<CheckpointSummary>),
    Show {
        manifest: Manifest,
        images: Vec<(String, ProcessImage)>,
    },
    Status(Vec<ProcessStatus>),
    Restored {
        id: String,
        pids: Vec<i32>,
        /// What the restore did to files (rolled back, cut back, left, set aside), one line each.
        files: Vec<String>,
    },
    Deleted {
        id: String,
    },
    /// Every page of lazy restore `id` is in (`bytes` of them) on this host.
    Loaded {
        id: String,
        bytes: u64,
    },
    Error {
        message: String,
    },
    /// Where a checkpoint or restore that asked for progress is; any number of these come
    /// before its answer.
    Progress(Progress),
}

/// Where a checkpoint or a restore is. Checkpoint: `Phase1` (communication stops, memory is
/// copied while the programs run), `Parking`, `Reading` (the parked programs), `Storing` (pages
/// written while they run again), `Committing`. Restore: `CheckingFiles` (images, pids and
/// files checked), `MakingObjects` (files put back, sockets, pipes, shared memory made),
/// `LoadingPages` (the restorers read the images), `Running` (the programs are back, their
/// control connections awaited). A checkpoint tried again starts over at `Phase1`. After a lazy
/// restore, `LoadingLazily`: the programs run while their pages come in (`WaitLoaded`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Phase {
    Phase1,
    Parking,
    Reading,
    Storing,
    Committing,
    CheckingFiles,
    MakingObjects,
    LoadingPages,
    Running,
    LoadingLazily,
}

impl Phase {
    /// Its name in `ckptctl --json` events.
    pub fn key(self) -> &'static str {
        match self {
            Phase::Phase1 => "phase1",
            Phase::Parking => "parking",
            Phase::Reading => "reading",
            Phase::Storing => "storing",
            Phase::Committing => "committing",
            Phase::CheckingFiles => "checking-files",
            Phase::MakingObjects => "making-objects",
            Phase::LoadingPages => "loading-pages",
            Phase::Running => "running",
            Phase::LoadingLazily => "loading-lazily",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Phase::Phase1 => "phase 1",
            Phase::CheckingFiles => "checking files",
            Phase::MakingObjects => "making objects",
            Phase::LoadingPages => "loading pages",
            Phase::LoadingLazily => "loading pages lazily",
            other => other.key(),
        })
    }
}

/// One node's progress in the request it is answering (node → manager).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeProgress {
    pub phase: Phase,
    /// Bytes of pages stored (checkpoint) or loaded (restore) so far.
    pub done_bytes: u64,
    /// What `done_bytes` ends at, once known.
    pub total_bytes: Option<u64>,
}

/// The progress of a whole checkpoint or restore, gathered from every node (ckptd → ckptctl).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Progress {
    /// The phase of the node furthest behind.
    pub phase: Phase,
    /// Summed over the nodes; never decreases within one try of a checkpoint.
    pub done_bytes: u64,
    /// Known once every node that reported knows its own.
    pub total_bytes: Option<u64>,
    /// Bytes per second since this phase began.
    pub rate_bytes_per_s: u64,
    /// Since the request arrived.
    pub elapsed_ms: u64,
    /// Nodes that reported so far.
    pub hosts: u32,
}

/// How a checkpoint stores memory.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct CheckpointMode {
    /// Store every page, not only those written since the previous checkpoint.
    pub full: bool,
    /// The plain baseline: no copy before the stop, pages written to disk while parked.
    pub stop_the_world: bool,
    /// Copy what was written last while the programs are parked, without a store window
    /// (the manager's second try after a program discarded memory the window held).
    pub no_window: bool,
}

/// One end of a TCP connection as phase 1 saw it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConnEnd {
    pub pid: i32,
    pub fd: i32,
    pub local: String,
    pub peer: String,
    /// Bytes the program handed to the kernel.
    pub sent: u64,
    /// Bytes that arrived at its host.
    pub received: u64,
}

/// One TCP end to re-create at restore. An end with `local < peer` accepts the new connection
/// (on `acceptor`), the other end connects.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RestoreEnd {
    pub local: String,
    pub peer: String,
    pub acceptor: Option<String>,
}

/// What the manager decided for one end: connect to the peer's acceptor, accept, or come back
/// closed (the peer is not in the checkpoint).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum EndPlan {
    Connect { to: String },
    Accept,
    Closed,
}

/// Manager → node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ToNode {
    Phase1 {
        id: String,
        mode: CheckpointMode,
        file_policies: Vec<FileRule>,
    },
    /// For each (local, peer) end of this node, the bytes its peer has sent.
    Phase2 {
        id: String,
        expect: Vec<(String, String, u64)>,
    },
    Finish {
        id: String,
        commit: bool,
    },
    Status,
    RestorePrepare {
        id: String,
        file_policies: Vec<FileRule>,
        lazy: bool,
    },
    RestoreConnect {
        id: String,
        plan: Vec<(String, String, EndPlan)>,
    },
    RestoreAbort {
        id: String,
    },
}

/// Node → manager.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum FromNode {
    Phase1Done {
        ends: Vec<ConnEnd>,
    },
    Phase2Done {
        processes: Vec<ckpt_format::ProcessEntry>,
        files: Vec<FileSummary>,
    },
    Done,
    Status(Vec<ProcessStatus>),
    RestorePrepared {
        ends: Vec<RestoreEnd>,
    },
    Restored {
        pids: Vec<i32>,
        files: Vec<String>,
    },
    /// `again`: another try of the same checkpoint gets past this failure (memory the store
    /// window held was discarded, a process exited while parked, threads changed).
    Failed {
        message: String,
        again: bool,
    },
    /// Sent any number of times before the answer to `Phase1`, `Phase2`, `RestorePrepare` and
    /// `RestoreConnect`.
    Progress(NodeProgress),
}

/// First message on a TCP connection to the manager.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum PeerHello {
    /// A node joining the cluster.
    Node { version: u32, host: String },
    /// A node forwarding a `ckptctl` request.
    Ctl { version: u32, host: String },
}

/// The manager's answer: a challenge to prove knowledge of the cluster secret.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Challenge {
    Nonce { version: u32, nonce: Vec<u8> },
    Refused { reason: String },
}

/// The peer's proof (HMAC of the manager's nonce) and its own nonce for the manager.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Proof {
    pub mac: Vec<u8>,
    pub nonce: Vec<u8>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum AuthResult {
    /// The manager's proof over the peer's nonce.
    Accepted {
        mac: Vec<u8>,
    },
    Refused {
        reason: String,
    },
}

/// Restorer ← ckptd, on the control socket before anything else: re-created sockets for the
/// program, with the fd numbers they take (the fds ride along).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SocketFds {
    pub numbers: Vec<i32>,
    pub last: bool,
}

/// Restorer ← ckptd, after the sockets: how the host's process tree is made (see
/// `ckpt_format::tree`). Every step but `Go` is answered with a [`TreeAnswer`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum TreeStep {
    /// Fork a child restorer as `pid`, which restores with arguments `argv`; five fds ride
    /// along: its stdio 0-2, its status pipe and its control socket.
    Fork {
        pid: i32,
        exit_signal: i32,
        setsid: bool,
        lead_group: bool,
        argv: Vec<String>,
    },
    /// Every child is forked: build the program up to its first instruction.
    Build,
    /// Fork a child that ends at once with `status` (a zombie), in its session and group.
    Zombie {
        pid: i32,
        comm: String,
        exit_signal: i32,
        setsid: bool,
        lead_group: bool,
        join: Option<i32>,
        status: i32,
    },
    /// Join process group `pgid` (its leader exists by now).
    Join { pgid: i32 },
    /// As a session leader, take terminal `tty_nr` back as the controlling one, with group
    /// `foreground` in front.
    Terminal { tty_nr: u64, foreground: Option<i32> },
    /// Become the program.
    Go,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum TreeAnswer {
    Done,
    Failed { message: String },
}
