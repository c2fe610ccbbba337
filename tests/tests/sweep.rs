//! Issue 12, acceptance 2: one root program holding as many kinds of state at once as it can
//! (narrowed capability sets, scheduling policy and nice, oom_score_adj, groups, THP, timer
//! slack, umask, rlimits, cwd, locks of all three kinds, a POSIX timer, queued signals, a
//! sized non-blocking pipe with bytes in it, a Unix socket pair and a TCP listener with their
//! options) is checkpointed, killed and restored twice; `examples/sweep.c` compares a
//! fingerprint of everything it can read and uses the locks, signals and bytes each time.

use anyhow::{ensure, Context, Result};
use ckpt_tests::*;

#[test]
fn every_attribute_at_once_comes_back_twice() -> Result<()> {
    require_root!();
    let dir = tempfile::tempdir()?;
    survives_two_restores("sweep", &[dir.path().to_str().unwrap()])
}

/// Securebits held by a thread that no longer has CAP_SETPCAP cannot be set again: the
/// checkpoint is refused, naming the thread and the bits.
#[test]
fn securebits_without_setpcap_are_refused_by_name() -> Result<()> {
    require_root!();
    let dir = tempfile::tempdir()?;
    let d = Daemon::start()?;
    let mut app = d.run_example("sweep", &[dir.path().to_str().unwrap(), "nosetpcap"])?;
    app.expect_tick(LINE_TIMEOUT)?;
    let out = d.ckptctl(&["checkpoint"]);
    let msg = expect_failure_one_line(&out, "checkpoint of securebits without CAP_SETPCAP")?;
    ensure!(
        msg.contains("securebits") && msg.contains(&format!("thread {}", app.pid)),
        "the refusal should name the thread and its securebits: {msg}"
    );
    let t = app.drain_last_tick().unwrap_or(0);
    app.expect_consecutive_ticks(t, 3, false, LINE_TIMEOUT)
        .context("the program must run on")?;
    app.kill9()?;
    Ok(())
}
