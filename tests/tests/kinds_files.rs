//! Files of kinds that no path brings back as they were (issue 10): open files whose name is
//! gone, named FIFOs with bytes waiting, POSIX message queues. Each example sets up every case
//! of its kind, is checkpointed, killed and restored twice, and checks its own state when asked
//! (SIGUSR1): `state ok`, or an `INVARIANT` line naming what changed.

use anyhow::{ensure, Context, Result};
use ckpt_tests::*;

/// Checks the running example is sound, then checkpoint / kill / restore twice (the second
/// time from a checkpoint of the restored program), asking it to check its state each time.
/// `ckptctl show` of the first checkpoint must name every kind in `shown`.
fn survives_two_restores(d: &Daemon, mut app: App, shown: &[&str]) -> Result<()> {
    let pid = app.pid;
    app.expect_tick(LINE_TIMEOUT)?;
    ask_state(&app).context("before any checkpoint")?;
    for round in 1..=2 {
        let cp = d.checkpoint_app(&app).with_context(|| format!("checkpoint {round}"))?;
        if round == 1 {
            let show = d.ckptctl_ok(&["show", &cp.id])?;
            for what in shown {
                ensure!(show.contains(what), "`ckptctl show` should list {what:?}:\n{show}");
            }
        }
        app.kill9()?;
        // The old handle must not kill the restored process (same pid) when it is dropped.
        app.disarm();
        app = d.restore_ok(&cp.id, pid).with_context(|| format!("restore {round}"))?;
        app.expect_tick(LINE_TIMEOUT)
            .with_context(|| format!("after restore {round}"))?;
        ask_state(&app).with_context(|| format!("after restore {round}\n{}", d.context()))?;
    }
    app.kill9()?;
    Ok(())
}

fn dir_arg(d: &Daemon) -> Result<String> {
    let dir = d.dir().join("files");
    std::fs::create_dir_all(&dir)?;
    Ok(dir.to_string_lossy().into_owned())
}

/// The queues `mqueue_state` made (they outlive the killed program until unlinked).
fn unlink_queues(pid: i32) {
    for q in ["a", "n", "u"] {
        if let Ok(name) = std::ffi::CString::new(format!("/ckpt-mq-{pid}-{q}")) {
            // SAFETY: a valid name; a missing queue is fine.
            unsafe { libc::mq_unlink(name.as_ptr()) };
        }
    }
}

#[test]
fn deleted_files_come_back_unlinked_with_content_and_offsets() -> Result<()> {
    require_root!();
    let d = Daemon::start()?;
    survives_two_restores(
        &d,
        d.run_example("deleted_state", &[&dir_arg(&d)?])?,
        &["deleted file ", "/scratch (4194321 bytes", "O_TMPFILE file"],
    )
}

/// A deleted file mapped shared with its fd still open (Python's multiprocessing heap): it
/// comes back as one file, a write through the fd seen in the mapping and back.
#[test]
fn deleted_file_mapped_shared_with_its_fd_open_stays_one_file() -> Result<()> {
    require_root!();
    let d = Daemon::start()?;
    survives_two_restores(
        &d,
        d.run_example("deleted_state", &[&dir_arg(&d)?, "keep-fd"])?,
        &["/mapped (8192 bytes"],
    )
}

/// Bytes spread over more pipe buffers than their size needs pages come back whole (a copy
/// that stopped at the first buffer lost them silently), in a pipe of the capacity the program
/// set (it used to come back sized to the bytes, and the program's next write failed).
#[test]
fn pipe_bytes_over_many_buffers_come_back_whole() -> Result<()> {
    require_root!();
    ckpt_tests::survives_two_restores("pipe_fragments", &[])
}

#[test]
fn named_fifos_keep_their_bytes_modes_and_buffer() -> Result<()> {
    require_root!();
    let d = Daemon::start()?;
    survives_two_restores(
        &d,
        d.run_example("fifo_state", &[&dir_arg(&d)?])?,
        &["/shared (read, 14 bytes waiting)", "/orphan (write, 11 bytes waiting)"],
    )
}

/// A FIFO is reopened by its path: without it the restore is refused, saying so.
#[test]
fn restore_refused_when_the_fifo_is_gone() -> Result<()> {
    require_root!();
    let d = Daemon::start()?;
    let dir = dir_arg(&d)?;
    let mut app = d.run_example("fifo_state", &[&dir])?;
    let pid = app.pid;
    app.expect_tick(LINE_TIMEOUT)?;
    let cp = d.checkpoint_app(&app)?;
    app.kill9()?;
    app.disarm();
    std::fs::remove_file(format!("{dir}/rw"))?;
    let out = d.ckptctl(&["restore", &cp.id]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    ensure!(
        !out.status.success(),
        "restore without the FIFO should fail\n{}",
        d.context()
    );
    note!("restore without the FIFO: {}", err.trim());
    ensure!(
        err.contains(&format!("{dir}/rw")) && err.contains("mkfifo"),
        "the refusal should name the FIFO and say what to do: {err}"
    );
    std::thread::sleep(std::time::Duration::from_millis(300));
    ensure!(!proc_exists(pid), "pid {pid} exists after the failed restore");
    Ok(())
}

#[test]
fn message_queues_keep_messages_limits_and_notification() -> Result<()> {
    require_root!();
    let d = Daemon::start()?;
    let app = d.run_example("mqueue_state", &[])?;
    let pid = app.pid;
    let r = survives_two_restores(
        &d,
        app,
        &[
            &format!("message queue /ckpt-mq-{pid}-a (5 of 7 messages"),
            "notifies",
            "unlinked",
        ],
    );
    unlink_queues(pid);
    r
}

/// Reading a queue with a notification registered and messages waiting would fire the
/// notification: the checkpoint is refused, and every queue (including those already read for
/// this checkpoint) is left exactly as it was.
#[test]
fn queue_with_notification_and_messages_is_refused_untouched() -> Result<()> {
    require_root!();
    let d = Daemon::start()?;
    let mut app = d.run_example("mqueue_state", &["busy"])?;
    let pid = app.pid;
    app.expect_tick(LINE_TIMEOUT)?;
    let out = d.ckptctl(&["checkpoint"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let r = (|| {
        ensure!(
            !out.status.success(),
            "the checkpoint should be refused\n{}",
            d.context()
        );
        note!("checkpoint refused: {}", err.trim());
        ensure!(
            err.contains(&format!("/ckpt-mq-{pid}-n")) && err.contains("notification"),
            "the refusal should name the queue and the notification: {err}"
        );
        app.expect_tick(LINE_TIMEOUT)?;
        ask_state(&app).context("after the refused checkpoint")
    })();
    app.kill9()?;
    unlink_queues(pid);
    r
}
