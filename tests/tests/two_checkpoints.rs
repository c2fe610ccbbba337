//! Acceptance 5: counter — checkpoints A and B; restore A twice and B once,
//! each carrying on from its own checkpoint.

use anyhow::{ensure, Result};
use ckpt_tests::*;
use std::time::Duration;

#[test]
fn counter_two_checkpoints_restore_each() -> Result<()> {
    require_root!();
    let d = Daemon::start()?;
    let mut app = d.run_example("counter", &[])?;
    let pid = app.pid;
    let t = app.expect_tick(LINE_TIMEOUT)?;
    let pids = d.status_pids()?;
    ensure!(
        pids.contains(&pid),
        "once the program printed, `ckptctl status` must list pid {pid}; got {pids:?}\n{}",
        d.context()
    );
    app.expect_consecutive_ticks(t, 4, false, LINE_TIMEOUT)?;

    let a = d.checkpoint_app(&app)?;
    note!("A = {} ({:?}): {}..{}", a.id, a.took, a.last_before, a.first_after);
    std::thread::sleep(Duration::from_secs(1));
    let b = d.checkpoint_app(&app)?;
    note!("B = {} ({:?}): {}..{}", b.id, b.took, b.last_before, b.first_after);
    ensure!(a.id != b.id, "two checkpoints got the same id {}", a.id);
    ensure!(
        b.last_before > a.first_after,
        "the counter should have advanced between A and B ({a:?} {b:?})"
    );
    let listed = d.ckptctl_ok(&["list"])?;
    for id in [&a.id, &b.id] {
        ensure!(
            first_words(&listed).contains(id),
            "`ckptctl list` should show checkpoint {id}:\n{listed}"
        );
    }
    app.kill9()?;

    for (round, cp) in [(1, &a), (2, &a), (3, &b)] {
        let mut r = d.restore_ok(&cp.id, pid)?;
        let first = r.expect_tick(LINE_TIMEOUT)?;
        note!("round {round}: restore {} -> first tick {first}", cp.id);
        cp.check_resumed(first, &r)?;
        if std::ptr::eq(cp, &a) {
            ensure!(
                first < b.first_after,
                "restoring A gave tick {first}, which is not before B's ticks ({})\n{}",
                b.first_after,
                r.context()
            );
        }
        r.expect_consecutive_ticks(first, 3, false, LINE_TIMEOUT)?;
        // The restored process is a child of ckptd, and ckptctl's stdout
        // carries only the program's output.
        let ppid = proc_state(pid).map(|(_, pp)| pp);
        ensure!(
            ppid == Some(d.pid()),
            "restored pid {pid} should be a child of ckptd (pid {}), its parent is {ppid:?}",
            d.pid()
        );
        let h = r.history();
        ensure!(
            h.iter().all(|l| tick_num(l).is_some()),
            "stdout of `ckptctl restore` should carry only the program's lines, got {h:?}"
        );
        r.kill9()?;
    }
    Ok(())
}
