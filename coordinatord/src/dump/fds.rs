//! File descriptors: what each one is and how to get it back.

use super::DumpError;
use ckpt_format::{FdImage, FdKind};
use ckpt_sys::procfs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

/// Major numbers of terminals: the tty/console majors and the pty slaves.
fn is_tty(rdev: u64) -> bool {
    let major = libc::major(rdev);
    matches!(major, 4 | 5 | 136..=143)
}

fn kcmp_same_file(pid: i32, a: i32, b: i32) -> bool {
    // SAFETY: kcmp only compares kernel objects; KCMP_FILE = 0.
    unsafe { libc::syscall(libc::SYS_kcmp, pid, pid, 0, a, b) == 0 }
}

/// Every fd of a parked process. Fds of kinds ckpt cannot checkpoint are all named in one
/// error, so that the user learns of every one at once.
pub fn dump_fds(pid: i32, control_fd: i32, uffd_fd: i32) -> Result<Vec<FdImage>, DumpError> {
    let dir = format!("/proc/{pid}/fd");
    let fds = procfs::list_numeric(&dir).map_err(|e| DumpError::Proc(e, pid))?;
    let mut out: Vec<FdImage> = Vec::new();
    let mut ids: Vec<(i32, u64, u64)> = Vec::new();
    let mut refused: Vec<(i32, String)> = Vec::new();
    for fd in fds {
        let link = format!("{dir}/{fd}");
        let target = procfs::readlink(&link).map_err(|e| DumpError::Proc(e, pid))?;
        let text = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).map_err(|source| DumpError::Io {
            pid,
            what: format!("fdinfo of fd {fd}"),
            source,
        })?;
        let info = procfs::fdinfo(pid, fd).map_err(|e| DumpError::Proc(e, pid))?;
        let cloexec = info.flags & libc::O_CLOEXEC != 0;
        let flags = info.flags & !libc::O_CLOEXEC;
        let meta = std::fs::metadata(&link).map_err(|source| DumpError::Io {
            pid,
            what: format!("fd {fd}"),
            source,
        })?;
        let key = (meta.dev(), meta.ino());
        // A duplicate of an object already read (dup, or inherited twice) is the same object:
        // read once (a queue is taken and put back, a deleted file's content stored, once).
        let same_object = out
            .iter()
            .filter(|f| matches!(f.kind, FdKind::Object { .. }))
            .filter(|f| ids.iter().any(|(o, d, i)| *o == f.fd && (*d, *i) == key))
            .find(|f| kcmp_same_file(pid, f.fd, fd));
        if let Some(first) = same_object {
            let (first_fd, kind) = (first.fd, first.kind.clone());
            ids.push((fd, key.0, key.1));
            out.push(FdImage {
                fd,
                flags,
                cloexec,
                dup_of: Some(first_fd),
                kind,
                locks: Vec::new(),
                shared: 0,
            });
            continue;
        }
        let kind = match kind_of(pid, fd, &target, &text, flags, info.pos, &meta, control_fd, uffd_fd) {
            Ok(k) => k,
            Err(Refusal::Unsupported(what)) => {
                refused.push((fd, what));
                continue;
            }
            Err(Refusal::Failed(e)) => return Err(e),
        };
        // Two fds sharing one open file description must share it again after restore.
        let dup_of = match kind {
            FdKind::Control | FdKind::Uffd | FdKind::Stdio { .. } => None,
            ref k if k.is_handed() => None,
            _ => ids
                .iter()
                .find(|(other, d, i)| (*d, *i) == key && kcmp_same_file(pid, *other, fd))
                .map(|(other, _, _)| *other),
        };
        // Locks belong to the description: read on its first fd only.
        let locks = match dup_of {
            Some(_) => Vec::new(),
            None => match locks_of(&kind, &text) {
                Ok(l) => l,
                Err(why) => {
                    refused.push((fd, why));
                    continue;
                }
            },
        };
        ids.push((fd, key.0, key.1));
        out.push(FdImage {
            fd,
            flags,
            cloexec,
            dup_of,
            kind,
            locks,
            shared: 0,
        });
    }
    if !refused.is_empty() {
        return Err(DumpError::UnsupportedFds { pid, fds: refused });
    }
    Ok(out)
}

/// The locks and leases held through an fd (its fdinfo `text`), or why they cannot be taken
/// again: only those on a regular file or directory, which the restorer reopens, can.
fn locks_of(kind: &FdKind, text: &str) -> Result<Vec<ckpt_kinds::lock::Lock>, String> {
    let locks = ckpt_kinds::lock::parse(text).map_err(|why| format!("{} with {why}", kind.describe()))?;
    match kind {
        _ if locks.is_empty() => Ok(locks),
        FdKind::File { .. } | FdKind::Dir { .. } => Ok(locks),
        k => Err(format!(
            "{} with a {} (ckpt takes back locks on regular files and directories only)",
            k.describe(),
            locks[0].describe()
        )),
    }
}

enum Refusal {
    /// A kind ckpt does not checkpoint: gathered and named with the others.
    Unsupported(String),
    Failed(DumpError),
}

impl From<DumpError> for Refusal {
    fn from(e: DumpError) -> Self {
        match e {
            DumpError::UnsupportedFd { kind, .. } => Refusal::Unsupported(kind),
            e => Refusal::Failed(e),
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn kind_of(
    pid: i32,
    fd: i32,
    target: &str,
    text: &str,
    flags: i32,
    pos: u64,
    meta: &std::fs::Metadata,
    control_fd: i32,
    uffd_fd: i32,
) -> Result<FdKind, Refusal> {
    let unsupported = |kind: String| Refusal::Unsupported(kind);
    let ft = meta.file_type();
    if fd <= 2 && ft.is_socket() {
        if let Some(obj) = stdio_unix(pid, fd, target, text, flags, meta) {
            return Ok(obj);
        }
    }
    if fd != control_fd && fd != uffd_fd && !(fd <= 2 && (ft.is_fifo() || ft.is_socket() || is_plain_tty(meta))) {
        let src = ckpt_kinds::Source::new(pid, fd, target, text, flags, meta);
        match ckpt_kinds::capture(&src) {
            Some(Ok(obj)) => {
                return Ok(FdKind::Object {
                    ident: 0,
                    owner: true,
                    obj,
                    stdio: None,
                })
            }
            Some(Err(ckpt_kinds::KindError::Unsupported(what))) => return Err(unsupported(what)),
            Some(Err(e)) => return Err(Refusal::Failed(DumpError::Kind { pid, fd, err: e })),
            None => {}
        }
    }
    let kind = if fd == control_fd {
        FdKind::Control
    } else if fd == uffd_fd {
        FdKind::Uffd
    } else if ft.is_file() {
        // The policy of a file written to is decided over all its holders (crate::files).
        FdKind::File {
            path: target.to_string(),
            pos,
            size: meta.size(),
            writable: flags & libc::O_ACCMODE != libc::O_RDONLY,
            dev: meta.dev(),
            ino: meta.ino(),
            policy: None,
        }
    } else if ft.is_dir() {
        FdKind::Dir {
            path: target.to_string(),
        }
    } else if ft.is_char_device() && is_tty(meta.rdev()) {
        if fd <= 2 {
            FdKind::Stdio {
                what: target.to_string(),
            }
        } else {
            FdKind::Tty {
                path: target.to_string(),
            }
        }
    } else if ft.is_char_device() {
        FdKind::CharDev {
            path: target.to_string(),
            rdev: meta.rdev(),
        }
    } else if ft.is_fifo() && target.starts_with("pipe:") {
        let write = flags & libc::O_ACCMODE == libc::O_WRONLY;
        let (capacity, buffered, packets) =
            super::sockets::pipe_state(pid, fd, !write).map_err(|source| DumpError::Io {
                pid,
                what: format!("pipe fd {fd}"),
                source,
            })?;
        FdKind::Pipe {
            ino: meta.ino(),
            write,
            buffered,
            packets,
            capacity,
            // Whether it is reconnected or replaced is decided at restore, with every image of
            // the host at hand.
            stdio: (fd <= 2).then_some(fd as u8),
        }
    } else if (ft.is_fifo() || ft.is_socket()) && fd <= 2 {
        FdKind::Stdio {
            what: target.to_string(),
        }
    } else if ft.is_socket() {
        super::sockets::dump_socket(pid, fd, target)?
    } else {
        return Err(unsupported(format!("an unsupported kind of file ({target})")));
    };
    Ok(kind)
}

/// A Unix socket on stdio, read like any Unix socket: at restore it is connected to its peer
/// again when the peer is in the checkpoint, else it is the restoring `ckptctl`'s stdio (which
/// is decided then, with every image of the host at hand). One that cannot be read (a kind of
/// state Unix sockets refuse) stays plain stdio, as every stdio socket was before.
fn stdio_unix(pid: i32, fd: i32, target: &str, text: &str, flags: i32, meta: &std::fs::Metadata) -> Option<FdKind> {
    let src = ckpt_kinds::Source::new(pid, fd, target, text, flags, meta);
    if !ckpt_kinds::unix::handles(&src) {
        return None;
    }
    match ckpt_kinds::unix::capture(&src) {
        Ok(r) => Some(FdKind::Object {
            ident: 0,
            owner: true,
            obj: ckpt_kinds::Object::Unix(r),
            stdio: Some(fd as u8),
        }),
        Err(e) => {
            tracing::info!(pid, fd, error = %e, "a stdio Unix socket kept as plain stdio");
            None
        }
    }
}

/// A terminal on stdio that stays plain stdio: not a pty, whose slaves are read as objects
/// (those whose master is outside become plain stdio again, see `super::pty`).
fn is_plain_tty(meta: &std::fs::Metadata) -> bool {
    is_tty_meta(meta) && !ckpt_kinds::pty::claims_meta(meta)
}

fn is_tty_meta(meta: &std::fs::Metadata) -> bool {
    meta.file_type().is_char_device() && is_tty(meta.rdev())
}
