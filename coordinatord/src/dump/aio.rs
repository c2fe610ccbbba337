//! Kernel AIO contexts (`io_setup`) of a parked process (see `ckpt_format::aio`).
//!
//! Each mapping of an AIO ring is checked against the contexts the interposer noted: the
//! program made it through a call the interposer saw, it is the process's own (a forked
//! child maps its parent's rings but has no context), and no request is in flight. That last
//! cannot be seen from outside the kernel; it is worked out from the requests `io_submit` took
//! for the context (the interposer's count, plus a result a parked thread had not counted yet,
//! read in its registers) and the ring's tail: every request ends as one event in the ring,
//! and the ring never holds as many requests as it has slots, so the requests in flight are
//! the ones taken less the tail, modulo the ring's size. Requests of regular files finish
//! quickly: the process stays parked a short while for them. Anything else refuses the
//! checkpoint, naming the process and the context.
//!
//! This runs before the memory is read: a read that completes meanwhile writes into the
//! program's buffers.

use super::{io_err, DumpError};
use ckpt_format::aio::{ring_events, AioRing, EVENT, HEADER};
use ckpt_format::{Mapping, PROT_EXEC, PROT_READ, PROT_WRITE};
use ckpt_proto::slots::{AioSlot, ProcSlot};
use ckpt_proto::Registration;
use ckpt_sys::procfs::{self, MapEntry};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

/// How long the parked process may wait for its requests in flight to complete.
const SETTLE: Duration = Duration::from_secs(1);

/// A parked thread's registers that tell where it stands in the interposer's `io_submit`.
struct Regs {
    rip: u64,
    rax: u64,
    r8: u64,
}

/// One ring, its context as noted, and the requests taken not counted yet.
struct Ring<'a> {
    e: &'a MapEntry,
    slot: &'a AioSlot,
    uncounted: u64,
}

impl Ring<'_> {
    fn nr(&self) -> u64 {
        (self.e.len().saturating_sub(HEADER as u64)) / EVENT as u64
    }

    /// Requests in flight, given the ring's tail now.
    fn in_flight(&self, tail: u32) -> u64 {
        let nr = self.nr().max(1);
        let taken = self.slot.submitted.wrapping_add(self.uncounted) % nr;
        (taken + nr - tail as u64 % nr) % nr
    }
}

/// The process's AIO rings as mappings of the image (their memory is not stored), or the
/// refusal naming the first context that cannot be restored exactly.
pub fn capture(reg: &Registration, mem: &File, slots: &ProcSlot) -> Result<Vec<Mapping>, DumpError> {
    let pid = reg.pid;
    let maps = procfs::maps(pid).map_err(|e| DumpError::Proc(e, pid))?;
    let found: Vec<&MapEntry> = maps.iter().filter(|e| is_ring(&e.path)).collect();
    if found.is_empty() {
        return Ok(Vec::new());
    }
    let refuse = |e: &MapEntry, what: &str, advice: &str| DumpError::Refused {
        pid,
        what: format!("the AIO context {:#x} (io_setup) {what}", e.start),
        advice: advice.to_string(),
    };
    let cpus = possible_cpus().map_err(io_err(pid, "the possible CPUs"))?;
    let mut regs = None;
    let mut rings = Vec::new();
    for e in found {
        let Some(i) = slots.aio.iter().position(|a| a.ctx == e.start) else {
            if slots.aio_setup_busy > 0 {
                return Err(DumpError::AioBusy { pid });
            }
            let (what, advice) = if slots.aio_overflow != 0 {
                ("is one more than ckpt keeps count of", "make fewer contexts")
            } else {
                (
                    "was not made through libaio nor libc's syscall(), or its ring was moved, so ckpt cannot tell whether requests are in flight",
                    "make contexts through libaio or syscall()",
                )
            };
            return Err(refuse(e, what, advice));
        };
        let slot = &slots.aio[i];
        if slot.live == 0 {
            return Err(refuse(
                e,
                "is not one of its own: its ring is mapped from its parent (inherited across fork) or its context is gone",
                "unmap the ring in the child (munmap)",
            ));
        }
        if ring_events(slot.nr_events, cpus) != Some(((e.len() - HEADER as u64) / EVENT as u64) as u32) {
            return Err(refuse(
                e,
                &format!(
                    "has a ring of {} bytes, not what io_setup({}) makes here (part of it was unmapped)",
                    e.len(),
                    slot.nr_events
                ),
                "keep the ring whole",
            ));
        }
        let mut uncounted = 0;
        if slot.armed > 0 {
            let at = reg.slot_addr + ProcSlot::AIO_OFFSET + (i * std::mem::size_of::<AioSlot>()) as u64;
            if regs.is_none() {
                regs = Some(thread_regs(pid, mem, slots)?);
            }
            uncounted = uncounted_submits(slots, regs.as_deref().unwrap_or(&[]), at, slot.armed)
                .ok_or(DumpError::AioBusy { pid })?;
        }
        tracing::debug!(pid, ctx = e.start, armed = slot.armed, uncounted, "AIO context");
        rings.push(Ring { e, slot, uncounted });
    }
    settle(pid, mem, &rings, refuse)?;
    rings
        .iter()
        .map(|r| {
            let mut bytes = vec![0u8; r.e.len() as usize];
            mem.read_exact_at(&mut bytes, r.e.start)
                .map_err(io_err(pid, "an AIO ring"))?;
            Ok(mapping(r.e, r.slot.nr_events, bytes))
        })
        .collect()
}

/// Whether a mapping's name is the kernel's for an AIO ring.
pub fn is_ring(path: &str) -> bool {
    path.starts_with("/[aio]")
}

/// Waits, a short while at most, until no ring has a request in flight.
fn settle(
    pid: i32,
    mem: &File,
    rings: &[Ring<'_>],
    refuse: impl Fn(&MapEntry, &str, &str) -> DumpError,
) -> Result<(), DumpError> {
    let started = Instant::now();
    let deadline = started + SETTLE;
    loop {
        let mut busy = None;
        for r in rings {
            let tail = tail(pid, mem, r.e.start)?;
            if u64::from(tail) >= r.nr() {
                return Err(refuse(
                    r.e,
                    "has a ring whose tail was overwritten",
                    "leave the ring's tail to the kernel",
                ));
            }
            let n = r.in_flight(tail);
            if n > 0 {
                busy = Some((r, n));
                break;
            }
        }
        let Some((r, n)) = busy else {
            if started.elapsed() > Duration::from_millis(1) {
                tracing::debug!(pid, waited = ?started.elapsed(), "AIO requests in flight completed while parked");
            }
            return Ok(());
        };
        if Instant::now() >= deadline {
            let s = if n == 1 { "" } else { "s" };
            return Err(refuse(
                r.e,
                &format!(
                    "has {n} request{s} in flight (not completed after {} s)",
                    SETTLE.as_secs()
                ),
                "ckpt cannot see requests inside the kernel: checkpoint once they have completed (reaped or not), or io_cancel them",
            ));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn tail(pid: i32, mem: &File, ring: u64) -> Result<u32, DumpError> {
    let mut w = [0u8; 4];
    mem.read_exact_at(&mut w, ring + 12)
        .map_err(io_err(pid, "an AIO ring"))?;
    Ok(u32::from_ne_bytes(w))
}

/// The requests taken by `io_submit` calls whose result the parked threads had not counted
/// yet, for the entry at `at` (in the program) with `armed` threads inside the call; None
/// when one of them is not where its registers show (a handler of the program's interrupted
/// it): another try parks it elsewhere.
fn uncounted_submits(slots: &ProcSlot, regs: &[Regs], at: u64, armed: u64) -> Option<u64> {
    let [armed_at, returned, add, _, end] = slots.aio_code;
    let inside: Vec<&Regs> = regs
        .iter()
        .filter(|r| r.r8 == at && (armed_at..end).contains(&r.rip))
        .collect();
    if inside.len() as u64 != armed {
        return None;
    }
    // Between the system call's return and the addition, rax holds its result.
    Some(
        inside
            .iter()
            .filter(|r| (returned..=add).contains(&r.rip) && (r.rax as i64) > 0)
            .map(|r| r.rax)
            .sum(),
    )
}

/// Each parked thread's registers, from the signal frame it parked on.
fn thread_regs(pid: i32, mem: &File, slots: &ProcSlot) -> Result<Vec<Regs>, DumpError> {
    let gregs = std::mem::offset_of!(libc::ucontext_t, uc_mcontext) + std::mem::offset_of!(libc::mcontext_t, gregs);
    let reg = |buf: &[u8], r: libc::c_int| {
        let o = r as usize * 8;
        u64::from_ne_bytes(buf[o..o + 8].try_into().unwrap_or_default())
    };
    let n = (slots.nthreads as usize).min(slots.threads.len());
    slots.threads[..n]
        .iter()
        .map(|t| {
            let mut buf = [0u8; 23 * 8];
            mem.read_exact_at(&mut buf, t.uc_addr + gregs as u64)
                .map_err(io_err(pid, "a thread's registers"))?;
            Ok(Regs {
                rip: reg(&buf, libc::REG_RIP),
                rax: reg(&buf, libc::REG_RAX),
                r8: reg(&buf, libc::REG_R8),
            })
        })
        .collect()
}

/// The kernel's `num_possible_cpus()`, which sizes rings.
fn possible_cpus() -> std::io::Result<u32> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/possible")?;
    let mut n = 0;
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        let mut ends = part.split('-').map(|v| v.parse::<u32>());
        match (ends.next(), ends.next()) {
            (Some(Ok(a)), Some(Ok(b))) if b >= a => n += b - a + 1,
            (Some(Ok(_)), None) => n += 1,
            _ => return Err(std::io::Error::other(format!("cannot parse {text:?}"))),
        }
    }
    Ok(n)
}

fn mapping(e: &MapEntry, nr_events: u32, bytes: Vec<u8>) -> Mapping {
    let prot = (e.read as u32 * PROT_READ) | (e.write as u32 * PROT_WRITE) | (e.exec as u32 * PROT_EXEC);
    Mapping {
        start: e.start,
        end: e.end,
        prot,
        shared: e.shared,
        kind: ckpt_format::MappingKind::AioRing(AioRing { nr_events, bytes }),
        name: e.path.clone(),
        pages: Vec::new(),
        shared_with: None,
        locked: Default::default(),
        tracked: false,
        may_write: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regs(rip: u64, rax: u64, r8: u64) -> Regs {
        Regs { rip, rax, r8 }
    }

    #[test]
    fn uncounted_results_are_read_where_the_call_stands() {
        let mut slots = Box::new(ProcSlot::new());
        slots.aio_code = [100, 110, 120, 130, 140];
        let at = 5000;
        // Before the system call, between it and the addition, after it, another entry's.
        let rs = [
            regs(105, 0, at),
            regs(110, 7, at),
            regs(120, 3, at),
            regs(130, 9, at),
            regs(115, 4, 6000),
        ];
        assert_eq!(uncounted_submits(&slots, &rs, at, 4), Some(10));
        // A failed call adds nothing.
        assert_eq!(
            uncounted_submits(&slots, &[regs(110, (-11i64) as u64, at)], at, 1),
            Some(0)
        );
        // One thread inside not found where the count says: try again.
        assert_eq!(uncounted_submits(&slots, &rs, at, 5), None);
        assert_eq!(uncounted_submits(&slots, &[regs(140, 1, at)], at, 1), None);
    }
}
