//! Memory figures of a process, from /proc/PID/status (VmHWM, VmRSS, VmPTE…) and smaps_rollup
//! (Pss).

use anyhow::{anyhow, Context, Result};

/// The value of a `Vm*:` line of /proc/`pid`/status, in bytes.
pub fn vm_bytes(pid: i32, field: &str) -> Result<u64> {
    kb_line(pid, "status", field)
}

/// The process's proportional share of the memory it maps (shared pages divided among their
/// holders), in bytes: summed over a tree, what the tree costs.
pub fn pss_bytes(pid: i32) -> Result<u64> {
    kb_line(pid, "smaps_rollup", "Pss")
}

/// The value of a `field:` line in kB of /proc/`pid`/`file`, in bytes.
fn kb_line(pid: i32, file: &str, field: &str) -> Result<u64> {
    let path = format!("/proc/{pid}/{file}");
    let s = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    s.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().strip_suffix("kB")?.trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .ok_or_else(|| anyhow!("{path} has no {field} line in kB"))
}

/// Bytes as MiB with one decimal, for messages.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}
