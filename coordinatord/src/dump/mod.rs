//! Reading a parked process from the outside: its memory, fds and kernel state become a
//! process image in the store.

mod aio;
pub mod attrs;
mod copy;
mod fds;
pub mod host;
mod memory;
pub mod objects;
pub mod precopy;
pub mod pty;
pub mod seccomp;
pub mod shared_dirty;
pub mod shared_memory;
pub mod signals;
pub mod sockets;
pub mod state;
pub mod stdio;
pub mod sysv;
pub mod tree;
pub mod window;

use ckpt_format::{FormatError, PageStoreWriter, ProcessImage};
use ckpt_proto::slots::ProcSlot;
use ckpt_proto::Registration;
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;

#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error(
        "process {pid}: fd {fd} is {kind}, which ckpt cannot checkpoint yet; close it or run the program without it"
    )]
    UnsupportedFd { pid: i32, fd: i32, kind: String },
    #[error("process {pid}: {}", list_fds(.fds))]
    UnsupportedFds { pid: i32, fds: Vec<(i32, String)> },
    /// The kind's error is in the message, not the chain: it would be printed twice.
    #[error("process {pid}: {err}")]
    Timers { pid: i32, err: ckpt_kinds::KindError },
    #[error("process {pid}: cannot read the siginfo of its pending signals: {msg}")]
    PendingSignals { pid: i32, msg: String },
    #[error("process {pid}: cannot read its seccomp filters: {msg}")]
    Seccomp { pid: i32, msg: String },
    #[error("process {pid}: its POSIX timers changed while it was parked; try again")]
    TimersChanged { pid: i32 },
    #[error("process {pid}: a thread was inside an AIO call (io_setup, io_submit) when it was parked; try again")]
    AioBusy { pid: i32 },
    #[error("process {pid}: fd {fd}: {err}")]
    Kind {
        pid: i32,
        fd: i32,
        err: ckpt_kinds::KindError,
    },
    #[error("process {pid}: mapping {start:#x}-{end:#x} ({name}) cannot be checkpointed: {why}")]
    UnsupportedMapping {
        pid: i32,
        start: u64,
        end: u64,
        name: String,
        why: String,
    },
    /// State ckpt would not bring back exactly: the checkpoint is refused naming it.
    #[error("process {pid}: {what}, which ckpt cannot restore exactly; {advice}")]
    Refused { pid: i32, what: String, advice: String },
    #[error("process {pid}: the interposer's slots are unreadable or corrupt")]
    BadSlots { pid: i32 },
    #[error("process {pid}: its previous checkpoint's image names a page store it does not list; take a full one with `ckptctl checkpoint --full`")]
    BadBase { pid: i32 },
    #[error("process {pid}: {parked} threads parked but the kernel lists {listed}; try again")]
    ThreadMismatch { pid: i32, parked: u32, listed: usize },
    #[error("process {pid}: {0}", pid = .1)]
    Proc(#[source] ckpt_sys::procfs::ProcError, i32),
    #[error("process {pid}: reading {what}: {source}")]
    Io {
        pid: i32,
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("process {pid} {what} memory while its last-written pages were being stored; the checkpoint was given up, take it again")]
    WindowLost { pid: i32, what: String },
    #[error(transparent)]
    Format(#[from] FormatError),
}

fn list_fds(fds: &[(i32, String)]) -> String {
    let each: Vec<String> = fds.iter().map(|(fd, what)| format!("fd {fd} is {what}")).collect();
    let them = if fds.len() == 1 { "it" } else { "them" };
    format!(
        "{}, which ckpt cannot checkpoint yet; close {them} or run the program without {them}",
        each.join(", ")
    )
}

/// A process exited while it was being read: the next try's cut is taken without it.
#[derive(Debug, thiserror::Error)]
#[error("process {pid} exited while it was being read; try again")]
pub struct ExitedWhileRead {
    pub pid: i32,
}

/// Whether another try of the same checkpoint gets past `e`: memory the store window held was
/// discarded, a process exited while it was read, threads came or went while parking, a child
/// came into being too late to be in the checkpoint.
pub fn try_again(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(
            c.downcast_ref::<DumpError>(),
            Some(
                DumpError::WindowLost { .. }
                    | DumpError::ThreadMismatch { .. }
                    | DumpError::TimersChanged { .. }
                    | DumpError::AioBusy { .. }
            )
        ) || c.downcast_ref::<ExitedWhileRead>().is_some()
            || matches!(
                c.downcast_ref::<crate::node::children::StrayChild>(),
                Some(crate::node::children::StrayChild::Late { .. })
            )
    })
}

/// Whether `e` refuses fds ckpt cannot checkpoint (gathered over all processes into one message).
pub fn is_refusal(e: &anyhow::Error) -> bool {
    e.chain()
        .any(|c| matches!(c.downcast_ref::<DumpError>(), Some(DumpError::UnsupportedFds { .. })))
}

/// Maps an I/O error while reading `what` of process `pid`.
pub(crate) fn io_err(pid: i32, what: &str) -> impl Fn(std::io::Error) -> DumpError {
    let what = what.to_string();
    move |source| DumpError::Io {
        pid,
        what: what.clone(),
        source,
    }
}

/// Reads the interposer's slots out of the parked program (`mem`: its /proc/PID/mem).
fn read_slots(reg: &Registration, mem: &File) -> Result<Box<ProcSlot>, DumpError> {
    let pid = reg.pid;
    let mut buf = vec![0u8; std::mem::size_of::<ProcSlot>()];
    mem.read_exact_at(&mut buf, reg.slot_addr)
        .map_err(|source| DumpError::Io {
            pid,
            what: "interposer slots".into(),
            source,
        })?;
    ProcSlot::from_bytes(&buf).ok_or(DumpError::BadSlots { pid })
}

/// A process read while parked: its image (pages still to be written) and the copied pages.
pub struct Dumped {
    pub image: ProcessImage,
    pub store: PageStoreWriter,
    pub captured: copy::Captured,
    pub window: Option<window::Window>,
    /// What reading the window took.
    pub served: window::Served,
    /// Its /proc/PID/mem, opened once for the stop and the window.
    mem: File,
}

/// Where and how a parked process's pages are stored, and what was read of it beforehand.
pub struct PageTarget<'a> {
    /// The page store to write (created before the stop).
    pub store: PageStoreWriter,
    /// The same, relative to the store root (as images refer to stores).
    pub rel: String,
    /// The process's previous checkpoint (id, image), for an incremental one.
    pub base: Option<(&'a str, &'a ProcessImage)>,
    /// Memory copied before the stop.
    pub pre: Option<precopy::Precopy>,
    /// State read before the stop.
    pub fixed: Option<state::Fixed>,
    /// The store window the interposer handed over.
    pub window: Option<window::Fds>,
    /// Write pages while the program is stopped (the baseline mode).
    pub stop_the_world: bool,
    /// Its mappings of shared memory whose written pages are known, by start: the address
    /// ranges written since the base (see `shared_dirty`).
    pub shared: Option<&'a HashMap<u64, shared_dirty::Pages>>,
}

/// Reads a parked process: fds, kernel state and a copy of its memory.
pub fn dump_parked(
    reg: &Registration,
    mut t: PageTarget<'_>,
    reaper: &crate::node::Reaper,
) -> Result<Dumped, DumpError> {
    let pid = reg.pid;
    let t0 = std::time::Instant::now();
    let mem = File::open(format!("/proc/{pid}/mem")).map_err(io_err(pid, "memory"))?;
    let slots = &*read_slots(reg, &mem)?;
    // fds first: an unsupported one fails the checkpoint before any page is copied. All of it
    // on this thread: waking another core costs more than the work itself while the program
    // waits.
    let fds = fds::dump_fds(pid, slots.control_fd, slots.uffd_fd)?;
    let t_fds = t0.elapsed();
    // Read once: the process's attributes and its locked memory both come from it.
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(io_err(pid, "status"))?;
    let (mut image, filtered) = state::dump_state(reg, slots, t.fixed.take(), &status)?;
    signals::read_queues(reaper, &mut image, slots.park_signal)?;
    seccomp::read(reaper, &mut image, &filtered)?;
    signals::timer_signals_in_order(&image)?;
    let t_state = t0.elapsed();
    image.fds = fds;
    image.parent = t.base.map(|(id, _)| id.to_string());
    // Before the memory: reads in flight still write into it (see `aio`).
    let rings = aio::capture(reg, &mem, slots)?;
    let m = memory::dump_memory(pid, &mem, t)?;
    tracing::debug!(pid, ?t_fds, ?t_state, total = ?t0.elapsed(), "dumped");
    image.mappings = m.mappings;
    // Last: the copied pages refer to the mappings before them by index.
    image.mappings.extend(rings);
    let locked = attrs::locked(pid, &status)?;
    for m in image.mappings.iter_mut() {
        if let Some(l) = locked.get(&m.start) {
            m.locked = *l;
        }
    }
    image.special = m.special;
    image.stores = m.stores;
    Ok(Dumped {
        image,
        store: m.store,
        captured: m.captured,
        window: m.window,
        served: Default::default(),
        mem,
    })
}

impl Dumped {
    /// Whether pages were left in place, to be read by [`Dumped::serve_window`].
    pub fn has_window(&self) -> bool {
        self.window.as_ref().is_some_and(|w| !w.is_empty())
    }

    /// Right after the program runs again: reads the pages left in its store window (a
    /// thread of the program may be waiting on one of them).
    pub fn serve_window(&mut self) -> Result<(), DumpError> {
        let Some(w) = self.window.take_if(|w| !w.is_empty()) else {
            return Ok(());
        };
        let t = std::time::Instant::now();
        let bytes = w.bytes();
        self.served = w.serve(self.image.pid, &self.mem, &mut self.captured, &mut self.store)?;
        tracing::debug!(pid = self.image.pid, bytes, faults = self.served.faults, took = ?t.elapsed(), "store window read");
        Ok(())
    }

    /// After the program runs again: writes the copied pages and makes the store durable.
    pub fn finish(mut self) -> Result<ProcessImage, DumpError> {
        let t = std::time::Instant::now();
        self.captured.write(&mut self.store, &mut self.image.mappings)?;
        let written = t.elapsed();
        self.image.pages_len = self.store.finish()?;
        tracing::debug!(pid = self.image.pid, ?written, durable = ?t.elapsed(), "stored");
        Ok(self.image)
    }
}

#[cfg(test)]
mod tests {
    use super::{try_again, DumpError, ExitedWhileRead};

    #[test]
    fn failures_another_try_gets_past() {
        let lost = DumpError::WindowLost {
            pid: 1,
            what: "discarded".into(),
        };
        let threads = DumpError::ThreadMismatch {
            pid: 1,
            parked: 2,
            listed: 3,
        };
        assert!(try_again(&anyhow::Error::from(lost).context("host a")));
        assert!(try_again(&anyhow::Error::from(threads)));
        assert!(try_again(&anyhow::Error::from(ExitedWhileRead { pid: 3 })));
        let other = DumpError::BadSlots { pid: 1 };
        assert!(!try_again(&anyhow::Error::from(other)));
    }
}
