//! Threads that come and go (issue 9, acceptance 6): a program creating and joining
//! short-lived threads as fast as it can (their stacks and heap blocks are unmapped and reused
//! while checkpoints run) is checkpointed 20 times, every checkpoint succeeds, and each one
//! restores and goes on checking its own memory. ckptd's peak memory is printed and stays
//! under twice the program's resident size plus a fixed amount.

use anyhow::{ensure, Context, Result};
use ckpt_tests::*;
use std::time::{Duration, Instant};

/// What ckptd may use beyond twice the programs' memory: its own code, libraries, threads'
/// stacks and buffers of fixed size.
const FIXED: u64 = 192 << 20;

#[test]
fn threads_created_and_joined_as_fast_as_possible() -> Result<()> {
    require_root!();
    let d = Daemon::start()?;
    let mut app = d.run_example("thread_churn", &["4"])?;
    let pid = app.pid;
    app.expect_tick(LINE_TIMEOUT)?;
    let mut ids = Vec::new();
    let mut rss = 0u64;
    let t0 = Instant::now();
    for i in 0..20 {
        let t = Instant::now();
        ids.push(d.checkpoint().with_context(|| format!("checkpoint {} of 20", i + 1))?);
        note!("checkpoint {} took {:?}", i + 1, t.elapsed());
        rss = rss.max(vm_bytes(pid, "VmRSS")?);
        std::thread::sleep(Duration::from_millis(20));
    }
    note!("20 checkpoints in {:?}", t0.elapsed());
    app.expect_tick(LINE_TIMEOUT)?;
    let peak = vm_bytes(d.pid(), "VmHWM")?;
    note!(
        "ckptd peak memory {} MiB; the program's resident size up to {} MiB",
        peak >> 20,
        rss >> 20
    );
    ensure!(
        peak < 2 * rss + FIXED,
        "ckptd's peak memory {} MiB is over twice the program's {} MiB plus {} MiB",
        peak >> 20,
        rss >> 20,
        FIXED >> 20
    );
    app.kill9()?;
    app.disarm();
    for id in &ids {
        let mut r = d
            .restore_ok(id, pid)
            .with_context(|| format!("restoring checkpoint {id}"))?;
        let t = r.expect_tick(LINE_TIMEOUT)?;
        r.expect_consecutive_ticks(t, 3, false, LINE_TIMEOUT)
            .with_context(|| format!("restored from {id}"))?;
        r.kill9()?;
        r.disarm();
    }
    Ok(())
}
