//! The local Unix socket: programs register here, `ckptctl` and `ckpt-run` ask here.

use crate::node::Node;
use crate::{checkpoint, restore};
use ckpt_proto::{AppMsg, CtlReply, CtlRequest, Hello, NodeMsg, ProcessStatus, Welcome, PROTO_VERSION};
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;

pub fn serve(node: Arc<Node>, listener: UnixListener) {
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let node = node.clone();
        let spawned = std::thread::Builder::new().name("conn".into()).spawn(move || {
            if let Err(e) = handle(&node, conn) {
                tracing::debug!("connection ended: {e:#}");
            }
        });
        if let Err(e) = spawned {
            tracing::error!("cannot start a connection thread: {e}");
        }
    }
}

fn handle(node: &Node, s: UnixStream) -> anyhow::Result<()> {
    let cred = getsockopt(&s, PeerCredentials)?;
    let (hello, _) = ckpt_proto::recv::<Hello>(&s)?;
    let version = match hello {
        Hello::App { version } | Hello::Ctl { version } => version,
    };
    if version != PROTO_VERSION {
        let reason = format!(
            "protocol version {version} is not supported (ckptd speaks {PROTO_VERSION}); use matching ckpt binaries"
        );
        ckpt_proto::send(&s, &Welcome::Refused { reason }, &[])?;
        return Ok(());
    }
    ckpt_proto::send(&s, &Welcome::Ok { version: PROTO_VERSION }, &[])?;
    match hello {
        Hello::App { .. } => {
            let (msg, _) = ckpt_proto::recv::<AppMsg>(&s)?;
            let AppMsg::Register(reg) = msg else {
                anyhow::bail!("expected a registration, got {msg:?}")
            };
            if reg.pid != cred.pid() {
                anyhow::bail!("registration for pid {} came from pid {}", reg.pid, cred.pid());
            }
            ckpt_proto::send(&s, &NodeMsg::Registered, &[])?;
            tracing::info!(pid = reg.pid, exe = %reg.exe, "registered");
            node.registry.insert(reg, s, None);
        }
        Hello::Ctl { .. } => {
            // SAFETY: geteuid has no preconditions.
            let me = unsafe { libc::geteuid() };
            loop {
                let (req, fds) = match ckpt_proto::recv::<CtlRequest>(&s) {
                    Ok(r) => r,
                    Err(ckpt_proto::FrameError::Closed) => return Ok(()),
                    Err(e) => return Err(e.into()),
                };
                let reply = if cred.uid() != 0 && cred.uid() != me {
                    CtlReply::Error {
                        message: format!("permission denied: uid {} may not control this ckptd", cred.uid()),
                    }
                } else {
                    answer(node, req, fds)
                };
                ckpt_proto::send(&s, &reply, &[])?;
            }
        }
    }
    Ok(())
}

fn answer(node: &Node, req: CtlRequest, fds: Vec<OwnedFd>) -> CtlReply {
    let err = |e: anyhow::Error| CtlReply::Error {
        message: format!("{e:#}"),
    };
    match req {
        CtlRequest::Ping => CtlReply::Pong { version: PROTO_VERSION },
        CtlRequest::Checkpoint => checkpoint::checkpoint(node)
            .map(CtlReply::Checkpointed)
            .unwrap_or_else(err),
        CtlRequest::List => match node.store.list() {
            Ok(list) => CtlReply::List(list.iter().map(Into::into).collect()),
            Err(e) => err(e.into()),
        },
        CtlRequest::Show { id } => show(node, &id).unwrap_or_else(err),
        CtlRequest::Status => CtlReply::Status(
            node.registry
                .alive()
                .iter()
                .map(|p| ProcessStatus {
                    host: node.host.clone(),
                    pid: p.reg.pid,
                    exe: p.reg.exe.clone(),
                    args: p.reg.args.clone(),
                    threads: ckpt_sys::procfs::stat_mm(p.reg.pid)
                        .map(|s| s.num_threads as u32)
                        .unwrap_or(0),
                    restored_from: p.restored_from.clone(),
                })
                .collect(),
        ),
        CtlRequest::Restore { id } => match restore::restore(node, &id, fds) {
            Ok(pids) => CtlReply::Restored { id, pids },
            Err(e) => err(e),
        },
        CtlRequest::Delete { id } => {
            let _busy = node.busy.lock().unwrap_or_else(|e| e.into_inner());
            match node.store.get(&id).and_then(|(dir, _)| node.store.remove(&dir)) {
                Ok(()) => CtlReply::Deleted { id },
                Err(e) => err(e.into()),
            }
        }
    }
}

fn show(node: &Node, id: &str) -> anyhow::Result<CtlReply> {
    let (dir, manifest) = node.store.get(id)?;
    let mut images = Vec::new();
    for (host, p) in manifest.processes() {
        let image = ckpt_format::read_record(&dir.meta_path(host, p.pid), ckpt_format::RecordKind::Process)?;
        images.push((host.to_string(), image));
    }
    Ok(CtlReply::Show { manifest, images })
}
