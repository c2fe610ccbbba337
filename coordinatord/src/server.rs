//! The local Unix socket: programs register here, `ckptctl` and `ckpt-run` ask here.

use crate::manager::{link, Manager};
use crate::node::Node;
use ckpt_proto::{AppMsg, CtlReply, CtlRequest, Hello, NodeMsg, Progress, Welcome, PROTO_VERSION};
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;

/// Who answers `ckptctl`: the manager in this daemon, or the one this node joined.
pub enum Role {
    Manager(Arc<Manager>),
    Joined { manager: String, secret: Vec<u8> },
}

pub struct Ctx {
    pub node: Arc<Node>,
    pub role: Role,
}

pub fn serve(ctx: Arc<Ctx>, listener: UnixListener) {
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let ctx = ctx.clone();
        let spawned = std::thread::Builder::new().name("conn".into()).spawn(move || {
            if let Err(e) = handle(&ctx, conn) {
                tracing::debug!("connection ended: {e:#}");
            }
        });
        if let Err(e) = spawned {
            tracing::error!("cannot start a connection thread: {e}");
        }
    }
}

fn handle(ctx: &Ctx, s: UnixStream) -> anyhow::Result<()> {
    let node = &ctx.node;
    let cred = getsockopt(&s, PeerCredentials)?;
    let (hello, _) = ckpt_proto::recv::<Hello>(&s)?;
    let version = match hello {
        Hello::App { version } | Hello::Ctl { version } => version,
    };
    let me = ckpt_sys::peer::euid();
    if matches!(hello, Hello::App { .. }) && me != 0 && cred.uid() != me {
        // Its tracker and the right to trace it would come with the registration.
        let reason =
            format!("this ckptd runs as uid {me} and takes only that user's programs; each user runs their own ckptd");
        ckpt_proto::send(&s, &Welcome::Refused { reason }, &[])?;
        return Ok(());
    }
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
                anyhow::bail!("a program's first message was not its registration")
            };
            if reg.pid != cred.pid() {
                anyhow::bail!("registration for pid {} came from pid {}", reg.pid, cred.pid());
            }
            // Read while the program waits for its answer, before it can move its stdio.
            let stdio = crate::dump::stdio::at_start(reg.pid);
            // Before the answer: the program's first change to a directory is its own.
            node.files.dirs.register(reg.pid, false);
            ckpt_proto::send(&s, &NodeMsg::Registered, &[])?;
            tracing::info!(pid = reg.pid, exe = %reg.exe, "registered");
            node.registry.insert(reg, s, None, stdio);
        }
        Hello::Ctl { .. } => loop {
            let (req, fds) = match ckpt_proto::recv::<CtlRequest>(&s) {
                Ok(r) => r,
                Err(ckpt_proto::FrameError::Closed) => return Ok(()),
                Err(e) => return Err(e.into()),
            };
            let reply = if cred.uid() != 0 && cred.uid() != me {
                CtlReply::Error {
                    message: not_yours(cred.uid(), me),
                }
            } else if let CtlRequest::Attach { id } = &req {
                // The connection now belongs to the job until it ends or ckptctl leaves.
                return crate::node::attach(node, &s, id);
            } else if let CtlRequest::WaitLoaded { id, progress } = &req {
                let sink = |p| {
                    let _ = ckpt_proto::send(&s, &CtlReply::Progress(p), &[]);
                };
                let sink: &dyn Fn(Progress) = &sink;
                node.lazy.wait_loaded(id, progress.then_some(sink))
            } else {
                // Progress of a checkpoint or restore, when asked for, comes before its answer.
                let sink = |p| {
                    let _ = ckpt_proto::send(&s, &CtlReply::Progress(p), &[]);
                };
                answer(ctx, req, fds, &sink)
            };
            ckpt_proto::send(&s, &reply, &[])?;
        },
    }
    Ok(())
}

/// Why user `peer` may not control this ckptd (run by `me`), and what they can do: each user
/// runs their own ckptd. Their own socket is named for them (the client may have been pointed
/// here on purpose, so its defaults are no guide).
fn not_yours(peer: u32, me: u32) -> String {
    let runtime = std::path::PathBuf::from(format!("/run/user/{peer}"));
    let socket = ckpt_sys::paths::user_socket(peer, Some(runtime).filter(|d| d.is_dir()));
    let from = if me == 0 {
        "uid 0 only".to_string()
    } else {
        format!("uid {me} and root only")
    };
    format!(
        "permission denied: this ckptd runs as uid {me} and takes commands from {from}; each user runs \
         their own ckptd: as uid {peer}, start `ckptd --socket {}` and pass that socket to ckptctl and \
         ckpt-run (--socket or CKPT_SOCKET)",
        socket.display()
    )
}

fn answer(ctx: &Ctx, req: CtlRequest, fds: Vec<OwnedFd>, sink: &(dyn Fn(Progress) + Sync)) -> CtlReply {
    let restore = matches!(req, CtlRequest::Restore { .. });
    if restore {
        // Programs restored on this host get the requester's stdio.
        *ctx.node.restore_stdio.lock().unwrap_or_else(|e| e.into_inner()) = fds;
    }
    let reply = answer_role(ctx, req, sink);
    if restore {
        // A restore refused before it reached its programs must not keep the requester's
        // stdio open (a `ckptctl restore | cut` would never see its end).
        drop(std::mem::take(
            &mut *ctx.node.restore_stdio.lock().unwrap_or_else(|e| e.into_inner()),
        ));
    }
    reply
}

fn answer_role(ctx: &Ctx, req: CtlRequest, sink: &(dyn Fn(Progress) + Sync)) -> CtlReply {
    match &ctx.role {
        Role::Manager(m) => m.answer(req, sink),
        Role::Joined { .. } if matches!(req, CtlRequest::Ping) => CtlReply::Pong { version: PROTO_VERSION },
        Role::Joined { manager, secret } => {
            link::forward(manager, secret, &ctx.node.host, &req, sink).unwrap_or_else(|e| CtlReply::Error {
                message: format!("{e:#}"),
            })
        }
    }
}

pub fn show(node: &Node, id: &str) -> anyhow::Result<CtlReply> {
    let (dir, manifest) = node.store.get(id)?;
    let mut images = Vec::new();
    for (host, p) in manifest.processes() {
        let image = ckpt_format::read_record(&dir.meta_path(host, p.pid), ckpt_format::RecordKind::Process)?;
        images.push((host.to_string(), image));
    }
    Ok(CtlReply::Show { manifest, images })
}
