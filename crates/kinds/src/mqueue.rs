//! POSIX message queues (`mq_open`): every waiting message with its priority, the queue's
//! limits, and the `mq_notify` registration.
//!
//! There is no way to look at a message without taking it, so the capture takes every message
//! through a description of its own and sends them back at once, in the order taken (a sent
//! message goes behind those of its priority, so the order is exactly the one before). A queue
//! with messages and a notification registered is refused: sending to the emptied queue would
//! fire the notification at the program.
//!
//! At restore the queue is made anew with the checkpointed messages, replacing a queue of that
//! name if one exists (the killed program's queue outlives it until unlinked). A queue that was
//! unlinked is made and unlinked again.

use crate::reopen::{self, check};
use crate::{KindError, Source};
use serde::{Deserialize, Serialize};
use std::collections::hash_map::{Entry, HashMap};
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;

/// `statfs` type of the mqueue filesystem.
const MQUEUE_MAGIC: i64 = 0x1980_0202;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Record {
    /// `/name`, as given to `mq_open`.
    pub name: String,
    /// `mq_unlink`ed while open.
    pub unlinked: bool,
    /// The queue on the host at the checkpoint: descriptions of one queue share it again.
    pub dev: u64,
    pub ino: u64,
    /// `O_RDONLY`, `O_WRONLY` or `O_RDWR`.
    pub access: i32,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub maxmsg: i64,
    pub msgsize: i64,
    /// In the order `mq_receive` returns them.
    pub messages: Vec<Message>,
    pub notify: Option<Notify>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Message {
    pub prio: u32,
    pub data: Vec<u8>,
}

/// An `mq_notify` registration (the sigevent's value is not visible outside the program: the
/// re-made registration carries 0).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Notify {
    /// The registered process.
    pub pid: i32,
    /// `SIGEV_SIGNAL` with this signal, or `None` for `SIGEV_NONE`.
    pub signo: Option<i32>,
}

/// An fd on the mqueue filesystem.
pub fn claims(src: &Source) -> bool {
    if !src.meta.file_type().is_file() {
        return false;
    }
    let Ok(path) = CString::new(format!("/proc/{}/fd/{}", src.pid, src.fd)) else {
        return false;
    };
    // SAFETY: statfs fills the struct we pass.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid C string and a struct of ours.
    unsafe { libc::statfs(path.as_ptr(), &mut st) == 0 && st.f_type as i64 == MQUEUE_MAGIC }
}

/// What reading an mqueue fd says: `QSIZE:… NOTIFY:… SIGNO:… NOTIFY_PID:…`.
fn status(fd: RawFd) -> std::io::Result<HashMap<String, i64>> {
    let mut buf = [0u8; 256];
    // SAFETY: pread into a buffer of ours, of its length.
    let n = check(unsafe { libc::pread(fd, buf.as_mut_ptr().cast(), buf.len(), 0) } as i64)?;
    let text = String::from_utf8_lossy(&buf[..n as usize]);
    Ok(text
        .split_whitespace()
        .filter_map(|kv| kv.split_once(':'))
        .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
        .collect())
}

pub fn capture(src: &Source) -> Result<Record, KindError> {
    let (name, unlinked) = match src.link.strip_suffix(" (deleted)") {
        Some(n) => (n.to_string(), true),
        None => (src.link.to_string(), false),
    };
    let what = || format!("message queue {name}");
    // Our own description, non-blocking, so that neither the program's offset nor its flags move.
    let own = reopen::of_process(src.pid, src.fd, libc::O_RDWR | libc::O_NONBLOCK).map_err(KindError::read(what()))?;
    let q = own.as_raw_fd();
    let st = status(q).map_err(KindError::read(what()))?;
    let notify = match st.get("NOTIFY_PID").copied().unwrap_or(0) {
        0 => None,
        pid => match st.get("NOTIFY").copied().unwrap_or(0) as i32 {
            libc::SIGEV_SIGNAL => Some(Notify {
                pid: pid as i32,
                signo: Some(st.get("SIGNO").copied().unwrap_or(0) as i32),
            }),
            libc::SIGEV_NONE => Some(Notify {
                pid: pid as i32,
                signo: None,
            }),
            _ => {
                return Err(KindError::Unsupported(format!(
                    "a message queue ({name}) with a notification by thread (SIGEV_THREAD)"
                )))
            }
        },
    };
    // SAFETY: mq_getattr fills the struct we pass; the fd is an mqueue descriptor.
    let mut attr: libc::mq_attr = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    check(unsafe { libc::mq_getattr(q, &mut attr) } as i64).map_err(KindError::read(what()))?;
    if notify.is_some() && attr.mq_curmsgs > 0 {
        return Err(KindError::Refused(format!(
            "message queue {name} has {} messages waiting and a notification registered: reading \
             them would fire it; checkpoint again once the program has read its queue",
            attr.mq_curmsgs
        )));
    }
    if attr.mq_curmsgs > 0 && attr.mq_curmsgs >= attr.mq_maxmsg {
        // A sender outside the checkpoint blocked on the full queue would slip its message in
        // as soon as one is taken, and one of the program's could not be put back.
        return Err(KindError::Refused(format!(
            "message queue {name} is full ({} messages): reading it could let a sender outside \
             the checkpoint take the place of one of them; checkpoint again once it has room",
            attr.mq_curmsgs
        )));
    }
    let messages = take_and_put_back(q, attr.mq_curmsgs, attr.mq_msgsize).map_err(KindError::read(what()))?;
    Ok(Record {
        name,
        unlinked,
        dev: src.meta.dev(),
        ino: src.meta.ino(),
        access: src.flags & libc::O_ACCMODE,
        mode: src.meta.mode() & 0o7777,
        uid: src.meta.uid(),
        gid: src.meta.gid(),
        maxmsg: attr.mq_maxmsg,
        msgsize: attr.mq_msgsize,
        messages,
        notify,
    })
}

/// Takes the `count` waiting messages and sends them back at once, in the same order.
fn take_and_put_back(q: RawFd, count: i64, msgsize: i64) -> std::io::Result<Vec<Message>> {
    let mut messages = Vec::new();
    let mut buf = vec![0u8; msgsize.max(1) as usize];
    for _ in 0..count {
        let mut prio = 0u32;
        // SAFETY: mq_receive into a buffer of the queue's message size.
        let n = unsafe { libc::mq_receive(q, buf.as_mut_ptr().cast(), buf.len(), &mut prio) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EAGAIN) {
                // Someone outside the checkpoint took one meanwhile.
                break;
            }
            put_back(q, &messages)?;
            return Err(e);
        }
        messages.push(Message {
            prio,
            data: buf[..n as usize].to_vec(),
        });
    }
    put_back(q, &messages)?;
    Ok(messages)
}

fn put_back(q: RawFd, messages: &[Message]) -> std::io::Result<()> {
    for (k, m) in messages.iter().enumerate() {
        if let Err(e) = send(q, m) {
            tracing::error!(
                lost = messages.len() - k,
                "messages of a queue could not be put back: {e}"
            );
            return Err(std::io::Error::other(format!(
                "{} messages taken to be read could not be put back: {e}",
                messages.len() - k
            )));
        }
    }
    Ok(())
}

fn send(q: RawFd, m: &Message) -> std::io::Result<()> {
    // SAFETY: mq_send from a buffer of ours, of its length.
    check(unsafe { libc::mq_send(q, m.data.as_ptr().cast(), m.data.len(), m.prio) } as i64).map(|_| ())
}

/// The queues made so far (by inode at the checkpoint), each held open read-write.
#[derive(Default)]
pub struct Made {
    queues: HashMap<(u64, u64), OwnedFd>,
}

pub fn recreate(rec: &Record, made: &mut Made) -> Result<OwnedFd, KindError> {
    let what = || format!("message queue {}", rec.name);
    let queue = match made.queues.entry((rec.dev, rec.ino)) {
        Entry::Occupied(e) => e.into_mut(),
        Entry::Vacant(e) => e.insert(make(rec).map_err(KindError::recreate(what()))?),
    };
    // The restorer sets the program's flags (O_NONBLOCK or not).
    reopen::of_own(queue.as_raw_fd(), rec.access | libc::O_NONBLOCK).map_err(KindError::recreate(what()))
}

fn mq_open_excl(name: &str, rec: &Record) -> std::io::Result<OwnedFd> {
    let c = CString::new(name).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: mq_attr is plain data.
    let mut attr: libc::mq_attr = unsafe { std::mem::zeroed() };
    attr.mq_maxmsg = rec.maxmsg;
    attr.mq_msgsize = rec.msgsize;
    let flags = libc::O_CREAT | libc::O_EXCL | libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC;
    // SAFETY: a valid name, a mode and an attr of ours; returns a new descriptor or -1.
    let q = unsafe { libc::mq_open(c.as_ptr(), flags, 0o600 as libc::mode_t, &attr as *const libc::mq_attr) };
    check(q as i64)?;
    // SAFETY: the descriptor (an fd on Linux) was just made and is ours.
    Ok(unsafe { OwnedFd::from_raw_fd(q) })
}

fn mq_unlink(name: &str) -> std::io::Result<()> {
    let c = CString::new(name).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: a valid name.
    match check(unsafe { libc::mq_unlink(c.as_ptr()) } as i64) {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        r => r.map(|_| ()),
    }
}

/// Makes the queue with its limits, owner, permissions and messages. A named queue replaces
/// one of the same name; an unlinked one takes its old name if free (else a name of ours) and
/// is unlinked again.
fn make(rec: &Record) -> std::io::Result<OwnedFd> {
    let q = if rec.unlinked {
        reopen::create_unlinked(
            std::iter::once(rec.name.clone()).chain(reopen::spare_names("/ckpt-unlinked-")),
            |name| mq_open_excl(name, rec),
            mq_unlink,
        )?
    } else {
        mq_unlink(&rec.name)?;
        mq_open_excl(&rec.name, rec)?
    };
    let fd = q.as_raw_fd();
    reopen::set_owner_mode(fd, rec.uid, rec.gid, rec.mode)?;
    for m in &rec.messages {
        send(fd, m)?;
    }
    Ok(q)
}

/// The notification is registered by the restored process itself (the kernel ties it to the
/// registering process), once: a second fd of the same queue finds it made. Nothing here may
/// open and close a descriptor of the queue: the kernel drops a registration whenever its
/// process closes any descriptor of the queue.
pub fn after_placed(fd: RawFd, rec: &Record) -> Result<(), KindError> {
    let Some(n) = &rec.notify else {
        return Ok(());
    };
    if n.pid != std::process::id() as i32 {
        return Ok(());
    }
    let what = || format!("the notification of message queue {}", rec.name);
    // SAFETY: sigevent is plain data.
    let mut ev: libc::sigevent = unsafe { std::mem::zeroed() };
    match n.signo {
        Some(s) => {
            ev.sigev_notify = libc::SIGEV_SIGNAL;
            ev.sigev_signo = s;
        }
        None => ev.sigev_notify = libc::SIGEV_NONE,
    }
    // SAFETY: mq_notify with a sigevent of ours on an mqueue descriptor.
    match check(unsafe { libc::mq_notify(fd, &ev) } as i64) {
        // The queue was made for this restore and only its registered process registers: a
        // registration in place is the one an earlier fd of this process made.
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Ok(()),
        r => r.map(|_| ()).map_err(KindError::recreate(what())),
    }
}

pub fn describe(rec: &Record) -> String {
    let unlinked = if rec.unlinked { ", unlinked" } else { "" };
    let notify = match &rec.notify {
        Some(Notify { pid, signo: Some(s) }) => format!(", notifies {pid} with signal {s}"),
        Some(Notify { pid, signo: None }) => format!(", notification of {pid} without signal"),
        None => String::new(),
    };
    format!(
        "message queue {} ({} of {} messages of up to {} bytes{unlinked}{notify})",
        rec.name,
        rec.messages.len(),
        rec.maxmsg,
        rec.msgsize
    )
}
