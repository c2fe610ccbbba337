//! Restoring this host's processes of a checkpoint: check everything first (images, pids,
//! every file), then put the files back and start one restorer per process with the
//! checkpointed pid, and wait until each program is back and its control thread has
//! reconnected.

use super::netrestore::{self, Key};
use crate::files::restore::{Applied, FileRestore};
use crate::node::{describe_status, Node};
use anyhow::{anyhow, bail, Context};
use ckpt_format::{read_record, FdKind, FileRule, MappingKind, PageStoreReader, ProcessImage, RecordKind};
use ckpt_proto::restore_status::{self, Status};
use ckpt_proto::{AppMsg, EndPlan, Registration, RestoreEnd, SocketFds};
use std::collections::HashMap;
use std::ffi::CString;
use std::io::Read;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const RESTORE_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Planned {
    image: ProcessImage,
    meta: PathBuf,
    /// Page stores in the order of the image's `stores`.
    pages: Vec<PathBuf>,
}

impl Planned {
    pub fn image(&self) -> &ProcessImage {
        &self.image
    }
    pub fn pages(&self) -> &[PathBuf] {
        &self.pages
    }
}

/// A restore between its prepare and connect steps on this node.
pub struct PendingRestore {
    id: String,
    planned: Vec<Planned>,
    listeners: HashMap<Key, TcpListener>,
    files: FileRestore,
}

impl Node {
    /// Reads and verifies every image of this host, checks that pids and tids are free and
    /// that every file can be brought back as its policy says, so that a bad image, a taken pid
    /// or a file changed by someone else changes nothing (every reason in one error); opens a
    /// rendezvous listener for each connection end that will accept.
    pub fn restore_prepare(&self, id: &str, rules: &[FileRule]) -> anyhow::Result<Vec<RestoreEnd>> {
        let (dir, manifest) = self.store.get(id)?;
        let mut planned = Vec::new();
        let mut problems = Vec::new();
        if let Some(host) = manifest.hosts.iter().find(|h| h.host == self.host) {
            for p in &host.processes {
                let meta = dir.meta_path(&self.host, p.pid);
                let pages = dir.pages_path(&self.host, p.pid);
                let image: ProcessImage = read_record(&meta, RecordKind::Process)?;
                // Every store of the chain, every run in it, is checked now.
                let mut paths = vec![pages];
                paths.extend(image.stores.iter().skip(1).map(|rel| self.store.root().join(rel)));
                for (i, path) in paths.iter().enumerate() {
                    let reader = PageStoreReader::open(path, if i == 0 { image.pages_len } else { 0 })?;
                    reader.verify(
                        image
                            .mappings
                            .iter()
                            .flat_map(|m| m.pages.iter())
                            .filter(|r| r.store as usize == i),
                    )?;
                }
                let pages = paths;
                for t in &image.threads {
                    if !ckpt_sys::spawn::free_within(t.tid, Duration::from_secs(1)) {
                        let who = ckpt_sys::spawn::describe_pid(t.tid);
                        let what = if t.tid == image.pid { "pid" } else { "thread id" };
                        problems.push(format!(
                            "{what} {} of checkpoint {id} is in use by another process ({who}); stop it, then restore again",
                            t.tid
                        ));
                    }
                }
                planned.push(Planned { image, meta, pages });
            }
        }
        problems.extend(super::sysv::check(&dir, &self.host));
        let images: Vec<&ProcessImage> = planned.iter().map(|p| &p.image).collect();
        let files = FileRestore::open(&self.store, &dir, &self.host, rules);
        match &files {
            Ok(f) => problems.extend(f.check(&images, &self.files.watch).err().unwrap_or_default()),
            Err(e) => problems.push(e.clone()),
        }
        let files = match files {
            Ok(f) if problems.is_empty() => f,
            _ => bail!("{}", problems.join("; ")),
        };
        let mut ends = Vec::new();
        let mut listeners = HashMap::new();
        for p in &planned {
            for f in &p.image.fds {
                if let FdKind::TcpConn {
                    local, peer, queued, ..
                } = &f.kind
                {
                    let acceptor = if local < peer {
                        let l = netrestore::acceptor(local, queued.len())?;
                        let addr = l.local_addr()?.to_string();
                        listeners.insert((local.clone(), peer.clone()), l);
                        Some(addr)
                    } else {
                        None
                    };
                    ends.push(RestoreEnd {
                        local: local.clone(),
                        peer: peer.clone(),
                        acceptor,
                    });
                }
            }
        }
        *self.pending_restore.lock().unwrap_or_else(|e| e.into_inner()) = Some(PendingRestore {
            id: id.to_string(),
            planned,
            listeners,
            files,
        });
        Ok(ends)
    }

    /// Re-creates the sockets, checks the files again and puts them back, then starts one
    /// restorer per process. Returns the pids and what was done to files.
    pub fn restore_connect(
        &self,
        id: &str,
        plan: &[(String, String, EndPlan)],
    ) -> anyhow::Result<(Vec<i32>, Vec<String>)> {
        let pending = self.pending_restore.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(pending) = pending.filter(|p| p.id == id) else {
            bail!("host {}: restore of {id} was not prepared here", self.host);
        };
        let stdio = std::mem::take(&mut *self.restore_stdio.lock().unwrap_or_else(|e| e.into_inner()));
        let plan: HashMap<Key, EndPlan> = plan
            .iter()
            .map(|(l, p, e)| ((l.clone(), p.clone()), e.clone()))
            .collect();
        let images: Vec<&ProcessImage> = pending.planned.iter().map(|p| &p.image).collect();
        let mut sockets = netrestore::make_sockets(&images, &plan, &pending.listeners)
            .map_err(|e| e.context(format!("host {}", self.host)))?;
        sockets.extend(super::pipes::make_pipes(&images).context("re-creating pipes")?);
        // The files may have changed since every node prepared: check again, then change them.
        let actions = pending
            .files
            .check(&images, &self.files.watch)
            .map_err(|p| anyhow!("restore of {id} refused, nothing was changed: {}", p.join("; ")))?;
        // Objects change what they replace (a named queue, a dead program's socket file): only
        // once the files are known to be restorable.
        sockets.extend(super::objects::make_objects(&images)?);
        // Kept until every process has attached its segments (see `sysv::Held`).
        let _sysv = super::sysv::make(&self.store.get(id)?.0, &self.host).context("re-creating SysV IPC objects")?;
        sockets.extend(super::shared_memory::make(&pending.planned).context("re-creating shared memory")?);
        let applied = match pending.files.apply(&actions) {
            Ok(a) => a,
            Err((e, done)) => bail!(
                "restore of {id} failed while putting files back ({e}); {}",
                changed_so_far(&done)
            ),
        };
        let mut started: Vec<i32> = Vec::new();
        for p in &pending.planned {
            let pid = p.image.pid;
            let numbers = p.image.fds.iter().map(|f| f.fd).chain(
                p.image
                    .mappings
                    .iter()
                    .filter_map(|m| m.shared_with.map(|s| s.handed_as())),
            );
            let mine: Vec<(i32, OwnedFd)> = numbers
                .filter_map(|n| sockets.remove(&(pid, n)).map(|s| (n, s)))
                .collect();
            let checks = mapped_checks(&p.image, &pending.files, &applied);
            match self.start_one(id, p, &stdio, mine, &checks) {
                Ok(pid) => started.push(pid),
                Err(e) => {
                    self.kill_restored(&started);
                    let e = e.context(format!("host {}", self.host));
                    if applied.notes.is_empty() {
                        return Err(e);
                    }
                    return Err(anyhow!("{e:#}; {}", changed_so_far(&applied)));
                }
            }
        }
        *self.last_restored.lock().unwrap_or_else(|e| e.into_inner()) = (id.to_string(), started.clone());
        Ok((started, applied.notes))
    }

    /// The restore failed elsewhere: take back what this node restored for it.
    pub fn restore_abort(&self, id: &str) {
        self.pending_restore.lock().unwrap_or_else(|e| e.into_inner()).take();
        let mut last = self.last_restored.lock().unwrap_or_else(|e| e.into_inner());
        if last.0 == id {
            let pids = std::mem::take(&mut last.1);
            self.kill_restored(&pids);
        }
    }

    fn kill_restored(&self, pids: &[i32]) {
        for pid in pids {
            self.registry.remove(*pid);
            // SAFETY: killing a child we restored.
            unsafe { libc::kill(*pid, libc::SIGKILL) };
        }
    }

    fn start_one(
        &self,
        id: &str,
        p: &Planned,
        stdio: &[OwnedFd],
        sockets: Vec<(i32, OwnedFd)>,
        checks: &[String],
    ) -> anyhow::Result<i32> {
        let node = self;
        let pid = p.image.pid;
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
        let prog = CString::new(node.restorer.as_os_str().as_bytes())?;
        let mut argv = vec![
            CString::new("ckpt-restore")?,
            CString::new("--meta")?,
            CString::new(p.meta.as_os_str().as_bytes())?,
            CString::new("--status-fd=3")?,
            CString::new("--control-fd=4")?,
        ];
        for path in &p.pages {
            argv.push(CString::new("--pages")?);
            argv.push(CString::new(path.as_os_str().as_bytes())?);
        }
        for a in checks {
            argv.push(CString::new(a.as_str())?);
        }
        let mut envp = vec![CString::new("GLIBC_TUNABLES=glibc.pthread.rseq=0")?];
        if let Ok(v) = std::env::var("RUST_LOG") {
            envp.push(CString::new(format!("RUST_LOG={v}"))?);
        }
        node.reaper.forget(pid);
        let child = ckpt_sys::spawn::spawn_with_pid(pid, &prog, &argv, &envp, &fds)?;
        // The restorer becomes the program: its writes to the checkpoint's files are the
        // checkpoint's own from its first instant.
        node.files.watch.adopt(child);
        drop(status_w);
        drop(theirs);
        tracing::info!(pid = child, id, "restorer started");
        // The re-created sockets go first, a few fds per frame.
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
            ckpt_proto::send(&ours, &msg, &fds).context("handing sockets to the restorer")?;
        }

        let fail = |e: anyhow::Error| -> anyhow::Error {
            // SAFETY: killing our own child.
            unsafe { libc::kill(child, libc::SIGKILL) };
            e
        };
        let status = read_status(status_r, RESTORE_TIMEOUT).map_err(fail)?;
        if let Some(s) = status {
            // The restorer exits after reporting: once it is reaped the pid is free again.
            node.reaper.wait_exit(pid, Duration::from_secs(5));
            let why = match s {
                Status::Text(t) => t,
                Status::Op { index, ret, kind, arg0 } => format!(
                    "step {index} ({} at {arg0:#x}) failed: {}",
                    syscall_name(kind),
                    std::io::Error::from_raw_os_error((-ret) as i32)
                ),
            };
            bail!("restore of pid {pid} failed: {why}");
        }
        ours.set_read_timeout(Some(RESTORE_TIMEOUT))?;
        match ckpt_proto::recv::<AppMsg>(&ours) {
            Ok((AppMsg::Restored { pid: got }, _)) if got == pid => {}
            Ok((other, _)) => {
                return Err(fail(anyhow!(
                    "restored pid {pid} sent {other:?} instead of its restore notice"
                )))
            }
            Err(e) => {
                let exit = node.reaper.wait_exit(pid, Duration::from_secs(2));
                // The restorer had finished (its status pipe closed without a failure), so the
                // program ran: a short-lived one (a shell's `sleep`) may well finish, with
                // success, before its control thread reports.
                if exit.is_some_and(|st| libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0) {
                    tracing::info!(
                        pid,
                        id,
                        "restored process ran to its end (exit code 0) before reporting"
                    );
                    return Ok(pid);
                }
                let how = exit.map(describe_status).unwrap_or_else(|| format!("no notice ({e})"));
                return Err(fail(anyhow!("restored pid {pid} did not come back: {how}")));
            }
        }
        ours.set_read_timeout(None)?;
        let reg = Registration {
            pid,
            exe: p.image.exe.clone(),
            args: p.image.args.clone(),
            slot_addr: p.image.restored_flag_addr - ckpt_proto::slots::ProcSlot::RESTORED_OFFSET,
            slot_len: std::mem::size_of::<ckpt_proto::slots::ProcSlot>() as u64,
            control_fd: p.image.control_fd,
            park_signal: 0,
            uffd_fd: p.image.uffd_fd,
        };
        node.registry.insert(reg, ours, Some(id.to_string()));
        tracing::info!(pid, id, "process restored");
        Ok(pid)
    }
}

/// The restorer's arguments for mapped files that are not unchanged: those put back are
/// checked against what was written (`--mapped-file PATH DEV INO SIZE MTIME_NS`), those kept
/// as they are not at all (`--mapped-any PATH`).
fn mapped_checks(img: &ProcessImage, files: &FileRestore, applied: &Applied) -> Vec<String> {
    let mut args = Vec::new();
    for m in &img.mappings {
        let MappingKind::File(id) = &m.kind else { continue };
        if args.contains(&id.path) {
            continue;
        }
        match (files.mapped_override(&id.path), applied.put_back.get(&id.path)) {
            (Some(true), Some(i)) => args.extend([
                "--mapped-file".to_string(),
                id.path.clone(),
                i.dev.to_string(),
                i.ino.to_string(),
                i.size.to_string(),
                i.mtime_ns.to_string(),
            ]),
            (Some(false), _) => args.extend(["--mapped-any".to_string(), id.path.clone()]),
            _ => {}
        }
    }
    args
}

fn changed_so_far(done: &Applied) -> String {
    if done.notes.is_empty() {
        "no file was changed".to_string()
    } else {
        format!("files were already changed: {}", done.notes.join("; "))
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
        _ => return format!("syscall {nr}"),
    };
    name.to_string()
}
