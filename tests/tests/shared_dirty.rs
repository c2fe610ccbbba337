//! Shared memory is tracked for dirty pages like private memory (issue 11): a parent and two
//! forked children write shared anonymous memory, a memfd and a SysV segment
//! (`examples/shm_writers.c`: a checksum over every page's generation, pages that check
//! themselves, a generation counter), through chains of incremental checkpoints that store
//! only what was written; restores bring back exactly the checkpoint's content. And a big,
//! mostly idle shared region costs an incremental checkpoint only its written pages.

use anyhow::{bail, ensure, Context, Result};
use ckpt_tests::*;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

/// Starts `shm_writers` with `args`; the app and the pids of its processes, once all are
/// registered.
fn start(d: &Daemon, args: &[&str]) -> Result<(App, Vec<i32>)> {
    let app = d.run_example("shm_writers", args)?;
    let l = app.expect_line("`ready`", |l| l.starts_with("ready "), LINE_TIMEOUT)?;
    let pids = pids_of(&l)?;
    wait_registered(d, &pids)?;
    Ok((app, pids))
}

fn pids_of(ready: &str) -> Result<Vec<i32>> {
    let (_, list) = ready.split_once(" pids ").context("bad ready line")?;
    list.split_whitespace()
        .map(|p| p.parse().context("bad pid in the ready line"))
        .collect()
}

fn wait_registered(d: &Daemon, pids: &[i32]) -> Result<()> {
    let t0 = Instant::now();
    while !pids.iter().all(|p| d.status_pids().is_ok_and(|s| s.contains(p))) {
        ensure!(
            t0.elapsed() < LINE_TIMEOUT,
            "the processes {pids:?} did not all register\n{}",
            d.context()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Toggles hold (SIGUSR2); the generation the answer names.
fn toggle(app: &App, want: &str) -> Result<u64> {
    app.signal(libc::SIGUSR2)?;
    let l = app.expect_line(want, |l| l.starts_with(want), LINE_TIMEOUT)?;
    field_u64(&l, "gen").context("bad hold line")
}

/// Has the program check itself (SIGUSR1); the generation it found.
fn check(app: &App) -> Result<u64> {
    app.signal(libc::SIGUSR1)?;
    let l = app.expect_line("`check`", |l| l.starts_with("check "), LINE_TIMEOUT)?;
    if !l.ends_with(" ok") {
        bail!("{l}\n{}", app.context());
    }
    field_u64(&l, "gen").context("bad check line")
}

/// `n` checkpoints while every process writes, the first after `first` (the rest plain
/// incremental ones, each checked to store well under the shared memory's size: they are
/// incremental for it too); then one while they hold still, whose id and generation it
/// returns.
fn chain(d: &Daemon, app: &App, n: usize, first: &[&str], shared_bytes: u64) -> Result<(String, u64)> {
    for k in 0..n {
        std::thread::sleep(Duration::from_millis(100));
        let st = d
            .checkpoint_json(if k == 0 { first } else { &[] })
            .with_context(|| format!("checkpoint {k} under writes"))?;
        eprintln!("checkpoint {} under writes: {} bytes stored", st.id, st.stored_bytes);
        if k > 0 {
            // A full read stores the whole region for each of the three holders; what the
            // writers dirty between two checkpoints (about 12 MB/s) grows with the time
            // between them, which a loaded machine stretches: one holder's region, a third of
            // a full read, is far from either. (The idle test bounds the bytes exactly.)
            ensure!(
                st.stored_bytes < shared_bytes,
                "incremental checkpoint {} stored {} bytes: shared memory ({} bytes per holder) was read in full\n{}",
                st.id,
                st.stored_bytes,
                shared_bytes,
                d.context()
            );
        }
    }
    let g = toggle(app, "hold")?;
    let st = d.checkpoint_json(&[]).context("checkpoint while held")?;
    ensure!(
        st.stored_bytes < shared_bytes / 4,
        "the held checkpoint stored {} bytes",
        st.stored_bytes
    );
    toggle(app, "release")?;
    Ok((st.id, g))
}

#[test]
fn shared_memory_incremental_chains_restore_exactly() -> Result<()> {
    require_root!();
    let d = Daemon::start()?;
    let (mut app, pids) = start(&d, &["2", "64"])?;
    let pid = pids[0];
    let shared = 64 * MIB;
    // A full checkpoint, ten incremental ones under writes, one held: restored, it is exactly
    // at its generation and every page and the sum check out. Twice, the second chain
    // starting from the restored processes.
    let (mut id, mut g) = chain(&d, &app, 11, &[], shared)?;
    for round in 1..=2 {
        check(&app).with_context(|| format!("before kill {round}"))?;
        app.kill9_tree()?;
        app = d.restore_ok(&id, pid).with_context(|| format!("restore {round}"))?;
        let got = check(&app).with_context(|| format!("after restore {round}\n{}", d.context()))?;
        ensure!(
            got == g,
            "restore {round} of {id}: generation {got}, but the program held still at {g} when it was taken"
        );
        wait_registered(&d, &pids)?;
        toggle(&app, "release")?;
        if round == 1 {
            (id, g) = chain(&d, &app, 11, &[], shared)?;
        }
    }
    std::thread::sleep(Duration::from_millis(100));
    check(&app).context("after the second restore, writing again")?;
    app.kill9_tree()?;
    Ok(())
}

/// A 128 MiB shared region mapped by three processes, idle but for a few hundred page
/// writes between two checkpoints: the second stores those pages (once per holder) and the
/// processes' private pages, not the region.
#[test]
fn idle_shared_region_stores_only_written_pages() -> Result<()> {
    require_root!();
    let d = Daemon::start()?;
    let (mut app, pids) = start(&d, &["2", "128", "held"])?;
    let first = d.checkpoint_json(&[]).context("first checkpoint")?;
    ensure!(
        first.stored_bytes >= 128 * MIB,
        "the first checkpoint stored {} bytes, less than the region",
        first.stored_bytes
    );
    toggle(&app, "release")?;
    std::thread::sleep(Duration::from_millis(100));
    let g = toggle(&app, "hold")?;
    let second = d.checkpoint_json(&[]).context("second checkpoint")?;
    // Each write rewrote one page of one of the three pieces of shared memory (the SysV
    // segment's pages are stored apart, in full); every holder stores what any of them
    // wrote. Private memory written meanwhile (stacks, stdio) is a few pages a process.
    let holders = pids.len() as u64;
    let written = (g + 1) * 4096 * holders;
    let slack = 2 * MIB * holders;
    eprintln!(
        "first {} bytes, second {} bytes after {g} page writes (at most {written} bytes of shared pages)",
        first.stored_bytes, second.stored_bytes
    );
    ensure!(
        second.stored_bytes <= written + slack,
        "the second checkpoint stored {} bytes for {g} page writes (bound {})\n{}",
        second.stored_bytes,
        written + slack,
        d.context()
    );
    // And the chain restores to exactly that content.
    app.kill9_tree()?;
    app = d.restore_ok(&second.id, pids[0])?;
    let got = check(&app)?;
    ensure!(got == g, "restored at generation {got}, taken at {g}");
    app.kill9_tree()?;
    Ok(())
}

/// A child forked after a checkpoint writes and exits before the next: its writes were only
/// in its own page tables, gone with it. The next checkpoint must read the shared memory in
/// full (the parent's fork count changed), and restored from it, the program finds every
/// page the child wrote; the checkpoint after is incremental again.
#[test]
fn child_that_wrote_and_exited_forces_a_full_read() -> Result<()> {
    require_root!();
    let d = Daemon::start()?;
    let (mut app, pids) = start(&d, &["1", "64"])?;
    let shared = 64 * MIB;
    chain(&d, &app, 3, &[], shared)?;
    app.signal(libc::SIGHUP)?;
    app.expect_line("`spawned`", |l| l.starts_with("spawned "), LINE_TIMEOUT)?;
    let g = toggle(&app, "hold")?;
    let after = d.checkpoint_json(&[]).context("checkpoint after the child exited")?;
    ensure!(
        after.stored_bytes >= shared,
        "the checkpoint after a child wrote and exited stored {} bytes: shared memory was not read in full\n{}",
        after.stored_bytes,
        d.context()
    );
    toggle(&app, "release")?;
    std::thread::sleep(Duration::from_millis(100));
    let next = d.checkpoint_json(&[]).context("the checkpoint after")?;
    ensure!(
        next.stored_bytes < shared / 4,
        "the checkpoint after the full one stored {} bytes: not incremental again",
        next.stored_bytes
    );
    app.kill9_tree()?;
    app = d.restore_ok(&after.id, pids[0])?;
    let got = check(&app).with_context(|| format!("restored from {}\n{}", after.id, d.context()))?;
    ensure!(got == g, "restored at generation {got}, taken at {g}");
    app.kill9_tree()?;
    Ok(())
}
