//! POSIX timers (issue 10): `posix_timers` holds timers of every clock and notification kind
//! and checks its own state when asked (SIGUSR1); it is checkpointed, killed and restored twice.

use anyhow::{ensure, Context, Result};
use ckpt_tests::*;

fn ask_state(app: &App) -> Result<()> {
    app.signal(libc::SIGUSR1)?;
    let l = app.expect_line("`state ok` or `state bad`", |l| l.starts_with("state "), LINE_TIMEOUT)?;
    let bad: Vec<String> = app
        .history()
        .into_iter()
        .filter(|l| l.starts_with("INVARIANT"))
        .collect();
    ensure!(l == "state ok" && bad.is_empty(), "{}: {}", l, bad.join("; "));
    Ok(())
}

#[test]
fn posix_timers_keep_ids_clocks_targets_and_times() -> Result<()> {
    require_root!();
    let d = Daemon::start()?;
    let mut app = d.run_example("posix_timers", &[])?;
    let pid = app.pid;
    app.expect_tick(LINE_TIMEOUT)?;
    ask_state(&app).context("before any checkpoint")?;
    for round in 1..=2 {
        let cp = d.checkpoint_app(&app).with_context(|| format!("checkpoint {round}"))?;
        app.kill9()?;
        app.disarm();
        app = d.restore_ok(&cp.id, pid).with_context(|| format!("restore {round}"))?;
        app.expect_tick(LINE_TIMEOUT)
            .with_context(|| format!("after restore {round}"))?;
        ask_state(&app).with_context(|| format!("after restore {round}\n{}", d.context()))?;
    }
    app.kill9()?;
    Ok(())
}
