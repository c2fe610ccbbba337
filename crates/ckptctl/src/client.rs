//! The connection to ckptd.

use ckpt_proto::{CtlReply, CtlRequest, Hello, Welcome, PROTO_VERSION};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;

pub enum Failure {
    /// ckptd could not be reached or broke off.
    Unreachable(String),
    /// The socket is another user's: the message says what to do.
    NotYours(String),
    /// ckptd answered with an error.
    Refused(String),
    /// ckptd went away while ckptctl followed a restored job: the message says so.
    Gone(String),
}

/// How often a progress bar is redrawn while ckptd sends nothing (ms).
const TICK_MS: i32 = 100;

pub struct Client {
    s: UnixStream,
    what: String,
}

impl Client {
    pub fn connect(socket: &Path) -> Result<Self, Failure> {
        let what = format!("ckptd at {}", socket.display());
        let s = UnixStream::connect(socket).map_err(|e| match e.kind() {
            std::io::ErrorKind::PermissionDenied => Failure::NotYours(format!(
                "cannot use the {what} ({e}): it is another user's; each user runs their own ckptd: start \
                 one and pass its socket (--socket or CKPT_SOCKET)"
            )),
            _ => Failure::Unreachable(format!("cannot reach {what}: {e}")),
        })?;
        let c = Self { s, what };
        ckpt_proto::send(&c.s, &Hello::Ctl { version: PROTO_VERSION }, &[]).map_err(|e| c.lost(e))?;
        match ckpt_proto::recv::<Welcome>(&c.s).map_err(|e| c.lost(e))?.0 {
            Welcome::Ok { .. } => Ok(c),
            Welcome::Refused { reason } => Err(Failure::Refused(reason)),
        }
    }

    fn lost(&self, e: ckpt_proto::FrameError) -> Failure {
        Failure::Unreachable(format!("{}: {e}", self.what))
    }

    /// Sends one message that has no answer of its own.
    pub fn send<T: serde::Serialize>(&self, msg: &T) -> Result<(), Failure> {
        ckpt_proto::send(&self.s, msg, &[]).map_err(|e| self.lost(e))
    }

    /// Receives one message.
    pub fn recv<T: serde::de::DeserializeOwned>(&self) -> Result<T, Failure> {
        Ok(ckpt_proto::recv::<T>(&self.s).map_err(|e| self.lost(e))?.0)
    }

    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.s)
    }

    /// Sends `req` and returns its answer; the progress events that come before it go to
    /// `progress`, which is also ticked every [`TICK_MS`] while nothing comes.
    pub fn call(
        &self,
        req: &CtlRequest,
        fds: &[i32],
        mut progress: Option<&mut crate::progress::Reporter>,
    ) -> Result<CtlReply, Failure> {
        ckpt_proto::send(&self.s, req, fds).map_err(|e| self.lost(e))?;
        loop {
            if let Some(r) = progress.as_deref_mut() {
                let mut pfd = libc::pollfd {
                    fd: self.s.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd, for the duration of the call.
                let n = unsafe { libc::poll(&mut pfd, 1, TICK_MS) };
                if n == 0 || (n < 0 && nix::errno::Errno::last() == nix::errno::Errno::EINTR) {
                    r.tick();
                    continue;
                }
            }
            match ckpt_proto::recv::<CtlReply>(&self.s).map_err(|e| self.lost(e))?.0 {
                CtlReply::Progress(p) => {
                    if let Some(r) = progress.as_deref_mut() {
                        r.event(p)
                    }
                }
                reply => {
                    if let Some(r) = progress {
                        r.clear()
                    }
                    return Ok(reply);
                }
            }
        }
    }
}
