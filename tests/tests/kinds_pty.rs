//! Pseudo-terminals (issue 11): a pair whose master a checkpointed process holds comes back as
//! the same /dev/pts/N with its termios, window size, packet mode, lock, exclusive mode, mode
//! and the bytes waiting each way; a parent and a child talking over a pty as `script` does
//! come back talking; a restore whose /dev/pts/N is taken is refused, changing nothing; a
//! terminal whose master is outside the checkpoint keeps what a terminal always got.

use anyhow::{bail, ensure, Context, Result};
use ckpt_tests::*;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Asks the program to check itself (with INVARIANT lines on failure).
fn ask(app: &App) -> Result<()> {
    app.drain();
    ask_state(app).map_err(|e| e.context(app.context()))
}

/// Checkpoint / kill / restore twice; `others` are the program's other processes.
fn two_rounds(d: &Daemon, mut app: App, others: &[i32]) -> Result<App> {
    let pid = app.pid;
    for round in 1..=2 {
        let cp = d.checkpoint_app(&app).with_context(|| format!("checkpoint {round}"))?;
        app.kill9()?;
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
        ask(&app).with_context(|| format!("after restore {round}\n{}", d.context()))?;
    }
    Ok(app)
}

#[test]
fn pty_pairs_keep_index_termios_modes_and_waiting_bytes() -> Result<()> {
    require_root!();
    let d = Daemon::start()?;
    let app = d.run_example("pty_state", &["pair"])?;
    let line = app.expect_line("the ptys", |l| l.starts_with("ptys "), LINE_TIMEOUT)?;
    app.expect_tick(LINE_TIMEOUT)?;
    ask(&app).context("before any checkpoint")?;
    let id = d.checkpoint()?;
    let shown = d.ckptctl_ok(&["show", &id])?;
    note!("{line}; ckptctl show {id}:\n{shown}");
    for want in [
        "non-canonical, 101x33, packet mode, exclusive, 20 bytes for the master, 256 for the slave",
        "(canonical, 80x24, locked, 8 bytes for the master, 16 for the slave",
        "pty slave /dev/pts/",
    ] {
        ensure!(shown.contains(want), "`ckptctl show` should say {want:?}:\n{shown}");
    }
    let mut app = two_rounds(&d, app, &[])?;
    app.kill9()?;
    Ok(())
}

#[test]
fn pty_parent_holding_the_master_and_child_on_the_slave_keep_talking() -> Result<()> {
    require_root!();
    let d = Daemon::start()?;
    let app = d.run_example("pty_script", &[])?;
    let line = app.expect_line("the child's pid", |l| l.starts_with("child "), LINE_TIMEOUT)?;
    let child: i32 = field(&line, "child")
        .and_then(|v| v.parse().ok())
        .context("child pid")?;
    d.register_pid(child);
    app.expect_tick(LINE_TIMEOUT)?;
    ask(&app).context("before any checkpoint")?;
    // The child's stdio is the pair's slave, made again with it (not `ckptctl`'s stdio).
    let id = d.checkpoint()?;
    let shown = d.ckptctl_ok(&["show", &id])?;
    let ptys: Vec<&str> = shown.lines().filter(|l| l.contains("pty ")).collect();
    note!("ckptctl show {id}, its ptys:\n{}", ptys.join("\n"));
    for want in [
        "0 pty slave /dev/pts/",
        "1 pty slave /dev/pts/",
        "pty master of /dev/pts/",
    ] {
        ensure!(shown.contains(want), "`ckptctl show` should say {want:?}:\n{shown}");
    }
    let mut app = two_rounds(&d, app, &[child])?;
    app.kill9()?;
    kill_pid(child)?;
    Ok(())
}

/// Opens /dev/ptmx until the kernel hands out pair `index`; every pair opened is returned
/// (held until dropped).
fn take_pty(index: u32) -> Result<Vec<OwnedFd>> {
    let mut held = Vec::new();
    loop {
        // SAFETY: open with a literal path.
        let fd = unsafe { libc::open(c"/dev/ptmx".as_ptr(), libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) };
        ensure!(fd >= 0, "opening /dev/ptmx: {}", std::io::Error::last_os_error());
        // SAFETY: just opened, ours.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut n: libc::c_int = -1;
        // SAFETY: TIOCGPTN writes one int.
        ensure!(
            unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGPTN, &mut n) } == 0,
            "TIOCGPTN"
        );
        held.push(fd);
        match (n as u32).cmp(&index) {
            std::cmp::Ordering::Less => {}
            std::cmp::Ordering::Equal => return Ok(held),
            std::cmp::Ordering::Greater => bail!("/dev/pts/{index} is held by another program of this machine"),
        }
    }
}

#[test]
fn pty_restore_refused_when_its_number_is_taken() -> Result<()> {
    require_root!();
    let d = Daemon::start()?;
    let mut app = d.run_example("pty_state", &["pair"])?;
    let pid = app.pid;
    let line = app.expect_line("the ptys", |l| l.starts_with("ptys "), LINE_TIMEOUT)?;
    let first = line.split_whitespace().nth(1).context("pty name")?.to_string();
    let index: u32 = first
        .strip_prefix("/dev/pts/")
        .and_then(|n| n.parse().ok())
        .context("pty index")?;
    app.expect_tick(LINE_TIMEOUT)?;
    let cp = d.checkpoint_app(&app)?;
    app.kill9()?;
    app.disarm();
    wait_proc_gone(pid, GONE_TIMEOUT)?;
    let held = take_pty(index)?;
    let out = d.ckptctl(&["restore", &cp.id]);
    let msg = expect_failure_one_line(&out, "restore with its pty number taken").context(d.context())?;
    note!("ckptctl said: {msg}");
    ensure!(
        msg.contains(&format!("pseudo-terminal {first} ")) && msg.contains("is in use"),
        "the refusal does not name {first}: {msg}"
    );
    std::thread::sleep(std::time::Duration::from_millis(300));
    ensure!(!proc_exists(pid), "pid {pid} runs after the refused restore");
    // Nothing was changed: once the number is free the same checkpoint restores.
    drop(held);
    let mut app = d.restore_ok(&cp.id, pid)?;
    app.expect_tick(LINE_TIMEOUT)?;
    ask(&app)?;
    app.kill9()?;
    Ok(())
}

#[test]
fn pty_slave_of_an_outside_master_is_stdio_or_reopened_by_path() -> Result<()> {
    require_root!();
    // The test is the terminal's owner: its master stays outside ckpt.
    // SAFETY: open with a literal path.
    let m = unsafe { libc::open(c"/dev/ptmx".as_ptr(), libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) };
    ensure!(m >= 0, "opening /dev/ptmx");
    // SAFETY: just opened, ours.
    let m = unsafe { OwnedFd::from_raw_fd(m) };
    let (mut zero, mut n): (libc::c_int, libc::c_int) = (0, -1);
    // SAFETY: TIOCSPTLCK reads an int, TIOCGPTN writes one.
    unsafe {
        libc::ioctl(m.as_raw_fd(), libc::TIOCSPTLCK, &mut zero);
        libc::ioctl(m.as_raw_fd(), libc::TIOCGPTN, &mut n);
    }
    let path = format!("/dev/pts/{n}");
    let d = Daemon::start()?;
    let app = d.run_example("pty_state", &["outside", &path])?;
    app.expect_tick(LINE_TIMEOUT)?;
    ask(&app)?;
    let id = d.checkpoint()?;
    let shown = d.ckptctl_ok(&["show", &id])?;
    note!("ckptctl show {id}:\n{shown}");
    for want in [
        format!("0 stdio ({path})"),
        format!("9 tty {path}"),
        format!("10 tty {path} (same file as fd 0)"),
    ] {
        ensure!(shown.contains(&want), "`ckptctl show` should say {want:?}:\n{shown}");
    }
    ensure!(
        !shown.contains("pty "),
        "no pty of this checkpoint is restored as a pair:\n{shown}"
    );
    let mut app = two_rounds(&d, app, &[])?;
    app.kill9()?;
    drop(m);
    Ok(())
}
