//! The file contract at restore (issue 9): a restore that refuses one file changes none; a log
//! shared with a process outside the checkpoint keeps that process's lines; a file mapped
//! shared writable in /tmp (like the JVM's hsperfdata) comes back with its checkpointed
//! content; `ckptctl show` lists the policies.

use anyhow::{bail, ensure, Context, Result};
use ckpt_tests::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn sha(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("read {}", path.display()))
}

/// `file_pair` under ckpt, with its data file and its log in the daemon's folder: (the
/// program, the data file, the log).
fn file_pair(d: &Daemon) -> Result<(App, PathBuf, PathBuf)> {
    let db = d.dir().join("data.bin");
    let log = d.dir().join("pair.log");
    let app = d.run_example("file_pair", &[db.to_str().unwrap(), log.to_str().unwrap()])?;
    Ok((app, db, log))
}

/// What `ckptctl show --json` says of the file at `path`.
fn shown_file(d: &Daemon, id: &str, path: &Path) -> Result<serde_json::Value> {
    let json = d.ckptctl_ok(&["show", id, "--json"])?;
    let v: serde_json::Value = serde_json::from_str(&json)?;
    let hosts = v["manifest"]["hosts"].as_array().context("manifest.hosts")?;
    for f in hosts.iter().flat_map(|h| h["files"].as_array().into_iter().flatten()) {
        if f["path"].as_str() == path.to_str() {
            return Ok(f.clone());
        }
    }
    bail!("ckptctl show --json lists no file {}:\n{json}", path.display())
}

/// The policy `ckptctl show --json` gives `path`.
fn shown_policy(d: &Daemon, id: &str, path: &Path) -> Result<String> {
    Ok(shown_file(d, id, path)?["policy"]
        .as_str()
        .unwrap_or_default()
        .to_string())
}

/// Acceptance 2: one refused file (a log whose start was rewritten, a data file written by
/// another process) makes the whole restore refuse, in one line naming both, and nothing
/// changes: the data file is byte for byte as before, no process starts, the store is as it
/// was. The overrides then let it through.
#[test]
fn failing_restore_changes_nothing() -> Result<()> {
    require_root!();
    let d = Daemon::start()?;
    let (mut app, db, log) = file_pair(&d)?;
    let (db_s, log_s) = (db.to_str().unwrap(), log.to_str().unwrap());
    let pid = app.pid;
    app.expect_tick(LINE_TIMEOUT)?;
    let cp = d.checkpoint_app(&app)?;
    ensure!(
        shown_policy(&d, &cp.id, &db)? == "snapshot",
        "data.bin should be a snapshot file"
    );
    ensure!(
        shown_policy(&d, &cp.id, &log)? == "append",
        "pair.log should be an append file"
    );
    app.expect_consecutive_ticks(cp.first_after, 3, true, LINE_TIMEOUT)?;
    app.kill9()?;

    // Someone rewrites the start of the log in place.
    let mut text = std::fs::read(&log)?;
    text[..4].copy_from_slice(b"LINE");
    std::fs::write(&log, &text)?;
    let before = (sha(&db)?, sha(&log)?, d.store_hash()?, d.children());
    let out = d.ckptctl(&["restore", &cp.id]);
    let msg = expect_failure_one_line(&out, "restore over a rewritten log")?;
    note!("ckptctl said: {msg}");
    ensure!(
        msg.contains("refused, nothing was changed") && msg.contains("pair.log") && msg.contains("changed"),
        "the message should say nothing was changed and name the log: {msg}"
    );
    std::thread::sleep(Duration::from_millis(300));
    ensure!(!proc_exists(pid), "pid {pid} exists after a refused restore");
    let after = (sha(&db)?, sha(&log)?, d.store_hash()?, d.children());
    ensure!(
        before == after,
        "the refused restore changed a file, the store or ckptd's children"
    );

    // Another process writes to the data file too: both reasons, one line.
    let w = run_with_timeout(
        Command::new("/bin/sh").arg("-c").arg(format!("printf X >> {db_s}")),
        Duration::from_secs(10),
    )?;
    ensure!(w.status.success(), "the outside write failed: {}", describe(&w));
    let before = sha(&db)?;
    let out = d.ckptctl(&["restore", &cp.id]);
    let msg = expect_failure_one_line(&out, "restore over two refused files")?;
    note!("ckptctl said: {msg}");
    ensure!(
        msg.contains("data.bin: modified since the checkpoint by pid") && msg.contains("pair.log"),
        "the message should name the outside writer of data.bin and the log: {msg}"
    );
    ensure!(sha(&db)? == before, "the refused restore changed data.bin");
    ensure!(!proc_exists(pid), "pid {pid} exists after a refused restore");

    // The overrides: roll the data back anyway, leave the log as it is.
    let (db_rule, log_rule) = (format!("{db_s}=snapshot"), format!("{log_s}=keep"));
    let mut r = d.restore_args(&cp.id, pid, &["--file-policy", &db_rule, "--file-policy", &log_rule])?;
    let st = r.wait_child_exit(Duration::from_secs(120))?;
    ensure!(
        st.success(),
        "restore with overrides failed: {}\n{}",
        fmt_status(&st),
        r.context()
    );
    note!("restore with overrides said: {}", r.stderr().trim());
    // The program checks every record of data.bin against its memory at each step.
    let t = r.expect_tick(LINE_TIMEOUT)?;
    r.expect_consecutive_ticks(t, 3, true, LINE_TIMEOUT)?;
    r.kill9()?;
    Ok(())
}

/// Acceptance 3: a log written by the checkpointed program and by a process outside it: after
/// the restore every outside line is still there, and the program's lines are all there, only
/// those after the checkpoint possibly twice.
#[test]
fn shared_log_keeps_outside_lines() -> Result<()> {
    require_root!();
    let d = Daemon::start()?;
    let log = d.dir().join("shared.log");
    let log_s = log.to_str().unwrap().to_string();
    let mut app = d.run_example("append_lines", &[&log_s])?;
    let pid = app.pid;
    app.expect_tick(LINE_TIMEOUT)?;
    let mut outside = spawn_tracked(Command::new("/bin/sh").arg("-c").arg(format!(
        "i=0; while :; do i=$((i+1)); echo \"outside $i\" >> {log_s}; sleep 0.01; done"
    )))?;
    let cp = d.checkpoint_app(&app)?;
    app.expect_tick(LINE_TIMEOUT)?;
    app.kill9()?;
    std::thread::sleep(Duration::from_millis(300));
    outside.kill()?;
    let _ = wait_child_timeout(&mut outside, GONE_TIMEOUT)?;

    let r = d.restore_ok(&cp.id, pid)?;
    let said = r.stderr();
    note!("restore said: {}", said.trim());
    ensure!(
        said.contains("left") && said.contains("shared.log") && said.contains("(sh)"),
        "the restore should leave the log as it is, naming the outside writer:\n{said}"
    );
    let t = r.expect_tick(LINE_TIMEOUT)?;
    r.expect_tick(LINE_TIMEOUT)?;
    kill9_and_wait(pid)?;

    let text = std::fs::read_to_string(&log)?;
    let mut outside_n = Vec::new();
    let mut mine = Vec::new();
    for l in text.lines() {
        if let Some(n) = l.strip_prefix("outside ") {
            outside_n.push(n.parse::<u64>()?);
        } else if let Some(n) = l.strip_prefix("line ") {
            mine.push(n.parse::<u64>()?);
        } else {
            bail!("a line of the log is neither the program's nor the outside one's: {l:?}");
        }
    }
    let max = outside_n.iter().copied().max().unwrap_or(0);
    ensure!(max > 0, "the outside process wrote nothing");
    ensure!(
        outside_n == (1..=max).collect::<Vec<_>>(),
        "the outside process's lines 1..{max} are not all there once in order"
    );
    // The program's: 1..=a, then b..=c with cp.last_before < b <= a + 1.
    let jump = mine.windows(2).position(|w| w[1] != w[0] + 1);
    let ok = match jump {
        None => mine.first() == Some(&1),
        Some(i) => {
            let (a, b) = (mine[i], mine[i + 1]);
            mine[..=i] == (1..=a).collect::<Vec<_>>()
                && b > cp.last_before
                && b <= a + 1
                && mine[i + 1..] == (b..b + (mine.len() - i - 1) as u64).collect::<Vec<_>>()
        }
    };
    ensure!(
        ok,
        "the program's lines should be 1..a then b..c with b after the checkpoint (tick {}): jump at {:?}",
        cp.last_before,
        jump.map(|i| (mine[i], mine[i + 1]))
    );
    ensure!(
        mine.last().copied().unwrap_or(0) >= t,
        "the restored program's lines are missing"
    );
    note!("{} outside lines and {} program lines, all there", max, mine.len());
    Ok(())
}

/// Acceptance 5: a file in /tmp mapped shared writable (like hsperfdata) and written since the
/// checkpoint: the restore puts its content back (the program checks its mapping against its
/// memory) and does not refuse it.
#[test]
fn shared_mapping_in_tmp_restores() -> Result<()> {
    require_root!();
    let d = Daemon::start()?;
    let dir = d.dir().join("hsperfdata_test");
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("4242");
    let mut app = d.run_example("shared_map", &[file.to_str().unwrap()])?;
    let pid = app.pid;
    app.expect_tick(LINE_TIMEOUT)?;
    let cp = d.checkpoint_app(&app)?;
    ensure!(
        shown_policy(&d, &cp.id, &file)? == "snapshot",
        "the mapped file should be a snapshot file"
    );
    app.expect_consecutive_ticks(cp.first_after, 5, true, LINE_TIMEOUT)?;
    app.kill9()?;
    let r = d.restore_ok(&cp.id, pid)?;
    let t = r.expect_tick(LINE_TIMEOUT)?;
    cp.check_resumed(t, &r)?;
    r.expect_consecutive_ticks(t, 5, true, LINE_TIMEOUT)?;
    note!("restore said: {}", r.stderr().trim());
    kill9_and_wait(pid)?;
    Ok(())
}

/// Snapshots are incremental (a block equal to the parent checkpoint's is referred to, not
/// stored), and deleting the parent folds the blocks a later checkpoint needs into it: that
/// checkpoint still restores (the program checks every byte of its data file).
#[test]
fn snapshot_blocks_survive_deleting_their_parent() -> Result<()> {
    require_root!();
    let d = Daemon::start()?;
    let (mut app, db, _) = file_pair(&d)?;
    let pid = app.pid;
    app.expect_tick(LINE_TIMEOUT)?;
    let c1 = d.checkpoint_app(&app)?;
    app.expect_tick(LINE_TIMEOUT)?;
    let c2 = d.checkpoint_app(&app)?;
    let f = shown_file(&d, &c2.id, &db)?;
    let (size, stored) = (f["size"].as_u64().unwrap_or(0), f["stored_bytes"].as_u64().unwrap_or(0));
    note!("checkpoint {}: data.bin is {size} bytes, {stored} stored by it", c2.id);
    ensure!(
        size >= 2 << 20 && stored > 0 && stored <= 256 << 10,
        "the second checkpoint should store only the blocks written since the first ({stored} of {size})"
    );
    d.ckptctl_ok(&["delete", &c1.id])?;
    app.expect_tick(LINE_TIMEOUT)?;
    app.kill9()?;
    let r = d.restore_ok(&c2.id, pid)?;
    let t = r.expect_tick(LINE_TIMEOUT)?;
    c2.check_resumed(t, &r)?;
    r.expect_consecutive_ticks(t, 3, true, LINE_TIMEOUT)?;
    kill9_and_wait(pid)?;
    Ok(())
}

/// A damaged file block store makes the restore refuse in one line and change nothing.
#[test]
fn damaged_file_blocks_refused() -> Result<()> {
    require_root!();
    let d = Daemon::start()?;
    let (mut app, db, _) = file_pair(&d)?;
    let pid = app.pid;
    app.expect_tick(LINE_TIMEOUT)?;
    let cp = d.checkpoint_app(&app)?;
    app.expect_tick(LINE_TIMEOUT)?;
    app.kill9()?;
    let blocks = walk_dir(&d.ckpt_dir(&cp.id))?
        .into_iter()
        .find(|p| p.ends_with("files.blocks"))
        .context("no files.blocks in the checkpoint")?;
    let mut bytes = std::fs::read(&blocks)?;
    let at = bytes.len() / 2;
    bytes[at] ^= 0x55;
    std::fs::write(&blocks, &bytes)?;
    let before = sha(&db)?;
    let out = d.ckptctl(&["restore", &cp.id]);
    let msg = expect_failure_one_line(&out, "restore with a damaged block store")?;
    note!("ckptctl said: {msg}");
    ensure!(
        msg.contains("nothing was changed") && msg.contains("files.blocks"),
        "the message should name the damaged store: {msg}"
    );
    std::thread::sleep(Duration::from_millis(300));
    ensure!(!proc_exists(pid), "pid {pid} exists after a refused restore");
    ensure!(sha(&db)? == before, "the refused restore changed data.bin");
    Ok(())
}

/// Writes to snapshot files wait while the gate is shut (phase 1 until the park ends): with
/// phase 1 held 3 s by the testing hook, a program writing to its data file stalls that long,
/// and one writing only to a log (append, not held) goes on.
#[test]
fn writes_to_snapshot_files_wait_in_phase1() -> Result<()> {
    require_root!();
    let d = Daemon::start()?;
    let (pair, _, _) = file_pair(&d)?;
    let lines = d.dir().join("lines.log");
    let logger = d.run_example("append_lines", &[lines.to_str().unwrap()])?;
    pair.expect_tick(LINE_TIMEOUT)?;
    logger.expect_tick(LINE_TIMEOUT)?;
    pair.drain();
    logger.drain();
    let t0 = std::time::Instant::now();
    d.ckptctl_ok(&["checkpoint", "--hold-phase1-ms", "3000"])?;
    let took = t0.elapsed();
    pair.expect_tick(LINE_TIMEOUT)?;
    pair.expect_tick(LINE_TIMEOUT)?;
    logger.expect_tick(LINE_TIMEOUT)?;
    let ticks = |app: &App| -> Vec<std::time::Instant> {
        app.history_lines()
            .into_iter()
            .filter(|l| tick_num(&l.text).is_some())
            .map(|l| l.at)
            .collect()
    };
    // The longest pause ending after the checkpoint began.
    let gap = ticks(&pair)
        .windows(2)
        .filter(|w| w[1] >= t0)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    let logger_ticks = ticks(&logger)
        .into_iter()
        .filter(|&at| at >= t0 && at < t0 + took)
        .count();
    note!("checkpoint took {took:?}; file_pair's longest pause {gap:?}; append_lines ticked {logger_ticks} times meanwhile");
    ensure!(
        gap >= Duration::from_millis(2500),
        "file_pair's writes to its data file should wait while phase 1 is held (longest pause {gap:?})"
    );
    ensure!(
        logger_ticks >= 2,
        "append_lines writes only to a log and should go on while phase 1 is held ({logger_ticks} ticks)"
    );
    Ok(())
}

/// A program whose own binary changed since the checkpoint: the restore refuses, naming the
/// file and the `--file-policy PATH=keep` that leaves it as it is; given that, it restores.
#[test]
fn changed_mapped_binary_restores_with_keep() -> Result<()> {
    require_root!();
    let d = Daemon::start()?;
    let exe = d.dir().join("ticker");
    std::fs::copy(example("counter")?, &exe)?;
    let mut app = d.run(&exe, &[])?;
    app.expect_tick(LINE_TIMEOUT)?;
    let id = d.checkpoint()?;
    app.kill9()?;
    app.disarm();
    // A byte more at its end: its mapped pages are the same, its identity is not.
    std::io::Write::write_all(&mut std::fs::OpenOptions::new().append(true).open(&exe)?, b"\n")?;
    let out = d.ckptctl(&["restore", &id, "--detach"]);
    let msg = expect_failure_one_line(&out, "a restore with the program's binary changed")?;
    let keep = format!("--file-policy {}=keep", exe.display());
    ensure!(
        msg.contains("changed since the checkpoint") && msg.contains(&keep),
        "the refusal should name the binary and the override: {msg}"
    );
    let policy = format!("{}=keep", exe.display());
    let r = d.restore_args(&id, app.pid, &["--detach", "--file-policy", &policy])?;
    r.expect_tick(LINE_TIMEOUT)
        .context("the program should run again with its binary kept as it is")?;
    Ok(())
}
