//! Lazy restore (`ckptctl restore --lazy`), ckptd's part. The restorers map the programs'
//! private anonymous memory empty and hand ckptd a userfaultfd registered over it (see the
//! restorer's `lazy`); ckptd serves it from before the programs run: one thread per process
//! copies the pages in from the page stores, at once where a thread waits for one, else in
//! address order (see `serve`). A guard process holds copies of the descriptors so that the
//! programs never see a page missing as a zero page if ckptd ends first (see `guard`).
//!
//! While a load runs on this host, a checkpoint waits for it (reading the memory through
//! /proc/PID/mem would fail on the pages still missing), and the checkpoints it reads cannot
//! be deleted. Should a page store not give a page back (a store truncated or damaged since
//! the restore began), every process of the restore on this host is killed, and the one line
//! that says why is what `ckptctl restore --lazy` ends with.

mod guard;
mod pending;
mod serve;
mod source;

use anyhow::{anyhow, bail, Context};
use ckpt_format::{PageStoreReader, ProcessImage};
use ckpt_proto::lazy::LazyHandover;
use ckpt_proto::{CtlReply, Phase, Progress};
use std::collections::HashMap;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How long the restorer may take to hand its memory over once told to build.
const HANDOVER_TIMEOUT: Duration = Duration::from_secs(60);
/// Loads that ended are remembered this many at a time (for `WaitLoaded` and attach).
const KEPT: usize = 16;
/// Progress events at most this often.
const TICK: Duration = Duration::from_millis(200);

/// The lazy restores of this host, loading or ended lately.
#[derive(Default)]
pub struct Loads {
    groups: Mutex<Vec<Arc<Group>>>,
    /// A testing hook: background loading waits this long between slices.
    pub test_delay: Duration,
}

/// One lazy restore on this host.
pub struct Group {
    pub id: String,
    /// Checkpoints whose page stores it reads.
    reads: Vec<String>,
    /// Every process the restore brings back on this host: killed together should a page of
    /// any of them not be readable.
    pids: Vec<i32>,
    restorer: PathBuf,
    test_delay: Duration,
    /// Where each process's lazy pages are, worked out while its restorer starts (many runs
    /// take a while), from its page stores opened when the restore was prepared: deleting a
    /// checkpoint's files does not take them away from the load.
    sources: Mutex<HashMap<i32, std::thread::JoinHandle<anyhow::Result<Planned>>>>,
    guard: Mutex<Option<Arc<guard::Link>>>,
    state: Mutex<State>,
    cv: Condvar,
}

/// A process's lazy memory as ckptd expects the restorer to register it, and its pages.
struct Planned {
    ranges: Vec<(u64, u64)>,
    source: source::Source,
}

/// The plan of a process's lazy load, being worked out (see [`plan`]).
pub struct Plan(std::thread::JoinHandle<anyhow::Result<Planned>>);

/// Works out, on a thread of its own, where the pages of `img`'s lazy memory are in its page
/// stores (`readers`, by store index, held open from now on): an image of a program that wrote
/// while it was checkpointed has a run per few pages, and the work goes on while the restore
/// is made.
pub fn plan(img: &ProcessImage, readers: Vec<PageStoreReader>) -> anyhow::Result<Plan> {
    let (ranges, mappings): (Vec<(u64, u64)>, Vec<ckpt_format::Mapping>) = img
        .mappings
        .iter()
        .filter_map(|m| ckpt_format::lazy::lazy_span(img, m).map(|s| (s, m.clone())))
        .unzip();
    let work = move || {
        let source = source::Source::new(&mappings, &ranges, readers)?;
        Ok(Planned { ranges, source })
    };
    let h = std::thread::Builder::new()
        .name(format!("lazy-plan-{}", img.pid))
        .spawn(work)
        .context("cannot start the thread that plans a lazy load")?;
    Ok(Plan(h))
}

#[derive(Default)]
struct State {
    /// Servers running.
    running: usize,
    /// No server will be added any more.
    sealed: bool,
    ended: bool,
    /// Per process: bytes to load, bytes left.
    progress: HashMap<i32, (u64, u64)>,
    failed: Option<String>,
    began: Option<Instant>,
}

/// Why this ckptd cannot restore lazily, if it cannot: the restorers it starts make their
/// userfaultfd with its privileges, and it must see the kernel's faults (a system call reading
/// a page not in yet waits for it rather than failing) and forks.
pub fn check() -> Option<String> {
    ckpt_sys::uffd::open_lazy().err().map(|e| {
        format!(
            "a lazy restore needs a userfaultfd that sees the kernel's faults and forks, which this ckptd may not make ({e}): \
             restore without --lazy, or run ckptd as root (or with CAP_SYS_PTRACE, or with vm.unprivileged_userfaultfd = 1)"
        )
    })
}

impl Loads {
    /// A lazy restore of `id` begins on this host with these images and the plans of their
    /// loads (see [`plan`]).
    pub fn begin(
        &self,
        id: &str,
        images: &[&ProcessImage],
        plans: HashMap<i32, Plan>,
        restorer: PathBuf,
    ) -> Arc<Group> {
        let mut reads = vec![id.to_string()];
        for img in images {
            for s in &img.stores {
                if let Some(c) = s.split('/').next().filter(|c| !c.is_empty()) {
                    if !reads.iter().any(|r| r == c) {
                        reads.push(c.to_string());
                    }
                }
            }
        }
        let g = Arc::new(Group {
            id: id.to_string(),
            reads,
            pids: images.iter().map(|i| i.pid).collect(),
            restorer,
            test_delay: self.test_delay,
            sources: Mutex::new(plans.into_iter().map(|(pid, p)| (pid, p.0)).collect()),
            guard: Mutex::new(None),
            state: Mutex::new(State {
                began: Some(Instant::now()),
                ..Default::default()
            }),
            cv: Condvar::new(),
        });
        let mut groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        let ended = groups.iter().filter(|g| g.ended()).count();
        if ended >= KEPT {
            if let Some(i) = groups.iter().position(|g| g.ended()) {
                groups.remove(i);
            }
        }
        groups.push(g.clone());
        g
    }

    fn loading(&self) -> Vec<Arc<Group>> {
        let groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        groups.iter().filter(|g| !g.ended()).cloned().collect()
    }

    fn latest(&self, id: &str) -> Option<Arc<Group>> {
        let groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        groups.iter().rev().find(|g| g.id == id).cloned()
    }

    /// Waits up to `timeout` until no lazy restore loads on this host; whether none does.
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        for g in self.loading() {
            if !g.wait_end(deadline) {
                return false;
            }
        }
        true
    }

    /// The processes of a lazy restore that reads checkpoint `id`'s page stores, if one does.
    pub fn reading(&self, id: &str) -> Option<Vec<i32>> {
        self.loading()
            .into_iter()
            .find(|g| g.reads.iter().any(|r| r == id))
            .map(|g| g.pids.clone())
    }

    /// Percent of `pid`'s pages in, while they load.
    pub fn percent(&self, pid: i32) -> Option<u8> {
        self.loading().iter().find_map(|g| {
            let st = g.lock();
            st.progress
                .get(&pid)
                .filter(|(_, left)| *left > 0)
                .map(|&(total, left)| ((total - left) * 100 / total.max(1)) as u8)
        })
    }

    /// Why the pages of the last lazy restore of `id` could not all be loaded, if so.
    pub fn failure(&self, id: &str) -> Option<String> {
        self.latest(id).and_then(|g| g.lock().failed.clone())
    }

    /// `ckptctl restore --lazy` after the programs run: waits for the load of `id` on this
    /// host (none when the checkpoint has no process here), reporting progress to `sink`.
    pub fn wait_loaded(&self, id: &str, sink: Option<&dyn Fn(Progress)>) -> CtlReply {
        let Some(g) = self.latest(id) else {
            return CtlReply::Loaded {
                id: id.to_string(),
                bytes: 0,
            };
        };
        let asked = Instant::now();
        // Bytes in when the wait began: the rate is of what came in since.
        let (first, _) = g.bytes();
        let mut reported = None;
        loop {
            let ended = g.wait_end(Instant::now() + TICK);
            let (done, total) = g.bytes();
            if let Some(sink) = sink.filter(|_| reported != Some(done) || ended) {
                let secs = asked.elapsed().as_secs_f64().max(1e-3);
                sink(Progress {
                    phase: Phase::LoadingLazily,
                    done_bytes: done,
                    total_bytes: Some(total),
                    rate_bytes_per_s: (done.saturating_sub(first) as f64 / secs) as u64,
                    elapsed_ms: asked.elapsed().as_millis() as u64,
                    hosts: 1,
                });
                reported = Some(done);
            }
            if ended {
                return match g.lock().failed.clone() {
                    Some(message) => CtlReply::Error { message },
                    None => CtlReply::Loaded {
                        id: id.to_string(),
                        bytes: total,
                    },
                };
            }
        }
    }
}

impl Group {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn ended(&self) -> bool {
        self.lock().ended
    }

    /// Waits until the load has ended, or `deadline`; whether it has.
    fn wait_end(&self, deadline: Instant) -> bool {
        let mut st = self.lock();
        while !st.ended {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            st = self.cv.wait_timeout(st, left).unwrap_or_else(|e| e.into_inner()).0;
        }
        true
    }

    /// Bytes in and to load, over every process.
    fn bytes(&self) -> (u64, u64) {
        let st = self.lock();
        st.progress
            .values()
            .fold((0, 0), |(d, t), &(total, left)| (d + total - left, t + total))
    }

    /// After the restorer of `pid` was told to build: takes the memory it hands over on `s`
    /// and serves it from now on.
    pub fn take_over(self: &Arc<Self>, pid: i32, s: &UnixStream) -> anyhow::Result<()> {
        s.set_read_timeout(Some(HANDOVER_TIMEOUT))?;
        let got = ckpt_proto::recv::<LazyHandover>(s);
        s.set_read_timeout(None)?;
        let (handover, fds) = got.with_context(|| format!("restorer of pid {pid} stopped answering"))?;
        let mut fds = fds.into_iter();
        let (Some(fd), Some(ready)) = (fds.next(), fds.next()) else {
            if handover.ranges.is_empty() {
                return Ok(());
            }
            bail!("the restorer of pid {pid} handed lazy memory over without its userfaultfd");
        };
        let t0 = Instant::now();
        let planned = self
            .sources
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&pid)
            .ok_or_else(|| anyhow!("internal: no page stores opened for pid {pid}"))?
            .join()
            .map_err(|_| anyhow!("the plan of pid {pid}'s lazy load failed"))??;
        let waited = t0.elapsed();
        if planned.ranges != handover.ranges {
            bail!(
                "the restorer of pid {pid} registered other memory for lazy loading than ckptd planned to load; restore without --lazy"
            );
        }
        let source = planned.source;
        let guard = {
            let mut g = self.guard.lock().unwrap_or_else(|e| e.into_inner());
            match &*g {
                Some(l) => l.clone(),
                None => g.insert(guard::Link::start(&self.restorer)?).clone(),
            }
        };
        let server = serve::Server::new(pid, fd, ready, source, self.clone(), Some(guard)).slowed(self.test_delay);
        {
            let mut st = self.lock();
            st.running += 1;
            st.progress.insert(pid, (server.total(), server.total()));
        }
        let group = self.clone();
        let spawned = std::thread::Builder::new().name(format!("lazy-{pid}")).spawn(move || {
            // A server that stopped half-way would leave the program waiting for its pages
            // forever (the guard's copies keep them missing): it takes the restore with it.
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| server.run())).is_err() {
                group.fail(pid, &anyhow!("the thread that loads its pages failed"));
                group.server_ended(pid, false);
            }
        });
        if let Err(e) = spawned {
            self.server_ended(pid, false);
            return Err(e).context("cannot start the thread that loads pages lazily");
        }
        tracing::info!(pid, id = self.id, ranges = handover.ranges.len(), waited = ?waited, took = ?t0.elapsed(), "lazy restore: serving");
        Ok(())
    }

    /// Every restorer has handed over what it had: the load ends once its servers have.
    pub fn seal(&self) {
        let mut st = self.lock();
        st.sealed = true;
        self.end_if_done(&mut st);
    }

    fn end_if_done(&self, st: &mut State) {
        if st.sealed && st.running == 0 && !st.ended {
            st.ended = true;
            // The guard holds nothing any more: it ends.
            self.guard.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(t) = st.began {
                tracing::info!(id = self.id, took = ?t.elapsed(), failed = st.failed.is_some(), "lazy restore: load ended");
            }
            self.cv.notify_all();
        }
    }

    /// `pid`'s server has ended.
    fn server_ended(&self, pid: i32, ok: bool) {
        let mut st = self.lock();
        st.running = st.running.saturating_sub(1);
        if ok {
            if let Some(p) = st.progress.get_mut(&pid) {
                p.1 = 0;
            }
        }
        self.end_if_done(&mut st);
    }

    fn progress(&self, pid: i32, left: u64) {
        if let Some(p) = self.lock().progress.get_mut(&pid) {
            p.1 = left;
        }
    }

    /// The pages of `pid` cannot be loaded: every process of the restore on this host, and
    /// whatever they started, is killed before its memory is let go of.
    fn fail(&self, pid: i32, e: &anyhow::Error) {
        let msg = format!(
            "restore of {} failed while loading the pages of pid {pid} lazily ({e:#}); its processes on this host were killed",
            self.id
        );
        tracing::error!("{msg}");
        self.lock().failed.get_or_insert(msg);
        let killed = ckpt_sys::kill::kill_trees(&self.pids, Duration::from_secs(10));
        tracing::info!(?killed, "lazy restore: killed");
    }

    /// Why the load failed, if it did.
    pub fn failed(&self) -> Option<String> {
        self.lock().failed.clone()
    }
}
