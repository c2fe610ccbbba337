//! This process's own capabilities, as `/proc/self/status` shows them.

pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_CHECKPOINT_RESTORE: u32 = 40;

/// Whether the calling thread holds `cap` in its effective set.
pub fn effective(cap: u32) -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/thread-self/status") else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << cap) != 0)
}
