//! Kernel objects with no peer (issue 10, acceptance 5): each example sets up every mode of
//! its kind, is checkpointed, killed and restored twice, and checks its own state when asked
//! (SIGUSR1): `state ok`, or an `INVARIANT` line naming what changed.

use anyhow::{ensure, Context, Result};
use ckpt_tests::*;

#[test]
fn eventfd_counters_modes_and_sharing() -> Result<()> {
    require_root!();
    survives_two_restores("eventfd_state", &[])
}

#[test]
fn timerfd_clocks_modes_and_unread_expirations() -> Result<()> {
    require_root!();
    survives_two_restores("timerfd_state", &[])
}

#[test]
fn signalfd_reads_the_signals_pending_at_checkpoint() -> Result<()> {
    require_root!();
    survives_two_restores("signalfd_state", &[])
}

#[test]
fn inotify_watches_keep_paths_masks_and_numbers() -> Result<()> {
    require_root!();
    let dir = tempfile::Builder::new().prefix("ckpt-inotify-").tempdir()?;
    survives_two_restores("inotify_state", &[path_arg(dir.path())?])
}

/// A watched path that is gone at restore: the restore is refused, naming it, and the program
/// is not started.
#[test]
fn inotify_restore_refused_when_a_watched_path_is_gone() -> Result<()> {
    require_root!();
    let dir = tempfile::Builder::new().prefix("ckpt-inotify-").tempdir()?;
    let d = Daemon::start()?;
    let mut app = d.run_example("inotify_state", &[path_arg(dir.path())?])?;
    let pid = app.pid;
    app.expect_tick(LINE_TIMEOUT)?;
    let cp = d.checkpoint_app(&app)?;
    app.kill9()?;
    app.disarm();
    let gone = dir.path().join("b");
    std::fs::remove_dir(&gone)?;
    let out = d.ckptctl(&["restore", &cp.id]);
    let msg = expect_failure_one_line(&out, "restore with a watched directory removed").context(d.context())?;
    note!("ckptctl said: {msg}");
    ensure!(
        msg.contains(&*gone.to_string_lossy()) && msg.contains("no longer exists"),
        "the refusal does not name {}: {msg}",
        gone.display()
    );
    std::thread::sleep(std::time::Duration::from_millis(300));
    ensure!(!proc_exists(pid), "pid {pid} runs after the refused restore");
    Ok(())
}

/// A watch on a file ckptd cannot find by path (procfs gives no usable file handle): the
/// checkpoint is refused, naming the watch, and the program runs on.
#[test]
fn inotify_checkpoint_refused_for_a_watch_with_no_path() -> Result<()> {
    require_root!();
    let dir = tempfile::Builder::new().prefix("ckpt-inotify-").tempdir()?;
    let d = Daemon::start()?;
    let app = d.run_example("inotify_state", &[path_arg(dir.path())?, "/proc/sys/kernel/hostname"])?;
    app.expect_tick(LINE_TIMEOUT)?;
    let out = d.ckptctl(&["checkpoint"]);
    let msg = expect_failure_one_line(&out, "checkpoint with a watch on a procfs file").context(d.context())?;
    note!("ckptctl said: {msg}");
    ensure!(
        msg.contains("inotify watch") && msg.contains("has no path"),
        "the refusal does not name the watch: {msg}"
    );
    app.expect_tick(LINE_TIMEOUT)
        .context("the program after the refused checkpoint")?;
    ask_state(&app)?;
    Ok(())
}
