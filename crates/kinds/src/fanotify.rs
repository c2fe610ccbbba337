//! fanotify groups: made again with their flags and every mark, each named as the kernel
//! shows it: an inode by its file handle (opened again with `open_by_handle_at`, so a renamed
//! file keeps its mark), a mount by its mount point, a filesystem by a mount of it; with the
//! event mask, the ignore mask and the mark's flags. Events not yet read would be lost, so a
//! group with events queued is refused, and so is a group of a permission class (an event
//! read but not answered yet is invisible and would be allowed).

use crate::reopen::check;
use crate::{KindError, Source};
use serde::{Deserialize, Serialize};
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

const FAN_CLASS_MASK: u32 = 0x0c;
const FAN_MARK_ADD: u32 = 0x1;
const FAN_MARK_MOUNT: u32 = 0x10;
const FAN_MARK_IGNORED_MASK: u32 = 0x20;
const FAN_MARK_IGNORED_SURV_MODIFY: u32 = 0x40;
const FAN_MARK_FILESYSTEM: u32 = 0x100;
const FAN_MARK_EVICTABLE: u32 = 0x200;
const FAN_MARK_IGNORE: u32 = 0x400;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Record {
    /// `fanotify_init` flags (class, `FAN_REPORT_*`, `FAN_UNLIMITED_*`…).
    pub flags: u32,
    /// `fanotify_init` event_f_flags: the flags of the fds events carry.
    pub event_flags: u32,
    pub marks: Vec<Mark>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Mark {
    pub on: Target,
    pub mask: u64,
    pub ignored_mask: u64,
    /// `FAN_MARK_IGNORED_SURV_MODIFY`, `FAN_MARK_EVICTABLE`, `FAN_MARK_IGNORE` as fdinfo shows.
    pub mflags: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum Target {
    /// An inode: its file handle, opened through `mount` (a mount of its filesystem).
    Inode {
        mount: String,
        handle_type: i32,
        handle: Vec<u8>,
        /// The inode number, to name it in messages.
        ino: u64,
    },
    /// A mount, by its mount point.
    Mount { path: String },
    /// A filesystem, by one of its mounts.
    Filesystem { path: String },
}

fn hex(v: &str) -> Option<u64> {
    u64::from_str_radix(v, 16).ok()
}

/// `key:value` fields of one fdinfo line.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix(':'))
}

/// The mount point of mount `id`, or of a mount of device `dev` (the one showing the
/// filesystem's root first), in process `pid`'s mount namespace.
fn mount_point(pid: i32, id: Option<u64>, dev: Option<(u64, u64)>) -> std::io::Result<Option<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))?;
    let mut found = None;
    for l in text.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() < 5 {
            continue;
        }
        let point = f[4].replace("\\040", " ");
        if id.is_some_and(|id| f[0].parse() == Ok(id)) {
            return Ok(Some(point));
        }
        let Some((ma, mi)) = f[2].split_once(':') else { continue };
        if dev.is_some_and(|d| (ma.parse(), mi.parse()) == (Ok(d.0), Ok(d.1))) {
            if f[3] == "/" {
                return Ok(Some(point));
            }
            found.get_or_insert(point);
        }
    }
    Ok(found)
}

pub fn capture(src: &Source) -> Result<Record, KindError> {
    let what = || format!("fanotify group (fd {})", src.fd);
    let bad = |why: &str| KindError::Read {
        what: format!("{} of {}", why, what()),
        source: std::io::ErrorKind::InvalidData.into(),
    };
    let head = src
        .fdinfo
        .lines()
        .find(|l| l.starts_with("fanotify flags:"))
        .ok_or_else(|| bad("the flags"))?;
    let flags = field(head, "flags").and_then(hex).ok_or_else(|| bad("the flags"))? as u32;
    let event_flags = field(head, "event-flags")
        .and_then(hex)
        .ok_or_else(|| bad("the event flags"))? as u32;
    if flags & FAN_CLASS_MASK != 0 {
        return Err(KindError::Refused(format!(
            "{} is of a permission class (FAN_CLASS_CONTENT or FAN_CLASS_PRE_CONTENT): an event \
             read and not answered yet cannot be seen, and would be allowed",
            what()
        )));
    }
    let fd = src.file().map_err(KindError::read(what()))?;
    let mut queued: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int.
    check(unsafe { libc::ioctl(fd, libc::FIONREAD, &mut queued) } as i64).map_err(KindError::read(what()))?;
    if queued > 0 {
        return Err(KindError::Refused(format!(
            "{} has {queued} bytes of events not read yet, which would be lost; checkpoint when \
             it has read them",
            what()
        )));
    }
    let mut marks = Vec::new();
    for l in src
        .fdinfo
        .lines()
        .filter(|l| l.starts_with("fanotify ") && !l.starts_with("fanotify flags:"))
    {
        let mask = field(l, "mask").and_then(hex).ok_or_else(|| bad("a mark"))?;
        let ignored_mask = field(l, "ignored_mask").and_then(hex).ok_or_else(|| bad("a mark"))?;
        let mflags = field(l, "mflags").and_then(hex).ok_or_else(|| bad("a mark"))? as u32;
        let sdev = field(l, "sdev").and_then(hex).map(|d| (d >> 20, d & 0xfffff));
        let unnamed = |kind: &str| {
            KindError::Refused(format!(
                "{} has a mark on {kind} ckpt cannot name again ({})",
                what(),
                l.trim_start_matches("fanotify ")
            ))
        };
        if mask == 0 && ignored_mask == 0 {
            return Err(KindError::Refused(format!(
                "{} has a mark with both masks empty (an ignore mask without \
                 FAN_MARK_IGNORED_SURV_MODIFY, cleared by a write), which ckpt cannot make again ({})",
                what(),
                l.trim_start_matches("fanotify ")
            )));
        }
        let on = if let Some(ino) = field(l, "ino").and_then(hex) {
            let handle = field(l, "f_handle")
                .and_then(unhex)
                .ok_or_else(|| unnamed("an inode without a file handle"))?;
            let handle_type = field(l, "fhandle-type").and_then(hex).ok_or_else(|| bad("a mark"))? as i32;
            let mount = mount_point(src.pid, None, sdev)
                .map_err(KindError::read(what()))?
                .ok_or_else(|| unnamed("an inode of a filesystem not mounted"))?;
            Target::Inode {
                mount,
                handle_type,
                handle,
                ino,
            }
        } else if let Some(id) = field(l, "mnt_id").and_then(hex) {
            let path = mount_point(src.pid, Some(id), None)
                .map_err(KindError::read(what()))?
                .ok_or_else(|| unnamed("a mount no longer there"))?;
            Target::Mount { path }
        } else if sdev.is_some() {
            let path = mount_point(src.pid, None, sdev)
                .map_err(KindError::read(what()))?
                .ok_or_else(|| unnamed("a filesystem not mounted"))?;
            Target::Filesystem { path }
        } else {
            return Err(unnamed("an object"));
        };
        marks.push(Mark {
            on,
            mask,
            ignored_mask,
            mflags,
        });
    }
    Ok(Record {
        flags,
        event_flags,
        marks,
    })
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok()))
        .collect()
}

pub fn recreate(rec: &Record) -> Result<OwnedFd, KindError> {
    let what = || "a fanotify group".to_string();
    // The group keeps its init flags, FAN_CLOEXEC among them, and shows them in fdinfo: they
    // are given exactly, and our fd is made close-on-exec at once (the restorers ckptd starts
    // close every fd they are not handed).
    // SAFETY: fanotify_init returns a new fd or -1.
    let fd = unsafe { libc::fanotify_init(rec.flags, rec.event_flags) };
    if fd < 0 {
        return Err(KindError::recreate(what())(std::io::Error::last_os_error()));
    }
    // SAFETY: the fd was just created and is ours.
    let group = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: F_SETFD on our own fd.
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    for m in &rec.marks {
        add(group.as_raw_fd(), m).map_err(KindError::recreate(format!("the fanotify mark on {}", name(&m.on))))?;
    }
    Ok(group)
}

/// Adds one mark: its event mask, then its ignore mask (the two come in separate calls).
fn add(group: RawFd, m: &Mark) -> std::io::Result<()> {
    // fanotify_mark takes no O_PATH fd as its object: the object is named by a path, an inode
    // through the /proc link of our O_PATH fd on it (a magic link leads to the inode itself).
    let (held, path, kind) = match &m.on {
        Target::Inode {
            mount,
            handle_type,
            handle,
            ..
        } => {
            let fd = by_handle(mount, *handle_type, handle)?;
            let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
            (Some(fd), path, 0)
        }
        Target::Mount { path } => (None, path.clone(), FAN_MARK_MOUNT),
        Target::Filesystem { path } => (None, path.clone(), FAN_MARK_FILESYSTEM),
    };
    let path = CString::new(path).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let evictable = m.mflags & FAN_MARK_EVICTABLE;
    let mark = |flags: u32, mask: u64| {
        // SAFETY: fanotify_mark on our group with a NUL-terminated path.
        check(unsafe { libc::fanotify_mark(group, flags, mask, libc::AT_FDCWD, path.as_ptr()) } as i64)
    };
    if m.mask != 0 {
        mark(FAN_MARK_ADD | kind | evictable, m.mask)?;
    }
    if m.ignored_mask != 0 {
        let how = if m.mflags & FAN_MARK_IGNORE != 0 {
            FAN_MARK_IGNORE
        } else {
            FAN_MARK_IGNORED_MASK
        };
        mark(
            FAN_MARK_ADD | kind | evictable | how | (m.mflags & FAN_MARK_IGNORED_SURV_MODIFY),
            m.ignored_mask,
        )?;
    }
    drop(held);
    Ok(())
}

/// Opens (`O_PATH`) the inode of a file handle through a mount of its filesystem.
fn by_handle(mount: &str, handle_type: i32, handle: &[u8]) -> std::io::Result<OwnedFd> {
    // open_by_handle_at takes no O_PATH fd for the mount either.
    let m = crate::reopen::open(mount, libc::O_RDONLY | libc::O_DIRECTORY)?;
    // struct file_handle: handle_bytes (u32), handle_type (i32), then the bytes.
    let mut buf = Vec::with_capacity(8 + handle.len());
    buf.extend_from_slice(&(handle.len() as u32).to_ne_bytes());
    buf.extend_from_slice(&handle_type.to_ne_bytes());
    buf.extend_from_slice(handle);
    // SAFETY: open_by_handle_at reads a file_handle of the length it states from our buffer.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            m.as_raw_fd(),
            buf.as_ptr(),
            libc::O_PATH | libc::O_CLOEXEC,
        )
    } as i32;
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just gave us `fd`.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Reads away the events the restore itself raised (its own file accesses under a mark)
/// before the program runs: the group had none queued at the checkpoint.
pub fn drain(fd: RawFd) -> Result<(), KindError> {
    let what = || "the events the restore raised in a fanotify group".to_string();
    let mut queued: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int.
    check(unsafe { libc::ioctl(fd, libc::FIONREAD, &mut queued) } as i64).map_err(KindError::read(what()))?;
    if queued <= 0 {
        return Ok(());
    }
    // Only while FIONREAD says events wait: a read of the program's description may block.
    let mut buf = vec![0u8; queued as usize + 4096];
    loop {
        // SAFETY: read into a buffer we own, of its length.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            return Ok(());
        }
        close_event_fds(&buf[..n as usize]);
        let mut left: libc::c_int = 0;
        // SAFETY: FIONREAD writes one int.
        if unsafe { libc::ioctl(fd, libc::FIONREAD, &mut left) } < 0 || left <= 0 {
            return Ok(());
        }
    }
}

/// Closes the fds events carry (`struct fanotify_event_metadata`: event_len u32, vers u8,
/// reserved u8, metadata_len u16, mask u64, fd i32, pid i32).
fn close_event_fds(mut events: &[u8]) {
    while events.len() >= 24 {
        let len = u32::from_ne_bytes([events[0], events[1], events[2], events[3]]) as usize;
        let fd = i32::from_ne_bytes([events[16], events[17], events[18], events[19]]);
        if fd >= 0 {
            // SAFETY: the event's fd was installed for us by the read.
            unsafe { libc::close(fd) };
        }
        if len < 24 || len > events.len() {
            return;
        }
        events = &events[len..];
    }
}

fn name(t: &Target) -> String {
    match t {
        Target::Inode { mount, ino, .. } => format!("inode {ino} of the filesystem at {mount}"),
        Target::Mount { path } => format!("the mount at {path}"),
        Target::Filesystem { path } => format!("the filesystem of {path}"),
    }
}

pub fn describe(rec: &Record) -> String {
    let marks: Vec<String> = rec
        .marks
        .iter()
        .map(|m| format!("{} mask {:#x}", name(&m.on), m.mask))
        .collect();
    format!("fanotify group (flags {:#x}; marks: {})", rec.flags, marks.join(", "))
}
