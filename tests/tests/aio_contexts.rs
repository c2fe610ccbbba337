//! Kernel AIO contexts (`io_setup`, issue 12): a context comes back with its id, its ring's
//! size, head and tail and its completed events not reaped yet, or the checkpoint is refused
//! naming the process and the context (a request in flight, a context ckpt did not see made).

use anyhow::{ensure, Context, Result};
use ckpt_tests::*;

/// Two contexts of different sizes with unreaped events, a free index between them and a
/// child without any: checked by the program itself after each of two restores.
#[test]
fn contexts_keep_ids_sizes_heads_tails_and_unreaped_events() -> Result<()> {
    require_root!();
    let dir = tempfile::Builder::new().prefix("ckpt-aio-").tempdir()?;
    let dir = dir.path().to_str().context("a temporary path that is not UTF-8")?;
    survives_two_restores("aio_state", &[dir])
}

/// With a thread reading through another context without a pause: parks catch it inside
/// io_submit (its result not counted yet) and io_getevents, and neither sees anything.
#[test]
fn a_thread_submitting_all_the_time_is_checkpointed_and_restored() -> Result<()> {
    require_root!();
    let dir = tempfile::Builder::new().prefix("ckpt-aio-").tempdir()?;
    let dir = dir.path().to_str().context("a temporary path that is not UTF-8")?;
    survives_two_restores("aio_state", &[dir, "busy"])
}

/// The same brought back by a lazy restore: the rings are made before the program runs, its
/// memory loaded after.
#[test]
fn contexts_come_back_in_a_lazy_restore() -> Result<()> {
    require_root!();
    let dir = tempfile::Builder::new().prefix("ckpt-aio-").tempdir()?;
    let d = Daemon::start()?;
    let mut app = d.run_example(
        "aio_state",
        &[dir.path().to_str().context("a temporary path that is not UTF-8")?],
    )?;
    let pid = app.pid;
    app.expect_tick(LINE_TIMEOUT)?;
    let cp = d.checkpoint_app(&app)?;
    app.kill9_tree()?;
    let show = d.ckptctl_ok(&["show", &cp.id])?;
    ensure!(
        show.lines()
            .any(|l| l.contains("AIO context, io_setup(4), ") && l.contains(" 3 completed not reaped")),
        "ckptctl show should describe context A:\n{show}"
    );
    let mut r = d.restore_args(&cp.id, pid, &["--lazy"])?;
    r.expect_tick(LINE_TIMEOUT).context("after the lazy restore")?;
    ask_state(&r).with_context(|| format!("after the lazy restore\n{}", d.context()))?;
    let st = r.wait_child_exit(std::time::Duration::from_secs(120))?;
    ensure!(
        st.success(),
        "the lazy restore: ckptctl {}\n{}",
        fmt_status(&st),
        r.context()
    );
    r.kill9_tree()?;
    Ok(())
}

/// Runs `refused_kinds MODE`, which prints its context's id, and expects the checkpoint
/// refused in one line naming the process (its child when `child`, whose pid it prints) and the
/// context and containing `words`; the program runs on.
fn refused(mode: &str, child: bool, words: &[&str]) -> Result<()> {
    let d = Daemon::start()?;
    let mut app = d.run_example("refused_kinds", &[mode])?;
    let line = app.expect_line("the context's id", |l| l.starts_with("aio context "), LINE_TIMEOUT)?;
    let ctx = line.trim_start_matches("aio context ").trim().to_string();
    let pid = if child {
        let line = app.expect_line("the child's pid", |l| l.starts_with("child "), LINE_TIMEOUT)?;
        line.trim_start_matches("child ").trim().parse()?
    } else {
        app.pid
    };
    app.expect_tick(LINE_TIMEOUT)?;
    let out = d.ckptctl(&["checkpoint"]);
    let msg = expect_failure_one_line(&out, &format!("checkpoint of refused_kinds {mode}"))
        .map_err(|e| e.context(d.context()))?;
    note!("ckptctl said: {msg}");
    ensure!(
        msg.contains(&format!("process {pid}:")) && msg.contains(&format!("AIO context {ctx} ")),
        "the refusal should name process {pid} and AIO context {ctx}: {msg}"
    );
    for w in words {
        ensure!(msg.contains(w), "the refusal should say {w:?}: {msg}");
    }
    let t = app.drain_last_tick().unwrap_or(0);
    app.expect_consecutive_ticks(t, 3, false, LINE_TIMEOUT)
        .context("the program must run on")?;
    app.kill9_tree()?;
    Ok(())
}

/// A poll of a pipe nobody writes never completes: after the short wait, refused.
#[test]
fn a_context_with_a_request_in_flight_is_refused_by_name() -> Result<()> {
    require_root!();
    refused("aio", false, &["1 request in flight"])
}

/// Made by the program's own system call instruction: ckpt cannot count its requests.
#[test]
fn a_context_made_unseen_is_refused_by_name() -> Result<()> {
    require_root!();
    refused("aio-unseen", false, &["not made through libaio"])
}

/// A child forked after io_setup maps its parent's ring (the kernel copies the mapping) but
/// has no context: ckpt cannot map that ring again.
#[test]
fn a_ring_a_child_inherited_is_refused_by_name() -> Result<()> {
    require_root!();
    refused("aio-child", true, &["not one of its own", "inherited across fork"])
}
