//! Pipes and Unix sockets on stdin/stdout/stderr (issue 11). `seq | awk` under one `bash -c`
//! (or joined by a socketpair under python), checkpointed mid-way, killed and restored: the
//! pipe between seq's stdout and awk's stdin is made again between them (with what it held),
//! so awk's sum is exact; only an end whose other end was outside the checkpoint (the
//! harness's pipe) becomes the stdio of `ckptctl restore`.

use anyhow::{bail, ensure, Context, Result};
use ckpt_tests::*;
use std::path::Path;
use std::time::{Duration, Instant};

/// Enough numbers for the pipeline to run several seconds (0.3 s per 3 million here, alone),
/// and few enough that every partial sum is exact in awk's doubles (below 2^53).
const N: u64 = 40_000_000;
const SUM: u64 = N * (N + 1) / 2;
/// The restored pipeline sums the rest of the numbers.
const SUM_TIMEOUT: Duration = Duration::from_secs(120);

/// The pipeline, its output to `redirect` (empty: the harness's pipe). `printf` because
/// mawk prints a large sum as `4.5e+12`.
fn script(redirect: &str) -> String {
    format!("seq 1 {N} | awk '{AWK}'{redirect}")
}

const AWK: &str = r#"{s += $1} END {printf "%.0f\n", s}"#;

/// The same with a socketpair between seq and awk, under python; awk's output to argv[1].
fn socket_script() -> String {
    format!(
        r#"import socket, subprocess, sys
a, b = socket.socketpair()
out = open(sys.argv[1], "w")
seq = subprocess.Popen(["seq", "1", "{N}"], stdout=a)
awk = subprocess.Popen(["awk", r'{AWK}'], stdin=b, stdout=out)
a.close(); b.close(); out.close()
seq.wait(); awk.wait()
"#
    )
}

struct Pipeline {
    /// The program ckpt-run started (bash or python), parent of seq and awk.
    bash: App,
    seq: i32,
    awk: i32,
}

fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Runs the pipeline under ckpt-run and waits until its three processes are registered and
/// have run together for a moment.
fn start(d: &Daemon, prog: &str, args: &[&str]) -> Result<Pipeline> {
    let bash = d.run(Path::new(prog), args)?;
    let deadline = Instant::now() + LINE_TIMEOUT;
    let (seq, awk) = loop {
        let pids = d.status_pids()?;
        let find = |name: &str| pids.iter().copied().find(|&p| p != bash.pid && comm(p) == name);
        if let (true, Some(s), Some(a)) = (pids.contains(&bash.pid), find("seq"), find("awk")) {
            break (s, a);
        }
        if Instant::now() >= deadline {
            bail!(
                "{prog}, seq and awk should all be registered (children of a ckpt-run'd program are); \
                 `ckptctl status` lists {pids:?}\n{}",
                d.context()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // Killed when the test ends, whatever happens.
    d.register_pid(seq);
    d.register_pid(awk);
    std::thread::sleep(Duration::from_millis(500));
    Ok(Pipeline { bash, seq, awk })
}

/// Checkpoints the pipeline and kills it: awk first (killing seq first would let awk see EOF
/// and print a partial sum), then seq, then bash.
fn checkpoint_and_kill(d: &Daemon, p: &mut Pipeline) -> Result<String> {
    let id = d.checkpoint()?;
    ensure!(
        proc_exists(p.seq) && proc_exists(p.awk),
        "the pipeline ended before checkpoint {id} was taken: make N bigger\n{}",
        d.context()
    );
    let show = d.ckptctl_ok(&["show", &id])?;
    for pid in [p.bash.pid, p.seq, p.awk] {
        ensure!(
            show.contains(&format!("pid {pid} ")),
            "checkpoint {id} should hold pid {pid} ({}):\n{show}",
            comm(pid)
        );
    }
    send_signal(p.awk, libc::SIGKILL)?;
    kill_pid(p.seq)?;
    wait_proc_gone(p.awk, GONE_TIMEOUT)?;
    p.bash.kill9()?;
    p.bash.disarm();
    Ok(id)
}

/// The fd lines of one process in `ckptctl show`.
fn fd_lines(show: &str, pid: i32) -> Vec<&str> {
    show.lines()
        .skip_while(|l| !l.starts_with("host ") || !l.contains(&format!("pid {pid} ")))
        .skip_while(|l| l.trim() != "fds:")
        .skip(1)
        .take_while(|l| l.starts_with("    "))
        .collect()
}

/// The line of fd `fd` of process `pid` in `ckptctl show`.
fn fd_line(show: &str, pid: i32, fd: i32) -> Result<&str> {
    fd_lines(show, pid)
        .into_iter()
        .find(|l| l.split_whitespace().next() == Some(&fd.to_string()))
        .with_context(|| format!("`ckptctl show` has no fd {fd} for pid {pid}:\n{show}"))
}

/// What awk printed into `out`, once it printed a line (or the timeout passed).
fn wait_sum(out: &Path) -> Result<String> {
    let deadline = Instant::now() + SUM_TIMEOUT;
    loop {
        let text = std::fs::read_to_string(out)?;
        if text.ends_with('\n') || Instant::now() >= deadline {
            return Ok(text);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

const RECONNECTED: &str = "reconnected to its other end";
const TO_CKPTCTL: &str = "stdio of `ckptctl restore`";

#[test]
fn pipe_between_checkpointed_processes_is_reconnected() -> Result<()> {
    require_root!();
    let d = Daemon::start()?;
    let out = d.dir().join("sum");
    let mut p = start(&d, "/bin/bash", &["-c", &script(&format!(" > {}", out.display()))])?;
    let id = checkpoint_and_kill(&d, &mut p)?;
    let at_kill = std::fs::read_to_string(&out)?;
    ensure!(
        at_kill.is_empty(),
        "awk printed before the checkpoint, the test proves nothing: {at_kill:?}"
    );

    let show = d.ckptctl_ok(&["show", &id])?;
    for (pid, fd) in [(p.seq, 1), (p.awk, 0)] {
        let l = fd_line(&show, pid, fd)?;
        ensure!(
            l.contains("pipe:") && l.contains(RECONNECTED),
            "fd {fd} of {} should be shown as a reconnected pipe: {l}",
            comm(pid)
        );
    }
    // bash's stdout and stderr are the harness's: they go to the restoring ckptctl.
    let l = fd_line(&show, p.bash.pid, 1)?;
    ensure!(
        l.contains(TO_CKPTCTL),
        "bash's stdout should go to `ckptctl restore`: {l}"
    );

    let r = d.restore_ok(&id, p.bash.pid)?;
    let got = wait_sum(&out)?;
    note!("restored awk printed {got:?}");
    ensure!(
        got == format!("{SUM}\n"),
        "the restored pipeline should print the exact sum {SUM}, printed {got:?}\n{}",
        d.context()
    );
    // seq's numbers went to awk, not to the restoring ckptctl's stdout.
    let h = r.history();
    ensure!(
        h.is_empty(),
        "`ckptctl restore` should print nothing on stdout (seq's output goes to awk), got {} lines: {:?}",
        h.len(),
        h.iter().take(5).collect::<Vec<_>>()
    );
    Ok(())
}

#[test]
fn stdio_pipe_to_outside_goes_to_ckptctl() -> Result<()> {
    require_root!();
    let d = Daemon::start()?;
    // awk's stdout is the harness's pipe (ckpt-run's stdout): outside the checkpoint.
    let mut p = start(&d, "/bin/bash", &["-c", &script("")])?;
    let id = checkpoint_and_kill(&d, &mut p)?;
    let before = p.bash.history();
    ensure!(
        before.is_empty(),
        "awk printed before the checkpoint, the test proves nothing: {before:?}"
    );

    let show = d.ckptctl_ok(&["show", &id])?;
    let l = fd_line(&show, p.awk, 0)?;
    ensure!(l.contains(RECONNECTED), "awk's stdin should be reconnected to seq: {l}");
    for pid in [p.awk, p.bash.pid] {
        let l = fd_line(&show, pid, 1)?;
        ensure!(
            l.contains("pipe:") && l.contains(TO_CKPTCTL),
            "stdout of {} (the harness's pipe) should go to `ckptctl restore`: {l}",
            comm(pid)
        );
    }

    let r = d.restore_ok(&id, p.bash.pid)?;
    let got = r.expect_line("awk's sum", |_| true, SUM_TIMEOUT)?;
    ensure!(
        got == SUM.to_string(),
        "the restored awk should print the exact sum {SUM} on `ckptctl restore`'s stdout, printed {got:?}\n{}",
        r.context()
    );
    Ok(())
}

#[test]
fn socketpair_between_checkpointed_processes_is_reconnected() -> Result<()> {
    require_root!();
    let d = Daemon::start()?;
    let out = d.dir().join("sum");
    let mut p = start(&d, PYTHON3, &["-c", &socket_script(), out.to_str().unwrap()])?;
    let id = checkpoint_and_kill(&d, &mut p)?;
    let at_kill = std::fs::read_to_string(&out)?;
    ensure!(
        at_kill.is_empty(),
        "awk printed before the checkpoint, the test proves nothing: {at_kill:?}"
    );
    let show = d.ckptctl_ok(&["show", &id])?;
    for (pid, fd) in [(p.seq, 1), (p.awk, 0)] {
        let l = fd_line(&show, pid, fd)?;
        ensure!(
            l.contains("unix") && l.contains(RECONNECTED),
            "fd {fd} of {} should be shown as a reconnected Unix socket: {l}",
            comm(pid)
        );
    }
    let r = d.restore_ok(&id, p.bash.pid)?;
    let got = wait_sum(&out)?;
    ensure!(
        got == format!("{SUM}\n"),
        "the restored pipeline should print the exact sum {SUM}, printed {got:?}\n{}",
        d.context()
    );
    let h = r.history();
    ensure!(
        h.is_empty(),
        "`ckptctl restore` should print nothing on stdout, got {:?}",
        h.iter().take(5).collect::<Vec<_>>()
    );
    Ok(())
}
