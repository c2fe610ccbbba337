//! Making the memory several restored processes share (see `dump::shared_memory`): once per
//! piece, in a memfd filled with the pages every holder stored, handed to each holder under
//! [`SharedMem::handed_as`]; each maps it where it had it. Filled before any of them runs, so
//! no holder's restore writes over what another already changed.

use super::restore::Planned;
use anyhow::Context;
use ckpt_format::{FdKind, PageStoreReader, SharedMem};
use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;

/// The shared memory of `planned`, by (pid, handed number); `objects` are the fds already
/// re-created, by (pid, fd), where a deleted file held through an fd is found again.
pub fn make(
    planned: &[Planned],
    objects: &HashMap<(i32, i32), OwnedFd>,
) -> anyhow::Result<HashMap<(i32, i32), OwnedFd>> {
    let mut made: HashMap<u64, std::fs::File> = HashMap::new();
    // Memory whose content came whole with the fd's record (a memfd, whose seals may forbid
    // writing it now): its holders' pages are not written again.
    let mut complete: std::collections::HashSet<u64> = std::collections::HashSet::new();
    let mut out = HashMap::new();
    for p in planned {
        let img = p.image();
        let mut readers: Vec<Option<PageStoreReader>> = Vec::new();
        for m in &img.mappings {
            let Some(SharedMem { ident, pgoff, held }) = m.shared_with else {
                continue;
            };
            let file = match made.entry(ident) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) if held.is_some() => {
                    let (file, whole) = held_file(planned, objects, held)
                        .with_context(|| format!("process {}: the deleted file mapped at {:#x}", img.pid, m.start))?;
                    if whole {
                        complete.insert(ident);
                    }
                    e.insert(file)
                }
                std::collections::hash_map::Entry::Vacant(e) => {
                    // SAFETY: memfd_create with a literal name.
                    let fd = unsafe { libc::memfd_create(c"ckpt-shared".as_ptr(), libc::MFD_CLOEXEC) };
                    if fd < 0 {
                        return Err(std::io::Error::last_os_error()).context("memfd_create for shared memory");
                    }
                    // SAFETY: the memfd was just created and is ours.
                    e.insert(unsafe { std::fs::File::from_raw_fd(fd) })
                }
            };
            // A held file keeps its size (pages mapped past its end were never data).
            let end = pgoff + m.len();
            let size = file.metadata()?.len();
            if size < end && held.is_none() {
                file.set_len(end)?;
            }
            let size = file.metadata()?.len();
            // Every holder stored the pages it saw at the same instant: the same bytes.
            let mut buf = Vec::new();
            let pages = if complete.contains(&ident) {
                &[][..]
            } else {
                &m.pages[..]
            };
            for r in pages {
                let i = r.store as usize;
                if readers.len() <= i {
                    readers.resize_with(i + 1, || None);
                }
                if readers[i].is_none() {
                    let path = p
                        .pages()
                        .get(i)
                        .with_context(|| format!("process {}: no page store {i}", img.pid))?;
                    let len = if i == 0 { img.pages_len } else { 0 };
                    readers[i] = Some(PageStoreReader::open(path, len)?);
                }
                let Some(reader) = readers[i].as_ref() else { continue };
                reader.read_run(r, &mut buf)?;
                // Runs are clipped to the mapping (an ancestor's may span memory since unmapped).
                let (lo, hi) = (
                    r.addr.max(m.start),
                    (r.addr + r.len).min(m.end).min(m.start + size.saturating_sub(pgoff)),
                );
                if lo < hi {
                    let from = (lo - r.addr) as usize;
                    file.write_all_at(&buf[from..from + (hi - lo) as usize], pgoff + (lo - m.start))?;
                }
            }
            let handed = SharedMem { ident, pgoff, held }.handed_as();
            out.insert((img.pid, handed), OwnedFd::from(file.try_clone()?));
        }
    }
    Ok(out)
}

/// The deleted file or memfd `held` (device, inode) as re-created for an fd of one of
/// `planned`, opened again read-write (the fd's own description may be read-only; a sealed
/// memfd read-only), and whether its content is already whole (a memfd's).
fn held_file(
    planned: &[Planned],
    objects: &HashMap<(i32, i32), OwnedFd>,
    held: Option<(u64, u64)>,
) -> anyhow::Result<(std::fs::File, bool)> {
    let (fd, memfd) = planned
        .iter()
        .flat_map(|p| p.image().fds.iter().map(move |f| (p.image().pid, f)))
        .find_map(|(pid, f)| {
            let fd = || objects.get(&(pid, f.dup_of.unwrap_or(f.fd)));
            match &f.kind {
                FdKind::Object {
                    obj: ckpt_kinds::Object::Deleted(r),
                    ..
                } if Some((r.dev, r.ino)) == held => fd().map(|fd| (fd, false)),
                FdKind::Object {
                    obj: ckpt_kinds::Object::Memfd(r),
                    ..
                } if Some((r.dev, r.ino)) == held => fd().map(|fd| (fd, true)),
                _ => None,
            }
        })
        .context("no fd of the checkpoint holds it any more")?;
    let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .or_else(|e| match e.raw_os_error() {
            // Sealed against writing: mapped read-only by its holders.
            Some(libc::EPERM) if memfd => std::fs::File::open(&path),
            _ => Err(e),
        })
        .context("opening it again")?;
    Ok((file, memfd))
}
