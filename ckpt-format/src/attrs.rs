//! Attributes of a process and of each of its threads that the scheduler, the memory manager
//! and `prctl` keep, beyond credentials and limits: each is set again at restore, or the
//! checkpoint is refused naming it (see `coordinatord/src/dump/attrs.rs` for how they are read,
//! `crates/restorer/src/attrs.rs` for how they are set).

use serde::{Deserialize, Serialize};

/// What the process as a whole holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcAttrs {
    /// `/proc/PID/oom_score_adj`.
    pub oom_score_adj: i32,
    /// `/proc/PID/loginuid` (audit; `u32::MAX` when unset).
    pub loginuid: u32,
    /// `PR_SET_THP_DISABLE`.
    pub thp_disabled: bool,
    /// `PR_SET_CHILD_SUBREAPER`.
    pub child_subreaper: bool,
    /// `PR_GET_DUMPABLE` (0, 1 or 2).
    pub dumpable: i32,
    /// The flags of the program's last `mlockall` still in force (`MCL_FUTURE`,
    /// `MCL_ONFAULT`: which future mappings are locked; `MCL_CURRENT` shows in the mappings).
    pub mlockall: i32,
    /// `membarrier` commands the process registered for (bit `n`: command `1 << n`).
    pub membarrier: u32,
    /// The distinct seccomp filters its threads run under, each once however many threads
    /// share it (inherited across `clone`, or synchronized with `SECCOMP_FILTER_FLAG_TSYNC`);
    /// [`ThreadAttrs::seccomp`] says which, in what order.
    pub seccomp_filters: Vec<SeccompFilter>,
}

/// What each thread holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreadAttrs {
    pub sched: SchedAttr,
    /// CPU affinity mask (`sched_getaffinity`), 64 CPUs per word.
    pub affinity: Vec<u64>,
    /// `ioprio_get(IOPRIO_WHO_PROCESS, tid)`.
    pub ioprio: i32,
    /// `PR_GET_TIMERSLACK`, in ns.
    pub timerslack_ns: u64,
    /// `PR_SET_NO_NEW_PRIVS`.
    pub no_new_privs: bool,
    /// `PR_GET_SECUREBITS` (`SECBIT_KEEP_CAPS` is `PR_SET_KEEPCAPS`).
    pub securebits: u32,
    /// `PR_MCE_KILL_GET`: 0 late, 1 early, 2 the system's default.
    pub mce_kill: u32,
    /// The thread's seccomp filters, oldest first, as indices into
    /// [`ProcAttrs::seccomp_filters`]; empty when it runs without seccomp. Installed again in
    /// this order as its last system calls before it returns to the program.
    pub seccomp: Vec<u32>,
}

/// One seccomp filter (`SECCOMP_SET_MODE_FILTER`), as `PTRACE_SECCOMP_GET_FILTER` and
/// `PTRACE_SECCOMP_GET_METADATA` give it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SeccompFilter {
    /// The classic BPF program: its `struct sock_filter` instructions (8 bytes each: code,
    /// jt, jf, k), in the kernel's byte order.
    pub program: Vec<u8>,
    /// What the kernel keeps of the flags it was installed with: `SECCOMP_FILTER_FLAG_LOG`.
    pub flags: u32,
}

impl SeccompFilter {
    /// `struct sock_filter` is 8 bytes.
    pub const INSN: usize = 8;
    /// `BPF_MAXINSNS`: the kernel takes no longer program.
    pub const MAX_INSNS: usize = 4096;
    /// `SECCOMP_FILTER_FLAG_LOG`.
    pub const FLAG_LOG: u32 = 2;

    /// Its instructions: (code, jt, jf, k).
    pub fn insns(&self) -> impl Iterator<Item = (u16, u8, u8, u32)> + '_ {
        self.program.chunks_exact(Self::INSN).map(|i| {
            (
                u16::from_ne_bytes([i[0], i[1]]),
                i[2],
                i[3],
                u32::from_ne_bytes([i[4], i[5], i[6], i[7]]),
            )
        })
    }
}

/// `struct sched_attr` as `sched_getattr` gives it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchedAttr {
    pub policy: u32,
    pub flags: u64,
    pub nice: i32,
    pub priority: u32,
    pub runtime: u64,
    pub deadline: u64,
    pub period: u64,
    pub util_min: u32,
    pub util_max: u32,
}

impl SchedAttr {
    /// The kernel's layout (`SCHED_ATTR_SIZE_VER1`, 56 bytes).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(56);
        b.extend_from_slice(&56u32.to_le_bytes());
        b.extend_from_slice(&self.policy.to_le_bytes());
        b.extend_from_slice(&self.flags.to_le_bytes());
        b.extend_from_slice(&self.nice.to_le_bytes());
        b.extend_from_slice(&self.priority.to_le_bytes());
        b.extend_from_slice(&self.runtime.to_le_bytes());
        b.extend_from_slice(&self.deadline.to_le_bytes());
        b.extend_from_slice(&self.period.to_le_bytes());
        b.extend_from_slice(&self.util_min.to_le_bytes());
        b.extend_from_slice(&self.util_max.to_le_bytes());
        b
    }

    pub fn from_bytes(b: &[u8; 56]) -> SchedAttr {
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap_or_default());
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or_default());
        SchedAttr {
            policy: u32_at(4),
            flags: u64_at(8),
            nice: u32_at(16) as i32,
            priority: u32_at(20),
            runtime: u64_at(24),
            deadline: u64_at(32),
            period: u64_at(40),
            util_min: u32_at(48),
            util_max: u32_at(52),
        }
    }
}

/// How a mapping is locked in memory (`mlock`, `mlock2(MLOCK_ONFAULT)`, `mlockall`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Locked {
    #[default]
    No,
    /// Every page resident and locked (`VM_LOCKED`).
    Yes,
    /// Pages locked as they are faulted in (`VM_LOCKONFAULT`).
    OnFault,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sched_attr_bytes_round_trip() {
        let a = SchedAttr {
            policy: 1,
            flags: 1,
            nice: -5,
            priority: 20,
            runtime: 7,
            deadline: 8,
            period: 9,
            util_min: 10,
            util_max: 1000,
        };
        let b: [u8; 56] = a.to_bytes().try_into().unwrap();
        assert_eq!(SchedAttr::from_bytes(&b), a);
    }

    #[test]
    fn seccomp_instructions_read_as_the_kernel_lays_them_out() {
        // ld [0]; ret ERRNO(EPERM)
        let mut program = vec![0x20, 0x00, 0, 0, 0, 0, 0, 0];
        program.extend_from_slice(&[0x06, 0x00, 1, 2]);
        program.extend_from_slice(&0x0005_0001u32.to_ne_bytes());
        let f = SeccompFilter { program, flags: 0 };
        let insns: Vec<_> = f.insns().collect();
        assert_eq!(insns, vec![(0x20, 0, 0, 0), (0x06, 1, 2, 0x0005_0001)]);
    }
}
