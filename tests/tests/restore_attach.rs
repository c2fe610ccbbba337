//! `ckptctl restore --attach` (issue 11): ckptctl stays until the restored job has exited,
//! passes on the signals it gets (and job control), and exits with the job's status; with a
//! terminal on stdin, attaching is the default and the terminal's ^C and resizes reach the job.

use anyhow::{bail, ensure, Context, Result};
use ckpt_tests::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

const EXIT_TIMEOUT: Duration = Duration::from_secs(30);

/// `ckptctl restore ID --attach` of `attach_job`; waits until the job ticks again and checks
/// that ckptctl stays. Returns it and its pid.
fn restore_attached(d: &Daemon, id: &str, pid: i32) -> Result<(App, i32)> {
    wait_proc_gone(pid, GONE_TIMEOUT)?;
    let mut r = d.restore_args(id, pid, &["--attach"])?;
    r.expect_tick(LINE_TIMEOUT).context("the restored job should tick")?;
    let ctl = r.child_pid().context("ckptctl should be running")?;
    ensure!(
        r.try_child_status().is_none(),
        "ckptctl restore --attach should stay while the job runs; it exited\n{}",
        r.context()
    );
    Ok((r, ctl))
}

fn state(pid: i32) -> char {
    proc_state(pid).map(|(s, _)| s).unwrap_or('?')
}

fn wait_state(pid: i32, want: impl Fn(char) -> bool, what: &str) -> Result<()> {
    let deadline = Instant::now() + LINE_TIMEOUT;
    while !want(state(pid)) {
        if Instant::now() >= deadline {
            bail!("pid {pid} should be {what}; its state is {}", state(pid));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

fn expect_exit(r: &mut App, code: Option<i32>, signal: Option<i32>, why: &str) -> Result<ExitStatus> {
    let st = r.wait_child_exit(EXIT_TIMEOUT)?;
    ensure!(
        st.code() == code && st.signal() == signal,
        "{why}: ckptctl should end with exit code {code:?} / signal {signal:?}, it ended with {}\n{}",
        fmt_status(&st),
        r.context()
    );
    Ok(st)
}

#[test]
fn attached_restore_passes_signals_and_exit_status() -> Result<()> {
    require_root!();
    let mut d = Daemon::start()?;
    let mut app = d.run_example("attach_job", &[])?;
    let pid = app.pid;
    app.expect_tick(LINE_TIMEOUT)?;
    let ck = d.checkpoint_app(&app)?;
    app.kill9()?;
    app.disarm();

    // SIGTSTP stops the job and ckptctl; SIGCONT runs both again; SIGTERM reaches the job's
    // handler, whose exit code 7 is ckptctl's.
    let (mut r, ctl) = restore_attached(&d, &ck.id, pid)?;
    send_signal(ctl, libc::SIGTSTP)?;
    wait_state(ctl, |s| s == 'T', "stopped (SIGTSTP)")?;
    wait_state(pid, |s| s == 'T', "stopped with ckptctl")?;
    r.drain();
    std::thread::sleep(Duration::from_millis(500));
    let ticks = r.drain();
    ensure!(ticks.is_empty(), "the stopped job printed {ticks:?}");
    send_signal(ctl, libc::SIGCONT)?;
    r.expect_tick(LINE_TIMEOUT)
        .context("the job should run again after SIGCONT")?;
    ensure!(state(ctl) != 'T', "ckptctl should run again after SIGCONT");
    send_signal(ctl, libc::SIGTERM)?;
    expect_exit(&mut r, Some(7), None, "the job exits 7 on SIGTERM")?;
    ensure!(!r.is_alive(), "the job should have exited with ckptctl");

    // SIGINT: the job's handler says so and exits 0.
    let (mut r, ctl) = restore_attached(&d, &ck.id, pid)?;
    send_signal(ctl, libc::SIGINT)?;
    r.expect_line("the job's SIGINT handler", |l| l == "got SIGINT", LINE_TIMEOUT)?;
    expect_exit(&mut r, Some(0), None, "the job exits 0 on SIGINT")?;

    // SIGHUP kills the job (no handler): 128 + 1, as a shell says.
    let (mut r, ctl) = restore_attached(&d, &ck.id, pid)?;
    send_signal(ctl, libc::SIGHUP)?;
    expect_exit(&mut r, Some(129), None, "the job is killed by SIGHUP")?;
    let err = r.stderr();
    ensure!(
        err.contains("killed by signal 1"),
        "ckptctl should say the job was killed by signal 1; stderr:\n{err}"
    );

    // ckptctl killed: the job runs on, detached.
    let (mut r, ctl) = restore_attached(&d, &ck.id, pid)?;
    send_signal(ctl, libc::SIGKILL)?;
    expect_exit(&mut r, None, Some(libc::SIGKILL), "ckptctl killed")?;
    let t = r.expect_tick(LINE_TIMEOUT)?;
    r.expect_consecutive_ticks(t, 3, false, LINE_TIMEOUT)
        .context("the job should run on once ckptctl is gone")?;
    send_signal(pid, libc::SIGKILL)?;

    // ckptd goes away: ckptctl says so and exits 2; the job runs on.
    let (mut r, _) = restore_attached(&d, &ck.id, pid)?;
    d.stop()?;
    expect_exit(&mut r, Some(2), None, "ckptd stopped")?;
    let err = r.stderr();
    ensure!(
        err.lines().any(|l| l.contains("ckptd went away")),
        "ckptctl should say ckptd went away; stderr:\n{err}"
    );
    let t = r.expect_tick(LINE_TIMEOUT)?;
    r.expect_consecutive_ticks(t, 2, false, LINE_TIMEOUT)?;
    Ok(())
}

/// A pseudo-terminal: the master, and the slave for the command's stdio.
fn openpty() -> Result<(OwnedFd, OwnedFd)> {
    let (mut master, mut slave) = (-1, -1);
    // SAFETY: valid out-pointers; name, termios and window size are optional.
    let r = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    ensure!(r == 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: openpty just gave us both descriptors.
    Ok(unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) })
}

/// Everything read from the terminal's master side, and how far the test has looked.
struct Screen {
    text: Arc<Mutex<String>>,
    seen: usize,
}

impl Screen {
    fn new(master: std::fs::File) -> Screen {
        let text = Arc::new(Mutex::new(String::new()));
        let t = text.clone();
        std::thread::spawn(move || {
            let mut m = master;
            let mut buf = [0u8; 4096];
            // EIO once no one holds the slave side any more.
            while let Ok(n @ 1..) = m.read(&mut buf) {
                t.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Screen { text, seen: 0 }
    }

    /// Waits until `want` appears after what was seen so far.
    fn expect(&mut self, want: &str) -> Result<()> {
        let deadline = Instant::now() + LINE_TIMEOUT;
        loop {
            let text = self.text.lock().unwrap().clone();
            if let Some(at) = text[self.seen..].find(want) {
                self.seen += at + want.len();
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("the terminal should show {want:?} after:\n{}", &text[..self.seen]);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn count(&self, want: &str) -> usize {
        self.text.lock().unwrap().matches(want).count()
    }
}

#[test]
fn terminal_restore_attaches_by_default() -> Result<()> {
    require_root!();
    let d = Daemon::start()?;
    // Started with a pipe on stdin (kept open, never written): it waits in readline.
    let (prog, argv) = example_cmdline("attach_repl", &[])?;
    let mut c = Command::new(bin_dir().join("ckpt-run"));
    c.arg("--socket").arg(d.socket()).arg("--").arg(&prog).args(&argv);
    c.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::null());
    let mut child = spawn_tracked(&mut c)?;
    let pid = child.id() as i32;
    d.register_pid(pid);
    let _stdin = child.stdin.take();
    let (tx, rx) = mpsc::channel();
    let out = child.stdout.take().context("stdout")?;
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let first = rx.recv_timeout(LINE_TIMEOUT).context("the example should say ready")?;
    ensure!(first == "ready", "the example said {first:?}");
    let deadline = Instant::now() + LINE_TIMEOUT;
    while !d.status_pids()?.contains(&pid) {
        ensure!(Instant::now() < deadline, "pid {pid} never registered\n{}", d.context());
        std::thread::sleep(Duration::from_millis(20));
    }
    let id = d.checkpoint()?;
    send_signal(pid, libc::SIGKILL)?;
    wait_child_timeout(&mut child, GONE_TIMEOUT)?;

    // `ckptctl restore ID`, no flag, with the terminal as stdin/stdout/stderr and as its
    // controlling terminal (its own session, in the foreground, as a shell would run it).
    let (master, slave) = openpty()?;
    let mut c = d.ckptctl_cmd(&["restore", &id]);
    c.stdin(Stdio::from(slave.try_clone()?))
        .stdout(Stdio::from(slave.try_clone()?))
        .stderr(Stdio::from(slave));
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        c.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut ctl = spawn_tracked(&mut c)?;
    drop(c); // our copies of the slave side
    let ctl_pid = ctl.id() as i32;
    let master = std::fs::File::from(master);
    let mut writer = master.try_clone()?;
    let mut screen = Screen::new(master);

    let result = (|| -> Result<()> {
        writer.write_all(b"hello there\n")?;
        screen.expect("HELLO THERE")?;
        ensure!(
            ctl.try_wait()?.is_none(),
            "with a terminal on stdin, ckptctl restore should stay attached"
        );
        // A resize: the kernel signals the terminal's foreground group (ckptctl's), which
        // passes SIGWINCH on; the job reads the new size from the terminal they share.
        let ws = libc::winsize {
            ws_row: 33,
            ws_col: 111,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: a valid winsize for TIOCSWINSZ on our own master fd.
        let r = unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&writer), libc::TIOCSWINSZ, &ws) };
        ensure!(r == 0, "TIOCSWINSZ: {}", std::io::Error::last_os_error());
        screen.expect("winch 111x33")?;
        // ^C: the job is not in the terminal's session, so only ckptctl gets the SIGINT.
        writer.write_all(b"\x03")?;
        screen.expect("got SIGINT")?;
        ensure!(ctl.try_wait()?.is_none(), "ckptctl should stay after passing on ^C");
        writer.write_all(b"again\n")?;
        screen.expect("AGAIN")?;
        ensure!(screen.count("got SIGINT") == 1, "^C should reach the job once");
        writer.write_all(b"exit 5\n")?;
        let (st, timed_out) = wait_child_timeout(&mut ctl, EXIT_TIMEOUT)?;
        ensure!(!timed_out, "ckptctl should exit once the job has");
        ensure!(
            st.code() == Some(5),
            "ckptctl should exit with the job's code 5, got {}",
            fmt_status(&st)
        );
        Ok(())
    })();
    if result.is_err() {
        let _ = send_signal(ctl_pid, libc::SIGKILL);
        let _ = wait_child_timeout(&mut ctl, GONE_TIMEOUT);
        let text = screen.text.lock().unwrap().clone();
        return result.with_context(|| format!("terminal:\n{text}\n{}", d.context()));
    }
    Ok(())
}
