//! Registration with ckptd and the control thread that serves it.

use crate::checkpoint::{self, CONTROL_FD, CONTROL_TID, PARK_SIGNAL, RSEQ_OFFSET, RSEQ_SIZE, SLOTS};
use crate::{gate, signals, sys};
use ckpt_proto::slots::ProcSlot;
use ckpt_proto::{AppMsg, Hello, NodeMsg, Registration, Welcome, PROTO_VERSION};
use std::mem::ManuallyDrop;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, IntoRawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
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
        crate::restart::NONCE_ADDR.store(SLOTS.nonce_addr(), Relaxed);
        if !signals::install_park_handler(sig) {
            warn("cannot install the park signal handler");
            return;
        }
        crate::pages::UFFD.store(crate::fds::protect(crate::pages::create()), Release);
        crate::fds::PROC_FD.store(crate::fds::open_proc_dir(), Release);
        // SAFETY: registering a fork handler with a plain extern "C" fn.
        unsafe { libc::pthread_atfork(None, Some(after_fork_parent), Some(after_fork_child)) };
    }
    let path = PathBuf::from(path);
    // Registered before main runs; should ckptd not answer now, the control thread keeps trying.
    match register(&path) {
        Ok(fd) => CONTROL_FD.store(fd, Release),
        Err(Failure::Refused(why)) => {
            warn(&format!("not under checkpoint control: {why}"));
            return;
        }
        // Silently: ckpt-run checked that ckptd answers, so this is a child started while it is
        // away (restarting), and the program's stderr is not ours to write on.
        Err(Failure::Unreachable) => {}
    }
    // The thread starts with every signal blocked (it inherits this thread's mask), so that
    // none of the program's lands on it before it sets its own.
    let all: u64 = !0;
    let mut before: u64 = 0;
    // SAFETY: every pointer argument points to live memory of the size the call expects.
    unsafe {
        sys::raw6(
            libc::SYS_rt_sigprocmask,
            [
                libc::SIG_SETMASK as u64,
                &all as *const u64 as u64,
                &mut before as *mut u64 as u64,
                8,
                0,
                0,
            ],
        )
    };
    let spawned = std::thread::Builder::new()
        .name("ckpt-control".into())
        .stack_size(256 << 10)
        .spawn(move || {
            let _ = std::panic::catch_unwind(|| serve(&path));
        });
    // SAFETY: every pointer argument points to live memory of the size the call expects.
    unsafe {
        sys::raw6(
            libc::SYS_rt_sigprocmask,
            [libc::SIG_SETMASK as u64, &before as *const u64 as u64, 0, 8, 0, 0],
        )
    };
    if spawned.is_err() {
        warn("cannot start the control thread");
    }
}

fn warn(msg: &str) {
    let line = format!("ckpt: {msg}\n");
    sys::write_all(2, line.as_bytes());
}

enum Failure {
    /// ckptd is not there (yet, or any more): worth trying again.
    Unreachable,
    /// ckptd answered no: trying again would not help.
    Refused(String),
}

/// Connects and registers; the connection's fd, moved to the interposer's high numbers.
fn register(path: &Path) -> Result<i32, Failure> {
    let gone = |_: &dyn std::fmt::Display| Failure::Unreachable;
    let s = UnixStream::connect(path).map_err(|e| gone(&e))?;
    // Only a ckptd of this program's user or of root gets its tracker and may trace it.
    match ckpt_sys::peer::peer_uid(s.as_fd()) {
        Some(uid) if ckpt_sys::peer::trusted_daemon(uid) => {}
        Some(uid) => {
            return Err(Failure::Refused(format!(
                "the ckptd at {} runs as uid {uid}, neither this program's user nor root",
                path.display()
            )))
        }
        None => return Err(Failure::Unreachable),
    }
    // SAFETY: the fd protect returns is the same connection, now ours at a high number.
    let s = unsafe { UnixStream::from_raw_fd(crate::fds::protect(s.into_raw_fd())) };
    ckpt_proto::send(&s, &Hello::App { version: PROTO_VERSION }, &[]).map_err(|e| gone(&e))?;
    match ckpt_proto::recv::<Welcome>(&s).map_err(|e| gone(&e))?.0 {
        Welcome::Ok { .. } => {}
        Welcome::Refused { reason } => return Err(Failure::Refused(format!("ckptd refused it: {reason}"))),
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
        control_fd: s.as_raw_fd(),
        park_signal: PARK_SIGNAL.load(Relaxed),
        uffd_fd: crate::pages::UFFD.load(Relaxed),
    };
    ckpt_proto::send(&s, &AppMsg::Register(reg), &[]).map_err(|e| gone(&e))?;
    match ckpt_proto::recv::<NodeMsg>(&s).map_err(|e| gone(&e))?.0 {
        NodeMsg::Registered => {}
        _ => return Err(Failure::Refused("ckptd did not accept the registration".into())),
    }
    allow_tracing_by(&s);
    Ok(s.into_raw_fd())
}

/// Where Yama restricts ptrace to ancestors, lets ckptd (the peer) attach to this process: it
/// does so only to unblock the park signal in a thread that blocks it.
fn allow_tracing_by(s: &UnixStream) {
    if let Some(cred) = ckpt_sys::peer::peer(s.as_fd()).filter(|c| c.pid > 0) {
        // Fails harmlessly where Yama is absent.
        // SAFETY: integer arguments only.
        unsafe {
            sys::raw6(
                libc::SYS_prctl,
                [libc::PR_SET_PTRACER as u64, cred.pid as u64, 0, 0, 0, 0],
            )
        };
    }
}

/// How often a program whose ckptd went away tries to register again.
const RECONNECT_MS: u64 = 250;

/// The control thread: waits for ckptd's requests, one at a time; when ckptd goes away, keeps
/// trying to register again (a restarted ckptd finds every program back within a second).
fn serve(path: &Path) {
    CONTROL_TID.store(sys::gettid(), Release);
    gate::bypass_this_thread();
    mask_all_but_park();
    let mut gated = false;
    loop {
        if CONTROL_FD.load(Acquire) < 0 {
            match register(path) {
                Ok(fd) => CONTROL_FD.store(fd, Release),
                Err(Failure::Refused(why)) => {
                    warn(&format!("no longer under checkpoint control: {why}"));
                    return;
                }
                Err(Failure::Unreachable) => {
                    std::thread::sleep(std::time::Duration::from_millis(RECONNECT_MS));
                    continue;
                }
            }
        }
        // A program never stays gated for long without word from ckptd.
        if gated && !readable(CONTROL_FD.load(Acquire), GATED_MAX_MS) {
            gate::open();
            gated = false;
            continue;
        }
        let Some(msg) = read_msg() else {
            lost_link();
            gated = false;
            continue;
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
                let park = checkpoint::park_all(timeout_ms);
                let restored = if park.is_ok() { SLOTS.take_restored() } else { 0 };
                match park {
                    Ok(()) if restored != 0 => {
                        // A restored program: its gate's state in memory is the checkpoint's.
                        gate::open();
                        gated = false;
                        // The kernel's tracker did not survive: the restorer armed a new one at
                        // the same number, or left a placeholder for one to be made here.
                        if restored != ProcSlot::RESTORED_TRACKED {
                            crate::pages::recreate();
                        }
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
                // Moved up at once, as every fd the interposer makes while the program runs.
                let window = crate::fds::protect(crate::pages::window());
                let tracker = crate::pages::UFFD.load(Acquire);
                let fds: &[i32] = if window >= 0 && tracker >= 0 {
                    &[window, tracker]
                } else {
                    &[]
                };
                let sent = send(&AppMsg::Tracked, fds);
                if window >= 0 {
                    sys::close(window);
                }
                if !sent {
                    lost_link();
                    gated = false;
                }
                None
            }
            NodeMsg::Registered => None,
        };
        if let Some(reply) = reply {
            if !send(&reply, &[]) {
                lost_link();
                gated = false;
            }
        }
    }
}

/// ckptd went away: the program carries on uncontrolled, its gate open, until it registers
/// with a ckptd again.
fn lost_link() {
    gate::open();
    let fd = CONTROL_FD.swap(-1, AcqRel);
    if fd >= 0 {
        sys::close(fd);
    }
}

/// The control thread takes the park signal and no other: a signal the program sends to
/// itself must reach one of its own threads (a program that blocks it everywhere and waits for
/// it with `sigwaitinfo` must not be killed by its default action landing here), and the mask
/// it inherited (a forked child's is often "everything blocked") must not keep it from parking.
/// glibc's two internal signals stay open too, as glibc's own sigprocmask keeps them: `setuid`,
/// `setgroups`… in a threaded program signal every thread with SIGSETXID (33) and wait until
/// each has run the handler, and `pthread_cancel` uses SIGCANCEL (32).
fn mask_all_but_park() {
    let sig = PARK_SIGNAL.load(Relaxed);
    let mut set: u64 = !((1u64 << (32 - 1)) | (1u64 << (33 - 1)));
    if sig > 0 {
        set &= !(1u64 << (sig - 1));
    }
    // SAFETY: every pointer argument points to live memory of the size the call expects.
    unsafe {
        sys::raw6(
            libc::SYS_rt_sigprocmask,
            [libc::SIG_SETMASK as u64, &set as *const u64 as u64, 0, 8, 0, 0],
        )
    };
}

/// One message from ckptd. Every read names the connection by its current number: a program
/// that puts something at our number moves the connection first (see `fds`).
fn read_msg() -> Option<NodeMsg> {
    let mut len = [0u8; 4];
    read_full(&mut len)?;
    let n = u32::from_le_bytes(len);
    if n > ckpt_proto::frame::MAX_FRAME {
        return None;
    }
    let mut payload = vec![0u8; n as usize];
    read_full(&mut payload)?;
    ckpt_proto::decode_small(&payload)
}

fn read_full(buf: &mut [u8]) -> Option<()> {
    let mut got = 0;
    while got < buf.len() {
        let fd = CONTROL_FD.load(Acquire);
        // SAFETY: integer arguments only.
        let n = unsafe {
            sys::sys6(
                libc::SYS_read,
                [
                    fd as u64,
                    buf[got..].as_mut_ptr() as u64,
                    (buf.len() - got) as u64,
                    0,
                    0,
                    0,
                ],
            )
        };
        if n < 0 && sys::errno() == libc::EINTR {
            continue;
        }
        if n <= 0 {
            return None;
        }
        got += n as usize;
    }
    Some(())
}

fn send(msg: &AppMsg, fds: &[i32]) -> bool {
    let fd = CONTROL_FD.load(Acquire);
    // SAFETY: fd is our control connection; ManuallyDrop keeps it open.
    let stream = ManuallyDrop::new(unsafe { UnixStream::from_raw_fd(fd) });
    ckpt_proto::send(&stream, msg, fds).is_ok()
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
        let r = sys::poll(&mut pfd, timeout_ms);
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

/// Every fork libc makes for this process (the program's, and those inside `daemon`,
/// `forkpty`…) is counted: see [`ckpt_proto::slots::ProcSlot::forks`]. Also run when the fork
/// failed; counting one too many only costs a full read of shared memory.
extern "C" fn after_fork_parent() {
    SLOTS.count_fork();
}

/// A forked child has only the forking thread: it registers as a new process of its own.
extern "C" fn after_fork_child() {
    // Before anything sends: the gate and counts inherited are the parent's.
    gate::reset_in_child();
    crate::attrs::reset_in_child();
    crate::aio::reset_in_child();
    crate::spawn::init();
    let fd = CONTROL_FD.swap(-1, AcqRel);
    if fd >= 0 {
        // The inherited control fd belongs to the parent's registration.
        sys::close(fd);
    }
    CONTROL_TID.store(0, Release);
    // The parent's tracker watches the parent's memory.
    let uffd = crate::pages::UFFD.swap(-1, AcqRel);
    if uffd >= 0 {
        sys::close(uffd);
    }
    crate::pages::UFFD.store(crate::fds::protect(crate::pages::create()), Release);
    let _ = std::panic::catch_unwind(start);
}
