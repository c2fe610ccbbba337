//! Seccomp filters of a parked process's threads, read to be installed again at restore
//! (`ckpt_format::attrs::SeccompFilter`; the restorer's `seccomp` installs them). The kernel
//! shows only how many filters a thread has; the programs themselves are read with
//! `PTRACE_SECCOMP_GET_FILTER` by a helper process (see `crate::trace`), which stops each
//! filtered thread for that moment with `PTRACE_INTERRUPT`: the thread waits in the park's futex,
//! which the kernel restarts as the helper lets go, so the park does not notice.
//!
//! Refused, naming the thread: strict mode (before the park, which would kill such a thread);
//! filters the thread could not install again itself (neither `no_new_privs` nor
//! `CAP_SYS_ADMIN`); a filter that may hand system calls to a supervisor
//! (`SECCOMP_RET_USER_NOTIF`: its listener belongs to someone else); filters this ckptd cannot
//! read (it lacks `CAP_SYS_ADMIN`, or runs under seccomp itself).

use super::DumpError;
use crate::node::Reaper;
use crate::trace::Stopped;
use anyhow::{bail, Context};
use ckpt_format::attrs::SeccompFilter;
use ckpt_format::ProcessImage;
use std::io::Write;

/// First argument that makes `ckptd` the helper: `ckptd HELPER_ARG PID TID…` reads the
/// filters of each stopped TID and writes, for each, its tid, the number of filters and each
/// filter (oldest first): its flags, its length in bytes, its program.
pub const HELPER_ARG: &str = "--seccomp-filters";

const CAP_SYS_ADMIN: u64 = 1 << 21;
/// `SECCOMP_RET_USER_NOTIF`, under `SECCOMP_RET_ACTION_FULL`.
const RET_USER_NOTIF: u32 = 0x7fc0_0000;
const RET_ACTION_FULL: u32 = 0xffff_0000;
/// `BPF_RET` class, and the `BPF_A` source of a return.
const BPF_RET: u16 = 0x06;
const BPF_A: u16 = 0x10;

/// A thread that runs under seccomp filters, and how many the kernel says it has.
#[derive(Debug, Clone, Copy)]
pub struct Filtered {
    pub tid: i32,
    pub count: u32,
}

/// Refuses a thread whose seccomp state could not be installed again: strict mode (see
/// [`strict`]), or filters without `no_new_privs` or `CAP_SYS_ADMIN`. The restored thread
/// installs its filters itself once it has the program's credentials back, and the kernel
/// lets it only with one of those two; installing them earlier would run the rest of the
/// restore under the program's filters.
pub fn installable(
    pid: i32,
    tid: i32,
    mode: Option<&str>,
    no_new_privs: bool,
    effective: Option<u64>,
) -> Result<(), DumpError> {
    match mode.unwrap_or("0") {
        "0" => Ok(()),
        "2" if no_new_privs || effective.is_some_and(|e| e & CAP_SYS_ADMIN != 0) => Ok(()),
        "2" => Err(DumpError::Refused {
            pid,
            what: format!(
                "thread {tid} runs under seccomp filters but has neither no_new_privs nor CAP_SYS_ADMIN, without which it could not install them again"
            ),
            advice: "set no_new_privs (prctl(PR_SET_NO_NEW_PRIVS)) before installing filters, or keep CAP_SYS_ADMIN".into(),
        }),
        _ => Err(strict_refusal(pid, tid)),
    }
}

fn strict_refusal(pid: i32, tid: i32) -> DumpError {
    DumpError::Refused {
        pid,
        what: format!(
            "thread {tid} runs in seccomp strict mode, where any system call but read, write, exit and rt_sigreturn kills it (parking it included)"
        ),
        advice: "checkpoint it before it enters strict mode".into(),
    }
}

/// Why `pid` cannot be checkpointed for a thread in seccomp strict mode, asked before its
/// communication is stopped: the park (and a held write) makes system calls strict mode kills
/// the process for.
pub fn strict(pid: i32) -> Option<DumpError> {
    let tids = ckpt_sys::procfs::list_numeric(&format!("/proc/{pid}/task")).ok()?;
    tids.into_iter().find_map(|tid| {
        let st = ckpt_sys::procfs::status(pid, Some(tid)).ok()?;
        (st.seccomp == 1).then(|| strict_refusal(pid, tid))
    })
}

/// Fills the seccomp filters of `img`'s threads listed in `filtered` (parked), each distinct
/// filter once in the process's list.
pub fn read(reaper: &Reaper, img: &mut ProcessImage, filtered: &[Filtered]) -> Result<(), DumpError> {
    let pid = img.pid;
    let Some(first) = filtered.first() else {
        return Ok(());
    };
    let err = |msg: String| DumpError::Seccomp { pid, msg };
    if !ckpt_sys::caps::effective(ckpt_sys::caps::CAP_SYS_ADMIN) || ckpt_sys::seccomp::own_mode() != 0 {
        return Err(err(format!(
            "thread {} runs under {} seccomp filters, which this ckptd cannot read: PTRACE_SECCOMP_GET_FILTER needs CAP_SYS_ADMIN and a ckptd that does not run under seccomp itself; run ckptd as root, outside any seccomp filter",
            first.tid, first.count
        )));
    }
    let mut args = vec![pid.to_string()];
    args.extend(filtered.iter().map(|f| f.tid.to_string()));
    let out = crate::trace::run_helper(reaper, HELPER_ARG, &args).map_err(|e| err(format!("{e:#}")))?;
    let chains = decode(&out).ok_or_else(|| err("the helper's answer is malformed".into()))?;
    for f in filtered {
        let Some((_, chain)) = chains.iter().find(|(tid, _)| *tid == f.tid) else {
            return Err(err(format!("the filters of thread {} were not read", f.tid)));
        };
        if chain.len() != f.count as usize {
            return Err(err(format!(
                "thread {} showed {} filters but {} were read; try again",
                f.tid,
                f.count,
                chain.len()
            )));
        }
        let mut indices = Vec::with_capacity(chain.len());
        for filter in chain {
            refuse_unrestorable(pid, f.tid, filter)?;
            let list = &mut img.attrs.seccomp_filters;
            let at = match list.iter().position(|g| g == filter) {
                Some(at) => at,
                None => {
                    list.push(filter.clone());
                    list.len() - 1
                }
            };
            indices.push(at as u32);
        }
        if let Some(t) = img.threads.iter_mut().find(|t| t.tid == f.tid) {
            t.attrs.seccomp = indices;
        }
    }
    Ok(())
}

/// Refuses a filter the restore could not install as it was: one that may hand system calls
/// to a supervisor (its listener fd, if any, is someone else's), or flags this ckpt does not
/// know.
fn refuse_unrestorable(pid: i32, tid: i32, f: &SeccompFilter) -> Result<(), DumpError> {
    if may_notify(f) {
        return Err(DumpError::Refused {
            pid,
            what: format!(
                "thread {tid} runs under a seccomp filter that may hand its system calls to a supervisor (SECCOMP_RET_USER_NOTIF), whose listener could not be connected again"
            ),
            advice: "checkpoint it without that filter".into(),
        });
    }
    if f.flags & !SeccompFilter::FLAG_LOG != 0 {
        return Err(DumpError::Refused {
            pid,
            what: format!("thread {tid} runs under a seccomp filter with flags {:#x}", f.flags),
            advice: "checkpoint it without that filter".into(),
        });
    }
    Ok(())
}

/// Whether the filter can return `SECCOMP_RET_USER_NOTIF`: it returns that constant, or a
/// value it computed (`ret A`), which could be anything.
fn may_notify(f: &SeccompFilter) -> bool {
    f.insns().any(|(code, _, _, k)| {
        code & 0x07 == BPF_RET && (code & 0x18 == BPF_A || k & RET_ACTION_FULL == RET_USER_NOTIF)
    })
}

/// The helper process's main.
pub fn run_helper(args: &[String]) -> anyhow::Result<()> {
    let num = |i: usize| crate::trace::arg::<i32>(args, i);
    let pid = num(0)?;
    let mut out = Vec::new();
    for i in 1..args.len() {
        let tid = num(i)?;
        // Never another process's thread under a reused number.
        if !std::path::Path::new(&format!("/proc/{pid}/task/{tid}")).exists() {
            bail!("thread {tid} exited while parked");
        }
        let Some(t) = Stopped::attach(tid).with_context(|| format!("thread {tid}"))? else {
            bail!("thread {tid} exited while parked");
        };
        let mut chain = Vec::new();
        for index in 0.. {
            let fail =
                |e: std::io::Error| anyhow::anyhow!("filter {index} of thread {tid}: {}", ckpt_sys::seccomp::why(&e));
            let Some(program) = ckpt_sys::seccomp::filter(tid, index).map_err(fail)? else {
                break;
            };
            let flags = ckpt_sys::seccomp::filter_flags(tid, index).map_err(fail)?;
            chain.push(SeccompFilter { program, flags });
        }
        t.detach().with_context(|| format!("thread {tid}"))?;
        encode(tid, &chain, &mut out);
    }
    std::io::stdout().write_all(&out).context("cannot write the filters")
}

/// One thread's filters on the helper's output.
fn encode(tid: i32, chain: &[SeccompFilter], out: &mut Vec<u8>) {
    out.extend_from_slice(&tid.to_le_bytes());
    out.extend_from_slice(&(chain.len() as u32).to_le_bytes());
    for f in chain {
        out.extend_from_slice(&f.flags.to_le_bytes());
        out.extend_from_slice(&(f.program.len() as u32).to_le_bytes());
        out.extend_from_slice(&f.program);
    }
}

/// The helper's output: each thread and its filters; `None` when it is cut short or a program
/// is not whole instructions.
fn decode(mut b: &[u8]) -> Option<Vec<(i32, Vec<SeccompFilter>)>> {
    fn u32_at(b: &[u8], at: usize) -> Option<u32> {
        Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
    }
    let mut chains = Vec::new();
    while !b.is_empty() {
        let tid = u32_at(b, 0)? as i32;
        let n = u32_at(b, 4)?;
        b = &b[8..];
        let mut chain = Vec::new();
        for _ in 0..n {
            let flags = u32_at(b, 0)?;
            let len = u32_at(b, 4)? as usize;
            let program = b.get(8..8 + len)?.to_vec();
            if len == 0 || !len.is_multiple_of(SeccompFilter::INSN) {
                return None;
            }
            chain.push(SeccompFilter { program, flags });
            b = &b[8 + len..];
        }
        chains.push((tid, chain));
    }
    Some(chains)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn insn(code: u16, k: u32) -> Vec<u8> {
        let mut v = code.to_ne_bytes().to_vec();
        v.extend_from_slice(&[0, 0]);
        v.extend_from_slice(&k.to_ne_bytes());
        v
    }

    #[test]
    fn filters_read_back_as_written() {
        let a = SeccompFilter {
            program: insn(0x06, 0x7fff_0000),
            flags: 0,
        };
        let b = SeccompFilter {
            program: [insn(0x20, 0), insn(0x06, 0x0005_0001)].concat(),
            flags: SeccompFilter::FLAG_LOG,
        };
        let mut out = Vec::new();
        encode(7, &[a.clone(), b.clone()], &mut out);
        encode(8, &[], &mut out);
        let chains = decode(&out).expect("well formed");
        assert_eq!(chains, vec![(7, vec![a, b]), (8, vec![])]);
        assert!(decode(&out[..out.len() - 9]).is_none());
    }

    #[test]
    fn only_filters_that_can_notify_a_supervisor_are_named() {
        let prog = |code, k| SeccompFilter {
            program: [insn(0x20, 0), insn(code, k)].concat(),
            flags: 0,
        };
        assert!(!may_notify(&prog(0x06, 0x7fff_0000)), "ret ALLOW");
        assert!(!may_notify(&prog(0x06, 0x0005_0001)), "ret ERRNO(EPERM)");
        assert!(may_notify(&prog(0x06, 0x7fc0_0000)), "ret USER_NOTIF");
        assert!(may_notify(&prog(0x16, 0)), "ret A");
        // A load of the constant is not a return of it.
        assert!(!may_notify(&prog(0x00, 0x7fc0_0000)));
    }

    #[test]
    fn strict_mode_and_filters_without_privilege_are_refused() {
        assert!(installable(1, 1, Some("0"), false, Some(0)).is_ok());
        assert!(installable(1, 1, Some("2"), true, Some(0)).is_ok());
        assert!(installable(1, 1, Some("2"), false, Some(CAP_SYS_ADMIN)).is_ok());
        assert!(installable(1, 1, Some("2"), false, Some(0)).is_err());
        assert!(installable(1, 1, Some("1"), true, Some(u64::MAX)).is_err());
    }
}
