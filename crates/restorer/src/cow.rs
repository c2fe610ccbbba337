//! Pages a parent and its children share copy-on-write, shared again after a restore.
//!
//! After a fork, parent and child hold the same physical pages until one of them writes one.
//! A restore that builds every process's memory on its own hands each child copies: a
//! pre-fork server (a master and its workers) comes back with its memory multiplied, and a
//! program that looks at its pages (`/proc/self/pagemap`) sees they are no longer shared. So,
//! as CRIU does, a restorer fills its private mappings away from their places (an [`Area`]
//! each) before it forks its children, which are forks of it rather than new
//! programs, and the blob moves them into place at the end. Each child takes over the areas at
//! the addresses it had mappings of its own, writes only the pages whose content differs from
//! the parent's and lets go of the others: a page neither changed since the fork stays one
//! page for both.
//!
//! A grandchild inherits from its parent as restored, after that parent's own changes: a
//! page its parent changed but it did not comes back as the grandparent's copy, shared with
//! neither.

use crate::space::Space;
use anyhow::{bail, Context};
use ckpt_format::{Mapping, MappingKind, ProcessImage, PAGE_SIZE};
use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;

/// A mapping's content, filled at `at` for the blob to move to `start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Area {
    pub at: u64,
    pub start: u64,
    pub end: u64,
}

impl Area {
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    pub fn of(&self, m: &Mapping) -> bool {
        self.start == m.start && self.end == m.end
    }
}

/// Memory a fork would share: private mappings with content of their own, anonymous ones (the
/// heap included) and files' (a library's written data). The main thread's stack grows down,
/// which a moved mapping cannot be made to do.
fn eligible(m: &Mapping) -> bool {
    !m.shared && matches!(m.kind, MappingKind::Anon | MappingKind::Heap | MappingKind::File(_)) && !m.pages.is_empty()
}

/// Takes over the areas the parent filled (`inherited`) where this image has a mapping at the
/// same addresses, and makes their content this image's, writing only the pages that differ;
/// unmaps the others. Those that lie where the image has memory are moved out of its way.
/// `stores`: page store fds by store index.
pub fn adopt(img: &ProcessImage, inherited: Vec<Area>, stores: &[i32]) -> anyhow::Result<Vec<Area>> {
    let mut kept = Vec::new();
    for a in inherited {
        match img.mappings.iter().find(|m| a.of(m) && eligible(m)) {
            Some(m) => {
                differences(m, a.at, stores)?;
                kept.push(a);
            }
            None => unmap(a.at, a.len())?,
        }
    }
    let layout = Space::new(img, &[]);
    let mut space = None;
    for a in kept.iter_mut().filter(|a| layout.overlaps(a.at, a.at + a.len())) {
        if space.is_none() {
            space = Some(Space::new(img, &ckpt_sys::procfs::maps(std::process::id() as i32)?));
        }
        let to = space
            .as_mut()
            .and_then(|s| s.take(a.len()))
            .context("no free address range for the memory shared with the parent")?;
        let flags = libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED;
        // SAFETY: moving an area this restorer owns to a range free in its layout and the image's.
        let p = unsafe { libc::mremap(a.at as *mut libc::c_void, a.len() as usize, a.len() as usize, flags, to) };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error()).context("moving the memory shared with the parent");
        }
        a.at = to;
    }
    Ok(kept)
}

/// Fills, away from their places, the image's mappings a child could share that `areas` has
/// none for yet, and adds them. `files`: the fds of the mapped files.
pub fn fill(
    img: &ProcessImage,
    stores: &[i32],
    files: &crate::fds::MappedFiles,
    areas: &mut Vec<Area>,
) -> anyhow::Result<()> {
    let mut space = Space::new(img, &ckpt_sys::procfs::maps(std::process::id() as i32)?);
    for m in img.mappings.iter().filter(|m| eligible(m)) {
        if areas.iter().any(|a| a.of(m)) {
            continue;
        }
        let (fd, offset, anon) = match &m.kind {
            MappingKind::File(id) => match files.get(&(id.path.clone(), crate::fds::map_writable(m))) {
                Some(&fd) => (fd, id.offset as libc::off_t, 0),
                None => bail!("internal: no fd for {}", id.path),
            },
            _ => (-1, 0, libc::MAP_ANONYMOUS),
        };
        let at = space
            .take(m.len())
            .context("no free address range to fill the memory shared with children")?;
        // SAFETY: a fresh private mapping at a range free in this process and the image.
        let p = unsafe {
            libc::mmap(
                at as *mut libc::c_void,
                m.len() as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | anon | libc::MAP_NORESERVE | libc::MAP_FIXED_NOREPLACE,
                fd,
                offset,
            )
        };
        if p == libc::MAP_FAILED || p as u64 != at {
            return Err(std::io::Error::last_os_error()).context("mapping memory to share with children");
        }
        let area = Area {
            at,
            start: m.start,
            end: m.end,
        };
        areas.push(area);
        for (s, seg) in content(m) {
            let len = (seg.end - s) as usize;
            // SAFETY: [s, seg.end) lies inside the mapping, so inside the area mapped above.
            let dst = unsafe { std::slice::from_raw_parts_mut((at + (s - m.start)) as *mut u8, len) };
            store(stores, seg.store)?
                .read_exact_at(dst, seg.offset)
                .with_context(|| format!("reading the pages of {s:#x}"))?;
        }
    }
    Ok(())
}

/// Where a page's content is: in store `store` at `offset` on, up to address `end`.
#[derive(Debug, Clone, Copy)]
struct Source {
    end: u64,
    store: u32,
    offset: u64,
}

/// The mapping's content as ranges keyed by their start, each with its source: an ancestor's
/// runs come first in the image and newer ones over them, so a later run wins.
fn content(m: &Mapping) -> BTreeMap<u64, Source> {
    let mut map: BTreeMap<u64, Source> = BTreeMap::new();
    for r in &m.pages {
        let (s, e) = (r.addr.max(m.start), (r.addr + r.len).min(m.end));
        if s >= e {
            continue;
        }
        // Ranges are disjoint and sorted: going down from the last one starting below `e`,
        // those overlapping [s, e) come first.
        let over: Vec<u64> = map
            .range(..e)
            .rev()
            .take_while(|(_, g)| g.end > s)
            .map(|(&k, _)| k)
            .collect();
        for k in over {
            let Some(g) = map.remove(&k) else { continue };
            if k < s {
                map.insert(k, Source { end: s, ..g });
            }
            if g.end > e {
                map.insert(
                    e,
                    Source {
                        end: g.end,
                        store: g.store,
                        offset: g.offset + (e - k),
                    },
                );
            }
        }
        map.insert(
            s,
            Source {
                end: e,
                store: r.store,
                offset: r.offset + (s - r.addr),
            },
        );
    }
    map
}

/// Makes the area at `at` hold `m`'s content, writing only the pages that differ (the others
/// stay shared with the parent) and dropping those the image has none of: they read as zero,
/// or as the file, again.
fn differences(m: &Mapping, at: u64, stores: &[i32]) -> anyhow::Result<()> {
    const CHUNK: u64 = 4 << 20;
    let mut buf = vec![0u8; CHUNK as usize];
    let mut gap_from = m.start;
    for (s, seg) in content(m) {
        if s > gap_from {
            drop_pages(at + (gap_from - m.start), s - gap_from)?;
        }
        gap_from = seg.end;
        let file = store(stores, seg.store)?;
        let mut addr = s;
        while addr < seg.end {
            let n = (seg.end - addr).min(CHUNK);
            let buf = &mut buf[..n as usize];
            file.read_exact_at(buf, seg.offset + (addr - s))
                .with_context(|| format!("reading the pages of {addr:#x}"))?;
            // SAFETY: [addr, addr + n) lies inside the mapping, so inside the area the parent
            // mapped read-write.
            let dst = unsafe { std::slice::from_raw_parts_mut((at + (addr - m.start)) as *mut u8, n as usize) };
            for (mine, theirs) in dst.chunks_mut(PAGE_SIZE as usize).zip(buf.chunks(PAGE_SIZE as usize)) {
                if mine != theirs {
                    mine.copy_from_slice(theirs);
                }
            }
            addr += n;
        }
    }
    if m.end > gap_from {
        drop_pages(at + (gap_from - m.start), m.end - gap_from)?;
    }
    Ok(())
}

/// Pages the image has none of read as the mapping's own again (zero, or the file's).
fn drop_pages(addr: u64, len: u64) -> anyhow::Result<()> {
    // SAFETY: discarding private pages of an area this restorer owns.
    if unsafe { libc::madvise(addr as *mut libc::c_void, len as usize, libc::MADV_DONTNEED) } != 0 {
        return Err(std::io::Error::last_os_error()).context("dropping pages the child does not have");
    }
    Ok(())
}

fn unmap(addr: u64, len: u64) -> anyhow::Result<()> {
    // SAFETY: unmapping an area this restorer owns and no longer needs.
    if unsafe { libc::munmap(addr as *mut libc::c_void, len as usize) } != 0 {
        return Err(std::io::Error::last_os_error()).context("unmapping memory the parent filled");
    }
    Ok(())
}

/// The page store with index `i`, borrowed as a file.
fn store(stores: &[i32], i: u32) -> anyhow::Result<std::mem::ManuallyDrop<std::fs::File>> {
    let Some(&fd) = stores.get(i as usize) else {
        bail!("internal: no page store {i}")
    };
    // SAFETY: borrowing a store fd the restorer holds until the blob closes it; never closed here.
    Ok(std::mem::ManuallyDrop::new(unsafe {
        <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ckpt_format::PageRun;

    fn run(addr: u64, len: u64, store: u32, offset: u64) -> PageRun {
        PageRun {
            addr,
            len,
            store,
            offset,
            crc: 0,
            clen: 0,
        }
    }

    #[test]
    fn later_runs_win_and_are_clipped() {
        let m = Mapping {
            start: 0x10000,
            end: 0x20000,
            prot: 3,
            shared: false,
            kind: MappingKind::Anon,
            name: String::new(),
            shared_with: None,
            locked: Default::default(),
            tracked: false,
            may_write: true,
            pages: vec![
                run(0x8000, 0x10000, 1, 0),
                run(0x12000, 0x2000, 0, 0x100000),
                run(0x1f000, 0x4000, 0, 0x200000),
            ],
        };
        let c: Vec<(u64, u64, u32, u64)> = content(&m)
            .into_iter()
            .map(|(s, g)| (s, g.end, g.store, g.offset))
            .collect();
        assert_eq!(
            c,
            vec![
                (0x10000, 0x12000, 1, 0x8000),
                (0x12000, 0x14000, 0, 0x100000),
                (0x14000, 0x18000, 1, 0xc000),
                (0x1f000, 0x20000, 0, 0x200000),
            ]
        );
    }
}
