//! signalfd: the set of signals it reads. The signals it would read are the process's (and the
//! reading thread's) pending signals, which the restore already brings back: the fd itself
//! holds nothing else.

use crate::{KindError, Source};
use serde::{Deserialize, Serialize};
use std::os::fd::{FromRawFd, OwnedFd};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Record {
    /// Bit `n - 1` for signal `n`.
    pub mask: u64,
}

pub fn capture(src: &Source) -> Result<Record, KindError> {
    let mask = src
        .info("sigmask")
        .and_then(|v| u64::from_str_radix(v, 16).ok())
        .ok_or_else(|| KindError::Read {
            what: format!("the signal mask of signalfd {}", src.fd),
            source: std::io::Error::from(std::io::ErrorKind::InvalidData),
        })?;
    Ok(Record { mask })
}

pub fn recreate(rec: &Record) -> Result<OwnedFd, KindError> {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a local sigset_t.
    unsafe { libc::sigemptyset(&mut set) };
    for sig in signals(rec.mask) {
        // SAFETY: `set` is initialised; an out-of-range number is only refused.
        unsafe { libc::sigaddset(&mut set, sig) };
    }
    // SAFETY: signalfd returns a new fd or -1; the set is a local.
    let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC) };
    if fd < 0 {
        let what = format!("a signalfd for {}", names(rec.mask));
        return Err(KindError::recreate(what)(std::io::Error::last_os_error()));
    }
    // SAFETY: the fd was just created and is ours.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub fn describe(rec: &Record) -> String {
    format!("signalfd ({})", names(rec.mask))
}

fn signals(mask: u64) -> impl Iterator<Item = i32> {
    (1..=64).filter(move |s| mask & (1u64 << (s - 1)) != 0)
}

fn names(mask: u64) -> String {
    if mask == 0 {
        return "no signal".to_string();
    }
    signals(mask).map(name).collect::<Vec<_>>().join(", ")
}

fn name(sig: i32) -> String {
    let rtmin = libc::SIGRTMIN();
    if sig >= rtmin {
        return format!("SIGRTMIN+{}", sig - rtmin);
    }
    match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGCHLD => "SIGCHLD",
        libc::SIGCONT => "SIGCONT",
        libc::SIGSTOP => "SIGSTOP",
        libc::SIGTSTP => "SIGTSTP",
        libc::SIGTTIN => "SIGTTIN",
        libc::SIGTTOU => "SIGTTOU",
        libc::SIGURG => "SIGURG",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        libc::SIGVTALRM => "SIGVTALRM",
        libc::SIGPROF => "SIGPROF",
        libc::SIGWINCH => "SIGWINCH",
        libc::SIGIO => "SIGIO",
        libc::SIGPWR => "SIGPWR",
        libc::SIGSYS => "SIGSYS",
        _ => return format!("signal {sig}"),
    }
    .to_string()
}
