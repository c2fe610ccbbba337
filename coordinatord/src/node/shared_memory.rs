//! Making the memory several restored processes share (see `dump::shared_memory`): once per
//! piece, in a memfd filled with the pages every holder stored, handed to each holder under
//! [`SharedMem::handed_as`]; each maps it where it had it. Filled before any of them runs, so
//! no holder's restore writes over what another already changed.

use super::restore::Planned;
use anyhow::Context;
use ckpt_format::{PageStoreReader, SharedMem};
use std::collections::HashMap;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;

/// The shared memory of `planned`, by (pid, handed number).
pub fn make(planned: &[Planned]) -> anyhow::Result<HashMap<(i32, i32), OwnedFd>> {
    let mut made: HashMap<u64, std::fs::File> = HashMap::new();
    let mut out = HashMap::new();
    for p in planned {
        let img = p.image();
        let mut readers: Vec<Option<PageStoreReader>> = Vec::new();
        for m in &img.mappings {
            let Some(SharedMem { ident, pgoff }) = m.shared_with else {
                continue;
            };
            let file = match made.entry(ident) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
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
            let end = pgoff + m.len();
            if file.metadata()?.len() < end {
                file.set_len(end)?;
            }
            // Every holder stored the pages it saw at the same instant: the same bytes.
            let mut buf = Vec::new();
            for r in &m.pages {
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
                let (lo, hi) = (r.addr.max(m.start), (r.addr + r.len).min(m.end));
                if lo < hi {
                    let from = (lo - r.addr) as usize;
                    file.write_all_at(&buf[from..from + (hi - lo) as usize], pgoff + (lo - m.start))?;
                }
            }
            let handed = SharedMem { ident, pgoff }.handed_as();
            out.insert((img.pid, handed), OwnedFd::from(file.try_clone()?));
        }
    }
    Ok(out)
}
