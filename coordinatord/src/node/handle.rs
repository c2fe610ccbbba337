//! A manager's request to this node, from the embedded manager or over the cluster link.

use super::Node;
use ckpt_proto::{FromNode, ProcessStatus, ToNode};

impl Node {
    pub fn handle(&self, req: ToNode) -> FromNode {
        let failed = |e: anyhow::Error| FromNode::Failed {
            again: crate::dump::try_again(&e),
            message: format!("{e:#}"),
        };
        match req {
            ToNode::Phase1 {
                id,
                mode,
                file_policies,
            } => {
                let dir = match self.store.dir_for(&id) {
                    Ok(d) => d,
                    Err(e) => return failed(e.into()),
                };
                self.phase1(dir, mode, &file_policies)
                    .map(|ends| FromNode::Phase1Done { ends })
                    .unwrap_or_else(failed)
            }
            ToNode::Phase2 { id, expect } => self
                .phase2(&id, &expect)
                .map(|(processes, files)| FromNode::Phase2Done { processes, files })
                .unwrap_or_else(failed),
            ToNode::Finish { id, commit } => {
                self.finish(&id, commit);
                FromNode::Done
            }
            ToNode::Status => FromNode::Status(self.status()),
            ToNode::RestorePrepare {
                id,
                file_policies,
                lazy,
            } => self
                .restore_prepare(&id, &file_policies, lazy)
                .map(|ends| FromNode::RestorePrepared { ends })
                .unwrap_or_else(failed),
            ToNode::RestoreConnect { id, plan } => self
                .restore_connect(&id, &plan)
                .map(|(pids, files)| FromNode::Restored { pids, files })
                .unwrap_or_else(failed),
            ToNode::RestoreAbort { id } => {
                self.restore_abort(&id);
                FromNode::Done
            }
        }
    }

    pub fn status(&self) -> Vec<ProcessStatus> {
        self.registry
            .alive()
            .iter()
            .map(|p| ProcessStatus {
                host: self.host.clone(),
                pid: p.reg.pid,
                exe: p.reg.exe.clone(),
                args: p.reg.args.clone(),
                threads: ckpt_sys::procfs::stat_mm(p.reg.pid)
                    .map(|s| s.num_threads as u32)
                    .unwrap_or(0),
                restored_from: p.restored_from.clone(),
                loading: self.lazy.percent(p.reg.pid),
            })
            .collect()
    }
}
