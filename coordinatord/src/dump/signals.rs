//! Queued pending signals. The kernel keeps a siginfo with each: the value of a `sigqueue`, the
//! timer of a POSIX timer's signal, the sender; real-time signals sent several times are queued
//! several times. /proc shows only which signals are pending; the queues themselves are read
//! with `PTRACE_PEEKSIGINFO` by a helper process (see `crate::trace`), and only when a signal
//! other than the park signal is pending, so that a stop without any costs nothing more.

use super::DumpError;
use crate::node::Reaper;
use crate::trace::{ptrace, Stopped};
use anyhow::{bail, Context};
use ckpt_format::{ProcessImage, QueuedSignal};
use std::io::Write;

/// First argument that makes `ckptd` the helper:
/// `ckptd HELPER_ARG PID SHARED_THROUGH TID…`: reads the own queue of each TID, and the
/// process's shared queue through thread SHARED_THROUGH unless it is 0. It writes, for each
/// queue, its tid (0 for the shared one), the number of entries and their siginfos.
pub const HELPER_ARG: &str = "--peek-siginfo";

const SIZE: usize = QueuedSignal::SIZE;

/// Fills the queues of `img` (whose pending sets are read already) of a parked process whose
/// park signal is `park`, and drops that signal from its pending sets.
pub fn read_queues(reaper: &Reaper, img: &mut ProcessImage, park: i32) -> Result<(), DumpError> {
    let pid = img.pid;
    let park_bit = if (1..=64).contains(&park) {
        1u64 << (park - 1)
    } else {
        0
    };
    // The park signal is ckpt's, never the program's: not raised again at restore either.
    img.shared_pending &= !park_bit;
    for t in &mut img.threads {
        t.pending &= !park_bit;
    }
    let own: Vec<i32> = img.threads.iter().filter(|t| t.pending != 0).map(|t| t.tid).collect();
    let shared = img.shared_pending != 0;
    if own.is_empty() && !shared {
        return Ok(());
    }
    // Through a thread attached anyway, when there is one.
    let through = if shared { own.first().copied().unwrap_or(pid) } else { 0 };
    let mut args = vec![pid.to_string(), through.to_string()];
    args.extend(own.iter().map(i32::to_string));
    let err = |msg: String| DumpError::PendingSignals { pid, msg };
    let out = crate::trace::run_helper(reaper, HELPER_ARG, &args).map_err(|e| err(format!("{e:#}")))?;
    let queues = decode(&out).ok_or_else(|| err("the helper's answer is malformed".into()))?;
    for (tid, infos) in queues {
        let queue: Vec<QueuedSignal> = infos.into_iter().filter(|q| q.signo() != park).collect();
        if tid == 0 {
            img.shared_queue = queue;
        } else if let Some(t) = img.threads.iter_mut().find(|t| t.tid == tid) {
            t.queue = queue;
        }
    }
    Ok(())
}

/// The helper process's main.
pub fn run_helper(args: &[String]) -> anyhow::Result<()> {
    let num = |i: usize| crate::trace::arg::<i32>(args, i);
    let pid = num(0)?;
    let through = num(1)?;
    let own = (2..args.len()).map(num).collect::<anyhow::Result<Vec<i32>>>()?;
    let mut tids = own.clone();
    if through != 0 && !tids.contains(&through) {
        tids.push(through);
    }
    let mut out = Vec::new();
    for tid in tids {
        // Never another process's thread under a reused number.
        if !std::path::Path::new(&format!("/proc/{pid}/task/{tid}")).exists() {
            bail!("thread {tid} exited while parked");
        }
        let Some(t) = Stopped::attach(tid).with_context(|| format!("thread {tid}"))? else {
            bail!("thread {tid} exited while parked");
        };
        if own.contains(&tid) {
            encode(tid, &peek(tid, false)?, &mut out);
        }
        if tid == through {
            encode(0, &peek(tid, true)?, &mut out);
        }
        t.detach().with_context(|| format!("thread {tid}"))?;
    }
    std::io::stdout().write_all(&out).context("cannot write the siginfos")
}

/// Every siginfo queued for stopped thread `tid` (or for its process: `shared`), in order.
fn peek(tid: i32, shared: bool) -> anyhow::Result<Vec<u8>> {
    const BATCH: usize = 64;
    let mut out = Vec::new();
    let mut buf = vec![0u8; BATCH * SIZE];
    loop {
        let args = libc::ptrace_peeksiginfo_args {
            off: (out.len() / SIZE) as u64,
            flags: if shared { libc::PTRACE_PEEKSIGINFO_SHARED } else { 0 },
            nr: BATCH as i32,
        };
        // SAFETY: PEEKSIGINFO reads `args` and writes at most `args.nr` siginfos (BATCH * SIZE
        // bytes, buf's length) to buf.
        let n = unsafe {
            ptrace(
                libc::PTRACE_PEEKSIGINFO,
                tid,
                &args as *const _ as u64,
                buf.as_mut_ptr() as u64,
            )
        }
        .with_context(|| format!("reading the signal queue of thread {tid}"))? as usize;
        if n == 0 {
            return Ok(out);
        }
        out.extend_from_slice(&buf[..n.min(BATCH) * SIZE]);
    }
}

/// One queue on the helper's output: tid, count, the siginfos (`infos`, whole ones).
fn encode(tid: i32, infos: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&tid.to_le_bytes());
    out.extend_from_slice(&((infos.len() / SIZE) as u32).to_le_bytes());
    out.extend_from_slice(infos);
}

/// The queues of the helper's output; `None` when it is cut short.
fn decode(mut b: &[u8]) -> Option<Vec<(i32, Vec<QueuedSignal>)>> {
    let mut queues = Vec::new();
    while !b.is_empty() {
        let tid = i32::from_le_bytes(b.get(..4)?.try_into().ok()?);
        let n = u32::from_le_bytes(b.get(4..8)?.try_into().ok()?) as usize;
        let body = b.get(8..8 + n.checked_mul(SIZE)?)?;
        let infos = body
            .chunks_exact(SIZE)
            .map(|c| QueuedSignal { info: c.to_vec() })
            .collect();
        queues.push((tid, infos));
        b = &b[8 + body.len()..];
    }
    Some(queues)
}

/// Refuses a POSIX timer whose own signal the restore could not put back in its place (see
/// [`ckpt_kinds::posix_timer::check_pending_order`]).
pub fn timer_signals_in_order(image: &ProcessImage) -> Result<(), DumpError> {
    use ckpt_kinds::posix_timer::{check_pending_order, target};
    for t in &image.posix_timers {
        let queue = match target(t) {
            None => &image.shared_queue,
            Some(tid) => match image.threads.iter().find(|x| x.tid == tid) {
                Some(th) => &th.queue,
                None => continue,
            },
        };
        let infos: Vec<&[u8]> = queue.iter().map(|q| q.info.as_slice()).collect();
        check_pending_order(t, &infos).map_err(|err| DumpError::Timers { pid: image.pid, err })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{decode, encode, SIZE};

    #[test]
    fn queues_read_back_as_written() {
        let mut a = vec![0u8; 2 * SIZE];
        a[0] = 34;
        a[SIZE] = 35;
        let mut out = Vec::new();
        encode(7, &a, &mut out);
        encode(0, &[], &mut out);
        let q = decode(&out).expect("well formed");
        assert_eq!(q.len(), 2);
        assert_eq!(q[0].0, 7);
        let signos: Vec<i32> = q[0].1.iter().map(|s| s.signo()).collect();
        assert_eq!(signos, [34, 35]);
        assert_eq!((q[1].0, q[1].1.len()), (0, 0));
        assert!(decode(&out[..out.len() - 9]).is_none());
    }
}
