//! Plain one-line errors with the right advice (issue 9): another user's `ckptctl` and
//! `ckpt-run` against root's ckptd are told which uid runs that ckptd and that each user runs
//! their own (with a socket to start it on), whether ckptd refuses them or its socket cannot
//! even be reached; never a debug value, never "start ckptd first". Bad arguments get one line
//! too.

use anyhow::{ensure, Result};
use ckpt_tests::*;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, Output};
use std::time::Duration;

const NOBODY: u32 = 65534;

/// `prog --socket SOCKET ARGS…` run as uid/gid [`NOBODY`].
fn as_nobody(d: &Daemon, prog: &str, args: &[&str]) -> Result<Output> {
    let mut c = Command::new(bin(prog)?);
    c.arg("--socket")
        .arg(d.socket())
        .args(args)
        .uid(NOBODY)
        .gid(NOBODY)
        .env_remove("CKPT_SOCKET")
        .env_remove("XDG_RUNTIME_DIR");
    run_with_timeout(&mut c, Duration::from_secs(30))
}

/// One line on stderr, exit `code`, saying each of `says` and nothing of what must not be.
fn one_plain_line(out: &Output, what: &str, code: i32, says: &[&str]) -> Result<String> {
    let msg = expect_failure_one_line(out, what)?;
    note!("{what}: {msg}");
    ensure!(
        out.status.code() == Some(code),
        "{what}: expected exit code {code}\n{}",
        describe(out)
    );
    for s in says {
        ensure!(msg.contains(s), "{what}: the message should say {s:?}: {msg:?}");
    }
    for bad in ["Error {", "message:", "start ckptd first", "is ckptd running"] {
        ensure!(
            !msg.contains(bad),
            "{what}: the message should not say {bad:?}: {msg:?}"
        );
    }
    Ok(msg)
}

#[test]
fn another_user_is_told_to_run_their_own_ckptd() -> Result<()> {
    require_root!();
    let d = Daemon::start()?;
    let app = d.run_example("counter", &[])?;
    app.expect_tick(LINE_TIMEOUT)?;
    let id = d.checkpoint()?;
    // Others may reach the socket (its folder can be crossed); the store stays private.
    std::fs::set_permissions(d.dir(), std::fs::Permissions::from_mode(0o711))?;
    let refusal = ["uid 0", "uid 65534", "their own ckptd", "ckptd --socket", "CKPT_SOCKET"];
    for args in [
        vec!["status"],
        vec!["list"],
        vec!["checkpoint"],
        vec!["show", &id],
        vec!["delete", &id],
    ] {
        let what = format!("ckptctl {} as uid {NOBODY}", args.join(" "));
        one_plain_line(&as_nobody(&d, "ckptctl", &args)?, &what, 1, &refusal)?;
    }
    let what = format!("ckpt-run as uid {NOBODY}");
    let out = as_nobody(&d, "ckpt-run", &["--", "/bin/true"])?;
    one_plain_line(&out, &what, 2, &refusal)?;
    ensure!(
        d.committed_ids() == vec![id.clone()],
        "nothing may change: {:?}",
        d.committed_ids()
    );

    // The socket's folder closed to others: connecting is refused, with the same advice.
    std::fs::set_permissions(d.dir(), std::fs::Permissions::from_mode(0o700))?;
    let closed = ["another user's", "their own ckptd", "--socket"];
    let what = format!("ckptctl status as uid {NOBODY}, socket out of reach");
    one_plain_line(&as_nobody(&d, "ckptctl", &["status"])?, &what, 2, &closed)?;
    let what = format!("ckpt-run as uid {NOBODY}, socket out of reach");
    one_plain_line(&as_nobody(&d, "ckpt-run", &["--", "/bin/true"])?, &what, 2, &closed)?;

    // Root still controls it.
    ensure!(
        d.status_pids()? == vec![app.pid],
        "root's ckptctl status should list the program"
    );
    Ok(())
}

#[test]
fn bad_arguments_get_one_line() -> Result<()> {
    for (prog, args) in [
        ("ckptctl", vec!["restore"]),
        ("ckptctl", vec!["--bogus", "status"]),
        ("ckptctl", vec!["frobnicate"]),
        ("ckpt-run", vec![]),
        ("ckpt-run", vec!["--socket"]),
        ("ckptd", vec!["--keep", "0"]),
    ] {
        let what = format!("{prog} {}", args.join(" "));
        let out = run_with_timeout(Command::new(bin(prog)?).args(&args), Duration::from_secs(30))?;
        let msg = expect_failure_one_line(&out, &what)?;
        note!("{what}: {msg}");
        ensure!(
            out.status.code() == Some(2),
            "{what}: expected exit code 2\n{}",
            describe(&out)
        );
        ensure!(
            msg.starts_with(&format!("{prog}: ")) && msg.contains("--help"),
            "{what}: the line should name {prog} and point at --help: {msg:?}"
        );
    }
    Ok(())
}

/// A ckptd of another user is given none of root's programs: ckpt-run refuses to use it, and a
/// program started with the interposer by hand refuses to register with it (it would hand that
/// user its memory tracker and the right to trace it), saying so once and running on.
#[test]
fn programs_are_never_handed_to_another_users_ckptd() -> Result<()> {
    require_root!();
    let dir = tempfile::Builder::new().prefix("ckpt-nobody-").tempdir()?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711))?;
    let home = dir.path().join("home");
    std::fs::create_dir(&home)?;
    std::os::unix::fs::chown(&home, Some(NOBODY), Some(NOBODY))?;
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o711))?;
    let socket = home.join("ckptd.sock");
    let log = std::fs::File::create(dir.path().join("ckptd.log"))?;
    let mut ckptd = spawn_tracked(
        Command::new(bin("ckptd")?)
            .arg("--socket")
            .arg(&socket)
            .arg("--store")
            .arg(home.join("store"))
            .uid(NOBODY)
            .gid(NOBODY)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log),
    )?;
    let result = (|| -> Result<()> {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            ensure!(std::time::Instant::now() < deadline, "nobody's ckptd did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = run_with_timeout(
            Command::new(bin("ckpt-run")?)
                .arg("--socket")
                .arg(&socket)
                .args(["--", "/bin/true"]),
            Duration::from_secs(30),
        )?;
        one_plain_line(
            &out,
            "root's ckpt-run against nobody's ckptd",
            2,
            &["uid 65534", "own ckptd"],
        )?;

        // The interposer preloaded by hand: the program runs, uncontrolled.
        let lib = bin("ckpt-run")?.with_file_name("libckpt_interposer.so");
        let out = run_with_timeout(
            Command::new("/bin/sh")
                .args(["-c", "echo ran"])
                .env("LD_PRELOAD", &lib)
                .env("CKPT_SOCKET", &socket),
            Duration::from_secs(30),
        )?;
        let err = String::from_utf8_lossy(&out.stderr);
        ensure!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ran",
            "the program must run as it would: {}",
            describe(&out)
        );
        ensure!(
            err.contains("not under checkpoint control") && err.contains("uid 65534"),
            "the program should say once why it is not under control: {err:?}"
        );
        let status = run_with_timeout(
            Command::new(bin("ckptctl")?)
                .arg("--socket")
                .arg(&socket)
                .args(["status", "--json"])
                .uid(NOBODY)
                .gid(NOBODY),
            Duration::from_secs(30),
        )?;
        ensure!(
            status.status.success() && !stdout_str(&status).contains("\"pid\""),
            "nobody's ckptd must have no program: {}",
            describe(&status)
        );
        Ok(())
    })();
    let _ = send_signal(ckptd.id() as i32, libc::SIGKILL);
    let _ = ckptd.wait();
    result
}
