//! Processes: spawning with tracking, timeouts, reaping (the test process
//! is a child subreaper), signals and /proc helpers.

use anyhow::{anyhow, bail, Context, Result};
use std::collections::HashSet;
use std::fs;
use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use crate::GONE_TIMEOUT;

/// pids of the children spawned through [`spawn_tracked`]: their exit status
/// belongs to a `std::process::Child`, so [`reap_orphans`] leaves them alone.
static SPAWNED: OnceLock<Mutex<HashSet<i32>>> = OnceLock::new();

fn spawned() -> &'static Mutex<HashSet<i32>> {
    SPAWNED.get_or_init(|| Mutex::new(HashSet::new()))
}

static INIT: OnceLock<()> = OnceLock::new();

/// One-time process setup: become a child subreaper, and give the programs under test the
/// default SIGHUP whatever the tests were started under (`nohup` ignores it, and a program
/// keeps, and a checkpoint restores, the disposition it inherited).
pub fn init() {
    INIT.get_or_init(|| {
        crate::elapsed_str();
        // SAFETY: prctl with integer arguments; signal() with the default disposition.
        unsafe {
            libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong, 0, 0, 0);
            libc::signal(libc::SIGHUP, libc::SIG_DFL);
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

pub(crate) fn untrack(pid: i32) {
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

/// Every descendant of `pid` (zombies included), parents before their children.
pub fn descendants(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        let Ok(tasks) = fs::read_dir(format!("/proc/{p}/task")) else {
            continue;
        };
        for t in tasks.flatten() {
            let path = t.path().join("children");
            let kids = fs::read_to_string(path).unwrap_or_default();
            for k in kids.split_whitespace().filter_map(|k| k.parse::<i32>().ok()) {
                if !out.contains(&k) {
                    out.push(k);
                    todo.push(k);
                }
            }
        }
    }
    out
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

/// A command run to completion by [`run_with_timeout`] on a thread of its
/// own, e.g. a `ckptctl checkpoint` that the test wants to act during.
pub struct Background {
    label: String,
    started: Instant,
    handle: Option<thread::JoinHandle<Result<Output>>>,
}

impl Background {
    /// Starts `cmd` (its stdout/stderr go to files; killed after `timeout`).
    pub fn start(mut cmd: Command, timeout: Duration) -> Result<Background> {
        let label = format!("{cmd:?}");
        let handle = thread::Builder::new()
            .name("background".into())
            .spawn(move || run_with_timeout(&mut cmd, timeout))?;
        Ok(Background {
            label,
            started: Instant::now(),
            handle: Some(handle),
        })
    }

    /// True once the command has exited.
    pub fn is_finished(&self) -> bool {
        self.handle.as_ref().map(|h| h.is_finished()).unwrap_or(true)
    }

    /// When it was started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Waits for the command (bounded by the timeout given to
    /// [`Background::start`]) and returns its output.
    pub fn finish(mut self) -> Result<Output> {
        let h = self.handle.take().ok_or_else(|| anyhow!("already finished"))?;
        match h.join() {
            Ok(r) => r.with_context(|| format!("running {}", self.label)),
            Err(_) => bail!("the thread running {} panicked", self.label),
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
