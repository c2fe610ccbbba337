//! Memory several processes share. A mapping whose content exists nowhere but in memory
//! (shared anonymous memory, a memfd, a deleted file) is saved with each process;
//! when other processes of the checkpoint map the same memory (inherited across fork, like
//! nginx's master and workers), the mappings get one identity here, so that restore makes the
//! memory once and each holder maps it again, shared as it was. A deleted file that is also
//! held through an fd (Python's multiprocessing heap) is linked the same way, even with one
//! holder: restore maps the file re-created for the fd, so both stay one file. So is a memfd
//! held through an fd.
//!
//! SysV segments are not among them: they are the host's objects (see `dump::sysv`).

use ckpt_format::{FdKind, MappingKind, ProcessImage, SharedMem};
use ckpt_sys::procfs::{self, MapEntry};
use std::collections::{HashMap, HashSet};

/// Whether `e` is memory saved with the process (see `memory::classify`). A `/dev/shm` file
/// that still has its name is not: it is mapped from the file again (its content is the
/// file's, put back by its policy), like any shared file mapping.
fn saved_shared(e: &MapEntry) -> bool {
    let p = e.path.as_str();
    e.shared
        && !crate::dump::sysv::is_attachment(e)
        && (p.ends_with(" (deleted)") || p.starts_with("/dev/zero") || p.starts_with("/memfd:"))
}

/// The mappings of one piece of memory: (image index, mapping start, offset in the memory).
type Holders = Vec<(usize, u64, u64)>;

/// Gives the mappings of memory shared by several of the parked processes their identity;
/// returns every reason the processes cannot be checkpointed for their shared memory.
pub fn link(images: &mut [&mut ProcessImage]) -> Vec<String> {
    // Deleted files held through an fd: their mappings are those files again at restore.
    let held: HashSet<(u64, u64)> = images
        .iter()
        .flat_map(|img| img.fds.iter())
        .filter_map(|f| match &f.kind {
            FdKind::Object {
                obj: ckpt_kinds::Object::Deleted(r),
                ..
            } => Some((r.dev, r.ino)),
            FdKind::Object {
                obj: ckpt_kinds::Object::Memfd(r),
                ..
            } => Some((r.dev, r.ino)),
            _ => None,
        })
        .collect();
    // By (device, inode) of the memory.
    let mut holders: HashMap<(u32, u32, u64), Holders> = HashMap::new();
    let mut refused = Vec::new();
    for (i, img) in images.iter().enumerate() {
        let pid = img.pid;
        let Ok(maps) = procfs::maps(pid) else { continue };
        for e in maps.iter().filter(|e| saved_shared(e)) {
            holders
                .entry((e.dev_major, e.dev_minor, e.inode))
                .or_default()
                .push((i, e.start, e.offset));
        }
    }
    let file_of =
        |(major, minor, ino): (u32, u32, u64)| Some((libc::makedev(major, minor), ino)).filter(|k| held.contains(k));
    let mut shared: Vec<(Holders, Option<(u64, u64)>)> = holders
        .into_iter()
        .filter(|(k, h)| h.iter().any(|(i, _, _)| *i != h[0].0) || file_of(*k).is_some())
        .map(|(k, h)| (h, file_of(k)))
        .collect();
    shared.sort();
    for (n, (h, held)) in shared.into_iter().enumerate() {
        for (i, start, pgoff) in h {
            let m = images[i]
                .mappings
                .iter_mut()
                .find(|m| m.start == start && m.kind == MappingKind::Saved { shmem: true });
            match m {
                Some(m) => {
                    m.shared_with = Some(SharedMem {
                        ident: n as u64 + 1,
                        pgoff,
                        held,
                    })
                }
                None => refused.push(format!(
                    "process {}: shared memory at {start:#x} changed while it was parked; try again",
                    images[i].pid
                )),
            }
        }
    }
    refused
}
