//! `ckptctl restore --attach`: after the restore, ckptctl stays as the restored job's
//! foreground stand-in, as `dmtcp_restart` does. The restored programs are ckptd's children in
//! sessions of their own, so the terminal's signals (^C, ^\, ^Z, a hang-up, a resize) reach
//! ckptctl, which passes them to the job through ckptd; ckptd tells it when the job has ended,
//! and ckptctl exits as a shell reports a job: the exit code, or 128 + the signal.

use crate::client::{Client, Failure};
use ckpt_proto::{CtlRequest, JobControl, JobEvent};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use std::os::fd::AsRawFd;

/// The signals passed on to the job. SIGTSTP becomes SIGSTOP for the job (which has no
/// terminal to stop it) and stops ckptctl too, so that the shell's job control sees a stop;
/// the SIGCONT of `fg`/`bg` goes on to the job.
const CAUGHT: &[Signal] = &[
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGWINCH,
    Signal::SIGTSTP,
    Signal::SIGCONT,
];

/// The caught signals, blocked and read from a signalfd. Taken before the restore is asked
/// for, so that a signal that comes while it runs goes to the job once it is back rather than
/// killing ckptctl half-way.
pub struct Caught {
    fd: SignalFd,
}

pub fn catch() -> Result<Caught, Failure> {
    let mut mask = SigSet::empty();
    for s in CAUGHT {
        mask.add(*s);
    }
    let fail = |e: nix::Error| Failure::Refused(format!("cannot catch signals to pass on to the job: {e}"));
    // ckptctl has a single thread: blocking here blocks for the process.
    mask.thread_block().map_err(fail)?;
    let fd = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC).map_err(fail)?;
    Ok(Caught { fd })
}

/// Follows the job of restore `id` until it ends; returns ckptctl's exit code.
pub fn follow(c: &Client, id: &str, caught: Caught) -> Result<i32, Failure> {
    let gone = |f: Failure| match f {
        Failure::Unreachable(m) => Failure::Gone(format!(
            "{m}; ckptd went away while ckptctl followed the restored job, which runs on without it"
        )),
        f => f,
    };
    c.send(&CtlRequest::Attach { id: id.to_string() })?;
    let pids = match c.recv::<JobEvent>().map_err(gone)? {
        JobEvent::Attached { pids } => pids,
        JobEvent::Refused { message } => return Err(Failure::Refused(message)),
        _ => return Err(Failure::Refused("ckptd answered attach out of turn".to_string())),
    };
    if pids.is_empty() {
        eprintln!("ckptctl: no process of checkpoint {id} came back on this host; nothing to wait for");
    }
    loop {
        let mut fds = [
            libc::pollfd {
                fd: c.fd().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: caught.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: fds is a valid array of two pollfds.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if n < 0 {
            continue; // EINTR: a stop and continue
        }
        if fds[1].revents != 0 {
            if let Ok(Some(info)) = caught.fd.read_signal() {
                pass_on(c, info.ssi_signo as i32).map_err(gone)?;
            }
        }
        if fds[0].revents == 0 {
            continue;
        }
        match c.recv::<JobEvent>().map_err(gone)? {
            JobEvent::Ended { pid, status } => return Ok(exit_code(pid, status)),
            JobEvent::LoadFailed { message } => eprintln!("ckptctl: {message}"),
            JobEvent::Exited { .. } | JobEvent::Attached { .. } | JobEvent::Refused { .. } => {}
        }
    }
}

fn pass_on(c: &Client, sig: i32) -> Result<(), Failure> {
    if sig == libc::SIGTSTP {
        c.send(&JobControl::Signal { sig: libc::SIGSTOP })?;
        // The shell sees its job stopped; its `fg` or `bg` continues us with a SIGCONT, which
        // is then read here and passed on.
        let _ = nix::sys::signal::raise(Signal::SIGSTOP);
        return Ok(());
    }
    c.send(&JobControl::Signal { sig })
}

/// The job's status as a shell gives it: the exit code, or 128 + the signal that killed it.
fn exit_code(pid: i32, status: i32) -> i32 {
    if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        let name = Signal::try_from(sig).map(|s| s.as_str()).unwrap_or("a signal");
        eprintln!("ckptctl: the restored process {pid} was killed by signal {sig} ({name})");
        128 + sig
    } else if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        1
    }
}
