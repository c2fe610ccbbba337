//! Acceptance 2 (incremental checkpoints): `dirty_log 1024 1 sig` writes 1%
//! of the pages of 1 GiB per round, one round per SIGUSR2 (nothing is
//! written in between, so the test knows exactly what changed).
//!
//! A full checkpoint (`--full`), then 9 checkpoints, one round before each:
//! each must be incremental (`manifest.parent` = the previous id) and store
//! about 1% of 1 GiB (`stored_bytes` between 0.5% and 3%: the ~2600 pages
//! written plus the pages of the log they touch, 2 MiB at most).  Restore
//! the 10th: it verifies and holds exactly the writes of the 10th round
//! state; the 5th too (middle of the chain).  Then delete checkpoints 1..9
//! and restore the 10th again: the same state, still verified.
//!
//! Not tested here: `ckptd --keep N` (the harness's `Daemon::start` takes
//! no extra ckptd arguments).

use anyhow::{anyhow, bail, ensure, Context, Result};
use ckpt_tests::*;
use serde_json::Value;
use std::time::Duration;

const GIB: u64 = 1 << 30;
const VERIFY_TIMEOUT: Duration = Duration::from_secs(90);
/// Rounds before the full checkpoint, so that it holds something.
const ROUNDS_BEFORE_FULL: u32 = 3;

fn writes_of(line: &str) -> Option<u64> {
    if !line.starts_with("round ") {
        return None;
    }
    field(line, "writes")?.parse().ok()
}

fn show_json(d: &Daemon, id: &str) -> Result<Value> {
    let s = d.ckptctl_ok(&["show", id, "--json"])?;
    serde_json::from_str(&s).map_err(|e| anyhow!("ckptctl show {id} --json: not JSON ({e}): {s:.300}"))
}

/// `stored_bytes` of every process in `ckptctl show ID --json`.
fn shown_stored_bytes(d: &Daemon, id: &str) -> Result<Vec<(i64, u64)>> {
    let v = show_json(d, id)?;
    let mut out = Vec::new();
    let hosts = v
        .pointer("/manifest/hosts")
        .and_then(|h| h.as_array())
        .ok_or_else(|| anyhow!("ckptctl show {id} --json: no manifest.hosts array"))?;
    for h in hosts {
        for p in h.get("processes").and_then(|p| p.as_array()).into_iter().flatten() {
            let pid = p.get("pid").and_then(|x| x.as_i64()).unwrap_or(-1);
            let b = p.get("stored_bytes").and_then(|x| x.as_u64()).unwrap_or(0);
            out.push((pid, b));
        }
    }
    Ok(out)
}

/// One round (SIGUSR2) -> its write count.
fn round(app: &App) -> Result<u64> {
    app.signal(libc::SIGUSR2)?;
    let l = app.expect_line(
        "a `round` line (answer to SIGUSR2)",
        |l| writes_of(l).is_some(),
        LINE_TIMEOUT,
    )?;
    Ok(writes_of(&l).unwrap())
}

/// SIGUSR1 -> the global sequence number reported by `verify ok`.
fn verify(app: &App) -> Result<u64> {
    let l = app.verify(VERIFY_TIMEOUT)?;
    note!("{}: {l}", app.label());
    field(&l, "seq")
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("no `seq N` in {l:?}"))
}

/// Restores `id`, verifies that it holds exactly `writes` writes, kills it.
fn restore_verify(d: &Daemon, id: &str, pid: i32, writes: u64, what: &str) -> Result<()> {
    let mut r = d.restore_ok(id, pid).with_context(|| format!("restoring {what}"))?;
    let seq = verify(&r).with_context(|| format!("verifying {what}"))?;
    ensure!(
        seq == writes,
        "{what}: the restored program has done {seq} writes, the checkpoint was taken after \
         exactly {writes} (the program writes nothing between rounds)\n{}",
        r.context()
    );
    r.kill9()?;
    Ok(())
}

#[test]
fn dirty_log_one_percent_rounds_incremental_chain_and_delete() -> Result<()> {
    require_root!();
    let d = Daemon::start()?;
    let mut app = d.run_example("dirty_log", &["1024", "1", "sig"])?;
    let pid = app.pid;
    let start = app.expect_line("the `start` line", |l| l.starts_with("start "), LINE_TIMEOUT)?;
    note!("{start}");
    let per_round: u64 = field(&start, "per_round")
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("no per_round in {start:?}"))?;

    let mut writes = 0;
    for _ in 0..ROUNDS_BEFORE_FULL {
        writes = round(&app)?;
    }
    let full = d
        .checkpoint_json(&["--full"])
        .with_context(|| format!("full checkpoint of dirty_log\n{}", app.context()))?;
    note!(
        "full checkpoint {}: stored {} bytes ({:.2}% of 1 GiB), max stop {} us",
        full.id,
        full.stored_bytes,
        full.stored_bytes as f64 * 100.0 / GIB as f64,
        full.max_stop_us
    );
    let (p, pp) = d.manifest_parent(&full.id)?;
    ensure!(
        p.is_none() && pp.iter().all(Option::is_none),
        "checkpoint --full {}: manifest.parent should be null, is {p:?} (process entries: {pp:?})\n{}",
        full.id,
        d.context()
    );
    // (id, writes at the checkpoint, stored_bytes)
    let mut chain: Vec<(String, u64, u64)> = vec![(full.id.clone(), writes, full.stored_bytes)];
    let mut problems: Vec<String> = Vec::new();
    for k in 2..=10 {
        writes = round(&app)?;
        let st = d
            .checkpoint_json(&[])
            .with_context(|| format!("checkpoint #{k} of dirty_log\n{}", app.context()))?;
        let pct = st.stored_bytes as f64 * 100.0 / GIB as f64;
        let (parent, proc_parents) = d.manifest_parent(&st.id)?;
        let prev = chain.last().unwrap().0.clone();
        note!(
            "checkpoint #{k} id {} parent {parent:?}: stored {} bytes = {pct:.3}% of 1 GiB \
             ({per_round} page writes = {:.3}%), duration {} us, max stop {} us",
            st.id,
            st.stored_bytes,
            per_round as f64 * 4096.0 * 100.0 / GIB as f64,
            st.duration_us,
            st.max_stop_us
        );
        if parent.as_deref() != Some(prev.as_str()) {
            problems.push(format!(
                "checkpoint #{k} (id {}): manifest.parent is {parent:?}, expected Some({prev:?}) \
                 (the process entries' parents: {proc_parents:?})",
                st.id
            ));
        }
        if !(pct > 0.5 && pct < 3.0) {
            problems.push(format!(
                "checkpoint #{k} (id {}): stored_bytes {} is {pct:.3}% of 1 GiB, expected about \
                 1% (between 0.5% and 3%): one round of {per_round} page writes since {prev}",
                st.id, st.stored_bytes
            ));
        }
        chain.push((st.id.clone(), writes, st.stored_bytes));
    }
    eprintln!("    #   id      writes  stored_bytes  % of 1 GiB");
    for (i, (id, w, b)) in chain.iter().enumerate() {
        eprintln!(
            "    {:2} {:>4} {:>10} {:>13} {:>10.3}",
            i + 1,
            id,
            w,
            b,
            *b as f64 * 100.0 / GIB as f64
        );
    }
    if !problems.is_empty() {
        // Report now, but the restores below still run and tell more.
        for p in &problems {
            note!("PROBLEM: {p}");
        }
    }

    let live = verify(&app).context("verifying the original dirty_log")?;
    ensure!(
        live == writes,
        "the live program reports {live} writes, expected {writes}"
    );
    app.kill9()?;

    let (id10, w10, _) = chain[9].clone();
    let (id5, w5, _) = chain[4].clone();
    restore_verify(&d, &id10, pid, w10, &format!("checkpoint #10 (id {id10})"))?;
    restore_verify(
        &d,
        &id5,
        pid,
        w5,
        &format!("checkpoint #5 (id {id5}, middle of the chain)"),
    )?;

    for (id, _, _) in &chain[..9] {
        d.ckptctl_ok(&["delete", id])
            .with_context(|| format!("deleting checkpoint {id}, which {id10} depends on"))?;
    }
    let listed = d.ckptctl_ok(&["list"])?;
    let words = first_words(&listed);
    for (id, _, _) in &chain[..9] {
        ensure!(
            !words.contains(id),
            "`ckptctl list` still shows deleted checkpoint {id}:\n{listed}"
        );
    }
    ensure!(
        words.contains(&id10),
        "`ckptctl list` should still show checkpoint {id10}:\n{listed}"
    );
    let sizes = shown_stored_bytes(&d, &id10)?;
    note!(
        "after deleting 1..9: {id10} (manifest parent, process parents) {:?}, stored_bytes per process {sizes:?}",
        d.manifest_parent(&id10)?
    );
    restore_verify(
        &d,
        &id10,
        pid,
        w10,
        &format!("checkpoint #10 (id {id10}) after deleting 1..9"),
    )?;

    if !problems.is_empty() {
        bail!(
            "the restores verified, but:\n- {}\n{}",
            problems.join("\n- "),
            d.context()
        );
    }
    Ok(())
}

/// After a restore, the next checkpoint is incremental to the restored one (its memory is that
/// one's, and the restorer armed its tracker before it ran): one round of 1 % of 256 MiB
/// written after each of two restores is all the next checkpoint stores, and that checkpoint
/// restores exactly.
#[test]
fn after_a_restore_the_next_checkpoint_is_incremental_to_it() -> Result<()> {
    require_root!();
    const MIB256: u64 = 256 << 20;
    let d = Daemon::start()?;
    let mut app = d.run_example("dirty_log", &["256", "1", "sig"])?;
    let pid = app.pid;
    app.expect_line("the `start` line", |l| l.starts_with("start "), LINE_TIMEOUT)?;
    let mut writes = 0;
    for _ in 0..ROUNDS_BEFORE_FULL {
        writes = round(&app)?;
    }
    let mut base = d.checkpoint_json(&["--full"])?.id;
    for k in 1..=2 {
        app.kill9_tree()?;
        app = d
            .restore_ok(&base, pid)
            .with_context(|| format!("restore {k} of {base}"))?;
        ensure!(
            verify(&app)? == writes,
            "restore {k} of {base}: not the checkpoint's writes"
        );
        writes = round(&app)?;
        let st = d
            .checkpoint_json(&[])
            .with_context(|| format!("checkpoint after restore {k}"))?;
        let (parent, _) = d.manifest_parent(&st.id)?;
        let pct = st.stored_bytes as f64 * 100.0 / MIB256 as f64;
        note!(
            "after restore {k}: checkpoint {} parent {parent:?} stored {} bytes ({pct:.2}%)",
            st.id,
            st.stored_bytes
        );
        ensure!(
            parent.as_deref() == Some(base.as_str()),
            "the checkpoint after restore {k} should be incremental to {base}, its parent is {parent:?}"
        );
        ensure!(
            pct < 4.0,
            "the checkpoint after restore {k} stored {pct:.2}% of 256 MiB for one round of 1 %"
        );
        base = st.id;
    }
    app.kill9_tree()?;
    let r = d.restore_ok(&base, pid)?;
    ensure!(verify(&r)? == writes, "restore of {base}: not the checkpoint's writes");
    kill_tree(r.pid)?;
    Ok(())
}
