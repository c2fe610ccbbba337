//! ckptd's end of the guard of a lazy restore (`ckpt-restore --lazy-guard`, see the restorer's
//! `guard`): a process of its own, in a session of its own, holding a copy of every
//! userfaultfd ckptd serves. Should ckptd end before every page is in, the kernel would release
//! those descriptors with it and the pages not yet copied would read as zeros; with the guard's
//! copies they stay missing, and the guard, seeing its socket close, kills the processes still
//! loading (and what they started) before it lets go of them.

use anyhow::Context;
use ckpt_proto::lazy::{GuardAck, GuardMsg};
use std::collections::HashSet;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

pub struct Link {
    tx: Mutex<UnixStream>,
    acks: Arc<Acks>,
}

/// Pids whose copies the guard has closed, and whether it has ended; kept by the thread that
/// reads its answers.
#[derive(Default)]
struct Acks {
    state: Mutex<(HashSet<i32>, bool)>,
    cv: Condvar,
    /// ckptd let go of the guard: its end is expected.
    closing: AtomicBool,
}

impl Link {
    /// Starts the guard (the restorer binary, `restorer`).
    pub fn start(restorer: &Path) -> anyhow::Result<Arc<Link>> {
        let (ours, theirs) = UnixStream::pair().context("socketpair")?;
        std::process::Command::new(restorer)
            .arg("--lazy-guard")
            .stdin(std::process::Stdio::from(OwnedFd::from(theirs)))
            .stdout(std::process::Stdio::null())
            .spawn()
            .context("cannot start the guard of a lazy restore")?;
        let acks = Arc::new(Acks::default());
        let a = acks.clone();
        let rx = ours.try_clone()?;
        std::thread::Builder::new().name("lazy-guard".into()).spawn(move || {
            while let Ok((GuardAck::Released { pid }, _)) = ckpt_proto::recv::<GuardAck>(&rx) {
                a.state.lock().unwrap_or_else(|e| e.into_inner()).0.insert(pid);
                a.cv.notify_all();
            }
            if !a.closing.load(Ordering::SeqCst) {
                tracing::warn!("the guard of a lazy restore has ended; the load goes on, unguarded should ckptd end");
            }
            a.state.lock().unwrap_or_else(|e| e.into_inner()).1 = true;
            a.cv.notify_all();
        })?;
        Ok(Arc::new(Link {
            tx: Mutex::new(ours),
            acks,
        }))
    }

    fn send(&self, msg: &GuardMsg, fd: Option<BorrowedFd<'_>>) {
        let fds: Vec<i32> = fd.map(|f| f.as_raw_fd()).into_iter().collect();
        let tx = self.tx.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = ckpt_proto::send(&tx, msg, &fds) {
            // ckptd still holds its own copies: only its own end is unguarded now.
            tracing::warn!("the guard of a lazy restore does not answer: {e}");
        }
    }

    pub fn watch(&self, pid: i32, fd: BorrowedFd<'_>) {
        self.send(&GuardMsg::Watch { pid }, Some(fd));
    }

    /// Child `space` (numbered from 1 per process) of `pid`.
    pub fn forked(&self, pid: i32, space: u64, fd: BorrowedFd<'_>) {
        self.send(&GuardMsg::Forked { pid, space }, Some(fd));
    }

    /// Child `space` of `pid` has ended: its descriptor is closed.
    pub fn gone(&self, pid: i32, space: u64) {
        self.send(&GuardMsg::Gone { pid, space }, None);
    }

    pub fn release(&self, pid: i32) {
        self.send(&GuardMsg::Release { pid }, None);
    }

    /// Whether the guard has closed its copies for `pid` (or ended), waiting up to `wait`.
    pub fn released(&self, pid: i32, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        let mut st = self.acks.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if st.1 || st.0.contains(&pid) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            st = self.acks.cv.wait_timeout(st, left).unwrap_or_else(|e| e.into_inner()).0;
        }
    }
}

impl Drop for Link {
    /// The load is over: the guard, holding nothing any more, ends.
    fn drop(&mut self) {
        self.acks.closing.store(true, Ordering::SeqCst);
        let tx = self.tx.lock().unwrap_or_else(|e| e.into_inner());
        let _ = tx.shutdown(std::net::Shutdown::Both);
    }
}
