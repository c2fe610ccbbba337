//! A checkpoint is invisible to the program's blocking calls (issue 9, acceptance 4):
//! `eintr_calls` loops on every blocking call a signal handler can end with EINTR, one thread
//! each, and exits with an INVARIANT line on any EINTR or early return. It survives 50
//! checkpoints, 5 refused ones (a userfaultfd of the program's own exists for a moment, while
//! threads are blocked on an epoll fd and a POSIX message queue) and a restore, after which every call goes on.

use anyhow::{bail, ensure, Context, Result};
use ckpt_tests::*;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// `counts a=1 b=2 …` → {a: 1, b: 2}.
fn counts(line: &str) -> HashMap<String, u64> {
    line.split_whitespace()
        .skip(1)
        .filter_map(|kv| kv.split_once('='))
        .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
        .collect()
}

fn next_counts(app: &App) -> Result<HashMap<String, u64>> {
    let l = app.expect_line("a `counts …` line", |l| l.starts_with("counts "), LINE_TIMEOUT)?;
    Ok(counts(&l))
}

/// SysV objects the program made: removed whatever happens.
struct SysV(i32, i32);

impl Drop for SysV {
    fn drop(&mut self) {
        // SAFETY: removing IPC objects by id; harmless if already gone.
        unsafe {
            libc::semctl(self.0, 0, libc::IPC_RMID);
            libc::msgctl(self.1, libc::IPC_RMID, std::ptr::null_mut());
        }
    }
}

#[test]
fn blocking_calls_never_see_eintr() -> Result<()> {
    require_root!();
    let d = Daemon::start()?;
    let port = free_low_port()?;
    let mut app = d.run_example("eintr_calls", &[&port.to_string()])?;
    let pid = app.pid;
    let ids = app.expect_line("`sysv SEM MSG`", |l| l.starts_with("sysv "), LINE_TIMEOUT)?;
    let ids: Vec<i32> = ids.split_whitespace().skip(1).filter_map(|s| s.parse().ok()).collect();
    ensure!(ids.len() == 2, "bad sysv line: {ids:?}");
    let _sysv = SysV(ids[0], ids[1]);
    app.expect_tick(LINE_TIMEOUT)?;
    let before = next_counts(&app)?;

    let t0 = Instant::now();
    let mut last = String::new();
    for i in 0..50 {
        last = d.checkpoint().with_context(|| format!("checkpoint {} of 50", i + 1))?;
        std::thread::sleep(Duration::from_millis(40 + (i % 5) * 20));
    }
    note!("50 checkpoints in {:?}", t0.elapsed());
    app.expect_tick(LINE_TIMEOUT).context("after 50 checkpoints")?;

    for i in 0..5 {
        send_signal(pid, libc::SIGUSR1)?;
        app.expect_line("`odd on`", |l| l == "odd on", LINE_TIMEOUT)?;
        std::thread::sleep(Duration::from_millis(50));
        let out = d.ckptctl(&["checkpoint"]);
        if out.status.success() {
            bail!(
                "checkpoint {} with an epoll fd open should be refused: {}",
                i + 1,
                describe(&out)
            );
        }
        let msg = String::from_utf8_lossy(&out.stderr).to_string();
        ensure!(msg.contains("userfaultfd"), "the refusal should name the fd: {msg}");
        send_signal(pid, libc::SIGUSR1)?;
        app.expect_line("`odd off`", |l| l == "odd off", LINE_TIMEOUT)?;
    }
    let after = next_counts(&app)?;
    for (k, v) in &before {
        // Nobody connects to the listener: accept stays blocked (it must never return).
        if k == "accept" {
            continue;
        }
        ensure!(
            after.get(k).is_some_and(|a| a > v),
            "call {k} made no progress during the checkpoints: {v} -> {:?}",
            after.get(k)
        );
    }

    app.kill9()?;
    let r = d.restore_ok(&last, pid)?;
    r.expect_tick(LINE_TIMEOUT)
        .context("the restored program should go on")?;
    let c1 = next_counts(&r)?;
    for _ in 0..5 {
        d.checkpoint().context("checkpoint of the restored program")?;
        std::thread::sleep(Duration::from_millis(100));
    }
    let c2 = next_counts(&r)?;
    let c2 = if c2 == c1 { next_counts(&r)? } else { c2 };
    for (k, v) in &c1 {
        // The waitpid thread's child belongs to the killed process, not the restored one;
        // accept stays blocked for good.
        if k == "waitpid" || k == "accept" {
            continue;
        }
        ensure!(
            c2.get(k).is_some_and(|a| a > v),
            "call {k} made no progress after the restore: {v} -> {:?}\n{}",
            c2.get(k),
            r.context()
        );
    }
    r.expect_tick(LINE_TIMEOUT)?;
    Ok(())
}
