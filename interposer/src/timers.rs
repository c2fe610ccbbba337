//! POSIX timers at the park: their ids from /proc/self/timers, their remaining time and interval
//! from `timer_gettime`, which only the process itself can call. How each notifies (signal,
//! thread, value) ckptd reads from /proc/PID/timers while the process is parked.
//!
//! Runs in the control thread's park handler while the other threads are parked: raw system
//! calls and a static buffer, no allocation.

use crate::sys::raw6;
use ckpt_proto::slots::{ProcSlot, TimerSlot, MAX_TIMERS, TIMERS_OVERFLOW};
use std::cell::UnsafeCell;

const BUF_LEN: usize = 16 << 10;

struct Buf(UnsafeCell<[u8; BUF_LEN]>);
// SAFETY: only the control thread, in its park handler, uses the buffer.
unsafe impl Sync for Buf {}
static BUF: Buf = Buf(UnsafeCell::new([0; BUF_LEN]));

/// Fills `p.ntimers` and `p.timers`; `TIMERS_OVERFLOW` when the list does not fit or cannot be read.
pub fn record(p: &mut ProcSlot) {
    p.ntimers = match read_list() {
        Some(len) => {
            // SAFETY: the buffer is ours alone here (see `Buf`).
            let buf: &[u8; BUF_LEN] = unsafe { &*BUF.0.get() };
            fill(&buf[..len], &mut p.timers).unwrap_or(TIMERS_OVERFLOW)
        }
        None => TIMERS_OVERFLOW,
    };
}

/// Reads /proc/self/timers into BUF; its length, or None if unreadable or larger than BUF.
fn read_list() -> Option<usize> {
    let fd = crate::fds::open_proc(c"self/timers", libc::O_RDONLY);
    if fd < 0 {
        return None;
    }
    let mut len = 0usize;
    let full = loop {
        // SAFETY: the buffer is ours alone here; reading into its unused tail.
        let n = unsafe {
            let b = &mut *BUF.0.get();
            raw6(
                libc::SYS_read,
                [fd as u64, b[len..].as_mut_ptr() as u64, (BUF_LEN - len) as u64, 0, 0, 0],
            )
        };
        if n < 0 {
            break true;
        }
        if n == 0 {
            break false;
        }
        len += n as usize;
        if len == BUF_LEN {
            break true;
        }
    };
    crate::sys::close(fd as i32);
    (!full).then_some(len)
}

/// Each `ID: n` line of the list, with the timer's times; None if there are more than fit.
fn fill(list: &[u8], out: &mut [TimerSlot; MAX_TIMERS]) -> Option<u32> {
    let mut n = 0usize;
    for line in list.split(|&b| b == b'\n') {
        let Some(rest) = line.strip_prefix(b"ID: ") else {
            continue;
        };
        let id = parse_i32(rest)?;
        let slot = out.get_mut(n)?;
        let mut its = [0i64; 4];
        // SAFETY: `its` is a writable itimerspec (4 longs); integer arguments otherwise.
        let r = unsafe {
            raw6(
                libc::SYS_timer_gettime,
                [id as u64, its.as_mut_ptr() as u64, 0, 0, 0, 0],
            )
        };
        if r < 0 {
            // Deleted since the list was read: impossible while every other thread is parked.
            return None;
        }
        // SAFETY: integer argument only.
        let overrun = unsafe { raw6(libc::SYS_timer_getoverrun, [id as u64, 0, 0, 0, 0, 0]) };
        *slot = TimerSlot {
            id,
            overrun: overrun.max(0) as i32,
            interval_ns: (its[0] as u64) * 1_000_000_000 + its[1] as u64,
            value_ns: (its[2] as u64) * 1_000_000_000 + its[3] as u64,
        };
        n += 1;
    }
    Some(n as u32)
}

fn parse_i32(s: &[u8]) -> Option<i32> {
    let mut v: i64 = 0;
    let mut any = false;
    for &c in s {
        if !c.is_ascii_digit() {
            break;
        }
        v = v * 10 + (c - b'0') as i64;
        if v > i32::MAX as i64 {
            return None;
        }
        any = true;
    }
    any.then_some(v as i32)
}
