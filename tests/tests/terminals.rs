//! Terminal multiplexers (issue 11): a tmux server with two panes (`top -b` and a shell loop)
//! and a `screen -D -m` session are checkpointed, killed with every process of theirs, and
//! restored, twice: each pane is live again on its own pseudo-terminal, the loop goes on from
//! where the checkpoint took it, and the multiplexer answers its clients.

use anyhow::{bail, ensure, Context, Result};
use ckpt_tests::*;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const TMUX: &str = "/usr/bin/tmux";
const SCREEN: &str = "/usr/bin/screen";
const LOOP: &str = r#"i=0; while true; do i=$((i+1)); echo "loop $i"; sleep 0.1; done"#;

/// The highest `loop N` in `text`.
fn last_loop(text: &str) -> Option<u64> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("loop ")?.parse().ok())
        .max()
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = run_with_timeout(cmd, Duration::from_secs(20))?;
    ensure!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Waits until `read()` shows a loop count above `above`; that count.
fn loop_goes_past(what: &str, above: u64, read: impl Fn() -> Result<String>) -> Result<u64> {
    let deadline = Instant::now() + LINE_TIMEOUT;
    loop {
        let seen = match read() {
            Ok(text) => match last_loop(&text).filter(|&n| n > above) {
                Some(n) => return Ok(n),
                None => text,
            },
            Err(e) => format!("(it cannot be read: {e:#})"),
        };
        if Instant::now() >= deadline {
            bail!("{what}: the loop should count past {above}; it shows:\n{seen}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

struct Tmux {
    sock: std::path::PathBuf,
}

impl Tmux {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(TMUX);
        c.arg("-S").arg(&self.sock).args(args);
        c
    }
    /// Pane `n`'s screen and the 200 lines above it.
    fn pane(&self, n: u32) -> Result<String> {
        output(&mut self.cmd(&["capture-pane", "-p", "-S", "-200", "-t", &format!("t.{n}")]))
    }
    fn server(&self) -> Result<i32> {
        let pid = output(&mut self.cmd(&["display-message", "-p", "#{pid}"]))?;
        pid.trim().parse().with_context(|| format!("tmux server pid {pid:?}"))
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        if let Ok(pid) = self.server() {
            let _ = kill_tree(pid);
        }
    }
}

#[test]
fn tmux_panes_come_back_live() -> Result<()> {
    require_root!();
    let d = Daemon::start()?;
    let t = Tmux {
        sock: d.dir().join("tmux.sock"),
    };
    let sock = t.sock.to_str().context("socket path")?;
    let mut client = d.run(
        Path::new(TMUX),
        &[
            "-S",
            sock,
            "new-session",
            "-d",
            "-s",
            "t",
            "-x",
            "100",
            "-y",
            "40",
            "top -b -d 0.3",
        ],
    )?;
    let st = client.wait_child_exit(LINE_TIMEOUT)?;
    ensure!(st.success(), "tmux new-session failed\n{}", client.context());
    output(&mut t.cmd(&["split-window", "-t", "t", LOOP]))?;
    let server = t.server()?;
    let mut seen = loop_goes_past("before any checkpoint", 5, || t.pane(1))?;
    for round in 1..=2 {
        let id = d.checkpoint().with_context(|| format!("checkpoint {round}"))?;
        let at = last_loop(&t.pane(1)?).unwrap_or(0);
        ensure!(at >= seen, "the loop went back before the checkpoint");
        kill_tree(server)?;
        // The tree is killed by the next round, or by `t` at the end.
        d.restore_ok(&id, server)
            .with_context(|| format!("restore {round}"))?
            .disarm();
        // The pane shows what the checkpoint held, then the loop counts on.
        seen = loop_goes_past(&format!("after restore {round}"), at, || t.pane(1))?;
        // top refreshes its pane: its screen changes.
        let a = t.pane(0)?;
        ensure!(
            a.contains("top - "),
            "pane 0 should show top after restore {round}:\n{a}"
        );
        let deadline = Instant::now() + LINE_TIMEOUT;
        while t.pane(0)? == a {
            ensure!(
                Instant::now() < deadline,
                "top's pane should change after restore {round}:\n{a}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        // The panes' shells are the server's children, each leading its session on its pane.
        let panes = output(&mut t.cmd(&["list-panes", "-t", "t", "-F", "#{pane_pid} #{pane_tty}"]))?;
        for l in panes.lines() {
            let (pid, tty) = l.split_once(' ').context("list-panes line")?;
            let pid: i32 = pid.parse()?;
            let (_, ppid) = proc_state(pid).with_context(|| format!("pane process {pid} is gone"))?;
            ensure!(
                ppid == server,
                "pane process {pid} should be the server's child, its parent is {ppid}"
            );
            // SAFETY: plain queries of another process's ids.
            let sid = unsafe { libc::getsid(pid) };
            ensure!(sid == pid, "pane process {pid} should lead its session, it is in {sid}");
            let own = std::fs::read_link(format!("/proc/{pid}/fd/0"))?;
            ensure!(
                own.to_str() == Some(tty),
                "pane process {pid} should have {tty} as stdin, it has {own:?}"
            );
        }
    }
    Ok(())
}

#[test]
fn screen_session_comes_back_live() -> Result<()> {
    require_root!();
    let d = Daemon::start()?;
    let name = format!("ckpt{}", std::process::id());
    let mut app = d.run(Path::new(SCREEN), &["-D", "-m", "-S", &name, "bash", "-c", LOOP])?;
    let copy = d.dir().join("hardcopy");
    let read = || -> Result<String> {
        let _ = std::fs::remove_file(&copy);
        output(Command::new(SCREEN).args(["-S", &name, "-X", "hardcopy"]).arg(&copy))?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while !copy.exists() {
            ensure!(Instant::now() < deadline, "screen wrote no hardcopy");
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(std::fs::read_to_string(&copy)?)
    };
    let pid = app.pid;
    let mut seen = loop_goes_past("before any checkpoint", 5, read)?;
    for round in 1..=2 {
        let id = d.checkpoint().with_context(|| format!("checkpoint {round}"))?;
        let at = last_loop(&read()?).unwrap_or(0);
        ensure!(at >= seen, "the loop went back before the checkpoint");
        app.kill9_tree()?;
        app = d.restore_ok(&id, pid).with_context(|| format!("restore {round}"))?;
        seen = loop_goes_past(&format!("after restore {round}"), at, read)?;
    }
    let _ = output(Command::new(SCREEN).args(["-S", &name, "-X", "quit"]));
    let _ = kill_tree(pid);
    Ok(())
}
