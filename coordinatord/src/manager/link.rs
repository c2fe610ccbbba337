//! The TCP links between the manager and the nodes.

use super::{auth, Manager};
use crate::node::Node;
use crate::progress::NodeSink;
use anyhow::Context;
use ckpt_proto::frame::{read_frame, write_frame};
use ckpt_proto::{CtlReply, CtlRequest, FromNode, PeerHello, ToNode, PROTO_VERSION};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long the manager waits for a node's answer to one request.
const CALL_TIMEOUT: Duration = Duration::from_secs(180);

/// A node that joined the manager.
pub struct RemoteNode {
    pub host: String,
    stream: Mutex<TcpStream>,
}

impl RemoteNode {
    /// Sends `req` and waits for the answer; the node's progress reports before it go to
    /// `sink`.
    pub fn call(&self, req: &ToNode, sink: Option<NodeSink<'_>>) -> anyhow::Result<FromNode> {
        let mut s = self.stream.lock().unwrap_or_else(|e| e.into_inner());
        s.set_read_timeout(Some(CALL_TIMEOUT))?;
        let lost = |e| anyhow::anyhow!("host {} is unreachable: {e}", self.host);
        write_frame(&mut *s, req).map_err(lost)?;
        loop {
            match read_frame(&mut *s).map_err(lost)? {
                FromNode::Progress(p) => {
                    if let Some(sink) = sink {
                        sink(p)
                    }
                }
                answer => return Ok(answer),
            }
        }
    }

    pub fn is_connected(&self) -> bool {
        let Ok(s) = self.stream.try_lock() else { return true };
        let mut buf = [0u8; 1];
        let _ = s.set_nonblocking(true);
        let r = s.peek(&mut buf);
        let _ = s.set_nonblocking(false);
        match r {
            Ok(n) => n > 0,
            Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
        }
    }
}

/// Manager side: accepts nodes joining and forwarded `ckptctl` requests.
pub fn serve(manager: Arc<Manager>, listener: TcpListener) {
    for conn in listener.incoming() {
        let Ok(mut s) = conn else { continue };
        let m = manager.clone();
        let _ = std::thread::Builder::new().name("peer".into()).spawn(move || {
            let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
            let hello = match auth::accept(&mut s, &m.secret) {
                Ok(h) => h,
                Err(e) => {
                    tracing::warn!("refused a peer: {e:#}");
                    return;
                }
            };
            match hello {
                PeerHello::Node { host, .. } => {
                    tracing::info!(host, "node joined");
                    let _ = s.set_read_timeout(None);
                    m.add_remote(Arc::new(RemoteNode {
                        host,
                        stream: Mutex::new(s),
                    }));
                }
                PeerHello::Ctl { host, .. } => {
                    let _ = s.set_read_timeout(None);
                    let Ok(events) = s.try_clone() else { return };
                    let events = Mutex::new(events);
                    // Progress goes back to the forwarding node as it comes, before the answer.
                    let sink = |p| {
                        let mut e = events.lock().unwrap_or_else(|e| e.into_inner());
                        let _ = write_frame(&mut *e, &CtlReply::Progress(p));
                    };
                    while let Ok(req) = read_frame::<CtlRequest>(&mut s) {
                        tracing::debug!(host, ?req, "forwarded request");
                        let reply = m.answer(req, &sink);
                        let mut e = events.lock().unwrap_or_else(|e| e.into_inner());
                        if write_frame(&mut *e, &reply).is_err() {
                            break;
                        }
                    }
                }
            }
        });
    }
}

/// Node side: keeps a link to the manager and serves its requests; rejoins when it drops.
pub fn join(node: Arc<Node>, manager: String, secret: Vec<u8>) {
    loop {
        match join_once(&node, &manager, &secret) {
            Ok(()) => tracing::warn!("manager {manager} closed the link; rejoining"),
            Err(e) => tracing::warn!("cannot join manager {manager}: {e:#}"),
        }
        // A checkpoint the manager can no longer finish is aborted here: programs run on.
        node.abort_pending();
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Connects to the manager and authenticates as `hello` says; `unreachable` describes a
/// failed connection.
fn dial(
    manager: &str,
    secret: &[u8],
    hello: PeerHello,
    unreachable: impl FnOnce() -> String,
) -> anyhow::Result<TcpStream> {
    let mut s = TcpStream::connect(manager).with_context(unreachable)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    auth::connect(&mut s, secret, hello)?;
    Ok(s)
}

fn join_once(node: &Node, manager: &str, secret: &[u8]) -> anyhow::Result<()> {
    let hello = PeerHello::Node {
        version: PROTO_VERSION,
        host: node.host.clone(),
    };
    let mut s = dial(manager, secret, hello, || format!("connect {manager}"))?;
    s.set_read_timeout(None)?;
    tracing::info!(manager, "joined the manager");
    let events = Mutex::new(s.try_clone()?);
    // This node's progress goes to the manager while it answers, before the answer.
    let sink = |p| {
        let mut e = events.lock().unwrap_or_else(|e| e.into_inner());
        let _ = write_frame(&mut *e, &FromNode::Progress(p));
    };
    loop {
        let req: ToNode = match read_frame(&mut s) {
            Ok(r) => r,
            Err(ckpt_proto::FrameError::Closed) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let metered = matches!(
            req,
            ToNode::Phase1 { .. }
                | ToNode::Phase2 { .. }
                | ToNode::RestorePrepare { .. }
                | ToNode::RestoreConnect { .. }
        );
        let reply = node
            .meter
            .watch(metered.then_some(&sink as NodeSink<'_>), || node.handle(req));
        let mut e = events.lock().unwrap_or_else(|e| e.into_inner());
        write_frame(&mut *e, &reply)?;
    }
}

/// A joined node forwards `ckptctl` requests to the manager; the progress reports that come
/// before the answer go to `sink`.
pub fn forward(
    manager: &str,
    secret: &[u8],
    host: &str,
    req: &CtlRequest,
    sink: &dyn Fn(ckpt_proto::Progress),
) -> anyhow::Result<CtlReply> {
    let hello = PeerHello::Ctl {
        version: PROTO_VERSION,
        host: host.to_string(),
    };
    let mut s = dial(manager, secret, hello, || {
        format!("the manager {manager} is unreachable")
    })?;
    s.set_read_timeout(Some(CALL_TIMEOUT * 2))?;
    write_frame(&mut s, req)?;
    loop {
        match read_frame(&mut s).with_context(|| format!("the manager {manager} did not answer"))? {
            CtlReply::Progress(p) => sink(p),
            answer => return Ok(answer),
        }
    }
}
