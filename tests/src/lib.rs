//! Test harness for ckpt: locates the binaries, compiles the example
//! programs, runs a private `ckptd` per test and drives `ckpt-run` /
//! `ckptctl` with timeouts everywhere.
//!
//! Every process this harness starts is reaped.  The test process makes
//! itself a child subreaper, so restored processes orphaned by ckptd land
//! here (instead of on PID 1, which does not reap on this machine) and are
//! reaped by [`wait_proc_gone`] / [`reap_orphans`].

use anyhow::{anyhow, bail, Context, Result};
use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

/// Default timeout for one `ckptctl` invocation.
pub const CKPTCTL_TIMEOUT: Duration = Duration::from_secs(180);
/// Default timeout for waiting for an output line.
pub const LINE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long to wait for a killed process to disappear from /proc.
pub const GONE_TIMEOUT: Duration = Duration::from_secs(20);

/// Lines that make an example program's output a failure at once.
pub const FAILURE_MARKERS: &[&str] = &["MISMATCH", "INVARIANT", "WRITE_FAILED"];

// ---------------------------------------------------------------------------
// Locations
// ---------------------------------------------------------------------------

/// The workspace root: parent of this package's directory.
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| manifest.to_path_buf())
}

/// Cargo's target directory (`$CARGO_TARGET_DIR` or `<workspace>/target`).
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => {
            let p = PathBuf::from(d);
            if p.is_absolute() {
                p
            } else {
                workspace_root().join(p)
            }
        }
        _ => workspace_root().join("target"),
    }
}

/// Where `ckptd`, `ckpt-run`, `ckptctl` live: `$CKPT_BIN_DIR`, else
/// `<target>/debug`.
pub fn bin_dir() -> PathBuf {
    bin_dir_for("debug")
}

/// `$CKPT_BIN_DIR`, else `<target>/<profile>` (the benchmark uses "release").
pub fn bin_dir_for(profile: &str) -> PathBuf {
    match std::env::var_os("CKPT_BIN_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => target_dir().join(profile),
    }
}

/// Path of one of the project's binaries, checked to exist.
pub fn bin(name: &str) -> Result<PathBuf> {
    let p = bin_dir().join(name);
    if !p.is_file() {
        bail!(
            "binary {} not found (build the workspace first: cargo build --workspace, \
             or point CKPT_BIN_DIR at the binaries)",
            p.display()
        );
    }
    Ok(p)
}

/// `<workspace>/examples`.
pub fn examples_src_dir() -> PathBuf {
    workspace_root().join("examples")
}

/// `<target>/examples`, where the C examples are compiled to.
pub fn examples_out_dir() -> PathBuf {
    target_dir().join("examples")
}

/// The python interpreter used for `.py` examples.
pub const PYTHON3: &str = "/usr/bin/python3";

/// Returns the runnable path of an example: for `foo` (or `foo.c`) the
/// binary `<target>/examples/foo`, compiled from `examples/foo.c` with
/// `gcc -O1 -pthread` unless it is newer than its source (once per process,
/// under an exclusive file lock so concurrent test processes don't race);
/// for `foo.py` the script itself.
pub fn example(name: &str) -> Result<PathBuf> {
    if name.ends_with(".py") {
        let p = examples_src_dir().join(name);
        if !p.is_file() {
            bail!("example script {} not found", p.display());
        }
        return Ok(p);
    }
    let stem = name.strip_suffix(".c").unwrap_or(name);
    compile_example(stem)?;
    Ok(examples_out_dir().join(stem))
}

/// Program + arguments to run an example (`.py` runs under [`PYTHON3`]).
pub fn example_cmdline(name: &str, args: &[&str]) -> Result<(PathBuf, Vec<String>)> {
    let path = example(name)?;
    let mut v: Vec<String> = Vec::new();
    if name.ends_with(".py") {
        v.push(path.display().to_string());
        v.extend(args.iter().map(|s| s.to_string()));
        Ok((PathBuf::from(PYTHON3), v))
    } else {
        v.extend(args.iter().map(|s| s.to_string()));
        Ok((path, v))
    }
}

static COMPILED: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();

/// Compiles every `examples/*.c` (see [`example`]).
pub fn compile_examples() -> Result<()> {
    let mut stems: Vec<String> = fs::read_dir(examples_src_dir())
        .with_context(|| format!("read {}", examples_src_dir().display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().map(|x| x == "c").unwrap_or(false))
        .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().to_string()))
        .collect();
    stems.sort();
    for s in stems {
        compile_example(&s)?;
    }
    Ok(())
}

/// Compiles `examples/<stem>.c` into `<target>/examples/<stem>` if needed.
pub fn compile_example(stem: &str) -> Result<()> {
    let done = COMPILED.get_or_init(|| Mutex::new(HashSet::new()));
    // Held while compiling: one compile at a time within this process.
    let mut done = done.lock().unwrap();
    if done.contains(stem) {
        return Ok(());
    }
    let src = examples_src_dir().join(format!("{stem}.c"));
    if !src.is_file() {
        bail!("example source {} not found", src.display());
    }
    let out_dir = examples_out_dir();
    fs::create_dir_all(&out_dir).with_context(|| format!("mkdir {}", out_dir.display()))?;
    let lock = File::create(out_dir.join(".lock")).context("create examples lock file")?;
    // SAFETY: plain flock on an fd we own; released when `lock` is dropped.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        bail!("flock examples lock: {}", std::io::Error::last_os_error());
    }
    let out = out_dir.join(stem);
    let fresh = match (fs::metadata(&out), fs::metadata(&src)) {
        (Ok(o), Ok(s)) => o.modified().ok() >= s.modified().ok(),
        _ => false,
    };
    if !fresh {
        let tmp = out_dir.join(format!(".{stem}.tmp.{}", std::process::id()));
        let output = Command::new("gcc")
            .args(["-O1", "-pthread", "-Wall", "-o"])
            .arg(&tmp)
            .arg(&src)
            .stdin(Stdio::null())
            .output()
            .context("running gcc (is it installed?)")?;
        if !output.status.success() {
            let _ = fs::remove_file(&tmp);
            bail!(
                "gcc failed for {}: {}\n{}",
                src.display(),
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        fs::rename(&tmp, &out).with_context(|| format!("rename to {}", out.display()))?;
    }
    drop(lock);
    done.insert(stem.to_string());
    Ok(())
}

// ---------------------------------------------------------------------------
// Process bookkeeping
// ---------------------------------------------------------------------------

/// pids of the children spawned through [`spawn_tracked`]: their exit status
/// belongs to a `std::process::Child`, so [`reap_orphans`] leaves them alone.
static SPAWNED: OnceLock<Mutex<HashSet<i32>>> = OnceLock::new();

fn spawned() -> &'static Mutex<HashSet<i32>> {
    SPAWNED.get_or_init(|| Mutex::new(HashSet::new()))
}

static INIT: OnceLock<()> = OnceLock::new();

/// One-time process setup: become a child subreaper.
pub fn init() {
    INIT.get_or_init(|| {
        // SAFETY: prctl with integer arguments.
        unsafe {
            libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong, 0, 0, 0);
        }
    });
}

/// True when running as root (euid 0).
pub fn is_root() -> bool {
    // SAFETY: trivial syscall.
    unsafe { libc::geteuid() == 0 }
}

/// Use at the top of a test returning `anyhow::Result<()>`: prints a message
/// and returns `Ok(())` when not root.
#[macro_export]
macro_rules! require_root {
    () => {
        if !$crate::is_root() {
            eprintln!("SKIPPED {}: checkpoint/restore tests must run as root", module_path!());
            return Ok(());
        }
    };
}

/// Spawns `cmd` and records its pid (see [`reap_orphans`]).
/// Every fd above 2 is marked close-on-exec in the child, so nothing the
/// test process inherited (e.g. cargo's jobserver pipe) leaks into the
/// programs under test (ckpt refuses to checkpoint unknown pipes).
pub fn spawn_tracked(cmd: &mut Command) -> Result<Child> {
    init();
    use std::os::unix::process::CommandExt;
    // SAFETY: only async-signal-safe syscalls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
            let r = libc::syscall(
                libc::SYS_close_range,
                3 as libc::c_uint,
                libc::c_uint::MAX,
                CLOSE_RANGE_CLOEXEC,
            );
            if r != 0 {
                for fd in 3..4096 {
                    let fl = libc::fcntl(fd, libc::F_GETFD);
                    if fl >= 0 {
                        libc::fcntl(fd, libc::F_SETFD, fl | libc::FD_CLOEXEC);
                    }
                }
            }
            Ok(())
        });
    }
    let child = cmd.spawn().with_context(|| format!("spawn {:?}", cmd))?;
    spawned().lock().unwrap().insert(child.id() as i32);
    Ok(child)
}

fn untrack(pid: i32) {
    spawned().lock().unwrap().remove(&pid);
}

/// Waits for `child` with a timeout; kills it (SIGKILL) when the timeout
/// expires and still reaps it.  Returns `(status, timed_out)`.
pub fn wait_child_timeout(child: &mut Child, timeout: Duration) -> Result<(ExitStatus, bool)> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(st) = child.try_wait()? {
            untrack(child.id() as i32);
            return Ok((st, false));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let st = child.wait()?;
            untrack(child.id() as i32);
            return Ok((st, true));
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Runs `cmd` to completion with stdout/stderr captured in files (not pipes,
/// so processes that inherit them cannot make us hang) and a timeout. On
/// timeout the command is SIGKILLed and a note is appended to its stderr.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    let mut out = tempfile::tempfile()?;
    let mut err = tempfile::tempfile()?;
    cmd.stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(err.try_clone()?);
    let mut child = spawn_tracked(cmd)?;
    let (status, timed_out) = wait_child_timeout(&mut child, timeout)?;
    use std::io::{Seek, SeekFrom};
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    out.seek(SeekFrom::Start(0))?;
    out.read_to_end(&mut stdout)?;
    err.seek(SeekFrom::Start(0))?;
    err.read_to_end(&mut stderr)?;
    if timed_out {
        stderr.extend_from_slice(format!("\n[harness: killed after timeout of {timeout:?}: {cmd:?}]\n").as_bytes());
    }
    Ok(Output { status, stdout, stderr })
}

/// `(state, ppid)` of a process from /proc/<pid>/stat, None if absent.
pub fn proc_state(pid: i32) -> Option<(char, i32)> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    let mut it = rest.split_whitespace();
    let state = it.next()?.chars().next()?;
    let ppid = it.next()?.parse().ok()?;
    Some((state, ppid))
}

/// True if the process exists and is not a zombie.
pub fn proc_alive(pid: i32) -> bool {
    matches!(proc_state(pid), Some((s, _)) if s != 'Z' && s != 'X')
}

/// True if /proc/<pid> exists (zombies included).
pub fn proc_exists(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Reaps zombie children of this process that were not spawned through
/// [`spawn_tracked`] (i.e. orphans reparented to us as subreaper).
pub fn reap_orphans() {
    let me = std::process::id() as i32;
    let tracked = spawned().lock().unwrap().clone();
    let Ok(rd) = fs::read_dir("/proc") else {
        return;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if tracked.contains(&pid) {
            continue;
        }
        if let Some(('Z', ppid)) = proc_state(pid) {
            if ppid == me {
                let mut st = 0;
                // SAFETY: waitpid on a specific zombie child of ours.
                unsafe { libc::waitpid(pid, &mut st, libc::WNOHANG) };
            }
        }
    }
}

/// Waits until /proc/<pid> disappears, reaping it if it became our zombie
/// child.  The error says whether it is still running or a zombie (and whose).
pub fn wait_proc_gone(pid: i32, timeout: Duration) -> Result<()> {
    let me = std::process::id() as i32;
    let deadline = Instant::now() + timeout;
    loop {
        match proc_state(pid) {
            None if !proc_exists(pid) => return Ok(()),
            Some(('Z', ppid)) if ppid == me && !spawned().lock().unwrap().contains(&pid) => {
                let mut st = 0;
                // SAFETY: waitpid on a specific zombie child of ours.
                unsafe { libc::waitpid(pid, &mut st, libc::WNOHANG) };
            }
            _ => {}
        }
        if Instant::now() >= deadline {
            return match proc_state(pid) {
                Some(('Z', ppid)) => Err(anyhow!(
                    "pid {pid} is a zombie {timeout:?} after being killed: its parent \
                     (pid {ppid}) did not reap it"
                )),
                Some((s, ppid)) => Err(anyhow!(
                    "pid {pid} still exists {timeout:?} after being killed (state {s}, parent {ppid})"
                )),
                None => Ok(()),
            };
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Sends `sig` to `pid`; ESRCH is not an error.
pub fn send_signal(pid: i32, sig: i32) -> Result<()> {
    // SAFETY: kill(2).
    let r = unsafe { libc::kill(pid, sig) };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ESRCH) {
            bail!("kill({pid}, {sig}): {e}");
        }
    }
    Ok(())
}

/// `kill -9 pid`, then wait until /proc/<pid> disappears (see
/// [`wait_proc_gone`]).  For a process that is our own `Child`, use
/// [`App::kill9`] instead (it reaps through the `Child`).
pub fn kill9_and_wait(pid: i32) -> Result<()> {
    send_signal(pid, libc::SIGKILL)?;
    wait_proc_gone(pid, GONE_TIMEOUT)
}

/// Sorted thread ids of a process (/proc/<pid>/task).
pub fn task_tids(pid: i32) -> Vec<i32> {
    let mut v: Vec<i32> = fs::read_dir(format!("/proc/{pid}/task"))
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// pids whose parent is `ppid`.
pub fn children_of(ppid: i32) -> Vec<i32> {
    let mut v = Vec::new();
    if let Ok(rd) = fs::read_dir("/proc") {
        for e in rd.flatten() {
            if let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) {
                if let Some((_, pp)) = proc_state(pid) {
                    if pp == ppid {
                        v.push(pid);
                    }
                }
            }
        }
    }
    v.sort();
    v
}

// ---------------------------------------------------------------------------
// Output helpers
// ---------------------------------------------------------------------------

/// `tick <n> ...` -> n.
pub fn tick_num(line: &str) -> Option<u64> {
    let mut it = line.split_whitespace();
    if it.next()? != "tick" {
        return None;
    }
    it.next()?.parse().ok()
}

/// The token following `key` in a whitespace separated line
/// (`field("tick 3 pid 42", "pid") == Some("42")`).
pub fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let mut it = line.split_whitespace();
    while let Some(t) = it.next() {
        if t == key {
            return it.next();
        }
    }
    None
}

/// True if `text` contains `n` as a whole number (not part of a larger one).
pub fn contains_number(text: &str, n: i64) -> bool {
    let want = n.to_string();
    text.split(|c: char| !c.is_ascii_digit()).any(|tok| tok == want)
}

/// First word of every line of `ckptctl list` output (ids, plus a header
/// word if there is a header).
pub fn first_words(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// Human readable dump of an `Output`.
pub fn describe(out: &Output) -> String {
    format!(
        "status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        fmt_status(&out.status),
        String::from_utf8_lossy(&out.stdout).trim_end(),
        String::from_utf8_lossy(&out.stderr).trim_end()
    )
}

/// "exit code N" / "killed by signal N".
pub fn fmt_status(st: &ExitStatus) -> String {
    match (st.code(), st.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => format!("{st:?}"),
    }
}

/// Trimmed stdout as a String.
pub fn stdout_str(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Checks that `out` failed (non-zero exit, not killed by a signal) with
/// exactly one non-empty line on stderr; returns that line.
pub fn expect_failure_one_line(out: &Output, what: &str) -> Result<String> {
    if out.status.success() {
        bail!("{what}: expected a non-zero exit, got success\n{}", describe(out));
    }
    if out.status.code().is_none() {
        bail!("{what}: expected a non-zero exit code, process died\n{}", describe(out));
    }
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.len() != 1 {
        bail!(
            "{what}: expected exactly one line on stderr, got {}\n{}",
            lines.len(),
            describe(out)
        );
    }
    Ok(lines[0].trim().to_string())
}

/// Removes ANSI escape sequences (colored log output).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        if c == '\x1b' {
            if it.peek() == Some(&'[') {
                it.next();
                for d in it.by_ref() {
                    if ('@'..='~').contains(&d) {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// Last `n` lines of a file (empty string if unreadable), ANSI-stripped.
pub fn file_tail(path: &Path, n: usize) -> String {
    let s = fs::read(path).unwrap_or_default();
    let s = strip_ansi(&String::from_utf8_lossy(&s));
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

// ---------------------------------------------------------------------------
// Store helpers
// ---------------------------------------------------------------------------

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let mut entries: Vec<_> = fs::read_dir(dir)?.flatten().map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        let md = fs::symlink_metadata(&p)?;
        if md.is_dir() {
            out.push(p.clone());
            walk(&p, out)?;
        } else {
            out.push(p);
        }
    }
    Ok(())
}

/// All paths below `dir` (sorted, recursive, dirs included).
pub fn walk_dir(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v = Vec::new();
    walk(dir, &mut v).with_context(|| format!("walk {}", dir.display()))?;
    Ok(v)
}

struct Fnv(u64);
impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf29ce484222325)
    }
    fn bytes(&mut self, b: &[u8]) {
        let mut chunks = b.chunks_exact(8);
        for c in &mut chunks {
            let w = u64::from_le_bytes(c.try_into().unwrap());
            self.0 = (self.0 ^ w).wrapping_mul(0x100000001b3).rotate_left(23);
        }
        for &x in chunks.remainder() {
            self.0 = (self.0 ^ x as u64).wrapping_mul(0x100000001b3);
        }
        self.0 ^= b.len() as u64;
    }
}

/// Hash of the names, sizes and contents of every file below `dir`.
pub fn hash_dir(dir: &Path) -> Result<String> {
    let mut h = Fnv::new();
    let mut buf = vec![0u8; 1 << 20];
    for p in walk_dir(dir)? {
        let rel = p.strip_prefix(dir).unwrap_or(&p);
        h.bytes(rel.as_os_str().as_encoded_bytes());
        let md = fs::symlink_metadata(&p)?;
        if md.is_file() {
            h.bytes(&md.len().to_le_bytes());
            let mut f = File::open(&p).with_context(|| format!("open {}", p.display()))?;
            loop {
                let n = f.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                h.bytes(&buf[..n]);
            }
        } else if md.is_dir() {
            h.bytes(b"/");
        }
    }
    Ok(format!("{:016x}", h.0))
}

/// `(apparent bytes, allocated bytes)` of all files below `dir` (like du).
pub fn dir_usage(dir: &Path) -> Result<(u64, u64)> {
    let mut apparent = 0;
    let mut disk = 0;
    for p in walk_dir(dir)? {
        let md = fs::symlink_metadata(&p)?;
        if md.is_file() {
            apparent += md.len();
            disk += md.blocks() * 512;
        }
    }
    Ok((apparent, disk))
}

// ---------------------------------------------------------------------------
// Daemon
// ---------------------------------------------------------------------------

static APP_SEQ: AtomicUsize = AtomicUsize::new(0);

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
}

impl Daemon {
    /// Starts ckptd from [`bin_dir`] and waits until its socket accepts.
    pub fn start() -> Result<Daemon> {
        Self::start_in(&bin_dir())
    }

    /// Like [`Daemon::start`] with an explicit binary directory.
    pub fn start_in(bin_dir: &Path) -> Result<Daemon> {
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
        let log = dir.path().join("ckptd.log");
        let logf = File::create(&log)?;
        let child = spawn_tracked(
            Command::new(&ckptd)
                .arg("--socket")
                .arg(&socket)
                .arg("--store")
                .arg(&store)
                .env("NO_COLOR", "1")
                .stdin(Stdio::null())
                .stdout(logf.try_clone()?)
                .stderr(logf),
        )?;
        let pid = child.id() as i32;
        let mut d = Daemon {
            dir,
            socket,
            store,
            log,
            child: Some(child),
            pid,
            bin_dir: bin_dir.to_path_buf(),
            app_pids: Arc::new(Mutex::new(Vec::new())),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if UnixStream::connect(&d.socket).is_ok() {
                return Ok(d);
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

    fn ckptctl_cmd(&self, args: &[&str]) -> Command {
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
        let s = self.ckptctl_ok(&["status", "--json"])?;
        let v: serde_json::Value =
            serde_json::from_str(&s).with_context(|| format!("ckptctl status --json: not JSON: {s:?}"))?;
        let procs = v
            .get("processes")
            .and_then(|p| p.as_array())
            .ok_or_else(|| anyhow!("ckptctl status --json: no \"processes\" array: {s}"))?;
        let mut pids = Vec::new();
        for p in procs {
            let pid = p
                .get("pid")
                .and_then(|x| x.as_i64())
                .ok_or_else(|| anyhow!("ckptctl status --json: entry without pid: {p}"))?;
            pids.push(pid as i32);
        }
        pids.sort();
        Ok(pids)
    }

    /// Starts `ckpt-run --socket <sock> -- PROG ARGS...`.
    pub fn run(&self, prog: &Path, args: &[&str]) -> Result<App> {
        let mut c = Command::new(self.bin_dir.join("ckpt-run"));
        c.arg("--socket").arg(&self.socket).arg("--").arg(prog).args(args);
        let label = format!("ckpt-run {} {}", prog.display(), args.join(" "))
            .trim_end()
            .to_string();
        let app = App::spawn(c, &label, None, self)?;
        Ok(app)
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
        let c = self.ckptctl_cmd(&["restore", id]);
        App::spawn(c, &format!("ckptctl restore {id} (pid {pid})"), Some(pid), self)
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

// ---------------------------------------------------------------------------
// App
// ---------------------------------------------------------------------------

/// One line of output with the time it was read.
#[derive(Clone, Debug)]
pub struct Line {
    pub text: String,
    pub at: Instant,
}

/// A spawned process (`ckpt-run ...` or `ckptctl restore ...`) whose stdout
/// is read line by line by a thread; `pid` is the application's pid.
pub struct App {
    /// pid of the application (== ckpt-run's pid, or the restored pid).
    pub pid: i32,
    label: String,
    child: Option<Child>,
    child_status: Option<ExitStatus>,
    /// true when `pid` is our own child (ckpt-run).
    pid_is_child: bool,
    rx: Mutex<Receiver<Line>>,
    history: Arc<Mutex<Vec<Line>>>,
    stderr_path: PathBuf,
    daemon_log: PathBuf,
}

fn reader_thread(stdout: ChildStdout, tx: mpsc::Sender<Line>, history: Arc<Mutex<Vec<Line>>>) {
    let mut r = BufReader::new(stdout);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match r.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let text = String::from_utf8_lossy(&buf).trim_end_matches(['\n', '\r']).to_string();
                let line = Line {
                    text,
                    at: Instant::now(),
                };
                history.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        }
    }
}

impl App {
    fn spawn(mut cmd: Command, label: &str, pid: Option<i32>, d: &Daemon) -> Result<App> {
        let n = APP_SEQ.fetch_add(1, Ordering::SeqCst);
        let stderr_path = d.dir().join(format!("app-{n}.stderr"));
        let errf = File::create(&stderr_path)?;
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(errf);
        let mut child = spawn_tracked(&mut cmd)?;
        let (tx, rx) = mpsc::channel();
        let history = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().unwrap();
        let h2 = history.clone();
        thread::Builder::new()
            .name(format!("app-{n}-stdout"))
            .spawn(move || reader_thread(stdout, tx, h2))?;
        let app_pid = pid.unwrap_or(child.id() as i32);
        d.app_pids.lock().unwrap().push(app_pid);
        Ok(App {
            pid: app_pid,
            label: label.to_string(),
            pid_is_child: pid.is_none(),
            child: Some(child),
            child_status: None,
            rx: Mutex::new(rx),
            history,
            stderr_path,
            daemon_log: d.log.clone(),
        })
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
            "--- last stdout lines of {} ---\n{}\n--- its stderr ({}) ---\n{}\n--- ckptd log (last 40 lines) ---\n{}",
            self.label,
            self.tail(15),
            self.stderr_path.display(),
            file_tail(&self.stderr_path, 20),
            file_tail(&self.daemon_log, 40)
        )
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
}

impl Drop for App {
    fn drop(&mut self) {
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

// ---------------------------------------------------------------------------
// Misc
// ---------------------------------------------------------------------------

/// Timestamped progress message on stderr (shown by cargo test on failure
/// or with --nocapture).
#[macro_export]
macro_rules! note {
    ($($arg:tt)*) => {
        eprintln!("[{}] {}", $crate::elapsed_str(), format!($($arg)*))
    };
}

static T0: OnceLock<Instant> = OnceLock::new();

/// Seconds since the first call, for [`note!`].
pub fn elapsed_str() -> String {
    let t0 = *T0.get_or_init(Instant::now);
    format!("{:8.3}s", t0.elapsed().as_secs_f64())
}

/// Median of a non-empty slice (mean of the two middle values).
pub fn median(v: &[f64]) -> f64 {
    let mut s: Vec<f64> = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = s.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}
