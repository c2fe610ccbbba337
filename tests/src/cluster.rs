//! [`Cluster`]: several hosts (network namespaces, see [`Net`]), one `ckptd`
//! per host sharing one store: host 1 is the manager, the others join it.
//! Programs run on a host under `ckpt-run` with stdout and stderr sent to
//! files (a restored program keeps writing to them), followed by an
//! [`App`].  `ckptctl` runs from the test's namespace against any host's
//! Unix socket.

use anyhow::{anyhow, bail, Context, Result};
use std::fs::{self, File, OpenOptions};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use crate::*;

/// TCP port of the manager on host 1.
pub const MANAGER_PORT: u16 = 7000;
/// How long a node may take to join the manager (it retries every second).
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(20);
/// What a joined node logs once the manager accepted it.
pub const JOINED_MARK: &str = "joined the manager";

/// One host of a [`Cluster`] and its `ckptd`.
pub struct Host {
    /// 1-based index.
    pub index: usize,
    /// Host name given to ckptd (`h<i>`).
    pub name: String,
    /// Its network namespace.
    pub ns: String,
    /// Its address.
    pub ip: String,
    /// ckptd's Unix socket.
    pub socket: PathBuf,
    /// ckptd's log (stdout + stderr; appended to across restarts).
    pub log: PathBuf,
    child: Option<Child>,
    pid: i32,
}

impl Host {
    /// pid of its ckptd (0 if never started).
    pub fn ckptd_pid(&self) -> i32 {
        self.pid
    }

    /// Whole ckptd log.
    pub fn log_text(&self) -> String {
        strip_ansi(&String::from_utf8_lossy(&fs::read(&self.log).unwrap_or_default()))
    }
}

/// A multi-host ckpt installation for one test.  Dropping it kills every
/// program it handed out, stops every ckptd and removes the namespaces.
pub struct Cluster {
    hosts: Vec<Host>,
    app_pids: Mutex<Vec<i32>>,
    store: PathBuf,
    secret: PathBuf,
    pub(crate) bin_dir: PathBuf,
    net: Option<Net>,
    dir: Option<tempfile::TempDir>,
}

impl Cluster {
    /// Creates the hosts (see [`Net::create`]; `key` must be unique among
    /// the tests that may run at the same time), the shared store and the
    /// cluster secret; starts no daemon.
    pub fn create(key: u8, n: usize) -> Result<Cluster> {
        init();
        let bin_dir = bin_dir();
        for b in ["ckptd", "ckptctl", "ckpt-run"] {
            bin(b)?;
        }
        let net = Net::create(key, n)?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("ckpt-cluster{key}-"))
            .tempdir()?;
        let store = dir.path().join("store");
        fs::create_dir_all(&store)?;
        let secret = dir.path().join("secret");
        fs::write(
            &secret,
            format!("ckpt-test-cluster-secret-{}-{key}\n", std::process::id()),
        )?;
        // ckptd refuses a secret other users can read.
        fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        let hosts = (1..=n)
            .map(|i| Host {
                index: i,
                name: format!("h{i}"),
                ns: net.ns(i),
                ip: net.ip(i),
                socket: dir.path().join(format!("h{i}.sock")),
                log: dir.path().join(format!("h{i}.ckptd.log")),
                child: None,
                pid: 0,
            })
            .collect();
        Ok(Cluster {
            hosts,
            app_pids: Mutex::new(Vec::new()),
            store,
            secret,
            bin_dir,
            net: Some(net),
            dir: Some(dir),
        })
    }

    /// [`Cluster::create`], then the manager on host 1 and a node on every
    /// other host, waiting until each node has joined.
    pub fn start(key: u8, n: usize) -> Result<Cluster> {
        let mut c = Self::create(key, n)?;
        c.start_manager()?;
        for i in 2..=n {
            c.start_node(i, None)?;
        }
        for i in 2..=n {
            c.wait_joined(i, JOIN_TIMEOUT)?;
        }
        Ok(c)
    }

    /// Number of hosts.
    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    /// Always false (a cluster has at least one host).
    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    /// Host `i` (1-based).
    pub fn host(&self, i: usize) -> &Host {
        &self.hosts[i - 1]
    }

    /// The network.
    pub fn net(&self) -> &Net {
        self.net.as_ref().unwrap()
    }

    /// The manager's address (`<ip of h1>:7000`).
    pub fn manager_addr(&self) -> String {
        format!("{}:{MANAGER_PORT}", self.host(1).ip)
    }

    /// The test's temporary directory.
    pub fn dir(&self) -> &Path {
        self.dir.as_ref().unwrap().path()
    }

    /// The shared store.
    pub fn store(&self) -> &Path {
        &self.store
    }

    /// The cluster secret file.
    pub fn secret_path(&self) -> &Path {
        &self.secret
    }

    /// Every host's ckptd log.
    pub fn logs(&self) -> Vec<PathBuf> {
        self.hosts.iter().map(|h| h.log.clone()).collect()
    }

    /// Tails of every ckptd log, for error messages.
    pub fn context(&self) -> String {
        let mut s = String::new();
        for h in &self.hosts {
            s.push_str(&format!(
                "--- ckptd log of {} {} (last 25 lines) ---\n{}\n",
                h.name,
                h.log.display(),
                file_tail(&h.log, 25)
            ));
        }
        s
    }

    /// Starts the manager's ckptd on host 1.
    pub fn start_manager(&mut self) -> Result<()> {
        let addr = self.manager_addr();
        let secret = self.secret.clone();
        self.start_ckptd(1, &["--manager-listen", &addr], &secret)
    }

    /// Starts a node's ckptd on host `i` joining the manager, with the
    /// cluster secret or `secret`.  Does not wait for it to join.
    pub fn start_node(&mut self, i: usize, secret: Option<&Path>) -> Result<()> {
        let addr = self.manager_addr();
        let secret = secret.map(Path::to_path_buf).unwrap_or_else(|| self.secret.clone());
        self.start_ckptd(i, &["--join", &addr], &secret)
    }

    fn start_ckptd(&mut self, i: usize, role: &[&str], secret: &Path) -> Result<()> {
        if self.host(i).child.is_some() {
            bail!("ckptd of h{i} is already running");
        }
        let logf = OpenOptions::new().create(true).append(true).open(&self.host(i).log)?;
        let mut cmd = self.net().exec_cmd(i, &self.bin_dir.join("ckptd"));
        let h = self.host(i);
        cmd.arg("--socket")
            .arg(&h.socket)
            .arg("--store")
            .arg(&self.store)
            .arg("--host-name")
            .arg(&h.name)
            .args(role)
            .arg("--secret")
            .arg(secret)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(logf.try_clone()?)
            .stderr(logf);
        let child = spawn_tracked(&mut cmd)?;
        let pid = child.id() as i32;
        let socket = h.socket.clone();
        let h = &mut self.hosts[i - 1];
        h.child = Some(child);
        h.pid = pid;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if UnixStream::connect(&socket).is_ok() {
                return Ok(());
            }
            if let Some(st) = self.hosts[i - 1].child.as_mut().unwrap().try_wait()? {
                procs::untrack(pid);
                self.hosts[i - 1].child = None;
                bail!(
                    "ckptd of h{i} exited before its socket {} became connectable: {}\n{}",
                    socket.display(),
                    fmt_status(&st),
                    self.context()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "ckptd of h{i}: socket {} not connectable after 30s\n{}",
                    socket.display(),
                    self.context()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until host `i`'s log says it joined the manager.
    pub fn wait_joined(&self, i: usize, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.host(i).log_text().contains(JOINED_MARK) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "h{i} did not log {JOINED_MARK:?} within {timeout:?}\n{}",
                    self.context()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether host `i`'s ckptd is still running (reaps it if not).
    pub fn ckptd_running(&mut self, i: usize) -> bool {
        match self.hosts[i - 1].child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// SIGKILLs host `i`'s ckptd and reaps it.
    pub fn kill_ckptd(&mut self, i: usize) -> Result<()> {
        let Some(mut child) = self.hosts[i - 1].child.take() else {
            bail!("ckptd of h{i} is not running");
        };
        send_signal(child.id() as i32, libc::SIGKILL)?;
        let (_, timed_out) = wait_child_timeout(&mut child, GONE_TIMEOUT)?;
        if timed_out {
            bail!("ckptd of h{i} (pid {}) did not die after SIGKILL", child.id());
        }
        Ok(())
    }

    /// SIGTERMs host `i`'s ckptd and waits (10 s, then SIGKILL).
    pub fn stop_ckptd(&mut self, i: usize) {
        if let Some(mut child) = self.hosts[i - 1].child.take() {
            let _ = send_signal(child.id() as i32, libc::SIGTERM);
            if let Ok((_, true)) = wait_child_timeout(&mut child, Duration::from_secs(10)) {
                eprintln!("[harness] ckptd of h{i} did not exit within 10s of SIGTERM; killed it");
            }
        }
    }

    // -- programs ----------------------------------------------------------------

    /// Runs `ckpt-run -- PROG ARGS…` on host `i` with stdout in
    /// `<dir>/<name>.out` and stderr in `<dir>/<name>.err`.
    pub fn run(&self, i: usize, name: &str, prog: &Path, args: &[&str]) -> Result<App> {
        let mut cmd = self.net().exec_cmd(i, &self.bin_dir.join("ckpt-run"));
        cmd.arg("--socket")
            .arg(&self.host(i).socket)
            .arg("--")
            .arg(prog)
            .args(args);
        let out = self.dir().join(format!("{name}.out"));
        let err = self.dir().join(format!("{name}.err"));
        let label = format!("h{i}:{name} ({} {})", prog.display(), args.join(" "));
        let app = App::spawn_to_file(cmd, &label, &out, &err, self.logs())?;
        self.app_pids.lock().unwrap().push(app.pid);
        Ok(app)
    }

    /// Runs an example (see [`example`]) on host `i` (see [`Cluster::run`]).
    pub fn run_example(&self, i: usize, name: &str, example_name: &str, args: &[&str]) -> Result<App> {
        let (prog, argv) = example_cmdline(example_name, args)?;
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        self.run(i, name, &prog, &argv)
    }

    /// Restores checkpoint `id` (`ckptctl restore` via host `via`) in place
    /// of the programs `old` (killed with SIGKILL first if still alive;
    /// waits for their pids to vanish), and returns Apps following the same
    /// output files from their size at the checkpoint (which the restore
    /// cut them back to), in the same order.
    pub fn restore(&self, via: usize, id: &str, old: Vec<App>) -> Result<Vec<App>> {
        let mut specs = Vec::new();
        for mut a in old {
            if proc_exists(a.pid) {
                a.kill9()
                    .with_context(|| format!("killing {} before the restore", a.label()))?;
            }
            a.disarm();
            let out = a
                .out_file()
                .ok_or_else(|| anyhow!("{}: not following a file", a.label()))?
                .to_path_buf();
            specs.push((a.pid, a.label().to_string(), out, a.stderr_path().to_path_buf()));
        }
        let sizes = self.stdout_sizes(via, id)?;
        for (pid, ..) in &specs {
            self.app_pids.lock().unwrap().push(*pid);
        }
        self.ckptctl_ok(via, &["restore", id])?;
        // Followed from the checkpoint's size only now that the restore cut
        // the files back: what the killed programs wrote after the checkpoint
        // is gone, everything the restored ones write is read.
        let mut apps = Vec::new();
        for (pid, label, out, err) in specs {
            let from = match sizes.get(&pid) {
                Some(&n) => n,
                None => {
                    bail!("checkpoint {id}: no size recorded for the stdout file of pid {pid} (ckptctl show --json)")
                }
            };
            let label = format!("{label} restored from {id}");
            apps.push(App::follow_file(pid, &label, &out, from, &err, self.logs())?);
        }
        Ok(apps)
    }

    /// Kills every given App (SIGKILL, waiting for its pid to vanish).
    pub fn kill_all(apps: &mut [App]) -> Result<()> {
        for a in apps.iter() {
            send_signal(a.pid, libc::SIGKILL)?;
        }
        for a in apps.iter_mut() {
            a.kill9()?;
        }
        Ok(())
    }

    /// Reads a whole output file of the test directory (`<name>.out`).
    pub fn read_out(&self, name: &str) -> String {
        let mut s = String::new();
        if let Ok(mut f) = File::open(self.dir().join(format!("{name}.out"))) {
            let _ = std::io::Read::read_to_string(&mut f, &mut s);
        }
        s
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let pids = self.app_pids.lock().unwrap().clone();
        for &pid in &pids {
            if proc_exists(pid) {
                let _ = send_signal(pid, libc::SIGKILL);
            }
        }
        for &pid in &pids {
            let _ = wait_proc_gone(pid, Duration::from_secs(5));
        }
        for i in 1..=self.hosts.len() {
            self.stop_ckptd(i);
        }
        // Removes the namespaces and whatever still runs in them.
        drop(self.net.take());
        reap_orphans();
        if let Some(d) = self.dir.take() {
            if std::env::var_os("CKPT_KEEP_TMP").is_some() {
                eprintln!("[harness] kept {}", d.keep().display());
            }
        }
    }
}
