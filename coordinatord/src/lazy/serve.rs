//! Serving one lazily restored process: its userfaultfd, and those of the children it forks
//! while pages are still missing (each child's memory is its parent's, missing where the
//! parent's was). One thread reads their events first, always: a missing page gets its
//! neighbourhood copied at once, a page that holds nothing a zero page, a layout change
//! updates what is still to come (discarded and unmapped pages are never filled, moved ones are
//! filled where they went). Between events, pages are copied in address order. Once nothing is
//! left to copy anywhere, the descriptors are closed, after the guard's copies: the kernel
//! then forgets the registrations, and later faults are ordinary ones.

use super::guard::Link;
use super::pending::Pending;
use super::source::Source;
use super::Group;
use anyhow::{anyhow, Context};
use ckpt_format::PAGE_SIZE;
use ckpt_sys::uffd::{self, Event, Message};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

/// Copied around a faulting page (within its run): the pages next to it are likely next.
const FAULT_WINDOW: u64 = 64 << 10;
/// Copied per step in the background, so that a fault waits at most for one such step.
const SLICE: u64 = 256 << 10;
/// Zero pages given at once for a fault where nothing is stored (fresh memory the program
/// takes in a registered range).
const ZERO_WINDOW: u64 = 64 << 10;

/// One address space: the process's, or a child's it forked while loading.
struct Space {
    /// 0 for the process's own, then in the order of the forks (as the guard knows them).
    id: u64,
    fd: OwnedFd,
    /// Its process exited or exec'd: nothing will ever use it again.
    gone: bool,
    pending: Pending,
    /// A copy ran into a layout change not read yet: its events first.
    blocked: bool,
    /// Faults to answer again once the events are read.
    retry: Vec<u64>,
}

pub struct Server {
    pub pid: i32,
    /// Until the blob has registered the memory (a byte on this pipe), there is nothing to copy
    /// into; its end without a byte: the restore failed before.
    ready: Option<OwnedFd>,
    source: Source,
    spaces: Vec<Space>,
    group: Arc<Group>,
    guard: Option<Arc<Link>>,
    total: u64,
    turn: usize,
    /// A testing hook: the background waits this long (for events) after each [`SLICE`] it
    /// copied.
    delay_ms: i32,
    /// Bytes the background copied since it last waited.
    since_wait: u64,
    seen: Seen,
}

/// What the program did while it loaded, for the log.
#[derive(Debug, Default)]
struct Seen {
    faults: u64,
    zero_faults: u64,
    forks: u64,
    moves: u64,
    discards: u64,
}

/// How a copy into a space ended.
enum Step {
    Done,
    /// A layout change is waiting to be read.
    Blocked,
    /// The address space is gone (the process exited or exec'd).
    Gone,
}

fn page_of(addr: u64) -> u64 {
    addr & !(PAGE_SIZE - 1)
}

impl Server {
    pub fn new(
        pid: i32,
        fd: OwnedFd,
        ready: OwnedFd,
        source: Source,
        group: Arc<Group>,
        guard: Option<Arc<Link>>,
    ) -> Self {
        let pending = Pending::new(source.ranges());
        let total = pending.bytes();
        if let Some(g) = &guard {
            g.watch(pid, fd.as_fd());
        }
        Self {
            pid,
            ready: Some(ready),
            source,
            spaces: vec![Space {
                id: 0,
                fd,
                gone: false,
                pending,
                blocked: false,
                retry: Vec::new(),
            }],
            group,
            guard,
            total,
            turn: 0,
            delay_ms: 0,
            since_wait: 0,
            seen: Seen::default(),
        }
    }

    pub fn slowed(mut self, d: Duration) -> Self {
        self.delay_ms = d.as_millis().min(10_000) as i32;
        self
    }

    pub fn total(&self) -> u64 {
        self.total
    }

    /// Serves until every page is in, or fails (the group's processes are then killed).
    pub fn run(mut self) {
        let t0 = std::time::Instant::now();
        let r = self.serve();
        match &r {
            Ok(false) => tracing::info!(pid = self.pid, "lazy restore: the program never ran"),
            Ok(true) => tracing::info!(
                pid = self.pid,
                bytes = self.total,
                took = ?t0.elapsed(),
                seen = ?self.seen,
                "lazy restore: every page is in"
            ),
            Err(e) => self.group.fail(self.pid, e),
        }
        self.release();
        self.group.server_ended(self.pid, r.is_ok());
    }

    /// Whether the program ran (the blob registered its memory).
    fn serve(&mut self) -> anyhow::Result<bool> {
        loop {
            let work = self.ready.is_none() && self.spaces.iter().any(|s| !s.pending.is_empty() && !s.blocked);
            let wait = match work {
                true if self.since_wait >= SLICE => {
                    self.since_wait = 0;
                    self.delay_ms
                }
                true => 0,
                false => 5,
            };
            if !self.events(wait)? {
                // Nothing is left to load into.
                return Ok(false);
            }
            if self.spaces.iter().all(|s| s.pending.is_empty()) {
                return Ok(true);
            }
            self.prune();
            if self.ready.is_some() {
                continue;
            }
            self.background()?;
            self.group.progress(self.pid, self.spaces[0].pending.bytes());
        }
    }

    /// Reads and answers what every space reported, waiting up to `timeout_ms` for something.
    /// False when the blob ended without registering the memory.
    fn events(&mut self, timeout_ms: i32) -> anyhow::Result<bool> {
        let mut pfds: Vec<libc::pollfd> = self
            .spaces
            .iter()
            .map(|s| s.fd.as_raw_fd())
            .chain(self.ready.as_ref().map(|r| r.as_raw_fd()))
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: pfds is a valid array of pollfds for the call.
        let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, timeout_ms) };
        if n < 0 {
            return Ok(true);
        }
        if let (Some(r), Some(p)) = (&self.ready, pfds.get(self.spaces.len())) {
            if p.revents != 0 {
                let mut b = [0u8; 1];
                // SAFETY: reading one byte into our buffer.
                let got = unsafe { libc::read(r.as_raw_fd(), b.as_mut_ptr().cast(), 1) };
                match got {
                    1 => self.ready = None,
                    0 => return Ok(false),
                    _ => {}
                }
            }
        }
        for (i, p) in pfds.iter().enumerate().take(self.spaces.len()) {
            if p.revents == 0 {
                continue;
            }
            let msgs = uffd::read_messages(self.spaces[i].fd.as_fd())
                .with_context(|| format!("reading the userfaultfd of pid {}", self.pid))?;
            for m in msgs {
                self.answer(i, m)?;
            }
            self.spaces[i].blocked = false;
            for addr in std::mem::take(&mut self.spaces[i].retry) {
                self.fault(i, addr)?;
            }
        }
        Ok(true)
    }

    fn answer(&mut self, i: usize, m: Message) -> anyhow::Result<()> {
        match m {
            Message::Event(Event::Fault { addr }) => self.fault(i, addr)?,
            Message::Fork(fd) => {
                self.seen.forks += 1;
                let id = self.seen.forks;
                // The child's memory is missing where the parent's is now: nothing could be
                // copied into the parent since the fork began (copies wait for this event).
                if let Some(g) = &self.guard {
                    g.forked(self.pid, id, fd.as_fd());
                }
                let mut pending = self.spaces[i].pending.clone();
                if i == 0 {
                    self.not_inherited(&mut pending);
                }
                self.spaces.push(Space {
                    id,
                    fd,
                    gone: false,
                    pending,
                    blocked: false,
                    retry: Vec::new(),
                });
            }
            Message::Event(Event::Remap { from, to, len }) => {
                self.seen.moves += 1;
                self.spaces[i].pending.moved(from, to, len)
            }
            Message::Event(Event::Remove { start, end } | Event::Unmap { start, end }) => {
                self.seen.discards += 1;
                self.spaces[i].pending.remove(start, end)
            }
        }
        Ok(())
    }

    /// A thread of space `i` waits for the page at `addr`.
    fn fault(&mut self, i: usize, addr: u64) -> anyhow::Result<()> {
        let page = page_of(addr);
        let step = match self.spaces[i].pending.find(page) {
            Some((s, e, orig)) => {
                self.seen.faults += 1;
                let (seg, seg_start, seg_end) = self.segment(orig)?;
                // The window around the page, within its range and its segment (where that
                // lies now: its content may have moved).
                let lo = (page & !(FAULT_WINDOW - 1))
                    .max(s)
                    .max(page.saturating_sub(orig - seg_start));
                let hi = (lo + FAULT_WINDOW).min(e).min(page + (seg_end - orig));
                self.copy(i, lo, hi, seg, orig - (page - lo))?
            }
            None => {
                self.seen.zero_faults += 1;
                self.zero(i, page)?
            }
        };
        match step {
            Step::Blocked => {
                self.spaces[i].blocked = true;
                self.spaces[i].retry.push(addr);
            }
            Step::Done | Step::Gone => {}
        }
        Ok(())
    }

    /// Closes the descriptors of the children that ended (or exec'd), the guard's copies too:
    /// a program forking many short-lived children would hold one each until the end.
    fn prune(&mut self) {
        let guard = self.guard.clone();
        let pid = self.pid;
        self.spaces.retain(|sp| {
            let drop = sp.gone && sp.id != 0;
            if let (true, Some(g)) = (drop, &guard) {
                g.gone(pid, sp.id);
            }
            !drop
        });
    }

    /// A child does not get the memory its parent marked `MADV_DONTFORK`, and gets that marked
    /// `MADV_WIPEONFORK` empty: nothing of either is to load into it. (The parent waits in its
    /// fork until the event is read, its memory as it was when the child's was copied.)
    fn not_inherited(&self, pending: &mut Pending) {
        let flags = ckpt_sys::procfs::vm_flags(self.pid, |e| !e.shared).unwrap_or_default();
        let maps = ckpt_sys::procfs::maps(self.pid).unwrap_or_default();
        for e in maps {
            let marked = flags
                .get(&e.start)
                .is_some_and(|f| f.iter().any(|x| x == "dc" || x == "wf"));
            if marked {
                pending.remove(e.start, e.end);
            }
        }
    }

    /// The segment of checkpoint address `orig`: index, start, end.
    fn segment(&self, orig: u64) -> anyhow::Result<(usize, u64, u64)> {
        self.source
            .segment_at(orig)
            .ok_or_else(|| anyhow!("internal: no stored page for {orig:#x} of pid {}", self.pid))
    }

    /// One slice of the lowest pages still to come, of the next space in turn.
    fn background(&mut self) -> anyhow::Result<()> {
        let n = self.spaces.len();
        for k in 0..n {
            let i = (self.turn + k) % n;
            let sp = &self.spaces[i];
            if sp.blocked {
                continue;
            }
            let Some((s, e, orig)) = sp.pending.first() else {
                continue;
            };
            self.turn = i + 1;
            let (seg, _, seg_end) = self.segment(orig)?;
            let hi = e.min(s + (seg_end - orig)).min(s + SLICE);
            self.since_wait += hi - s;
            if let Step::Blocked = self.copy(i, s, hi, seg, orig)? {
                self.spaces[i].blocked = true;
            }
            return Ok(());
        }
        Ok(())
    }

    /// Copies [s, e) of space `i` (pending, within segment `seg`, `orig` the checkpoint address
    /// of s).
    fn copy(&mut self, i: usize, s: u64, e: u64, seg: usize, orig: u64) -> anyhow::Result<Step> {
        let data = self.source.data(seg, orig, orig + (e - s))?;
        let sp = &mut self.spaces[i];
        let mut at = s;
        // A copy must lie within one mapping: once one has crossed a boundary (the program
        // split the memory, with mprotect say), the rest goes page by page.
        let mut whole = true;
        while at < e {
            let off = (at - s) as usize;
            let len = if whole { (e - at) as usize } else { PAGE_SIZE as usize };
            match uffd::copy(sp.fd.as_fd(), at, &data[off..off + len]) {
                Ok(n) if n > 0 => {
                    sp.pending.remove(at, at + n);
                    at += n;
                }
                Ok(_) => return Err(anyhow!("pid {}: the kernel copied nothing at {at:#x}", self.pid)),
                Err(err) => match err.raw_os_error() {
                    // There already: nothing to load, wake whoever waits.
                    Some(libc::EEXIST) => {
                        sp.pending.remove(at, at + PAGE_SIZE);
                        let _ = uffd::wake(sp.fd.as_fd(), at, PAGE_SIZE);
                        at += PAGE_SIZE;
                    }
                    Some(libc::EAGAIN) => return Ok(Step::Blocked),
                    Some(libc::ENOENT) if whole && len > PAGE_SIZE as usize => whole = false,
                    // Not registered there (any more): nothing of it is ours to fill; a
                    // thread that waited there tries again without us.
                    Some(libc::ENOENT) => {
                        sp.pending.remove(at, at + PAGE_SIZE);
                        let _ = uffd::wake(sp.fd.as_fd(), at, PAGE_SIZE);
                        at += PAGE_SIZE;
                    }
                    Some(libc::ESRCH) => {
                        sp.pending.clear();
                        sp.gone = true;
                        return Ok(Step::Gone);
                    }
                    _ => return Err(anyhow!("cannot copy pages into pid {} at {at:#x}: {err}", self.pid)),
                },
            }
        }
        Ok(Step::Done)
    }

    /// A fault where nothing is stored: zero pages, up to the next page still to come.
    fn zero(&mut self, i: usize, page: u64) -> anyhow::Result<Step> {
        let sp = &mut self.spaces[i];
        let end = sp.pending.next_start(page).unwrap_or(u64::MAX).min(page + ZERO_WINDOW);
        let mut r = uffd::zero(sp.fd.as_fd(), page, end - page);
        if matches!(&r, Err(e) if e.raw_os_error() == Some(libc::ENOENT)) && end - page > PAGE_SIZE {
            // The window crossed the end of the mapping.
            r = uffd::zero(sp.fd.as_fd(), page, PAGE_SIZE);
        }
        match r {
            Ok(_) => Ok(Step::Done),
            Err(err) => match err.raw_os_error() {
                Some(libc::EAGAIN) => Ok(Step::Blocked),
                Some(libc::EEXIST) | Some(libc::ENOENT) => {
                    let _ = uffd::wake(sp.fd.as_fd(), page, PAGE_SIZE);
                    Ok(Step::Done)
                }
                Some(libc::ESRCH) => {
                    sp.pending.clear();
                    sp.gone = true;
                    Ok(Step::Gone)
                }
                _ => Err(anyhow!("cannot give pid {} a zero page at {page:#x}: {err}", self.pid)),
            },
        }
    }

    /// Lets go of the descriptors: the guard's copies first (answering faults meanwhile), so
    /// that closing ours releases them.
    fn release(&mut self) {
        if let Some(g) = self.guard.take() {
            g.release(self.pid);
            for _ in 0..1000 {
                if g.released(self.pid, Duration::ZERO) {
                    break;
                }
                if !matches!(self.events(5), Ok(true)) {
                    break;
                }
            }
        }
        self.spaces.clear();
    }
}
