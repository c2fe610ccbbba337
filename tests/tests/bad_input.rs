//! Acceptance 6: bad input.  Each failure must exit non-zero with a single
//! line on stderr and change nothing (no new process, store untouched).

use anyhow::{ensure, Context, Result};
use ckpt_tests::*;
use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::process::Command;
use std::time::Duration;

/// Starts `counter` under ckpt-run, waits for a few ticks, checkpoints it.
fn counter_with_checkpoint(d: &Daemon) -> Result<(App, CkptPoint)> {
    let app = d.run_example("counter", &[])?;
    let t = app.expect_tick(LINE_TIMEOUT)?;
    app.expect_consecutive_ticks(t, 2, false, LINE_TIMEOUT)?;
    let cp = d.checkpoint_app(&app)?;
    Ok((app, cp))
}

/// State that a failed command must leave alone.
#[derive(PartialEq, Debug)]
struct Snapshot {
    store: String,
    committed: Vec<String>,
    daemon_children: Vec<i32>,
}

fn snapshot(d: &Daemon) -> Result<Snapshot> {
    Ok(Snapshot {
        store: d.store_hash()?,
        committed: d.committed_ids(),
        daemon_children: d.children(),
    })
}

/// Runs `ckptctl restore id`, expecting a one-line failure that leaves `pid`
/// not running and the store, the ids and ckptd's children unchanged.
fn expect_failed_restore(d: &Daemon, id: &str, pid: Option<i32>, what: &str) -> Result<String> {
    let before = snapshot(d)?;
    let out = d.ckptctl(&["restore", id]);
    let msg = expect_failure_one_line(&out, what).map_err(|e| {
        if let Some(p) = pid {
            let _ = kill9_and_wait(p);
        }
        e.context(d.context())
    })?;
    note!("{what}: ckptctl said: {msg}");
    ensure!(
        !String::from_utf8_lossy(&out.stdout).contains("tick"),
        "{what}: the program printed output although the restore failed:\n{}",
        describe(&out)
    );
    std::thread::sleep(Duration::from_millis(300));
    if let Some(p) = pid {
        if proc_exists(p) {
            let _ = kill9_and_wait(p);
            anyhow::bail!("{what}: pid {p} exists after the failed restore\n{}", d.context());
        }
    }
    let after = snapshot(d)?;
    ensure!(
        before == after,
        "{what}: the failed restore changed something:\nbefore {before:?}\nafter  {after:?}\n{}",
        d.context()
    );
    Ok(msg)
}

#[test]
fn unknown_id_restore_fails() -> Result<()> {
    require_root!();
    let d = Daemon::start()?;
    let msg = expect_failed_restore(&d, "4242", None, "restore of unknown id 4242")?;
    ensure!(msg.contains("4242"), "the message should name the id 4242: {msg:?}");
    Ok(())
}

#[test]
fn unknown_id_show_and_delete_fail() -> Result<()> {
    require_root!();
    let d = Daemon::start()?;
    for cmd in ["show", "delete"] {
        let out = d.ckptctl(&[cmd, "4243"]);
        let msg = expect_failure_one_line(&out, &format!("ckptctl {cmd} 4243")).map_err(|e| e.context(d.context()))?;
        ensure!(
            msg.contains("4243"),
            "ckptctl {cmd}: message should name the id: {msg:?}"
        );
    }
    Ok(())
}

#[test]
fn flipped_byte_in_pages_img_refused() -> Result<()> {
    require_root!();
    let d = Daemon::start()?;
    let (mut app, cp) = counter_with_checkpoint(&d)?;
    let pid = app.pid;
    app.kill9()?;
    let pages = d.image_file(&cp.id, pid, "pages.img")?;
    let len = fs::metadata(&pages)?.len();
    ensure!(len > 0, "{} is empty", pages.display());
    let mut f = OpenOptions::new().read(true).write(true).open(&pages)?;
    let off = len / 2;
    let mut b = [0u8; 1];
    f.seek(SeekFrom::Start(off))?;
    f.read_exact(&mut b)?;
    b[0] ^= 0xff;
    f.seek(SeekFrom::Start(off))?;
    f.write_all(&b)?;
    f.sync_all()?;
    drop(f);
    note!("flipped byte {off} of {} ({len} bytes)", pages.display());
    expect_failed_restore(&d, &cp.id, Some(pid), "restore with a flipped byte in pages.img")?;
    Ok(())
}

#[test]
fn truncated_meta_img_refused() -> Result<()> {
    require_root!();
    let d = Daemon::start()?;
    let (mut app, cp) = counter_with_checkpoint(&d)?;
    let pid = app.pid;
    app.kill9()?;
    let meta = d.image_file(&cp.id, pid, "meta.img")?;
    let len = fs::metadata(&meta)?.len();
    ensure!(len > 1, "{} is too small ({len} bytes)", meta.display());
    OpenOptions::new().write(true).open(&meta)?.set_len(len / 2)?;
    note!("truncated {} from {len} to {} bytes", meta.display(), len / 2);
    expect_failed_restore(&d, &cp.id, Some(pid), "restore with a truncated meta.img")?;
    Ok(())
}

#[test]
fn restore_while_pid_in_use_refused() -> Result<()> {
    require_root!();
    let d = Daemon::start()?;
    let (app, cp) = counter_with_checkpoint(&d)?;
    let pid = app.pid;
    let before = snapshot(&d)?;
    let out = d.ckptctl(&["restore", &cp.id]);
    let msg =
        expect_failure_one_line(&out, "restore while the original pid runs").map_err(|e| e.context(d.context()))?;
    note!("ckptctl said: {msg}");
    ensure!(
        msg.contains("pid") && contains_number(&msg, pid as i64),
        "the message should contain \"pid\" and {pid}: {msg:?}"
    );
    ensure!(app.is_alive(), "the original pid {pid} must keep running");
    let t = app.drain_last_tick().unwrap_or(0);
    app.expect_consecutive_ticks(t, 3, false, Duration::from_secs(5))
        .context("the original must keep ticking")?;
    let after = snapshot(&d)?;
    ensure!(
        before == after,
        "the failed restore changed something:\n{before:?}\n{after:?}"
    );
    ensure!(
        !String::from_utf8_lossy(&out.stdout).contains("tick"),
        "nothing should have been started: {}",
        describe(&out)
    );
    Ok(())
}

#[test]
fn unsupported_fds_refused_all_named_program_keeps_running() -> Result<()> {
    require_root!();
    let d = Daemon::start()?;
    let app = d.run_example("refused_hold", &[])?;
    let pid = app.pid;
    let first = app.expect_line(
        "`refused fds A B pid P`",
        |l| l.starts_with("refused fds"),
        LINE_TIMEOUT,
    )?;
    let fds: Vec<i64> = first
        .split_whitespace()
        .skip(2)
        .take(2)
        .filter_map(|s| s.parse().ok())
        .collect();
    ensure!(fds.len() == 2, "bad first line {first:?}");
    let t = app.expect_tick(LINE_TIMEOUT)?;
    app.expect_consecutive_ticks(t, 2, false, LINE_TIMEOUT)?;

    let list_before = d.ckptctl_ok(&["list"])?;
    let before = snapshot(&d)?;
    let out = d.ckptctl(&["checkpoint"]);
    let msg = expect_failure_one_line(&out, "checkpoint of a process holding a userfaultfd and an io_uring")
        .map_err(|e| e.context(d.context()))?;
    note!("ckptctl said: {msg}");
    // Both offending fds are named at once, each with its kind.
    ensure!(
        msg.contains("userfaultfd") && msg.contains("io_uring"),
        "the message should name both kinds: {msg:?}"
    );
    ensure!(
        contains_number(&msg, pid as i64),
        "the message should name pid {pid}: {msg:?}"
    );
    for fd in &fds {
        ensure!(contains_number(&msg, *fd), "the message should name fd {fd}: {msg:?}");
    }
    ensure!(
        stdout_str(&out).is_empty(),
        "a failed checkpoint must not print an id: {}",
        describe(&out)
    );

    let t = app.drain_last_tick().unwrap_or(0);
    app.expect_consecutive_ticks(t, 5, false, Duration::from_secs(5))
        .context("the program must keep running after the refused checkpoint")?;
    ensure!(app.is_alive(), "pid {pid} must be alive");

    let list_after = d.ckptctl_ok(&["list"])?;
    ensure!(
        list_before == list_after,
        "`ckptctl list` changed after a failed checkpoint:\nbefore:\n{list_before}\nafter:\n{list_after}"
    );
    let after = snapshot(&d)?;
    ensure!(
        before.committed == after.committed,
        "a failed checkpoint must not commit anything: {:?} -> {:?}",
        before.committed,
        after.committed
    );
    Ok(())
}

#[test]
fn daemon_not_running() -> Result<()> {
    // Needs no root: nothing is checkpointed.
    let dir = tempfile::tempdir()?;
    let sock = dir.path().join("no-such-dir").join("ckptd.sock");
    let sock_s = sock.to_str().unwrap();
    let ckptctl = bin("ckptctl")?;
    for args in [vec!["status"], vec!["list"], vec!["checkpoint"], vec!["restore", "1"]] {
        let out = run_with_timeout(
            Command::new(&ckptctl).arg("--socket").arg(sock_s).args(&args),
            Duration::from_secs(30),
        )?;
        let msg = expect_failure_one_line(&out, &format!("ckptctl {} without ckptd", args.join(" ")))?;
        note!("ckptctl {}: {msg}", args.join(" "));
    }

    let counter = example("counter")?;
    let ckpt_run = bin("ckpt-run")?;
    let variants: Vec<(&str, Command)> = vec![
        ("--socket", {
            let mut c = Command::new(&ckpt_run);
            c.arg("--socket").arg(sock_s).arg("--").arg(&counter);
            c
        }),
        ("CKPT_SOCKET", {
            let mut c = Command::new(&ckpt_run);
            c.env("CKPT_SOCKET", sock_s).arg("--").arg(&counter);
            c
        }),
    ];
    for (how, mut c) in variants {
        let out = run_with_timeout(&mut c, Duration::from_secs(10))?;
        let what = format!("ckpt-run ({how}) without ckptd");
        let msg = expect_failure_one_line(&out, &what)?;
        note!("{what}: {msg}");
        ensure!(
            out.status.code() == Some(2),
            "{what}: expected exit code 2\n{}",
            describe(&out)
        );
        ensure!(
            !String::from_utf8_lossy(&out.stdout).contains("tick"),
            "{what}: the program must not be started\n{}",
            describe(&out)
        );
    }
    Ok(())
}

/// A refused restore lets go of the requester's stdio: `ckptctl restore 4242 | cat` ends
/// (ckptd held the pipe's write end until the next restore).
#[test]
fn refused_restore_leaves_the_pipe_it_was_given() -> Result<()> {
    require_root!();
    let d = Daemon::start()?;
    let mut cmd = d.ckptctl_cmd(&["restore", "4242"]);
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    let mut child = spawn_tracked(&mut cmd)?;
    let mut out = child.stdout.take().context("no stdout pipe")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = tx.send(out.read_to_end(&mut buf).map(|_| buf));
    });
    let got = rx.recv_timeout(Duration::from_secs(20));
    let status = child.wait()?;
    ensure!(!status.success(), "restore of an unknown id should fail");
    ensure!(
        got.is_ok(),
        "the pipe given to a refused restore never reached its end (ckptd keeps it)\n{}",
        d.context()
    );
    Ok(())
}
