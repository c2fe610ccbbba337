//! What a node makes ready for each program before it is parked, to keep the stop short: its
//! base (the previous checkpoint an incremental one refers to), its page store, the state that
//! does not change while it runs, its memory tracked and, unless in stop-the-world mode, copied
//! while it still runs.

use super::phases::{lost, talk};
use super::Node;
use crate::dump::precopy::{precopy, Precopy};
use crate::dump::state::Fixed;
use crate::registry::Proc;
use anyhow::{bail, Context};
use ckpt_format::{read_record, CheckpointDir, PageStoreWriter, ProcessImage, RecordKind};
use ckpt_proto::{AppMsg, CheckpointMode, NodeMsg};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// What is read and opened for a process before it is parked, to keep its stop short.
#[derive(Default)]
pub struct Prepared {
    /// Memory copied while it ran (not in stop-the-world mode).
    pub(super) pre: Option<Precopy>,
    pub(super) fixed: Option<Fixed>,
    pub(super) store: Option<PageStoreWriter>,
    pub(super) window: Option<crate::dump::window::Fds>,
}

/// Has `p` register its memory for dirty-page tracking (while it runs, before a checkpoint);
/// the store window it hands over, if any.
fn track(p: &Proc) -> anyhow::Result<Option<crate::dump::window::Fds>> {
    let pid = p.reg.pid;
    if p.reg.uffd_fd < 0 {
        return Ok(None);
    }
    let s = talk(p);
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    ckpt_proto::send(&s, &NodeMsg::Track, &[]).map_err(lost(pid))?;
    match ckpt_proto::recv::<AppMsg>(&s).map_err(lost(pid))? {
        (AppMsg::Tracked, fds) => Ok(crate::dump::window::Fds::new(fds)),
        (other, _) => bail!("process {pid} answered {other:?} to track"),
    }
}

impl Node {
    /// Chooses each process's base, opens its page store, reads what of its state does not
    /// change and, unless in stop-the-world mode, copies its tracked memory while it still
    /// runs, until `deadline` (then the stop copies the rest). A process whose pre-copy fails
    /// gets a full checkpoint.
    pub(super) fn prepare_all(
        &self,
        dir: &CheckpointDir,
        procs: &[Arc<Proc>],
        mode: CheckpointMode,
        deadline: std::time::Instant,
    ) -> (HashMap<i32, (String, ProcessImage)>, HashMap<i32, Prepared>) {
        let mut bases = HashMap::new();
        let mut prepared = HashMap::new();
        for p in procs {
            let pid = p.reg.pid;
            let mut ready = Prepared {
                fixed: Fixed::read(pid).ok(),
                store: self.open_store(dir, pid).ok(),
                pre: None,
                window: None,
            };
            let base = if mode.full { None } else { self.base(p) };
            match track(p) {
                Ok(w) => ready.window = w.filter(|_| self.store_window && !mode.no_window),
                Err(e) => tracing::warn!(pid, "cannot register memory for tracking: {e:#}"),
            }
            let mut use_base = true;
            if !mode.stop_the_world {
                match precopy(
                    pid,
                    self.own_store(&dir.id, pid),
                    base.as_ref().map(|(_, b)| b),
                    deadline,
                ) {
                    Ok(copy) => ready.pre = Some(copy),
                    Err(e) => {
                        tracing::warn!(pid, "pre-copy failed, storing it in full: {e}");
                        use_base = false;
                    }
                }
            }
            if let Some(b) = base.filter(|_| use_base) {
                bases.insert(pid, b);
            }
            prepared.insert(pid, ready);
        }
        (bases, prepared)
    }

    /// Creates the page store of process `pid` in `dir`.
    pub(super) fn open_store(&self, dir: &CheckpointDir, pid: i32) -> anyhow::Result<PageStoreWriter> {
        dir.create_process_dir(&self.host, pid)
            .context("cannot create the folder of its image")?;
        let store = PageStoreWriter::create(&dir.pages_path(&self.host, pid))?.counting(self.meter.stored());
        Ok(if self.compress { store.compressed(3) } else { store })
    }

    /// The page store of process `pid` in checkpoint `id`, as images name it.
    pub(super) fn own_store(&self, id: &str, pid: i32) -> String {
        format!("{id}/{}/{pid}/pages.img", self.host)
    }

    /// This process's previous committed checkpoint.
    pub(super) fn base(&self, p: &Proc) -> Option<(String, ProcessImage)> {
        let id = p.track_base.lock().unwrap_or_else(|e| e.into_inner()).clone()?;
        let (dir, _) = self.store.get(&id).ok()?;
        let img = read_record(&dir.meta_path(&self.host, p.reg.pid), RecordKind::Process).ok()?;
        Some((id, img))
    }
}
