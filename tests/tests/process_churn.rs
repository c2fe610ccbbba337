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
/// binary a clean build makes. (Restored after the 3rd: see
/// `make_j2_killed_after_third_checkpoint_and_restored`.)
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

/// Acceptance 2 of issue 11: `make -j2` building 30 C files is checkpointed 3 times, goes on
/// building, and is killed (every process); restored from the 3rd checkpoint, it builds on and
/// is killed again; restored from the 3rd once more, it is checkpointed twice more (the 4th and
/// 5th) and completes with exit status 0 and the binary of a clean build (two clean builds are
/// compared first: the build is reproducible). Each restore sets aside the objects the killed
/// build had made (or begun) after the checkpoint, so that the restored make, which has not
/// built them yet, builds them again rather than take a half-written one as made.
#[test]
fn make_j2_killed_after_third_checkpoint_and_restored() -> Result<()> {
    require_root!();
    let clean = CProject::generate(30, 80)?;
    let took = clean.build_clean()?;
    note!("clean build: {took:?}");
    let want = std::fs::read(clean.binary())?;
    {
        let again = CProject::generate(30, 80)?;
        again.build_clean()?;
        ensure!(
            std::fs::read(again.binary())? == want,
            "two clean builds made different programs: the build is not reproducible"
        );
    }
    let project = CProject::generate(30, 80)?;
    let d = Daemon::start()?;
    let dir = project.dir().to_str().context("temp dir not UTF-8")?;
    let mut make = d.run(Path::new(MAKE), &["-j2", "-C", dir])?;
    let pid = make.pid;
    let taken = checkpoint_at_objects(&d, &project, &[2, 6, 10], || proc_alive(pid))?;
    let third = taken[2].id.clone();
    // The build goes on after the checkpoint before it is killed.
    build_on(&d, &project, 3, pid)?;
    make.kill9_tree()?;
    let mut r = restore_build(&d, &third, pid)?;
    build_on(&d, &project, 3, pid)?;
    kill_tree(pid)?;
    let st = r.wait_child_exit(Duration::from_secs(30))?;
    ensure!(!st.success(), "ckptctl should report the killed build");
    let mut r = restore_build(&d, &third, pid)?;
    let now = project.objects();
    checkpoint_at_objects(&d, &project, &[now + 2, now + 5], || proc_alive(pid))?;
    let st = r.wait_child_exit(Duration::from_secs(300))?;
    ensure!(
        st.success(),
        "the restored make failed: {}\n{}",
        fmt_status(&st),
        r.context()
    );
    let got = std::fs::read(project.binary()).context("the build made no program")?;
    ensure!(
        got == want,
        "the program built across the restores ({} bytes) differs from the clean build's ({} bytes)",
        got.len(),
        want.len()
    );
    Ok(())
}

/// Waits until the build of `project` has made `more` objects more than it has now.
fn build_on(d: &Daemon, project: &CProject, more: usize, pid: i32) -> Result<()> {
    let want = project.objects() + more;
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    while project.objects() < want {
        ensure!(
            proc_alive(pid) && std::time::Instant::now() < deadline,
            "the build was done or stuck before it made {want} objects (it has {})\n{}",
            project.objects(),
            d.context()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// `ckptctl restore ID --attach --json` of the build (ckptctl exits with make's status); what
/// it did to files is noted, and it must have set aside what the killed build made since.
fn restore_build(d: &Daemon, id: &str, pid: i32) -> Result<App> {
    wait_proc_gone(pid, GONE_TIMEOUT)?;
    let r = d.restore_args(id, pid, &["--attach", "--json"])?;
    let line = r.expect_line(
        "the restore's JSON",
        |l| l.starts_with('{') && !is_progress_event(l),
        LINE_TIMEOUT,
    )?;
    let v: serde_json::Value = serde_json::from_str(&line).with_context(|| format!("bad JSON: {line}"))?;
    let notes: Vec<&str> = v["files"]
        .as_array()
        .context("the restore's JSON has no files")?
        .iter()
        .filter_map(|n| n.as_str())
        .collect();
    note!("restore of {id}: {notes:#?}");
    ensure!(
        notes
            .iter()
            .any(|n| n.starts_with("set aside ") && n.contains(".o as ")),
        "the restore should set aside the objects made after the checkpoint: {notes:#?}"
    );
    Ok(r)
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
