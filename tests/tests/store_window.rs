//! Issue 4, the store window: what a program wrote just before its stop stays in place,
//! protected, and is stored while it runs; a write to a page not stored yet waits for it. If
//! the program discards such memory before ckptd has read it, that try is given up and the
//! checkpoint is taken again at once without the window (issue 9: a checkpoint does not fail
//! because a program hands memory back); the program carries on, and the next checkpoint goes
//! through the window again.

use anyhow::{bail, ensure, Context, Result};
use ckpt_tests::*;
use std::time::{Duration, Instant};

fn writes_of(l: &str) -> Option<u64> {
    l.starts_with("beat ").then(|| field_u64(l, "writes"))?
}

#[test]
fn discarding_memory_not_stored_yet_makes_the_checkpoint_try_again_without_the_window() -> Result<()> {
    require_root!();
    // ckptd waits 2 s after the release before it reads store windows: meanwhile the writer
    // thread waits on its first protected page while the main thread's beats go on.
    let d = Daemon::start_with(&bin_dir(), &["--test-window-delay-ms", "2000"])?;
    let mut app = d.run_example("window_drop", &["64"])?;
    let pid = app.pid;
    app.expect_line("ready", |l| l.starts_with("ready "), LINE_TIMEOUT)?;
    let first = d.checkpoint_json(&[])?;
    note!(
        "first checkpoint {}: window {} bytes, {} writes waited",
        first.id,
        first.window_bytes,
        first.window_faults
    );
    ensure!(
        first.window_bytes > 0,
        "the writer rewrites 64 MiB as fast as it can: its last writes should go through the store window\n{}",
        d.context()
    );

    app.drain();
    let bg = Background::start(d.ckptctl_cmd(&["checkpoint", "--json"]), CKPTCTL_TIMEOUT)?;
    // 300 ms of beats with the write count standing still: the writer waits in the window.
    let (mut last, mut still) = (None, 0);
    let deadline = Instant::now() + Duration::from_secs(60);
    while still < 30 {
        if Instant::now() > deadline || bg.is_finished() {
            bail!(
                "the writer never waited on the store window\n{}\n{}",
                app.context(),
                d.context()
            );
        }
        let l = app.expect_line("a beat", |l| writes_of(l).is_some(), LINE_TIMEOUT)?;
        let w = writes_of(&l);
        still = if w == last { still + 1 } else { 0 };
        last = w;
    }
    send_signal(pid, libc::SIGUSR1)?;
    app.expect_line("dropped", |l| l == "dropped", Duration::from_secs(30))
        .context("madvise(DONTNEED) should return once ckptd has seen it")?;
    let out = bg.finish()?;
    ensure!(
        out.status.success(),
        "a checkpoint whose unstored pages were discarded is taken again and succeeds\n{}\n{}",
        describe(&out),
        d.context()
    );
    let second = CkptStats::parse(&stdout_str(&out))?;
    note!("second checkpoint {}: window {} bytes", second.id, second.window_bytes);
    ensure!(
        second.window_bytes == 0,
        "the try that succeeded should have copied everything while parked: {second:?}"
    );
    ensure!(
        d.log().contains("checkpoint tried again") && d.log().contains("discarded"),
        "ckptd should log that the first try was given up because memory was discarded\n{}",
        d.context()
    );

    // The program carries on: its writer writes again.
    let stood = last.unwrap_or(0);
    app.expect_line(
        "a beat with more writes",
        |l| writes_of(l).is_some_and(|w| w > stood),
        Duration::from_secs(30),
    )
    .context("the writer should run again")?;
    ensure!(
        d.committed_ids() == vec![first.id.clone(), second.id.clone()],
        "both checkpoints are listed, the store has {:?}",
        d.committed_ids()
    );

    // The next one succeeds, through the window again.
    let next = d.checkpoint_json(&[])?;
    note!(
        "next checkpoint {}: window {} bytes, {} writes waited",
        next.id,
        next.window_bytes,
        next.window_faults
    );
    ensure!(next.window_bytes > 0, "the next checkpoint should use the store window");
    ensure!(
        d.committed_ids() == vec![first.id, second.id.clone(), next.id],
        "every checkpoint is listed"
    );
    // The checkpoint taken again restores.
    app.kill9()?;
    app.disarm();
    let r = d.restore_ok(&second.id, pid)?;
    r.expect_line("a beat after the restore", |l| writes_of(l).is_some(), LINE_TIMEOUT)?;
    Ok(())
}
