//! Processes that come and go (issue 11): a parent that keeps creating short-lived children is
//! checkpointed without failures, each child either in the checkpoint with its parent or not
//! in it; a live child that does not run the interposer refuses the checkpoint by name, and
//! the program runs on.

use anyhow::{bail, ensure, Context, Result};
use ckpt_tests::*;
use std::path::Path;
use std::time::Duration;

/// `make -j2` building 30 C files, checkpointed 5 times during the build (by its progress, not
/// the clock): every checkpoint holds make and its compilers, and the build completes with the
/// binary a clean build makes. (Acceptance 2 also restores the build after the 3rd: not yet
/// reliable, see README, Limits: what the killed build did to its files after the checkpoint,
/// an object begun or a rename done, is not undone.)
#[test]
fn make_j2_checkpointed_five_times() -> Result<()> {
    require_root!();
    let clean = CProject::generate(30, 80)?;
    let took = clean.build_clean()?;
    note!("clean build: {took:?}");
    let project = CProject::generate(30, 80)?;
    let d = Daemon::start()?;
    let dir = project.dir().to_str().context("temp dir not UTF-8")?;
    let mut make = d.run(Path::new(MAKE), &["-j2", "-C", dir])?;
    let pid = make.pid;
    let taken = checkpoint_at_objects(&d, &project, &[2, 6, 10, 14, 18], || proc_alive(pid))?;
    ensure!(
        taken.iter().any(|s| s.processes > 1),
        "no checkpoint caught make with a child\n{}",
        d.context()
    );
    let st = make.wait_child_exit(Duration::from_secs(300))?;
    ensure!(st.success(), "make failed: {}\n{}", fmt_status(&st), make.context());
    let want = std::fs::read(clean.binary())?;
    let got = std::fs::read(project.binary()).context("the build made no program")?;
    ensure!(
        got == want,
        "the program built under checkpoints ({} bytes) differs from the clean build's ({} bytes)",
        got.len(),
        want.len()
    );
    Ok(())
}

/// A shell loop forking `sleep 0.001` and `/bin/true` without pause, checkpointed 10 times.
#[test]
fn shell_loop_forking_checkpointed_ten_times() -> Result<()> {
    require_root!();
    let d = Daemon::start()?;
    // `sleep 0.01` lives long enough to be caught by a checkpoint now and then.
    let script = "i=0; while :; do sleep 0.001; /bin/true; i=$((i+1)); \
                  if [ $((i % 10)) = 0 ]; then sleep 0.01; fi; \
                  if [ $((i % 50)) = 0 ]; then echo tick $i; fi; done";
    let app = d.run(Path::new(BASH), &["-c", script])?;
    app.expect_tick(LINE_TIMEOUT)?;
    let pid = app.pid;
    let taken = checkpoint_while(&d, 10, Duration::from_millis(50), || proc_alive(pid))?;
    let most = taken.iter().map(|s| s.processes).max().unwrap_or(0);
    note!("up to {most} processes in one checkpoint");
    // The loop goes on.
    app.expect_tick(LINE_TIMEOUT)
        .context("the loop should go on after the checkpoints")?;
    Ok(())
}

/// A checkpointed bash whose child runs without the interposer: refused, naming the child, its
/// command, its parent and why; bash and its child run on.
#[test]
fn child_without_interposer_refuses_the_checkpoint() -> Result<()> {
    require_root!();
    let d = Daemon::start()?;
    let script = "env -u LD_PRELOAD sleep 100 & echo child $!; \
                  i=0; while :; do sleep 0.05; i=$((i+1)); echo tick $i; done";
    let app = d.run(Path::new(BASH), &["-c", script])?;
    let line = app.expect_line("the child's pid", |l| l.starts_with("child "), LINE_TIMEOUT)?;
    let child: i32 = field_u64(&line, "child").context("bad child line")? as i32;
    let r = (|| -> Result<()> {
        app.expect_tick(LINE_TIMEOUT)?;
        // `env` loads the interposer and registers before it execs sleep: wait until sleep runs.
        let deadline = std::time::Instant::now() + LINE_TIMEOUT;
        while std::fs::read_to_string(format!("/proc/{child}/comm"))?.trim() != "sleep" {
            if std::time::Instant::now() > deadline {
                bail!("the child {child} never became sleep");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let out = d.ckptctl(&["checkpoint"]);
        let msg = expect_failure_one_line(&out, "a checkpoint of bash with an uncontrolled child")?;
        for want in [
            format!("process {child} (sleep)"),
            format!("a child of process {} (bash)", app.pid),
            "no LD_PRELOAD".to_string(),
        ] {
            ensure!(msg.contains(&want), "the refusal should say {want:?}: {msg}");
        }
        ensure!(d.committed_ids().is_empty(), "a refused checkpoint was committed");
        ensure!(proc_alive(child), "the uncontrolled child should run on");
        let t = app.expect_tick(LINE_TIMEOUT).context("bash should run on")?;
        app.expect_consecutive_ticks(t, 3, false, LINE_TIMEOUT)?;
        Ok(())
    })();
    let _ = kill9_and_wait(child);
    r
}
