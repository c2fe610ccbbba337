//! The kernel objects a program holds through an fd, beyond regular files, pipes and IP sockets:
//! one module per kind, each with its record in the image, how it is read from a parked
//! process ([`capture`]), how it is re-created once per host by ckptd ([`Restore::recreate`])
//! and what is done inside the restored process once every fd is at its number
//! ([`after_placed`]). Adding a kind touches its own module and the three `match`es here.
//!
//! Objects are re-created by ckptd and handed to every restorer holding them, so that one open
//! file description shared by several fds or processes is one again after restore.
//!
//! The records here are part of the image format (`ckpt_format` stores them as they are): a
//! change to one is a change of `ckpt_format::FORMAT_VERSION`.
//!
//! TCP and UDP sockets themselves are made by ckptd (their connections span hosts); their
//! options live here, in [`inet`].

pub mod deleted;
pub mod deleted_dir;
pub mod epoll;
pub mod eventfd;
pub mod fanotify;
pub mod fifo;
pub mod inet;
pub mod inotify;
pub mod lock;
pub mod memfd;
pub mod mqueue;
pub mod netlink;
pub mod opath;
pub mod packet;
pub mod pidfd;
pub mod posix_timer;
pub mod procfile;
pub mod pty;
mod reopen;
pub mod signalfd;
pub mod sock_diag;
pub mod sockfilter;
pub mod socklevel;
pub mod source;
pub mod sysv;
pub mod timerfd;
pub mod unix;

pub use source::Source;

use serde::{Deserialize, Serialize};
use std::os::fd::{OwnedFd, RawFd};

#[derive(Debug, thiserror::Error)]
pub enum KindError {
    /// A kind ckpt does not checkpoint; the text names it ("an io_uring instance").
    #[error("{0}")]
    Unsupported(String),
    #[error("reading {what}: {source}")]
    Read {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("re-creating {what}: {source}")]
    Recreate {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// State that cannot be brought back exactly: the checkpoint is refused naming it.
    #[error("{0}")]
    Refused(String),
}

impl KindError {
    pub fn read(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> KindError {
        let what = what.into();
        move |source| KindError::Read { what, source }
    }
    pub fn recreate(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> KindError {
        let what = what.into();
        move |source| KindError::Recreate { what, source }
    }
}

/// One object as the image records it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Object {
    EventFd(eventfd::Record),
    TimerFd(timerfd::Record),
    SignalFd(signalfd::Record),
    Inotify(inotify::Record),
    Deleted(deleted::Record),
    Fifo(fifo::Record),
    MQueue(mqueue::Record),
    Unix(unix::Record),
    Epoll(epoll::Record),
    Pty(pty::Record),
    Netlink(netlink::Record),
    Packet(packet::Record),
    Path(opath::Record),
    PidFd(pidfd::Record),
    Proc(procfile::Record),
    Memfd(memfd::Record),
    DeletedDir(deleted_dir::Record),
    Fanotify(fanotify::Record),
}

impl Object {
    /// One line for `ckptctl show`.
    pub fn describe(&self) -> String {
        match self {
            Object::EventFd(r) => eventfd::describe(r),
            Object::TimerFd(r) => timerfd::describe(r),
            Object::SignalFd(r) => signalfd::describe(r),
            Object::Inotify(r) => inotify::describe(r),
            Object::Deleted(r) => deleted::describe(r),
            Object::Fifo(r) => fifo::describe(r),
            Object::MQueue(r) => mqueue::describe(r),
            Object::Unix(r) => unix::describe(r),
            Object::Epoll(r) => epoll::describe(r),
            Object::Pty(r) => pty::describe(r),
            Object::Netlink(r) => netlink::describe(r),
            Object::Packet(r) => packet::describe(r),
            Object::Path(r) => opath::describe(r),
            Object::PidFd(r) => pidfd::describe(r),
            Object::Proc(r) => procfile::describe(r),
            Object::Memfd(r) => memfd::describe(r),
            Object::DeletedDir(r) => deleted_dir::describe(r),
            Object::Fanotify(r) => fanotify::describe(r),
        }
    }
}

/// Reads the object behind `src`, if it is of a kind this crate handles: `None` leaves the fd
/// to the caller (regular files, pipes, IP sockets…).
pub fn capture(src: &Source) -> Option<Result<Object, KindError>> {
    let anon = src.anon_name();
    Some(match anon {
        Some("eventfd") => eventfd::capture(src).map(Object::EventFd),
        Some("timerfd") => timerfd::capture(src).map(Object::TimerFd),
        Some("signalfd") => signalfd::capture(src).map(Object::SignalFd),
        Some("inotify") => inotify::capture(src).map(Object::Inotify),
        Some("eventpoll") => epoll::capture(src).map(Object::Epoll),
        Some("pidfd") => pidfd::capture(src).map(Object::PidFd),
        Some("fanotify") => fanotify::capture(src).map(Object::Fanotify),
        Some(other) => Err(KindError::Unsupported(unsupported_anon(other))),
        None if opath::claims(src) => opath::capture(src).map(Object::Path),
        None if procfile::claims(src) => procfile::capture(src).map(Object::Proc),
        None if memfd::claims(src) => memfd::capture(src).map(Object::Memfd),
        None if deleted_dir::claims(src) => deleted_dir::capture(src).map(Object::DeletedDir),
        None if deleted::claims(src) => deleted::capture(src).map(Object::Deleted),
        None if fifo::claims(src) => fifo::capture(src).map(Object::Fifo),
        None if mqueue::claims(src) => mqueue::capture(src).map(Object::MQueue),
        None if unix::handles(src) => unix::capture(src).map(Object::Unix),
        None if pty::claims(src) => pty::capture(src).map(Object::Pty),
        None if netlink::handles(src) => netlink::capture(src).map(Object::Netlink),
        None if packet::handles(src) => packet::capture(src).map(Object::Packet),
        None => return None,
    })
}

/// How a refused anonymous-inode kind is named to the user.
fn unsupported_anon(name: &str) -> String {
    match name {
        "io_uring" => "an io_uring instance".to_string(),
        "userfaultfd" => "a userfaultfd of the program's own".to_string(),
        "bpf-map" | "bpf-prog" | "bpf_link" | "bpf-link" => format!("a BPF object ({name})"),
        n if n.starts_with("perf_event") => "a perf_event counter".to_string(),
        n => format!("an {n}"),
    }
}

/// Re-creates the objects of one host's restore. Each distinct object (by the identity the
/// checkpoint gave it) is made once; kinds that come in groups (the two ends of a socketpair)
/// keep what they need here between calls.
#[derive(Default)]
pub struct Restore {
    deleted: deleted::Made,
    fifo: fifo::Made,
    mqueue: mqueue::Made,
    unix: unix::Restore,
    pty: pty::Made,
    memfd: memfd::Made,
    deleted_dir: deleted_dir::Made,
}

impl Restore {
    /// Makes the object; the caller duplicates the fd for every holder.
    pub fn recreate(&mut self, ident: u64, obj: &Object) -> Result<OwnedFd, KindError> {
        let _ = ident;
        match obj {
            Object::EventFd(r) => eventfd::recreate(r),
            Object::TimerFd(r) => timerfd::recreate(r),
            Object::SignalFd(r) => signalfd::recreate(r),
            Object::Inotify(r) => inotify::recreate(r),
            Object::Deleted(r) => deleted::recreate(r, &mut self.deleted),
            Object::Fifo(r) => fifo::recreate(r, &mut self.fifo),
            Object::MQueue(r) => mqueue::recreate(r, &mut self.mqueue),
            Object::Unix(r) => self.unix.recreate(r),
            Object::Epoll(r) => epoll::recreate(r),
            Object::Pty(r) => pty::recreate(r, &mut self.pty),
            Object::Netlink(r) => netlink::recreate(r),
            Object::Packet(r) => packet::recreate(r),
            Object::Path(r) => opath::recreate(r),
            Object::PidFd(r) => pidfd::recreate(r),
            Object::Proc(r) => procfile::recreate(r),
            Object::Memfd(r) => memfd::recreate(r, &mut self.memfd),
            Object::DeletedDir(r) => deleted_dir::recreate(r, &mut self.deleted_dir),
            Object::Fanotify(r) => fanotify::recreate(r),
        }
    }

    /// Called once every object was recreated (queued data that needs both ends, …).
    pub fn finish(&mut self) -> Result<(), KindError> {
        self.unix.finish()?;
        self.pty.finish()?;
        Ok(())
    }
}

/// Work inside the restored process once every fd is at its number (registering an epoll's
/// targets under the program's own fd numbers). `owner` is false for a holder that is not the
/// first of the object on this host: shared state is set up once.
pub fn after_placed(fd: RawFd, obj: &Object, owner: bool) -> Result<(), KindError> {
    match obj {
        Object::EventFd(_) => Ok(()),
        Object::TimerFd(_) => Ok(()),
        Object::SignalFd(_) => Ok(()),
        Object::Inotify(_) => Ok(()),
        Object::Deleted(_) => Ok(()),
        Object::Fifo(_) => Ok(()),
        Object::MQueue(r) => mqueue::after_placed(fd, r),
        Object::Unix(_) => Ok(()),
        // An instance shared by several processes is registered once, by its first holder.
        Object::Epoll(r) if owner => epoll::register(fd, r),
        Object::Epoll(_) => Ok(()),
        Object::Pty(_) => Ok(()),
        Object::Netlink(_) => Ok(()),
        Object::Packet(_) => Ok(()),
        Object::Path(_) => Ok(()),
        // Opened once every process of the restore exists (`pidfd::open_again`).
        Object::PidFd(_) => Ok(()),
        Object::Proc(_) => Ok(()),
        Object::Memfd(_) => Ok(()),
        Object::DeletedDir(_) => Ok(()),
        Object::Fanotify(_) => Ok(()),
    }
}

/// When a restored process's objects that name processes (pidfds, `/proc/PID/…` files,
/// placeholders until then) are opened: `Early` once its fds are in place (its children are
/// forked by then, so an epoll can watch a pidfd of one; `/proc` files of its own only),
/// `Late` once every process of the
/// restore exists and is built (zombies, siblings), for those not opened yet. `Late` also
/// reads away, in a fanotify group's first holder, the events the restore itself raised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    Early,
    Late,
}

/// Puts an object that names a process at its number (true), or leaves it (false): not of
/// such a kind, or, early, its process does not exist yet.
pub fn open_named(fd: RawFd, obj: &Object, cloexec: bool, owner: bool, when: When) -> Result<bool, KindError> {
    let r = match obj {
        Object::PidFd(r) => pidfd::open_again(fd, r, cloexec).map(|_| true),
        // Early, only the process's own: another's `/proc/PID/mem` opened while that restorer
        // is still being exec'd would name the memory it leaves.
        // SAFETY: getpid has no preconditions.
        Object::Proc(r) if when == When::Early && r.pid != unsafe { libc::getpid() } => Ok(false),
        Object::Proc(r) => procfile::open_again(fd, r, cloexec).map(|_| true),
        Object::Fanotify(_) if owner && when == When::Late => fanotify::drain(fd).map(|_| false),
        _ => Ok(false),
    };
    match r {
        Err(KindError::Recreate { source, .. })
            if when == When::Early && matches!(source.raw_os_error(), Some(libc::ESRCH) | Some(libc::ENOENT)) =>
        {
            Ok(false)
        }
        r => r,
    }
}

/// The process an object names, when it must be one of the checkpoint's (its pid could name
/// another process after a restore).
pub fn names_process(obj: &Object) -> Option<i32> {
    match obj {
        Object::PidFd(r) => Some(r.pid),
        Object::Proc(r) => Some(r.pid),
        _ => None,
    }
}
