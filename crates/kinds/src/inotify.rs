//! inotify: every watch, by path, with its mask and its watch descriptor number.
//!
//! The kernel names a watched file only by a file handle; the path is found at checkpoint by
//! opening the handle (ckptd holds CAP_DAC_READ_SEARCH) and reading the link of the fd. At
//! restore the watches are added again by path under the same numbers (see [`place`]). Events
//! queued and not yet read are lost: they cannot be read without taking them from the program.

use crate::{KindError, Source};
use serde::{Deserialize, Serialize};
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;

/// Watch numbers are handed out in increasing order from 1: reaching number N at restore
/// takes N add/remove pairs at worst. Beyond this the checkpoint is refused.
const MAX_WD: i32 = 1 << 20;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Record {
    /// In increasing watch number.
    pub watches: Vec<Watch>,
    /// Bytes of events queued and unread at the checkpoint (lost at restore).
    pub unread: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Watch {
    pub wd: i32,
    pub path: String,
    /// Events and flags (`IN_ONESHOT`, `IN_EXCL_UNLINK`) as the kernel keeps them.
    pub mask: u32,
    /// The watch is on a symbolic link itself (`IN_DONT_FOLLOW`).
    pub link: bool,
}

pub fn capture(src: &Source) -> Result<Record, KindError> {
    let mut watches = Vec::new();
    for line in src.fdinfo.lines().filter(|l| l.starts_with("inotify ")) {
        let bad = |w: &str| KindError::Read {
            what: format!("the {w} of a watch of inotify fd {} (`{line}`)", src.fd),
            source: std::io::Error::from(std::io::ErrorKind::InvalidData),
        };
        let field = |k: &str| {
            line.split_whitespace()
                .find_map(|f| f.strip_prefix(k).and_then(|r| r.strip_prefix(':')))
        };
        let hex = |k: &str| field(k).and_then(|v| u64::from_str_radix(v, 16).ok());
        let wd = hex("wd")
            .and_then(|v| i32::try_from(v).ok())
            .ok_or_else(|| bad("number"))?;
        let mask = hex("mask")
            .and_then(|v| u32::try_from(v).ok())
            .ok_or_else(|| bad("mask"))?;
        let sdev = hex("sdev").ok_or_else(|| bad("device"))?;
        let ino = hex("ino").ok_or_else(|| bad("inode"))?;
        let kind = hex("fhandle-type").and_then(|v| i32::try_from(v).ok());
        let bytes = field("f_handle").and_then(unhex);
        let (Some(kind), Some(bytes)) = (kind, bytes) else {
            return Err(bad("file handle"));
        };
        if wd > MAX_WD {
            return Err(KindError::Refused(format!(
                "inotify watch number {wd} is too high to be given again at restore (at most {MAX_WD})"
            )));
        }
        let (path, link) = path_of(sdev, kind, &bytes).map_err(|why| {
            KindError::Refused(format!(
                "the file of inotify watch {wd} (inode {ino}) has no path ({why}); remove the watch or close the fd"
            ))
        })?;
        watches.push(Watch { wd, path, mask, link });
    }
    watches.sort_by_key(|w| w.wd);
    let unread = match src.file() {
        Ok(fd) => queued(fd),
        Err(_) => 0,
    };
    Ok(Record { watches, unread })
}

/// Bytes of events waiting to be read.
fn queued(fd: RawFd) -> u32 {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int to a local.
    if unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) } < 0 {
        return 0;
    }
    n.max(0) as u32
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The path of the file a handle names, checked to lead to that very file, and whether it is a
/// symbolic link.
fn path_of(sdev: u64, kind: i32, bytes: &[u8]) -> Result<(String, bool), String> {
    // fdinfo prints the kernel's device number: major in the high 12 bits, minor in the low 20.
    let (major, minor) = ((sdev >> 20) as u32, (sdev & 0xf_ffff) as u32);
    let mount = mount_of(major, minor).ok_or_else(|| format!("no mount of device {major}:{minor}"))?;
    let file = open_handle(&mount, kind, bytes)?;
    let link = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())).map_err(|e| e.to_string())?;
    let path = link.to_string_lossy().into_owned();
    if path.ends_with(" (deleted)") || !path.starts_with('/') {
        return Err(format!("it was deleted ({path})"));
    }
    // SAFETY: stat is plain data; fstat fills it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat of our O_PATH fd into a local.
    if unsafe { libc::fstat(file.as_raw_fd(), &mut st) } < 0 {
        return Err(std::io::Error::last_os_error().to_string());
    }
    let is_link = st.st_mode & libc::S_IFMT == libc::S_IFLNK;
    // A handle decoded away from the dentry cache can read as a path that is not the file's.
    let now = std::fs::symlink_metadata(&path).map_err(|e| format!("{path}: {e}"))?;
    if (now.dev(), now.ino()) != (st.st_dev, st.st_ino) {
        return Err(format!("{path} is another file"));
    }
    Ok((path, is_link))
}

/// A mount point of the file system on device `major:minor`, preferring one of its root (from
/// which every file of it can be reached).
fn mount_of(major: u32, minor: u32) -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = format!("{major}:{minor}");
    let mut best: Option<String> = None;
    for line in text.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        if f.len() < 5 || f[2] != want {
            continue;
        }
        let point = unescape(f[4]);
        if f[3] == "/" {
            return Some(point);
        }
        best.get_or_insert(point);
    }
    best
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn open_handle(mount: &str, kind: i32, bytes: &[u8]) -> Result<OwnedFd, String> {
    let dir = std::fs::File::open(mount).map_err(|e| format!("{mount}: {e}"))?;
    // struct file_handle: u32 handle_bytes, i32 handle_type, then the bytes.
    let mut buf = Vec::with_capacity(8 + bytes.len());
    buf.extend_from_slice(&(bytes.len() as u32).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(bytes);
    // SAFETY: the buffer holds a complete file_handle; open_by_handle_at returns a new fd or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            dir.as_raw_fd(),
            buf.as_ptr(),
            libc::O_PATH | libc::O_CLOEXEC | libc::O_NOFOLLOW,
        )
    } as RawFd;
    if fd < 0 {
        return Err(format!("opening its handle: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: the kernel just gave us this fd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub fn recreate(rec: &Record) -> Result<OwnedFd, KindError> {
    // Non-blocking so the events of the placing can be drained; the restorer sets the
    // program's own flags afterwards.
    // SAFETY: inotify_init1 returns a new fd or -1.
    let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
    if fd < 0 {
        return Err(KindError::recreate("an inotify instance")(
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: the fd was just created and is ours.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut placed = Vec::with_capacity(rec.watches.len());
    for w in &rec.watches {
        place(fd.as_raw_fd(), w, &placed)?;
        placed.push(w.wd);
    }
    drain(fd.as_raw_fd());
    Ok(fd)
}

/// Adds `w` under its own number. The kernel gives each new watch the lowest free number above
/// the last one it gave (cyclically, from 1): adding a watch and removing it again moves that
/// point on by one, so a watch added in increasing order of number, and removed while it comes
/// back with a lower number, ends up with its own.
fn place(fd: RawFd, w: &Watch, placed: &[i32]) -> Result<(), KindError> {
    let path = CString::new(w.path.as_str())
        .map_err(|_| KindError::Refused(format!("the watched path {} holds a NUL byte", w.path)))?;
    let mut mask = w.mask;
    if w.link {
        mask |= libc::IN_DONT_FOLLOW;
    }
    loop {
        // SAFETY: adding a watch on a NUL-terminated path to our instance.
        let got = unsafe { libc::inotify_add_watch(fd, path.as_ptr(), mask) };
        if got < 0 {
            let e = std::io::Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(libc::ENOENT) | Some(libc::ENOTDIR) => KindError::Refused(format!(
                    "the path {} watched by inotify (watch {}) no longer exists; create it again to restore",
                    w.path, w.wd
                )),
                _ => KindError::recreate(format!("inotify watch {} on {}", w.wd, w.path))(e),
            });
        }
        if got == w.wd {
            return Ok(());
        }
        if got > w.wd || placed.contains(&got) {
            // Another watch holds the number, or the path now names a file already watched.
            return Err(KindError::Refused(format!(
                "inotify watch {} on {} came back as number {got}; the watched files changed since the checkpoint",
                w.wd, w.path
            )));
        }
        // SAFETY: removing the watch we just added.
        if unsafe { libc::inotify_rm_watch(fd, got) } < 0 {
            return Err(KindError::recreate(format!("inotify watch {} on {}", w.wd, w.path))(
                std::io::Error::last_os_error(),
            ));
        }
    }
}

/// Reads away what the placing queued (an IN_IGNORED per removed watch).
fn drain(fd: RawFd) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: reading into our buffer from our non-blocking instance.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            break;
        }
    }
}

pub fn describe(rec: &Record) -> String {
    let watches: Vec<String> = rec
        .watches
        .iter()
        .map(|w| {
            let link = if w.link { " (the link itself)" } else { "" };
            format!("{} {}{link} mask {:#x}", w.wd, w.path, w.mask)
        })
        .collect();
    let plural = if rec.watches.len() == 1 { "" } else { "es" };
    let mut s = format!("inotify ({} watch{plural}: {}", rec.watches.len(), watches.join(", "));
    if rec.unread != 0 {
        s.push_str(&format!("; {} bytes of unread events dropped", rec.unread));
    }
    s.push(')');
    s
}
