//! What a program did to its directories after a checkpoint is undone at the restore of that
//! checkpoint (issue 11): files it created are set aside (`NAME.ckpt-aside-ID`), files it
//! renamed are renamed back, a file it removed is reported; a file another program created in
//! the same directory meanwhile is left alone, as is one made by a program started after the
//! checkpoint under the same ckptd. Restoring the same checkpoint twice, and a later
//! checkpoint of the restored program, work too.

use anyhow::{ensure, Context, Result};
use ckpt_tests::*;
use std::path::Path;
use std::time::Duration;

/// `ckptctl restore ID --json` of `pid`; the restored program and the restore's file notes.
fn restore_noted(d: &Daemon, id: &str, pid: i32) -> Result<(App, Vec<String>)> {
    let mut app = d.restore_args(id, pid, &["--json"])?;
    let st = app.wait_child_exit(Duration::from_secs(120))?;
    ensure!(
        st.success(),
        "ckptctl restore {id} failed: {}\n{}",
        fmt_status(&st),
        app.context()
    );
    let line = app.expect_line(
        "the restore's JSON",
        |l| l.starts_with('{') && !is_progress_event(l),
        LINE_TIMEOUT,
    )?;
    let v: serde_json::Value = serde_json::from_str(&line).with_context(|| format!("bad JSON: {line}"))?;
    let notes = v["files"]
        .as_array()
        .context("the restore's JSON has no files")?
        .iter()
        .filter_map(|n| n.as_str().map(str::to_string))
        .collect();
    Ok((app, notes))
}

fn expect_note(notes: &[String], want: &str) -> Result<()> {
    ensure!(
        notes.iter().any(|n| n.contains(want)),
        "the restore should say {want:?}; it said: {notes:#?}"
    );
    Ok(())
}

#[test]
fn created_renamed_removed_files_are_undone_at_restore() -> Result<()> {
    require_root!();
    let tmp = tempfile::Builder::new().prefix("ckpt-dirs-").tempdir()?;
    let dir = tmp.path();
    let ds = dir.to_str().context("temp dir not UTF-8")?;
    let d = Daemon::start()?;
    let mut app = d.run_example("dir_changes.c", &[ds])?;
    let pid = app.pid;
    app.expect_line("ready", |l| l == "ready", LINE_TIMEOUT)?;
    app.expect_tick(LINE_TIMEOUT)?;
    ask_state(&app).context("before any checkpoint")?;
    let first = d.checkpoint()?;
    // Rounds 1 and 2 restore the first checkpoint (twice in a row); round 3 a checkpoint of
    // the restored program.
    for round in 1..=3 {
        let id = if round < 3 { first.clone() } else { d.checkpoint()? };
        app.signal(libc::SIGUSR2)?;
        app.expect_line("changed", |l| l == "changed", LINE_TIMEOUT)?;
        ensure!(
            dir.join("new1").exists() && dir.join("renamed").exists() && dir.join("newdir/f").exists(),
            "round {round}: the program did not change its directory"
        );
        // Another program, outside the checkpoint, creates a file there after it.
        let outside = dir.join(format!("outside{round}"));
        std::fs::write(&outside, "outside\n")?;
        // And, in round 1, a program started after the checkpoint under the same ckptd.
        let beside = if round == 1 {
            let script = format!("echo beside > {ds}/outside_beside; echo made; exec sleep 100");
            let b = d.run(Path::new(BASH), &["-c", &script])?;
            b.expect_line("made", |l| l == "made", LINE_TIMEOUT)?;
            Some(b)
        } else {
            None
        };
        app.kill9_tree()?;
        let (restored, notes) = restore_noted(&d, &id, pid).with_context(|| format!("round {round}"))?;
        app = restored;
        note!("round {round}: restore of {id} says {notes:#?}");
        app.expect_tick(LINE_TIMEOUT)?;
        ask_state(&app).with_context(|| format!("after restore {round}: {notes:#?}\n{}", d.context()))?;
        for name in ["new1", "final", "sub/added", "newdir"] {
            let path = dir.join(name);
            expect_note(
                &notes,
                &format!("set aside {} as {}.ckpt-aside-{id}", path.display(), path.display()),
            )?;
        }
        ensure!(
            Path::new(&format!("{ds}/newdir.ckpt-aside-{id}/f")).exists(),
            "a directory made after the checkpoint goes aside with what is in it"
        );
        expect_note(&notes, &format!("renamed {ds}/renamed back to {ds}/old"))?;
        let doomed = format!("{ds}/doomed was removed after the checkpoint");
        if round < 3 {
            // It existed at the first checkpoint, not at the later one.
            expect_note(&notes, &doomed)?;
        } else {
            ensure!(
                !notes.iter().any(|n| n.contains("doomed")),
                "doomed did not exist at checkpoint {id}: {notes:#?}"
            );
        }
        for r in 1..=round {
            let o = dir.join(format!("outside{r}"));
            ensure!(
                std::fs::read_to_string(&o).ok().as_deref() == Some("outside\n"),
                "{} (another program's) must be left alone",
                o.display()
            );
        }
        ensure!(
            !notes.iter().any(|n| n.contains("outside")),
            "another program's file must not be touched: {notes:#?}"
        );
        if let Some(mut b) = beside {
            ensure!(
                std::fs::read_to_string(dir.join("outside_beside")).ok().as_deref() == Some("beside\n"),
                "a file of a program started after the checkpoint must be left alone"
            );
            b.kill9_tree()?;
        }
    }
    app.kill9_tree()?;
    Ok(())
}

/// A ckptd restarted since the checkpoint cannot tell what the program did to its directories:
/// the restore says so in one line and leaves them as they are.
#[test]
fn restarted_ckptd_leaves_directories_alone_and_says_so() -> Result<()> {
    require_root!();
    let tmp = tempfile::Builder::new().prefix("ckpt-dirs-").tempdir()?;
    let dir = tmp.path();
    let ds = dir.to_str().context("temp dir not UTF-8")?;
    let mut d = Daemon::start()?;
    let mut app = d.run_example("dir_changes.c", &[ds])?;
    let pid = app.pid;
    app.expect_line("ready", |l| l == "ready", LINE_TIMEOUT)?;
    app.expect_tick(LINE_TIMEOUT)?;
    let id = d.checkpoint()?;
    app.signal(libc::SIGUSR2)?;
    app.expect_line("changed", |l| l == "changed", LINE_TIMEOUT)?;
    d.restart(libc::SIGTERM)?;
    app.kill9_tree()?;
    let (mut app, notes) = restore_noted(&d, &id, pid)?;
    let unknown: Vec<&String> = notes
        .iter()
        .filter(|n| n.starts_with("directories left as they are: "))
        .collect();
    ensure!(unknown.len() == 1, "one line should say why: {notes:#?}");
    ensure!(
        !notes
            .iter()
            .any(|n| n.starts_with("set aside") || n.starts_with("renamed")),
        "nothing may be changed: {notes:#?}"
    );
    for name in ["new1", "final", "renamed", "newdir/f"] {
        ensure!(dir.join(name).exists(), "{name} should be left as it is");
    }
    app.expect_tick(LINE_TIMEOUT)?;
    app.kill9_tree()?;
    Ok(())
}

/// Restoring an earlier checkpoint sets aside what the program made since; restoring then a
/// later checkpoint, which has those files, brings them back to their names.
#[test]
fn later_checkpoint_after_an_earlier_one_gets_its_files_back() -> Result<()> {
    require_root!();
    let tmp = tempfile::Builder::new().prefix("ckpt-dirs-").tempdir()?;
    let dir = tmp.path();
    let ds = dir.to_str().context("temp dir not UTF-8")?;
    let d = Daemon::start()?;
    let mut app = d.run_example("dir_changes.c", &[ds])?;
    let pid = app.pid;
    app.expect_line("ready", |l| l == "ready", LINE_TIMEOUT)?;
    app.expect_tick(LINE_TIMEOUT)?;
    let early = d.checkpoint()?;
    app.signal(libc::SIGUSR2)?;
    app.expect_line("changed", |l| l == "changed", LINE_TIMEOUT)?;
    let late = d.checkpoint()?;
    app.kill9_tree()?;
    let (mut app, notes) = restore_noted(&d, &early, pid)?;
    note!("restore of {early}: {notes:#?}");
    ask_state(&app).with_context(|| format!("after restoring {early}: {notes:#?}"))?;
    ensure!(!dir.join("new1").exists(), "new1 should be aside");
    app.kill9_tree()?;
    let (mut app, notes) = restore_noted(&d, &late, pid)?;
    note!("restore of {late}: {notes:#?}");
    for name in ["new1", "final", "sub/added", "newdir/f", "renamed"] {
        ensure!(
            dir.join(name).exists(),
            "{name} existed at checkpoint {late} and should be back: {notes:#?}"
        );
    }
    for name in ["old", "doomed"] {
        ensure!(
            !dir.join(name).exists(),
            "{name} did not exist at checkpoint {late}: {notes:#?}"
        );
    }
    expect_note(
        &notes,
        &format!("renamed {ds}/new1.ckpt-aside-{early} back to {ds}/new1"),
    )?;
    app.expect_tick(LINE_TIMEOUT)?;
    app.kill9_tree()?;
    Ok(())
}
