//! Sparse address spaces (issue 9): `sparse_reserve` reserves 2 TiB with MAP_NORESERVE and
//! keeps 64 MiB of it written, rewritten and checked (a wrong byte prints MISMATCH); it also
//! reads pages it never writes, which map the zero page, and keeps 16 MiB written in a shared
//! 2 TiB reservation (shared memory is saved whole: only where it holds data is it read).
//! Twenty checkpoints (the first full,
//! one more `--full` half-way, the others incremental) each succeed and store about what is
//! written, not what is reserved; then each is restored in turn (kill, restore checkpoint k,
//! the program carries on from it and keeps verifying its memory). The restored program is
//! checkpointed and restored once more.
//!
//! ckptd's peak memory (VmHWM) is printed and must stay under twice the program's resident
//! size plus [`FIXED`]; the program's page tables must stay small (2 TiB of write-protect
//! markers would take 4 GiB of them).

use anyhow::{anyhow, ensure, Context, Result};
use ckpt_tests::*;
use serde_json::Value;
use std::time::{Duration, Instant};

const RESERVE_GIB: u64 = 2048;
const WRITTEN_MIB: u64 = 64;
const SHARED_MIB: u64 = 16;
const TICK_MS: &str = "250";
const CHECKPOINTS: usize = 20;
/// This one (1-based) is taken with `--full` as well as the first.
const FULL_AGAIN: usize = 10;
/// ckptd's memory besides the program's pages (which it may hold twice at most: copied before
/// the stop, and copied again during it when rewritten in between, until the older copy's
/// buffer is reused): about 5 MiB of its own (binary, heap, thread stacks), a copy batch and
/// a store-window buffer of 16 MiB each that may be filled beyond the pages held, the page
/// store's 1 MiB write buffer, and room for the allocator's own slack; rounded up.
const FIXED: u64 = 64 << 20;
/// The program's page tables, at most (they take about 2.5 MiB here).
const MAX_PTE: u64 = 32 << 20;

/// The process entry of checkpoint `id` in `ckptctl show --json`.
fn process_entry(d: &Daemon, id: &str, pid: i32) -> Result<Value> {
    let s = d.ckptctl_ok(&["show", id, "--json"])?;
    let v: Value = serde_json::from_str(&s).with_context(|| format!("ckptctl show {id} --json: not JSON"))?;
    v.pointer("/manifest/hosts")
        .and_then(|h| h.as_array())
        .into_iter()
        .flatten()
        .flat_map(|h| h["processes"].as_array().into_iter().flatten())
        .find(|p| p["pid"].as_i64() == Some(pid as i64))
        .cloned()
        .ok_or_else(|| anyhow!("ckptctl show {id} --json does not list pid {pid}"))
}

/// Like [`Daemon::checkpoint_app`], with `--full` when asked. Ticks come four times a
/// second, several while the command runs: `first_after` is the first printed once it is done.
fn checkpoint(d: &Daemon, app: &App, full: bool) -> Result<CkptPoint> {
    let last_before = app.drain_last_tick().unwrap_or(0);
    let t0 = Instant::now();
    let args: &[&str] = if full {
        &["checkpoint", "--full"]
    } else {
        &["checkpoint"]
    };
    let id = d.ckptctl_ok(args)?;
    let took = t0.elapsed();
    app.drain();
    let first_after = app
        .expect_tick(LINE_TIMEOUT)
        .context("the program should keep running after the checkpoint")?;
    Ok(CkptPoint {
        id,
        last_before,
        first_after,
        took,
    })
}

#[test]
fn sparse_2tib_reservation_checkpoints_and_restores() -> Result<()> {
    require_root!();
    let d = Daemon::start()?;
    let (gib, written, shared) = (RESERVE_GIB.to_string(), WRITTEN_MIB.to_string(), SHARED_MIB.to_string());
    let app = d.run_example("sparse_reserve", &[&gib, &written, TICK_MS, &shared])?;
    let pid = app.pid;
    app.expect_line("the `ready` line", |l| l.starts_with("ready"), Duration::from_secs(30))?;
    let t = app.expect_tick(LINE_TIMEOUT)?;
    app.expect_consecutive_ticks(t, 2, true, LINE_TIMEOUT)?;
    note!(
        "sparse_reserve pid {pid}: resident {}, page tables {}; ckptd {}",
        mib(vm_bytes(pid, "VmRSS")?),
        mib(vm_bytes(pid, "VmPTE")?),
        mib(vm_bytes(d.pid(), "VmHWM")?)
    );

    let mut points = Vec::new();
    let mut resident = 0u64;
    let mut app = app;
    for k in 1..=CHECKPOINTS {
        let full = k == 1 || k == FULL_AGAIN;
        let cp = checkpoint(&d, &app, k == FULL_AGAIN)
            .with_context(|| format!("checkpoint {k} of {CHECKPOINTS}\n{}", d.context()))?;
        let p = process_entry(&d, &cp.id, pid)?;
        let (stored, mapped) = (
            p["stored_bytes"].as_u64().unwrap_or(0),
            p["mapped_bytes"].as_u64().unwrap_or(0),
        );
        let parent = p["parent"].as_str().map(str::to_string);
        let (rss, pte, hwm) = (
            vm_bytes(pid, "VmRSS")?,
            vm_bytes(pid, "VmPTE")?,
            vm_bytes(d.pid(), "VmHWM")?,
        );
        resident = resident.max(rss);
        note!(
            "checkpoint {} ({}) took {:?}: stored {}, mapped {}, parent {:?}; program resident {}, page tables {}; ckptd peak {}",
            cp.id,
            if full { "full" } else { "incremental" },
            cp.took,
            mib(stored),
            mib(mapped),
            parent,
            mib(rss),
            mib(pte),
            mib(hwm)
        );
        ensure!(
            mapped >= RESERVE_GIB << 30,
            "checkpoint {}: mapped {mapped} bytes, the reservation is missing",
            cp.id
        );
        let want_parent = (!full)
            .then(|| points.last().map(|p: &CkptPoint| p.id.clone()))
            .flatten();
        ensure!(
            parent == want_parent,
            "checkpoint {}: parent {parent:?}, expected {want_parent:?} ({})",
            cp.id,
            if full {
                "a full checkpoint has none"
            } else {
                "incremental to the previous one"
            }
        );
        // What is written, rewritten between checkpoints, is stored, not what is reserved.
        let data = (WRITTEN_MIB + SHARED_MIB) << 20;
        ensure!(
            stored <= 2 * data + (16 << 20),
            "checkpoint {} stored {}: more than the program writes",
            cp.id,
            mib(stored)
        );
        ensure!(
            !full || stored >= data,
            "full checkpoint {} stored only {}, less than the {} written",
            cp.id,
            mib(stored),
            mib(data)
        );
        ensure!(
            pte <= MAX_PTE,
            "the program's page tables grew to {} (checkpoint {})",
            mib(pte),
            cp.id
        );
        let t = app.drain_last_tick().unwrap_or(cp.first_after);
        app.expect_consecutive_ticks(t, 1, true, LINE_TIMEOUT)?;
        points.push(cp);
    }
    let peak = vm_bytes(d.pid(), "VmHWM")?;
    let bound = 2 * resident + FIXED;
    note!(
        "ckptd peak after {CHECKPOINTS} checkpoints: {} (bound: 2 x {} resident + {} = {})",
        mib(peak),
        mib(resident),
        mib(FIXED),
        mib(bound)
    );
    ensure!(peak < bound, "ckptd's peak memory {} is over {}", mib(peak), mib(bound));

    // Each checkpoint restores: the program carries on from it and finds its memory right.
    for (k, cp) in points.iter().enumerate() {
        app.kill9()?;
        drop(app);
        app = d
            .restore_ok(&cp.id, pid)
            .with_context(|| format!("restoring checkpoint {} ({} of {CHECKPOINTS})", cp.id, k + 1))?;
        let (t, line) = app.expect_tick_line(LINE_TIMEOUT)?;
        cp.check_resumed(t, &app)?;
        // Three ticks: every chunk is checked at least twice over, the read pages too.
        app.expect_consecutive_ticks(t, 3, true, LINE_TIMEOUT)?;
        let pte = vm_bytes(pid, "VmPTE")?;
        note!("restored {}: first line {line:?}, page tables {}", cp.id, mib(pte));
        ensure!(pte <= MAX_PTE, "the restored program's page tables take {}", mib(pte));
    }
    // The restored program is checkpointed again: incremental to the checkpoint it came from
    // (the restorer armed its tracker over what it put back, never over the untouched
    // reservation), and that one restores too.
    let restored_from = points.last().map(|p| p.id.clone()).unwrap_or_default();
    let cp = checkpoint(&d, &app, false)?;
    let p = process_entry(&d, &cp.id, pid)?;
    note!(
        "checkpoint {} of the restored program stored {}",
        cp.id,
        mib(p["stored_bytes"].as_u64().unwrap_or(0))
    );
    ensure!(
        p["parent"].as_str() == Some(restored_from.as_str()),
        "the restored program's first checkpoint should be incremental to {restored_from}: {p}"
    );
    app.kill9()?;
    drop(app);
    let mut app = d.restore_ok(&cp.id, pid)?;
    let (t, _) = app.expect_tick_line(LINE_TIMEOUT)?;
    cp.check_resumed(t, &app)?;
    app.expect_consecutive_ticks(t, 3, true, LINE_TIMEOUT)?;
    app.kill9()?;
    let peak = vm_bytes(d.pid(), "VmHWM")?;
    note!("ckptd peak after the restores: {}", mib(peak));
    ensure!(
        peak < bound,
        "ckptd's peak memory {} is over {} after the restores",
        mib(peak),
        mib(bound)
    );
    Ok(())
}
