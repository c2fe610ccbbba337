//! The hardest cases of pending signals and POSIX timers (issue 12): a real-time signal queued
//! five times with different values for the process and for each thread, a standard signal
//! pending for a thread and the process at once, a periodic timer's signal pending while the
//! timer runs on (exactly one queued), `timer_settime(TIMER_ABSTIME)` on restored timers of
//! CLOCK_MONOTONIC/REALTIME/BOOTTIME/TAI, and the id of a timer created after a deleted one.
//! `examples/signal_edges.c` checks them itself; restored twice.

use anyhow::{ensure, Context, Result};
use ckpt_tests::*;

#[test]
fn pending_signals_and_timers_come_back_exactly() -> Result<()> {
    require_root!();
    survives_two_restores("signal_edges", &[])
}

/// A timer's signal pending behind another of the same number queued before it: the restore
/// would raise the timer's first, so the checkpoint is refused, naming the timer.
#[test]
fn a_timer_signal_behind_another_is_refused_by_name() -> Result<()> {
    require_root!();
    let d = Daemon::start()?;
    let mut app = d.run_example("signal_edges", &["behind"])?;
    app.expect_tick(LINE_TIMEOUT)?;
    let out = d.ckptctl(&["checkpoint"]);
    let msg = expect_failure_one_line(&out, "checkpoint of a timer signal behind another")?;
    ensure!(
        msg.contains("POSIX timer 0") && msg.contains(&format!("process {}", app.pid)),
        "the refusal should name the process and the timer: {msg}"
    );
    let t = app.drain_last_tick().unwrap_or(0);
    app.expect_consecutive_ticks(t, 3, false, LINE_TIMEOUT)
        .context("the program must run on")?;
    app.kill9()?;
    Ok(())
}
