//! Acceptance 2: threads_condvar — restore keeps the same pid and tids, the
//! token keeps moving (`ok` ticks) and SIGUSR1 makes main join all 8
//! threads (`joined 8`).

use anyhow::{ensure, Context, Result};
use ckpt_tests::*;
use std::time::Duration;

fn tids_of_line(line: &str) -> Result<Vec<i32>> {
    let s = field(line, "tids").with_context(|| format!("no `tids` in {line:?}"))?;
    let v: Vec<i32> = s
        .split(',')
        .map(|t| t.parse::<i32>())
        .collect::<std::result::Result<_, _>>()
        .with_context(|| format!("bad tids in {line:?}"))?;
    ensure!(v.len() == 8, "expected 8 tids in {line:?}");
    Ok(v)
}

#[test]
fn threads_condvar_same_tids_and_join() -> Result<()> {
    require_root!();
    let d = Daemon::start()?;
    let mut app = d.run_example("threads_condvar", &[])?;
    let pid = app.pid;

    let (t1, line) = app.expect_tick_line(LINE_TIMEOUT)?;
    let tids = tids_of_line(&line)?;
    app.expect_consecutive_ticks(t1, 1, true, LINE_TIMEOUT)?;
    let tasks = task_tids(pid);
    note!("pid {pid} threads {tids:?} tasks {tasks:?}");
    // 1 main + 8 workers (+ whatever helper threads the interposer runs).
    ensure!(
        tasks.len() >= 9 && tasks.contains(&pid),
        "expected at least 9 tasks in /proc/{pid}/task, got {tasks:?}"
    );
    for t in &tids {
        ensure!(
            tasks.contains(t),
            "tid {t} printed but not in /proc/{pid}/task {tasks:?}"
        );
    }

    let cp = d.checkpoint_app(&app)?;
    note!("checkpoint {} took {:?}", cp.id, cp.took);
    app.kill9()?;

    let r = d.restore_ok(&cp.id, pid)?;
    let (t, line) = r.expect_tick_line(LINE_TIMEOUT)?;
    note!("first line after restore: {line}");
    cp.check_resumed(t, &r)?;
    ensure!(
        line.trim_end().ends_with(" ok"),
        "expected `ok` in {line:?}\n{}",
        r.context()
    );
    // The first line may have been assembled before the threads passed the
    // token again; the next ones carry freshly read tids.
    let more = r.expect_consecutive_ticks(t, 3, true, LINE_TIMEOUT)?;
    for l in more.iter().chain(std::iter::once(&line)) {
        let v = tids_of_line(l)?;
        ensure!(
            v == tids,
            "restored threads report tids {v:?} (from {l:?}); expected the original {tids:?}\n{}",
            r.context()
        );
    }
    let rtasks = task_tids(pid);
    for t in tids.iter().chain(std::iter::once(&pid)) {
        ensure!(
            rtasks.contains(t),
            "tid {t} missing from the restored /proc/{pid}/task {rtasks:?} (original {tasks:?})\n{}",
            r.context()
        );
    }
    ensure!(
        rtasks == tasks,
        "the program's threads are back, but the restored /proc/{pid}/task is {rtasks:?}, \
         expected the original {tasks:?} (a helper thread got another tid?)\n{}",
        r.context()
    );

    r.signal(libc::SIGUSR1)?;
    r.expect_line("`joined 8` after SIGUSR1", |l| l == "joined 8", Duration::from_secs(20))?;
    wait_proc_gone(pid, Duration::from_secs(20))
        .context("restored threads_condvar should exit 0 after `joined 8` (and be reaped by ckptd)")?;
    Ok(())
}
