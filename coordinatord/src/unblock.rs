//! Threads that block the park signal themselves cannot park: glibc's helper threads for
//! `SIGEV_THREAD` timers and `mq_notify` block every signal, and so does code that calls
//! `rt_sigprocmask` directly (the interposer's `sigprocmask` filter never sees it). The signal
//! stays pending in them. ckptd unblocks it from the outside with ptrace (`PTRACE_SETSIGMASK`),
//! and writes the thread into the slots' `reblock` list: the thread parks, and blocks the signal
//! again as it resumes, so its mask is the program's own again.
//!
//! The tracing is done by a helper process (see `crate::trace`).

use crate::trace::Stopped;
use anyhow::{bail, Context};
use ckpt_proto::slots::{ProcSlot, MAX_REBLOCK};
use std::os::unix::fs::FileExt;

/// First argument that makes `ckptd` the helper: `ckptd HELPER_ARG PID SIGNAL SLOT_ADDR TID…`.
pub const HELPER_ARG: &str = "--unblock-park-signal";

/// Threads of `pid` asleep with `sig` blocked while it is pending for them.
pub fn stuck_threads(pid: i32, sig: i32) -> Vec<i32> {
    let bit = 1u64 << (sig - 1);
    let tids = ckpt_sys::procfs::list_numeric(&format!("/proc/{pid}/task")).unwrap_or_default();
    tids.into_iter()
        .filter(|&t| {
            ckpt_sys::procfs::status(pid, Some(t))
                .is_ok_and(|st| st.sig_blk & bit != 0 && (st.sig_pnd | st.shd_pnd) & bit != 0 && st.state == 'S')
        })
        .collect()
}

/// Unblocks `sig` in `tids` of `pid` through the helper process; `reaper` collects it.
pub fn unblock(reaper: &crate::node::Reaper, pid: i32, sig: i32, slot_addr: u64, tids: &[i32]) -> anyhow::Result<()> {
    let mut args = vec![pid.to_string(), sig.to_string(), slot_addr.to_string()];
    args.extend(tids.iter().map(i32::to_string));
    let threads = tids.iter().map(i32::to_string).collect::<Vec<_>>().join(", ");
    crate::trace::run_helper(reaper, HELPER_ARG, &args)
        .with_context(|| format!("could not unblock the park signal in thread(s) {threads} of process {pid}"))?;
    Ok(())
}

/// The helper process's main: every thread was handled when it returns Ok.
pub fn run_helper(args: &[String]) -> anyhow::Result<()> {
    let num = |i: usize| crate::trace::arg::<u64>(args, i);
    let pid = num(0)? as i32;
    let sig = num(1)? as i32;
    let slot = num(2)?;
    let mem = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(format!("/proc/{pid}/mem"))
        .with_context(|| format!("cannot open the memory of process {pid}"))?;
    let mut failed = Vec::new();
    for i in 3..args.len() {
        let tid = num(i)? as i32;
        if let Err(e) = unblock_one(pid, tid, sig, slot, &mem) {
            failed.push(format!("thread {tid}: {e:#}"));
        }
    }
    if !failed.is_empty() {
        bail!("{}", failed.join("; "));
    }
    Ok(())
}

fn unblock_one(pid: i32, tid: i32, sig: i32, slot: u64, mem: &std::fs::File) -> anyhow::Result<()> {
    let Some(t) = Stopped::attach(tid)? else {
        // It exited meanwhile: nothing left to park.
        return Ok(());
    };
    let mut mask = 0u64;
    // SAFETY: GETSIGMASK writes 8 bytes (the size given) to `mask`.
    unsafe { crate::trace::ptrace(libc::PTRACE_GETSIGMASK, tid, 8, &mut mask as *mut u64 as u64) }
        .context("reading its mask")?;
    mask &= !(1u64 << (sig - 1));
    // SAFETY: SETSIGMASK reads 8 bytes (the size given) from `mask`.
    unsafe { crate::trace::ptrace(libc::PTRACE_SETSIGMASK, tid, 8, &mask as *const u64 as u64) }
        .context("changing its mask")?;
    mark_reblock(pid, tid, slot, mem)?;
    t.detach()
}

/// Adds `tid` to the slots' reblock list (before the thread can take the signal).
fn mark_reblock(pid: i32, tid: i32, slot: u64, mem: &std::fs::File) -> anyhow::Result<()> {
    let at = slot + ProcSlot::REBLOCK_OFFSET;
    let mut buf = [0u8; 4 * MAX_REBLOCK];
    mem.read_exact_at(&mut buf, at)
        .with_context(|| format!("reading the slots of process {pid}"))?;
    let free = (0..MAX_REBLOCK)
        .find(|&i| i32::from_ne_bytes(buf[4 * i..4 * i + 4].try_into().unwrap_or_default()) == 0)
        .with_context(|| format!("more than {MAX_REBLOCK} threads of process {pid} block the park signal"))?;
    mem.write_all_at(&tid.to_ne_bytes(), at + 4 * free as u64)
        .with_context(|| format!("writing the slots of process {pid}"))?;
    Ok(())
}
