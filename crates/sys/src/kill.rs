//! Ending a restore that cannot be completed (its pages cannot all be brought in): each of its
//! processes and everything they started since, before any of them can run on with memory that
//! is not its own.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// Stops and then kills `roots` and all their descendants; waits up to `wait` until none of
/// them runs any more. Stopping first keeps the tree still while it is walked: a process
/// killed early would leave its children to be re-parented out of the walk's sight, and one
/// still running could fork past it. Returns the pids killed.
pub fn kill_trees(roots: &[i32], wait: Duration) -> Vec<i32> {
    let mut seen: BTreeSet<i32> = BTreeSet::new();
    loop {
        let mut new = false;
        let mut frontier: Vec<i32> = roots.to_vec();
        while let Some(pid) = frontier.pop() {
            if !crate::procfs::alive(pid) {
                continue;
            }
            if seen.insert(pid) {
                new = true;
                // SAFETY: kill with a pid and a signal number.
                unsafe { libc::kill(pid, libc::SIGSTOP) };
            }
            frontier.extend(crate::procfs::children(pid).unwrap_or_default());
        }
        if !new {
            break;
        }
        // Once every one has stopped, the next walk shows the children that a process forked
        // as it was being stopped; a walk that finds none is the last.
        let deadline = Instant::now() + Duration::from_millis(200);
        while Instant::now() < deadline && seen.iter().any(|&p| running(p)) {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    for &pid in &seen {
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let deadline = Instant::now() + wait;
    while seen.iter().any(|&p| crate::procfs::alive(p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    seen.into_iter().collect()
}

/// Alive and not stopped.
fn running(pid: i32) -> bool {
    match crate::procfs::status(pid, None) {
        Ok(st) => !matches!(st.state, 'T' | 't' | 'Z' | 'X'),
        Err(_) => false,
    }
}
