//! Memory: which mappings exist, which of their pages hold data, and those pages.

use super::copy::{walk_pages, Batch, Captured, Pool, WalkError};
use super::window::Window;
use super::{DumpError, PageTarget};
use ckpt_format::{
    FileId, Mapping, MappingKind, PageRun, PageStoreWriter, ProcessImage, SpecialMapping, PAGE_SIZE, PROT_EXEC,
    PROT_READ, PROT_WRITE,
};
use ckpt_sys::procfs::{self, MapEntry};
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;

use ckpt_sys::pagemap::{take, Take, Taken};

/// Which pages of a mapping must be stored.
#[derive(Clone, Copy, PartialEq)]
enum Select {
    /// Anonymous memory: every page that exists (present or swapped).
    Populated,
    /// Private file mapping: only pages copied-on-write away from the file.
    Modified,
    /// Content that exists nowhere else: every page, zero pages skipped.
    All,
    None,
}

/// Files already looked at in this dump (a library has several mappings).
type Seen = std::collections::HashMap<String, Option<std::fs::Metadata>>;

fn file_id(e: &MapEntry, seen: &mut Seen) -> Option<FileId> {
    let meta = seen
        .entry(e.path.clone())
        .or_insert_with(|| std::fs::metadata(&e.path).ok())
        .as_ref()?;
    // A path that now names another file: the mapped one was replaced.
    if meta.ino() != e.inode {
        return None;
    }
    Some(FileId {
        path: e.path.clone(),
        offset: e.offset,
        dev: meta.dev(),
        ino: meta.ino(),
        size: meta.size(),
        mtime_ns: meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
    })
}

/// `flags`: the VmFlags of the process's SysV attachments, by start address.
fn classify(
    pid: i32,
    e: &MapEntry,
    seen: &mut Seen,
    flags: &HashMap<u64, Vec<String>>,
) -> Result<(MappingKind, Select), DumpError> {
    let name = e.path.as_str();
    let unsupported = |why: &str| DumpError::UnsupportedMapping {
        pid,
        start: e.start,
        end: e.end,
        name: name.to_string(),
        why: why.to_string(),
    };
    if e.shared && name.starts_with("/SYSV") {
        // The segment's contents are the host's, stored once (see `dump::sysv`).
        let has = |f: &str| flags.get(&e.start).is_some_and(|v| v.iter().any(|x| x == f));
        // The kernel gives a segment's mappings the segment's id as inode number.
        let shmid = e.inode as i32;
        let size = super::sysv::segment_size(shmid).ok_or_else(|| unsupported("its SysV segment is gone"))?;
        let kind = MappingKind::SysvShm {
            shmid,
            attach: e.start - e.offset,
            size,
            // Attached with SHM_RDONLY: the mapping may never be made writable. (Whether it
            // was attached with SHM_EXEC shows nowhere; its protection is what counts.)
            rdonly: !has("mw"),
        };
        return Ok((kind, Select::None));
    }
    let deleted = name.ends_with(" (deleted)");
    if e.shared {
        let in_dev = name.starts_with("/dev/") && !name.starts_with("/dev/shm/");
        if name.starts_with('/') && !deleted && !in_dev {
            // The file holds the content (a /dev/shm one too: others may open it by name); it
            // is mapped again at restore.
            let id = file_id(e, seen).ok_or_else(|| unsupported("the mapped file was replaced"))?;
            return Ok((MappingKind::File(id), Select::None));
        }
        if name.starts_with("/dev/") && !name.starts_with("/dev/zero") && !name.starts_with("/dev/shm/") {
            return Err(unsupported("shared mapping of a device"));
        }
        return Ok((MappingKind::Saved { shmem: true }, Select::All));
    }
    Ok(match name {
        "" => (MappingKind::Anon, Select::Populated),
        "[heap]" => (MappingKind::Heap, Select::Populated),
        "[stack]" => (MappingKind::Stack, Select::Populated),
        n if n.starts_with("[anon:") => (MappingKind::Anon, Select::Populated),
        n if n.starts_with("/dev/zero") => (MappingKind::Anon, Select::Populated),
        n if n.starts_with('/') && !deleted => match file_id(e, seen) {
            Some(id) => (MappingKind::File(id), Select::Modified),
            None => (MappingKind::Saved { shmem: false }, Select::All),
        },
        n if n.starts_with('/') => (MappingKind::Saved { shmem: false }, Select::All),
        _ => return Err(unsupported("unknown kind of mapping")),
    })
}

/// What memory looked like at the checkpoint instant.
pub struct MemoryDump {
    pub mappings: Vec<Mapping>,
    pub special: Vec<SpecialMapping>,
    pub captured: Captured,
    /// The page store, still to receive the captured pages.
    pub store: PageStoreWriter,
    /// Pages left in place, protected, to be read once the program runs.
    pub window: Option<Window>,
    /// Page stores the runs point into (the first is this checkpoint's own).
    pub stores: Vec<String>,
}

fn anon_kind(k: &MappingKind) -> bool {
    matches!(k, MappingKind::Anon | MappingKind::Heap | MappingKind::Stack)
}

/// Memory whose pages are tracked and stored incrementally: anonymous memory, and private
/// file mappings (their copied-on-write pages).
fn incremental_kind(k: &MappingKind) -> bool {
    anon_kind(k) || matches!(k, MappingKind::File(_))
}

/// Reads the maps, selects pages via pagemap (`mem`: /proc/PID/mem) and copies them into
/// `t`'s store. With a base (this process's previous checkpoint), memory tracked since then
/// contributes only the pages written since, and refers to the base's runs for the rest; with
/// a pre-copy, what was copied before the stop is used and only what changed since is read
/// now. Tracked memory is re-armed either way. With a window, long ranges written since the
/// pre-copy are left in place (see `window`).
pub fn dump_memory(pid: i32, mem: &File, t: PageTarget<'_>) -> Result<MemoryDump, DumpError> {
    let PageTarget {
        store: mut page_store,
        rel: own_store,
        base,
        mut pre,
        window,
        stop_the_world,
        shared,
        ..
    } = t;
    let (base, store) = (base.map(|(_, b)| b), &mut page_store);
    let mut window = window.filter(|_| !stop_the_world).map(Window::new);
    let maps = procfs::maps(pid).map_err(|e| DumpError::Proc(e, pid))?;
    let io = |what: &str| super::io_err(pid, what);
    let pagemap = Arc::new(File::open(format!("/proc/{pid}/pagemap")).map_err(io("pagemap"))?);
    // Registrations are only made while parked and only lost while running, so the list taken
    // at pre-copy time can only be too long; a mapping no longer registered cannot be scanned
    // for written pages, and every page of it that holds data is stored.
    let tracked = match pre.as_mut() {
        Some(p) => std::mem::take(&mut p.tracked),
        None => procfs::uffd_wp_ranges(pid).map_err(|e| DumpError::Proc(e, pid))?,
    };
    let (stores, store_map) = store_numbers(own_store, base);
    let mut pool = pre.as_mut().map(|p| std::mem::take(&mut p.pool)).unwrap_or_default();
    // The baseline writes pages to disk while the program is stopped.
    let mut captured = Captured::new(if stop_the_world { 0 } else { u64::MAX });
    let t_start = std::time::Instant::now();
    let mut mappings = Vec::new();
    let mut special = Vec::new();
    let mut seen = Seen::new();
    // VmFlags, read only where the maps do not tell: SysV attachments, and shared file
    // mappings without write permission (whether they may be made writable).
    let wants_flags = |e: &MapEntry| super::sysv::is_attachment(e) || (e.shared && !e.write && e.path.starts_with('/'));
    let vm_flags = if maps.iter().any(wants_flags) {
        procfs::vm_flags(pid, wants_flags).map_err(|e| DumpError::Proc(e, pid))?
    } else {
        HashMap::new()
    };
    for e in &maps {
        // An AIO ring is its context's, read with it (see `aio`).
        if e.path == "[vsyscall]" || e.path == ckpt_proto::RESTORER_VMA_NAME || super::aio::is_ring(&e.path) {
            continue;
        }
        if ckpt_format::is_kernel_special(&e.path) {
            special.push(SpecialMapping {
                name: e.path.clone(),
                start: e.start,
                end: e.end,
            });
            continue;
        }
        let (kind, select) = classify(pid, e, &mut seen, &vm_flags)?;
        let is_tracked = tracked.contains(&(e.start, e.end));
        let incremental = is_tracked && incremental_kind(&kind) && select != Select::None;
        let mut pre_m = pre
            .as_mut()
            .and_then(|p| p.mappings.remove(&(e.start, e.end)))
            .filter(|_| incremental);
        // Read as a delta: written since the pre-copy, or since the base when there was none.
        let delta = incremental && (base.is_some() || pre_m.is_some());
        let prot = (e.read as u32 * PROT_READ) | (e.write as u32 * PROT_WRITE) | (e.exec as u32 * PROT_EXEC);
        let idx = mappings.len();
        let file = select == Select::Modified;
        // Shared memory whose written pages are known (see `shared_dirty`), stored as a delta
        // against this process's own copy of it in the base.
        let shared_delta = match (&kind, shared.and_then(|s| s.get(&e.start)), base) {
            (MappingKind::Saved { shmem: true }, Some(written), Some(b)) => b
                .mappings
                .iter()
                .find(|m| m.start == e.start && m.end == e.end && m.kind == kind)
                .map(|bm| shared_written(pid, written, &bm.pages, &store_map))
                .transpose()?,
            _ => None,
        };
        let is_shared_delta = shared_delta.is_some();
        // Re-armed by the pre-copy but not copied: read now, written since or not.
        let pending = pre_m
            .as_mut()
            .map(|p| std::mem::take(&mut p.pending))
            .unwrap_or_default();
        // What to read now, the base's runs still valid for this mapping, and where an older
        // copy of a page exists (sorted, merged).
        let (taken, runs, cover): (Taken, Vec<PageRun>, Ranges) = match (delta, pre_m.as_mut(), base) {
            _ if is_shared_delta => {
                let (data, runs) = shared_delta.unwrap_or_default();
                (Taken { data, gone: Vec::new() }, runs, Vec::new())
            }
            // Read as a delta: written since the pre-copy, which worked out the base's runs
            // still valid (a run the delta rewrites stays, under the newer pages: harmless).
            (true, Some(p), _) => {
                let cover = std::mem::take(&mut p.cover);
                let taken = scan_written(&pagemap, e.start, e.end, file, &cover).map_err(io("written pages"))?;
                (taken, std::mem::take(&mut p.inherited), cover)
            }
            // Written since the base, without a pre-copy.
            (true, None, Some(b)) => {
                let older = merge_ranges(run_ranges(&inherited_runs(b, e.start, e.end, &[])).collect());
                let taken = scan_written(&pagemap, e.start, e.end, file, &older).map_err(io("written pages"))?;
                let runs = renumber(inherited_runs(b, e.start, e.end, &taken.all()), &store_map)
                    .ok_or(DumpError::BadBase { pid })?;
                let cover = merge_ranges(run_ranges(&runs).collect());
                (taken, runs, cover)
            }
            _ => {
                // The kernel finds the pages that hold data: most of a big mapping is often
                // empty, and most of a private file mapping is the file's. Tracked memory is
                // protected on the way, so that only later writes show.
                let data = match select {
                    // A mapping in the list read at pre-copy time but replaced since (no
                    // longer registered) is read like an untracked one.
                    Select::Populated | Select::Modified if is_tracked => {
                        match take(&pagemap, e.start, e.end, file, Take::All, &[]) {
                            Ok(t) => t.data,
                            Err(_) if file => {
                                ckpt_sys::pagemap::modified_private(&pagemap, e.start, e.end).map_err(io("pagemap"))?
                            }
                            Err(_) => ckpt_sys::pagemap::populated(&pagemap, e.start, e.end).map_err(io("pagemap"))?,
                        }
                    }
                    Select::Populated => {
                        ckpt_sys::pagemap::populated(&pagemap, e.start, e.end).map_err(io("pagemap"))?
                    }
                    Select::Modified => {
                        ckpt_sys::pagemap::modified_private(&pagemap, e.start, e.end).map_err(io("pagemap"))?
                    }
                    // Shared memory: where its file holds data (what was never written is a
                    // hole, and reading it would fill it).
                    Select::All if e.shared => procfs::mapped_file_data(pid, e.start, e.end, e.offset)
                        .unwrap_or_else(|| vec![(e.start, e.end)]),
                    Select::All => vec![(e.start, e.end)],
                    Select::None => Vec::new(),
                };
                (Taken { data, gone: Vec::new() }, Vec::new(), Vec::new())
            }
        };
        // A page of a file mapping discarded since its older copy keeps its protection (the
        // kernel leaves a marker): it does not read as written, but no longer differs from the
        // file. Such pages are found where the older copies are, and read again (so are pages
        // swapped out there: harmless).
        let gone = if delta && file && !cover.is_empty() {
            let now = ckpt_sys::pagemap::copied_present(&pagemap, e.start, e.end).map_err(io("pagemap"))?;
            merge_ranges(taken.gone.into_iter().chain(subtract(&cover, &now)).collect())
        } else {
            taken.gone
        };
        // Pages written since are read with them (or left in the window).
        let pending = subtract(&pending, &taken.data);
        // Long, dense stretches of written data stay in place, protected, instead of being
        // copied now (never pages that hold none: the window reads all it takes).
        let (data, deferred) = match &mut window {
            Some(w) if delta => w.defer(idx, taken.data),
            _ => (taken.data, Vec::new()),
        };
        let pending = subtract(&pending, &deferred);
        let ranges = merge_ranges(data.into_iter().chain(gone).chain(pending).collect());
        // Pages copied before the stop come first; what changed since goes over them.
        if let Some(p) = pre_m {
            let delta = merge_ranges(ranges.iter().chain(&deferred).copied().collect());
            for mut b in p.batches {
                // Pages written again since are read anew below: no need to keep them twice.
                if !delta.is_empty() {
                    if let Some(buf) = b.drop_ranges(&delta, false) {
                        pool.give(buf);
                    }
                }
                if !b.runs.is_empty() {
                    captured.take(idx, b, store)?;
                }
            }
        }
        if !ranges.is_empty() {
            // Content that exists nowhere else is read whole; its zero pages are not kept.
            // Not in a delta: a page zeroed since must go over its older copy.
            let keep = |batch: Batch| {
                if select == Select::All && !is_shared_delta {
                    batch.nonzero()
                } else {
                    batch
                }
            };
            // A big delta (a program that rewrites its memory faster than the pre-copy can
            // follow) is read on two cores: the program waits for all of it.
            let (here, there) = if stop_the_world {
                (ranges, Vec::new())
            } else {
                split_copy(&ranges)
            };
            let other = std::thread::scope(|sc| {
                let other = (!there.is_empty()).then(|| {
                    sc.spawn(move || {
                        let (mut spare, mut got) = (Pool::default(), Vec::new());
                        walk_pages(pid, mem, &mut spare, &there, |b| {
                            got.push(keep(b));
                            Ok(())
                        })
                        .map(|_| got)
                    })
                });
                walk_pages(pid, mem, &mut pool, &here, |batch| {
                    captured.take(idx, keep(batch), store)
                })
                .map_err(|e| e.into_dump(pid))?;
                other
                    .map(|h| {
                        h.join().unwrap_or_else(|_| {
                            Err(WalkError::Io(
                                "memory".into(),
                                std::io::Error::other("a copy thread failed"),
                            ))
                        })
                    })
                    .transpose()
                    .map_err(|e| e.into_dump(pid))
            })?;
            for batch in other.into_iter().flatten() {
                captured.take(idx, batch, store)?;
            }
        }
        mappings.push(Mapping {
            start: e.start,
            end: e.end,
            prot,
            shared: e.shared,
            kind,
            name: e.path.clone(),
            pages: runs,
            shared_with: None,
            locked: Default::default(),
            tracked: is_tracked,
            may_write: !e.shared || e.write || vm_flags.get(&e.start).is_none_or(|f| f.iter().any(|x| x == "mw")),
        });
    }
    // The baseline writes every page while the program is stopped.
    if stop_the_world {
        captured.flush(store)?;
    }
    tracing::debug!(
        pid,
        captured = captured.bytes(),
        deferred = window.as_ref().map_or(0, |w| w.bytes()),
        took = ?t_start.elapsed(),
        "memory read"
    );
    Ok(MemoryDump {
        mappings,
        special,
        captured,
        // The buffers of pre-copied pages written again are in memory already: the window's
        // reading fills them instead of faulting in new ones. An empty window is kept too:
        // closing it makes the kernel walk the mappings, which is for after the stop.
        window: window.map(|w| w.with_pool(pool)),
        store: page_store,
        stores,
    })
}

/// Address ranges [start, end).
type Ranges = Vec<(u64, u64)>;

/// What to read now of a mapping of shared memory, given its `pages` (written since the base
/// through any of the memory's mappings, holding data now) and its runs in the base
/// (`older`), and the base's runs still valid. A page punched out of the memory
/// (`MADV_REMOVE`, `fallocate`) changed without a write: where the base has a copy of a page
/// that holds nothing now, it is read again (as zeros). Pages written that hold nothing now
/// and had no copy stay holes.
fn shared_written(
    pid: i32,
    pages: &super::shared_dirty::Pages,
    older: &[PageRun],
    store_map: &[u32],
) -> Result<(Ranges, Vec<PageRun>), DumpError> {
    let (written, data) = (&pages.written, &pages.data);
    let older_ranges = merge_ranges(run_ranges(older).collect());
    let written_data = subtract(written, &subtract(written, data));
    let read = merge_ranges(written_data.into_iter().chain(subtract(&older_ranges, data)).collect());
    let kept = older
        .iter()
        .filter(|r| !inside(&read, r.addr, r.addr + r.len))
        .copied()
        .collect();
    let runs = renumber(kept, store_map).ok_or(DumpError::BadBase { pid })?;
    Ok((read, runs))
}

/// The address ranges of some runs.
pub(crate) fn run_ranges(runs: &[PageRun]) -> impl Iterator<Item = (u64, u64)> + '_ {
    runs.iter().map(|r| (r.addr, r.addr + r.len))
}

/// Below this, a copy made while the program is parked is not worth a second thread.
const SPLIT_COPY: u64 = 32 << 20;

/// Splits `ranges` into two parts of about the same number of bytes, cutting a range at a page
/// if need be (the second part is empty when they are small).
fn split_copy(ranges: &[(u64, u64)]) -> (Ranges, Ranges) {
    let total: u64 = ranges.iter().map(|r| r.1 - r.0).sum();
    if total < SPLIT_COPY {
        return (ranges.to_vec(), Vec::new());
    }
    let (mut here, mut there) = (Vec::new(), Vec::new());
    let mut left = total / 2 / PAGE_SIZE * PAGE_SIZE;
    for &(s, e) in ranges {
        let take = (e - s).min(left);
        if take > 0 {
            here.push((s, s + take));
        }
        if s + take < e {
            there.push((s + take, e));
        }
        left -= take;
    }
    (here, there)
}

/// Below this, a mapping's scan is not worth splitting.
const SPLIT_SCAN: u64 = 64 << 20;

/// What of [start, end) was written since it was last protected, protected again (see
/// [`take`]); `older`: where an older copy exists. The page-table walk grows with the memory
/// size: a big range is walked half here, half on the helper kept on a CPU during the stop.
fn scan_written(pagemap: &Arc<File>, start: u64, end: u64, file: bool, older: &[(u64, u64)]) -> std::io::Result<Taken> {
    let r = if end - start < SPLIT_SCAN {
        take(pagemap, start, end, file, Take::Written, older)
    } else {
        let mid = start + ((end - start) / 2) / PAGE_SIZE * PAGE_SIZE;
        let (other, older_hi) = (pagemap.clone(), older.to_vec());
        let (a, b) = crate::hot::join(
            || take(pagemap, start, mid, file, Take::Written, older),
            move || take(&other, mid, end, file, Take::Written, &older_hi),
        );
        a.and_then(|mut a| {
            let b = b.unwrap_or_else(|| Err(std::io::Error::other("the scan helper failed")))?;
            a.data.extend(b.data);
            a.gone.extend(b.gone);
            Ok(a)
        })
    };
    match r {
        Ok(t) => Ok(t),
        // No longer registered (moved or replaced since): every page that holds data, and
        // every page where an older copy exists.
        Err(_) => {
            let data = if file {
                ckpt_sys::pagemap::modified_private(pagemap, start, end)?
            } else {
                ckpt_sys::pagemap::populated(pagemap, start, end)?
            };
            let gone = subtract(older, &data);
            Ok(Taken { data, gone })
        }
    }
}

/// This checkpoint's stores (its own first, then those of `base` it still refers to) and, for
/// each of the base's stores, its number among them.
pub(crate) fn store_numbers(own_store: String, base: Option<&ProcessImage>) -> (Vec<String>, Vec<u32>) {
    let mut stores = vec![own_store];
    let map = base
        .map(|b| {
            b.stores
                .iter()
                .map(|s| match stores.iter().position(|x| x == s) {
                    Some(i) => i as u32,
                    None => {
                        stores.push(s.clone());
                        (stores.len() - 1) as u32
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    (stores, map)
}

/// The base's runs with their store numbers as in this checkpoint; None if the base's image
/// names a store it does not list.
pub(crate) fn renumber(runs: Vec<PageRun>, store_map: &[u32]) -> Option<Vec<PageRun>> {
    runs.into_iter()
        .map(|r| {
            Some(PageRun {
                store: *store_map.get(r.store as usize)?,
                ..r
            })
        })
        .collect()
}

/// The runs of `base`'s tracked memory overlapping [start, end) that are not entirely within
/// `rewritten` (sorted, merged): what a new image of that memory still needs from the base.
pub(crate) fn inherited_runs(base: &ProcessImage, start: u64, end: u64, rewritten: &[(u64, u64)]) -> Vec<PageRun> {
    base.mappings
        .iter()
        .filter(|m| incremental_kind(&m.kind) && m.start < end && m.end > start)
        .flat_map(|m| m.pages.iter())
        .filter(|r| r.addr < end && r.addr + r.len > start && !inside(rewritten, r.addr, r.addr + r.len))
        .copied()
        .collect()
}

/// Whether [s, e) lies within one of the sorted, merged `ranges`.
pub(crate) fn inside(ranges: &[(u64, u64)], s: u64, e: u64) -> bool {
    let i = ranges.partition_point(|&(rs, _)| rs <= s);
    i > 0 && e <= ranges[i - 1].1
}

/// The parts of `a` outside `b` (both sorted, merged).
pub(crate) fn subtract(a: &[(u64, u64)], b: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for &(s, e) in a {
        let mut at = s;
        let first = b.partition_point(|&(_, be)| be <= s);
        for &(bs, be) in b[first..].iter().take_while(|&&(bs, _)| bs < e) {
            if bs > at {
                out.push((at, bs));
            }
            at = at.max(be);
        }
        if at < e {
            out.push((at, e));
        }
    }
    out
}

/// Sorted, merged copy of possibly overlapping ranges.
pub(crate) fn merge_ranges(mut v: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    v.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (s, e) in v {
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::subtract;

    #[test]
    fn subtract_keeps_what_lies_outside() {
        let a = [(0, 10), (20, 30), (40, 50)];
        let b = [(5, 22), (25, 26), (45, 60)];
        assert_eq!(subtract(&a, &b), vec![(0, 5), (22, 25), (26, 30), (40, 45)]);
        assert_eq!(subtract(&a, &[]), a.to_vec());
        assert!(subtract(&a, &[(0, 100)]).is_empty());
    }
}
