//! Reads the attributes of a parked process and its threads (`ckpt_format::attrs`): from
//! outside where the kernel shows them (`sched_getattr`, `sched_getaffinity`, `ioprio_get`,
//! /proc), from the interposer's slots where only the process itself can ask (`prctl` getters,
//! the `mlockall` and `membarrier` calls it made). What cannot be set again exactly refuses the
//! checkpoint, naming it.

use super::DumpError;
use ckpt_format::attrs::{Locked, ProcAttrs, SchedAttr, ThreadAttrs};
use ckpt_proto::slots::{ProcSlot, ThreadSlot};
use std::collections::HashMap;

fn read_proc(pid: i32, what: &str) -> Result<String, DumpError> {
    std::fs::read_to_string(format!("/proc/{pid}/{what}")).map_err(|source| DumpError::Io {
        pid,
        what: what.to_string(),
        source,
    })
}

/// The value of `key:` in a status file.
fn status_field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(':')))
        .map(str::trim)
}

/// Why `pid` cannot be checkpointed for a tracer attached to it: a debugger or tracer outside
/// the checkpoint would not be attached again, and the program could tell (`TracerPid`, its
/// stops no longer reported). Asked before the park, which a tracer would hold up (the park
/// signal stops the thread for the tracer first).
pub fn traced(pid: i32) -> Option<DumpError> {
    let status = read_proc(pid, "status").ok()?;
    let tracer: i32 = status_field(&status, "TracerPid")
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    if tracer == 0 || tracer == std::process::id() as i32 {
        return None;
    }
    let comm = std::fs::read_to_string(format!("/proc/{tracer}/comm")).unwrap_or_default();
    Some(DumpError::Refused {
        pid,
        what: format!("it is traced by process {tracer} ({})", comm.trim()),
        advice: "detach the tracer (gdb, strace) first".into(),
    })
}

/// Why `pid` cannot be checkpointed for a NUMA memory policy (`set_mempolicy`, `mbind`,
/// `numactl`): ckpt does not set policies again, and the program would tell (`get_mempolicy`).
/// numa_maps shows each mapping's own policy, else the reading thread's: a mapping that is
/// not "default" in the process's file is one or the other, and a thread's first mapping in
/// its own file tells its policy (only that line is read; the whole file walks every page
/// table, which is why this is asked before the park, not during it).
pub fn numa_policy(pid: i32) -> Option<DumpError> {
    let refuse = |what: String| {
        DumpError::Refused {
        pid,
        what,
        advice: "ckpt cannot set memory policies again; start it without one (numactl, set_mempolicy, mbind) to checkpoint it".into(),
    }
    };
    // No such file: a kernel without NUMA, where there are no policies.
    let all = std::fs::read_to_string(format!("/proc/{pid}/numa_maps")).ok()?;
    if let Some((addr, policy)) = all.lines().find_map(non_default) {
        return Some(refuse(format!(
            "its memory at {addr} or its main thread has the NUMA memory policy {policy}"
        )));
    }
    let tids = ckpt_sys::procfs::list_numeric(&format!("/proc/{pid}/task")).ok()?;
    tids.into_iter().filter(|&t| t != pid).find_map(|tid| {
        use std::io::Read;
        let mut first = [0u8; 4096];
        let n = std::fs::File::open(format!("/proc/{pid}/task/{tid}/numa_maps"))
            .and_then(|mut f| f.read(&mut first))
            .ok()?;
        let text = String::from_utf8_lossy(&first[..n]);
        let (_, policy) = text.lines().next().and_then(non_default)?;
        Some(refuse(format!("thread {tid} has the NUMA memory policy {policy}")))
    })
}

/// A numa_maps line's address and policy (with its flags and nodes), when the policy is not
/// the default one.
fn non_default(line: &str) -> Option<(&str, &str)> {
    let (addr, rest) = line.split_once(' ')?;
    // Two of the kernel's policy names have a space in them.
    let words = if rest.starts_with("weighted interleave") || rest.starts_with("prefer (many)") {
        2
    } else {
        1
    };
    let end = rest.match_indices(' ').nth(words - 1).map_or(rest.len(), |(i, _)| i);
    let policy = &rest[..end];
    (policy != "default").then_some((addr, policy))
}

pub fn process(pid: i32, slots: &ProcSlot, status: &str) -> Result<ProcAttrs, DumpError> {
    let int = |what: &str| -> Result<i64, DumpError> {
        let s = read_proc(pid, what)?;
        s.trim().parse().map_err(|_| DumpError::Io {
            pid,
            what: what.to_string(),
            source: std::io::Error::other(format!("unexpected content {s:?}")),
        })
    };
    Ok(ProcAttrs {
        oom_score_adj: int("oom_score_adj")? as i32,
        loginuid: int("loginuid")? as u32,
        thp_disabled: status_field(status, "THP_enabled") == Some("0"),
        child_subreaper: slots.child_subreaper != 0,
        dumpable: slots.dumpable,
        mlockall: slots.mlockall,
        membarrier: slots.membarrier,
        seccomp_filters: Vec::new(),
    })
}

pub fn thread(pid: i32, t: &ThreadSlot) -> Result<ThreadAttrs, DumpError> {
    let tid = t.tid;
    let os = |what: &str| {
        let what = format!("thread {tid}: {what}");
        move |source| DumpError::Io { pid, what, source }
    };
    let mut raw = [0u8; 56];
    // SAFETY: sched_getattr writes at most `size` (56) bytes into the buffer.
    if unsafe { libc::syscall(libc::SYS_sched_getattr, tid, raw.as_mut_ptr(), 56u32, 0u32) } < 0 {
        return Err(os("scheduling attributes")(std::io::Error::last_os_error()));
    }
    let sched = SchedAttr::from_bytes(&raw);
    let mut mask = [0u64; 16];
    // SAFETY: sched_getaffinity writes at most the given size into the buffer.
    let n = unsafe {
        libc::syscall(
            libc::SYS_sched_getaffinity,
            tid,
            std::mem::size_of_val(&mask),
            mask.as_mut_ptr(),
        )
    };
    if n < 0 {
        return Err(os("CPU affinity")(std::io::Error::last_os_error()));
    }
    let words = (n as usize).div_ceil(8);
    // SAFETY: ioprio_get has integer arguments only.
    let ioprio = unsafe {
        libc::syscall(libc::SYS_ioprio_get, 1 /* IOPRIO_WHO_PROCESS */, tid)
    };
    if ioprio < 0 {
        return Err(os("I/O priority")(std::io::Error::last_os_error()));
    }
    let status = read_proc(pid, &format!("task/{tid}/status"))?;
    let no_new_privs = status_field(&status, "NoNewPrivs") == Some("1");
    let effective = status_field(&status, "CapEff").and_then(|v| u64::from_str_radix(v, 16).ok());
    super::seccomp::installable(pid, tid, status_field(&status, "Seccomp"), no_new_privs, effective)?;
    if let Some(what) = speculation_set(&status) {
        return Err(DumpError::Refused {
            pid,
            what: format!("thread {tid} has {what} set with prctl(PR_SET_SPECULATION_CTRL)"),
            advice: "checkpoint it without that mitigation".into(),
        });
    }
    // Securebits other than KEEP_CAPS take CAP_SETPCAP to set, which the restorer can only
    // use while the thread still has it.
    if t.securebits & !(1 << 4) != 0 && effective.is_some_and(|e| e & (1 << 8) == 0) {
        return Err(DumpError::Refused {
            pid,
            what: format!(
                "thread {tid} holds securebits {:#x} without CAP_SETPCAP, which they cannot be set again without",
                t.securebits
            ),
            advice: "keep CAP_SETPCAP in its effective set to checkpoint it".into(),
        });
    }
    Ok(ThreadAttrs {
        sched,
        affinity: mask[..words].to_vec(),
        ioprio: ioprio as i32,
        timerslack_ns: t.timerslack_ns,
        no_new_privs,
        securebits: t.securebits as u32,
        mce_kill: t.mce_kill as u32,
        // Read through ptrace once every thread is known (see `super::seccomp::read`).
        seccomp: Vec::new(),
    })
}

/// How each mapping (by start address) is locked in memory; read only when the process has
/// locked memory at all (`VmLck`), since smaps is slow to read.
pub fn locked(pid: i32, status: &str) -> Result<HashMap<u64, Locked>, DumpError> {
    let vmlck = status_field(status, "VmLck")
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    if vmlck == 0 {
        return Ok(HashMap::new());
    }
    let flags = ckpt_sys::procfs::vm_flags(pid, |_| true).map_err(|e| DumpError::Proc(e, pid))?;
    Ok(flags
        .into_iter()
        .filter_map(|(start, f)| {
            let has = |x: &str| f.iter().any(|g| g == x);
            match (has("lo"), has("lf")) {
                (true, true) => Some((start, Locked::OnFault)),
                (true, false) => Some((start, Locked::Yes)),
                _ => None,
            }
        })
        .collect())
}

/// A speculation mitigation the thread chose itself (the kernel shows it per thread; ckpt does
/// not set it again), named; `None` when the thread runs with the system's setting.
fn speculation_set(status: &str) -> Option<&'static str> {
    let ssb = status_field(status, "Speculation_Store_Bypass").unwrap_or("");
    let ib = status_field(status, "SpeculationIndirectBranch").unwrap_or("");
    if ssb.starts_with("thread ") {
        Some("speculative store bypass mitigated")
    } else if ib.starts_with("conditional") && ib.ends_with("disabled") {
        Some("indirect branch speculation disabled")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_numa_maps_line_names_its_policy_unless_default() {
        assert_eq!(super::non_default("7f00 default file=/lib/x mapped=3"), None);
        assert_eq!(super::non_default("7f00 bind:0 anon=2"), Some(("7f00", "bind:0")));
        assert_eq!(
            super::non_default("7f00 prefer (many):0 anon=2"),
            Some(("7f00", "prefer (many):0"))
        );
        assert_eq!(
            super::non_default("7f00 weighted interleave:0"),
            Some(("7f00", "weighted interleave:0"))
        );
    }

    #[test]
    fn only_a_threads_own_speculation_setting_is_named() {
        let st = |ssb: &str, ib: &str| {
            format!("Seccomp:\t0\nSpeculation_Store_Bypass:\t{ssb}\nSpeculationIndirectBranch:\t{ib}\n")
        };
        assert_eq!(super::speculation_set(&st("vulnerable", "always enabled")), None);
        assert_eq!(
            super::speculation_set(&st("globally mitigated", "conditional enabled")),
            None
        );
        assert!(super::speculation_set(&st("thread force mitigated", "conditional enabled")).is_some());
        assert!(super::speculation_set(&st("not vulnerable", "conditional force disabled")).is_some());
    }
}
