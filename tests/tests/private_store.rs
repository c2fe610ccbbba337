//! Images are private (issue 9): every folder ckptd makes in its store is 0700 and every file
//! 0600, owned by the user running ckptd, whatever its umask: full and incremental
//! checkpoints, and the store a `ckptctl delete` folds pages into. ckptd refuses, with one
//! line saying what to do and a non-zero exit, a store other users can write or that belongs
//! to another user, and a cluster secret other users can change or read (as ssh does for
//! keys: whoever knows the secret controls the cluster); it makes private a store of its own
//! that others could read.

use anyhow::{ensure, Context, Result};
use ckpt_tests::*;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

/// Every entry under `root` (root included): (path, is folder, mode, owner).
fn walk(root: &Path) -> Result<Vec<(PathBuf, bool, u32, u32)>> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(p) = todo.pop() {
        let m = fs::symlink_metadata(&p).with_context(|| format!("stat {}", p.display()))?;
        if m.is_dir() {
            for e in fs::read_dir(&p)? {
                todo.push(e?.path());
            }
        }
        out.push((p, m.is_dir(), m.mode() & 0o7777, m.uid()));
    }
    Ok(out)
}

#[test]
fn every_file_and_folder_of_the_store_is_private() -> Result<()> {
    require_root!();
    // ckptd inherits a umask that takes nothing away: it must not count on one.
    // SAFETY: umask only changes this process's file creation mask; restored at once.
    let old = unsafe { libc::umask(0) };
    let d = Daemon::start();
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let d = d?;
    let app = d.run_example("counter", &[])?;
    let t = app.expect_tick(LINE_TIMEOUT)?;
    app.expect_consecutive_ticks(t, 1, false, LINE_TIMEOUT)?;
    let first = d.checkpoint()?;
    app.expect_tick(LINE_TIMEOUT)?;
    let second = d.checkpoint()?;
    let shown: serde_json::Value = serde_json::from_str(&d.ckptctl_ok(&["show", &second, "--json"])?)?;
    ensure!(
        shown["manifest"]["parent"].as_str() == Some(first.as_str()),
        "checkpoint {second} should be incremental to {first}: {}",
        shown["manifest"]
    );
    app.expect_tick(LINE_TIMEOUT)?;
    d.checkpoint()?;
    // The pages the second still needs from the first are folded into a store of its own.
    d.ckptctl_ok(&["delete", &first])?;

    let entries = walk(d.store())?;
    let names: Vec<String> = entries
        .iter()
        .filter_map(|e| e.0.file_name().map(|n| n.to_string_lossy().to_string()))
        .collect();
    for want in ["MANIFEST", "meta.img", "pages.img"] {
        ensure!(names.iter().any(|n| n == want), "no {want} in the store: {names:?}");
    }
    ensure!(
        names.iter().any(|n| n.starts_with("folded-")),
        "deleting {first} should have folded pages into {second}: {names:?}"
    );
    let me = euid();
    for (path, dir, mode, owner) in &entries {
        let want = if *dir { 0o700 } else { 0o600 };
        ensure!(
            *mode == want && *owner == me,
            "{} is mode {mode:04o} owned by uid {owner}; every {} of the store must be {want:04o}, uid {me}",
            path.display(),
            if *dir { "folder" } else { "file" }
        );
    }
    note!("{} folders and files of the store, all private", entries.len());
    Ok(())
}

/// ckptd with this store (and secret), run to its end (it is expected to refuse at once).
fn ckptd(dir: &Path, store: &Path, secret: Option<&Path>) -> Result<Output> {
    let mut c = Command::new(bin("ckptd")?);
    c.arg("--socket").arg(dir.join("ckptd.sock")).arg("--store").arg(store);
    if let Some(s) = secret {
        c.arg("--secret").arg(s);
    }
    run_with_timeout(c.env("NO_COLOR", "1"), Duration::from_secs(20))
}

/// Runs ckptd, expecting it to refuse with one line that says each of `says`; nothing is
/// created or changed.
fn refused(dir: &Path, store: &Path, secret: Option<&Path>, what: &str, says: &[&str]) -> Result<String> {
    let before = walk(store)?;
    let out = ckptd(dir, store, secret)?;
    let msg = expect_failure_one_line(&out, what)?;
    note!("{what}: {msg}");
    for s in says {
        ensure!(msg.contains(s), "{what}: the message should say {s:?}: {msg:?}");
    }
    ensure!(
        !msg.contains("Error {") && !msg.contains("Os {"),
        "{what}: a debug value in {msg:?}"
    );
    ensure!(walk(store)? == before, "{what}: the store was changed");
    ensure!(!dir.join("ckptd.sock").exists(), "{what}: ckptd made its socket");
    Ok(msg)
}

fn set_mode(p: &Path, mode: u32) -> Result<()> {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).with_context(|| format!("chmod {}", p.display()))
}

#[test]
fn ckptd_refuses_a_store_or_a_secret_open_to_others() -> Result<()> {
    require_root!();
    let t = tempfile::tempdir()?;
    let dir = t.path();
    let store = dir.join("store");
    fs::create_dir(&store)?;
    let shown = store.display().to_string();
    for mode in [0o777, 0o770, 0o1777] {
        set_mode(&store, mode)?;
        let what = format!("a store of mode {mode:04o}");
        refused(dir, &store, None, &what, &[&shown, &format!("chmod 700 {shown}")])?;
    }
    set_mode(&store, 0o700)?;
    std::os::unix::fs::chown(&store, Some(65534), None)?;
    refused(
        dir,
        &store,
        None,
        "a store of uid 65534",
        &[&shown, "uid 65534", "--store"],
    )?;
    std::os::unix::fs::chown(&store, Some(euid()), None)?;

    let secret = dir.join("secret");
    fs::write(&secret, "a cluster secret long enough\n")?;
    let sshown = secret.display().to_string();
    let fix = format!("chmod 600 {sshown}");
    for (mode, says) in [(0o666, "change"), (0o620, "change"), (0o644, "read"), (0o640, "read")] {
        set_mode(&secret, mode)?;
        let what = format!("a secret of mode {mode:04o}");
        refused(dir, &store, Some(&secret), &what, &[&sshown, says, &fix])?;
    }
    set_mode(&secret, 0o600)?;
    std::os::unix::fs::chown(&secret, Some(65534), None)?;
    refused(
        dir,
        &store,
        Some(&secret),
        "a secret of uid 65534",
        &[&sshown, "uid 65534"],
    )?;
    std::os::unix::fs::chown(&secret, Some(euid()), None)?;

    // Its own store that others could read, and a private secret: ckptd starts, and makes the
    // store private.
    set_mode(&store, 0o755)?;
    let log = dir.join("ckptd.log");
    let mut child = spawn_tracked(
        Command::new(bin("ckptd")?)
            .arg("--socket")
            .arg(dir.join("ckptd.sock"))
            .arg("--store")
            .arg(&store)
            .arg("--secret")
            .arg(&secret)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log)?),
    )?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !fs::read_to_string(&log).unwrap_or_default().contains("ckptd ready") {
        if Instant::now() > deadline || child.try_wait()?.is_some() {
            let _ = child.kill();
            let _ = wait_child_timeout(&mut child, Duration::from_secs(5));
            anyhow::bail!("ckptd did not start:\n{}", fs::read_to_string(&log).unwrap_or_default());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mode = fs::metadata(&store)?.mode() & 0o7777;
    send_signal(child.id() as i32, libc::SIGTERM)?;
    let (st, timed_out) = wait_child_timeout(&mut child, Duration::from_secs(10))?;
    let text = fs::read_to_string(&log)?;
    ensure!(
        mode == 0o700,
        "ckptd should have made its store 0700, it is {mode:04o}\n{text}"
    );
    ensure!(
        text.contains("now private"),
        "ckptd should say it made the store private:\n{text}"
    );
    ensure!(
        !timed_out && st.success(),
        "ckptd should end cleanly on SIGTERM: {st:?}\n{text}"
    );
    Ok(())
}
