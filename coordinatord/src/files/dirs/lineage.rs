//! Whose changes are a checkpoint's: the processes under ckptd's control, each known by its pid
//! and start time (a pid alone may be another process's later), with the process it was forked
//! by when that one was under control too, and whether ckptd restored it. A change belongs to a
//! checkpoint when its process was one of the checkpoint's, descends from one (a child forked
//! or exec'd after the checkpoint, even one that has exited since), or was restored with the
//! pid of one (the same program again, after a restore of this checkpoint or another). A
//! program started later beside it under the same ckptd is not the checkpoint's.

use std::collections::{HashMap, HashSet};

/// A process: pid and start time.
pub type Who = (i32, u64);

#[derive(Default)]
pub struct Lineage {
    /// The start time of the last process registered with each pid.
    latest: HashMap<i32, u64>,
    procs: HashMap<Who, Entry>,
}

struct Entry {
    parent: Option<Who>,
    restored: bool,
}

/// How many processes are kept before those no longer needed are dropped.
const PRUNE_AT: usize = 16384;

/// The processes of a checkpoint at its instant.
#[derive(Clone, Default)]
pub struct Roots {
    procs: HashSet<Who>,
    pids: HashSet<i32>,
}

impl Lineage {
    /// Notes process `pid`, now running (registering, or restored before it runs).
    pub fn register(&mut self, pid: i32, restored: bool) {
        let Some(start) = ckpt_sys::procfs::start_time(pid) else {
            return;
        };
        let parent = ckpt_sys::procfs::stat_tree(pid)
            .ok()
            .and_then(|st| self.who(st.ppid))
            .filter(|p| p.0 != pid);
        self.latest.insert(pid, start);
        let e = self.procs.entry((pid, start)).or_insert(Entry { parent, restored });
        // A process that exec'd registers again: it keeps its parent.
        e.restored |= restored;
    }

    /// The registered process behind `pid` now: the last one registered with it, if it still
    /// runs or no other process has taken its pid since.
    pub fn who(&self, pid: i32) -> Option<Who> {
        let start = *self.latest.get(&pid)?;
        match ckpt_sys::procfs::start_time(pid) {
            Some(now) if now != start => None,
            _ => Some((pid, start)),
        }
    }

    pub fn roots(&self, pids: &[i32]) -> Roots {
        Roots {
            procs: pids.iter().filter_map(|&p| self.who(p)).collect(),
            pids: pids.iter().copied().collect(),
        }
    }

    /// Whether `who`'s changes are those of the checkpoint whose processes were `roots`.
    pub fn belongs(&self, who: Who, roots: &Roots) -> bool {
        let mut cur = Some(who);
        // Bounded: a parent is registered before its child, so the chain has no loop, but a
        // reused (pid, start) must not make one.
        for _ in 0..256 {
            let Some(w) = cur else { return false };
            if roots.procs.contains(&w) {
                return true;
            }
            let Some(e) = self.procs.get(&w) else { return false };
            if e.restored && roots.pids.contains(&w.0) {
                return true;
            }
            cur = e.parent;
        }
        false
    }

    /// Whether it is time to [`Lineage::prune`].
    pub fn full(&self) -> bool {
        self.procs.len() >= PRUNE_AT
    }

    /// Drops the processes that have exited and that nothing needs: no kept change names them
    /// (`needed`) nor a checkpoint's roots, and no process kept descends from them.
    pub fn prune(&mut self, needed: &HashSet<Who>, roots: &[&Roots]) {
        let mut keep: HashSet<Who> = HashSet::new();
        for (&w, _) in self.procs.iter() {
            let live = ckpt_sys::procfs::start_time(w.0) == Some(w.1);
            if live || needed.contains(&w) || roots.iter().any(|r| r.procs.contains(&w)) {
                let mut cur = Some(w);
                while let Some(c) = cur.filter(|c| keep.insert(*c)) {
                    cur = self.procs.get(&c).and_then(|e| e.parent);
                }
            }
        }
        self.procs.retain(|w, _| keep.contains(w));
        self.latest.retain(|pid, start| keep.contains(&(*pid, *start)));
    }
}
