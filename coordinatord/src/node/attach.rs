//! `ckptctl restore --attach`: the connection that restored a checkpoint follows the topmost
//! processes that restore brought back on this host (they are ckptd's children, so only this
//! host's reaper knows when they exit), like a shell follows its job: it tells ckptctl each exit, the
//! end of the job with the first process's status, and passes on the signals ckptctl caught.

use super::Node;
use ckpt_proto::{JobControl, JobEvent};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// What an attached ckptctl forwards; anything else it might send is ignored.
const FORWARDED: &[i32] = &[
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGWINCH,
    libc::SIGSTOP,
    libc::SIGCONT,
];

/// How often the follower looks whether ckptctl went away (the job then runs on, detached).
const LOOK: Duration = Duration::from_millis(200);

/// Serves an attached ckptctl on `s` until the job of restore `id` has ended or ckptctl has
/// gone away.
pub fn attach(node: &Node, s: &UnixStream, id: &str) -> anyhow::Result<()> {
    let pids = {
        let last = node.last_restored.lock().unwrap_or_else(|e| e.into_inner());
        // Only the topmost processes are ckptd's children; the others are their parents' to
        // wait for, and end with them or are re-parented to ckptd when they outlive them.
        (last.0 == id).then(|| last.2.clone())
    };
    let Some(mut pids) = pids else {
        let message = format!(
            "no restore of checkpoint {id} on host {} to attach to (another restore came in between?)",
            node.host
        );
        ckpt_proto::send(s, &JobEvent::Refused { message }, &[])?;
        return Ok(());
    };
    pids.sort_unstable();
    ckpt_proto::send(s, &JobEvent::Attached { pids: pids.clone() }, &[])?;
    tracing::info!(id, ?pids, "ckptctl attached to the restored job");
    let running = Mutex::new(pids.clone());
    let gone = AtomicBool::new(false);
    let reader = s.try_clone()?;
    std::thread::scope(|sc| {
        sc.spawn(|| {
            while let Ok((JobControl::Signal { sig }, _)) = ckpt_proto::recv::<JobControl>(&reader) {
                signal_job(&running.lock().unwrap_or_else(|e| e.into_inner()), sig);
            }
            gone.store(true, Ordering::SeqCst);
        });
        let r = follow(node, s, id, &pids, &running, &gone);
        // Wakes the reader, whatever ckptctl does.
        let _ = s.shutdown(std::net::Shutdown::Both);
        r
    })
}

fn follow(
    node: &Node,
    s: &UnixStream,
    id: &str,
    pids: &[i32],
    running: &Mutex<Vec<i32>>,
    gone: &AtomicBool,
) -> anyhow::Result<()> {
    let lead = pids.first().copied().unwrap_or(0);
    let mut lead_status = 0;
    let mut report = |pid: i32, status: i32| -> anyhow::Result<()> {
        running.lock().unwrap_or_else(|e| e.into_inner()).retain(|p| *p != pid);
        if pid == lead {
            lead_status = status;
        }
        tracing::debug!(pid, status = %super::describe_status(status), "attached job: process exited");
        ckpt_proto::send(s, &JobEvent::Exited { pid, status }, &[])?;
        Ok(())
    };
    // A program that ran to its end before its control thread reported had its status taken
    // by the restore itself (exit code 0, see `restore::start_one`).
    for &pid in pids {
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let status = node.reaper.wait_exit(pid, LOOK).unwrap_or(0);
            report(pid, status)?;
        }
    }
    let mut told = false;
    loop {
        // A lazy restore whose pages could not all be loaded killed the job: say why.
        if !told {
            if let Some(message) = node.lazy.failure(id) {
                ckpt_proto::send(s, &JobEvent::LoadFailed { message }, &[])?;
                told = true;
            }
        }
        let left = running.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if left.is_empty() {
            break;
        }
        if gone.load(Ordering::SeqCst) {
            tracing::info!(?left, "ckptctl detached; the job runs on");
            return Ok(());
        }
        if let Some((pid, status)) = node.reaper.wait_any(&left, LOOK) {
            report(pid, status)?;
        }
    }
    ckpt_proto::send(
        s,
        &JobEvent::Ended {
            pid: lead,
            status: lead_status,
        },
        &[],
    )?;
    Ok(())
}

/// Sends `sig` to each process still running; to its whole group when it leads one (a restored
/// process leads its own session and group), so that children it started since get it too, as
/// from a terminal.
fn signal_job(running: &[i32], sig: i32) {
    if !FORWARDED.contains(&sig) {
        tracing::warn!(
            sig,
            "an attached ckptctl asked for a signal it does not forward; ignored"
        );
        return;
    }
    for &pid in running {
        // SAFETY: plain system calls on a child of ours that has not been reaped.
        let target = if unsafe { libc::getpgid(pid) } == pid {
            -pid
        } else {
            pid
        };
        // SAFETY: as above.
        if unsafe { libc::kill(target, sig) } != 0 {
            tracing::debug!(pid, sig, err = %std::io::Error::last_os_error(), "forwarding a signal");
        }
    }
}
