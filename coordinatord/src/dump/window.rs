//! The store window. What a program wrote in the last moments before its stop is not copied
//! while it waits: each long written range moves from the tracker to a synchronous
//! write-protect userfaultfd and stays in place, protected. Once the program runs again those
//! pages are read in order, and a write to one not read yet puts it first: the writing thread
//! waits for that page alone. The image is still the memory at the stop instant.
//!
//! The program's own unmapping, moving or discarding of a range not read yet would take pages
//! the image needs; the kernel reports each to the window, and the checkpoint is then given up
//! (the program is not affected). Dropping the window closes ckptd's descriptor, the only one:
//! the kernel then ends every registration and wakes every waiter, even if ckptd dies. The
//! ranges are registered with the tracker again before the next checkpoint, which therefore
//! reads them in full.

use super::copy::{read_runs, Batch, Captured, Pool, WalkError};
use super::{io_err, DumpError};
use ckpt_format::{PageStoreWriter, PAGE_SIZE};
use ckpt_sys::uffd::{self, Event};
use std::collections::HashSet;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};

/// Written ranges closer than this are taken together, with the pages between them (read
/// again, harmlessly: same contents).
const GAP: u64 = 64 << 10;
/// A range at least this long, at least a quarter written, is protected rather than copied
/// during the stop: moving it to the window (two page-table walks, about 0.1 s per GiB here)
/// costs about a third of copying it, but every range may split a mapping in the kernel.
const MIN_RUN: u64 = 2 << 20;
const MAX_RUNS: usize = 64;
/// Read per step: a writer waits at most about this long for its page to be taken (with steps
/// four times longer, a program rewriting 1 GiB got a third as many writes through).
const CHUNK: u64 = 64 << 10;
/// Steps read into one buffer before it goes to the store.
const BUFFER: usize = 16 << 20;

/// The descriptors a program's interposer hands over before a checkpoint.
pub struct Fds {
    window: OwnedFd,
    tracker: OwnedFd,
}

impl Fds {
    /// From the fds that came with `Tracked`: the window, then the tracker.
    pub fn new(mut fds: Vec<OwnedFd>) -> Option<Fds> {
        if fds.len() != 2 {
            return None;
        }
        let tracker = fds.pop()?;
        let window = fds.pop()?;
        Some(Fds { window, tracker })
    }
}

/// Address ranges [start, end).
type Ranges = Vec<(u64, u64)>;

struct Deferred {
    /// Index of the mapping in the image.
    mapping: usize,
    start: u64,
    end: u64,
}

/// Ranges of a stopped process left in place, write-protected, to be read once it runs.
pub struct Window {
    fds: Fds,
    deferred: Vec<Deferred>,
    pool: Pool,
}

/// What serving a window took.
#[derive(Debug, Default)]
pub struct Served {
    pub bytes: u64,
    /// Pages a program thread waited for.
    pub faults: u64,
}

impl Window {
    pub fn new(fds: Fds) -> Self {
        Window {
            fds,
            deferred: Vec::new(),
            pool: Pool::default(),
        }
    }

    /// Reads into these buffers first.
    pub fn with_pool(self, pool: Pool) -> Self {
        Window { pool, ..self }
    }

    pub fn is_empty(&self) -> bool {
        self.deferred.is_empty()
    }

    pub fn bytes(&self) -> u64 {
        self.deferred.iter().map(|d| d.end - d.start).sum()
    }

    /// While the program is parked: protects in the window the long, dense stretches of
    /// `written` (sorted, merged ranges of mapping number `mapping` that hold data: the window
    /// reads all it takes, so a stretch is at least a quarter data). Returns the rest, to be
    /// copied now, and the stretches, which the window stores whole.
    pub fn defer(&mut self, mapping: usize, written: Ranges) -> (Ranges, Ranges) {
        // (start, end, bytes written, index of its first written range)
        let mut stretches: Vec<(u64, u64, u64, usize)> = Vec::new();
        for (i, &(s, e)) in written.iter().enumerate() {
            match stretches.last_mut() {
                Some(st) if s - st.1 <= GAP => {
                    st.1 = e;
                    st.2 += e - s;
                }
                _ => stretches.push((s, e, e - s, i)),
            }
        }
        let (mut rest, mut taken) = (Vec::new(), Vec::new());
        for (k, &(s, e, bytes, first)) in stretches.iter().enumerate() {
            let last = stretches.get(k + 1).map_or(written.len(), |n| n.3);
            let worth = e - s >= MIN_RUN && bytes * 4 >= e - s && self.deferred.len() < MAX_RUNS;
            if worth && self.protect(s, e).is_ok() {
                self.deferred.push(Deferred {
                    mapping,
                    start: s,
                    end: e,
                });
                taken.push((s, e));
            } else {
                rest.extend_from_slice(&written[first..last]);
            }
        }
        (rest, taken)
    }

    /// Moves [s, e) from the tracker to the window. A failure part way leaves it untracked
    /// (read in full next time) and it is copied now.
    fn protect(&self, s: u64, e: u64) -> std::io::Result<()> {
        uffd::unregister(self.fds.tracker.as_fd(), s, e - s)?;
        uffd::register_wp(self.fds.window.as_fd(), s, e - s)?;
        uffd::write_protect(self.fds.window.as_fd(), s, e - s, true)
    }

    /// Once the program runs again: reads every deferred page into `captured`, a page a thread
    /// waits for before the rest, lifting the protection behind the reading.
    pub fn serve(
        mut self,
        pid: i32,
        mem: &File,
        captured: &mut Captured,
        store: &mut PageStoreWriter,
    ) -> Result<Served, DumpError> {
        let mut st = State {
            pid,
            mem,
            next: self.deferred.iter().map(|d| d.start).collect(),
            early: HashSet::new(),
            served: Served::default(),
        };
        let mut pool = std::mem::take(&mut self.pool);
        for (i, d) in self.deferred.iter().enumerate() {
            let mut buf = Batch {
                data: pool.take(BUFFER),
                runs: Vec::new(),
            };
            let mut used = 0usize;
            while st.next[i] < d.end {
                st.answer(&self, captured, store)?;
                let (s, e) = (st.next[i], (st.next[i] + CHUNK).min(d.end));
                if used + (e - s) as usize > buf.data.len() {
                    buf.data.truncate(used);
                    let full = std::mem::replace(
                        &mut buf,
                        Batch {
                            data: pool.take(BUFFER),
                            runs: Vec::new(),
                        },
                    );
                    captured.take(d.mapping, full, store)?;
                    st.served.bytes += used as u64;
                    used = 0;
                }
                used = st.read_into(s, e, &mut buf, used)?;
                // Read before any discard of it could happen (a discard waits for its event to
                // be read): the range counts as read even if an event must be read first.
                st.next[i] = e;
                while !release(&self, pid, s, e)? {
                    st.answer(&self, captured, store)?;
                    std::thread::yield_now();
                }
            }
            buf.data.truncate(used);
            st.served.bytes += used as u64;
            if !buf.runs.is_empty() {
                captured.take(d.mapping, buf, store)?;
            }
        }
        // Every page is read and released: dropping the window (closing the only descriptor)
        // ends its registrations and lets any event still queued go.
        Ok(st.served)
    }
}

/// Lifts the protection of [s, e) once read, waking its waiters; false when the address space
/// is changing (an event waits to be read first; then try again). The range must still be the
/// window's: if it was unmapped or moved, what was just read may not be its pages.
fn release(w: &Window, pid: i32, s: u64, e: u64) -> Result<bool, DumpError> {
    match uffd::write_protect(w.fds.window.as_fd(), s, e - s, false) {
        Ok(()) => Ok(true),
        Err(err) => match err.raw_os_error() {
            Some(libc::EAGAIN) => Ok(false),
            Some(libc::ENOENT) => Err(DumpError::WindowLost {
                pid,
                what: "unmapped or moved".into(),
            }),
            _ => Err(io_err(pid, "the store window")(err)),
        },
    }
}

/// Progress through a window.
struct State<'a> {
    pid: i32,
    mem: &'a File,
    /// Per deferred range: where reading in order has reached.
    next: Vec<u64>,
    /// Pages taken ahead of that, for a writer.
    early: HashSet<u64>,
    served: Served,
}

impl State<'_> {
    /// Whether page `addr` of deferred range `i` still waits to be read.
    fn unread(&self, w: &Window, i: usize, addr: u64) -> bool {
        addr >= self.next[i] && addr < w.deferred[i].end && !self.early.contains(&addr)
    }

    /// The deferred range holding `addr`.
    fn find(w: &Window, addr: u64) -> Option<usize> {
        w.deferred.iter().position(|d| d.start <= addr && addr < d.end)
    }

    /// Handles what the window reported: a waiting writer gets its page read and released; a
    /// range that lost pages not read yet ends the checkpoint.
    fn answer(&mut self, w: &Window, captured: &mut Captured, store: &mut PageStoreWriter) -> Result<(), DumpError> {
        let fd = w.fds.window.as_fd();
        // Pages read for a waiting writer whose release must wait for an event to be read.
        let mut unreleased: Vec<u64> = Vec::new();
        loop {
            let events = uffd::read_events(fd).map_err(io_err(self.pid, "the store window"))?;
            let mut still = Vec::new();
            for page in unreleased.drain(..) {
                if !release(w, self.pid, page, page + PAGE_SIZE)? {
                    still.push(page);
                }
            }
            unreleased = still;
            if events.is_empty() {
                if unreleased.is_empty() {
                    return Ok(());
                }
                std::thread::yield_now();
                continue;
            }
            for ev in events {
                match ev {
                    Event::Fault { addr } => {
                        let page = addr & !(PAGE_SIZE - 1);
                        match Self::find(w, page).filter(|&i| self.unread(w, i, page)) {
                            Some(i) => {
                                let mut batch = Batch {
                                    data: vec![0; PAGE_SIZE as usize],
                                    runs: Vec::new(),
                                };
                                self.read_into(page, page + PAGE_SIZE, &mut batch, 0)?;
                                captured.take(w.deferred[i].mapping, batch, store)?;
                                self.early.insert(page);
                                self.served.faults += 1;
                                self.served.bytes += PAGE_SIZE;
                                if !release(w, self.pid, page, page + PAGE_SIZE)? {
                                    unreleased.push(page);
                                }
                            }
                            // Read already: the thread faulted just before its page was released.
                            None => {
                                let _ = uffd::wake(fd, page, PAGE_SIZE);
                            }
                        }
                    }
                    // Discarding is reported before the pages go, unmapping and moving after;
                    // a read that raced with either fails, or its release does (see `release`).
                    Event::Remove { start, end } => self.lost(w, "discarded", start, end)?,
                    Event::Unmap { start, end } => self.lost(w, "unmapped", start, end)?,
                    Event::Remap { from, len, .. } => self.lost(w, "moved", from, from + len)?,
                }
            }
        }
    }

    /// Fails if [s, e) overlaps what is still to be read of a deferred range.
    fn lost(&self, w: &Window, what: &str, s: u64, e: u64) -> Result<(), DumpError> {
        let hit = w
            .deferred
            .iter()
            .enumerate()
            .any(|(i, d)| s < d.end && e > self.next[i]);
        if hit {
            tracing::debug!(
                pid = self.pid,
                what,
                start = format_args!("{s:#x}"),
                end = format_args!("{e:#x}"),
                "store window lost pages"
            );
            return Err(DumpError::WindowLost {
                pid: self.pid,
                what: what.to_string(),
            });
        }
        Ok(())
    }

    /// Reads [s, e), without the pages taken early, into `b` from byte `at` on (it has room);
    /// returns where the next bytes go.
    fn read_into(&self, s: u64, e: u64, b: &mut Batch, mut at: usize) -> Result<usize, DumpError> {
        let mut p = s;
        while p < e {
            if self.early.contains(&p) {
                p += PAGE_SIZE;
                continue;
            }
            let mut end = p + PAGE_SIZE;
            while end < e && !self.early.contains(&end) {
                end += PAGE_SIZE;
            }
            let len = (end - p) as usize;
            read_runs(self.pid, self.mem, &[(p, len as u64)], &mut b.data[at..at + len]).map_err(|e| {
                // Gone before it could be read: unmapped (a thread's stack handed back) or the
                // whole process exited. What it held at the stop is lost to this try.
                let gone = |what: &str| DumpError::WindowLost {
                    pid: self.pid,
                    what: what.into(),
                };
                match &e {
                    WalkError::Io(_, src) if src.raw_os_error() == Some(libc::ESRCH) => gone("exited, taking"),
                    WalkError::Io(_, src) if matches!(src.raw_os_error(), Some(libc::EIO | libc::EFAULT)) => {
                        gone("unmapped")
                    }
                    _ => e.into_dump(self.pid),
                }
            })?;
            b.runs.push((p, at, len));
            at += len;
            p = end;
        }
        Ok(at)
    }
}
