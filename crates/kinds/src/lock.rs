//! File locks and leases held through an fd: POSIX record locks (`fcntl F_SETLK`, owned by the
//! process), open file description locks (`F_OFD_SETLK`) and `flock` locks (owned by the
//! description), and leases (`F_SETLEASE`). Read from the `lock:` lines of the fd's fdinfo while
//! the process is parked; taken again by the same owner before the program runs, so that no
//! other program can slip in between (databases such as sqlite rely on them for correctness).
//!
//! Where they are taken again: description locks ([`take`]) as soon as the restorer has the
//! fd at its number; POSIX locks and leases only after the restorer closed its own working fds
//! (closing any fd of a file drops the process's POSIX locks on it, and an open of the file
//! would break a lease), as syscalls of the restorer's last steps ([`posix_setlk`],
//! [`lease_arg`]). A lock another program took since the checkpoint fails the restore, naming
//! its holder ([`conflict`]).

use serde::{Deserialize, Serialize};
use std::os::fd::RawFd;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Owner {
    /// `fcntl(F_SETLK)`: the process's.
    Posix,
    /// `fcntl(F_OFD_SETLK)`: the open file description's.
    Ofd,
    /// `flock`: the open file description's, on the whole file.
    Flock,
    /// `fcntl(F_SETLEASE)`: the open file description's, on the whole file.
    Lease,
}

/// One lock or lease as the image records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lock {
    pub owner: Owner,
    pub write: bool,
    pub start: u64,
    /// Last byte (inclusive); `None`: to the end of the file, however far it grows.
    pub end: Option<u64>,
}

impl Lock {
    pub fn describe(&self) -> String {
        let what = match self.owner {
            Owner::Posix => "POSIX lock",
            Owner::Ofd => "open file description lock",
            Owner::Flock => "flock lock",
            Owner::Lease => "lease",
        };
        let mode = if self.write { "write" } else { "read" };
        match (self.owner, self.end) {
            (Owner::Flock | Owner::Lease, _) => format!("{mode} {what}"),
            (_, Some(end)) => format!("{mode} {what} on bytes {}-{end}", self.start),
            (_, None) => format!("{mode} {what} from byte {} to the end", self.start),
        }
    }

    /// Whether it is owned by the open file description (shared with every process holding it).
    pub fn by_description(&self) -> bool {
        !matches!(self.owner, Owner::Posix)
    }

    fn flock(&self) -> libc::flock {
        // SAFETY: flock is plain data; zero is a valid value for every field.
        let mut l: libc::flock = unsafe { std::mem::zeroed() };
        l.l_type = if self.write { libc::F_WRLCK } else { libc::F_RDLCK } as i16;
        l.l_whence = libc::SEEK_SET as i16;
        l.l_start = self.start as i64;
        l.l_len = self.end.map(|e| (e - self.start + 1) as i64).unwrap_or(0);
        l
    }
}

/// The locks and leases an fd's fdinfo shows (its `lock:` lines), or why one cannot be brought
/// back exactly.
pub fn parse(fdinfo: &str) -> Result<Vec<Lock>, String> {
    let mut out = Vec::new();
    for line in fdinfo.lines() {
        let Some(rest) = line.strip_prefix("lock:") else {
            continue;
        };
        // "1: POSIX  ADVISORY  WRITE 24503 fe:00:10141828 10 29"
        let w: Vec<&str> = rest.split_whitespace().collect();
        let [_, class, state, mode, _pid, _file, start, end] = w[..] else {
            return Err(format!("an unreadable lock ({})", rest.trim()));
        };
        let owner = match class {
            "POSIX" => Owner::Posix,
            "OFDLCK" => Owner::Ofd,
            "FLOCK" => Owner::Flock,
            "LEASE" => Owner::Lease,
            other => {
                return Err(format!(
                    "a {other} lock (ckpt takes back POSIX, OFD and flock locks and leases)"
                ))
            }
        };
        match state {
            "ADVISORY" if owner != Owner::Lease => {}
            "ACTIVE" if owner == Owner::Lease => {}
            "BREAKING" | "BREAKER" => return Err("a lease being broken".to_string()),
            other => return Err(format!("a {} lock in state {other}", class.to_lowercase())),
        }
        let write = match mode {
            "WRITE" => true,
            "READ" => false,
            other => return Err(format!("a lock of mode {other}")),
        };
        let start: u64 = start.parse().map_err(|_| format!("a lock starting at {start:?}"))?;
        let end = match end {
            "EOF" => None,
            e => Some(e.parse::<u64>().map_err(|_| format!("a lock ending at {e:?}"))?),
        };
        out.push(Lock {
            owner,
            write,
            start,
            end,
        });
    }
    Ok(out)
}

/// Who holds a lock that would keep `lock` from being taken on `fd` now (tested without taking
/// it: `F_GETLK`, `F_OFD_GETLK`; a flock lock or lease is tested when taken), as a message.
pub fn conflict(fd: RawFd, lock: &Lock) -> Option<String> {
    let cmd = match lock.owner {
        Owner::Posix => libc::F_GETLK,
        Owner::Ofd => libc::F_OFD_GETLK,
        Owner::Flock | Owner::Lease => return None,
    };
    let mut l = lock.flock();
    // SAFETY: fcntl with a pointer to a live flock.
    if unsafe { libc::fcntl(fd, cmd, &mut l) } < 0 {
        return Some(format!("cannot test it: {}", std::io::Error::last_os_error()));
    }
    if l.l_type == libc::F_UNLCK as i16 {
        return None;
    }
    let by = if l.l_pid > 0 {
        let comm = comm(l.l_pid).unwrap_or_else(|| "exited".to_string());
        format!("process {} ({comm})", l.l_pid)
    } else {
        "another open file description".to_string()
    };
    Some(format!("{by} holds a conflicting lock now"))
}

/// Who else holds a lock of `lock`'s class on the file of `fd` now, from `/proc/locks` (for
/// a flock lock or lease, which cannot be tested without being taken), as a message.
pub fn holder(fd: RawFd, lock: &Lock) -> Option<String> {
    // SAFETY: fstat into a zeroed stat buffer.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat on an fd we hold, into a live buffer.
    if unsafe { libc::fstat(fd, &mut st) } < 0 {
        return None;
    }
    let file = format!(
        "{:02x}:{:02x}:{}",
        libc::major(st.st_dev),
        libc::minor(st.st_dev),
        st.st_ino
    );
    let class = match lock.owner {
        Owner::Posix => "POSIX",
        Owner::Ofd => "OFDLCK",
        Owner::Flock => "FLOCK",
        Owner::Lease => "LEASE",
    };
    // SAFETY: getpid has no preconditions.
    let me = unsafe { libc::getpid() };
    let table = std::fs::read_to_string("/proc/locks").ok()?;
    table.lines().find_map(|line| {
        let w: Vec<&str> = line.split_whitespace().collect();
        // "3: FLOCK  ADVISORY  WRITE 24503 fe:00:10141829 0 EOF"; a waiter's line has "->".
        if w.get(1) == Some(&"->") {
            return None;
        }
        let (c, pid, f) = (*w.get(1)?, w.get(4)?.parse::<i32>().ok()?, *w.get(5)?);
        (c == class && f == file && pid > 0 && pid != me).then(|| match comm(pid) {
            Some(comm) => format!("process {pid} ({comm}) holds one now"),
            // The lock names who took it; a process that inherited the description holds it.
            None => format!("a process that inherited it from process {pid} (exited) holds one now"),
        })
    })
}

fn comm(pid: i32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim().to_string())
}

/// Takes a lock owned by the open file description (OFD, flock) on `fd`, failing rather than
/// waiting when another holder has a conflicting one.
pub fn take(fd: RawFd, lock: &Lock) -> std::io::Result<()> {
    let r = match lock.owner {
        Owner::Ofd => {
            let l = lock.flock();
            // SAFETY: fcntl with a pointer to a live flock.
            unsafe { libc::fcntl(fd, libc::F_OFD_SETLK, &l) }
        }
        Owner::Flock => {
            let how = if lock.write { libc::LOCK_EX } else { libc::LOCK_SH };
            // SAFETY: flock on an fd we hold.
            unsafe { libc::flock(fd, how | libc::LOCK_NB) }
        }
        Owner::Posix | Owner::Lease => return Ok(()),
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The `struct flock` bytes of `fcntl(fd, F_SETLK, …)` for a POSIX lock (else `None`).
pub fn posix_setlk(lock: &Lock) -> Option<Vec<u8>> {
    if lock.owner != Owner::Posix {
        return None;
    }
    let l = lock.flock();
    // SAFETY: flock is plain data; viewing it as bytes for its lifetime.
    let bytes = unsafe {
        std::slice::from_raw_parts(
            (&l as *const libc::flock).cast::<u8>(),
            std::mem::size_of::<libc::flock>(),
        )
    };
    Some(bytes.to_vec())
}

/// The argument of `fcntl(fd, F_SETLEASE, …)` for a lease (else `None`).
pub fn lease_arg(lock: &Lock) -> Option<u64> {
    let arg = if lock.write { libc::F_WRLCK } else { libc::F_RDLCK };
    (lock.owner == Owner::Lease).then_some(arg as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_of_line_is_read() {
        let text = "pos:\t0\nflags:\t0100002\nlock:\t1: POSIX  ADVISORY  WRITE 24503 fe:00:10141828 10 29\n\
                    lock:\t2: POSIX  ADVISORY  READ 24503 fe:00:10141828 50 EOF\n\
                    lock:\t1: FLOCK  ADVISORY  READ 24503 fe:00:10141829 0 EOF\n\
                    lock:\t1: OFDLCK ADVISORY  WRITE -1 fe:00:10141830 0 4\n\
                    lock:\t1: LEASE  ACTIVE    READ 24503 fe:00:10141831 0 EOF\n";
        let l = parse(text).unwrap();
        assert_eq!(l.len(), 5);
        assert_eq!(
            l[0],
            Lock {
                owner: Owner::Posix,
                write: true,
                start: 10,
                end: Some(29)
            }
        );
        assert_eq!(l[1].end, None);
        assert_eq!(l[2].owner, Owner::Flock);
        assert_eq!(
            l[3],
            Lock {
                owner: Owner::Ofd,
                write: true,
                start: 0,
                end: Some(4)
            }
        );
        assert_eq!(l[4].owner, Owner::Lease);
        assert_eq!(l[0].flock().l_len, 20);
        assert_eq!(l[1].flock().l_len, 0);
    }

    #[test]
    fn a_lease_being_broken_is_refused() {
        let e = parse("lock:\t1: LEASE  BREAKING  READ 1 fe:00:1 0 EOF\n").unwrap_err();
        assert!(e.contains("broken"), "{e}");
    }
}
