//! The end of a node's checkpoint, once its programs run again: the pages left in place by
//! the store window first (a program may wait on one), then everything else, the files'
//! records and each process's image, made durable.

use super::phases::Pending;
use super::Node;
use crate::dump::Dumped;
use anyhow::anyhow;
use ckpt_format::{write_record, FileRecord, FileSummary, ProcessEntry, RecordKind};
use ckpt_proto::Phase;
use std::time::{Duration, Instant};

/// How long storing a checkpoint's pages stays at the lowest priority.
const STORE_LOW: Duration = Duration::from_secs(2);

impl Node {
    /// Stores what was read of the parked processes (`parked`: when each was parked, its
    /// stop, what was read) and writes their images; `held_us`: how long the gates were shut.
    pub(super) fn store_parked(
        &self,
        pending: &Pending,
        parked: Vec<(u64, u64, Dumped)>,
        file_records: Vec<FileRecord>,
        held_us: u64,
    ) -> anyhow::Result<(Vec<ProcessEntry>, Vec<FileSummary>)> {
        let dir = &pending.dir;
        let t_store = Instant::now();
        // What is left to write: pages copied while parked, and those left in store windows.
        let left: u64 = parked
            .iter()
            .map(|(_, _, d)| d.captured.bytes() + d.window.as_ref().map_or(0, |w| w.bytes()))
            .sum();
        let stored = self.meter.stored().load(std::sync::atomic::Ordering::Relaxed);
        self.meter.checkpoint_phase(Phase::Storing, Some(stored + left));
        // First what was left in place: a program's thread may wait on one of those pages, so
        // this runs at normal priority, one thread per process (empty windows close with the
        // rest, once stored).
        let mut parked = parked;
        if parked.iter().any(|(_, _, d)| d.has_window()) {
            std::thread::sleep(self.window_delay);
        }
        std::thread::scope(|sc| {
            let hs: Vec<_> = parked
                .iter_mut()
                .filter(|(_, _, d)| d.has_window())
                .map(|(_, _, d)| sc.spawn(move || d.serve_window()))
                .collect();
            hs.into_iter().try_for_each(|h| match h.join() {
                Ok(r) => r.map_err(anyhow::Error::from),
                Err(_) => Err(anyhow!("store window thread panicked")),
            })
        })?;
        // Storing at nice 19 yields to every program, but among a busy workload (ckptd in its
        // session's autogroup) it could take half a minute, holding the pages in memory and
        // the checkpoint unfinished: past STORE_LOW it gets the ordinary priority.
        let images = super::background::run_until(Instant::now() + STORE_LOW, || {
            parked
                .into_iter()
                .map(|(at, stop_us, d)| {
                    let (window_bytes, window_faults) = (d.served.bytes, d.served.faults);
                    Ok((at, stop_us, window_bytes, window_faults, d.finish()?))
                })
                .collect::<anyhow::Result<Vec<_>>>()
        })?;
        self.meter.stored_all();
        let files = pending.files.lock().unwrap_or_else(|e| e.into_inner()).take();
        let file_summaries = match files {
            Some(f) => f.finish(file_records)?,
            None => Vec::new(),
        };
        let store_us = t_store.elapsed().as_micros() as u64;
        let mut entries = Vec::new();
        for (parked_at_us, stop_us, window_bytes, window_faults, image) in images {
            let pid = image.pid;
            write_record(&dir.meta_path(&self.host, pid), RecordKind::Process, &image)?;
            tracing::info!(pid, stop_us, bytes = image.stored_bytes(), parent = ?image.parent, "process checkpointed");
            entries.push(ProcessEntry {
                pid,
                exe: image.exe.clone(),
                args: image.args.clone(),
                threads: image.threads.len() as u32,
                parent: image.parent.clone(),
                stored_bytes: image.stored_bytes(),
                mapped_bytes: image.mapped_bytes(),
                parked_at_us,
                stop_us,
                held_us,
                store_us,
                window_bytes,
                window_faults,
            });
        }
        Ok((entries, file_summaries))
    }
}
