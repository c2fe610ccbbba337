//! Files stay consistent at restore (issue 9): sqlite3 (python's module) writing long
//! transactions with a tiny page cache, in rollback-journal and in WAL mode. A checkpoint in the
//! middle of a transaction, more commits, kill -9, restore: the restored program finishes from
//! its checkpointed state and the database passes `PRAGMA integrity_check` with every id
//! exactly once (checked with the sqlite3 CLI). Restored twice from the same checkpoint, and
//! a hot journal that appeared after the checkpoint is set aside.

use anyhow::{bail, ensure, Context, Result};
use ckpt_tests::*;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const SQLITE3: &str = "/usr/bin/sqlite3";
const TOTAL: u64 = 3000;
const PER_TXN: u64 = 600;

fn sqlite3(db: &Path, sql: &str) -> Result<String> {
    let out = run_with_timeout(Command::new(SQLITE3).arg(db).arg(sql), Duration::from_secs(60))?;
    if !out.status.success() {
        bail!("sqlite3 {} {sql:?} failed: {}", db.display(), describe(&out));
    }
    Ok(stdout_str(&out))
}

/// The database is sound and holds the rows 1..=total exactly once, with their payloads.
fn check_db(db: &Path, total: u64) -> Result<()> {
    let ic = sqlite3(db, "PRAGMA integrity_check;")?;
    ensure!(ic == "ok", "integrity_check of {}: {ic}", db.display());
    let counts = sqlite3(db, "SELECT count(*), count(DISTINCT id), min(id), max(id) FROM t;")?;
    ensure!(
        counts == format!("{total}|{total}|1|{total}"),
        "rows of {}: count|distinct|min|max = {counts}, expected ids 1..{total} once each",
        db.display()
    );
    let bad = sqlite3(
        db,
        "SELECT count(*) FROM t WHERE payload IS NOT replace(hex(zeroblob(20)), '00', printf('row %08d k %08d ', id, k));",
    )?;
    ensure!(
        bad == "0",
        "{bad} rows of {} have a payload that is not theirs",
        db.display()
    );
    note!("{}: integrity ok, ids 1..{total} once each", db.display());
    Ok(())
}

fn writer(d: &Daemon, db: &Path, mode: &str, pause_ms: &str) -> Result<App> {
    ensure!(
        Path::new(SQLITE3).exists(),
        "{SQLITE3} is required (scripts/test.sh installs sqlite3)"
    );
    let db = db.to_str().context("db path")?;
    let total = TOTAL.to_string();
    let per = PER_TXN.to_string();
    d.run_example("sqlite_writer.py", &[db, mode, &total, &per, "2", pause_ms])
}

fn wait_tick(app: &App, at_least: u64) -> Result<u64> {
    let l = app.expect_line(
        &format!("a tick >= {at_least}"),
        |l| tick_num(l).is_some_and(|n| n >= at_least),
        Duration::from_secs(60),
    )?;
    Ok(tick_num(&l).unwrap_or(0))
}

fn wait_line(app: &App, want: &str) -> Result<()> {
    app.expect_line(want, |l| l == want, Duration::from_secs(90))?;
    Ok(())
}

/// The restored program goes on from its checkpoint: no earlier than the last tick seen
/// before it, and the first transaction it commits is the second (the checkpoint was taken
/// inside it, or just before it began).
fn resumes_in_second_transaction(r: &App, cp: &CkptPoint) -> Result<()> {
    let first = wait_tick(r, 0)?;
    ensure!(
        first >= cp.last_before,
        "the restored program's first tick is {first}, before the checkpoint's {}\n{}",
        cp.last_before,
        r.context()
    );
    let commit = r.expect_line("a commit line", |l| l.starts_with("commit "), Duration::from_secs(90))?;
    ensure!(
        commit == format!("commit {}", 2 * PER_TXN),
        "the restored program's first commit is {commit:?}: it should finish the second transaction\n{}",
        r.context()
    );
    Ok(())
}

/// Restores `id` and lets the program run to its end; the summary ckptctl printed.
fn restore_to_end(d: &Daemon, id: &str, pid: i32, cp: &CkptPoint) -> Result<String> {
    let mut r = d.restore_ok(id, pid)?;
    resumes_in_second_transaction(&r, cp)?;
    wait_line(&r, &format!("done {TOTAL}"))?;
    wait_proc_gone(pid, GONE_TIMEOUT)?;
    r.disarm();
    Ok(r.stderr())
}

fn long_transactions(mode: &str) -> Result<()> {
    let d = Daemon::start()?;
    let db = d.dir().join("test.db");
    let mut app = writer(&d, &db, mode, "0")?;
    let pid = app.pid;
    // Early in the second transaction (ids 601..1200): it is still open when the programs
    // are parked, even on a slow machine.
    wait_tick(&app, PER_TXN + 50)?;
    let cp = d.checkpoint_app(&app)?;
    note!(
        "checkpoint {} ({mode}) at ticks {}..{}",
        cp.id,
        cp.last_before,
        cp.first_after
    );
    ensure!(
        cp.last_before > PER_TXN && cp.last_before < 2 * PER_TXN,
        "the checkpoint should fall inside the second transaction (ticks {}..{})",
        cp.last_before,
        cp.first_after
    );
    let show = d.ckptctl_ok(&["show", &cp.id])?;
    ensure!(
        show.lines().any(|l| l.contains("snapshot") && l.contains("test.db")),
        "ckptctl show should list test.db as a snapshot file:\n{show}"
    );
    // Commit it, commit another, and die inside the fourth.
    wait_line(&app, &format!("commit {}", 3 * PER_TXN))?;
    wait_tick(&app, 3 * PER_TXN + 150)?;
    app.kill9()?;
    let before = std::fs::metadata(&db)?.len();

    // First restore: killed in the middle of its run.
    let mut r = d.restore_ok(&cp.id, pid)?;
    note!("restore 1 ({mode}) said: {}", r.stderr().trim());
    ensure!(
        r.stderr().contains("rolled back") && r.stderr().contains("test.db"),
        "the restore summary should say test.db was rolled back:\n{}",
        r.stderr()
    );
    resumes_in_second_transaction(&r, &cp)?;
    wait_tick(&r, 2 * PER_TXN + 200)?;
    r.kill9()?;
    r.disarm();

    // Second restore of the same checkpoint: runs to its end.
    let said = restore_to_end(&d, &cp.id, pid, &cp)?;
    note!(
        "restore 2 ({mode}) said: {}; the database was {before} bytes at the kill",
        said.trim()
    );
    check_db(&db, TOTAL)
}

#[test]
fn sqlite_rollback_journal_restores_consistently() -> Result<()> {
    require_root!();
    long_transactions("delete")
}

#[test]
fn sqlite_wal_restores_consistently() -> Result<()> {
    require_root!();
    long_transactions("wal")
}

/// A checkpoint between two transactions (no journal), a kill inside the next one: its hot
/// journal belongs to a future the restore abandons and is set aside, not deleted.
#[test]
fn sqlite_journal_born_after_checkpoint_is_set_aside() -> Result<()> {
    require_root!();
    let d = Daemon::start()?;
    let db = d.dir().join("test.db");
    let journal = d.dir().join("test.db-journal");
    let mut app = writer(&d, &db, "delete", "1500")?;
    let pid = app.pid;
    wait_line(&app, &format!("commit {PER_TXN}"))?;
    ensure!(!journal.exists(), "no journal between transactions");
    let id = d.checkpoint()?;
    let cp = CkptPoint {
        id: id.clone(),
        last_before: PER_TXN,
        first_after: PER_TXN,
        took: Duration::ZERO,
    };
    wait_tick(&app, PER_TXN + 200)?;
    ensure!(journal.exists(), "the next transaction should have a journal");
    app.kill9()?;

    let said = restore_to_end(&d, &id, pid, &cp)?;
    note!("restore said: {}", said.trim());
    let aside = d.dir().join(format!("test.db-journal.ckpt-aside-{id}"));
    ensure!(
        aside.exists(),
        "the hot journal should be set aside as {}; the directory has {:?}\n{said}",
        aside.display(),
        std::fs::read_dir(d.dir())?
            .flatten()
            .map(|e| e.file_name())
            .collect::<Vec<_>>()
    );
    ensure!(said.contains("set aside"), "the restore summary should say so:\n{said}");
    ensure!(
        d.log().contains("set aside"),
        "ckptd's log should say the journal was set aside"
    );
    check_db(&db, TOTAL)
}
