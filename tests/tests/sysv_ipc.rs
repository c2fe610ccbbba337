//! SysV IPC (shared memory, semaphores, message queues) and POSIX shared memory with POSIX
//! semaphores come back exactly (issue 11): a producer/consumer pair over each, checking its
//! own invariant, checkpointed 20 times while it runs, then killed and restored twice; a
//! SysV segment a process outside the checkpoint is attached to refuses the restore, changing
//! nothing; a process holding `SEM_UNDO` adjustments (which the kernel does not show) is
//! refused at checkpoint, naming it.

use anyhow::{ensure, Context, Result};
use ckpt_tests::*;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A key no other test run uses.
fn unique_key() -> i32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    0x5c00_0000 | ((std::process::id() as i32 & 0xfff) << 12) | ((nanos as i32 >> 10) & 0xffe)
}

/// Removes the test's SysV objects (by key) when dropped.
struct Objects {
    key: i32,
    dest: Option<i32>,
}

impl Drop for Objects {
    fn drop(&mut self) {
        // SAFETY: lookups and removals of this test's own objects.
        unsafe {
            let shm = libc::shmget(self.key, 0, 0);
            if shm >= 0 {
                libc::shmctl(shm, libc::IPC_RMID, std::ptr::null_mut());
            }
            let sem = libc::semget(self.key, 0, 0);
            if sem >= 0 {
                libc::semctl(sem, 0, libc::IPC_RMID);
            }
            let msg = libc::msgget(self.key + 1, 0);
            if msg >= 0 {
                libc::msgctl(msg, libc::IPC_RMID, std::ptr::null_mut());
            }
            if let Some(d) = self.dest {
                libc::shmctl(d, libc::IPC_RMID, std::ptr::null_mut());
            }
        }
    }
}

/// The pair's child pid, once it is registered, and its `ids` line.
fn started(d: &Daemon, app: &App) -> Result<(i32, Vec<i32>)> {
    let l = app.expect_line("`child PID`", |l| l.starts_with("child "), LINE_TIMEOUT)?;
    let child: i32 = field(&l, "child")
        .and_then(|s| s.parse().ok())
        .context("bad child line")?;
    let ids = app.expect_line("`ids …`", |l| l.starts_with("ids "), LINE_TIMEOUT)?;
    let ids: Vec<i32> = ids.split_whitespace().skip(1).filter_map(|s| s.parse().ok()).collect();
    let t0 = Instant::now();
    while !d.status_pids()?.contains(&child) {
        ensure!(
            t0.elapsed() < LINE_TIMEOUT,
            "the child did not register\n{}",
            d.context()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((child, ids))
}

/// 20 checkpoints while the pair runs, then two rounds of kill / restore (the second from a
/// checkpoint of the restored pair), its verdict asked each time.
fn twenty_then_restore_twice(d: &Daemon, mut app: App) -> Result<()> {
    let pid = app.pid;
    ask_state(&app).context("before any checkpoint")?;
    let mut id = String::new();
    for n in 1..=20 {
        id = d.checkpoint().with_context(|| format!("checkpoint {n}"))?;
    }
    app.expect_tick(LINE_TIMEOUT)?;
    ask_state(&app).with_context(|| format!("after 20 checkpoints\n{}", d.context()))?;
    for round in 1..=2 {
        if round == 2 {
            id = d.checkpoint().context("checkpoint of the restored pair")?;
        }
        app.kill9_tree()?;
        app = d.restore_ok(&id, pid).with_context(|| format!("restore {round}"))?;
        app.expect_tick(LINE_TIMEOUT)?;
        ask_state(&app).with_context(|| format!("after restore {round}\n{}", d.context()))?;
    }
    app.kill9_tree()?;
    Ok(())
}

#[test]
fn sysv_pair_survives_checkpoints_and_restores() -> Result<()> {
    require_root!();
    let key = unique_key();
    let mut objects = Objects { key, dest: None };
    let d = Daemon::start()?;
    let app = d.run_example("sysv_ipc", &[&key.to_string()])?;
    let (_, ids) = started(&d, &app)?;
    objects.dest = ids.get(3).copied();
    twenty_then_restore_twice(&d, app)
}

#[test]
fn posix_ring_survives_checkpoints_and_restores() -> Result<()> {
    require_root!();
    let tag = format!("ckpt-ring-{}-{}", std::process::id(), unique_key() & 0xfff);
    let d = Daemon::start()?;
    let app = d.run_example("posix_ring", &[&tag])?;
    let l = app.expect_line("`child PID`", |l| l.starts_with("child "), LINE_TIMEOUT)?;
    let child: i32 = field(&l, "child")
        .and_then(|s| s.parse().ok())
        .context("bad child line")?;
    let t0 = Instant::now();
    while !d.status_pids()?.contains(&child) {
        ensure!(
            t0.elapsed() < LINE_TIMEOUT,
            "the child did not register\n{}",
            d.context()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let r = twenty_then_restore_twice(&d, app);
    for name in [tag.clone(), format!("sem.{tag}-free"), format!("sem.{tag}-full")] {
        let _ = std::fs::remove_file(format!("/dev/shm/{name}"));
    }
    r
}

#[test]
fn sysv_segment_used_outside_refuses_restore() -> Result<()> {
    require_root!();
    let key = unique_key();
    let mut objects = Objects { key, dest: None };
    let d = Daemon::start()?;
    let mut app = d.run_example("sysv_ipc", &[&key.to_string()])?;
    let pid = app.pid;
    let (child, ids) = started(&d, &app)?;
    objects.dest = ids.get(3).copied();
    let shm = ids[0];
    let id = d.checkpoint()?;
    app.kill9()?;
    app.disarm();
    kill_pid(child)?;

    // A process outside the checkpoint attaches the segment the killed pair left.
    let mut outsider = Command::new(example("sysv_ipc")?)
        .args(["attach", &shm.to_string()])
        .stdout(Stdio::piped())
        .spawn()?;
    d.register_pid(outsider.id() as i32);
    let mut line = String::new();
    BufReader::new(outsider.stdout.take().context("stdout")?).read_line(&mut line)?;
    ensure!(line.trim() == "attached", "the outsider said {line:?}");

    let out = d.ckptctl(&["restore", &id]);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    let result = (|| {
        ensure!(!out.status.success(), "restore went on over a segment in use:\n{err}");
        ensure!(
            err.contains(&format!("shared memory segment {shm}")) && err.contains("in use by"),
            "the refusal does not name the segment in use:\n{err}"
        );
        ensure!(err.trim().lines().count() == 1, "the refusal is not one line:\n{err}");
        ensure!(!procfs_alive(pid), "pid {pid} runs although the restore was refused");
        // Nothing was changed: the segment is the old one, with the outsider alone attached.
        // SAFETY: IPC_STAT into a zeroed buffer.
        let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
        ensure!(
            unsafe { libc::shmctl(shm, libc::IPC_STAT, &mut ds) } == 0 && ds.shm_nattch == 1,
            "the segment changed: {} attachments",
            ds.shm_nattch
        );
        Ok(())
    })();
    let _ = outsider.kill();
    let _ = outsider.wait();
    result?;

    // Once the outsider is gone, the same restore goes through.
    let app = d.restore_ok(&id, pid)?;
    app.expect_tick(LINE_TIMEOUT)?;
    ask_state(&app).with_context(|| format!("after the restore\n{}", d.context()))?;
    drop(app);
    kill_pid(child)?;
    Ok(())
}

#[test]
fn sem_undo_refuses_checkpoint() -> Result<()> {
    require_root!();
    let key = unique_key();
    let _objects = Objects { key, dest: None };
    let d = Daemon::start()?;
    let app = d.run_example("sysv_ipc", &["undo", &key.to_string()])?;
    app.expect_tick(LINE_TIMEOUT)?;
    let out = d.ckptctl(&["checkpoint"]);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    ensure!(
        !out.status.success(),
        "a checkpoint with SEM_UNDO adjustments went through"
    );
    ensure!(
        err.contains(&format!("process {}", app.pid)) && err.contains("SEM_UNDO"),
        "the refusal does not name the process and SEM_UNDO:\n{err}"
    );
    let list = d.ckptctl_ok(&["list"])?;
    ensure!(
        !first_words(&list).contains(&"1".to_string()),
        "the refused checkpoint is listed:\n{list}"
    );
    app.expect_tick(LINE_TIMEOUT).context("the program should run on")?;
    Ok(())
}

fn procfs_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !matches!(s.rsplit_once(") ").and_then(|(_, r)| r.chars().next()), Some('Z' | 'X')),
        Err(_) => false,
    }
}
