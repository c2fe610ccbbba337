//! ptrace from ckptd. It is done by a short-lived helper process (ckptd started again with a
//! helper argument): a ptrace stop is reported to the tracer's `wait`, and in ckptd itself the
//! reaper thread would take it. The helpers are `crate::unblock` (the park signal in threads
//! that block it), `crate::dump::signals` (the siginfo of queued signals) and
//! `crate::dump::seccomp` (the threads' seccomp filters).

use crate::node::Reaper;
use anyhow::{bail, Context};
use std::io::{Read, Seek};
use std::time::Duration;

/// How long a helper may take before it is killed.
const HELPER_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs the helper named by `argv[1]`, if it names one: its exit status.
pub fn helper_main(argv: &[String]) -> Option<i32> {
    let run = match argv.get(1).map(String::as_str) {
        Some(crate::unblock::HELPER_ARG) => crate::unblock::run_helper,
        Some(crate::dump::signals::HELPER_ARG) => crate::dump::signals::run_helper,
        Some(crate::dump::seccomp::HELPER_ARG) => crate::dump::seccomp::run_helper,
        _ => return None,
    };
    Some(match run(&argv[2..]) {
        Ok(()) => 0,
        Err(e) => {
            // Read by the caller (`run_helper`), which puts it in its error.
            eprintln!("{e:#}");
            1
        }
    })
}

/// A helper's argument `i` (after its name), as a number.
pub fn arg<T: std::str::FromStr>(args: &[String], i: usize) -> anyhow::Result<T> {
    args.get(i)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad helper argument {i}"))
}

/// Runs ckptd as the helper `arg` with `args` and waits for it (`reaper` collects it); what it
/// wrote on its stdout. Its error is what it wrote on its stderr.
pub fn run_helper(reaper: &Reaper, arg: &str, args: &[String]) -> anyhow::Result<Vec<u8>> {
    let exe = std::env::current_exe().context("cannot find ckptd's own binary")?;
    // A file rather than a pipe: nothing to read while waiting, and a helper that hangs is
    // killed at the deadline instead of blocking the reader.
    let mut out = output_file()?;
    let mut err = output_file()?;
    let child = std::process::Command::new(exe)
        .arg(arg)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(out.try_clone().context("cannot hand the helper its output file")?)
        .stderr(err.try_clone().context("cannot hand the helper its output file")?)
        .spawn()
        .context("cannot start the helper process")?;
    reaper.child_started();
    let hpid = child.id() as i32;
    // Not Child::wait: the reaper thread reaps every child of ckptd.
    match reaper.wait_exit(hpid, HELPER_TIMEOUT) {
        Some(0) => {}
        Some(st) => {
            let mut why = String::new();
            let _ = err.rewind().and_then(|_| err.read_to_string(&mut why));
            match why.trim() {
                "" => bail!("the helper process ended with {}", crate::node::describe_status(st)),
                why => bail!("{why}"),
            }
        }
        None => {
            // It may still be attached to a thread: killing it detaches it.
            // SAFETY: killing our own child.
            unsafe { libc::kill(hpid, libc::SIGKILL) };
            let _ = reaper.wait_exit(hpid, Duration::from_secs(5));
            bail!("the helper process did not finish in {} s", HELPER_TIMEOUT.as_secs())
        }
    }
    let mut bytes = Vec::new();
    out.rewind()
        .and_then(|_| out.read_to_end(&mut bytes))
        .context("cannot read what the helper wrote")?;
    Ok(bytes)
}

/// An anonymous file for a helper's stdout or stderr.
fn output_file() -> anyhow::Result<std::fs::File> {
    let fd = nix::sys::memfd::memfd_create(c"ckpt-helper", nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC)
        .context("cannot create the helper's output file")?;
    Ok(std::fs::File::from(fd))
}

/// `ptrace(req, tid, addr, data)`.
///
/// # Safety
/// Where `req` reads or writes through `addr` or `data`, they must point to memory of the size
/// that request uses.
pub unsafe fn ptrace(req: u32, tid: i32, addr: u64, data: u64) -> std::io::Result<i64> {
    // SAFETY: the caller passes pointers valid for this request (see above).
    let r = unsafe { libc::ptrace(req, tid, addr as *mut libc::c_void, data as *mut libc::c_void) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// A thread attached with `PTRACE_SEIZE` and stopped with `PTRACE_INTERRUPT`. Detaching (also
/// when dropped) lets it run on: a system call the stop interrupted is restarted, and a signal
/// whose delivery stop came before the interrupt's is handed back.
pub struct Stopped {
    tid: i32,
    inject: u64,
    attached: bool,
}

impl Stopped {
    /// Stops `tid`; `None` when it exited meanwhile.
    pub fn attach(tid: i32) -> anyhow::Result<Option<Stopped>> {
        // SAFETY: SEIZE with no options reads no memory.
        unsafe { ptrace(libc::PTRACE_SEIZE, tid, 0, 0) }.context("cannot attach (is another debugger tracing it?)")?;
        let mut me = Stopped {
            tid,
            inject: 0,
            attached: true,
        };
        // SAFETY: INTERRUPT takes no memory.
        unsafe { ptrace(libc::PTRACE_INTERRUPT, tid, 0, 0) }.context("cannot interrupt it")?;
        loop {
            let mut st = 0;
            // SAFETY: st is a valid out-pointer.
            let r = unsafe { libc::waitpid(tid, &mut st, libc::__WALL) };
            if r < 0 {
                return Err(std::io::Error::last_os_error()).context("waiting for it to stop");
            }
            if libc::WIFEXITED(st) || libc::WIFSIGNALED(st) {
                me.attached = false;
                return Ok(None);
            }
            if libc::WIFSTOPPED(st) {
                if st >> 16 != libc::PTRACE_EVENT_STOP {
                    me.inject = libc::WSTOPSIG(st) as u64;
                }
                return Ok(Some(me));
            }
        }
    }

    pub fn detach(mut self) -> anyhow::Result<()> {
        self.attached = false;
        // SAFETY: DETACH takes a signal number, no memory.
        unsafe { ptrace(libc::PTRACE_DETACH, self.tid, 0, self.inject) }.context("detaching")?;
        Ok(())
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        if self.attached {
            // SAFETY: DETACH takes a signal number, no memory.
            let _ = unsafe { ptrace(libc::PTRACE_DETACH, self.tid, 0, self.inject) };
        }
    }
}
