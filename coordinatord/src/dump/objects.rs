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

/// Gives the regular files and directories whose open file description several of the parked
/// processes hold (a shell's redirection inherited by its children, a log opened before fork)
/// one number per description (see `FdImage::shared`). Runs while every process is parked.
pub fn link_files(images: &mut [&mut ProcessImage]) {
    let key = |k: &FdKind| match k {
        FdKind::File { dev, ino, .. } => Some(format!("{dev}:{ino}")),
        FdKind::Dir { path } => Some(path.clone()),
        _ => None,
    };
    // (pid, fd, key, index of the image, index of the fd) of each description met so far.
    let mut seen: Vec<(i32, i32, String, usize, usize)> = Vec::new();
    let mut next = 1u64;
    for i in 0..images.len() {
        let pid = images[i].pid;
        for n in 0..images[i].fds.len() {
            let f = &images[i].fds[n];
            let Some(k) = key(&f.kind).filter(|_| f.dup_of.is_none()) else {
                continue;
            };
            let fd = f.fd;
            let same = seen
                .iter()
                .find(|(p, g, gk, _, _)| *p != pid && *gk == k && kcmp_file(pid, fd, *p, *g))
                .map(|&(_, _, _, pi, fi)| (pi, fi));
            match same {
                Some((pi, fi)) => {
                    if images[pi].fds[fi].shared == 0 {
                        images[pi].fds[fi].shared = next;
                        next += 1;
                    }
                    images[i].fds[n].shared = images[pi].fds[fi].shared;
                }
                None => seen.push((pid, fd, k, i, n)),
            }
        }
    }
}

/// Pidfds and `/proc/PID/…` files of processes outside the checkpoint, refused: after a
/// restore their pid could name another process, and ckpt cannot tell (those of a process of
/// the checkpoint, or of a thread or zombie of one, are opened again on the same pid).
pub fn outside_processes(images: &[&mut ProcessImage]) -> Vec<String> {
    let within = |pid: i32| {
        images.iter().any(|i| {
            i.pid == pid || i.threads.iter().any(|t| t.tid == pid) || i.tree.zombies.iter().any(|z| z.pid == pid)
        })
    };
    let mut out = Vec::new();
    for img in images {
        for f in &img.fds {
            let FdKind::Object { obj, .. } = &f.kind else { continue };
            if let Some(pid) = ckpt_kinds::names_process(obj).filter(|p| !within(*p)) {
                out.push(format!(
                    "process {}: fd {} ({}) names process {pid}, which is not in the checkpoint \
                     (after a restore that pid could name another process); close it or \
                     checkpoint both together",
                    img.pid,
                    f.fd,
                    obj.describe()
                ));
            }
        }
    }
    out
}
