//! Starting a program with a chosen pid (clone3 `set_tid`), as the restorer needs.

use std::ffi::{CStr, CString};
use std::os::fd::RawFd;

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("pid {0} is in use by another process ({1}); stop it, then restore again")]
    PidInUse(i32, String),
    #[error("restoring pid {0} needs CAP_CHECKPOINT_RESTORE: run ckptd as root, or start it with that capability (see \"A ckptd for another user\" in the README)")]
    NoPermission(i32),
    #[error("clone3 failed: {0}")]
    Os(std::io::Error),
}

/// The kernel's `struct clone_args`.
#[repr(C)]
#[derive(Default)]
pub struct CloneArgs {
    pub flags: u64,
    pub pidfd: u64,
    pub child_tid: u64,
    pub parent_tid: u64,
    pub exit_signal: u64,
    pub stack: u64,
    pub stack_size: u64,
    pub tls: u64,
    pub set_tid: u64,
    pub set_tid_size: u64,
    pub cgroup: u64,
}

/// Whether `pid` (a process or a thread) is free, waiting up to `timeout` for it to become so:
/// a process killed just before may still be tearing its threads down.
pub fn free_within(pid: i32, timeout: std::time::Duration) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    let path = format!("/proc/{pid}");
    loop {
        if !std::path::Path::new(&path).exists() {
            return true;
        }
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Who holds `pid`, for the error message.
pub fn describe_pid(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "a thread or an exiting process".to_string())
}

/// Where a new process stands in the tree.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// It leads a new session (and group).
    pub setsid: bool,
    /// It leads a new group in its parent's session.
    pub lead_group: bool,
    /// The signal its parent gets when it ends.
    pub exit_signal: i32,
}

impl Default for Options {
    /// A new session, as a daemon's restored program needs.
    fn default() -> Self {
        Options {
            setsid: true,
            lead_group: false,
            exit_signal: libc::SIGCHLD,
        }
    }
}

/// A fork-like clone3 as `pid`: the child gets 0 and must run only async-signal-safe calls.
fn clone_as(pid: i32, exit_signal: i32) -> Result<i32, SpawnError> {
    let tids = [pid];
    let args = CloneArgs {
        exit_signal: exit_signal as u64,
        set_tid: tids.as_ptr() as u64,
        set_tid_size: 1,
        ..Default::default()
    };
    // A pid whose process was just reaped can stay taken for a moment (its last threads are
    // still being torn down): try again briefly while nothing in /proc holds it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    let (ret, err) = loop {
        // SAFETY: a fork-like clone3 (no CLONE_VM): the child gets a copy of this address
        // space; the callers make it run only raw calls before execve or _exit, unless the
        // caller is single-threaded (`fork_with_pid`).
        let ret = unsafe {
            libc::syscall(
                libc::SYS_clone3,
                &args as *const CloneArgs,
                std::mem::size_of::<CloneArgs>(),
            )
        };
        let err = std::io::Error::last_os_error();
        let taken = ret < 0 && err.raw_os_error() == Some(libc::EEXIST);
        if !taken || std::path::Path::new(&format!("/proc/{pid}")).exists() || std::time::Instant::now() > deadline {
            break (ret, err);
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    if ret < 0 {
        return Err(match err.raw_os_error() {
            Some(libc::EEXIST) => SpawnError::PidInUse(pid, describe_pid(pid)),
            Some(libc::EPERM) => SpawnError::NoPermission(pid),
            _ => SpawnError::Os(err),
        });
    }
    Ok(ret as i32)
}

/// In a child just cloned: its session or group. Async-signal-safe.
///
/// # Safety
/// Only in the child of [`clone_as`].
unsafe fn take_place(opts: Options) -> bool {
    if opts.setsid {
        libc::setsid() >= 0
    } else if opts.lead_group {
        libc::setpgid(0, 0) == 0
    } else {
        true
    }
}

/// In a child just cloned: fd `i` becomes `fds[i]`, every other fd is closed, the signal mask
/// is emptied and the child takes its place. Async-signal-safe; false if a step failed.
///
/// # Safety
/// Only in the child of [`clone_as`]; `fds` has at most 16 entries.
unsafe fn settle(fds: &[RawFd], opts: Options) -> bool {
    let nfds = fds.len() as i32;
    let base = nfds.max(3) + 16;
    let mut tmp = [0 as RawFd; 16];
    for (i, &src) in fds.iter().enumerate().take(16) {
        tmp[i] = libc::fcntl(src, libc::F_DUPFD_CLOEXEC, base);
        if tmp[i] < 0 {
            return false;
        }
    }
    for (i, &t) in tmp.iter().enumerate().take(fds.len().min(16)) {
        if libc::dup2(t, i as i32) < 0 {
            return false;
        }
    }
    libc::syscall(libc::SYS_close_range, nfds as u32, u32::MAX, 0u32);
    let mut set: libc::sigset_t = std::mem::zeroed();
    libc::sigemptyset(&mut set);
    libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    take_place(opts)
}

/// Forks and execs `prog` as pid `pid`, in its session and group as `opts` says. In the child,
/// fd `i` is `fds[i]` and every other fd is closed; the signal mask is emptied.
pub fn spawn_with_pid(
    pid: i32,
    prog: &CStr,
    argv: &[CString],
    envp: &[CString],
    fds: &[RawFd],
    opts: Options,
) -> Result<i32, SpawnError> {
    // Everything the child touches is prepared here: after clone3 only async-signal-safe calls.
    let mut argv_p: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_p.push(std::ptr::null());
    let mut envp_p: Vec<*const libc::c_char> = envp.iter().map(|a| a.as_ptr()).collect();
    envp_p.push(std::ptr::null());
    let ret = clone_as(pid, opts.exit_signal)?;
    if ret == 0 {
        // SAFETY: child side; only async-signal-safe libc calls on data prepared before clone3.
        unsafe {
            if !settle(fds, opts) {
                libc::_exit(126);
            }
            libc::execve(prog.as_ptr(), argv_p.as_ptr(), envp_p.as_ptr());
            libc::_exit(127);
        }
    }
    Ok(ret)
}

/// Forks as pid `pid` without exec: the child, a copy of this process with fd `i` = `fds[i]`
/// and no other fd, an empty signal mask and its place taken as `opts` says, gets `Ok(0)`;
/// the parent the child's pid. Only for a single-threaded caller, whose child may then run
/// any code.
pub fn fork_with_pid(pid: i32, fds: &[RawFd], opts: Options) -> Result<i32, SpawnError> {
    if fds.len() > 16 {
        return Err(SpawnError::Os(std::io::Error::from_raw_os_error(libc::EINVAL)));
    }
    let ret = clone_as(pid, opts.exit_signal)?;
    // SAFETY: child side of clone_as; at most 16 fds, checked above.
    if ret == 0 && !unsafe { settle(fds, opts) } {
        // SAFETY: ending the child that could not take its place; the parent sees it end.
        unsafe { libc::_exit(126) };
    }
    Ok(ret)
}

/// Forks a child as `pid`, named `comm`, that takes its place (`opts`, then group `join` if
/// given) and ends at once with wait status `status`: an exited child its parent has not reaped yet. Fails if the
/// child could not take its place.
pub fn zombie(pid: i32, comm: &CStr, opts: Options, join: Option<i32>, status: i32) -> Result<(), SpawnError> {
    let mut pipe = [0 as RawFd; 2];
    // SAFETY: pipe2 fills the two-element array.
    if unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(SpawnError::Os(std::io::Error::last_os_error()));
    }
    let ret = clone_as(pid, opts.exit_signal);
    if matches!(ret, Ok(0)) {
        // SAFETY: child side; only async-signal-safe calls on values prepared before clone3.
        unsafe {
            let mut err: i32 = 0;
            if !take_place(opts) || join.is_some_and(|g| libc::setpgid(0, g) != 0) {
                err = *libc::__errno_location();
                err = err.max(1);
            }
            libc::prctl(libc::PR_SET_NAME, comm.as_ptr());
            libc::write(pipe[1], (&err as *const i32).cast(), 4);
            if libc::WIFSIGNALED(status) {
                let sig = libc::WTERMSIG(status);
                // No core file: the status must not say one was dumped either (refused at
                // checkpoint time when it did).
                let none = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                libc::setrlimit(libc::RLIMIT_CORE, &none);
                libc::signal(sig, libc::SIG_DFL);
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
                libc::kill(libc::getpid(), sig);
            }
            libc::_exit(libc::WEXITSTATUS(status));
        }
    }
    // SAFETY: closing our copy of the write end; the child has its own.
    unsafe { libc::close(pipe[1]) };
    let mut err: i32 = 0;
    // SAFETY: reading 4 bytes into an i32 we own from the pipe made above.
    let n = unsafe { libc::read(pipe[0], (&mut err as *mut i32).cast(), 4) };
    // SAFETY: closing the read end made above.
    unsafe { libc::close(pipe[0]) };
    ret?;
    if n != 4 {
        return Err(SpawnError::Os(std::io::Error::other(
            "the zombie child ended before saying how it went",
        )));
    }
    if err != 0 {
        return Err(SpawnError::Os(std::io::Error::from_raw_os_error(err)));
    }
    // Its end, and so the SIGCHLD it sends (dropped while ours is neither blocked nor
    // handled), happens now, not after the program's own handler is back.
    // SAFETY: waitid into a zeroed siginfo we own; WNOWAIT leaves the child a zombie.
    let r = unsafe {
        let mut si: libc::siginfo_t = std::mem::zeroed();
        libc::waitid(libc::P_PID, pid as libc::id_t, &mut si, libc::WEXITED | libc::WNOWAIT)
    };
    if r != 0 {
        return Err(SpawnError::Os(std::io::Error::last_os_error()));
    }
    Ok(())
}
