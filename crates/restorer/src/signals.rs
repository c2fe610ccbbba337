//! Pending signals and POSIX timers in the restorer's last steps: each queued signal placed
//! with its siginfo, signals the kernel held without one sent again, and the timers made again
//! with their ids (a timer whose own signal was pending fires at once instead of a copy being
//! queued).

use crate::blob::IGNORE_ERROR;
use crate::plan::Plan;
use anyhow::bail;
use ckpt_format::{ProcessImage, QueuedSignal};

/// POSIX timers, made again with their ids once every thread exists (a timer may signal one),
/// armed with the time they had left. Their signals wait in the pending set until each thread's
/// own mask is back.
pub(crate) fn posix_timers(p: &mut Plan, img: &ProcessImage) {
    use ckpt_kinds::posix_timer::{sigevent, PR_TIMER_CREATE_RESTORE_IDS, RESTORE_IDS_OFF, RESTORE_IDS_ON};
    if img.posix_timers.is_empty() {
        return;
    }
    p.sys(
        libc::SYS_prctl,
        &[PR_TIMER_CREATE_RESTORE_IDS, RESTORE_IDS_ON, 0, 0, 0],
        0,
    );
    let mut wait = false;
    for t in &img.posix_timers {
        let sev = p.put(&sigevent(t));
        // timer_create reads the wanted id from where it writes the id it gives.
        let id = p.put(&(t.id as i64).to_le_bytes());
        p.sys(libc::SYS_timer_create, &[t.clock as u64, sev, id], 0);
        // A timer whose own signal is pending fires at once: its signal is the kernel's
        // again, queued once, and rearms a periodic timer when taken (see `timer_signal`).
        let pending = timer_signal(img, t).is_some();
        let value = if pending { 1 } else { t.value_ns };
        if value != 0 {
            let ns = |v: u64| [v / 1_000_000_000, v % 1_000_000_000];
            let [isec, insec] = ns(t.interval_ns);
            let [vsec, vnsec] = ns(value);
            let its = p.put_u64s(&[isec, insec, vsec, vnsec]);
            p.sys(libc::SYS_timer_settime, &[t.id as u64, 0, its, 0], 0);
        }
        // A CPU-time clock (negative ids, and the two of the calling process and thread)
        // fires only as CPU time is used: at the program's first tick.
        wait |= pending
            && t.clock >= 0
            && t.clock != libc::CLOCK_PROCESS_CPUTIME_ID
            && t.clock != libc::CLOCK_THREAD_CPUTIME_ID;
    }
    if wait {
        // The timers expire a nanosecond after being armed, in the timer interrupt: a
        // millisecond is ample for their signals to be queued before any program code runs.
        let ts = p.put_u64s(&[0, 1_000_000]);
        p.sys(libc::SYS_nanosleep, &[ts, 0], IGNORE_ERROR);
    }
    p.sys(
        libc::SYS_prctl,
        &[PR_TIMER_CREATE_RESTORE_IDS, RESTORE_IDS_OFF, 0, 0, 0],
        0,
    );
}

/// The timer whose own signal `info` is, if any (`tid`: the queue's thread, `None` for the
/// process's queue); `timer_signal`'s inverse.
pub(crate) fn raised_by_timer(img: &ProcessImage, tid: Option<i32>, info: &[u8]) -> bool {
    use ckpt_kinds::posix_timer::{is_own_signal, target};
    img.posix_timers
        .iter()
        .any(|t| target(t) == tid && is_own_signal(t, info))
}

/// The entry of timer `t`'s own signal in its queue, if it is pending.
pub(crate) fn timer_signal<'a>(img: &'a ProcessImage, t: &ckpt_kinds::posix_timer::Record) -> Option<&'a QueuedSignal> {
    use ckpt_kinds::posix_timer::{is_own_signal, target};
    let queue = match target(t) {
        None => &img.shared_queue,
        Some(tid) => &img.threads.iter().find(|x| x.tid == tid)?.queue,
    };
    queue.iter().find(|q| is_own_signal(t, &q.info))
}

/// Signals in `pending` none of `queue` is for, in increasing number.
pub(crate) fn unqueued(pending: u64, queue: &[QueuedSignal]) -> impl Iterator<Item = u64> + '_ {
    (1..=64u64).filter(move |&sig| pending & (1 << (sig - 1)) != 0 && !queue.iter().any(|q| q.signo() as u64 == sig))
}

/// Places a queued signal's siginfo in the data area: its number and address.
pub(crate) fn place_queued(p: &mut Plan, q: &QueuedSignal) -> anyhow::Result<(u64, u64)> {
    let sig = q.signo();
    if q.info.len() != QueuedSignal::SIZE || !(1..=64).contains(&sig) {
        bail!(
            "the image holds a malformed pending signal (signal {sig}, {} bytes); it is damaged",
            q.info.len()
        );
    }
    Ok((sig as u64, p.put(&q.info)))
}

#[cfg(test)]
mod tests {
    use super::unqueued;
    use ckpt_format::QueuedSignal;

    #[test]
    fn only_signals_without_a_queued_siginfo_are_sent_again() {
        let with = |sig: u8| {
            let mut info = vec![0u8; QueuedSignal::SIZE];
            info[0] = sig;
            QueuedSignal { info }
        };
        let pending = (1u64 << 9) | (1 << 33) | (1 << 34);
        let queue = [with(34), with(34)];
        assert_eq!(unqueued(pending, &queue).collect::<Vec<_>>(), [10, 35]);
        assert_eq!(unqueued(0, &queue).count(), 0);
    }
}
