//! The node's half of the dirty tracking of shared memory (see `dump::shared_dirty`): what a
//! committed checkpoint saw of the host's shared memory is kept, in memory, as what the next
//! one is checked against; an aborted checkpoint, or a ckptd restart, leaves nothing, and the
//! next checkpoint reads shared memory in full.

use super::phases::Pending;
use super::Node;
use crate::dump::shared_dirty::{self, Parked, Written};
use crate::registry::Proc;
use std::sync::Arc;
use std::time::Instant;

impl Node {
    /// With every process of the checkpoint parked: the pages of their shared memory written
    /// since the last checkpoint, protected again.
    pub(super) fn take_shared<'a>(&self, pending: &Pending, parked: impl Iterator<Item = &'a Arc<Proc>>) -> Written {
        let t = Instant::now();
        let of: Vec<Parked<'_>> = parked
            .map(|p| Parked {
                pid: p.reg.pid,
                slot_addr: p.reg.slot_addr,
                base: pending.bases.get(&p.reg.pid).map(|(id, _)| id.as_str()),
            })
            .collect();
        let last = self.shared_seen.lock().unwrap_or_else(|e| e.into_inner()).take();
        let (written, seen) = shared_dirty::take(&of, last.as_ref());
        *pending.shared_seen.lock().unwrap_or_else(|e| e.into_inner()) = Some(seen);
        tracing::debug!(shared_us = t.elapsed().as_micros() as u64, "shared memory taken");
        written
    }

    /// As checkpoint `id` of `pending` ends: what it saw is the next one's reference if it was
    /// committed.
    pub(super) fn keep_shared(&self, pending: &Pending, id: &str, commit: bool) {
        let seen = pending.shared_seen.lock().unwrap_or_else(|e| e.into_inner()).take();
        *self.shared_seen.lock().unwrap_or_else(|e| e.into_inner()) = seen.filter(|_| commit).map(|mut s| {
            s.id = id.to_string();
            s
        });
    }
}
