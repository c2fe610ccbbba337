//! The process's and its threads' attributes (`ckpt_format::attrs`) set again. What the
//! restored memory cannot disturb is set at once ([`process_now`]); what each thread holds is
//! set by that thread in its last steps, before it takes the program's credentials (a lower
//! nice value or a real-time policy may need the restorer's privilege) ([`thread_ops`]), or
//! after them where a credential change would reset it ([`after_creds`]); memory locks once
//! the memory is back ([`memory_ops`]). Whatever this host cannot give back exactly fails the
//! restore first, naming it ([`check`]).

use crate::plan::Plan;
use anyhow::{bail, Context};
use ckpt_format::attrs::Locked;
use ckpt_format::{ProcessImage, ThreadImage};

const SCHED_FLAG_UTIL_CLAMP: u64 = 0x20 | 0x40;
const UCLAMP_MAX: u32 = 1024;

/// Refuses what this host cannot set: a thread bound to CPUs it does not have online.
pub fn check(img: &ProcessImage) -> anyhow::Result<()> {
    let online = online_cpus()?;
    for t in &img.threads {
        let missing: Vec<usize> = cpus(&t.attrs.affinity).filter(|c| !online.contains(c)).collect();
        if !missing.is_empty() {
            bail!(
                "thread {} was bound to CPUs {} that this host does not have online; restore it on a host that has them",
                t.tid,
                list(&missing)
            );
        }
    }
    Ok(())
}

fn cpus(mask: &[u64]) -> impl Iterator<Item = usize> + '_ {
    mask.iter()
        .enumerate()
        .flat_map(|(w, bits)| (0..64).filter(move |b| bits & (1 << b) != 0).map(move |b| w * 64 + b))
}

fn list(cpus: &[usize]) -> String {
    cpus.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(",")
}

/// `/sys/devices/system/cpu/online` ("0-3,5").
fn online_cpus() -> anyhow::Result<Vec<usize>> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/online").context("reading the CPUs online")?;
    let mut out = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let (a, b): (usize, usize) = (a.parse()?, b.parse()?);
        out.extend(a..=b);
    }
    Ok(out)
}

/// The process-wide attributes the rest of the restore does not disturb.
pub fn process_now(img: &ProcessImage) -> anyhow::Result<()> {
    let a = &img.attrs;
    std::fs::write("/proc/self/oom_score_adj", a.oom_score_adj.to_string())
        .with_context(|| format!("setting oom_score_adj {}", a.oom_score_adj))?;
    let loginuid = std::fs::read_to_string("/proc/self/loginuid").unwrap_or_default();
    if loginuid.trim() != a.loginuid.to_string() {
        std::fs::write("/proc/self/loginuid", a.loginuid.to_string())
            .with_context(|| format!("setting the audit login uid {} (needs CAP_AUDIT_CONTROL)", a.loginuid))?;
    }
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, a.thp_disabled as libc::c_ulong, 0, 0, 0) } < 0 {
        return Err(std::io::Error::last_os_error()).context("setting PR_SET_THP_DISABLE");
    }
    // SAFETY: as above.
    if unsafe {
        libc::prctl(
            libc::PR_SET_CHILD_SUBREAPER,
            a.child_subreaper as libc::c_ulong,
            0,
            0,
            0,
        )
    } < 0
    {
        return Err(std::io::Error::last_os_error()).context("setting PR_SET_CHILD_SUBREAPER");
    }
    Ok(())
}

/// What thread `t` sets for itself before it takes the program's credentials.
pub fn thread_ops(p: &mut Plan, t: &ThreadImage) {
    let a = &t.attrs;
    let mut sched = a.sched.clone();
    // Utilization clamps are set only where the kernel has them and the program changed them.
    if sched.util_max != 0 && (sched.util_min != 0 || sched.util_max != UCLAMP_MAX) {
        sched.flags |= SCHED_FLAG_UTIL_CLAMP;
    }
    let attr = p.put(&sched.to_bytes());
    p.sys(libc::SYS_sched_setattr, &[0, attr, 0], 0);
    if !a.affinity.is_empty() {
        let bytes: Vec<u8> = a.affinity.iter().flat_map(|w| w.to_le_bytes()).collect();
        let len = bytes.len() as u64;
        let mask = p.put(&bytes);
        p.sys(libc::SYS_sched_setaffinity, &[0, len, mask], 0);
    }
    p.sys(
        libc::SYS_ioprio_set,
        &[1 /* IOPRIO_WHO_PROCESS */, 0, a.ioprio as u64],
        0,
    );
    if a.timerslack_ns != 0 {
        p.sys(libc::SYS_prctl, &[libc::PR_SET_TIMERSLACK as u64, a.timerslack_ns], 0);
    }
    // Machine-check kill policy: 0 late, 1 early; 2 is the system's default, as a new thread has.
    if a.mce_kill < 2 {
        p.sys(
            libc::SYS_prctl,
            &[
                libc::PR_MCE_KILL as u64,
                libc::PR_MCE_KILL_SET as u64,
                a.mce_kill as u64,
                0,
                0,
            ],
            0,
        );
    }
}

/// What a credential change resets, set once thread `t` has the program's credentials.
pub fn after_creds(p: &mut Plan, img: &ProcessImage, t: &ThreadImage) {
    p.sys(
        libc::SYS_prctl,
        &[libc::PR_SET_DUMPABLE as u64, img.attrs.dumpable as u64],
        0,
    );
    if t.attrs.no_new_privs {
        p.sys(libc::SYS_prctl, &[libc::PR_SET_NO_NEW_PRIVS as u64, 1, 0, 0, 0], 0);
    }
}

/// Memory locks, once every mapping has its content; `mlockall`'s lock of future mappings and
/// `membarrier` registrations with them (both belong to the memory).
pub fn memory_ops(p: &mut Plan, img: &ProcessImage) {
    for m in &img.mappings {
        let flags = match m.locked {
            Locked::No => continue,
            Locked::Yes => 0,
            Locked::OnFault => 1, /* MLOCK_ONFAULT */
        };
        p.sys(libc::SYS_mlock2, &[m.start, m.end - m.start, flags], 0);
    }
    if img.attrs.mlockall != 0 {
        p.sys(libc::SYS_mlockall, &[img.attrs.mlockall as u64], 0);
    }
    for bit in 0..32 {
        let cmd = 1u64 << bit;
        if img.attrs.membarrier as u64 & cmd != 0 {
            p.sys(libc::SYS_membarrier, &[cmd, 0, 0], 0);
        }
    }
}

/// Bounds on what [`thread_ops`], [`after_creds`] and [`memory_ops`] add to the plan: (ops,
/// data bytes).
pub fn bounds(img: &ProcessImage) -> (usize, usize) {
    let threads = img.threads.len();
    let words: usize = img.threads.iter().map(|t| t.attrs.affinity.len()).sum();
    (threads * 10 + img.mappings.len() + 34, threads * 80 + words * 8)
}
