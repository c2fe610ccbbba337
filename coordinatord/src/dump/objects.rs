//! Objects held by several processes of a host (an eventfd or socketpair inherited across
//! fork): each distinct object gets one identity, so that restore makes it once and hands it to
//! every holder, and its first holder is the one that sets up its shared state.

use ckpt_format::{FdKind, ProcessImage};

fn kcmp_file(pid1: i32, fd1: i32, pid2: i32, fd2: i32) -> bool {
    // SAFETY: kcmp only compares kernel objects; KCMP_FILE = 0.
    unsafe { libc::syscall(libc::SYS_kcmp, pid1, pid2, 0, fd1, fd2) == 0 }
}

/// Gives every object fd of the parked processes its identity (numbered from 1 in the order
/// met) and marks its first holder as owner. Runs while every process is still parked.
pub fn link(images: &mut [&mut ProcessImage]) {
    // (pid, fd, ident, kind) of each distinct object met so far.
    let mut seen: Vec<(i32, i32, u64, std::mem::Discriminant<ckpt_kinds::Object>)> = Vec::new();
    for img in images.iter_mut() {
        let pid = img.pid;
        for n in 0..img.fds.len() {
            let (fd, dup_of) = (img.fds[n].fd, img.fds[n].dup_of);
            // The same description as an earlier fd of this process: the same object.
            let earlier = dup_of.and_then(|first| {
                img.fds.iter().find(|g| g.fd == first).and_then(|g| match g.kind {
                    FdKind::Object { ident, .. } => Some(ident),
                    _ => None,
                })
            });
            let FdKind::Object { ident, owner, obj, .. } = &mut img.fds[n].kind else {
                continue;
            };
            if let Some(i) = earlier {
                *ident = i;
                *owner = false;
                continue;
            }
            let kind = std::mem::discriminant(&*obj);
            let same = seen
                .iter()
                .find(|(p, g, _, k)| *k == kind && *p != pid && kcmp_file(pid, fd, *p, *g));
            match same {
                Some((_, _, i, _)) => {
                    *ident = *i;
                    *owner = false;
                }
                None => {
                    let i = seen.len() as u64 + 1;
                    seen.push((pid, fd, i, kind));
                    *ident = i;
                    *owner = true;
                }
            }
        }
    }
}

/// A lock owned by an open file description (flock, OFD, a lease) that several processes of
/// the host hold through that one description (inherited across fork): a regular file is
/// reopened by each restorer, so the description, and with it the lock, cannot be one again.
/// Refused, naming both holders. Runs while every process is still parked.
pub fn shared_locks(images: &[&mut ProcessImage]) -> Vec<String> {
    let mut refused = Vec::new();
    let locked = |img: &ProcessImage| -> Vec<(i32, i32, String)> {
        img.fds
            .iter()
            .filter_map(|f| {
                let l = f.locks.iter().find(|l| l.by_description())?;
                Some((img.pid, f.fd, l.describe()))
            })
            .collect()
    };
    let all: Vec<(i32, i32, String)> = images.iter().flat_map(|img| locked(img)).collect();
    for (i, (pid, fd, what)) in all.iter().enumerate() {
        for img in images.iter().filter(|img| img.pid != *pid) {
            // The other process holds the same description at some fd (its fdinfo shows the
            // lock there too, read as its own).
            if let Some(g) = img.fds.iter().find(|g| kcmp_file(*pid, *fd, img.pid, g.fd)) {
                if all[..i].iter().any(|(p, f, _)| *p == img.pid && *f == g.fd) {
                    continue;
                }
                refused.push(format!(
                    "process {pid}: fd {fd} holds a {what} through an open file description that \
                     process {} shares (fd {}); ckpt reopens a file for each process, so the lock \
                     could not be one again: release it or keep it in one process",
                    img.pid, g.fd
                ));
            }
        }
    }
    refused
}
