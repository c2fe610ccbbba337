//! The node's part of a checkpoint. Phase 1 shuts the communication gate of every local
//! program (holding writes to the files to snapshot), reports the kernel's byte counts of each
//! TCP connection end and copies those files. Phase 2 waits until every byte the peers sent
//! has arrived, parks every local program (the per-host barrier: intra-host communication stops
//! here), reads each one and its files, lets them all run again and makes the images durable.

use super::prepare::Prepared;
use super::Node;
use crate::dump::{dump_parked, sockets, Dumped, PageTarget};
use crate::files::capture::Capture;
use crate::registry::Proc;
use anyhow::{anyhow, bail};
use ckpt_format::{CheckpointDir, FileRule, FileSummary, ProcessEntry, ProcessImage};
use ckpt_proto::{AppMsg, CheckpointMode, ConnEnd, NodeMsg, Phase};
use std::collections::HashMap;
use std::sync::{Arc, MutexGuard};
use std::time::{Duration, Instant};

const COMM_STOP_TIMEOUT_MS: u32 = 10_000;
const PARK_TIMEOUT_MS: u32 = 10_000;
/// How long phase 2 waits for bytes in flight to arrive.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a checkpoint waits for lazy restores to have loaded their pages.
const LAZY_WAIT: Duration = Duration::from_secs(600);

/// A checkpoint between its phases on this node.
pub struct Pending {
    pub dir: CheckpointDir,
    pub procs: Vec<Arc<Proc>>,
    /// When the gates were shut.
    pub shut: Instant,
    pub mode: CheckpointMode,
    /// Per pid: the previous checkpoint this one is incremental to.
    pub bases: HashMap<i32, (String, ProcessImage)>,
    /// Per pid: what was made ready before the stop (taken by the dump).
    pub prepared: std::sync::Mutex<HashMap<i32, Prepared>>,
    /// The files of the checkpoint, copied in phase 1 (taken by phase 2).
    pub files: std::sync::Mutex<Option<Capture>>,
    /// What this checkpoint saw of the host's shared memory, kept once it is committed.
    pub shared_seen: std::sync::Mutex<Option<crate::dump::shared_dirty::Seen>>,
}

pub(super) fn talk(p: &Proc) -> MutexGuard<'_, std::os::unix::net::UnixStream> {
    p.stream.lock().unwrap_or_else(|e| e.into_inner())
}

/// The process has exited (or is a zombie): it cannot answer any more.
fn exited(pid: i32) -> bool {
    !ckpt_sys::procfs::alive(pid)
}

/// The process behind this registration is gone: it exited, or its connection hung up (it
/// called exec, and the program it became registers anew).
fn gone(pid: i32, s: &std::os::unix::net::UnixStream) -> bool {
    exited(pid) || crate::registry::hung_up(s)
}

pub(super) fn lost(pid: i32) -> impl Fn(ckpt_proto::FrameError) -> anyhow::Error {
    move |e| anyhow!("process {pid} stopped answering ({e}); it may have exited")
}

/// A process parked by phase 2.
struct Stopped<'a> {
    proc: &'a Arc<Proc>,
    stream: &'a MutexGuard<'a, std::os::unix::net::UnixStream>,
    at: Instant,
    at_unix_us: u64,
    stop_us: u64,
    dumped: Option<Dumped>,
}

fn unix_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// For each TCP end between local programs, the bytes its peer has sent (once all are parked).
fn local_expectations(procs: &[Arc<Proc>]) -> Vec<(String, String, u64)> {
    let ends = conn_ends(procs);
    let sent: HashMap<(&str, &str), u64> = ends
        .iter()
        .map(|e| ((e.local.as_str(), e.peer.as_str()), e.sent))
        .collect();
    ends.iter()
        .filter_map(|e| {
            sent.get(&(e.peer.as_str(), e.local.as_str()))
                .map(|&n| (e.local.clone(), e.peer.clone(), n))
        })
        .collect()
}

/// Shuts the gate of `p`, holding writes to `hold`.
fn comm_stop(p: &Proc, hold: &[(u64, u64)]) -> anyhow::Result<()> {
    let pid = p.reg.pid;
    let s = talk(p);
    s.set_read_timeout(Some(Duration::from_millis(COMM_STOP_TIMEOUT_MS as u64 + 10_000)))?;
    ckpt_proto::send(
        &s,
        &NodeMsg::CommStop {
            timeout_ms: COMM_STOP_TIMEOUT_MS,
            hold_files: hold.to_vec(),
        },
        &[],
    )
    .map_err(lost(pid))?;
    match ckpt_proto::recv::<AppMsg>(&s).map_err(lost(pid))?.0 {
        AppMsg::CommStopped => Ok(()),
        AppMsg::CommStopFailed => bail!(
            "process {pid}: its communication could not be stopped within {} s: a send stayed blocked in \
             the kernel (its peer does not read), or a child it made with vfork has not exec'd yet",
            COMM_STOP_TIMEOUT_MS / 1000
        ),
        other => bail!("process {pid} answered {other:?} to comm-stop"),
    }
}

/// Tells every gated program to open its gate again.
fn reopen(procs: &[Arc<Proc>]) {
    for p in procs {
        let _ = ckpt_proto::send(&talk(p), &NodeMsg::CommResume, &[]);
    }
}

/// TCP connection ends of the local programs, with the kernel's counts.
fn conn_ends(procs: &[Arc<Proc>]) -> Vec<ConnEnd> {
    let mut ends = Vec::new();
    for p in procs {
        let pid = p.reg.pid;
        let Ok(fds) = ckpt_sys::procfs::list_numeric(&format!("/proc/{pid}/fd")) else {
            continue;
        };
        // The interposer's own connection is a Unix socket: not a TCP end, whatever its number.
        for fd in fds {
            let Ok(target) = ckpt_sys::procfs::readlink(&format!("/proc/{pid}/fd/{fd}")) else {
                continue;
            };
            if !target.starts_with("socket:") {
                continue;
            }
            if let Some((local, peer, c)) = sockets::tcp_end(pid, fd) {
                ends.push(ConnEnd {
                    pid,
                    fd,
                    local,
                    peer,
                    sent: c.sent,
                    received: c.received,
                });
            }
        }
    }
    ends
}

impl Node {
    pub fn phase1(&self, dir: CheckpointDir, mode: CheckpointMode, rules: &[FileRule]) -> anyhow::Result<Vec<ConnEnd>> {
        // Memory a lazy restore has not brought in yet cannot be read (see `crate::lazy`).
        if !self.lazy.wait_idle(LAZY_WAIT) {
            bail!(
                "host {}: a lazy restore is still loading pages after {} s; checkpoint again once it is done",
                self.host,
                LAZY_WAIT.as_secs()
            );
        }
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = pending.as_ref() {
            bail!("host {} is busy with checkpoint {}", self.host, p.dir.id);
        }
        self.meter.begin_checkpoint();
        let procs = self.registry.alive();
        if let Some(e) = procs.iter().find_map(|p| {
            let pid = p.reg.pid;
            crate::dump::attrs::traced(pid)
                .or_else(|| crate::dump::seccomp::strict(pid))
                .or_else(|| crate::dump::attrs::numa_policy(pid))
        }) {
            bail!("host {}: {e}", self.host);
        }
        // The cut must not wait on the copy (a busy machine slows it at nice 19): past this,
        // the pre-copy gives up and the stop copies the rest, and what is left of the
        // preparing is done at the ordinary priority.
        let deadline = Instant::now() + self.precopy_budget;
        let (bases, prepared) =
            super::background::run_until(deadline, || self.prepare_all(&dir, &procs, mode, deadline));
        // The files to snapshot: their writes are held from the gate's shutting to the park.
        let mut files = Capture::begin(&self.store, &dir, &self.host, self.files.rules_for(rules));
        let running: Vec<i32> = procs.iter().map(|p| p.reg.pid).collect();
        let (decided, hold) = files.before_stop(&running);
        let mut stopped: Vec<Arc<Proc>> = Vec::new();
        let mut left_out = Vec::new();
        for p in &procs {
            let pid = p.reg.pid;
            if let Err(e) = comm_stop(p, &hold) {
                if gone(pid, &talk(p)) {
                    // Gone before its communication stopped: not in this checkpoint (unless it
                    // exec'd and registers again, see below).
                    self.leave_out(&dir, pid);
                    left_out.push(pid);
                    continue;
                }
                reopen(&stopped);
                return Err(e.context(format!("host {}", self.host)));
            }
            stopped.push(p.clone());
        }
        // Children made before their parent's gate shut join it (see `children`).
        let (mut bases, mut prepared) = (bases, prepared);
        let joined = super::children::close(&self.registry, &stopped, &left_out, |p| match comm_stop(p, &hold) {
            Ok(()) => Ok(true),
            Err(_) if gone(p.reg.pid, &talk(p)) => Ok(false),
            Err(e) => Err(e),
        });
        match joined {
            Ok(joined) => {
                for p in joined {
                    // Whatever was prepared belonged to the program it was before an exec.
                    bases.remove(&p.reg.pid);
                    prepared.remove(&p.reg.pid);
                    stopped.push(p);
                }
            }
            Err(e) => {
                reopen(&stopped);
                return Err(e.context(format!("host {}", self.host)));
            }
        }
        let ends = conn_ends(&stopped);
        let shut = Instant::now();
        files.precopy(&decided);
        *pending = Some(Pending {
            dir,
            procs: stopped,
            shut,
            mode,
            bases,
            prepared: std::sync::Mutex::new(prepared),
            files: std::sync::Mutex::new(Some(files)),
            shared_seen: Default::default(),
        });
        Ok(ends)
    }

    /// `expect`: for each (local, peer) end, the bytes its peer has sent.
    pub fn phase2(
        &self,
        id: &str,
        expect: &[(String, String, u64)],
    ) -> anyhow::Result<(Vec<ProcessEntry>, Vec<FileSummary>)> {
        let pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let Some(p) = pending.as_ref().filter(|p| p.dir.id == id) else {
            bail!("host {}: checkpoint {id} has no phase 1 here", self.host);
        };
        let r = self.drain(&p.procs, expect).and_then(|_| self.local_checkpoint(p));
        r.map_err(|e| e.context(format!("host {}", self.host)))
    }

    /// Ends the checkpoint on this node: gates open; on abort the images go.
    pub fn finish(&self, id: &str, commit: bool) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = pending.take_if(|p| p.dir.id == id) {
            reopen(&p.procs);
            // Tracking was re-armed by this checkpoint: it is the base of the next one, or, if it
            // was aborted, the next one must be full.
            for proc in &p.procs {
                *proc.track_base.lock().unwrap_or_else(|e| e.into_inner()) = commit.then(|| id.to_string());
            }
            self.keep_shared(&p, id, commit);
            // Deleted checkpoints (retention, ckptctl delete) no longer need their files watched.
            self.files.watch.retain(|id| self.store.get(id).is_ok());
            self.files.dirs.retain(|id| self.store.get(id).is_ok());
            if !commit {
                self.files.watch.forget(id);
                self.files.dirs.forget(id);
            }
            if !commit && p.dir.path.exists() {
                let host_dir = p.dir.path.join(&self.host);
                let _ = std::fs::remove_dir_all(host_dir);
            }
        }
    }

    /// Aborts whatever checkpoint is between its phases (its manager is gone).
    pub fn abort_pending(&self) {
        let id = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|p| p.dir.id.clone());
        if let Some(id) = id {
            tracing::warn!(id, "manager lost mid-checkpoint: aborting it here");
            self.finish(&id, false);
        }
    }

    /// Waits until every byte sent to a local end has arrived at this host.
    fn drain(&self, procs: &[Arc<Proc>], expect: &[(String, String, u64)]) -> anyhow::Result<()> {
        if expect.is_empty() {
            return Ok(());
        }
        let want: HashMap<(&str, &str), u64> = expect.iter().map(|(l, p, n)| ((l.as_str(), p.as_str()), *n)).collect();
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        loop {
            let ends = conn_ends(procs);
            let short = ends.iter().find(|e| {
                want.get(&(e.local.as_str(), e.peer.as_str()))
                    .is_some_and(|&n| e.received < n)
            });
            match short {
                None => return Ok(()),
                Some(e) if Instant::now() > deadline => bail!(
                    "process {}: connection {} -> {} received {} of the {} bytes its peer sent",
                    e.pid,
                    e.local,
                    e.peer,
                    e.received,
                    want[&(e.local.as_str(), e.peer.as_str())]
                ),
                Some(_) => std::thread::sleep(Duration::from_millis(1)),
            }
        }
    }

    /// Parks every local program, reads each, releases them all, makes the images durable.
    fn local_checkpoint(&self, pending: &Pending) -> anyhow::Result<(Vec<ProcessEntry>, Vec<FileSummary>)> {
        let (dir, procs, shut) = (&pending.dir, &pending.procs[..], pending.shut);
        self.meter.checkpoint_phase(Phase::Parking, None);
        let streams: Vec<_> = procs.iter().map(|p| talk(p)).collect();
        let warm = crate::hot::warm();
        let mut parked: Vec<Stopped> = Vec::new();
        let mut result: anyhow::Result<()> = Ok(());
        // Every program is asked first, then the answers are taken in turn: the programs park
        // at the same time, and the first parked does not wait for the last to be asked.
        let t_park = Instant::now();
        let asked: Vec<anyhow::Result<()>> = procs
            .iter()
            .zip(&streams)
            .map(|(p, s)| {
                s.set_read_timeout(Some(Duration::from_millis(PARK_TIMEOUT_MS as u64 + 20_000)))?;
                ckpt_proto::send(
                    s,
                    &NodeMsg::Park {
                        timeout_ms: PARK_TIMEOUT_MS,
                    },
                    &[],
                )
                .map_err(lost(p.reg.pid))
            })
            .collect();
        // Every program asked is answered for, even after a failure: an answer left unread
        // would be taken for the answer to the next message.
        for ((p, s), sent) in procs.iter().zip(&streams).zip(asked) {
            let pid = p.reg.pid;
            let r = sent.and_then(|()| {
                let answer = super::park::answer(self, p, s, Duration::from_millis(PARK_TIMEOUT_MS as u64 + 20_000));
                match answer.map_err(lost(pid))? {
                    AppMsg::Parked { .. } => Ok(()),
                    AppMsg::ParkFailed { reason, tid } => {
                        bail!("process {pid}: thread {tid} could not be stopped: {reason}")
                    }
                    other => bail!("process {pid} answered {other:?} to park"),
                }
            });
            match r {
                Ok(()) => {
                    tracing::debug!(pid, park_us = t_park.elapsed().as_micros() as u64, "parked");
                    parked.push(Stopped {
                        proc: p,
                        stream: s,
                        at: Instant::now(),
                        at_unix_us: unix_us(),
                        stop_us: 0,
                        dumped: None,
                    })
                }
                Err(_) if gone(pid, s) => {
                    // Gone before it could be parked: not in this checkpoint (it was not at its
                    // instant, which is when the last process parks).
                    self.leave_out(dir, pid);
                }
                Err(e) => {
                    if result.is_ok() {
                        result = Err(e);
                    }
                }
            }
        }
        let t_parked = Instant::now();
        self.meter.checkpoint_phase(Phase::Reading, None);
        // No process of the checkpoint can make a child now: each live one must be parked too.
        if result.is_ok() {
            let pids: Vec<i32> = parked.iter().map(|st| st.proc.reg.pid).collect();
            if let Err(e) = super::children::check_parked(&pids) {
                result = Err(e.into());
            }
            tracing::debug!(children_us = t_parked.elapsed().as_micros() as u64, "children checked");
        }
        // Every local program is parked (the barrier): intra-host communication has stopped.
        // Bytes sent on local connections until now must be in their receivers' queues.
        if result.is_ok() {
            result = self.drain(procs, &local_expectations(procs));
        }
        // The pages of shared memory written since the last checkpoint, through any of its
        // holders' mappings, before any process is read.
        let shared = if result.is_ok() {
            self.take_shared(pending, parked.iter().map(|st| st.proc))
        } else {
            Default::default()
        };
        let shared = &shared;
        if result.is_ok() {
            // The first process is read on this thread: waking another core can take longer
            // than reading a small process.
            let outcomes: Vec<anyhow::Result<Dumped>> = std::thread::scope(|sc| {
                let hs: Vec<_> = parked
                    .iter()
                    .skip(1)
                    .map(|st| sc.spawn(|| self.dump_one(pending, st.proc, shared)))
                    .collect();
                let first = parked.first().map(|st| self.dump_one(pending, st.proc, shared));
                first
                    .into_iter()
                    .chain(
                        hs.into_iter()
                            .map(|h| h.join().unwrap_or_else(|_| Err(anyhow!("dump thread panicked")))),
                    )
                    .collect()
            });
            let mut refused = Vec::new();
            for (st, o) in parked.iter_mut().zip(outcomes) {
                match o {
                    Ok(d) => st.dumped = Some(d),
                    Err(e) if crate::dump::is_refusal(&e) => refused.push(format!("{e:#}")),
                    Err(e) if result.is_ok() => result = Err(e),
                    Err(_) => {}
                }
            }
            // Every fd ckpt cannot checkpoint, of every process, in one message.
            if result.is_ok() && !refused.is_empty() {
                result = Err(anyhow!("{}", refused.join("; ")));
            }
        }
        let mut file_records = Vec::new();
        if result.is_ok() {
            // The host's SysV objects, once for all its processes.
            let regs: Vec<_> = parked.iter().map(|st| &st.proc.reg).collect();
            result = crate::dump::sysv::capture(&regs, dir, &self.host, self.compress);
        }
        if result.is_ok() {
            let job = crate::dump::stdio::job(parked.iter().map(|st| &st.proc.stdio));
            let mut images: Vec<&mut ProcessImage> = parked
                .iter_mut()
                .filter_map(|st| st.dumped.as_mut().map(|d| &mut d.image))
                .collect();
            let refused = crate::dump::host::link(&mut images, &job);
            if !refused.is_empty() {
                result = Err(anyhow!("{}", refused.join("; ")));
            }

            let mut files = pending.files.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(f) = files.as_mut().filter(|_| result.is_ok()) {
                match f.at_park(&mut images, &self.files.watch, &dir.id) {
                    Ok(r) => file_records = r,
                    Err(e) => result = Err(e),
                }
            }
        }
        if result.is_ok() {
            // While parked: from this instant, what the processes do to directories is undone
            // by a restore of this checkpoint.
            let images: Vec<&ProcessImage> = parked
                .iter()
                .filter_map(|st| st.dumped.as_ref().map(|d| &d.image))
                .collect();
            let pids: Vec<i32> = images.iter().map(|i| i.pid).collect();
            self.files
                .dirs
                .mark(&dir.id, &pids, &crate::files::dirs::places(&images));
        }
        tracing::debug!(dump_us = t_parked.elapsed().as_micros() as u64, "parked work");
        let verdict = if result.is_ok() {
            NodeMsg::Resume
        } else {
            NodeMsg::Abort
        };
        for st in &mut parked {
            st.stop_us = st.at.elapsed().as_micros() as u64;
            if let Err(e) = ckpt_proto::send(st.stream, &verdict, &[]) {
                if result.is_ok() {
                    result = Err(lost(st.proc.reg.pid)(e));
                }
            }
        }
        drop(warm);
        // The gates open when the manager ends the checkpoint everywhere (`finish`); this is
        // how long they were shut until this host's part was read.
        let held_us = shut.elapsed().as_micros() as u64;
        let parked: Vec<(u64, u64, Dumped)> = parked
            .into_iter()
            .filter_map(|st| Some((st.at_unix_us, st.stop_us, st.dumped?)))
            .collect();
        drop(streams);
        result?;
        self.store_parked(pending, parked, file_records, held_us)
    }

    /// A process that exited before it was parked: whatever was prepared for it goes.
    fn leave_out(&self, dir: &CheckpointDir, pid: i32) {
        tracing::info!(
            pid,
            id = dir.id,
            "process exited before it was parked: left out of the checkpoint"
        );
        let _ = std::fs::remove_dir_all(dir.process_dir(&self.host, pid));
    }

    fn dump_one(
        &self,
        pending: &Pending,
        p: &Proc,
        shared: &crate::dump::shared_dirty::Written,
    ) -> anyhow::Result<Dumped> {
        let dir = &pending.dir;
        let pid = p.reg.pid;
        let ready = pending
            .prepared
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&pid)
            .unwrap_or_default();
        let store = match ready.store {
            Some(s) => s,
            None => self.open_store(dir, pid)?,
        };
        let target = PageTarget {
            store,
            rel: self.own_store(&dir.id, pid),
            base: pending.bases.get(&pid).map(|(i, b)| (i.as_str(), b)),
            pre: ready.pre,
            fixed: ready.fixed,
            window: ready.window,
            stop_the_world: pending.mode.stop_the_world,
            shared: shared.get(&pid),
        };
        dump_parked(&p.reg, target, &self.reaper).map_err(|e| {
            if exited(pid) {
                // Killed while parked: the next try's cut is taken without it.
                crate::dump::ExitedWhileRead { pid }.into()
            } else {
                e.into()
            }
        })
    }
}
