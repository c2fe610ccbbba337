//! One node's progress: the phase it is in and the bytes of pages stored or loaded, reported
//! every few hundred milliseconds, and at once on entering a phase, while a request runs.

use super::NodeSink;
use ckpt_proto::{NodeProgress, Phase};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// How often a change of bytes is reported.
const TICK: Duration = Duration::from_millis(200);

/// Where the bytes done of the current phase come from.
enum Source {
    /// The page stores' counter (a checkpoint).
    Stored,
    /// Read when reported (the restorers' reads), never less than what was reported before.
    Probe(Box<dyn Fn() -> u64 + Send>),
    Fixed(u64),
}

struct State {
    phase: Option<Phase>,
    total: Option<u64>,
    source: Source,
    /// Phases entered since the watcher last looked: each is reported, however short.
    entered: Vec<NodeProgress>,
    /// The most done reported by a probe.
    probed: u64,
}

pub struct Meter {
    state: Mutex<State>,
    cv: Condvar,
    stored: Arc<AtomicU64>,
}

impl Default for Meter {
    fn default() -> Self {
        Self {
            state: Mutex::new(State {
                phase: None,
                total: None,
                source: Source::Fixed(0),
                entered: Vec::new(),
                probed: 0,
            }),
            cv: Condvar::new(),
            stored: Default::default(),
        }
    }
}

impl Meter {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The counter page stores of a checkpoint add to (see `PageStoreWriter::counting`).
    pub fn stored(&self) -> Arc<AtomicU64> {
        self.stored.clone()
    }

    /// A checkpoint begins on this node: nothing stored yet.
    pub fn begin_checkpoint(&self) {
        self.stored.store(0, Ordering::Relaxed);
        self.enter(Phase::Phase1, Source::Stored, None);
    }

    /// A checkpoint's next phase, counting bytes stored; `total` once known.
    pub fn checkpoint_phase(&self, phase: Phase, total: Option<u64>) {
        self.enter(phase, Source::Stored, total);
    }

    /// Storing is over: what was stored is the total (pages found all zero are never stored,
    /// so the estimate may have been higher).
    pub fn stored_all(&self) {
        let mut st = self.lock();
        st.total = Some(self.stored.load(Ordering::Relaxed));
        self.cv.notify_all();
    }

    /// A restore's phase whose bytes `probe` tells, up to `total`.
    pub fn probed(&self, phase: Phase, total: u64, probe: impl Fn() -> u64 + Send + 'static) {
        self.enter(phase, Source::Probe(Box::new(probe)), Some(total));
    }

    /// The restorers have loaded everything and the programs run.
    pub fn loaded(&self) {
        let total = self.lock().total;
        self.enter(Phase::Running, Source::Fixed(total.unwrap_or(0)), total);
    }

    /// A restore's phase with `done` bytes of `total` (None: no bytes move in it).
    pub fn fixed(&self, phase: Phase, done: u64, total: Option<u64>) {
        self.enter(phase, Source::Fixed(done), total);
    }

    fn enter(&self, phase: Phase, source: Source, total: Option<u64>) {
        let mut st = self.lock();
        st.phase = Some(phase);
        st.source = source;
        st.total = total;
        st.probed = 0;
        let now = self.now(&mut st);
        if let Some(p) = now {
            st.entered.push(p);
        }
        self.cv.notify_all();
    }

    fn now(&self, st: &mut State) -> Option<NodeProgress> {
        let done = match &st.source {
            Source::Stored => self.stored.load(Ordering::Relaxed),
            Source::Probe(f) => {
                let d = f().min(st.total.unwrap_or(u64::MAX)).max(st.probed);
                st.probed = d;
                d
            }
            Source::Fixed(d) => *d,
        };
        Some(NodeProgress {
            phase: st.phase?,
            done_bytes: done,
            total_bytes: st.total,
        })
    }

    /// Runs `f`, reporting this node's progress to `sink` meanwhile (on entering a phase, and
    /// every [`TICK`] when it changed), and once more when `f` is done.
    pub fn watch<T>(&self, sink: Option<NodeSink<'_>>, f: impl FnOnce() -> T) -> T {
        let Some(sink) = sink else { return f() };
        {
            // What an earlier request left is not this one's progress.
            let mut st = self.lock();
            st.phase = None;
            st.entered.clear();
        }
        let over = AtomicBool::new(false);
        let over = &over;
        std::thread::scope(|s| {
            let watcher = std::thread::Builder::new()
                .name("progress".into())
                .spawn_scoped(s, move || {
                    let mut last: Option<NodeProgress> = None;
                    loop {
                        let (entered, now, done) = {
                            let mut st = self.lock();
                            if !over.load(Ordering::Acquire) && st.entered.is_empty() {
                                st = self.cv.wait_timeout(st, TICK).unwrap_or_else(|e| e.into_inner()).0;
                            }
                            let entered = std::mem::take(&mut st.entered);
                            (entered, self.now(&mut st), over.load(Ordering::Acquire))
                        };
                        // Reported outside the lock: the sink may wait on a socket.
                        for p in entered.into_iter().chain(now) {
                            if last.as_ref() != Some(&p) {
                                sink(p.clone());
                                last = Some(p);
                            }
                        }
                        if done {
                            return;
                        }
                    }
                });
            let r = f();
            {
                // Under the lock: the watcher either sees it before it waits or is woken.
                let _st = self.lock();
                over.store(true, Ordering::Release);
                self.cv.notify_all();
            }
            if let Ok(w) = watcher {
                let _ = w.join();
            }
            r
        })
    }
}

/// Bytes process `pid` has read with read-family calls (`rchar` of /proc/PID/io), 0 if it is
/// gone or not readable.
pub fn read_bytes(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("rchar:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_phase_is_reported_in_order_and_the_last_state_once_done() {
        let m = Meter::default();
        let got = Mutex::new(Vec::new());
        let sink = |p: NodeProgress| got.lock().unwrap().push(p);
        m.watch(Some(&sink), || {
            m.begin_checkpoint();
            m.checkpoint_phase(Phase::Parking, None);
            m.checkpoint_phase(Phase::Reading, None);
            m.checkpoint_phase(Phase::Storing, Some(8192));
            m.stored().fetch_add(4096, Ordering::Relaxed);
            m.stored_all();
        });
        let got = got.into_inner().unwrap();
        let phases: Vec<Phase> = got.iter().map(|p| p.phase).collect();
        assert_eq!(
            phases[..4],
            [Phase::Phase1, Phase::Parking, Phase::Reading, Phase::Storing]
        );
        let last = got.last().unwrap();
        assert_eq!((last.done_bytes, last.total_bytes), (4096, Some(4096)));
        // Without a sink nothing is watched.
        assert_eq!(m.watch(None, || 7), 7);
    }

    #[test]
    fn a_probe_never_goes_back_nor_past_the_total() {
        let m = Meter::default();
        let reads = Arc::new(AtomicU64::new(50));
        let r = reads.clone();
        m.probed(Phase::LoadingPages, 100, move || r.load(Ordering::Relaxed));
        let mut st = m.lock();
        assert_eq!(m.now(&mut st).unwrap().done_bytes, 50);
        reads.store(20, Ordering::Relaxed);
        assert_eq!(m.now(&mut st).unwrap().done_bytes, 50);
        reads.store(500, Ordering::Relaxed);
        assert_eq!(m.now(&mut st).unwrap().done_bytes, 100);
    }
}
