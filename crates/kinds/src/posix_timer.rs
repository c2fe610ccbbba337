//! POSIX timers (`timer_create`): not held through an fd, but kernel objects of the process all
//! the same. How each notifies is read from /proc/PID/timers; its remaining time, interval and
//! overrun the interposer reads with `timer_gettime` at the park (only the process itself can).
//! At restore the restorer's final stage creates each again with the same id
//! (`PR_TIMER_CREATE_RESTORE_IDS`) once the threads exist (a timer may signal one thread), and
//! arms it with its remaining time, relative to the restore.

use crate::KindError;
use serde::{Deserialize, Serialize};

/// `PR_TIMER_CREATE_RESTORE_IDS` and its arguments (Linux 6.15).
pub const PR_TIMER_CREATE_RESTORE_IDS: u64 = 77;
pub const RESTORE_IDS_OFF: u64 = 0;
pub const RESTORE_IDS_ON: u64 = 1;

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum Notify {
    /// `SIGEV_NONE`: nothing is sent; the program polls it with `timer_gettime`.
    None,
    /// `SIGEV_SIGNAL`: the signal goes to the process.
    Signal,
    /// `SIGEV_THREAD_ID`: the signal goes to this thread (glibc's `SIGEV_THREAD` timers are
    /// this, aimed at its helper thread).
    Thread(i32),
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Record {
    pub id: i32,
    pub clock: i32,
    pub notify: Notify,
    pub signo: i32,
    /// `sigev_value`, given back in the signal's `si_value`.
    pub sigval: u64,
    /// Time left until the next expiry; 0 = disarmed.
    pub value_ns: u64,
    pub interval_ns: u64,
    /// `timer_getoverrun` at the checkpoint. The kernel has no way to set it: after a restore it
    /// counts from 0 again (see the README's kinds table).
    pub overrun: i32,
}

/// What /proc/PID/timers says of one timer: everything but its times.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub id: i32,
    pub clock: i32,
    pub notify: Notify,
    pub signo: i32,
    pub sigval: u64,
}

/// The timers of process `pid`.
pub fn list(pid: i32) -> Result<Vec<Listed>, KindError> {
    let path = format!("/proc/{pid}/timers");
    let text = std::fs::read_to_string(&path).map_err(KindError::read(path.clone()))?;
    parse(&text).ok_or_else(|| KindError::Read {
        what: path,
        source: std::io::Error::from(std::io::ErrorKind::InvalidData),
    })
}

fn parse(text: &str) -> Option<Vec<Listed>> {
    let mut out = Vec::new();
    let mut cur: Option<Listed> = None;
    for line in text.lines() {
        let (key, v) = line.split_once(':')?;
        let v = v.trim();
        match key {
            "ID" => {
                out.extend(cur.take());
                cur = Some(Listed {
                    id: v.parse().ok()?,
                    clock: 0,
                    notify: Notify::None,
                    signo: 0,
                    sigval: 0,
                });
            }
            "signal" => {
                let t = cur.as_mut()?;
                let (signo, val) = v.split_once('/')?;
                t.signo = signo.parse().ok()?;
                t.sigval = u64::from_str_radix(val.trim_start_matches("0x"), 16).ok()?;
            }
            "notify" => {
                let t = cur.as_mut()?;
                let (how, who) = v.split_once('/')?;
                let (kind, n) = who.split_once('.')?;
                t.notify = match (how, kind) {
                    ("none", _) => Notify::None,
                    ("signal", "tid") => Notify::Thread(n.parse().ok()?),
                    ("signal", _) => Notify::Signal,
                    _ => return None,
                };
            }
            "ClockID" => cur.as_mut()?.clock = v.parse().ok()?,
            _ => {}
        }
    }
    out.extend(cur);
    Some(out)
}

/// The `struct sigevent` to create the timer with (64 bytes, the kernel's layout).
pub fn sigevent(rec: &Record) -> [u8; 64] {
    const SIGEV_SIGNAL: i32 = 0;
    const SIGEV_NONE: i32 = 1;
    const SIGEV_THREAD_ID: i32 = 4;
    let (notify, tid) = match rec.notify {
        Notify::None => (SIGEV_NONE, 0),
        Notify::Signal => (SIGEV_SIGNAL, 0),
        Notify::Thread(t) => (SIGEV_THREAD_ID, t),
    };
    let mut b = [0u8; 64];
    b[0..8].copy_from_slice(&rec.sigval.to_ne_bytes());
    b[8..12].copy_from_slice(&rec.signo.to_ne_bytes());
    b[12..16].copy_from_slice(&notify.to_ne_bytes());
    b[16..20].copy_from_slice(&tid.to_ne_bytes());
    b
}

/// `si_code` of a POSIX timer's signal.
const SI_TIMER: i32 = -2;

/// Whether the siginfo `info` (the kernel's 128 bytes) is `rec`'s own signal: a timer's
/// signal is one object of the kernel's, queued at most once, that rearms a periodic timer
/// when taken. Queued again as an ordinary siginfo it would be a second one (the restored
/// timer queues its own when it fires) and would not rearm it; the restorer makes the timer
/// fire at once instead.
pub fn is_own_signal(rec: &Record, info: &[u8]) -> bool {
    let int = |at: usize| {
        info.get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .map(i32::from_ne_bytes)
    };
    rec.notify != Notify::None && int(0) == Some(rec.signo) && int(8) == Some(SI_TIMER) && int(16) == Some(rec.id)
}

/// The queue (the process's: `None`, or a thread's) a timer's signal goes to.
pub fn target(rec: &Record) -> Option<i32> {
    match rec.notify {
        Notify::Thread(tid) => Some(tid),
        _ => None,
    }
}

/// Refuses a timer whose own signal is pending behind another entry of the same signal in its
/// queue: the restored timer's signal is raised before the queue is filled again, so it would
/// come out first. `queue`: the siginfos of the timer's queue, in order.
pub fn check_pending_order(rec: &Record, queue: &[impl AsRef<[u8]>]) -> Result<(), KindError> {
    let same = |q: &[u8]| q.get(..4).is_some_and(|b| b == rec.signo.to_ne_bytes());
    let Some(at) = queue.iter().position(|q| is_own_signal(rec, q.as_ref())) else {
        return Ok(());
    };
    if queue[..at].iter().any(|q| same(q.as_ref())) {
        return Err(KindError::Refused(format!(
            "POSIX timer {}: its signal {} is pending behind another signal {} queued before it, an order ckpt cannot make again; take the queued signals first",
            rec.id, rec.signo, rec.signo
        )));
    }
    Ok(())
}

pub fn describe(rec: &Record) -> String {
    let to = match rec.notify {
        Notify::None => "no signal".to_string(),
        Notify::Signal => format!("signal {}", rec.signo),
        Notify::Thread(t) => format!("signal {} to thread {t}", rec.signo),
    };
    let armed = if rec.value_ns == 0 {
        "disarmed".to_string()
    } else {
        format!("{} ms left", rec.value_ns / 1_000_000)
    };
    format!(
        "POSIX timer {} (clock {}, {to}, {armed}, interval {} ms)",
        rec.id,
        rec.clock,
        rec.interval_ns / 1_000_000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn siginfo(signo: i32, code: i32, timer: i32) -> Vec<u8> {
        let mut b = vec![0u8; 128];
        b[0..4].copy_from_slice(&signo.to_ne_bytes());
        b[8..12].copy_from_slice(&code.to_ne_bytes());
        b[16..20].copy_from_slice(&timer.to_ne_bytes());
        b
    }

    #[test]
    fn a_timer_signal_is_refused_only_behind_one_of_its_number() {
        let rec = Record {
            id: 3,
            clock: 1,
            notify: Notify::Signal,
            signo: 40,
            sigval: 0,
            value_ns: 0,
            interval_ns: 0,
            overrun: 0,
        };
        let own = siginfo(40, SI_TIMER, 3);
        assert!(is_own_signal(&rec, &own));
        assert!(!is_own_signal(&rec, &siginfo(40, SI_TIMER, 4)));
        assert!(!is_own_signal(&rec, &siginfo(40, -1 /* SI_QUEUE */, 3)));
        let other_number = siginfo(41, -1, 0);
        let same_number = siginfo(40, -1, 0);
        assert!(check_pending_order(&rec, &[other_number.clone(), own.clone(), same_number.clone()]).is_ok());
        assert!(check_pending_order(&rec, &[same_number, own]).is_err());
        assert!(check_pending_order(&rec, &[other_number]).is_ok());
    }

    #[test]
    fn parses_every_notify_kind() {
        let text = "ID: 0\nsignal: 14/0000000000000000\nnotify: signal/pid.100\nClockID: 1\n\
                    ID: 7\nsignal: 34/00007f00deadbeef\nnotify: signal/tid.102\nClockID: 0\n\
                    ID: 9\nsignal: 0/0000000000000000\nnotify: none/pid.100\nClockID: 7\n";
        let l = parse(text).unwrap();
        assert_eq!(l.len(), 3);
        assert_eq!(
            (l[0].id, l[0].signo, l[0].clock, l[0].notify),
            (0, 14, 1, Notify::Signal)
        );
        assert_eq!(
            (l[1].id, l[1].sigval, l[1].notify),
            (7, 0x7f00deadbeef, Notify::Thread(102))
        );
        assert_eq!((l[2].id, l[2].clock, l[2].notify), (9, 7, Notify::None));
    }
}
