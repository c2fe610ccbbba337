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

pub fn dump_fds(pid: i32, control_fd: i32, uffd_fd: i32) -> Result<Vec<FdImage>, DumpError> {
    let dir = format!("/proc/{pid}/fd");
    let fds = procfs::list_numeric(&dir).map_err(|e| DumpError::Proc(e, pid))?;
    let mut out: Vec<FdImage> = Vec::new();
    let mut ids: Vec<(i32, u64, u64)> = Vec::new();
    for fd in fds {
        let link = format!("{dir}/{fd}");
        let target = procfs::readlink(&link).map_err(|e| DumpError::Proc(e, pid))?;
        let info = procfs::fdinfo(pid, fd).map_err(|e| DumpError::Proc(e, pid))?;
        let cloexec = info.flags & libc::O_CLOEXEC != 0;
        let flags = info.flags & !libc::O_CLOEXEC;
        let unsupported = |kind: String| DumpError::UnsupportedFd { pid, fd, kind };
        let meta = std::fs::metadata(&link).map_err(|source| DumpError::Io {
            pid,
            what: format!("fd {fd}"),
            source,
        })?;
        let ft = meta.file_type();
        let kind = if fd == control_fd {
            FdKind::Control
        } else if fd == uffd_fd {
            FdKind::Uffd
        } else if ft.is_file() {
            if target.ends_with(" (deleted)") {
                return Err(unsupported(format!("a deleted file ({target})")));
            }
            // The policy of a file written to is decided over all its holders (crate::files).
            FdKind::File {
                path: target.clone(),
                pos: info.pos,
                size: meta.size(),
                writable: flags & libc::O_ACCMODE != libc::O_RDONLY,
                dev: meta.dev(),
                ino: meta.ino(),
                policy: None,
            }
        } else if ft.is_dir() {
            FdKind::Dir { path: target.clone() }
        } else if ft.is_char_device() && is_tty(meta.rdev()) {
            if fd <= 2 {
                FdKind::Stdio { what: target.clone() }
            } else {
                FdKind::Tty { path: target.clone() }
            }
        } else if ft.is_char_device() {
            FdKind::CharDev {
                path: target.clone(),
                rdev: meta.rdev(),
            }
        } else if (ft.is_fifo() || ft.is_socket()) && fd <= 2 {
            FdKind::Stdio { what: target.clone() }
        } else if ft.is_fifo() && target.starts_with("pipe:") {
            let write = flags & libc::O_ACCMODE == libc::O_WRONLY;
            let buffered = if write {
                Vec::new()
            } else {
                super::sockets::peek_pipe(pid, fd).map_err(|source| DumpError::Io {
                    pid,
                    what: format!("pipe fd {fd}"),
                    source,
                })?
            };
            FdKind::Pipe {
                ino: meta.ino(),
                write,
                buffered,
            }
        } else if ft.is_fifo() {
            return Err(unsupported(format!("a named FIFO ({target})")));
        } else if ft.is_socket() {
            super::sockets::dump_socket(pid, fd, &target)?
        } else if let Some(inner) = target.strip_prefix("anon_inode:") {
            let name = inner.trim_start_matches('[').trim_end_matches(']');
            return Err(unsupported(format!("an {name} ({target})")));
        } else {
            return Err(unsupported(format!("an unsupported kind of file ({target})")));
        };
        // Two fds sharing one open file description must share it again after restore.
        let key = (meta.dev(), meta.ino());
        let dup_of = match kind {
            FdKind::Control | FdKind::Uffd | FdKind::Stdio { .. } => None,
            ref k if k.is_handed() => None,
            _ => ids
                .iter()
                .find(|(other, d, i)| (*d, *i) == key && kcmp_same_file(pid, *other, fd))
                .map(|(other, _, _)| *other),
        };
        ids.push((fd, key.0, key.1));
        out.push(FdImage {
            fd,
            flags,
            cloexec,
            dup_of,
            kind,
        });
    }
    Ok(out)
}
