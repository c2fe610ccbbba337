//! [`Daemon`]: a private single-host `ckptd` per test, and `ckptctl`
//! against it.

use anyhow::{bail, Context, Result};
use std::fs::{self, File};
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::*;

/// A private `ckptd` on a fresh temporary directory:
/// `<tmp>/ckptd.sock`, `<tmp>/store`, log in `<tmp>/ckptd.log`.
/// Dropping it kills every app pid it handed out, SIGTERMs ckptd (SIGKILL
/// after 10 s), reaps it and sweeps orphans.
pub struct Daemon {
    dir: tempfile::TempDir,
    socket: PathBuf,
    store: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    pid: i32,
    bin_dir: PathBuf,
    app_pids: Arc<Mutex<Vec<i32>>>,
    /// Extra ckptd arguments, for [`Daemon::restart`].
    extra: Vec<String>,
    /// The user ckptd and its programs run as, when not the test's.
    run_as: Option<RunAs>,
    /// Started like a job of an interactive shell (see [`Daemon::start_job`]).
    job: bool,
}

impl Daemon {
    /// Starts ckptd from [`bin_dir`] and waits until its socket accepts.
    pub fn start() -> Result<Daemon> {
        Self::start_in(&bin_dir())
    }

    /// Like [`Daemon::start`] with an explicit binary directory.
    pub fn start_in(bin_dir: &Path) -> Result<Daemon> {
        Self::start_with(bin_dir, &[])
    }

    /// Like [`Daemon::start_in`], with extra ckptd arguments (`--keep 3`, `--compress`…).
    pub fn start_with(bin_dir: &Path, extra: &[&str]) -> Result<Daemon> {
        Self::start_full(bin_dir, extra, None)
    }

    /// A ckptd run as `user` (its folder, store and socket that user's), with extra ckptd
    /// arguments; the programs [`Daemon::run`] starts run as that user too.
    pub fn start_as(user: RunAs, extra: &[&str]) -> Result<Daemon> {
        Self::start_full(&bin_dir(), extra, Some(user))
    }

    /// Like [`Daemon::start_with`], but ckptd leads a process group of its own, as a job of an
    /// interactive shell (`ckptd &`) does: it cannot leave the test's session then.
    pub fn start_job(bin_dir: &Path, extra: &[&str]) -> Result<Daemon> {
        Self::start_full_as(bin_dir, extra, None, true)
    }

    fn start_full(bin_dir: &Path, extra: &[&str], run_as: Option<RunAs>) -> Result<Daemon> {
        Self::start_full_as(bin_dir, extra, run_as, false)
    }

    fn start_full_as(bin_dir: &Path, extra: &[&str], run_as: Option<RunAs>, job: bool) -> Result<Daemon> {
        init();
        let ckptd = bin_dir.join("ckptd");
        for b in ["ckptd", "ckptctl", "ckpt-run"] {
            let p = bin_dir.join(b);
            if !p.is_file() {
                bail!(
                    "binary {} not found (build the workspace first: cargo build --workspace, \
                     or set CKPT_BIN_DIR)",
                    p.display()
                );
            }
        }
        let dir = tempfile::Builder::new().prefix("ckpt-test-").tempdir()?;
        let socket = dir.path().join("ckptd.sock");
        let store = dir.path().join("store");
        fs::create_dir_all(&store)?;
        // Private whatever the umask: ckptd refuses a store other users can write.
        fs::set_permissions(&store, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
        let log = dir.path().join("ckptd.log");
        File::create(&log)?;
        if let Some(u) = &run_as {
            u.own(dir.path())?;
            u.own(&store)?;
        }
        let mut d = Daemon {
            dir,
            socket,
            store,
            log,
            child: None,
            pid: 0,
            bin_dir: bin_dir.to_path_buf(),
            app_pids: Arc::new(Mutex::new(Vec::new())),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            run_as,
            job,
        };
        d.launch(&ckptd)?;
        Ok(d)
    }

    /// Kills ckptd with `sig` (SIGKILL: a crash; SIGTERM: a clean stop), waits for it, and
    /// starts a new one on the same socket and store (its log goes on in the same file). The
    /// programs it had go on running.
    pub fn restart(&mut self, sig: i32) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            send_signal(child.id() as i32, sig)?;
            let (_, timed_out) = wait_child_timeout(&mut child, Duration::from_secs(10))?;
            if timed_out {
                bail!("ckptd did not exit within 10s of signal {sig}\n{}", self.context());
            }
            untrack(self.pid);
        }
        let ckptd = self.bin_dir.join("ckptd");
        self.launch(&ckptd)
    }

    /// Starts ckptd (log appended) and waits until its socket accepts.
    fn launch(&mut self, ckptd: &Path) -> Result<()> {
        let logf = fs::OpenOptions::new().append(true).create(true).open(&self.log)?;
        let mut cmd = match &self.run_as {
            Some(u) => u.ckptd_command(ckptd),
            None => Command::new(ckptd),
        };
        // ckptd leaves the test's session (its own autogroup), so a ^C of the test no longer
        // reaches it: it goes with the thread that started it instead (the test's, which drops
        // the Daemon anyway).
        // SAFETY: prctl with integer arguments, async-signal-safe.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong, 0, 0, 0);
                Ok(())
            });
        }
        if self.job {
            std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        }
        let child = spawn_tracked(
            cmd.arg("--socket")
                .arg(&self.socket)
                .arg("--store")
                .arg(&self.store)
                .args(&self.extra)
                .env("NO_COLOR", "1")
                .stdin(Stdio::null())
                .stdout(logf.try_clone()?)
                .stderr(logf),
        )?;
        self.pid = child.id() as i32;
        self.child = Some(child);
        let pid = self.pid;
        let d = self;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if UnixStream::connect(&d.socket).is_ok() {
                return Ok(());
            }
            if let Some(st) = d.child.as_mut().unwrap().try_wait()? {
                untrack(pid);
                d.child = None;
                bail!(
                    "ckptd exited before its socket {} became connectable: {}\n{}",
                    d.socket.display(),
                    fmt_status(&st),
                    d.context()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "ckptd socket {} not connectable after 30s\n{}",
                    d.socket.display(),
                    d.context()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }
    pub fn store(&self) -> &Path {
        &self.store
    }
    /// The test's temporary directory (put test files here).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
    /// pid of ckptd.
    pub fn pid(&self) -> i32 {
        self.pid
    }
    pub fn log_path(&self) -> &Path {
        &self.log
    }
    /// Whole ckptd log (stderr + stdout).
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&fs::read(&self.log).unwrap_or_default()).to_string()
    }
    /// "ckptd log (last lines)" block for error messages.
    pub fn context(&self) -> String {
        format!(
            "--- ckptd log {} (last 40 lines) ---\n{}",
            self.log.display(),
            file_tail(&self.log, 40)
        )
    }

    /// `ckptctl --socket <sock> ARGS...` (not started).
    pub fn ckptctl_cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(self.bin_dir.join("ckptctl"));
        c.arg("--socket").arg(&self.socket).args(args);
        c
    }

    /// Runs `ckptctl --socket <sock> ARGS...` to completion (stdout/stderr in
    /// files, so restored processes inheriting them cannot block us;
    /// [`CKPTCTL_TIMEOUT`]).
    pub fn ckptctl(&self, args: &[&str]) -> Output {
        self.ckptctl_timeout(args, CKPTCTL_TIMEOUT)
    }

    pub fn ckptctl_timeout(&self, args: &[&str], timeout: Duration) -> Output {
        match run_with_timeout(&mut self.ckptctl_cmd(args), timeout) {
            Ok(o) => o,
            Err(e) => Output {
                status: ExitStatus::from_raw(127 << 8),
                stdout: Vec::new(),
                stderr: format!("[harness: could not run ckptctl: {e:#}]").into_bytes(),
            },
        }
    }

    /// Runs ckptctl and requires success; returns trimmed stdout.
    pub fn ckptctl_ok(&self, args: &[&str]) -> Result<String> {
        let out = self.ckptctl(args);
        if !out.status.success() {
            bail!(
                "ckptctl {} failed\n{}\n{}",
                args.join(" "),
                describe(&out),
                self.context()
            );
        }
        Ok(stdout_str(&out))
    }

    /// `ckptctl checkpoint`; returns the new id (checked to be one token).
    pub fn checkpoint(&self) -> Result<String> {
        let id = self.ckptctl_ok(&["checkpoint"])?;
        if id.is_empty() || id.split_whitespace().count() != 1 {
            bail!(
                "ckptctl checkpoint: expected the new id alone on stdout, got {id:?}\n{}",
                self.context()
            );
        }
        Ok(id)
    }

    /// Checkpoints while `app` runs: records the last tick seen before the
    /// command, runs `ckptctl checkpoint`, then waits for the next tick.
    pub fn checkpoint_app(&self, app: &App) -> Result<CkptPoint> {
        let last_before = app.drain_last_tick().unwrap_or(0);
        let t0 = Instant::now();
        let id = self
            .checkpoint()
            .with_context(|| format!("checkpointing {} (pid {})", app.label(), app.pid))?;
        let took = t0.elapsed();
        let first_after = app
            .expect_tick(LINE_TIMEOUT)
            .context("the program should keep running after the checkpoint")?;
        Ok(CkptPoint {
            id,
            last_before,
            first_after,
            took,
        })
    }

    /// pids listed by `ckptctl status --json`.
    pub fn status_pids(&self) -> Result<Vec<i32>> {
        let mut pids: Vec<i32> = parse_status(&self.ckptctl_ok(&["status", "--json"])?)?
            .into_iter()
            .map(|(_, p)| p)
            .collect();
        pids.sort();
        Ok(pids)
    }

    /// Records a pid this daemon's test handed out (killed on drop).
    pub fn register_pid(&self, pid: i32) {
        self.app_pids.lock().unwrap().push(pid);
    }

    /// Starts `ckpt-run --socket <sock> -- PROG ARGS...`.
    /// As the daemon's user when it has one ([`Daemon::start_as`]); the program's stderr
    /// file is then that user's, so that its restore may open it again.
    pub fn run(&self, prog: &Path, args: &[&str]) -> Result<App> {
        let ckpt_run = self.bin_dir.join("ckpt-run");
        let mut c = match &self.run_as {
            Some(u) => u.command(&ckpt_run),
            None => Command::new(ckpt_run),
        };
        c.arg("--socket").arg(&self.socket).arg("--").arg(prog).args(args);
        let label = format!("ckpt-run {} {}", prog.display(), args.join(" "))
            .trim_end()
            .to_string();
        let app = App::spawn(c, &label, None, self)?;
        if let Some(u) = &self.run_as {
            u.own(app.stderr_path())?;
        }
        Ok(app)
    }

    /// The user ckptd runs as, when not the test's.
    pub fn run_as(&self) -> Option<&RunAs> {
        self.run_as.as_ref()
    }

    /// Starts an example (see [`example`]) under ckpt-run.
    pub fn run_example(&self, name: &str, args: &[&str]) -> Result<App> {
        let (prog, argv) = example_cmdline(name, args)?;
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        self.run(&prog, &argv)
    }

    /// Starts `ckptctl restore ID` with stdout piped into the returned App
    /// (whose `pid` is `pid`, the restored program).  Does not wait for
    /// ckptctl; see [`Daemon::restore_ok`].
    pub fn restore(&self, id: &str, pid: i32) -> Result<App> {
        self.restore_args(id, pid, &[])
    }

    /// [`Daemon::restore`] with more `ckptctl restore` arguments.
    pub fn restore_args(&self, id: &str, pid: i32, extra: &[&str]) -> Result<App> {
        let mut args = vec!["restore", id];
        args.extend(extra);
        let c = self.ckptctl_cmd(&args);
        App::spawn(c, &format!("ckptctl {} (pid {pid})", args.join(" ")), Some(pid), self)
    }

    /// [`Daemon::restore`], then waits (120 s) for ckptctl to exit 0.
    pub fn restore_ok(&self, id: &str, pid: i32) -> Result<App> {
        let mut app = self.restore(id, pid)?;
        let st = app.wait_child_exit(Duration::from_secs(120))?;
        if !st.success() {
            bail!("ckptctl restore {id} failed: {}\n{}", fmt_status(&st), app.context());
        }
        Ok(app)
    }

    /// `<store>/<id>`.
    pub fn ckpt_dir(&self, id: &str) -> PathBuf {
        self.store.join(id)
    }

    /// Finds `<store>/<id>/<host>/<pid>/<name>`.
    pub fn image_file(&self, id: &str, pid: i32, name: &str) -> Result<PathBuf> {
        let base = self.ckpt_dir(id);
        let mut found = Vec::new();
        for e in fs::read_dir(&base)
            .with_context(|| format!("read {}", base.display()))?
            .flatten()
        {
            let p = e.path().join(pid.to_string()).join(name);
            if p.is_file() {
                found.push(p);
            }
        }
        match found.len() {
            1 => Ok(found.pop().unwrap()),
            0 => bail!(
                "no {}/*/{pid}/{name} in the store; files: {:?}",
                base.display(),
                walk_dir(&base).unwrap_or_default()
            ),
            _ => bail!("several {name} for pid {pid}: {found:?}"),
        }
    }

    /// Hash of every checkpoint directory in the store (top-level files of
    /// the store, e.g. daemon state, are not included).
    pub fn store_hash(&self) -> Result<String> {
        let mut s = String::new();
        let mut dirs: Vec<PathBuf> = fs::read_dir(&self.store)?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect();
        dirs.sort();
        for d in dirs {
            s.push_str(&format!(
                "{}={};",
                d.file_name().unwrap().to_string_lossy(),
                hash_dir(&d)?
            ));
        }
        Ok(s)
    }

    /// Names of the store's subdirectories that have a MANIFEST.
    pub fn committed_ids(&self) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(&self.store)
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.path().join("MANIFEST").is_file())
                    .map(|e| e.file_name().to_string_lossy().to_string())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Current children of ckptd.
    pub fn children(&self) -> Vec<i32> {
        children_of(self.pid)
    }

    /// Whether ckptd is still running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// SIGTERM ckptd and wait (10 s, then SIGKILL); returns its status.
    pub fn stop(&mut self) -> Result<Option<ExitStatus>> {
        let Some(mut child) = self.child.take() else {
            return Ok(None);
        };
        send_signal(child.id() as i32, libc::SIGTERM)?;
        let (st, timed_out) = wait_child_timeout(&mut child, Duration::from_secs(10))?;
        if timed_out {
            eprintln!("[harness] ckptd did not exit within 10s of SIGTERM; killed it");
        }
        Ok(Some(st))
    }
}

/// Result of [`Daemon::checkpoint_app`].
#[derive(Clone, Debug)]
pub struct CkptPoint {
    /// checkpoint id printed by ckptctl
    pub id: String,
    /// last tick read before `ckptctl checkpoint` started (0 if none)
    pub last_before: u64,
    /// first tick read after `ckptctl checkpoint` returned
    pub first_after: u64,
    /// wall time of `ckptctl checkpoint`
    pub took: Duration,
}

impl CkptPoint {
    /// Checks that the first tick printed by a restore of this checkpoint
    /// carries on from it: `last_before <= first < first_after + 2`.
    pub fn check_resumed(&self, first: u64, app: &App) -> Result<()> {
        if first < self.last_before || first >= self.first_after + 2 {
            bail!(
                "first tick after restoring checkpoint {} is {first}; expected it to carry on \
                 from the checkpoint: >= {} (last tick before the checkpoint) and < {} \
                 (first tick after it + 2)\n{}",
                self.id,
                self.last_before,
                self.first_after + 2,
                app.context()
            );
        }
        Ok(())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let pids = self.app_pids.lock().unwrap().clone();
        for pid in pids {
            if proc_exists(pid) {
                let _ = send_signal(pid, libc::SIGKILL);
                let _ = wait_proc_gone(pid, Duration::from_secs(5));
            }
        }
        let _ = self.stop();
        reap_orphans();
        if std::env::var_os("CKPT_KEEP_TMP").is_some() {
            let d = std::mem::replace(
                &mut self.dir,
                tempfile::Builder::new().prefix("ckpt-empty-").tempdir().unwrap(),
            );
            eprintln!("[harness] kept {}", d.keep().display());
        }
    }
}
