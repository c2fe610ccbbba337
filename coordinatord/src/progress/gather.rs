//! The manager's account of a checkpoint or restore over every node: the phase of the node
//! furthest behind (never before the manager's own step), bytes summed, and the rate since that
//! phase began, sent to the `ckptctl` that asked whenever it changes.

use ckpt_proto::{NodeProgress, Phase, Progress};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

pub struct Gather<'a> {
    sink: &'a (dyn Fn(Progress) + Sync),
    started: Instant,
    state: Mutex<State>,
}

struct State {
    /// The manager's own step: no node is reported before it.
    floor: Phase,
    hosts: HashMap<String, NodeProgress>,
    /// The phase reported last, when it began and the bytes done then.
    since: Option<(Phase, Instant, u64)>,
    last: Option<(Phase, u64, Option<u64>)>,
}

impl<'a> Gather<'a> {
    pub fn new(sink: &'a (dyn Fn(Progress) + Sync)) -> Self {
        Self {
            sink,
            started: Instant::now(),
            state: Mutex::new(State {
                floor: Phase::Phase1,
                hosts: HashMap::new(),
                since: None,
                last: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The manager begins `phase` itself (a checkpoint's phase 1 or commit, a restore's check).
    /// `fresh`: what nodes reported before is over (a checkpoint tried again).
    pub fn enter(&self, phase: Phase, fresh: bool) {
        let mut st = self.lock();
        st.floor = phase;
        if fresh {
            st.hosts.clear();
            st.since = None;
            st.last = None;
        }
        self.emit(&mut st);
    }

    /// A node's report.
    pub fn node(&self, host: &str, p: NodeProgress) {
        let mut st = self.lock();
        st.hosts.insert(host.to_string(), p);
        self.emit(&mut st);
    }

    /// Sends the account if it changed; under the lock, so that reports keep their order.
    fn emit(&self, st: &mut State) {
        let slowest = st.hosts.values().map(|p| p.phase).min();
        let phase = slowest.map_or(st.floor, |p| p.max(st.floor));
        let done: u64 = st.hosts.values().map(|p| p.done_bytes).sum();
        let total = if st.hosts.is_empty() {
            None
        } else {
            st.hosts.values().map(|p| p.total_bytes).sum::<Option<u64>>()
        };
        if st.last == Some((phase, done, total)) {
            return;
        }
        st.last = Some((phase, done, total));
        let now = Instant::now();
        // The rate is over the current phase: it starts over when the phase changes.
        let (_, t0, d0) = match st.since {
            Some(s) if s.0 == phase => s,
            _ => *st.since.insert((phase, now, done)),
        };
        let secs = now.duration_since(t0).as_secs_f64();
        let rate = if secs > 0.0 {
            (done.saturating_sub(d0) as f64 / secs) as u64
        } else {
            0
        };
        (self.sink)(Progress {
            phase,
            done_bytes: done,
            total_bytes: total,
            rate_bytes_per_s: rate,
            elapsed_ms: self.started.elapsed().as_millis() as u64,
            hosts: st.hosts.len() as u32,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(phase: Phase, done: u64, total: Option<u64>) -> NodeProgress {
        NodeProgress {
            phase,
            done_bytes: done,
            total_bytes: total,
        }
    }

    #[test]
    fn the_slowest_node_sets_the_phase_and_bytes_add_up() {
        let got = Mutex::new(Vec::new());
        let sink = |p: Progress| got.lock().unwrap().push(p);
        let g = Gather::new(&sink);
        g.enter(Phase::Phase1, true);
        g.node("a", node(Phase::Storing, 10, Some(100)));
        g.node("b", node(Phase::Reading, 0, None));
        g.node("b", node(Phase::Reading, 0, None)); // unchanged: not sent again
        g.node("b", node(Phase::Storing, 5, Some(50)));
        g.enter(Phase::Committing, false);
        let got = got.into_inner().unwrap();
        let seen: Vec<(Phase, u64, Option<u64>, u32)> = got
            .iter()
            .map(|p| (p.phase, p.done_bytes, p.total_bytes, p.hosts))
            .collect();
        assert_eq!(
            seen,
            [
                (Phase::Phase1, 0, None, 0),
                (Phase::Storing, 10, Some(100), 1),
                (Phase::Reading, 10, None, 2),
                (Phase::Storing, 15, Some(150), 2),
                (Phase::Committing, 15, Some(150), 2),
            ]
        );
    }
}
