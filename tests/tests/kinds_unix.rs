//! Unix domain sockets (issue 10): `examples/unix_state.c` holds sockets of every type and
//! state with data queued unread, is checkpointed, killed and restored twice (the second time
//! from a checkpoint of the restored program), and checks on SIGUSR1 that every queue, name,
//! option and connection is as it set them up (`state ok`, or `INVARIANT` lines).

use anyhow::{ensure, Context, Result};
use ckpt_tests::*;

/// Asks the program to check itself; `also` are further lines to wait for (the child's).
fn ask_state(app: &App, also: &[&str]) -> Result<()> {
    app.drain();
    app.signal(libc::SIGUSR1)?;
    // The child answers before its parent (which waits for the child's data).
    for want in also {
        app.expect_line(want, |l| l.starts_with(want) || l == "child bad", LINE_TIMEOUT)?;
    }
    let l = app.expect_line("`state ok` or `state bad`", |l| l.starts_with("state "), LINE_TIMEOUT)?;
    let bad: Vec<String> = app
        .history()
        .into_iter()
        .filter(|l| l.starts_with("INVARIANT") || l == "child bad")
        .collect();
    ensure!(
        l == "state ok" && bad.is_empty(),
        "{}: {}\n{}",
        l,
        bad.join("; "),
        app.context()
    );
    Ok(())
}

/// Checkpoint / kill / restore twice; `others` are pids of the program's other processes
/// (killed with it), `also` the lines they print when checked.
fn two_rounds(d: &Daemon, mut app: App, others: &[i32], also: &[&str], check_first: bool) -> Result<App> {
    let pid = app.pid;
    if check_first {
        ask_state(&app, also).context("before any checkpoint")?;
    }
    for round in 1..=2 {
        let cp = d.checkpoint_app(&app).with_context(|| format!("checkpoint {round}"))?;
        app.kill9()?;
        // The old handle must not kill the restored process (same pid) when it is dropped.
        app.disarm();
        for o in others {
            kill_pid(*o)?;
        }
        app = d.restore_ok(&cp.id, pid).with_context(|| format!("restore {round}"))?;
        for o in others {
            d.register_pid(*o);
        }
        app.expect_tick(LINE_TIMEOUT)
            .with_context(|| format!("after restore {round}"))?;
        ask_state(&app, also).with_context(|| format!("after restore {round}\n{}", d.context()))?;
    }
    Ok(app)
}

#[test]
fn unix_sockets_of_every_type_and_state_in_one_process() -> Result<()> {
    require_root!();
    let d = Daemon::start()?;
    let dir = d.dir().to_str().context("a daemon folder that is UTF-8")?.to_string();
    let app = d.run_example("unix_state", &["all", &dir])?;
    app.expect_tick(LINE_TIMEOUT)?;
    // What `ckptctl show` says of them.
    let id = d.checkpoint()?;
    let shown = d.ckptctl_ok(&["show", &id])?;
    note!("ckptctl show {id}:\n{shown}");
    for want in [
        "unix stream socket",
        "unix datagram socket",
        "unix seqpacket socket",
        "listening (backlog 7, 1 waiting)",
        "waiting to be accepted by",
        "122880 bytes queued",
        "50 messages queued",
    ] {
        ensure!(shown.contains(want), "`ckptctl show` should say {want:?}:\n{shown}");
    }
    ensure!(
        !shown.contains("comes back closed"),
        "no socket of this program has its peer outside:\n{shown}"
    );
    let mut app = two_rounds(&d, app, &[], &[], true)?;
    app.kill9()?;
    Ok(())
}

#[test]
fn unix_pairs_split_across_two_processes() -> Result<()> {
    require_root!();
    let d = Daemon::start()?;
    let app = d.run_example("unix_state", &["fork"])?;
    let line = app.expect_line("the child's pid", |l| l.starts_with("child "), LINE_TIMEOUT)?;
    let child: i32 = field(&line, "child")
        .and_then(|v| v.parse().ok())
        .context("child pid")?;
    d.register_pid(child);
    app.expect_tick(LINE_TIMEOUT)?;
    let mut app = two_rounds(&d, app, &[child], &["child ok"], true)?;
    app.kill9()?;
    kill_pid(child)?;
    Ok(())
}

#[test]
fn unix_peer_outside_the_checkpoint_comes_back_closed() -> Result<()> {
    require_root!();
    let d = Daemon::start()?;
    let app = d.run_example("unix_state", &["outside"])?;
    let line = app.expect_line("the outside pid", |l| l.starts_with("outside "), LINE_TIMEOUT)?;
    let outside: i32 = field(&line, "outside")
        .and_then(|v| v.parse().ok())
        .context("outside pid")?;
    d.register_pid(outside);
    app.expect_tick(LINE_TIMEOUT)?;
    let id = d.checkpoint()?;
    let shown = d.ckptctl_ok(&["show", &id])?;
    ensure!(
        shown.contains("peer not in the checkpoint: comes back closed"),
        "`ckptctl show {id}` must mark the socket whose peer is outside:\n{shown}"
    );
    // The outside process lives on; the restored end finds its peer closed all the same.
    let mut app = two_rounds(&d, app, &[], &[], false)?;
    app.kill9()?;
    kill_pid(outside)?;
    Ok(())
}

#[test]
fn unix_fds_in_flight_are_refused_by_name() -> Result<()> {
    require_root!();
    let d = Daemon::start()?;
    let mut app = d.run_example("unix_state", &["inflight"])?;
    app.expect_tick(LINE_TIMEOUT)?;
    let out = d.ckptctl(&["checkpoint"]);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    ensure!(
        !out.status.success()
            && err.contains("fds in flight on a Unix socket")
            && err.contains("let the receiver take them before checkpointing")
            && err.contains(&format!("process {}", app.pid)),
        "the checkpoint must be refused naming the process and the fds in flight; got {:?}: {err}",
        out.status
    );
    // Nothing changed for the program: it runs on.
    app.drain();
    app.expect_tick(LINE_TIMEOUT)?;
    app.kill9()?;
    Ok(())
}

/// A connection whose peer credentials are another user's than ckptd's would come back with
/// ckptd's (a server checking its clients' uid would see root): refused, naming them, and the
/// program runs on.
#[test]
fn unix_peer_credentials_of_another_user_are_refused() -> Result<()> {
    require_root!();
    let d = Daemon::start()?;
    let mut app = d.run_example("unix_other_user.py", &[])?;
    app.expect_tick(LINE_TIMEOUT)?;
    let out = d.ckptctl(&["checkpoint"]);
    let msg = expect_failure_one_line(&out, "checkpoint of a socketpair made by uid 65534")
        .map_err(|e| e.context(d.context()))?;
    ensure!(
        msg.contains("SO_PEERCRED uid 65534") && msg.contains("ckptd of its own user"),
        "the refusal should name the credentials and the way out: {msg}"
    );
    let t = app.drain_last_tick().unwrap_or(0);
    app.expect_consecutive_ticks(t, 3, false, LINE_TIMEOUT)
        .context("the program must run on")?;
    app.kill9()?;
    Ok(())
}
