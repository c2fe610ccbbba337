//! `ckpt-restore --lazy-guard`: the guard of a lazy restore, started by ckptd with its socket
//! as fd 0 (see ckptd's `lazy::guard` and `ckpt_proto::lazy::GuardMsg`). It keeps a copy of
//! every userfaultfd ckptd serves, so that the kernel never releases one while pages are still
//! missing behind it (they would read as zeros), until ckptd says a process has every page. If
//! ckptd goes away first, the processes still loading, and whatever they started since, are
//! killed; only then are the copies let go of.

use ckpt_proto::lazy::{GuardAck, GuardMsg};
use std::collections::HashMap;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

pub fn main() -> i32 {
    // SAFETY: setsid and signal dispositions, before anything else runs; the terminal's and
    // a service manager's signals to ckptd's group are not for the guard.
    unsafe {
        libc::setsid();
        for sig in [libc::SIGINT, libc::SIGQUIT, libc::SIGHUP, libc::SIGTERM, libc::SIGPIPE] {
            libc::signal(sig, libc::SIG_IGN);
        }
    }
    // SAFETY: fd 0 is the socket ckptd gave us; we own it from here on.
    let s = unsafe { UnixStream::from_raw_fd(0) };
    // Per process, its address spaces' descriptors: its own (0), its children's.
    let mut held: HashMap<i32, HashMap<u64, Vec<OwnedFd>>> = HashMap::new();
    loop {
        match ckpt_proto::recv::<GuardMsg>(&s) {
            Ok((GuardMsg::Watch { pid }, fds)) => held.entry(pid).or_default().entry(0).or_default().extend(fds),
            Ok((GuardMsg::Forked { pid, space }, fds)) => {
                held.entry(pid).or_default().entry(space).or_default().extend(fds)
            }
            Ok((GuardMsg::Gone { pid, space }, _)) => {
                if let Some(h) = held.get_mut(&pid) {
                    h.remove(&space);
                }
            }
            Ok((GuardMsg::Release { pid }, _)) => {
                held.remove(&pid);
                if ckpt_proto::send(&s, &GuardAck::Released { pid }, &[]).is_err() {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    if held.is_empty() {
        return 0;
    }
    let mut pids: Vec<i32> = held.keys().copied().collect();
    pids.sort_unstable();
    let killed = ckpt_sys::kill::kill_trees(&pids, Duration::from_secs(10));
    let list = |v: &[i32]| v.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(", ");
    eprintln!(
        "ckpt-restore: ckptd went away while pid {} still loaded pages lazily; killed pid {} rather than let them run with pages missing",
        list(&pids),
        list(&killed)
    );
    drop(held);
    1
}
