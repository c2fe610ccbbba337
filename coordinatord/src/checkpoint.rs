//! Taking a checkpoint of every registered process on this host, and committing it.

use crate::dump::{dump_parked, read_slots};
use crate::node::Node;
use crate::registry::Proc;
use anyhow::{anyhow, bail, Context};
use ckpt_format::{write_record, CheckpointDir, HostEntry, Manifest, ProcessEntry, RecordKind};
use ckpt_proto::{AppMsg, CheckpointReport, NodeMsg};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long threads may take to reach the park handler.
const PARK_TIMEOUT_MS: u32 = 10_000;

pub fn checkpoint(node: &Node) -> anyhow::Result<CheckpointReport> {
    let _busy = node.busy.lock().unwrap_or_else(|e| e.into_inner());
    let t0 = Instant::now();
    let procs = node.registry.alive();
    if procs.is_empty() {
        bail!("no process is registered with ckptd; start programs with ckpt-run first");
    }
    let dir = node.store.begin().context("cannot create the checkpoint directory")?;
    tracing::info!(id = %dir.id, processes = procs.len(), "checkpoint started");
    let results: Vec<anyhow::Result<ProcessEntry>> = std::thread::scope(|s| {
        let handles: Vec<_> = procs
            .iter()
            .map(|p| s.spawn(|| checkpoint_one(node, &dir, p)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(anyhow!("checkpoint thread panicked"))))
            .collect()
    });
    let mut entries = Vec::new();
    let mut first_err = None;
    for r in results {
        match r {
            Ok(e) => entries.push(e),
            Err(e) if first_err.is_none() => first_err = Some(e),
            Err(e) => tracing::warn!("{e:#}"),
        }
    }
    if let Some(e) = first_err {
        tracing::warn!(id = %dir.id, "checkpoint aborted: {e:#}");
        if let Err(re) = node.store.remove(&dir) {
            tracing::error!("cannot remove aborted checkpoint {}: {re}", dir.id);
        }
        return Err(e);
    }
    let duration_us = t0.elapsed().as_micros() as u64;
    let manifest = Manifest {
        id: dir.id.clone(),
        parent: None,
        created_unix_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
        hosts: vec![HostEntry {
            host: node.host.clone(),
            processes: entries,
        }],
        duration_us,
    };
    node.store
        .commit(&dir, &manifest)
        .context("cannot commit the checkpoint")?;
    let report = CheckpointReport {
        id: dir.id.clone(),
        processes: manifest.processes().count() as u32,
        stored_bytes: manifest.stored_bytes(),
        duration_us,
        max_stop_us: manifest.processes().map(|(_, p)| p.stop_us).max().unwrap_or(0),
    };
    tracing::info!(id = %report.id, bytes = report.stored_bytes, us = duration_us, "checkpoint committed");
    Ok(report)
}

fn checkpoint_one(node: &Node, dir: &CheckpointDir, p: &Proc) -> anyhow::Result<ProcessEntry> {
    let pid = p.reg.pid;
    let stream = p.stream.lock().unwrap_or_else(|e| e.into_inner());
    stream.set_read_timeout(Some(Duration::from_millis(PARK_TIMEOUT_MS as u64 + 20_000)))?;
    let lost = |e| anyhow!("process {pid} stopped answering ({e}); it may have exited");
    ckpt_proto::send(
        &stream,
        &NodeMsg::Park {
            timeout_ms: PARK_TIMEOUT_MS,
        },
        &[],
    )
    .map_err(lost)?;
    match ckpt_proto::recv::<AppMsg>(&stream).map_err(lost)?.0 {
        AppMsg::Parked { .. } => {}
        AppMsg::ParkFailed { reason, tid } => bail!("process {pid}: thread {tid} could not be stopped ({reason:?})"),
        other => bail!("process {pid} answered {other:?} to park"),
    }
    let parked = Instant::now();
    let pdir = dir.process_dir(&node.host, pid);
    let pages_path = dir.pages_path(&node.host, pid);
    let dumped = std::fs::create_dir_all(&pdir)
        .with_context(|| format!("cannot create {}", pdir.display()))
        .and_then(|_| Ok(read_slots(&p.reg)?))
        .and_then(|slots| Ok(dump_parked(&p.reg, &slots, &pages_path)?));
    // The program runs again whatever happened.
    let verdict = if dumped.is_ok() {
        NodeMsg::Resume
    } else {
        NodeMsg::Abort
    };
    let resumed = ckpt_proto::send(&stream, &verdict, &[]);
    let stop_us = parked.elapsed().as_micros() as u64;
    drop(stream);
    let (image, pages) = dumped?;
    resumed.map_err(lost)?;
    pages.finish()?;
    write_record(&dir.meta_path(&node.host, pid), RecordKind::Process, &image)?;
    tracing::info!(pid, stop_us, bytes = image.stored_bytes(), "process checkpointed");
    Ok(ProcessEntry {
        pid,
        exe: image.exe.clone(),
        args: image.args.clone(),
        threads: image.threads.len() as u32,
        stored_bytes: image.stored_bytes(),
        mapped_bytes: image.mapped_bytes(),
        stop_us,
    })
}
