//! epoll instances (issue 10): every kind of watch comes back under the program's own fd
//! numbers with its exact mask and data word, readiness is what it would have been (nothing
//! lost, level-triggered reported again), and an instance shared by two processes is one again.

use anyhow::{ensure, Context, Result};
use ckpt_tests::*;

/// Runs `example`, checks it is sound, then checkpoint / kill / restore twice (the second time
/// from a checkpoint of the restored program), asking it to check its state each time.
/// `others` names the other processes of the checkpoint to kill with it (from its output).
fn survives_two_restores(example: &str, args: &[&str], others: impl Fn(&App) -> Vec<i32>) -> Result<()> {
    let d = Daemon::start()?;
    let mut app = d.run_example(example, args)?;
    let pid = app.pid;
    app.expect_tick(LINE_TIMEOUT)?;
    ask_state(&app).context("before any checkpoint")?;
    for round in 1..=2 {
        app.expect_tick(LINE_TIMEOUT)?;
        // A child forked by the last check is in the checkpoint only once registered.
        for p in others(&app) {
            wait_registered(&d, p)?;
        }
        let cp = d.checkpoint_app(&app).with_context(|| format!("checkpoint {round}"))?;
        let show = d.ckptctl_ok(&["show", &cp.id])?;
        ensure!(
            show.contains("epoll ("),
            "ckptctl show should describe the epoll:\n{show}"
        );
        let rest = others(&app);
        app.kill9()?;
        for p in rest {
            kill9_and_wait(p)?;
        }
        // The old handle must not kill the restored process (same pid) when it is dropped.
        app.disarm();
        app = d.restore_ok(&cp.id, pid).with_context(|| format!("restore {round}"))?;
        app.expect_tick(LINE_TIMEOUT)
            .with_context(|| format!("after restore {round}"))?;
        ask_state(&app).with_context(|| format!("after restore {round}\n{}", d.context()))?;
    }
    // The child forked by the last check is announced before the next tick.
    app.expect_tick(LINE_TIMEOUT)?;
    let rest = others(&app);
    app.kill9()?;
    for p in rest {
        kill9_and_wait(p)?;
    }
    Ok(())
}

fn wait_registered(d: &Daemon, pid: i32) -> Result<()> {
    let t0 = std::time::Instant::now();
    loop {
        let status = d.ckptctl_ok(&["status"])?;
        if status
            .split(|c: char| !c.is_ascii_digit())
            .any(|w| w == pid.to_string())
        {
            return Ok(());
        }
        ensure!(
            t0.elapsed() < LINE_TIMEOUT,
            "pid {pid} is not registered with ckptd:\n{status}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The pid of the child the program forked last (`child PID`).
fn last_child(app: &App) -> Vec<i32> {
    app.history()
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("child ").and_then(|p| p.trim().parse().ok()))
        .into_iter()
        .collect()
}

#[test]
fn epoll_watches_masks_data_and_readiness() -> Result<()> {
    require_root!();
    survives_two_restores("epoll_state", &[], |_| Vec::new())
}

#[test]
fn epoll_shared_by_two_processes() -> Result<()> {
    require_root!();
    survives_two_restores("epoll_state", &["shared"], last_child)
}

/// A watch whose file the program closed and holds at no other fd (another process holds it)
/// cannot be registered again: the checkpoint is refused naming the epoll fd and the number,
/// and the program runs on.
#[test]
fn epoll_watch_of_a_file_held_elsewhere_refused() -> Result<()> {
    require_root!();
    let d = Daemon::start()?;
    let mut app = d.run_example("epoll_state", &["orphan"])?;
    let first = app.expect_line(
        "`orphan epoll E tfd T child C`",
        |l| l.starts_with("orphan "),
        LINE_TIMEOUT,
    )?;
    let num = |k: &str| field(&first, k).and_then(|v| v.parse::<i64>().ok());
    let (Some(ep), Some(tfd), Some(child)) = (num("epoll"), num("tfd"), num("child")) else {
        anyhow::bail!("bad first line {first:?}");
    };
    wait_registered(&d, child as i32)?;
    app.expect_tick(LINE_TIMEOUT)?;
    let out = d.ckptctl(&["checkpoint"]);
    let msg = expect_failure_one_line(&out, "checkpoint of an epoll watching a file held elsewhere")
        .map_err(|e| e.context(d.context()))?;
    note!("ckptctl said: {msg}");
    ensure!(
        msg.contains(&format!("epoll fd {ep} ")) && contains_number(&msg, tfd) && contains_number(&msg, app.pid as i64),
        "the message should name pid {}, epoll fd {ep} and fd {tfd}: {msg:?}",
        app.pid
    );
    let t = app.drain_last_tick().unwrap_or(0);
    app.expect_consecutive_ticks(t, 3, false, LINE_TIMEOUT)
        .context("the program must keep running after the refused checkpoint")?;
    app.kill9()?;
    kill9_and_wait(child as i32)?;
    Ok(())
}
