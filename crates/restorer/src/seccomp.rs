//! The threads' seccomp filters installed again (`ckpt_format::attrs::SeccompFilter`). Each
//! thread installs its own, oldest first, as its very last system calls: after it has taken
//! the program's credentials and `no_new_privs` back (installing a filter takes one of
//! `no_new_privs` and `CAP_SYS_ADMIN`; the checkpoint refused a thread with neither), and
//! right before the `rt_sigreturn` into the program. That `rt_sigreturn` is the one restore
//! step that runs under the program's filters: a program whose filters refused it could not
//! return from any signal handler, so every filter a program can live with lets it through.
//! No other filter is added: the restorer itself runs without seccomp ([`check`]), and the
//! threads it clones start from it, so each thread ends with exactly its own filters
//! (`Seccomp_filters` as at the checkpoint).
//!
//! Threads that share their filters (every thread under the same chain: filters a parent
//! installed before it started the program, or installed with `SECCOMP_FILTER_FLAG_TSYNC`)
//! share them again: the main thread installs the chain for all of them with
//! `SECCOMP_FILTER_FLAG_TSYNC` once every other thread has done its last system call and waits
//! without making any (a spin on a word, no futex), so that the program can still synchronize
//! a filter of its own later (the kernel requires the other threads' filters to be the very
//! same objects). Otherwise each thread installs its own: the same programs in the same order,
//! so every system call gets the same answer, but as copies, which only a later
//! `SECCOMP_FILTER_FLAG_TSYNC` could tell (see the README).

use crate::blob::{Op, ADD, WAIT};
use crate::plan::Plan;
use anyhow::bail;
use ckpt_format::attrs::SeccompFilter;
use ckpt_format::{ProcessImage, ThreadImage};

const SECCOMP_SET_MODE_FILTER: u64 = 1;
/// Installing a filter without it makes the kernel force speculation mitigations on the
/// thread where the system is set so (`spec_store_bypass_disable=seccomp`); the checkpoint
/// refused a thread under such a mitigation, so none is wanted.
const SECCOMP_FILTER_FLAG_SPEC_ALLOW: u64 = 4;
const CAP_SYS_ADMIN: u64 = 1 << 21;

/// Refuses, before anything of the program is in place, what the ops could only report as a
/// failed system call once the status fd is gone: a restorer under seccomp itself (its
/// filters would stay on every restored thread), a malformed filter, a thread that could not
/// install its filters.
pub fn check(img: &ProcessImage) -> anyhow::Result<()> {
    let mode = ckpt_sys::seccomp::own_mode();
    if mode != 0 {
        bail!("ckpt-restore runs under seccomp (mode {mode}, from ckptd), which every restored thread would keep on top of its own filters; run ckptd outside any seccomp filter");
    }
    let filters = &img.attrs.seccomp_filters;
    for (i, f) in filters.iter().enumerate() {
        let insns = f.program.len() / SeccompFilter::INSN;
        if !f.program.len().is_multiple_of(SeccompFilter::INSN) || insns == 0 || insns > SeccompFilter::MAX_INSNS {
            bail!(
                "seccomp filter {i} of the image is {} bytes, not a BPF program; the image is damaged",
                f.program.len()
            );
        }
        if f.flags & !SeccompFilter::FLAG_LOG != 0 {
            bail!(
                "seccomp filter {i} of the image has flags {:#x} this ckpt-restore does not know",
                f.flags
            );
        }
    }
    for t in &img.threads {
        if t.attrs.seccomp.iter().any(|&i| i as usize >= filters.len()) {
            bail!(
                "thread {} names a seccomp filter the image does not hold; the image is damaged",
                t.tid
            );
        }
        if !t.attrs.seccomp.is_empty() && !t.attrs.no_new_privs && t.caps.effective & CAP_SYS_ADMIN == 0 {
            bail!(
                "thread {} of pid {} ran under seccomp filters without no_new_privs or CAP_SYS_ADMIN, which it could not install again",
                t.tid,
                img.pid
            );
        }
    }
    Ok(())
}

/// Where each of the process's filters lies in the restored memory (the address of its
/// `struct sock_fprog`, by index), and how the threads meet when they share them.
pub struct Placed {
    fprogs: Vec<u64>,
    shared: Option<Meeting>,
}

/// The words by which the threads sharing one chain meet: `done` counts the other threads that
/// made their last system call, `go` is set once the main thread has installed the chain.
struct Meeting {
    done: u64,
    go: u64,
}

const SCHED_FIFO: u32 = 1;
const SCHED_RR: u32 = 2;
const SCHED_DEADLINE: u32 = 6;
const SECCOMP_FILTER_FLAG_TSYNC: u64 = 1;

/// Whether the main thread can install the chain for every thread at once: all have the same
/// one; synchronizing would not give them `no_new_privs` they lacked (it passes the
/// installer's on); and no thread runs a real-time policy, under which a thread spinning
/// until the chain is in place could keep the others off its CPU.
fn shareable(img: &ProcessImage) -> bool {
    let Some((main, others)) = img.threads.split_first() else {
        return false;
    };
    !others.is_empty()
        && !main.attrs.seccomp.is_empty()
        && others.iter().all(|t| t.attrs.seccomp == main.attrs.seccomp)
        && (!main.attrs.no_new_privs || others.iter().all(|t| t.attrs.no_new_privs))
        && img
            .threads
            .iter()
            .all(|t| !matches!(t.attrs.sched.policy, SCHED_FIFO | SCHED_RR | SCHED_DEADLINE))
}

/// Places every filter of the process once in the plan's data, which stays mapped until the
/// threads have returned to the program.
pub fn place(p: &mut Plan, img: &ProcessImage) -> Placed {
    let fprogs = img
        .attrs
        .seccomp_filters
        .iter()
        .map(|f| {
            let program = p.put(&f.program);
            // struct sock_fprog: the length in instructions (unsigned short, then padding),
            // the address of the program.
            p.put_u64s(&[(f.program.len() / SeccompFilter::INSN) as u64, program])
        })
        .collect();
    let shared = shareable(img).then(|| Meeting {
        done: p.put_u64s(&[0]),
        go: p.put_u64s(&[0]),
    });
    Placed { fprogs, shared }
}

/// The last ops of thread `t` before its `rt_sigreturn` (`main`: the main thread, the last to
/// run its own steps): its filters, oldest first, or its part in installing them for all. A
/// failure ends the process (the blob's exit): never a program without its filters.
pub fn last_ops(p: &mut Plan, img: &ProcessImage, t: &ThreadImage, placed: &Placed, main: bool) -> anyhow::Result<()> {
    let others = img.threads.len() as u64 - 1;
    match &placed.shared {
        None => install(p, img, t, placed, 0),
        Some(m) if main => {
            // Unfiltered still: it may yield while the others finish.
            wait(p, m.done, others, true);
            install(p, img, t, placed, SECCOMP_FILTER_FLAG_TSYNC)?;
            p.poke(m.go, 1);
            Ok(())
        }
        Some(m) => {
            p.ops.push(Op {
                kind: ADD,
                flags: 0,
                nr: 0,
                args: [m.done, 1, 0, 0, 0, 0],
            });
            wait(p, m.go, 1, false);
            Ok(())
        }
    }
}

fn wait(p: &mut Plan, word: u64, until: u64, may_yield: bool) {
    p.ops.push(Op {
        kind: WAIT,
        flags: 0,
        nr: 0,
        args: [word, until, may_yield as u64, 0, 0, 0],
    });
}

fn install(p: &mut Plan, img: &ProcessImage, t: &ThreadImage, placed: &Placed, sync: u64) -> anyhow::Result<()> {
    for &i in &t.attrs.seccomp {
        let (Some(f), Some(&fprog)) = (img.attrs.seccomp_filters.get(i as usize), placed.fprogs.get(i as usize)) else {
            bail!(
                "thread {} names a seccomp filter the image does not hold; the image is damaged",
                t.tid
            );
        };
        let flags = f.flags as u64 | SECCOMP_FILTER_FLAG_SPEC_ALLOW | sync;
        p.sys(libc::SYS_seccomp, &[SECCOMP_SET_MODE_FILTER, flags, fprog], 0);
    }
    Ok(())
}

/// Bounds on what [`place`] and [`last_ops`] add to the plan: (ops, data bytes).
pub fn bounds(img: &ProcessImage) -> (usize, usize) {
    let ops = img.threads.iter().map(|t| t.attrs.seccomp.len() + 2).sum();
    let data = img
        .attrs
        .seccomp_filters
        .iter()
        .map(|f| f.program.len() + 48)
        .sum::<usize>()
        + 64;
    (ops, data)
}
