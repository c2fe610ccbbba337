//! Seccomp filters (issue 12): every thread comes back under exactly the filters it had, in
//! order, with their flags, inherited ones included, in a child process too, and filters every
//! thread shares stay shared (`examples/seccomp_state.c`); reading them (ptrace interrupts of parked threads) leaves the
//! program undisturbed; strict mode, a filter that may hand calls to a supervisor, and filters
//! a thread could not install again are refused, naming the thread, and the program runs on.

use anyhow::{ensure, Context, Result};
use ckpt_tests::*;

#[test]
fn filters_come_back_exactly_twice() -> Result<()> {
    require_root!();
    survives_two_restores("seccomp_state", &[])
}

/// Every thread under the same filters, synchronized (`SECCOMP_FILTER_FLAG_TSYNC`): they come
/// back as one chain all threads share, so that the program synchronizes a new filter to
/// every thread after each restore (the kernel refuses that unless the filters are the same
/// objects in every thread).
#[test]
fn filters_every_thread_shares_stay_shared_twice() -> Result<()> {
    require_root!();
    survives_two_restores("seccomp_state", &["shared"])
}

/// Reading the filters stops each filtered thread for a moment while it is parked: the
/// program goes on counting without a gap, its filters as they were, and its checkpoint
/// restores.
#[test]
fn reading_the_filters_leaves_the_program_undisturbed() -> Result<()> {
    require_root!();
    let d = Daemon::start()?;
    let app = d.run_example("seccomp_state", &[])?;
    app.expect_tick(LINE_TIMEOUT)?;
    let mut ids = Vec::new();
    for round in 1..=3 {
        let cp = d.checkpoint_app(&app).with_context(|| format!("checkpoint {round}"))?;
        ids.push(cp.id);
        let t = app.drain_last_tick().unwrap_or(0);
        app.expect_consecutive_ticks(t, 3, false, LINE_TIMEOUT)
            .with_context(|| format!("ticks after checkpoint {round}"))?;
        ask_state(&app).with_context(|| format!("after checkpoint {round}"))?;
    }
    let mut app = app;
    app.kill9_tree()?;
    let last = ids.last().context("three checkpoints")?;
    let mut app = d.restore_ok(last, app.pid)?;
    app.expect_tick(LINE_TIMEOUT)?;
    ask_state(&app).context("after restoring the last checkpoint")?;
    app.kill9_tree()?;
    Ok(())
}

/// Runs `seccomp_state MODE` and expects its checkpoint refused, naming the thread it printed
/// and saying `why`; the program must run on.
fn refused(mode: &str, why: &str) -> Result<()> {
    let d = Daemon::start()?;
    let mut app = d.run_example("seccomp_state", &[mode])?;
    let line = app.expect_line("the refused thread", |l| l.starts_with("refused thread "), LINE_TIMEOUT)?;
    let tid = line.trim_start_matches("refused thread ").trim().to_string();
    app.expect_tick(LINE_TIMEOUT)?;
    let out = d.ckptctl(&["checkpoint"]);
    let msg = expect_failure_one_line(&out, &format!("checkpoint of {mode}"))?;
    ensure!(
        msg.contains(why) && msg.contains(&format!("thread {tid} ")) && msg.contains(&format!("process {}", app.pid)),
        "the refusal should name process {}, thread {tid} and say {why:?}: {msg}",
        app.pid
    );
    let t = app.drain_last_tick().unwrap_or(0);
    app.expect_consecutive_ticks(t, 3, false, LINE_TIMEOUT)
        .context("the program must run on")?;
    ask_state(&app).context("after the refusal")?;
    app.kill9()?;
    Ok(())
}

/// Strict mode kills a thread for any call but read, write, exit and rt_sigreturn, parking
/// included: refused before anything is stopped.
#[test]
fn a_thread_in_strict_mode_is_refused_before_the_park() -> Result<()> {
    require_root!();
    refused("strict", "seccomp strict mode")
}

#[test]
fn a_filter_that_may_notify_a_supervisor_is_refused() -> Result<()> {
    require_root!();
    refused("notify", "SECCOMP_RET_USER_NOTIF")
}

/// A filter installed with root's CAP_SYS_ADMIN by a thread that then became an ordinary user
/// without no_new_privs: the thread could not install it again itself.
#[test]
fn filters_the_thread_could_not_install_again_are_refused() -> Result<()> {
    require_root!();
    refused("unprivileged", "neither no_new_privs nor CAP_SYS_ADMIN")
}
