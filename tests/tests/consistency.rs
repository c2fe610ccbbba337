//! Acceptance 1 (incremental checkpoints): `dirty_log 1024 0` writes random
//! pages of 1 GiB as fast as it can, each with a pattern of (page, sequence
//! number), and logs the sequence number of every page.  While it runs, 20
//! checkpoints are taken (the first of a process is full, the others
//! incremental: they must name the previous one as parent).  Then, for the
//! 1st, 10th and 20th (and the others while the time budget lasts): kill the
//! running instance, restore the checkpoint, and check that
//!   - the restored program resumes exactly where the checkpoint stopped it:
//!     its first `round` line reports a write count between the last count
//!     printed before `ckptctl checkpoint` started and the second one printed
//!     after it returned (+64, one batch of writes);
//!   - SIGUSR1 -> `verify ok`: every page matches the log (pages never
//!     written read back as zero).
//!
//! The program writes faster than the pre-copy can follow, so most of what it wrote last is
//! left in place at the stop and read while it runs (the store window): at least one
//! checkpoint must have done so with the program's writes waiting on pages not read yet.
//!
//! All checks are made and reported together at the end, so one run tells
//! which checkpoints restore correctly.  Budget for the optional restores:
//! `CKPT_CONSISTENCY_BUDGET_S` (default 180 s since the test started).

use anyhow::{bail, Context, Result};
use ckpt_tests::*;
use std::time::{Duration, Instant};

const N_CKPTS: usize = 20;
/// Every restore checks these (0-based: the 1st, 10th and 20th).
const MUST: [usize; 3] = [0, 9, N_CKPTS - 1];
/// A write count may run ahead of the last printed one by one batch.
const BATCH: u64 = 64;
/// Verifying 1 GiB takes about a second; leave room for a slow machine.
const VERIFY_TIMEOUT: Duration = Duration::from_secs(90);

fn writes_of(line: &str) -> Option<u64> {
    if !line.starts_with("round ") {
        return None;
    }
    field(line, "writes")?.parse().ok()
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

struct Taken {
    stats: CkptStats,
    parent: Option<String>,
    /// write count of the last `round` line read before the checkpoint
    before: u64,
    /// write count of the second `round` line printed after it returned
    after: u64,
}

#[test]
fn dirty_log_20_incremental_checkpoints_each_restores_exactly() -> Result<()> {
    require_root!();
    let t0 = Instant::now();
    let budget = Duration::from_secs(
        std::env::var("CKPT_CONSISTENCY_BUDGET_S")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(180),
    );
    let d = Daemon::start()?;
    let mut app = d.run_example("dirty_log", &["1024", "0"])?;
    let pid = app.pid;
    app.expect_line("the `start` line", |l| l.starts_with("start "), LINE_TIMEOUT)?;
    // Let it write for a while (about a second) before the first checkpoint.
    for _ in 0..5 {
        app.expect_line("a `round` line", |l| writes_of(l).is_some(), LINE_TIMEOUT)?;
    }

    let mut taken: Vec<Taken> = Vec::new();
    let mut problems: Vec<String> = Vec::new();
    for i in 0..N_CKPTS {
        app.drain();
        let before = app.history().iter().rev().find_map(|l| writes_of(l)).unwrap_or(0);
        let c0 = Instant::now();
        let stats = d
            .checkpoint_json(&[])
            .with_context(|| format!("checkpoint #{} of dirty_log (pid {pid})\n{}", i + 1, app.context()))?;
        let took = c0.elapsed();
        // Lines still queued were printed while ckptctl ran (the program
        // runs during the pre-copy, it is stopped only at the end): skip
        // them; the second line printed from now on is surely after the stop.
        app.drain();
        let mut after = 0;
        for _ in 0..2 {
            let l = app
                .expect_line(
                    "a `round` line after the checkpoint",
                    |l| writes_of(l).is_some(),
                    LINE_TIMEOUT,
                )
                .with_context(|| format!("dirty_log should keep running after checkpoint {}", stats.id))?;
            after = writes_of(&l).unwrap();
        }
        let (parent, proc_parents) = d.manifest_parent(&stats.id)?;
        let want_parent = taken.last().map(|t| t.stats.id.clone());
        note!(
            "checkpoint #{:2} id {} parent {:?}: stored {:8.1} MiB, ckptctl {:?}, duration {} ms, \
             max stop {} ms, writes {}..{}",
            i + 1,
            stats.id,
            parent,
            mib(stats.stored_bytes),
            took,
            stats.duration_us / 1000,
            stats.max_stop_us / 1000,
            before,
            after
        );
        if parent != want_parent {
            problems.push(format!(
                "checkpoint #{} (id {}): manifest.parent is {parent:?}, expected {want_parent:?} ({}); \
                 the process entries' parents: {proc_parents:?}",
                i + 1,
                stats.id,
                if i == 0 {
                    "the first checkpoint of a process is full"
                } else {
                    "later ones are incremental on the previous one"
                }
            ));
        }
        if stats.stored_bytes == 0 {
            problems.push(format!(
                "checkpoint #{} (id {}): stored_bytes is 0 although the program wrote pages",
                i + 1,
                stats.id
            ));
        }
        taken.push(Taken {
            stats,
            parent,
            before,
            after,
        });
    }
    note!("stored_bytes per checkpoint (MiB):");
    for (i, t) in taken.iter().enumerate() {
        eprintln!(
            "    #{:2} id {:>4} parent {:>6} stored {:8.1} MiB  duration {:6} ms  max_stop {:6} ms  \
             store window {:7.1} MiB, {:5} writes waited",
            i + 1,
            t.stats.id,
            t.parent.as_deref().unwrap_or("-"),
            mib(t.stats.stored_bytes),
            t.stats.duration_us / 1000,
            t.stats.max_stop_us / 1000,
            mib(t.stats.window_bytes),
            t.stats.window_faults
        );
    }
    // This program rewrites its memory faster than the pre-copy follows: what it wrote last
    // must be left in place and stored while it runs, its writes waiting page by page (the
    // restores below check that those pages are the stop instant's).
    if !taken
        .iter()
        .any(|t| t.stats.window_bytes > 0 && t.stats.window_faults > 0)
    {
        problems
            .push("no checkpoint stored pages through the store window while the program wrote to them".to_string());
    }

    // The live program is consistent too (the harness, not the restore).
    let l = app
        .verify(VERIFY_TIMEOUT)
        .context("verifying the original dirty_log before killing it")?;
    note!("original: {l}");
    app.kill9()?;

    let mut order: Vec<usize> = MUST.to_vec();
    order.extend((0..N_CKPTS).filter(|i| !MUST.contains(i)));
    let mut ok: Vec<usize> = Vec::new();
    let mut failed: Vec<(usize, String)> = Vec::new();
    let mut skipped: Vec<usize> = Vec::new();
    for (n, &i) in order.iter().enumerate() {
        if n >= MUST.len() && t0.elapsed() > budget {
            skipped.push(i);
            continue;
        }
        let t = &taken[i];
        let r0 = Instant::now();
        match restore_and_check(&d, t, i, pid) {
            Ok(line) => {
                note!("restore #{} (id {}) in {:?}: {line}", i + 1, t.stats.id, r0.elapsed());
                ok.push(i);
            }
            Err(e) => {
                note!("restore #{} (id {}) FAILED: {e:#}", i + 1, t.stats.id);
                failed.push((i, format!("{e:#}")));
            }
        }
        // Whatever happened, the pid must be free for the next restore.
        if proc_exists(pid) {
            kill9_and_wait(pid).with_context(|| format!("killing restored pid {pid}"))?;
        }
        reap_orphans();
    }
    let names = |v: &[usize]| {
        v.iter()
            .map(|i| format!("#{}(id {})", i + 1, taken[*i].stats.id))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut ok_sorted = ok.clone();
    ok_sorted.sort();
    note!("restored and verified: {}", names(&ok_sorted));
    if !skipped.is_empty() {
        note!("not restored (time budget {budget:?} used up): {}", names(&skipped));
    }
    if !failed.is_empty() || !problems.is_empty() {
        let mut msg = String::new();
        for p in &problems {
            msg.push_str(&format!("- {p}\n"));
        }
        for (i, e) in &failed {
            msg.push_str(&format!(
                "- restore of checkpoint #{} (id {}) failed: {}\n",
                i + 1,
                taken[*i].stats.id,
                e
            ));
        }
        bail!(
            "{} restore(s) failed, {} ok, {} skipped; {} other problem(s):\n{msg}{}",
            failed.len(),
            ok.len(),
            skipped.len(),
            problems.len(),
            d.context()
        );
    }
    Ok(())
}

/// Restores `t` (the running instance is already gone), checks where it
/// resumed, verifies, kills it.  Returns the verify line.
fn restore_and_check(d: &Daemon, t: &Taken, i: usize, pid: i32) -> Result<String> {
    let id = &t.stats.id;
    let mut r = d.restore_ok(id, pid)?;
    let first = r.expect_line(
        "the first `round` line after the restore",
        |l| writes_of(l).is_some(),
        LINE_TIMEOUT,
    )?;
    let w = writes_of(&first).unwrap();
    if w < t.before || w > t.after + BATCH {
        bail!(
            "restoring checkpoint #{} (id {id}): the first line is {first:?}, but the checkpoint \
             was taken between write counts {} (last printed before it) and {} (second printed \
             after it): the restored state is not the checkpoint's\n{}",
            i + 1,
            t.before,
            t.after,
            r.context()
        );
    }
    let v = r.verify(VERIFY_TIMEOUT)?;
    r.kill9()?;
    Ok(format!("first line {first:?}, {v}"))
}
