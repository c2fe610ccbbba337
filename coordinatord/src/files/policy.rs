//! Which policy each file gets: from how its holders use it, or from an override.
//!
//! `O_APPEND`, or write-only at the file's end → append; read-write, write-only inside the
//! file, or mapped shared writable → snapshot. When holders disagree, snapshot wins over append
//! over keep. An override (`GLOB=POLICY`, the checkpoint's first, then ckptd's) wins over all.

use super::FileKey;
use ckpt_format::{FdKind, FilePolicy, FileRule, MappingKind, ProcessImage, PROT_WRITE};
use std::os::unix::fs::MetadataExt;

/// One holder's use of a file it may write to.
#[derive(Debug, Clone)]
pub struct Use {
    pub key: FileKey,
    pub path: String,
    /// A path to the very inode, valid while the holder is stopped: `/proc/PID/fd/N`.
    pub open: String,
    pub pid: i32,
    pub implied: FilePolicy,
    pub why: String,
    /// Mapped shared writable: its pages change through memory, copied while parked.
    pub mapped: bool,
}

/// A file with its policy, decided over all its holders.
#[derive(Debug, Clone)]
pub struct Decided {
    pub key: FileKey,
    pub path: String,
    pub open: String,
    pub policy: FilePolicy,
    pub why: String,
    pub pids: Vec<i32>,
    pub mapped: bool,
}

/// The policy an fd implies, and why.
fn implied_by_fd(flags: i32, pos: u64, size: u64, pid: i32, fd: i32) -> (FilePolicy, String) {
    let acc = flags & libc::O_ACCMODE;
    if flags & libc::O_APPEND != 0 {
        (FilePolicy::Append, format!("opened O_APPEND (pid {pid} fd {fd})"))
    } else if acc == libc::O_WRONLY && pos >= size {
        (FilePolicy::Append, format!("write-only at its end (pid {pid} fd {fd})"))
    } else if acc == libc::O_WRONLY {
        (
            FilePolicy::Snapshot,
            format!("write-only at offset {pos} of {size} (pid {pid} fd {fd})"),
        )
    } else {
        (FilePolicy::Snapshot, format!("opened read-write (pid {pid} fd {fd})"))
    }
}

/// The uses of a parked process, from its image.
pub fn uses_of_image(img: &ProcessImage) -> Vec<Use> {
    let pid = img.pid;
    let mut out = Vec::new();
    for f in &img.fds {
        if let FdKind::File {
            path,
            pos,
            size,
            writable: true,
            dev,
            ino,
            ..
        } = &f.kind
        {
            let (implied, why) = implied_by_fd(f.flags, *pos, *size, pid, f.fd);
            out.push(Use {
                key: (*dev, *ino),
                path: path.clone(),
                open: format!("/proc/{pid}/fd/{}", f.fd),
                pid,
                implied,
                why,
                mapped: false,
            });
        }
    }
    for m in &img.mappings {
        if let MappingKind::File(id) = &m.kind {
            if m.shared && m.prot & PROT_WRITE != 0 {
                out.push(Use {
                    key: (id.dev, id.ino),
                    path: id.path.clone(),
                    open: format!("/proc/{pid}/map_files/{:x}-{:x}", m.start, m.end),
                    pid,
                    implied: FilePolicy::Snapshot,
                    why: format!("mapped shared writable (pid {pid})"),
                    mapped: true,
                });
            }
        }
    }
    out
}

/// The uses of a running process, read from /proc (before it is parked, to know which files
/// to copy while their writes are held). Errors mean the process is gone: no uses.
pub fn uses_of_running(pid: i32) -> Vec<Use> {
    let mut out = Vec::new();
    let dir = format!("/proc/{pid}/fd");
    for fd in ckpt_sys::procfs::list_numeric(&dir).unwrap_or_default() {
        let link = format!("{dir}/{fd}");
        let Ok(meta) = std::fs::metadata(&link) else { continue };
        let Ok(info) = ckpt_sys::procfs::fdinfo(pid, fd) else {
            continue;
        };
        if !meta.is_file() || info.flags & libc::O_ACCMODE == libc::O_RDONLY {
            continue;
        }
        let Ok(path) = ckpt_sys::procfs::readlink(&link) else {
            continue;
        };
        let (implied, why) = implied_by_fd(info.flags, info.pos, meta.size(), pid, fd);
        out.push(Use {
            key: (meta.dev(), meta.ino()),
            path,
            open: link,
            pid,
            implied,
            why,
            mapped: false,
        });
    }
    for e in ckpt_sys::procfs::maps(pid).unwrap_or_default() {
        if !(e.shared && e.write && e.path.starts_with('/')) || e.path.ends_with(" (deleted)") {
            continue;
        }
        if e.path.starts_with("/dev/") {
            continue;
        }
        let open = format!("/proc/{pid}/map_files/{:x}-{:x}", e.start, e.end);
        let Ok(meta) = std::fs::metadata(&open) else { continue };
        out.push(Use {
            key: (meta.dev(), meta.ino()),
            path: e.path.clone(),
            open,
            pid,
            implied: FilePolicy::Snapshot,
            why: format!("mapped shared writable (pid {pid})"),
            mapped: true,
        });
    }
    out
}

/// One decision per file. `rules` are the overrides, the checkpoint's before ckptd's; `whose`
/// names where each came from for `ckptctl show`.
pub fn decide(uses: &[Use], rules: &[(FileRule, &'static str)]) -> Vec<Decided> {
    let mut out: Vec<Decided> = Vec::new();
    for u in uses {
        match out.iter_mut().find(|d| d.key == u.key) {
            Some(d) => {
                if !d.pids.contains(&u.pid) {
                    d.pids.push(u.pid);
                }
                d.mapped |= u.mapped;
                if u.implied > d.policy {
                    d.policy = u.implied;
                    d.why = u.why.clone();
                    d.open = u.open.clone();
                }
            }
            None => out.push(Decided {
                key: u.key,
                path: u.path.clone(),
                open: u.open.clone(),
                policy: u.implied,
                why: u.why.clone(),
                pids: vec![u.pid],
                mapped: u.mapped,
            }),
        }
    }
    for d in &mut out {
        if let Some((r, whose)) = rules.iter().find(|(r, _)| r.matches(&d.path)) {
            d.policy = r.policy;
            d.why = format!("{whose} --file-policy {r}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(key: u64, implied: FilePolicy, pid: i32) -> Use {
        Use {
            key: (1, key),
            path: format!("/d/f{key}.log"),
            open: String::new(),
            pid,
            implied,
            why: format!("{implied} by {pid}"),
            mapped: false,
        }
    }

    #[test]
    fn strongest_holder_then_overrides() {
        let uses = [
            u(1, FilePolicy::Append, 10),
            u(1, FilePolicy::Snapshot, 11),
            u(2, FilePolicy::Append, 10),
            u(3, FilePolicy::Snapshot, 10),
        ];
        let rules = [(FileRule::parse("/d/f3*=keep").unwrap(), "ckptd")];
        let d = decide(&uses, &rules);
        assert_eq!(d.len(), 3);
        assert_eq!((d[0].policy, d[0].pids.clone()), (FilePolicy::Snapshot, vec![10, 11]));
        assert_eq!(d[0].why, "snapshot by 11");
        assert_eq!(d[1].policy, FilePolicy::Append);
        assert_eq!(d[2].policy, FilePolicy::Keep);
        assert!(d[2].why.contains("ckptd --file-policy /d/f3*=keep"));
    }

    #[test]
    fn fd_flags() {
        let p = |flags, pos, size| implied_by_fd(flags, pos, size, 1, 3).0;
        assert_eq!(p(libc::O_WRONLY | libc::O_APPEND, 0, 10), FilePolicy::Append);
        assert_eq!(p(libc::O_RDWR | libc::O_APPEND, 0, 10), FilePolicy::Append);
        assert_eq!(p(libc::O_WRONLY, 10, 10), FilePolicy::Append);
        assert_eq!(p(libc::O_WRONLY, 3, 10), FilePolicy::Snapshot);
        assert_eq!(p(libc::O_RDWR, 10, 10), FilePolicy::Snapshot);
    }
}
