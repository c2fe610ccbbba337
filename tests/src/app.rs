//! [`App`]: a program under test whose output is read line by line, either
//! from its stdout pipe or by following the file its stdout was sent to.

use anyhow::{anyhow, bail, Context, Result};
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::follow::{file_follower, pipe_reader, FollowSpec, History};
use crate::procs::untrack;
use crate::*;

static APP_SEQ: AtomicUsize = AtomicUsize::new(0);

/// A program under test; `pid` is the application's pid.  Its output comes
/// from the stdout pipe of the spawned process (`ckpt-run ...` or
/// `ckptctl restore ...`), or from a file it writes to (see
/// [`App::spawn_to_file`], [`App::follow_file`]).
pub struct App {
    /// pid of the application (== ckpt-run's pid, or the restored pid).
    pub pid: i32,
    label: String,
    child: Option<Child>,
    child_status: Option<ExitStatus>,
    /// true when `pid` is our own child (ckpt-run).
    pid_is_child: bool,
    rx: Mutex<Receiver<Line>>,
    history: History,
    stderr_path: PathBuf,
    /// ckptd logs shown by [`App::context`].
    logs: Vec<PathBuf>,
    /// Stops a file follower on drop.
    stop: Arc<AtomicBool>,
    /// The file followed, if any.
    out_file: Option<PathBuf>,
    /// When set, dropping this App leaves the process alone.
    disarmed: bool,
}

impl App {
    /// `cmd` with stdout piped to a reader thread and stderr to a file in
    /// the daemon's directory; `pid` is the application's pid when it is
    /// not the spawned process's (restore).
    pub(crate) fn spawn(mut cmd: Command, label: &str, pid: Option<i32>, d: &Daemon) -> Result<App> {
        let n = APP_SEQ.fetch_add(1, Ordering::SeqCst);
        let stderr_path = d.dir().join(format!("app-{n}.stderr"));
        let errf = File::create(&stderr_path)?;
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(errf);
        let mut child = spawn_tracked(&mut cmd)?;
        let (tx, rx) = mpsc::channel();
        let history: History = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().unwrap();
        let h2 = history.clone();
        thread::Builder::new()
            .name(format!("app-{n}-stdout"))
            .spawn(move || pipe_reader(stdout, tx, h2))?;
        let app_pid = pid.unwrap_or(child.id() as i32);
        d.register_pid(app_pid);
        Ok(App {
            pid: app_pid,
            label: label.to_string(),
            pid_is_child: pid.is_none(),
            child: Some(child),
            child_status: None,
            rx: Mutex::new(rx),
            history,
            stderr_path,
            logs: vec![d.log_path().to_path_buf()],
            stop: Arc::new(AtomicBool::new(false)),
            out_file: None,
            disarmed: false,
        })
    }

    /// Spawns `cmd` (which must exec the program, so that the program has
    /// the spawned pid) with stdout sent to the regular file `out` (created
    /// or truncated) and stderr to `err`; the output is read by following
    /// `out`.  `logs` are shown in error messages.
    pub fn spawn_to_file(mut cmd: Command, label: &str, out: &Path, err: &Path, logs: Vec<PathBuf>) -> Result<App> {
        let outf = File::create(out).with_context(|| format!("create {}", out.display()))?;
        let errf = File::create(err).with_context(|| format!("create {}", err.display()))?;
        cmd.stdin(Stdio::null()).stdout(outf).stderr(errf);
        let child = spawn_tracked(&mut cmd)?;
        let pid = child.id() as i32;
        let mut app = Self::follow_file(pid, label, out, 0, err, logs)?;
        app.child = Some(child);
        app.pid_is_child = true;
        Ok(app)
    }

    /// Follows the output file `out` of program `pid` (not our child, e.g.
    /// a program restored by a ckptd) from byte `from`.  To follow a
    /// restored program, create it once `ckptctl restore` has returned, with
    /// `from` = the file's size at the checkpoint (the restore cut the file
    /// back to it; see [`crate::Cluster::restore`]).  Should the file shrink
    /// below the read offset later, reading goes on from its new end.
    pub fn follow_file(pid: i32, label: &str, out: &Path, from: u64, err: &Path, logs: Vec<PathBuf>) -> Result<App> {
        let n = APP_SEQ.fetch_add(1, Ordering::SeqCst);
        let (tx, rx) = mpsc::channel();
        let history: History = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let spec = FollowSpec {
            path: out.to_path_buf(),
            from,
            pid,
            stop: stop.clone(),
        };
        let h2 = history.clone();
        thread::Builder::new()
            .name(format!("app-{n}-follow"))
            .spawn(move || file_follower(spec, tx, h2))?;
        Ok(App {
            pid,
            label: label.to_string(),
            child: None,
            child_status: None,
            pid_is_child: false,
            rx: Mutex::new(rx),
            history,
            stderr_path: err.to_path_buf(),
            logs,
            stop,
            out_file: Some(out.to_path_buf()),
            disarmed: false,
        })
    }

    /// The file whose lines this App reads, when it follows one.
    pub fn out_file(&self) -> Option<&Path> {
        self.out_file.as_deref()
    }

    /// The file holding the spawned process's stderr.
    pub fn stderr_path(&self) -> &Path {
        &self.stderr_path
    }

    /// The ckptd logs shown by [`App::context`].
    pub fn logs(&self) -> &[PathBuf] {
        &self.logs
    }

    /// After this, dropping the App neither kills nor waits for the process
    /// with its pid (e.g. because it was killed and a restore brought the
    /// pid back under another App).
    pub fn disarm(&mut self) {
        self.disarmed = true;
    }

    /// pid of the spawned process (ckpt-run, or `ckptctl restore`), while not yet reaped.
    pub fn child_pid(&self) -> Option<i32> {
        match (&self.child, self.child_status) {
            (Some(c), None) => Some(c.id() as i32),
            _ => None,
        }
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    /// Waits for the next line matching `pred`; lines before it are consumed
    /// (they stay in [`App::history`]).  None on timeout or EOF.
    pub fn wait_line(&self, pred: impl FnMut(&str) -> bool, timeout: Duration) -> Option<String> {
        self.wait_line_at(pred, timeout).map(|l| l.text)
    }

    /// Like [`App::wait_line`] but also returns when the line was read.
    pub fn wait_line_at(&self, mut pred: impl FnMut(&str) -> bool, timeout: Duration) -> Option<Line> {
        let rx = self.rx.lock().unwrap();
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(l) => {
                    if pred(&l.text) {
                        return Some(l);
                    }
                }
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => return None,
            }
        }
    }

    /// Like [`App::wait_line`] but fails with context (what was expected,
    /// last output lines, app stderr, ckptd log) on timeout/EOF, and fails
    /// at once on a MISMATCH / INVARIANT / WRITE_FAILED line.
    pub fn expect_line(&self, what: &str, mut pred: impl FnMut(&str) -> bool, timeout: Duration) -> Result<String> {
        self.expect_line_at(what, &mut pred, timeout).map(|l| l.text)
    }

    pub fn expect_line_at(&self, what: &str, mut pred: impl FnMut(&str) -> bool, timeout: Duration) -> Result<Line> {
        let mut bad: Option<String> = None;
        let r = self.wait_line_at(
            |l| {
                if FAILURE_MARKERS.iter().any(|m| l.starts_with(m)) {
                    bad = Some(l.to_string());
                    return true;
                }
                pred(l)
            },
            timeout,
        );
        if let Some(b) = bad {
            bail!(
                "{}: program reported a failure while waiting for {what}: {b}\n{}",
                self.label,
                self.context()
            );
        }
        match r {
            Some(l) => Ok(l),
            None => {
                let why = if self.output_closed() {
                    "its stdout was closed (EOF)".to_string()
                } else {
                    format!("nothing matched within {timeout:?}")
                };
                bail!(
                    "{} (pid {}): expected {what}, but {why}; process {}\n{}",
                    self.label,
                    self.pid,
                    if proc_alive(self.pid) {
                        "is alive"
                    } else {
                        "is NOT alive"
                    },
                    self.context()
                )
            }
        }
    }

    /// Next `tick N` line -> N (fails like [`App::expect_line`]).
    pub fn expect_tick(&self, timeout: Duration) -> Result<u64> {
        Ok(self.expect_tick_line(timeout)?.0)
    }

    /// Next `tick N` line -> (N, line).
    pub fn expect_tick_line(&self, timeout: Duration) -> Result<(u64, String)> {
        let l = self.expect_line("a `tick N` line", |l| tick_num(l).is_some(), timeout)?;
        Ok((tick_num(&l).unwrap(), l))
    }

    /// Expects `n` more tick lines numbered `prev+1, prev+2, ...`; with
    /// `require_ok` each must end with ` ok`.  Returns the lines.
    pub fn expect_consecutive_ticks(
        &self,
        prev: u64,
        n: usize,
        require_ok: bool,
        timeout_each: Duration,
    ) -> Result<Vec<String>> {
        let mut lines = Vec::new();
        for want in prev + 1..=prev + n as u64 {
            let (t, l) = self.expect_tick_line(timeout_each)?;
            if t != want {
                bail!(
                    "{}: expected tick {want} (ticks should be consecutive), got line {l:?}\n{}",
                    self.label,
                    self.context()
                );
            }
            if require_ok && !l.trim_end().ends_with(" ok") {
                bail!(
                    "{}: expected the tick line to end with `ok`, got {l:?}\n{}",
                    self.label,
                    self.context()
                );
            }
            lines.push(l);
        }
        Ok(lines)
    }

    /// Consumes every line read so far; returns them.
    pub fn drain(&self) -> Vec<String> {
        let rx = self.rx.lock().unwrap();
        let mut v = Vec::new();
        loop {
            match rx.try_recv() {
                Ok(l) => v.push(l.text),
                Err(TryRecvError::Empty) | Err(TryRecvError::Disconnected) => return v,
            }
        }
    }

    /// Drains, then returns the last tick number seen so far (if any).
    pub fn drain_last_tick(&self) -> Option<u64> {
        self.drain();
        self.history
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find_map(|l| tick_num(&l.text))
    }

    /// All lines read so far.
    pub fn history(&self) -> Vec<String> {
        self.history.lock().unwrap().iter().map(|l| l.text.clone()).collect()
    }

    /// All lines read so far, with the time each was read.
    pub fn history_lines(&self) -> Vec<Line> {
        self.history.lock().unwrap().clone()
    }

    /// Last `n` lines read.
    pub fn tail(&self, n: usize) -> String {
        let h = self.history.lock().unwrap();
        h[h.len().saturating_sub(n)..]
            .iter()
            .map(|l| l.text.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// stderr of the spawned process (and of the restored app, which
    /// inherits it).
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&fs::read(&self.stderr_path).unwrap_or_default()).to_string()
    }

    /// Output tail + stderr + ckptd log, for error messages.
    pub fn context(&self) -> String {
        format!(
            "--- last stdout lines of {} ---\n{}\n--- its stderr ({}) ---\n{}{}",
            self.label,
            self.tail(15),
            self.stderr_path.display(),
            file_tail(&self.stderr_path, 20),
            self.logs_context()
        )
    }

    fn logs_context(&self) -> String {
        let n = if self.logs.len() > 1 { 25 } else { 40 };
        let mut s = String::new();
        for l in &self.logs {
            s.push_str(&format!(
                "\n--- ckptd log {} (last {n} lines) ---\n{}",
                l.display(),
                file_tail(l, n)
            ));
        }
        s
    }

    fn output_closed(&self) -> bool {
        // The reader thread drops the sender at EOF.
        let rx = self.rx.lock().unwrap();
        matches!(rx.try_recv(), Err(TryRecvError::Disconnected))
    }

    /// Waits (with timeout) for the spawned process (ckpt-run or ckptctl
    /// restore) to exit and reaps it; caches the status.
    pub fn wait_child_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        if let Some(st) = self.child_status {
            return Ok(st);
        }
        let child = self.child.as_mut().ok_or_else(|| anyhow!("no child"))?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = child.try_wait()? {
                untrack(child.id() as i32);
                self.child_status = Some(st);
                return Ok(st);
            }
            if Instant::now() >= deadline {
                bail!(
                    "{}: expected the process (pid {}) to exit within {timeout:?}, it did not\n{}",
                    self.label,
                    child.id(),
                    self.context()
                );
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Exit status of the spawned process if it has exited (reaps it).
    pub fn try_child_status(&mut self) -> Option<ExitStatus> {
        if self.child_status.is_none() {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    untrack(c.id() as i32);
                    self.child_status = Some(st);
                }
            }
        }
        self.child_status
    }

    /// True if the application process exists and is not a zombie.
    pub fn is_alive(&self) -> bool {
        proc_alive(self.pid)
    }

    /// Sends a signal to the application.
    pub fn signal(&self, sig: i32) -> Result<()> {
        send_signal(self.pid, sig)
    }

    /// `kill -9` the application and wait until /proc/<pid> is gone (reaping
    /// it ourselves when it is our child).
    pub fn kill9(&mut self) -> Result<()> {
        send_signal(self.pid, libc::SIGKILL)?;
        if self.pid_is_child {
            if self.child_status.is_none() {
                let child = self.child.as_mut().unwrap();
                let (st, timed_out) = wait_child_timeout(child, GONE_TIMEOUT)?;
                if timed_out {
                    bail!("{}: pid {} did not die after SIGKILL", self.label, self.pid);
                }
                self.child_status = Some(st);
            }
            wait_proc_gone(self.pid, GONE_TIMEOUT)
        } else {
            wait_proc_gone(self.pid, GONE_TIMEOUT).with_context(|| format!("{}: after kill -9", self.label))
        }
    }

    /// Kills the program and every process below it, and waits until all are gone; the
    /// handle is disarmed (a restored process may take the pid). Every one is sent SIGKILL
    /// before any is waited for, the last-born first (a pipeline's reader dies before its
    /// writer could let it see the end of its input), so that no parent outlives a child as
    /// its unreaping parent. The pids that were below it.
    pub fn kill9_tree(&mut self) -> Result<Vec<i32>> {
        let below = crate::descendants(self.pid);
        for &p in below.iter().rev() {
            send_signal(p, libc::SIGKILL)?;
        }
        self.kill9()?;
        self.disarm();
        for &p in &below {
            wait_proc_gone(p, GONE_TIMEOUT)?;
        }
        Ok(below)
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if self.disarmed {
            if let Some(c) = self.child.as_mut() {
                if self.child_status.is_none() {
                    let _ = wait_child_timeout(c, Duration::from_secs(10));
                }
            }
            return;
        }
        if proc_exists(self.pid) && (!self.pid_is_child || self.child_status.is_none()) {
            let _ = self.kill9();
        }
        if self.child_status.is_none() {
            if let Some(c) = self.child.as_mut() {
                let _ = c.kill();
                let _ = wait_child_timeout(c, Duration::from_secs(10));
            }
        }
    }
}
