//! Self-checking examples: a program that sets up some kind of state checks it when sent
//! SIGUSR1 and prints `state ok`, or `INVARIANT <what>` lines and `state bad`.

use crate::{send_signal, wait_proc_gone, App, Daemon, GONE_TIMEOUT, LINE_TIMEOUT};
use anyhow::{ensure, Context, Result};

/// Asks the program for its verdict; an error carries the INVARIANT lines it printed.
pub fn ask_state(app: &App) -> Result<()> {
    let before = app.history().len();
    app.signal(libc::SIGUSR1)?;
    let l = app.expect_line("`state ok` or `state bad`", |l| l.starts_with("state "), LINE_TIMEOUT)?;
    let bad: Vec<String> = app
        .history()
        .into_iter()
        .skip(before)
        .filter(|l| l.starts_with("INVARIANT"))
        .collect();
    ensure!(l == "state ok" && bad.is_empty(), "{}: {}", l, bad.join("; "));
    Ok(())
}

/// Runs `example`, checks it is sound, then checkpoint / kill / restore twice (the second time
/// from a checkpoint of the restored program), asking it for its verdict each time.
pub fn survives_two_restores(example: &str, args: &[&str]) -> Result<()> {
    let d = Daemon::start()?;
    let app = d.run_example(example, args)?;
    app.expect_tick(LINE_TIMEOUT)?;
    ask_state(&app).context("before any checkpoint")?;
    let mut app = restore_twice(&d, app)?;
    app.kill9()?;
    Ok(())
}

/// Checkpoint / kill / restore `app` twice (the second time from a checkpoint of the restored
/// program), asking it for its verdict after each restore; the restored program.
pub fn restore_twice(d: &Daemon, mut app: App) -> Result<App> {
    let pid = app.pid;
    for round in 1..=2 {
        let cp = d.checkpoint_app(&app).with_context(|| format!("checkpoint {round}"))?;
        // The whole tree goes: every process of it is in the checkpoint. The old handle must
        // not kill the restored process (same pid) when it is dropped.
        app.kill9_tree()?;
        app = d.restore_ok(&cp.id, pid).with_context(|| format!("restore {round}"))?;
        app.expect_tick(LINE_TIMEOUT)
            .with_context(|| format!("after restore {round}"))?;
        ask_state(&app).with_context(|| format!("after restore {round}\n{}", d.context()))?;
    }
    Ok(app)
}

/// Kills a process that is not our child (a restored one) and waits until it is gone.
pub fn kill_pid(pid: i32) -> Result<()> {
    send_signal(pid, libc::SIGKILL)?;
    wait_proc_gone(pid, GONE_TIMEOUT)
}

/// Kills `root` (not our child: a restored one) and every process below it, as
/// [`App::kill9_tree`] does.
pub fn kill_tree(root: i32) -> Result<()> {
    let below = crate::descendants(root);
    for &p in below.iter().rev().chain([&root]) {
        send_signal(p, libc::SIGKILL)?;
    }
    for &p in below.iter().chain([&root]) {
        wait_proc_gone(p, GONE_TIMEOUT)?;
    }
    Ok(())
}

/// Runs `example args`, asks for a checkpoint and expects it refused in one line containing
/// every one of `words` and the pid; the program (and any child of it) runs on.
pub fn refused(example: &str, args: &[&str], words: &[&str]) -> Result<()> {
    let d = Daemon::start()?;
    let mut app = d.run_example(example, args)?;
    app.expect_tick(LINE_TIMEOUT)?;
    let out = d.ckptctl(&["checkpoint"]);
    let msg = crate::expect_failure_one_line(&out, &format!("checkpoint of {example}"))
        .map_err(|e| e.context(d.context()))?;
    crate::note!("ckptctl said: {msg}");
    for w in words {
        ensure!(msg.contains(w), "the refusal should say {w:?}: {msg}");
    }
    ensure!(
        msg.contains(&app.pid.to_string()),
        "the refusal should name pid {}: {msg}",
        app.pid
    );
    let t = app.drain_last_tick().unwrap_or(0);
    app.expect_consecutive_ticks(t, 3, false, LINE_TIMEOUT)
        .context("the program must run on")?;
    app.kill9_tree()?;
    Ok(())
}

/// A temporary path as a program argument.
pub fn path_arg(p: &std::path::Path) -> Result<&str> {
    p.to_str().context("a temporary path that is not UTF-8")
}
