//! `ckptctl restore --lazy` (issue 13, goal 6): the programs run as soon as their threads and
//! fds are back and their memory comes in after, on first touch and in the background. Every
//! page arrives (checked while it loads and after), a lazily restored program checkpoints and
//! restores again, memory forked, moved and discarded while loading stays right, a checkpoint
//! asked for while a load runs waits for it, a checkpoint being read cannot be deleted, and a
//! load that cannot finish (a damaged page store, ckptd killed) takes the half-loaded program
//! with it instead of letting it run with pages missing.
//!
//! ckptd runs with `--test-lazy-delay-ms`, which slows the background loading down so that
//! the program surely runs, and is signalled, while pages are still missing.

use anyhow::{bail, ensure, Context, Result};
use ckpt_tests::*;
use std::time::{Duration, Instant};

/// Background loading waits this long after each 256 KiB it copied: 64 MiB take over 2.5 s.
const SLOW: &[&str] = &["--test-lazy-delay-ms", "10"];
/// Slower, for a program with a few MiB of data.
const SLOWER: &[&str] = &["--test-lazy-delay-ms", "50"];

/// Waits until the restore `r` says on stderr that the programs run.
fn running(r: &App, d: &Daemon) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !r.stderr().contains("restored checkpoint") {
        if Instant::now() > deadline {
            bail!(
                "the lazy restore did not report its programs running\n{}\n{}",
                r.context(),
                d.context()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// `lazy` restore of `id` as `pid`; returns once the program runs (ckptctl still waits for the
/// pages).
fn restore_lazy(d: &Daemon, id: &str, pid: i32) -> Result<App> {
    let r = d.restore_args(id, pid, &["--lazy", "--detach"])?;
    running(&r, d)?;
    Ok(r)
}

/// Signals `app` to verify its memory and waits for the verdict.
fn verify(app: &App, what: &str) -> Result<String> {
    app.signal(libc::SIGUSR1)?;
    let line = app.expect_line(
        what,
        |l| l.starts_with("verify ok") || l.contains("FAILED"),
        LINE_TIMEOUT,
    )?;
    ensure!(line.starts_with("verify ok"), "{what}: {line}\n{}", app.context());
    Ok(line)
}

/// Whether `ckptctl status` shows `pid` loading.
fn loading(d: &Daemon, pid: i32) -> Result<bool> {
    let out = d.ckptctl_ok(&["status"])?;
    Ok(out
        .lines()
        .any(|l| l.split_whitespace().next() == Some(&pid.to_string()) && l.contains("(loading ")))
}

fn wait_ok(r: &mut App, what: &str) -> Result<()> {
    let st = r.wait_child_exit(Duration::from_secs(120))?;
    ensure!(st.success(), "{what}: ckptctl {}\n{}", fmt_status(&st), r.context());
    Ok(())
}

/// dirty_log writing a round of pages per SIGUSR2.
fn round(app: &App) -> Result<()> {
    app.signal(libc::SIGUSR2)?;
    app.expect_line("a round of writes", |l| l.starts_with("round "), LINE_TIMEOUT)?;
    Ok(())
}

/// `dirty_log ARGS` (in rounds on SIGUSR2) after one round, checkpointed and killed: its pid
/// and the checkpoint.
fn checkpointed_and_killed(d: &Daemon, args: &[&str]) -> Result<(i32, String)> {
    let mut app = d.run_example("dirty_log", args)?;
    let pid = app.pid;
    app.expect_line("start", |l| l.starts_with("start "), Duration::from_secs(60))?;
    round(&app)?;
    let id = d.checkpoint()?;
    app.kill9()?;
    Ok((pid, id))
}

#[test]
fn every_page_comes_back_and_a_lazily_restored_program_is_checkpointed_and_restored_again() -> Result<()> {
    require_root!();
    let d = Daemon::start_with(&bin_dir(), SLOW)?;
    let mut app = d.run_example("dirty_log", &["128", "5", "sig"])?;
    let pid = app.pid;
    app.expect_line("start", |l| l.starts_with("start "), Duration::from_secs(60))?;
    for _ in 0..3 {
        round(&app)?;
    }
    let mut id = d.checkpoint()?;
    app.kill9()?;
    for gen in 0..3 {
        let mut r = restore_lazy(&d, &id, pid)?;
        // The program runs, and the pages it has not touched yet are still coming in.
        ensure!(
            loading(&d, pid)?,
            "restore {gen} of {id}: ckptctl status should show pid {pid} loading\n{}",
            d.context()
        );
        verify(&r, "verify while the pages load")?;
        round(&r)?;
        wait_ok(&mut r, "the lazy restore once every page is in")?;
        ensure!(!loading(&d, pid)?, "pid {pid} still shown loading after the load");
        verify(&r, "verify once every page is in")?;
        round(&r)?;
        // A checkpoint of the lazily restored program, restored in the next turn.
        id = d
            .checkpoint()
            .with_context(|| format!("checkpoint after lazy restore {gen}"))?;
        verify(&r, "verify after the checkpoint")?;
        r.kill9()?;
    }
    Ok(())
}

#[test]
fn memory_forked_moved_and_discarded_while_it_loads_stays_right() -> Result<()> {
    require_root!();
    // The parent's own pages come in only in the background (its children fault theirs into
    // their own memory): 128 MiB over 5 s at least.
    let d = Daemon::start_with(&bin_dir(), SLOW)?;
    let mut app = d.run_example("lazy_events", &["128"])?;
    let pid = app.pid;
    app.expect_line("ready", |l| l.starts_with("ready "), Duration::from_secs(60))?;
    let id = d.checkpoint()?;
    app.kill9()?;

    let mut r = restore_lazy(&d, &id, pid)?;
    ensure!(loading(&d, pid)?, "pid {pid} should be loading\n{}", d.context());
    // A fork, an mremap and a MADV_DONTNEED while most pages are still missing.
    r.signal(libc::SIGUSR2)?;
    let fork = r.expect_line(
        "the forked child's verdict",
        |l| l.contains("fork ok") || l.contains("FAILED"),
        LINE_TIMEOUT,
    )?;
    ensure!(fork.starts_with("fork ok"), "{fork}\n{}", r.context());
    let forks = r.expect_line(
        "the short-lived children's verdict",
        |l| l.contains("forks ok") || l.contains("FAILED"),
        LINE_TIMEOUT,
    )?;
    ensure!(forks.starts_with("forks ok"), "{forks}\n{}", r.context());
    let ev = r.expect_line(
        "the events' verdict",
        |l| l.starts_with("events ok") || l.contains("FAILED"),
        LINE_TIMEOUT,
    )?;
    ensure!(ev.starts_with("events ok"), "{ev}\n{}", r.context());
    wait_ok(&mut r, "the lazy restore")?;
    verify(&r, "verify after the load")?;

    // What the program did while loading is what the next checkpoint holds.
    let id2 = d.checkpoint()?;
    r.kill9()?;
    let mut r2 = restore_lazy(&d, &id2, pid)?;
    verify(&r2, "verify of the second lazy restore")?;
    wait_ok(&mut r2, "the second lazy restore")?;
    r2.kill9()?;
    Ok(())
}

#[test]
fn a_checkpoint_asked_for_during_a_load_waits_for_it_and_a_checkpoint_being_read_stays() -> Result<()> {
    require_root!();
    let d = Daemon::start_with(&bin_dir(), SLOWER)?;
    let (pid, id) = checkpointed_and_killed(&d, &["128", "5", "sig"])?;

    let mut r = restore_lazy(&d, &id, pid)?;
    ensure!(loading(&d, pid)?, "pid {pid} should be loading\n{}", d.context());
    let del = d.ckptctl(&["delete", &id]);
    ensure!(
        !del.status.success() && String::from_utf8_lossy(&del.stderr).contains("being read by a lazy restore"),
        "deleting checkpoint {id} while it loads should be refused\n{}",
        describe(&del)
    );
    let id2 = d.checkpoint().context("a checkpoint during the load")?;
    // It waited for the load: the restore has ended by now, every page in.
    let st = r.wait_child_exit(Duration::from_secs(5))?;
    ensure!(st.success(), "the lazy restore: {}\n{}", fmt_status(&st), r.context());
    verify(&r, "verify after the checkpoint")?;
    round(&r)?;
    // Now it may go (what the new checkpoint needs of it is folded into it).
    d.ckptctl_ok(&["delete", &id])?;
    r.kill9()?;
    let mut back = d.restore_ok(&id2, pid)?;
    verify(&back, "verify of the checkpoint taken during the load")?;
    back.kill9()?;
    Ok(())
}

#[test]
fn a_page_store_cut_short_or_damaged_under_a_load_kills_the_half_loaded_program_and_says_why() -> Result<()> {
    require_root!();
    // Over 2 s for the pages, time enough to cut the store in the middle.
    let d = Daemon::start_with(&bin_dir(), SLOWER)?;
    let (pid, id) = checkpointed_and_killed(&d, &["64", "20", "sig"])?;
    let pages = d.image_file(&id, pid, "pages.img")?;
    let len = std::fs::metadata(&pages)?.len();
    let whole = std::fs::read(&pages)?;

    // The store loses its second half while the program runs with most pages still missing.
    let mut r = restore_lazy(&d, &id, pid)?;
    ensure!(loading(&d, pid)?, "pid {pid} should be loading\n{}", d.context());
    std::fs::OpenOptions::new().write(true).open(&pages)?.set_len(len / 2)?;
    let st = r.wait_child_exit(Duration::from_secs(120))?;
    let err = r.stderr();
    ensure!(
        !st.success() && err.contains("failed while loading the pages of pid") && err.contains("were killed"),
        "the restore should fail saying why: {}\n{}",
        fmt_status(&st),
        r.context()
    );
    let said: Vec<&str> = err.lines().filter(|l| l.starts_with("ckptctl:")).collect();
    ensure!(said.len() == 1, "one line says why: {said:?}");
    note!("cut short: {}", said[0]);
    wait_proc_gone(pid, GONE_TIMEOUT).context("the half-loaded program must be gone")?;
    r.disarm();
    ensure!(!d.status_pids()?.contains(&pid), "pid {pid} still registered");

    // Damaged rather than short (the runs of lazy memory are checked as they are read, not
    // before): attached, ckptctl says why the job ended so.
    let mut damaged = whole;
    damaged[len as usize / 2..][..1 << 20].fill(0x5a);
    std::fs::write(&pages, &damaged)?;
    let mut r = d.restore_args(&id, pid, &["--lazy", "--attach"])?;
    let st = r.wait_child_exit(Duration::from_secs(120))?;
    let err = r.stderr();
    // Killed once running (128 + SIGKILL), or refused if the restorer's own last steps had
    // already touched a damaged page (1): either way with the reason.
    ensure!(
        matches!(st.code(), Some(137) | Some(1)) && err.contains("failed while loading the pages of pid"),
        "an attached lazy restore should end with the job killed and say why: {}\n{}",
        fmt_status(&st),
        r.context()
    );
    note!("damaged: {}", err.trim());
    wait_proc_gone(pid, GONE_TIMEOUT)?;
    r.disarm();
    Ok(())
}

#[test]
fn a_checkpoint_removed_under_a_load_still_loads_whole() -> Result<()> {
    require_root!();
    let d = Daemon::start_with(&bin_dir(), SLOWER)?;
    let (pid, id) = checkpointed_and_killed(&d, &["64", "20", "sig"])?;
    let mut r = restore_lazy(&d, &id, pid)?;
    ensure!(loading(&d, pid)?, "pid {pid} should be loading\n{}", d.context());
    // ckptd holds the page stores open from the start of the restore.
    std::fs::remove_dir_all(d.ckpt_dir(&id))?;
    wait_ok(&mut r, "the lazy restore of a checkpoint removed under it")?;
    verify(&r, "verify after the load")?;
    r.kill9()?;
    Ok(())
}

#[test]
fn two_programs_of_one_checkpoint_load_lazily_side_by_side() -> Result<()> {
    require_root!();
    let d = Daemon::start_with(&bin_dir(), SLOW)?;
    let mut a = d.run_example("dirty_log", &["64", "10", "sig"])?;
    let mut b = d.run_example("lazy_events", &["64"])?;
    a.expect_line("start", |l| l.starts_with("start "), Duration::from_secs(60))?;
    b.expect_line("ready", |l| l.starts_with("ready "), Duration::from_secs(60))?;
    round(&a)?;
    let id = d.checkpoint()?;
    a.kill9()?;
    b.kill9()?;
    // One restore brings both back; its output is theirs, its pid stands for either.
    let mut r = d.restore_args(&id, a.pid, &["--lazy"])?;
    running(&r, &d)?;
    ensure!(
        loading(&d, a.pid)? || loading(&d, b.pid)?,
        "one of them should still be loading\n{}",
        d.context()
    );
    for pid in [a.pid, b.pid] {
        send_signal(pid, libc::SIGUSR1)?;
    }
    let mut oks = 0;
    while oks < 2 {
        let l = r.expect_line(
            "both verdicts",
            |l| l.starts_with("verify ok") || l.contains("FAILED"),
            LINE_TIMEOUT,
        )?;
        ensure!(l.starts_with("verify ok"), "{l}\n{}", r.context());
        oks += 1;
    }
    wait_ok(&mut r, "the lazy restore of both")?;
    for pid in [a.pid, b.pid] {
        send_signal(pid, libc::SIGKILL)?;
        wait_proc_gone(pid, GONE_TIMEOUT)?;
    }
    r.disarm();
    Ok(())
}

#[test]
fn ckptd_killed_during_a_load_takes_the_half_loaded_program_with_it() -> Result<()> {
    require_root!();
    let mut d = Daemon::start_with(&bin_dir(), &["--test-lazy-delay-ms", "200"])?;
    let (pid, id) = checkpointed_and_killed(&d, &["64", "5", "sig"])?;
    let mut r = restore_lazy(&d, &id, pid)?;
    ensure!(loading(&d, pid)?, "pid {pid} should be loading\n{}", d.context());
    d.restart(libc::SIGKILL)?;
    // The guard kills it rather than let it read missing pages as zeros.
    wait_proc_gone(pid, GONE_TIMEOUT).with_context(|| format!("pid {pid} should be killed\n{}", d.context()))?;
    r.disarm();
    ensure!(
        d.log().contains("still loaded pages lazily"),
        "the guard should say why it killed pid {pid}\n{}",
        d.context()
    );
    let _ = r.wait_child_exit(Duration::from_secs(10));
    Ok(())
}

#[test]
fn a_ckptd_that_may_not_serve_missing_pages_refuses_lazy_in_one_line() -> Result<()> {
    require_root!();
    let open = std::fs::read_to_string("/proc/sys/vm/unprivileged_userfaultfd").unwrap_or_default();
    if open.trim() == "1" {
        note!("vm.unprivileged_userfaultfd is 1: any ckptd may restore lazily; nothing to check");
        return Ok(());
    }
    // An ordinary user's ckptd, with CAP_CHECKPOINT_RESTORE alone.
    let d = Daemon::start_as(RunAs::user("nobody", true)?, &[])?;
    let mut app = d.run_example("counter", &[])?;
    app.expect_tick(LINE_TIMEOUT)?;
    let pid = app.pid;
    let id = d.checkpoint()?;
    app.kill9_tree()?;
    let out = d.ckptctl(&["restore", "--lazy", &id]);
    let msg = expect_failure_one_line(&out, "a lazy restore by a ckptd that may not serve it")?;
    note!("refused: {msg}");
    ensure!(
        msg.contains("nothing was changed") && msg.contains("restore without --lazy"),
        "the refusal should say nothing changed and what to do: {msg}"
    );
    ensure!(!proc_alive(pid), "nothing may have been restored");
    // The same restore without --lazy works.
    let mut back = d.restore_ok(&id, pid)?;
    back.expect_tick(LINE_TIMEOUT)?;
    back.kill9()?;
    Ok(())
}

/// `example` (one that checks its own state on SIGUSR1, see `ckpt_tests::ask_state`)
/// checkpointed and restored lazily twice, the second time from a checkpoint of the lazily
/// restored program; asked while its pages load and once they are in.
fn survives_two_lazy_restores(example: &str, args: &[&str]) -> Result<()> {
    let d = Daemon::start_with(&bin_dir(), SLOW)?;
    let mut app = d.run_example(example, args)?;
    let pid = app.pid;
    app.expect_tick(LINE_TIMEOUT)?;
    ask_state(&app).with_context(|| format!("{example} before any checkpoint"))?;
    for round in 1..=2 {
        let cp = d
            .checkpoint_app(&app)
            .with_context(|| format!("{example}: checkpoint {round}"))?;
        app.kill9_tree()?;
        app = d.restore_args(&cp.id, pid, &["--lazy"])?;
        app.expect_tick(LINE_TIMEOUT)
            .with_context(|| format!("{example}: after lazy restore {round}"))?;
        ask_state(&app).with_context(|| format!("{example}: after lazy restore {round}\n{}", d.context()))?;
        wait_ok(&mut app, example)?;
        ask_state(&app).with_context(|| format!("{example}: once loaded, restore {round}"))?;
    }
    // With the children it has (they are not ours to reap).
    app.disarm();
    kill_tree(pid)
}

#[test]
fn a_process_tree_with_zombies_and_groups_comes_back_lazily_twice() -> Result<()> {
    require_root!();
    survives_two_lazy_restores("tree_state", &[])
}

/// Programs holding kernel state of many kinds: each one's own verdict after lazy restores.
#[test]
fn kinds_of_state_come_back_lazily() -> Result<()> {
    require_root!();
    for example in [
        "relatives",
        "signal_edges",
        "altstack_state",
        "posix_timers",
        "proc_attrs",
        "epoll_state",
        "memfd_state",
        "pipe_modes",
        "pidfd_state",
    ] {
        survives_two_lazy_restores(example, &[])?;
    }
    // Many attributes at once, locked memory among them (loaded before the program runs).
    let dir = tempfile::tempdir()?;
    survives_two_lazy_restores("sweep", &[dir.path().to_str().unwrap_or_default()])
}

/// Threads and an interpreter: eight threads passing a token, and Python's 1,000,000-entry
/// dict, carry on after a lazy restore (their tick lines end in `ok` only if their state is).
#[test]
fn threads_and_python_carry_on_after_a_lazy_restore() -> Result<()> {
    require_root!();
    for (example, first_tick) in [
        ("threads_condvar", LINE_TIMEOUT),
        ("dict_counter.py", Duration::from_secs(60)),
    ] {
        let d = Daemon::start_with(&bin_dir(), SLOW)?;
        let mut app = d.run_example(example, &[])?;
        let pid = app.pid;
        let t0 = app.expect_tick(first_tick)?;
        app.expect_consecutive_ticks(t0, 1, true, LINE_TIMEOUT)?;
        let cp = d.checkpoint_app(&app)?;
        app.kill9()?;
        let mut r = d.restore_args(&cp.id, pid, &["--lazy"])?;
        let (t, line) = r.expect_tick_line(LINE_TIMEOUT)?;
        cp.check_resumed(t, &r)?;
        ensure!(
            line.trim_end().ends_with(" ok"),
            "{example}: expected `ok` in {line:?}\n{}",
            r.context()
        );
        wait_ok(&mut r, example)?;
        r.expect_consecutive_ticks(t, 2, true, LINE_TIMEOUT)?;
        r.kill9()?;
    }
    Ok(())
}
