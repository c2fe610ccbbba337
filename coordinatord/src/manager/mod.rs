//! The system manager: runs both phases of a checkpoint against every node, matches the two
//! ends of each connection, commits or aborts everywhere; drives restores the same way. On a
//! single host it drives the embedded node only.

pub mod auth;
pub mod link;

use crate::node::Node;
use crate::progress::{Gather, NodeSink};
use anyhow::{anyhow, bail, Context};
use ckpt_format::{FileRule, HostEntry, Manifest};
use ckpt_proto::{CheckpointMode, CheckpointReport, CtlReply, CtlRequest, EndPlan, FromNode, Phase, Progress, ToNode};
use link::RemoteNode;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

pub struct Manager {
    pub node: Arc<Node>,
    pub secret: Vec<u8>,
    remotes: Mutex<Vec<Arc<RemoteNode>>>,
    /// Keep only this many checkpoints (the oldest go, folded into the others).
    keep: Option<usize>,
    /// One checkpoint or restore at a time in the cluster.
    busy: Mutex<()>,
}

/// How many times one `ckptctl checkpoint` may be tried (see [`Manager::checkpoint`]).
const CHECKPOINT_TRIES: u32 = 3;

/// A node's failure, as it reported it.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
struct NodeFailed {
    message: String,
    /// Another try of the checkpoint gets past it (see `crate::dump::try_again`).
    again: bool,
}

/// Whether another try of the checkpoint would get past `e` (a node said so).
fn retryable(e: &anyhow::Error) -> bool {
    e.chain()
        .any(|c| c.downcast_ref::<NodeFailed>().is_some_and(|f| f.again))
}

#[derive(Clone)]
enum Target {
    Local(Arc<Node>),
    Remote(Arc<RemoteNode>),
}

impl Target {
    fn host(&self) -> &str {
        match self {
            Target::Local(n) => &n.host,
            Target::Remote(r) => &r.host,
        }
    }

    /// Asks the node; its progress reports, while it answers, go to `sink`.
    fn call(&self, req: &ToNode, sink: Option<NodeSink<'_>>) -> anyhow::Result<FromNode> {
        let r = match self {
            Target::Local(n) => n.meter.watch(sink, || n.handle(req.clone())),
            Target::Remote(r) => r.call(req, sink)?,
        };
        match r {
            FromNode::Failed { message, again } => Err(NodeFailed { message, again }.into()),
            ok => Ok(ok),
        }
    }
}

/// Calls every target at once; results in the targets' order. Their progress goes to `g`.
fn par<F>(targets: &[Target], g: Option<&Gather>, f: F) -> Vec<anyhow::Result<FromNode>>
where
    F: Fn(&Target) -> ToNode + Sync,
{
    std::thread::scope(|s| {
        let hs: Vec<_> = targets
            .iter()
            .map(|t| {
                s.spawn(|| {
                    let report = |p| {
                        if let Some(g) = g {
                            g.node(t.host(), p)
                        }
                    };
                    t.call(&f(t), g.map(|_| &report as NodeSink<'_>))
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(anyhow!("manager thread panicked"))))
            .collect()
    })
}

fn first_error(rs: Vec<anyhow::Result<FromNode>>) -> anyhow::Result<Vec<FromNode>> {
    rs.into_iter().collect()
}

/// Every node's answer, or the failures of all nodes in one error (each names its host), so
/// that the user learns everything to fix at once; a failure another try gets past is returned
/// alone, for the retry.
fn all_errors(rs: Vec<anyhow::Result<FromNode>>) -> anyhow::Result<Vec<FromNode>> {
    let (ok, errs): (Vec<_>, Vec<_>) = rs.into_iter().partition(|r| r.is_ok());
    let mut errs: Vec<anyhow::Error> = errs.into_iter().filter_map(|r| r.err()).collect();
    if errs.is_empty() {
        return Ok(ok.into_iter().filter_map(|r| r.ok()).collect());
    }
    if errs.len() == 1 || errs.iter().any(retryable) {
        let i = errs.iter().position(retryable).unwrap_or(0);
        return Err(errs.swap_remove(i));
    }
    let all: Vec<String> = errs.iter().map(|e| format!("{e:#}")).collect();
    Err(anyhow::anyhow!("{}", all.join("; ")))
}

impl Manager {
    pub fn new(node: Arc<Node>, secret: Vec<u8>, keep: Option<usize>) -> Self {
        Self {
            node,
            secret,
            keep,
            remotes: Mutex::new(Vec::new()),
            busy: Mutex::new(()),
        }
    }

    pub fn add_remote(&self, r: Arc<RemoteNode>) {
        let mut v = self.remotes.lock().unwrap_or_else(|e| e.into_inner());
        v.retain(|x| x.host != r.host);
        v.push(r);
    }

    fn targets(&self) -> Vec<Target> {
        let mut v = self.remotes.lock().unwrap_or_else(|e| e.into_inner());
        v.retain(|r| r.is_connected());
        let mut t = vec![Target::Local(self.node.clone())];
        t.extend(v.iter().cloned().map(Target::Remote));
        t
    }

    /// Answers `req`; a checkpoint or restore that asked for progress reports it to `sink`
    /// meanwhile.
    pub fn answer(&self, req: CtlRequest, sink: &(dyn Fn(Progress) + Sync)) -> CtlReply {
        let err = |e: anyhow::Error| CtlReply::Error {
            message: format!("{e:#}"),
        };
        match req {
            CtlRequest::Ping => CtlReply::Pong {
                version: ckpt_proto::PROTO_VERSION,
            },
            CtlRequest::Checkpoint {
                hold_phase1_ms,
                mode,
                file_policies,
                progress,
            } => {
                let g = Gather::new(sink);
                self.checkpoint(hold_phase1_ms, mode, &file_policies, progress.then_some(&g))
                    .map(CtlReply::Checkpointed)
                    .unwrap_or_else(err)
            }
            CtlRequest::Restore {
                id,
                file_policies,
                progress,
                lazy,
            } => {
                let g = Gather::new(sink);
                self.restore(&id, &file_policies, lazy, progress.then_some(&g))
                    .map(|(pids, files)| CtlReply::Restored { id, pids, files })
                    .unwrap_or_else(err)
            }
            CtlRequest::Status => {
                let rs = par(&self.targets(), None, |_| ToNode::Status);
                let mut all = Vec::new();
                for r in rs {
                    match r {
                        Ok(FromNode::Status(s)) => all.extend(s),
                        Ok(_) => {}
                        Err(e) => return err(e),
                    }
                }
                CtlReply::Status(all)
            }
            CtlRequest::List => match self.node.store.list() {
                Ok(list) => CtlReply::List(list.iter().map(Into::into).collect()),
                Err(e) => err(e.into()),
            },
            CtlRequest::Show { id } => crate::server::show(&self.node, &id).unwrap_or_else(err),
            CtlRequest::Delete { id } => {
                let _busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(pids) = self.node.lazy.reading(&id) {
                    let pids: Vec<String> = pids.iter().map(|p| p.to_string()).collect();
                    return err(anyhow!(
                        "checkpoint {id} is being read by a lazy restore (pid {}); delete it once its pages are loaded (ckptctl status shows \"loading\" until then)",
                        pids.join(", ")
                    ));
                }
                match self.node.store.delete(&id) {
                    Ok(folded) => {
                        tracing::info!(id, ?folded, "checkpoint deleted");
                        CtlReply::Deleted { id }
                    }
                    Err(e) => err(e.into()),
                }
            }
            // Taken over by the local connection (see `crate::node::attach`); never forwarded.
            CtlRequest::Attach { .. } | CtlRequest::WaitLoaded { .. } => CtlReply::Error {
                message: "attach and waiting for a lazy restore are answered by the local ckptd only".to_string(),
            },
        }
    }

    /// Takes a checkpoint. A failure another try gets past (a program discarded memory the
    /// store window still held, a process exited while parked, threads changed under the park)
    /// is tried again at once, the last time without store windows: the programs only saw
    /// another short stop, and the user a checkpoint that succeeded.
    pub fn checkpoint(
        &self,
        hold_phase1_ms: u32,
        mode: CheckpointMode,
        file_policies: &[FileRule],
        g: Option<&Gather>,
    ) -> anyhow::Result<CheckpointReport> {
        let _busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        let mut mode = mode;
        for attempt in 1.. {
            match self.checkpoint_once(hold_phase1_ms, mode, file_policies, g) {
                Err(e) if attempt < CHECKPOINT_TRIES && retryable(&e) => {
                    tracing::info!(attempt, "checkpoint tried again: {e:#}");
                    mode.no_window = true;
                }
                r => return r,
            }
        }
        unreachable!("the loop returns")
    }

    fn checkpoint_once(
        &self,
        hold_phase1_ms: u32,
        mode: CheckpointMode,
        file_policies: &[FileRule],
        g: Option<&Gather>,
    ) -> anyhow::Result<CheckpointReport> {
        let t0 = Instant::now();
        if let Some(g) = g {
            g.enter(Phase::Phase1, true);
        }
        let targets = self.targets();
        let dir = self
            .node
            .store
            .begin()
            .context("cannot create the checkpoint directory")?;
        let id = dir.id.clone();
        tracing::info!(id, nodes = targets.len(), "checkpoint: phase 1");
        let abort = |e: anyhow::Error| -> anyhow::Error {
            tracing::warn!(id, "checkpoint aborted: {e:#}");
            let _ = par(&targets, None, |_| ToNode::Finish {
                id: id.clone(),
                commit: false,
            });
            let _ = self.node.store.remove(&dir);
            e
        };

        // Phase 1: communication stops everywhere; each node reports its connection ends.
        let p1 = first_error(par(&targets, g, |_| ToNode::Phase1 {
            id: id.clone(),
            mode,
            file_policies: file_policies.to_vec(),
        }))
        .map_err(abort)?;
        let phase1_us = t0.elapsed().as_micros() as u64;
        // Inter-host sends are held from here until every node was told the checkpoint is over.
        let gates_shut = Instant::now();
        if hold_phase1_ms > 0 {
            // A testing hook: show what a long phase 1 does to the programs.
            std::thread::sleep(std::time::Duration::from_millis(hold_phase1_ms as u64));
        }
        let t2 = Instant::now();
        let mut ends = Vec::new();
        for (t, r) in targets.iter().zip(p1) {
            if let FromNode::Phase1Done { ends: e } = r {
                ends.extend(e.into_iter().map(|e| (t.host().to_string(), e)));
            }
        }
        // Each receiving end must get what its peer sent before it is checkpointed.
        let sent: HashMap<(&str, &str), u64> = ends
            .iter()
            .map(|(_, e)| ((e.local.as_str(), e.peer.as_str()), e.sent))
            .collect();
        let expect_for = |host: &str| -> Vec<(String, String, u64)> {
            ends.iter()
                .filter(|(h, _)| h == host)
                .filter_map(|(_, e)| {
                    sent.get(&(e.peer.as_str(), e.local.as_str()))
                        .map(|&n| (e.local.clone(), e.peer.clone(), n))
                })
                .collect()
        };

        tracing::info!(id, ends = ends.len(), "checkpoint: phase 2");
        let p2 = all_errors(par(&targets, g, |t| ToNode::Phase2 {
            id: id.clone(),
            expect: expect_for(t.host()),
        }))
        .map_err(abort)?;
        let phase2_us = t2.elapsed().as_micros() as u64;
        let mut hosts = Vec::new();
        for (t, r) in targets.iter().zip(p2) {
            if let FromNode::Phase2Done { processes, files } = r {
                if !processes.is_empty() {
                    hosts.push(HostEntry {
                        host: t.host().to_string(),
                        processes,
                        files,
                    });
                }
            }
        }
        if hosts.is_empty() {
            return Err(abort(anyhow!(
                "no process is registered with ckptd; start programs with ckpt-run first"
            )));
        }
        if let Some(g) = g {
            g.enter(Phase::Committing, false);
        }
        let duration_us = t0.elapsed().as_micros() as u64;
        // The checkpoint's parent: the one all its processes are incremental to, if they agree.
        let mut parents = hosts.iter().flat_map(|h| h.processes.iter().map(|p| p.parent.clone()));
        let first = parents.next().flatten();
        let parent = if parents.all(|p| p == first) { first } else { None };
        let manifest = Manifest {
            id: id.clone(),
            parent,
            created_unix_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            hosts,
            duration_us,
        };
        self.node
            .store
            .commit(&dir, &manifest)
            .context("cannot commit the checkpoint")
            .map_err(abort)?;
        let _ = par(&targets, None, |_| ToNode::Finish {
            id: id.clone(),
            commit: true,
        });
        let held_us = gates_shut.elapsed().as_micros() as u64;
        if let Some(keep) = self.keep {
            match self.node.store.retain(keep) {
                Ok(gone) if !gone.is_empty() => tracing::info!(?gone, keep, "retention: deleted old checkpoints"),
                Ok(_) => {}
                Err(e) => tracing::warn!("retention: {e}"),
            }
        }
        let report = CheckpointReport {
            id: id.clone(),
            processes: manifest.processes().count() as u32,
            stored_bytes: manifest.stored_bytes(),
            duration_us,
            max_stop_us: manifest.processes().map(|(_, p)| p.stop_us).max().unwrap_or(0),
            first_parked_at_us: manifest.processes().map(|(_, p)| p.parked_at_us).min().unwrap_or(0),
            max_held_us: held_us,
            max_store_us: manifest.processes().map(|(_, p)| p.store_us).max().unwrap_or(0),
            window_bytes: manifest.processes().map(|(_, p)| p.window_bytes).sum(),
            window_faults: manifest.processes().map(|(_, p)| p.window_faults).sum(),
            phase1_us,
            phase2_us,
        };
        tracing::info!(
            id,
            bytes = report.stored_bytes,
            us = duration_us,
            "checkpoint committed"
        );
        Ok(report)
    }

    /// Restores checkpoint `id`: every node checks everything first (images, pids, files) and
    /// nothing changes unless all agree. Returns the pids and what was done to files.
    pub fn restore(
        &self,
        id: &str,
        file_policies: &[FileRule],
        lazy: bool,
        g: Option<&Gather>,
    ) -> anyhow::Result<(Vec<i32>, Vec<String>)> {
        let _busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(g) = g {
            g.enter(Phase::CheckingFiles, true);
        }
        let (_, manifest) = self.node.store.get(id)?;
        let all = self.targets();
        let mut targets = Vec::new();
        for h in &manifest.hosts {
            match all.iter().find(|t| t.host() == h.host) {
                Some(t) => targets.push(t.clone()),
                None => bail!(
                    "host {} of checkpoint {id} has no ckptd connected to the manager; start it with --join",
                    h.host
                ),
            }
        }
        let abort = |e: anyhow::Error| -> anyhow::Error {
            tracing::warn!(id, "restore aborted: {e:#}");
            let _ = par(&targets, None, |_| ToNode::RestoreAbort { id: id.to_string() });
            e
        };
        let prepared = par(&targets, g, |_| ToNode::RestorePrepare {
            id: id.to_string(),
            file_policies: file_policies.to_vec(),
            lazy,
        });
        // Every node's reasons, in one line: the user fixes them all at once.
        let refusals: Vec<String> = targets
            .iter()
            .zip(&prepared)
            .filter_map(|(t, r)| {
                let e = r.as_ref().err()?;
                Some(if targets.len() > 1 {
                    format!("host {}: {e:#}", t.host())
                } else {
                    format!("{e:#}")
                })
            })
            .collect();
        if !refusals.is_empty() {
            return Err(abort(anyhow!(
                "restore of {id} refused, nothing was changed: {}",
                refusals.join("; ")
            )));
        }
        let prepared = first_error(prepared)?;
        let mut ends = Vec::new();
        for (t, r) in targets.iter().zip(prepared) {
            if let FromNode::RestorePrepared { ends: e } = r {
                ends.extend(e.into_iter().map(|e| (t.host().to_string(), e)));
            }
        }
        let acceptors: HashMap<(&str, &str), Option<&String>> = ends
            .iter()
            .map(|(_, e)| ((e.local.as_str(), e.peer.as_str()), e.acceptor.as_ref()))
            .collect();
        let plan_for = |host: &str| -> Vec<(String, String, EndPlan)> {
            ends.iter()
                .filter(|(h, _)| h == host)
                .map(|(_, e)| {
                    let plan = match acceptors.get(&(e.peer.as_str(), e.local.as_str())) {
                        None => EndPlan::Closed,
                        Some(_) if e.acceptor.is_some() => EndPlan::Accept,
                        Some(Some(to)) => EndPlan::Connect { to: (*to).clone() },
                        Some(None) => EndPlan::Closed,
                    };
                    (e.local.clone(), e.peer.clone(), plan)
                })
                .collect()
        };
        let restored = par(&targets, g, |t| ToNode::RestoreConnect {
            id: id.to_string(),
            plan: plan_for(t.host()),
        });
        if restored.iter().any(|r| r.is_err()) {
            // Nodes apply their files independently: say what the others already changed.
            let mut why: Vec<String> = restored
                .iter()
                .filter_map(|r| r.as_ref().err().map(|e| format!("{e:#}")))
                .collect();
            for (t, r) in targets.iter().zip(&restored) {
                if let Ok(FromNode::Restored { files, .. }) = r {
                    if !files.is_empty() {
                        why.push(format!(
                            "host {} had already changed files: {}",
                            t.host(),
                            files.join("; ")
                        ));
                    }
                }
            }
            return Err(abort(anyhow!("{}", why.join("; "))));
        }
        let restored = first_error(restored)?;
        let (mut pids, mut files) = (Vec::new(), Vec::new());
        for r in restored {
            if let FromNode::Restored { pids: p, files: f } = r {
                pids.extend(p);
                files.extend(f);
            }
        }
        Ok((pids, files))
    }
}
