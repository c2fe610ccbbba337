//! Registration with ckptd and the control thread that serves it.

use crate::checkpoint::{self, CONTROL_FD, CONTROL_TID, PARK_SIGNAL, RSEQ_OFFSET, RSEQ_SIZE, SLOTS};
use crate::{gate, signals, sys};
use ckpt_proto::slots::ProcSlot;
use ckpt_proto::{AppMsg, Hello, NodeMsg, Registration, Welcome, PROTO_VERSION};
use std::mem::ManuallyDrop;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering::*;

/// Called from the library constructor (and in a forked child): registers with ckptd and
/// starts the control thread. Without `CKPT_SOCKET` the library stays inert.
pub fn start() {
    let Some(path) = std::env::var_os("CKPT_SOCKET") else {
        return;
    };
    if PARK_SIGNAL.load(Relaxed) == 0 {
        let sig = std::env::var("CKPT_SIGNAL")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| libc::SIGRTMAX() - 1);
        PARK_SIGNAL.store(sig, Relaxed);
        find_rseq();
        signals::resolve();
        if !signals::install_park_handler(sig) {
            warn("cannot install the park signal handler");
            return;
        }
        crate::pages::UFFD.store(crate::pages::create(), std::sync::atomic::Ordering::Release);
        // SAFETY: registering a fork handler with a plain extern "C" fn.
        unsafe { libc::pthread_atfork(None, None, Some(after_fork_child)) };
    }
    let stream = match register(std::path::Path::new(&path)) {
        Ok(s) => s,
        Err(e) => {
            warn(&format!("not under checkpoint control: {e}"));
            return;
        }
    };
    CONTROL_FD.store(stream.into_raw_fd(), Release);
    let spawned = std::thread::Builder::new()
        .name("ckpt-control".into())
        .stack_size(256 << 10)
        .spawn(|| {
            let _ = std::panic::catch_unwind(serve);
        });
    if spawned.is_err() {
        warn("cannot start the control thread");
    }
}

fn warn(msg: &str) {
    let line = format!("ckpt: {msg}\n");
    sys::write_all(2, line.as_bytes());
}

fn register(path: &std::path::Path) -> Result<UnixStream, String> {
    let s = UnixStream::connect(path).map_err(|e| format!("cannot reach ckptd at {}: {e}", path.display()))?;
    let io = |e: ckpt_proto::FrameError| format!("ckptd at {}: {e}", path.display());
    ckpt_proto::send(&s, &Hello::App { version: PROTO_VERSION }, &[]).map_err(io)?;
    match ckpt_proto::recv::<Welcome>(&s).map_err(io)?.0 {
        Welcome::Ok { .. } => {}
        Welcome::Refused { reason } => return Err(format!("ckptd refused: {reason}")),
    }
    let pid = sys::getpid();
    let reg = Registration {
        pid,
        exe: std::fs::read_link("/proc/self/exe")
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default(),
        args: std::env::args_os().map(|a| a.to_string_lossy().into_owned()).collect(),
        slot_addr: SLOTS.addr(),
        slot_len: std::mem::size_of::<ProcSlot>() as u64,
        control_fd: std::os::fd::AsRawFd::as_raw_fd(&s),
        park_signal: PARK_SIGNAL.load(Relaxed),
        uffd_fd: crate::pages::UFFD.load(Relaxed),
    };
    ckpt_proto::send(&s, &AppMsg::Register(reg), &[]).map_err(io)?;
    match ckpt_proto::recv::<NodeMsg>(&s).map_err(io)?.0 {
        NodeMsg::Registered => Ok(s),
        other => Err(format!("ckptd answered {other:?} to registration")),
    }
}

/// The control thread: waits for ckptd's requests, one at a time.
fn serve() {
    CONTROL_TID.store(sys::gettid(), Release);
    gate::bypass_this_thread();
    let mut gated = false;
    loop {
        // The socket may be replaced under us by a restore (same fd number, new peer), so the
        // stream is rebuilt from the fd number for every message.
        let fd = CONTROL_FD.load(Acquire);
        // SAFETY: fd is our control connection; ManuallyDrop keeps it open.
        let stream = ManuallyDrop::new(unsafe { UnixStream::from_raw_fd(fd) });
        // A program never stays gated for long without word from ckptd.
        if gated && !readable(fd, GATED_MAX_MS) {
            gate::open();
            gated = false;
            continue;
        }
        let msg = match ckpt_proto::recv::<NodeMsg>(&stream) {
            Ok((m, _)) => m,
            // ckptd went away: the program carries on, uncontrolled.
            Err(_) => {
                gate::open();
                return;
            }
        };
        let reply = match msg {
            NodeMsg::CommStop { timeout_ms, hold_files } => {
                gated = gate::shut(timeout_ms, &hold_files);
                Some(if gated {
                    AppMsg::CommStopped
                } else {
                    AppMsg::CommStopFailed
                })
            }
            NodeMsg::CommResume | NodeMsg::Resume | NodeMsg::Abort => {
                gate::open();
                gated = false;
                None
            }
            NodeMsg::Park { timeout_ms } => {
                // Read or not, the threads run again now; inter-host sends stay held until ckptd
                // says the checkpoint is over everywhere (CommResume), so that no byte reaches a
                // peer on a host that has not been read yet.
                match checkpoint::park_all(timeout_ms) {
                    Ok(()) if SLOTS.take_restored() => {
                        // A restored program: its gate's state in memory is the checkpoint's.
                        gate::open();
                        gated = false;
                        // The kernel's tracker did not survive: a new one at the same number.
                        crate::pages::recreate();
                        Some(AppMsg::Restored { pid: sys::getpid() })
                    }
                    Ok(()) => None,
                    Err((reason, tid)) => {
                        gate::open();
                        gated = false;
                        Some(AppMsg::ParkFailed { reason, tid })
                    }
                }
            }
            NodeMsg::Track => {
                crate::pages::register_all();
                // ckptd gets the store window and the tracker along with the answer; only its
                // copy of the window stays open.
                let window = crate::pages::window();
                let tracker = crate::pages::UFFD.load(Acquire);
                let fds: &[i32] = if window >= 0 && tracker >= 0 {
                    &[window, tracker]
                } else {
                    &[]
                };
                let fd = CONTROL_FD.load(Acquire);
                // SAFETY: as above.
                let stream = ManuallyDrop::new(unsafe { UnixStream::from_raw_fd(fd) });
                let sent = ckpt_proto::send(&stream, &AppMsg::Tracked, fds);
                if window >= 0 {
                    // SAFETY: closing the descriptor made just above.
                    unsafe { libc::close(window) };
                }
                if sent.is_err() {
                    return;
                }
                None
            }
            NodeMsg::Registered => None,
        };
        if let Some(reply) = reply {
            let fd = CONTROL_FD.load(Acquire);
            // SAFETY: as above.
            let stream = ManuallyDrop::new(unsafe { UnixStream::from_raw_fd(fd) });
            if ckpt_proto::send(&stream, &reply, &[]).is_err() {
                return;
            }
        }
    }
}

/// How long the gate may stay shut without a message from ckptd.
const GATED_MAX_MS: i32 = 120_000;

fn readable(fd: i32, timeout_ms: i32) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: pfd is a valid pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
        if r < 0 && sys::errno() == libc::EINTR {
            continue;
        }
        return r > 0;
    }
}

/// glibc exports where each thread's rseq area sits relative to its thread pointer.
fn find_rseq() {
    // SAFETY: dlsym with NUL-terminated names; the symbols, when present, are plain data.
    unsafe {
        let off = libc::dlsym(libc::RTLD_DEFAULT, c"__rseq_offset".as_ptr());
        let size = libc::dlsym(libc::RTLD_DEFAULT, c"__rseq_size".as_ptr());
        if !off.is_null() && !size.is_null() {
            RSEQ_OFFSET.store(*(off as *const isize) as i64, Relaxed);
            RSEQ_SIZE.store(*(size as *const u32), Relaxed);
        }
    }
}

/// A forked child has only the forking thread: it registers as a new process of its own.
extern "C" fn after_fork_child() {
    let fd = CONTROL_FD.swap(-1, AcqRel);
    if fd >= 0 {
        // SAFETY: the inherited control fd belongs to the parent's registration.
        unsafe { libc::close(fd) };
    }
    CONTROL_TID.store(0, Release);
    // The parent's tracker watches the parent's memory.
    let uffd = crate::pages::UFFD.swap(-1, AcqRel);
    if uffd >= 0 {
        // SAFETY: the inherited fd is ours to close.
        unsafe { libc::close(uffd) };
    }
    crate::pages::UFFD.store(crate::pages::create(), Release);
    let _ = std::panic::catch_unwind(start);
}
