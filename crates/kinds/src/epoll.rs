//! epoll: an instance and its interest list. Each watch is keyed by the kernel on (file, fd
//! number), so the watches are registered again inside the restored process, under the
//! program's own fd numbers, once every fd is back ([`register`]). ckptd only makes the empty
//! instance ([`recreate`]).

use crate::{KindError, Source};
use serde::{Deserialize, Serialize};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// The bits of a watch's mask that the kernel keeps when a one-shot watch fires (its
/// `EP_PRIVATE_BITS`): a mask made only of these is a one-shot watch that already fired.
const PRIVATE_BITS: u32 = (libc::EPOLLWAKEUP | libc::EPOLLONESHOT | libc::EPOLLET | libc::EPOLLEXCLUSIVE) as u32;

/// `kcmp` type comparing a file with the target of an epoll watch (not in the libc crate).
const KCMP_EPOLL_TFD: i32 = 7;

/// `struct kcmp_epoll_slot` of linux/kcmp.h.
#[repr(C)]
struct KcmpEpollSlot {
    efd: u32,
    tfd: u32,
    toff: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Record {
    /// The interest list, in the kernel's order.
    pub watches: Vec<Watch>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Watch {
    /// The fd number the watch was registered under (the kernel's key, with the file).
    pub tfd: i32,
    /// The mask exactly as the kernel holds it (EPOLLET, EPOLLONESHOT, EPOLLEXCLUSIVE…; a
    /// one-shot watch that fired holds only those bits).
    pub events: u32,
    /// The user's data word, returned with each event.
    pub data: u64,
    /// Where the watched file is in the program when it is not at `tfd`: the program closed
    /// `tfd` (or put another file there) while the file stayed open at this other number.
    pub file_at: Option<RawFd>,
}

impl Watch {
    fn fired_oneshot(&self) -> bool {
        self.events & libc::EPOLLONESHOT as u32 != 0 && self.events & !PRIVATE_BITS == 0
    }
}

/// One `tfd:` line of an epoll's fdinfo: `tfd: N events: HEX data: HEX pos:… ino:HEX sdev:HEX`.
fn parse_line(line: &str) -> Option<(i32, u32, u64)> {
    let mut w = line.split_whitespace();
    let mut field = |key: &str| {
        if w.next()? != key {
            return None;
        }
        w.next()
    };
    let tfd = field("tfd:")?.parse().ok()?;
    let events = u32::from_str_radix(field("events:")?, 16).ok()?;
    let data = u64::from_str_radix(field("data:")?, 16).ok()?;
    Some((tfd, events, data))
}

/// Whether `candidate` of process `pid` is the file of the `toff`-th watch (among those with
/// number `tfd`) of its epoll `efd`. A kernel without kcmp's epoll comparison is an error,
/// not a refusal of every closed-number watch.
fn is_target(pid: i32, candidate: RawFd, efd: RawFd, tfd: i32, toff: u32) -> std::io::Result<bool> {
    let slot = KcmpEpollSlot {
        efd: efd as u32,
        tfd: tfd as u32,
        toff,
    };
    // SAFETY: kcmp only compares kernel objects; the slot is a local of the kernel's layout.
    let r = unsafe {
        libc::syscall(
            libc::SYS_kcmp,
            pid,
            pid,
            KCMP_EPOLL_TFD,
            candidate,
            &slot as *const KcmpEpollSlot,
        )
    };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        // EBADF: no such fd (a closed number); ENOENT: no such watch.
        return match e.raw_os_error() {
            Some(libc::EBADF) | Some(libc::ENOENT) => Ok(false),
            _ => Err(e),
        };
    }
    Ok(r == 0)
}

pub fn capture(src: &Source) -> Result<Record, KindError> {
    let mut watches: Vec<Watch> = Vec::new();
    let mut fds: Option<Vec<RawFd>> = None;
    for line in src.fdinfo.lines().filter(|l| l.starts_with("tfd:")) {
        let (tfd, events, data) = parse_line(line).ok_or_else(|| KindError::Read {
            what: format!("the watch list of epoll fd {} (`{}`)", src.fd, line.trim()),
            source: std::io::Error::from(std::io::ErrorKind::InvalidData),
        })?;
        // Watches with the same number (different files) are told apart by their rank
        // among those, in the kernel's order, which fdinfo follows.
        let toff = watches.iter().filter(|w| w.tfd == tfd).count() as u32;
        let what = || format!("the file watched under fd {tfd} by epoll fd {} (kcmp)", src.fd);
        let file_at = if is_target(src.pid, tfd, src.fd, tfd, toff).map_err(KindError::read(what()))? {
            None
        } else {
            if fds.is_none() {
                fds = Some(list_fds(src.pid).map_err(KindError::read(format!("the fds of process {}", src.pid)))?);
            }
            let mut found = None;
            for &n in fds.iter().flatten().filter(|&&n| n != tfd) {
                if is_target(src.pid, n, src.fd, tfd, toff).map_err(KindError::read(what()))? {
                    found = Some(n);
                    break;
                }
            }
            match found {
                Some(n) => Some(n),
                None => {
                    return Err(KindError::Refused(format!(
                        "epoll fd {} watches a file under fd {tfd}, which the program closed, and the file is not \
                         open at any other fd of the process (another process or a mapping holds it): close the \
                         watch (EPOLL_CTL_DEL) or keep the file open before checkpointing",
                        src.fd
                    )))
                }
            }
        };
        watches.push(Watch {
            tfd,
            events,
            data,
            file_at,
        });
    }
    Ok(Record { watches })
}

fn list_fds(pid: i32) -> std::io::Result<Vec<RawFd>> {
    let mut v: Vec<RawFd> = std::fs::read_dir(format!("/proc/{pid}/fd"))?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
        .collect();
    v.sort_unstable();
    Ok(v)
}

pub fn recreate(_rec: &Record) -> Result<OwnedFd, KindError> {
    // SAFETY: epoll_create1 returns a new fd or -1.
    let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if fd < 0 {
        return Err(KindError::recreate("an epoll instance")(std::io::Error::last_os_error()));
    }
    // SAFETY: the fd was just created and is ours.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Registers every watch of the epoll at `fd`, inside the restored process, once every fd of
/// the program is at its number. The kernel checks readiness when a watch is added, so a
/// target that is ready (level- or edge-triggered) is reported at the next wait: an edge the
/// program had not yet read about is not lost.
pub fn register(fd: RawFd, rec: &Record) -> Result<(), KindError> {
    // Work on a copy above every watched number: moving a file to a watch's number (below)
    // must not take the epoll away from under us, even when the epoll sits at such a number.
    let above = rec.watches.iter().map(|w| w.tfd).max().unwrap_or(0).max(2) + 1;
    // SAFETY: F_DUPFD_CLOEXEC on the epoll fd the restorer just placed.
    let ep = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, above) };
    if ep < 0 {
        return Err(KindError::recreate(format!("a working copy of epoll fd {fd}"))(
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: the copy is ours.
    let ep = unsafe { OwnedFd::from_raw_fd(ep) };
    // One-shot watches that fired first, while the instance reports nothing else.
    let (fired, armed): (Vec<&Watch>, Vec<&Watch>) = rec.watches.iter().partition(|w| w.fired_oneshot());
    for w in fired.into_iter().chain(armed) {
        at_number(w, |target| add(ep.as_raw_fd(), target, w)).map_err(KindError::recreate(format!(
            "the watch of fd {} in epoll fd {fd}",
            w.tfd
        )))?;
    }
    Ok(())
}

/// Runs `f` with the watched file at the watch's number `tfd` (the number `f` must register it
/// under); when the program had closed that number, the file is put there for the time of
/// `f` and whatever occupied the number goes back after.
fn at_number(w: &Watch, f: impl FnOnce(RawFd) -> std::io::Result<()>) -> std::io::Result<()> {
    let Some(file) = w.file_at else {
        return f(w.tfd);
    };
    let last = std::io::Error::last_os_error;
    // SAFETY: F_GETFD only reads the fd's flags (fails with EBADF when the number is free).
    let fdflags = unsafe { libc::fcntl(w.tfd, libc::F_GETFD) };
    let aside = if fdflags >= 0 {
        // SAFETY: a copy of the occupant at a free number, closed below.
        let a = unsafe { libc::fcntl(w.tfd, libc::F_DUPFD_CLOEXEC, 3) };
        if a < 0 {
            return Err(last());
        }
        Some(a)
    } else {
        None
    };
    // SAFETY: dup3 of a program fd onto the watch's number (its occupant is kept aside).
    let placed = unsafe { libc::dup3(file, w.tfd, libc::O_CLOEXEC) };
    let result = if placed < 0 { Err(last()) } else { f(w.tfd) };
    let back = match aside {
        Some(a) => {
            let cloexec = if fdflags & libc::FD_CLOEXEC != 0 {
                libc::O_CLOEXEC
            } else {
                0
            };
            // SAFETY: the occupant goes back to its number with its close-on-exec flag;
            // then its temporary copy is closed.
            let r = unsafe { libc::dup3(a, w.tfd, cloexec) };
            let e = (r < 0).then(last);
            // SAFETY: closing the temporary copy made above.
            unsafe { libc::close(a) };
            e
        }
        None if placed >= 0 => {
            // SAFETY: the number was free in the program: it is again.
            unsafe { libc::close(w.tfd) };
            None
        }
        None => None,
    };
    match (result, back) {
        (Err(e), _) | (Ok(()), Some(e)) => Err(e),
        (Ok(()), None) => Ok(()),
    }
}

fn ctl_add(ep: RawFd, target: RawFd, events: u32, data: u64) -> std::io::Result<()> {
    let mut ev = libc::epoll_event { events, u64: data };
    // SAFETY: epoll_ctl with a local event struct.
    if unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, target, &mut ev) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn add(ep: RawFd, target: RawFd, w: &Watch) -> std::io::Result<()> {
    if !w.fired_oneshot() {
        return ctl_add(ep, target, w.events, w.data);
    }
    // The kernel always adds EPOLLERR|EPOLLHUP to a mask it is given, so a fired one-shot
    // watch cannot be added back as disabled as it was. It is made to fire again instead: added
    // with what the target is ready for now, then that one event is taken (the instance holds
    // no other armed watch yet), which leaves the mask at the private bits, as it was.
    let mut p = libc::pollfd {
        fd: target,
        events: libc::POLLIN | libc::POLLOUT | libc::POLLPRI | libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: poll of one local pollfd, without waiting.
    let ready = if unsafe { libc::poll(&mut p, 1, 0) } == 1 {
        (p.revents & !libc::POLLNVAL) as u32
    } else {
        0
    };
    if ready == 0 {
        // Nothing to fire on: the watch stays disabled for everything but an error or a
        // hang-up of the target, which it would report once.
        tracing::debug!(
            tfd = w.tfd,
            "fired one-shot watch added back armed for errors and hang-ups only"
        );
        return ctl_add(ep, target, w.events, w.data);
    }
    ctl_add(ep, target, w.events | ready, w.data)?;
    let mut out = libc::epoll_event { events: 0, u64: 0 };
    // SAFETY: epoll_wait into one local event, without waiting.
    let n = unsafe { libc::epoll_wait(ep, &mut out, 1, 0) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let got = out.u64;
    if n != 1 || got != w.data {
        tracing::debug!(tfd = w.tfd, "fired one-shot watch did not fire again at restore");
    }
    Ok(())
}

pub fn describe(rec: &Record) -> String {
    let closed = rec.watches.iter().filter(|w| w.file_at.is_some()).count();
    let fired = rec.watches.iter().filter(|w| w.fired_oneshot()).count();
    let mut s = format!("epoll ({} watched", rec.watches.len());
    if fired > 0 {
        s += &format!(", {fired} one-shot fired");
    }
    if closed > 0 {
        s += &format!(", {closed} under closed fd numbers");
    }
    s + ")"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_watch_line() {
        let l = "tfd:        4 events: 80000019 data: ffffffffffffffff  pos:0 ino:c9324 sdev:f";
        assert_eq!(parse_line(l), Some((4, 0x8000_0019, u64::MAX)));
        let l = "tfd:        5 events: 10000019 data:                5  pos:0 ino:c9324 sdev:f";
        assert_eq!(parse_line(l), Some((5, 0x1000_0019, 5)));
        assert_eq!(parse_line("tfd: x events: 1 data: 2"), None);
    }

    #[test]
    fn a_mask_of_private_bits_is_a_fired_oneshot() {
        let w = |events| Watch {
            tfd: 3,
            events,
            data: 0,
            file_at: None,
        };
        assert!(w(libc::EPOLLONESHOT as u32).fired_oneshot());
        assert!(w((libc::EPOLLONESHOT | libc::EPOLLET) as u32).fired_oneshot());
        assert!(!w((libc::EPOLLONESHOT | libc::EPOLLIN) as u32).fired_oneshot());
        assert!(!w(libc::EPOLLET as u32).fired_oneshot());
    }
}
