//! Acceptance 3: /usr/bin/python3 dict_counter.py — restore carries on from
//! the checkpointed counter with the 1,000,000-entry dict intact.

use anyhow::{ensure, Result};
use ckpt_tests::*;
use std::path::Path;
use std::time::Duration;

#[test]
fn python_dict_counter_restore() -> Result<()> {
    require_root!();
    ensure!(
        Path::new(PYTHON3).exists(),
        "{PYTHON3} is required (scripts/test.sh installs python3)"
    );
    let d = Daemon::start()?;
    let mut app = d.run_example("dict_counter.py", &[])?;
    let pid = app.pid;
    let t0 = app.expect_tick(Duration::from_secs(60))?;
    app.expect_consecutive_ticks(t0, 3, true, LINE_TIMEOUT)?;

    let cp = d.checkpoint_app(&app)?;
    note!(
        "checkpoint {} took {:?}; last before {}, first after {}",
        cp.id,
        cp.took,
        cp.last_before,
        cp.first_after
    );
    app.kill9()?;

    let mut r = d.restore_ok(&cp.id, pid)?;
    let (t, line) = r.expect_tick_line(LINE_TIMEOUT)?;
    note!("first line after restore: {line}");
    cp.check_resumed(t, &r)?;
    ensure!(line.trim_end().ends_with(" ok"), "expected `ok` in {line:?}");
    r.expect_consecutive_ticks(t, 5, true, LINE_TIMEOUT)?;
    ensure!(r.is_alive(), "restored python pid {pid} should be alive");
    r.kill9()?;
    Ok(())
}
