//! ckptd's own session. With autogroups (the default of most distributions), the scheduler
//! shares the CPU between sessions first and between the processes of a session second: a
//! ckptd started from the shell session of a busy workload gets one share among all its
//! processes, and a checkpoint asked for under load comes seconds late. In a session of its
//! own, it has an autogroup of its own, a share as big as the whole workload's.
//!
//! A process that leads its process group (a job of an interactive shell, `ckptd &`) cannot
//! start a session. ckptd does not fork to get around that: its pid is what the shell's `$!`,
//! `kill %1` and the service managers know it by, and what tests wait for. It says how to start
//! it instead.

/// Puts ckptd in a session of its own when it can; warns when it cannot and it matters.
pub fn own() {
    // SAFETY: getsid, getpid and setsid take no pointers.
    let (sid, pid) = unsafe { (libc::getsid(0), libc::getpid()) };
    if sid == pid {
        // Started by `setsid`, a service manager: already alone.
        return;
    }
    // SAFETY: as above.
    if unsafe { libc::setsid() } >= 0 {
        tracing::debug!("in a session of its own (its own scheduler autogroup)");
        return;
    }
    if autogroups() {
        tracing::warn!(
            "ckptd leads a process group (a job of a shell?), so it cannot have a session of its own and \
             shares its session's CPU with the programs started from it: under load, a checkpoint comes late. \
             Start it with `setsid ckptd` (or in a cgroup of its own, e.g. systemd's CPUWeight=)"
        );
    }
}

/// Whether the scheduler groups processes by session.
fn autogroups() -> bool {
    std::fs::read_to_string("/proc/sys/kernel/sched_autogroup_enabled").is_ok_and(|s| s.trim() == "1")
}
