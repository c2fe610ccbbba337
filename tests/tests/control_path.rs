//! The control path survives what real programs do (issue 9, acceptance 5): a program that
//! blocks every signal in every thread (even with raw system calls, and glibc's timer helper
//! thread) and forks from a thread; a program that closes every descriptor it did not open;
//! a `ckptd` killed and started again while three programs run; a shell loop starting a
//! short-lived child every 10 ms. For each, 20 checkpoints succeed and every one restores.

use anyhow::{ensure, Context, Result};
use ckpt_tests::*;
use std::path::Path;
use std::time::{Duration, Instant};

const ROUNDS: usize = 20;

/// Takes `ROUNDS` checkpoints of the running `app` (each must succeed), then kills it and
/// restores each checkpoint in turn, checking that the restored program goes on ticking and
/// passes `check` (it is killed before the next restore). Returns the last restored App.
fn checkpoint_and_restore_each(d: &Daemon, mut app: App, check: impl Fn(&App) -> Result<()>) -> Result<App> {
    let pid = app.pid;
    app.expect_tick(LINE_TIMEOUT)?;
    let mut ids = Vec::new();
    let t0 = Instant::now();
    for i in 0..ROUNDS {
        let id = d
            .checkpoint()
            .with_context(|| format!("checkpoint {} of {ROUNDS} of pid {pid}", i + 1))?;
        ids.push(id);
        std::thread::sleep(Duration::from_millis(30));
    }
    note!("{ROUNDS} checkpoints of pid {pid} in {:?}", t0.elapsed());
    app.expect_tick(LINE_TIMEOUT).context("after the checkpoints")?;
    check(&app)?;
    app.kill9()?;
    app.disarm();
    let mut last = None;
    for id in &ids {
        let mut r = d
            .restore_ok(id, pid)
            .with_context(|| format!("restoring checkpoint {id}"))?;
        let t = r
            .expect_tick(LINE_TIMEOUT)
            .with_context(|| format!("the program restored from {id} should go on"))?;
        r.expect_consecutive_ticks(t, 2, false, LINE_TIMEOUT)
            .with_context(|| format!("restored from {id}"))?;
        check(&r).with_context(|| format!("restored from {id}"))?;
        if Some(id) == ids.last() {
            last = Some(r);
        } else {
            r.kill9()?;
            // The next restore brings the same pid back: this App must not kill it on drop.
            r.disarm();
        }
    }
    last.context("no checkpoint")
}

/// Some thread of `pid` blocks every signal (the park signal included) at the kernel level.
fn has_fully_blocked_thread(pid: i32) -> Result<bool> {
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))?.flatten() {
        let st = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
        let blk = st
            .lines()
            .find_map(|l| l.strip_prefix("SigBlk:"))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or(0);
        // Everything but SIGKILL and SIGSTOP, which the kernel never lets a thread block.
        if blk | (1 << 8) | (1 << 18) == !0 {
            return Ok(true);
        }
    }
    Ok(false)
}

#[test]
fn program_blocking_every_signal_and_forking_from_a_thread() -> Result<()> {
    require_root!();
    let d = Daemon::start()?;
    let app = d.run_example("sigblock_fork", &[])?;
    let r = checkpoint_and_restore_each(&d, app, |a| {
        ensure!(
            has_fully_blocked_thread(a.pid)?,
            "the thread that blocks every signal should block them all again after parking"
        );
        // Its threads fork and vfork on.
        let count = |l: &str, k: &str| field(l, k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        let first = a.expect_line("a tick", |l| l.starts_with("tick "), LINE_TIMEOUT)?;
        std::thread::sleep(Duration::from_millis(300));
        a.drain();
        let later = a.expect_line("a tick", |l| l.starts_with("tick "), LINE_TIMEOUT)?;
        for k in ["forks", "vforks"] {
            ensure!(
                count(&later, k) > count(&first, k),
                "{k} should go on: {first:?} then {later:?}"
            );
        }
        Ok(())
    })?;
    // Restored, it is checkpointed like any other.
    d.checkpoint().context("checkpoint of the restored program")?;
    r.expect_tick(LINE_TIMEOUT)?;
    Ok(())
}

#[test]
fn program_closing_every_descriptor() -> Result<()> {
    require_root!();
    let d = Daemon::start()?;
    let app = d.run_example("close_all", &[])?;
    let r = checkpoint_and_restore_each(&d, app, |_| Ok(()))?;
    d.checkpoint().context("checkpoint of the restored program")?;
    r.expect_tick(LINE_TIMEOUT)?;
    Ok(())
}

#[test]
fn ckptd_restarted_while_programs_run() -> Result<()> {
    require_root!();
    let mut d = Daemon::start()?;
    let apps: Vec<App> = (0..3).map(|_| d.run_example("counter", &[])).collect::<Result<_>>()?;
    let mut pids: Vec<i32> = apps.iter().map(|a| a.pid).collect();
    pids.sort();
    for a in &apps {
        a.expect_tick(LINE_TIMEOUT)?;
    }
    ensure!(d.status_pids()? == pids, "all three should be registered");
    for (sig, how) in [(libc::SIGKILL, "killed"), (libc::SIGTERM, "stopped")] {
        d.restart(sig)?;
        let t0 = Instant::now();
        loop {
            let listed = d.status_pids().unwrap_or_default();
            if listed == pids {
                break;
            }
            ensure!(
                t0.elapsed() < Duration::from_secs(5),
                "after ckptd was {how} and started again, the programs should register again by \
                 themselves; `ckptctl status` lists {listed:?}, expected {pids:?}\n{}",
                d.context()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let took = t0.elapsed();
        note!("ckptd {how} and started again: all three registered again after {took:?}");
        ensure!(
            took < Duration::from_secs(1),
            "re-registering took {took:?}, more than a second"
        );
        let id = d.checkpoint()?;
        let show = d.ckptctl_ok(&["show", &id, "--json"])?;
        for p in &pids {
            ensure!(
                show.contains(&format!("\"pid\":{p}")),
                "checkpoint {id} should include pid {p}"
            );
        }
    }
    let mut ids = Vec::new();
    for _ in 0..ROUNDS {
        ids.push(d.checkpoint()?);
    }
    for mut a in apps {
        a.kill9()?;
        a.disarm();
    }
    for id in &ids {
        // One restore brings back every process of the checkpoint; their output (a pipe to
        // this test when they started) comes through ckptctl's.
        let mut r = d.restore_ok(id, pids[0])?;
        let listed = d.status_pids()?;
        ensure!(
            listed == pids,
            "restoring {id} should bring back {pids:?}, status lists {listed:?}"
        );
        for _ in 0..6 {
            r.expect_tick(LINE_TIMEOUT)?;
        }
        for &pid in &pids {
            ensure!(proc_exists(pid), "pid {pid} should be running after restoring {id}");
        }
        r.kill9()?;
        r.disarm();
        for &pid in &pids[1..] {
            kill9_and_wait(pid)?;
        }
    }
    Ok(())
}

#[test]
fn shell_loop_starting_short_lived_children() -> Result<()> {
    require_root!();
    let d = Daemon::start()?;
    let script = d.dir().join("loop.sh");
    std::fs::write(
        &script,
        "i=0\nwhile :; do i=$((i+1)); /bin/true; sleep 0.01\n  if [ $((i % 10)) = 0 ]; then echo \"tick $((i/10))\"; fi\ndone\n",
    )?;
    let app = d.run(Path::new("/bin/bash"), &[script.to_str().unwrap()])?;
    checkpoint_and_restore_each(&d, app, |_| Ok(()))?;
    Ok(())
}

#[test]
fn process_whose_main_thread_exited_is_refused_by_name() -> Result<()> {
    require_root!();
    let d = Daemon::start()?;
    let app = d.run_example("main_exit", &[])?;
    let t = app.expect_tick(LINE_TIMEOUT)?;
    ensure!(
        d.status_pids()? == vec![app.pid],
        "it is still under checkpoint control"
    );
    let out = d.ckptctl(&["checkpoint"]);
    ensure!(
        !out.status.success(),
        "the checkpoint should be refused: {}",
        describe(&out)
    );
    let msg = String::from_utf8_lossy(&out.stderr).trim().to_string();
    note!("ckptctl said: {msg}");
    ensure!(
        msg.lines().count() == 1 && msg.contains("main thread") && msg.contains(&app.pid.to_string()),
        "one line naming the process and its exited main thread: {msg:?}"
    );
    let t = app.drain_last_tick().unwrap_or(t);
    app.expect_consecutive_ticks(t, 3, false, LINE_TIMEOUT)
        .context("the program keeps running")?;
    Ok(())
}
