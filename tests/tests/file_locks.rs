//! File locks and leases (issue 12): POSIX record locks, open file description locks, flock
//! locks (on a file and on a directory) and a read lease come back held by the same owner, with
//! the same ranges and modes, before the program runs; a lock another program took since the
//! checkpoint fails the restore naming its holder (nothing runs); a lock whose description two
//! processes share comes back once, on that description shared again.

use anyhow::{ensure, Context, Result};
use ckpt_tests::*;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

#[test]
fn every_kind_of_lock_comes_back_held_twice() -> Result<()> {
    require_root!();
    let dir = tempfile::tempdir()?;
    survives_two_restores("file_locks", &[dir.path().to_str().unwrap()])
}

#[test]
fn a_lock_taken_since_the_checkpoint_fails_the_restore_naming_its_holder() -> Result<()> {
    require_root!();
    let dir = tempfile::tempdir()?;
    let d = Daemon::start()?;
    let mut app = d.run_example("file_locks", &[dir.path().to_str().unwrap()])?;
    app.expect_tick(LINE_TIMEOUT)?;
    let cp = d.checkpoint_app(&app)?;
    let pid = app.pid;
    app.kill9_tree()?;
    // Another program takes the flock file exclusively while the program is away.
    // `-o`: flock(1) alone holds the lock, not the `sleep` it runs; both are in a group of their
    // own, killed together.
    let mut other = Command::new("flock")
        .args(["-n", "-x", "-o"])
        .arg(dir.path().join("flock"))
        .args(["sleep", "120"])
        .stdin(Stdio::null())
        .process_group(0)
        .spawn()
        .context("flock(1)")?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string("/proc/locks")?.contains(&format!(" {} ", other.id())) {
        ensure!(std::time::Instant::now() < deadline, "flock(1) never took its lock");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut r = d.restore(&cp.id, pid)?;
    let st = r.wait_child_exit(Duration::from_secs(60))?;
    let err = std::fs::read_to_string(r.stderr_path()).unwrap_or_default();
    ensure!(
        !st.success(),
        "the restore must fail while another program holds the lock: {err}"
    );
    ensure!(
        err.contains("flock lock") && err.contains(&format!("process {}", other.id())),
        "the failure should name the lock and its holder: {err}"
    );
    ensure!(
        !proc_alive(pid),
        "nothing of the program may run after a failed restore"
    );
    // SAFETY: signalling the process group made for flock(1) above.
    unsafe { libc::kill(-(other.id() as i32), libc::SIGKILL) };
    other.wait()?;
    let app = d.restore_ok(&cp.id, pid).context("once the other program let go")?;
    app.expect_tick(LINE_TIMEOUT)?;
    ask_state(&app)?;
    kill_tree(app.pid)?;
    Ok(())
}

/// The description holding the flock and OFD locks and the lease is shared with a forked
/// child: it comes back one description, shared, its locks held once.
#[test]
fn locks_of_a_description_shared_across_fork_come_back_twice() -> Result<()> {
    require_root!();
    let dir = tempfile::tempdir()?;
    survives_two_restores("file_locks", &[dir.path().to_str().unwrap(), "fork"])
}
