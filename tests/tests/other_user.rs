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
