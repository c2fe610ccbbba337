//! Making a host's process tree at restore, as `ckpt_format::tree` plans it: ckptd starts the
//! topmost restorers, each other one is forked by its parent's restorer; once all are built,
//! groups are joined, zombies made and terminals taken, and only then does any of them become
//! its program, so that no restored program runs while a relative is still missing.

use super::restore::Planned;
use super::{describe_status, Node};
use anyhow::{anyhow, bail, Context};
use ckpt_format::tree::{Birth, Plan};
use ckpt_proto::restore_status::{self, Status};
use ckpt_proto::{AppMsg, Registration, SocketFds, TreeAnswer, TreeStep};
use std::collections::HashMap;
use std::ffi::CString;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

const RESTORE_TIMEOUT: Duration = Duration::from_secs(60);

/// A restorer between its start and its program's first report.
struct Restorer<'a> {
    planned: &'a Planned,
    /// Read to its end: empty when the restorer became the program, else why it failed.
    status: OwnedFd,
    /// Its control socket: the tree steps, then the program's own connection.
    ours: UnixStream,
}

/// What the restore hands each process: its stdio, sockets and mapped-file checks.
pub struct Handed<'a> {
    pub stdio: &'a [OwnedFd],
    pub sockets: HashMap<i32, Vec<(i32, OwnedFd)>>,
    pub checks: HashMap<i32, Vec<String>>,
}

impl Node {
    /// Makes the tree of `planned` as `plan` says and waits until every program is back.
    /// Returns the pids restored; on failure every one of them is gone again.
    pub(super) fn make_tree(
        &self,
        id: &str,
        planned: &[Planned],
        plan: &Plan,
        mut handed: Handed,
        lazy: Option<&std::sync::Arc<crate::lazy::Group>>,
    ) -> anyhow::Result<Vec<i32>> {
        let by_pid: HashMap<i32, &Planned> = planned.iter().map(|p| (p.image().pid, p)).collect();
        // The job's stdio from now on, for its next checkpoint (see `dump::stdio`).
        let stdio = crate::dump::stdio::of_fds(handed.stdio);
        let mut made: Vec<Restorer> = Vec::new();
        let r = (|| -> anyhow::Result<()> {
            for b in &plan.live {
                let p = by_pid
                    .get(&b.pid)
                    .ok_or_else(|| anyhow!("the tree names pid {} with no image", b.pid))?;
                let sockets = handed.sockets.remove(&b.pid).unwrap_or_default();
                let mut checks = handed.checks.remove(&b.pid).unwrap_or_default();
                if lazy.is_some() {
                    checks.push("--lazy".to_string());
                }
                let r = self.start(id, p, b, &made, handed.stdio, &checks)?;
                send_sockets(&r.ours, sockets)?;
                made.push(r);
            }
            for r in &made {
                ckpt_proto::send(&r.ours, &TreeStep::Build, &[]).context("a tree step")?;
                // Served from before the program runs: the blob itself touches that memory.
                if let Some(g) = lazy {
                    g.take_over(r.planned.image().pid, &r.ours).map_err(|e| why(r, e))?;
                }
                answer_of(r)?;
            }
            for b in &plan.groups {
                let (to, what) = match (b.zombie, b.join) {
                    (Some(status), join) => (
                        b.parent.unwrap_or(0),
                        TreeStep::Zombie {
                            pid: b.pid,
                            comm: b.comm.clone(),
                            exit_signal: b.exit_signal,
                            setsid: b.setsid,
                            lead_group: b.lead_group,
                            join,
                            status,
                        },
                    ),
                    (None, Some(pgid)) => (b.pid, TreeStep::Join { pgid }),
                    (None, None) => continue,
                };
                step(find(&made, to)?, &what)?;
            }
            for t in &plan.terminals {
                let what = TreeStep::Terminal {
                    tty_nr: t.tty_nr,
                    foreground: t.foreground,
                };
                step(find(&made, t.leader)?, &what)?;
            }
            for r in &made {
                ckpt_proto::send(&r.ours, &TreeStep::Go, &[]).map_err(|e| why(r, lost(r, e)))?;
            }
            Ok(())
        })();
        let pids: Vec<i32> = made.iter().map(|r| r.planned.image().pid).collect();
        if let Err(e) = r {
            self.kill_restored(&pids);
            return Err(e);
        }
        let roots: Vec<i32> = plan.roots().collect();
        for r in made {
            if let Err(e) = self.wait_back(id, r, &roots, stdio) {
                self.kill_restored(&pids);
                return Err(e);
            }
        }
        // Each restorer loads its pages last, once told to go: they are all back now.
        self.meter.loaded();
        Ok(pids)
    }

    /// Starts the restorer of `b`: ckptd forks a topmost one, its parent's restorer any other.
    fn start<'a>(
        &self,
        id: &str,
        p: &'a Planned,
        b: &Birth,
        made: &[Restorer],
        stdio: &[OwnedFd],
        checks: &[String],
    ) -> anyhow::Result<Restorer<'a>> {
        let pid = b.pid;
        let (status_r, status_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("pipe")?;
        let (ours, theirs) = UnixStream::pair().context("socketpair")?;
        let devnull = std::fs::File::open("/dev/null").context("/dev/null")?;
        let fd_or_null = |i: usize| stdio.get(i).map(|f| f.as_raw_fd()).unwrap_or(devnull.as_raw_fd());
        // The restorer finds: 0-2 the requester's stdio, 3 the status pipe, 4 its control socket.
        let fds = [
            fd_or_null(0),
            fd_or_null(1),
            fd_or_null(2),
            status_w.as_raw_fd(),
            theirs.as_raw_fd(),
        ];
        let mut argv = vec![
            "ckpt-restore".to_string(),
            "--meta".to_string(),
            p.meta().to_string_lossy().into_owned(),
            "--status-fd=3".to_string(),
            "--control-fd=4".to_string(),
        ];
        for path in p.pages() {
            argv.push("--pages".to_string());
            argv.push(path.to_string_lossy().into_owned());
        }
        argv.extend(checks.iter().cloned());
        match b.parent {
            None => {
                let mut envp = vec!["GLIBC_TUNABLES=glibc.pthread.rseq=0".to_string()];
                if let Ok(v) = std::env::var("RUST_LOG") {
                    envp.push(format!("RUST_LOG={v}"));
                }
                let cs = |v: &[String]| -> anyhow::Result<Vec<CString>> {
                    Ok(v.iter().map(|a| CString::new(a.as_str())).collect::<Result<_, _>>()?)
                };
                self.reaper.forget(pid);
                let opts = ckpt_sys::spawn::Options {
                    setsid: b.setsid,
                    lead_group: b.lead_group,
                    exit_signal: libc::SIGCHLD,
                };
                let prog = CString::new(self.restorer.as_os_str().as_bytes())?;
                ckpt_sys::spawn::spawn_with_pid(pid, &prog, &cs(&argv)?, &cs(&envp)?, &fds, opts)?;
            }
            Some(parent) => {
                // A fork of the parent's restorer, which runs in the environment above.
                let fork = TreeStep::Fork {
                    pid,
                    exit_signal: b.exit_signal,
                    setsid: b.setsid,
                    lead_group: b.lead_group,
                    argv,
                };
                let parent = find(made, parent)?;
                ckpt_proto::send(&parent.ours, &fork, &fds).map_err(|e| why(parent, lost(parent, e)))?;
                answer_of(parent)?;
            }
        }
        // The restorer becomes the program: its writes to the checkpoint's files are the
        // checkpoint's own from its first instant.
        self.files.watch.adopt(pid);
        self.files.dirs.register(pid, true);
        tracing::info!(pid, id, parent = ?b.parent, "restorer started");
        Ok(Restorer {
            planned: p,
            status: status_r,
            ours,
        })
    }

    /// Waits until `r` became its program and the program reported back, then registers it.
    fn wait_back(&self, id: &str, r: Restorer, roots: &[i32], stdio: [Option<u64>; 3]) -> anyhow::Result<()> {
        let p = r.planned;
        let pid = p.image().pid;
        let root = roots.contains(&pid);
        let status = read_status(r.status, RESTORE_TIMEOUT)?;
        if let Some(s) = status {
            if root {
                // The restorer exits after reporting: once it is reaped the pid is free again.
                self.reaper.wait_exit(pid, Duration::from_secs(5));
            }
            bail!("restore of pid {pid} failed: {}", describe(s));
        }
        let ours = r.ours;
        ours.set_read_timeout(Some(RESTORE_TIMEOUT))?;
        match ckpt_proto::recv::<AppMsg>(&ours) {
            Ok((AppMsg::Restored { pid: got }, _)) if got == pid => {}
            Ok((other, _)) => bail!("restored pid {pid} sent {other:?} instead of its restore notice"),
            Err(e) => {
                // The restorer had finished (its status pipe closed without a failure), so the
                // program ran: a short-lived one (a shell's `sleep`, a server's worker whose
                // client was outside the checkpoint) may well finish before its control thread
                // reports. Only ckptd's own children can be waited for here; another's exit is
                // its parent's to collect. An exiting process closes its connection before it
                // is a zombie: on a busy machine that takes a while.
                if !root && ended_soon(pid) {
                    tracing::info!(
                        pid,
                        id,
                        "restored process ended before reporting; its parent collects it"
                    );
                    return Ok(());
                }
                let exit = root
                    .then(|| self.reaper.wait_exit(pid, Duration::from_secs(2)))
                    .flatten();
                if exit.is_some_and(|st| libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0) {
                    tracing::info!(
                        pid,
                        id,
                        "restored process ran to its end (exit code 0) before reporting"
                    );
                    return Ok(());
                }
                let how = exit.map(describe_status).unwrap_or_else(|| format!("no notice ({e})"));
                bail!("restored pid {pid} did not come back: {how}");
            }
        }
        ours.set_read_timeout(None)?;
        let img = p.image();
        let reg = Registration {
            pid,
            exe: img.exe.clone(),
            args: img.args.clone(),
            slot_addr: img.restored_flag_addr - ckpt_proto::slots::ProcSlot::RESTORED_OFFSET,
            slot_len: std::mem::size_of::<ckpt_proto::slots::ProcSlot>() as u64,
            control_fd: img.control_fd,
            park_signal: 0,
            uffd_fd: img.uffd_fd,
        };
        let restored = self.registry.insert(reg, ours, Some(id.to_string()), stdio);
        // Its memory is the checkpoint's, and what it writes from now on shows (the restorer
        // armed its tracker; without one everything reads as written): its next checkpoint is
        // incremental to this one.
        *restored.track_base.lock().unwrap_or_else(|e| e.into_inner()) = Some(id.to_string());
        tracing::info!(pid, id, "process restored");
        Ok(())
    }
}

fn find<'r, 'a>(made: &'r [Restorer<'a>], pid: i32) -> anyhow::Result<&'r Restorer<'a>> {
    made.iter()
        .find(|r| r.planned.image().pid == pid)
        .ok_or_else(|| anyhow!("pid {pid} is needed before it is made; the checkpoint's tree is damaged"))
}

/// The re-created sockets go first, a few fds per frame.
fn send_sockets(s: &UnixStream, sockets: Vec<(i32, OwnedFd)>) -> anyhow::Result<()> {
    let mut chunks: Vec<&[(i32, OwnedFd)]> = sockets.chunks(ckpt_proto::frame::MAX_FDS).collect();
    if chunks.is_empty() {
        chunks.push(&[]);
    }
    let n = chunks.len();
    for (i, c) in chunks.into_iter().enumerate() {
        let msg = SocketFds {
            numbers: c.iter().map(|(n, _)| *n).collect(),
            last: i + 1 == n,
        };
        let fds: Vec<i32> = c.iter().map(|(_, f)| f.as_raw_fd()).collect();
        ckpt_proto::send(s, &msg, &fds).context("handing sockets to the restorer")?;
    }
    Ok(())
}

fn step(r: &Restorer, what: &TreeStep) -> anyhow::Result<()> {
    ckpt_proto::send(&r.ours, what, &[]).context("a tree step")?;
    answer_of(r)
}

fn answer_of(r: &Restorer) -> anyhow::Result<()> {
    let pid = r.planned.image().pid;
    r.ours.set_read_timeout(Some(RESTORE_TIMEOUT))?;
    let a = ckpt_proto::recv::<TreeAnswer>(&r.ours);
    r.ours.set_read_timeout(None)?;
    match a {
        Ok((TreeAnswer::Done, _)) => Ok(()),
        Ok((TreeAnswer::Failed { message }, _)) => bail!("restore of pid {pid} failed: {message}"),
        Err(e) => Err(why(r, anyhow!("restorer of pid {pid} stopped answering: {e}"))),
    }
}

/// A message to restorer `r` that could not be sent.
fn lost(r: &Restorer, e: ckpt_proto::FrameError) -> anyhow::Error {
    anyhow::Error::from(e).context(format!("restore of pid {}", r.planned.image().pid))
}

/// Why restorer `r` stopped answering: what it wrote on its status pipe before it exited, if
/// anything, else `e`.
fn why(r: &Restorer, e: anyhow::Error) -> anyhow::Error {
    let status = r
        .status
        .try_clone()
        .map_err(anyhow::Error::from)
        .and_then(|f| read_status(f, Duration::from_secs(5)));
    match status {
        Ok(Some(s)) => anyhow!("restore of pid {} failed: {}", r.planned.image().pid, describe(s)),
        _ => e,
    }
}

fn describe(s: Status) -> String {
    match s {
        Status::Text(t) => t,
        Status::Op { index, ret, kind, arg0 } => format!(
            "step {index} ({} at {arg0:#x}) failed: {}",
            syscall_name(kind),
            std::io::Error::from_raw_os_error((-ret) as i32)
        ),
    }
}

/// Reads the restorer's status pipe to EOF: `None` if it reported nothing (success).
fn read_status(pipe: OwnedFd, timeout: Duration) -> anyhow::Result<Option<Status>> {
    let deadline = Instant::now() + timeout;
    let mut f = std::fs::File::from(pipe);
    let mut buf = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("the restorer did not finish within {}s", timeout.as_secs());
        }
        let mut pfd = libc::pollfd {
            fd: f.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: pfd is a valid pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(i32::MAX as u128) as i32) };
        if r <= 0 {
            continue;
        }
        let mut chunk = [0u8; 4096];
        match f.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e).context("reading the restorer's status"),
        }
    }
    Ok(restore_status::decode(&buf))
}

fn syscall_name(nr: u64) -> String {
    let name = match nr as i64 {
        libc::SYS_mmap => "mmap",
        libc::SYS_munmap => "munmap",
        libc::SYS_mprotect => "mprotect",
        libc::SYS_mremap => "mremap",
        libc::SYS_pread64 => "pread",
        libc::SYS_prctl => "prctl",
        libc::SYS_rt_sigaction => "rt_sigaction",
        libc::SYS_prlimit64 => "prlimit",
        libc::SYS_clone3 => "clone3 (thread)",
        libc::SYS_arch_prctl => "arch_prctl",
        libc::SYS_rt_sigreturn => "rt_sigreturn",
        libc::SYS_setitimer => "setitimer",
        libc::SYS_timer_create => "timer_create",
        libc::SYS_sigaltstack => "sigaltstack",
        libc::SYS_timer_settime => "timer_settime",
        libc::SYS_rt_sigqueueinfo => "rt_sigqueueinfo (a pending signal)",
        libc::SYS_shmat => "shmat (a SysV segment)",
        libc::SYS_setgroups => "setgroups",
        libc::SYS_setresgid => "setresgid",
        libc::SYS_setresuid => "setresuid",
        libc::SYS_capset => "capset",
        _ => return format!("syscall {nr}"),
    };
    name.to_string()
}

/// Whether process `pid` (not ckptd's child) is gone or a zombie within a moment.
fn ended_soon(pid: i32) -> bool {
    let until = std::time::Instant::now() + Duration::from_secs(2);
    loop {
        if !ckpt_sys::procfs::alive(pid) {
            return true;
        }
        if std::time::Instant::now() >= until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
