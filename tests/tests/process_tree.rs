//! Process trees (issue 11): a restored tree has the same pids, parents, process groups and
//! sessions, and the children a parent had not reaped come back as zombies with their status,
//! so `wait`, `getppid` and `SIGCHLD` behave as before; a shell pipeline comes back whole and
//! bash ends with the right exit status.

use anyhow::{bail, ensure, Context, Result};
use ckpt_tests::*;
use std::path::Path;
use std::time::{Duration, Instant};

#[test]
fn tree_with_groups_and_zombies_survives_two_restores() -> Result<()> {
    require_root!();
    survives_two_restores("tree_state", &[])
}

/// Numbers enough for the pipeline to run several seconds.
const N: u64 = 30_000_000;

/// awk prints a running sum every 100 000 numbers, `sort -n` orders the lines (all of them
/// must arrive before it prints anything), `tail -3` keeps the last three; bash then records
/// every stage's status and ends with its own.
fn pipeline(out: &Path) -> String {
    format!(
        r#"seq 1 {N} | awk '{{ s += $1 % 1000 }} NR % 100000 == 0 {{ printf "%d %.0f\n", NR, s }}' | sort -n | tail -3 > {out}; echo "stages ${{PIPESTATUS[*]}}" >> {out}; exit 7"#,
        out = out.display()
    )
}

fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// The pids of `names` among bash's children, once all are registered.
fn stages(d: &Daemon, bash: i32, names: &[&str]) -> Result<Vec<i32>> {
    let deadline = Instant::now() + LINE_TIMEOUT;
    loop {
        let registered = d.status_pids()?;
        let kids = descendants(bash);
        let found: Vec<Option<i32>> = names
            .iter()
            .map(|n| kids.iter().copied().find(|&p| comm(p) == *n && registered.contains(&p)))
            .collect();
        if registered.contains(&bash) && found.iter().all(Option::is_some) {
            return Ok(found.into_iter().flatten().collect());
        }
        if Instant::now() >= deadline {
            bail!(
                "bash's pipeline {names:?} should be registered; `ckptctl status` lists {registered:?}\n{}",
                d.context()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn shell_pipeline_comes_back_with_its_exit_status() -> Result<()> {
    require_root!();
    let d = Daemon::start()?;
    // What an uninterrupted run prints.
    let clean = d.dir().join("clean");
    let st = run_with_timeout(
        std::process::Command::new("/bin/bash").args(["-c", &pipeline(&clean)]),
        Duration::from_secs(120),
    )?;
    ensure!(
        st.status.code() == Some(7),
        "the plain pipeline should exit 7: {:?}",
        st.status
    );
    let want = std::fs::read_to_string(&clean)?;
    ensure!(want.lines().count() == 4, "the plain pipeline printed {want:?}");

    let out = d.dir().join("out");
    let mut bash = d.run(Path::new("/bin/bash"), &["-c", &pipeline(&out)])?;
    let pids = stages(&d, bash.pid, &["seq", "awk", "sort", "tail"])?;
    std::thread::sleep(Duration::from_millis(500));
    let id = d.checkpoint()?;
    ensure!(
        pids.iter().all(|&p| proc_alive(p)),
        "the pipeline ended before checkpoint {id} was taken: make N bigger"
    );
    // Every process of the pipeline, from the end of the pipe: a stage killed before the one
    // it feeds would let that one see the end of its input and print.
    bash.kill9_tree()?;
    ensure!(
        std::fs::read_to_string(&out).unwrap_or_default().is_empty(),
        "the pipeline printed before the checkpoint, the test proves nothing"
    );

    let mut r = d.restore_args(&id, bash.pid, &["--attach"])?;
    // The tree is back as it was: each stage is bash's child, in bash's group and session.
    let deadline = Instant::now() + LINE_TIMEOUT;
    while !pids
        .iter()
        .all(|&p| proc_state(p).is_some_and(|(_, pp)| pp == bash.pid))
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    for &p in &pids {
        let (_, ppid) = proc_state(p).with_context(|| format!("restored {} ({p}) is not there", comm(p)))?;
        ensure!(
            ppid == bash.pid,
            "restored {} ({p}) should be bash's child, its parent is {ppid}",
            comm(p)
        );
        // SAFETY: plain queries of another process's ids.
        let (pg, sid) = unsafe { (libc::getpgid(p), libc::getsid(p)) };
        // SAFETY: as above.
        let (bpg, bsid) = unsafe { (libc::getpgid(bash.pid), libc::getsid(bash.pid)) };
        ensure!(
            pg == bpg && sid == bsid,
            "restored {} ({p}) should be in bash's group and session ({bpg}, {bsid}), it is in ({pg}, {sid})",
            comm(p)
        );
    }
    let st = r.wait_child_exit(Duration::from_secs(180))?;
    let got = std::fs::read_to_string(&out)?;
    ensure!(
        got == want,
        "the restored pipeline should print what an uninterrupted one does:\n{want}got:\n{got}\n{}",
        d.context()
    );
    ensure!(
        st.code() == Some(7),
        "ckptctl restore --attach should end with bash's exit code 7, it ended {}\n{}",
        fmt_status(&st),
        r.context()
    );
    Ok(())
}

/// A `multiprocessing.Pool(4)` with a `Manager` (a server process reached through a Unix
/// socket), a shared `Array` and a `Value` under a POSIX-semaphore lock, in Python's heap of
/// deleted `/dev/shm` files: checkpointed mid-way, killed, restored, it ends with the result
/// of an uninterrupted run and its Pool shuts down cleanly.
#[test]
fn multiprocessing_pool_with_manager_finishes_right() -> Result<()> {
    require_root!();
    let d = Daemon::start()?;
    let (prog, args) = example_cmdline("mp_pool.py", &["3000"])?;
    let clean = run_with_timeout(std::process::Command::new(&prog).args(&args), Duration::from_secs(180))?;
    let clean_out = String::from_utf8_lossy(&clean.stdout).into_owned();
    let want = clean_out
        .lines()
        .find(|l| l.starts_with("result "))
        .with_context(|| format!("the plain run printed no result: {clean_out}"))?
        .to_string();

    let mut app = d.run_example("mp_pool.py", &["3000"])?;
    app.expect_line("progress", |l| l == "done 500", Duration::from_secs(60))?;
    let id = d.checkpoint()?;
    let pid = app.pid;
    let tree = app.kill9_tree()?;
    ensure!(
        tree.len() >= 5,
        "the Pool's 4 workers and the Manager should have been running: {tree:?}"
    );
    let mut r = d.restore_args(&id, pid, &["--attach"])?;
    let got = r.expect_line("the result", |l| l.starts_with("result "), Duration::from_secs(180))?;
    ensure!(
        got == want,
        "the restored Pool should end with {want:?}, it printed {got:?}\n{}",
        r.context()
    );
    ensure!(
        r.history().iter().any(|l| l == "pool closed"),
        "the restored Pool should shut down\n{}",
        r.context()
    );
    let st = r.wait_child_exit(Duration::from_secs(60))?;
    ensure!(
        st.code() == Some(0),
        "python should end with code 0, ckptctl ended {}\n{}",
        fmt_status(&st),
        r.context()
    );
    Ok(())
}

/// A parent reading its child's memory with `process_vm_readv`, checking with `kill(…, 0)` and
/// `waitpid(WNOHANG)` that the child is its own, the child checking `getppid`: restored twice.
#[test]
fn parent_reading_its_childs_memory_survives_two_restores() -> Result<()> {
    require_root!();
    survives_two_restores("relatives", &[])
}

/// A shell whose loop forks `sleep` every 0.1 s comes back twice and goes on counting, one by
/// one: the restored shell still owns its running child and waits for it (before trees were
/// restored, bash and dash exited at once and zsh and tcsh waited forever). With a `USR1` trap
/// (`state_trap`), the shell also answers a signal after each restore.
fn shell_loop_survives_two_restores(shell: &str, args: &[&str], state_trap: bool) -> Result<()> {
    let d = Daemon::start()?;
    let app = d.run(Path::new(shell), args)?;
    let first = app.expect_tick(LINE_TIMEOUT)?;
    app.expect_consecutive_ticks(first, 2, false, LINE_TIMEOUT)?;
    if state_trap {
        ask_state(&app).context("before any checkpoint")?;
    }
    let pid = app.pid;
    let mut app = app;
    for round in 1..=2 {
        let cp = d
            .checkpoint_app(&app)
            .with_context(|| format!("{shell}: checkpoint {round}"))?;
        app.kill9_tree()?;
        app = d
            .restore_ok(&cp.id, pid)
            .with_context(|| format!("{shell}: restore {round}"))?;
        let t = app
            .expect_tick(LINE_TIMEOUT)
            .with_context(|| format!("{shell}: after restore {round}"))?;
        app.expect_consecutive_ticks(t, 3, false, LINE_TIMEOUT)
            .with_context(|| format!("{shell}: after restore {round}"))?;
        if state_trap {
            ask_state(&app).with_context(|| format!("{shell}: after restore {round}\n{}", d.context()))?;
        }
    }
    kill_tree(app.pid)?;
    Ok(())
}

const POSIX_LOOP: &str = "trap 'echo state ok' USR1; i=0; while :; do i=$((i+1)); echo tick $i; sleep 0.1; done";

#[test]
fn dash_loop_survives_two_restores() -> Result<()> {
    require_root!();
    shell_loop_survives_two_restores("/bin/dash", &["-c", POSIX_LOOP], true)
}

#[test]
fn zsh_loop_survives_two_restores() -> Result<()> {
    require_root!();
    shell_loop_survives_two_restores("/usr/bin/zsh", &["-f", "-c", POSIX_LOOP], true)
}

/// tcsh traps no signal but SIGINT; its loop is read from a script file, as csh loops are.
#[test]
fn tcsh_loop_survives_two_restores() -> Result<()> {
    require_root!();
    let dir = tempfile::tempdir()?;
    let script = dir.path().join("loop.csh");
    std::fs::write(
        &script,
        "@ i = 0\nwhile (1)\n  @ i++\n  echo tick $i\n  sleep 0.1\nend\n",
    )?;
    shell_loop_survives_two_restores("/usr/bin/tcsh", &["-f", script.to_str().unwrap()], false)
}
