//! `--stop-the-world` checkpoints (the baseline: every page read and written while the
//! programs are stopped) restore exactly, stored plainly and with `ckptd --compress`.
//!
//! 256 MiB is several of the groups the store writes at once while the program is parked
//! (64 MiB), and more than the part of a store always compressed (16 MiB): past it, pages are
//! written as they are whenever no compressed ones are ready, so one store holds runs of both
//! kinds, out of the order of memory.

use anyhow::{anyhow, ensure, Context, Result};
use ckpt_tests::*;
use std::time::Duration;

const VERIFY_TIMEOUT: Duration = Duration::from_secs(90);

/// One round of `dirty_log … sig` (SIGUSR2) -> its write count.
fn round(app: &App) -> Result<u64> {
    app.signal(libc::SIGUSR2)?;
    let l = app.expect_line("a `round` line", |l| l.starts_with("round "), LINE_TIMEOUT)?;
    field(&l, "writes")
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("no `writes N` in {l:?}"))
}

/// A full and an incremental checkpoint taken while stopped, of a program that checks every
/// page it wrote: the incremental one comes back with exactly the writes made before it.
#[test]
fn stopped_checkpoints_full_and_incremental_restore_exactly_plain_and_compressed() -> Result<()> {
    require_root!();
    for daemon in [&[][..], &["--compress"][..]] {
        let d = Daemon::start_with(&bin_dir(), daemon)?;
        // Half of its pages written per round: three quarters of them before the full one.
        let mut app = d.run_example("dirty_log", &["256", "50", "sig"])?;
        let pid = app.pid;
        app.expect_line("the `start` line", |l| l.starts_with("start "), LINE_TIMEOUT)?;
        round(&app)?;
        round(&app)?;
        let full = d.checkpoint_json(&["--stop-the-world", "--full"])?;
        let writes = round(&app)?;
        let incr = d.checkpoint_json(&["--stop-the-world"])?;
        note!(
            "ckptd {daemon:?}: full {} stored {} bytes, stopped {} us; incremental {} stored {} bytes",
            full.id,
            full.stored_bytes,
            full.max_stop_us,
            incr.id,
            incr.stored_bytes
        );
        ensure!(
            incr.stored_bytes < full.stored_bytes,
            "the incremental checkpoint stored {} bytes, the full one {}",
            incr.stored_bytes,
            full.stored_bytes
        );
        app.kill9()?;
        let mut r = d
            .restore_ok(&incr.id, pid)
            .context("restoring the incremental checkpoint")?;
        let l = r.verify(VERIFY_TIMEOUT)?;
        let seq: u64 = field(&l, "seq")
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow!("no `seq N` in {l:?}"))?;
        ensure!(
            seq == writes,
            "ckptd {daemon:?}: the restored program has made {seq} writes, the checkpoint was taken after {writes}"
        );
        r.kill9()?;
    }
    Ok(())
}

/// Memory that compresses, stored while stopped by a ckptd that compresses: the store is
/// smaller than the memory, and every page comes back.
#[test]
fn compressible_memory_stored_while_stopped_comes_back_whole() -> Result<()> {
    require_root!();
    let d = Daemon::start_with(&bin_dir(), &["--compress"])?;
    let mut app = d.run_example("rate_fill", &["256", "text"])?;
    let pid = app.pid;
    app.expect_line("the `ready` line", |l| l.starts_with("ready "), LINE_TIMEOUT)?;
    let st = d.checkpoint_json(&["--stop-the-world", "--full"])?;
    let (on_disk, _) = dir_usage(&d.ckpt_dir(&st.id))?;
    note!("stored {} bytes of memory, {on_disk} bytes on disk", st.stored_bytes);
    ensure!(
        on_disk < st.stored_bytes,
        "with --compress the checkpoint ({on_disk} bytes on disk) should be smaller than its pages ({})",
        st.stored_bytes
    );
    app.kill9()?;
    let mut r = d.restore_ok(&st.id, pid)?;
    r.verify(VERIFY_TIMEOUT)?;
    r.kill9()?;
    Ok(())
}
