//! timerfd: a timer on one clock, armed or not, relative or absolute, one-shot or periodic,
//! with the expirations nobody has read yet.
//!
//! An absolute timer (`TFD_TIMER_ABSTIME`) keeps its absolute expiry: it fires at the same
//! instant of its clock whenever the restore happens (at once, with the periods missed counted,
//! if that instant has passed). A relative timer keeps its remaining time, counted from the
//! restore: the time the program was not running does not run down its timers.

use crate::{KindError, Source};
use serde::{Deserialize, Serialize};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// `_IOW('T', 0, u64)`: sets the count of unread expirations (kernels with
/// CONFIG_CHECKPOINT_RESTORE).
const TFD_IOC_SET_TICKS: libc::c_ulong = 0x4008_5400;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Record {
    /// `CLOCK_MONOTONIC`, `CLOCK_REALTIME`, `CLOCK_BOOTTIME` or an `_ALARM` clock.
    pub clock: i32,
    /// The flags of the last `timerfd_settime`: `TFD_TIMER_ABSTIME`, `TFD_TIMER_CANCEL_ON_SET`.
    pub settime_flags: i32,
    /// Next expiry in ns: the instant on `clock` for an absolute timer, the time left for a
    /// relative one; 0 when disarmed.
    pub value_ns: u64,
    /// The period in ns; 0 for a one-shot timer.
    pub interval_ns: u64,
    /// Expirations not yet read: what a `read` would return now.
    pub ticks: u64,
}

pub fn capture(src: &Source) -> Result<Record, KindError> {
    let what = |w: &str| format!("the {w} of timerfd {}", src.fd);
    let fd = src.file().map_err(KindError::read(what("timer")))?;
    // Reading the timer folds the periods an expired periodic timer missed into its tick count
    // and re-arms it, as the program's own read or timerfd_gettime would: the counts in fdinfo
    // are then exact and the next expiry is in the future.
    let cur = gettime(fd).map_err(KindError::read(what("setting")))?;
    // The absolute instant is computed from the time left, right after it was read.
    let clock = clock_of(src)?;
    let now = clock_now(clock).map_err(KindError::read(what("clock")))?;
    let text = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).map_err(KindError::read(what("fdinfo")))?;
    let info = Source::new(src.pid, src.fd, src.link, &text, src.flags, src.meta);
    let bad = |w: &str| KindError::Read {
        what: what(w),
        source: std::io::Error::from(std::io::ErrorKind::InvalidData),
    };
    let ticks = info
        .info("ticks")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| bad("tick count"))?;
    // fdinfo prints the flags in octal ("settime flags: 01").
    let settime_flags = info
        .info("settime flags")
        .and_then(|v| i32::from_str_radix(v, 8).ok())
        .ok_or_else(|| bad("flags"))?;
    let left = ns_of(&cur.it_value);
    let value_ns = if left != 0 && settime_flags & libc::TFD_TIMER_ABSTIME != 0 {
        now.saturating_add(left)
    } else {
        left
    };
    Ok(Record {
        clock,
        settime_flags,
        value_ns,
        interval_ns: ns_of(&cur.it_interval),
        ticks,
    })
}

fn clock_of(src: &Source) -> Result<i32, KindError> {
    src.info("clockid")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| KindError::Read {
            what: format!("the clock of timerfd {}", src.fd),
            source: std::io::Error::from(std::io::ErrorKind::InvalidData),
        })
}

pub fn recreate(rec: &Record) -> Result<OwnedFd, KindError> {
    let what = || format!("a timerfd on {}", clock_name(rec.clock));
    // SAFETY: timerfd_create returns a new fd or -1.
    let fd = unsafe { libc::timerfd_create(rec.clock, libc::TFD_CLOEXEC) };
    if fd < 0 {
        return Err(KindError::recreate(what())(std::io::Error::last_os_error()));
    }
    // SAFETY: the fd was just created and is ours.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let (value, ticks) = settle(rec).map_err(KindError::recreate(what()))?;
    // A disarmed timer is set too: it keeps the period it was last given, as gettime shows.
    let its = libc::itimerspec {
        it_value: timespec_of(value),
        it_interval: timespec_of(rec.interval_ns),
    };
    // SAFETY: setting our timerfd from a local itimerspec.
    let r = unsafe { libc::timerfd_settime(fd.as_raw_fd(), rec.settime_flags, &its, std::ptr::null_mut()) };
    if r < 0 {
        return Err(KindError::recreate(what())(std::io::Error::last_os_error()));
    }
    if ticks != 0 {
        // After settime, which zeroes the count.
        // SAFETY: the ioctl reads one u64 from a local.
        let r = unsafe { libc::ioctl(fd.as_raw_fd(), TFD_IOC_SET_TICKS, &ticks as *const u64) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENOTTY) {
                return Err(KindError::Refused(format!(
                    "a timerfd has {ticks} unread expirations, which this kernel cannot set (it lacks CONFIG_CHECKPOINT_RESTORE)"
                )));
            }
            return Err(KindError::recreate(what())(e));
        }
    }
    Ok(fd)
}

/// Expirations closer than this to the restore are counted as already happened: an expiry
/// between setting the timer and setting its count would be overwritten by the count.
const MARGIN_NS: u64 = 5_000_000;

/// The value to set and the count of unread expirations: an absolute expiry that passed while
/// the program was not running (or is about to) is counted, with every period it missed, and
/// the timer set to its next expiry (a one-shot timer stays disarmed), as the kernel would
/// have done had the program run on.
fn settle(rec: &Record) -> std::io::Result<(u64, u64)> {
    if rec.value_ns == 0 {
        return Ok((0, rec.ticks));
    }
    let now = clock_now(rec.clock)?;
    let abs = rec.settime_flags & libc::TFD_TIMER_ABSTIME != 0;
    let next = if abs {
        rec.value_ns
    } else {
        now.saturating_add(rec.value_ns)
    };
    let soon = now.saturating_add(MARGIN_NS);
    if next > soon {
        return Ok((rec.value_ns, rec.ticks));
    }
    if rec.interval_ns == 0 {
        return Ok((0, rec.ticks.saturating_add(1)));
    }
    let missed = (soon - next) / rec.interval_ns + 1;
    let next = next.saturating_add(missed.saturating_mul(rec.interval_ns));
    let value = if abs { next } else { next - now };
    Ok((value, rec.ticks.saturating_add(missed)))
}

pub fn describe(rec: &Record) -> String {
    let mut s = format!("timerfd ({}", clock_name(rec.clock));
    if rec.value_ns == 0 {
        s.push_str(", disarmed");
    } else if rec.settime_flags & libc::TFD_TIMER_ABSTIME != 0 {
        s.push_str(&format!(", at {}", secs(rec.value_ns)));
        if rec.settime_flags & libc::TFD_TIMER_CANCEL_ON_SET != 0 {
            s.push_str(", cancelled if the clock is set");
        }
    } else {
        s.push_str(&format!(", in {}", secs(rec.value_ns)));
    }
    if rec.interval_ns != 0 {
        s.push_str(&format!(", every {}", secs(rec.interval_ns)));
    }
    if rec.ticks != 0 {
        let plural = if rec.ticks == 1 { "" } else { "s" };
        s.push_str(&format!(", {} unread expiration{plural}", rec.ticks));
    }
    s.push(')');
    s
}

fn secs(ns: u64) -> String {
    format!("{}.{:09} s", ns / 1_000_000_000, ns % 1_000_000_000)
}

fn clock_name(clock: i32) -> String {
    match clock {
        libc::CLOCK_REALTIME => "CLOCK_REALTIME".into(),
        libc::CLOCK_MONOTONIC => "CLOCK_MONOTONIC".into(),
        libc::CLOCK_BOOTTIME => "CLOCK_BOOTTIME".into(),
        libc::CLOCK_REALTIME_ALARM => "CLOCK_REALTIME_ALARM".into(),
        libc::CLOCK_BOOTTIME_ALARM => "CLOCK_BOOTTIME_ALARM".into(),
        n => format!("clock {n}"),
    }
}

fn gettime(fd: RawFd) -> std::io::Result<libc::itimerspec> {
    // SAFETY: itimerspec is plain data; all zeroes is valid.
    let mut cur: libc::itimerspec = unsafe { std::mem::zeroed() };
    // SAFETY: reading our timerfd's setting into a local.
    if unsafe { libc::timerfd_gettime(fd, &mut cur) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cur)
}

/// Now on `clock`, in ns; an alarm clock reads as the clock it wakes the machine for.
fn clock_now(clock: i32) -> std::io::Result<u64> {
    let base = match clock {
        libc::CLOCK_REALTIME_ALARM => libc::CLOCK_REALTIME,
        libc::CLOCK_BOOTTIME_ALARM => libc::CLOCK_BOOTTIME,
        c => c,
    };
    // SAFETY: timespec is plain data; all zeroes is valid.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: reading a clock into a local.
    if unsafe { libc::clock_gettime(base, &mut ts) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(ns_of(&ts))
}

fn ns_of(ts: &libc::timespec) -> u64 {
    (ts.tv_sec.max(0) as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec.max(0) as u64)
}

fn timespec_of(ns: u64) -> libc::timespec {
    libc::timespec {
        tv_sec: (ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (ns % 1_000_000_000) as libc::c_long,
    }
}
