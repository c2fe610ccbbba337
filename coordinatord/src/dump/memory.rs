//! Memory: which mappings exist, which of their pages hold data, and those pages.

use super::DumpError;
use ckpt_format::{
    FileId, Mapping, MappingKind, PageRun, PageStoreWriter, SpecialMapping, PAGE_SIZE, PROT_EXEC, PROT_READ, PROT_WRITE,
};
use ckpt_sys::procfs::{self, MapEntry};
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};

const PM_PRESENT: u64 = 1 << 63;
const PM_SWAPPED: u64 = 1 << 62;
const PM_FILE: u64 = 1 << 61;
/// Pagemap entries read at once (8 bytes each).
const PAGEMAP_CHUNK: u64 = 1 << 16;
/// Name given by the restorer to its leftover pages, never part of the program.
pub const RESTORER_VMA_NAME: &str = "[anon:ckpt-restorer]";

fn is_special(name: &str) -> bool {
    matches!(name, "[vdso]" | "[vvar]" | "[vvar_vclock]")
}

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

fn file_id(pid: i32, e: &MapEntry) -> Option<FileId> {
    // The map_files link reaches the very inode that is mapped, even if the path was replaced.
    let meta = std::fs::metadata(&e.path).ok()?;
    let _ = pid;
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

fn classify(pid: i32, e: &MapEntry) -> Result<(MappingKind, Select), DumpError> {
    let name = e.path.as_str();
    let unsupported = |why: &str| DumpError::UnsupportedMapping {
        pid,
        start: e.start,
        end: e.end,
        name: name.to_string(),
        why: why.to_string(),
    };
    let deleted = name.ends_with(" (deleted)");
    if e.shared {
        if name.starts_with('/') && !deleted && !name.starts_with("/dev/") {
            // The file holds the content; it is mapped again at restore.
            let id = file_id(pid, e).ok_or_else(|| unsupported("the mapped file was replaced"))?;
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
        n if n.starts_with('/') && !deleted => match file_id(pid, e) {
            Some(id) => (MappingKind::File(id), Select::Modified),
            None => (MappingKind::Saved { shmem: false }, Select::All),
        },
        n if n.starts_with('/') => (MappingKind::Saved { shmem: false }, Select::All),
        _ => return Err(unsupported("unknown kind of mapping")),
    })
}

/// Reads the maps, selects pages via pagemap and copies them into the store.
pub fn dump_memory(pid: i32, store: &mut PageStoreWriter) -> Result<(Vec<Mapping>, Vec<SpecialMapping>), DumpError> {
    let maps = procfs::maps(pid).map_err(|e| DumpError::Proc(e, pid))?;
    let io = |what: &str| {
        let what = what.to_string();
        move |source| DumpError::Io {
            pid,
            what: what.clone(),
            source,
        }
    };
    let mem = File::open(format!("/proc/{pid}/mem")).map_err(io("memory"))?;
    let pagemap = File::open(format!("/proc/{pid}/pagemap")).map_err(io("pagemap"))?;
    let mut mappings = Vec::new();
    let mut special = Vec::new();
    let mut pm = Vec::new();
    let mut data = Vec::new();
    for e in &maps {
        if e.path == "[vsyscall]" || e.path == RESTORER_VMA_NAME {
            continue;
        }
        if is_special(&e.path) {
            special.push(SpecialMapping {
                name: e.path.clone(),
                start: e.start,
                end: e.end,
            });
            continue;
        }
        let (kind, select) = classify(pid, e)?;
        let prot = (e.read as u32 * PROT_READ) | (e.write as u32 * PROT_WRITE) | (e.exec as u32 * PROT_EXEC);
        let mut runs: Vec<PageRun> = Vec::new();
        if select != Select::None {
            let npages = e.len() / PAGE_SIZE;
            let mut first = 0;
            while first < npages {
                let n = (npages - first).min(PAGEMAP_CHUNK);
                pm.resize((n * 8) as usize, 0);
                pagemap
                    .read_exact_at(&mut pm, (e.start / PAGE_SIZE + first) * 8)
                    .map_err(io("pagemap"))?;
                let wanted = |i: u64| {
                    let v = u64::from_le_bytes(
                        pm[(i * 8) as usize..(i * 8 + 8) as usize]
                            .try_into()
                            .unwrap_or_default(),
                    );
                    match select {
                        Select::Populated => v & (PM_PRESENT | PM_SWAPPED) != 0,
                        Select::Modified => v & PM_SWAPPED != 0 || (v & PM_PRESENT != 0 && v & PM_FILE == 0),
                        Select::All => true,
                        Select::None => false,
                    }
                };
                let mut i = 0;
                while i < n {
                    if !wanted(i) {
                        i += 1;
                        continue;
                    }
                    let mut j = i + 1;
                    while j < n && wanted(j) && (j - i) * PAGE_SIZE < ckpt_format::RUN_MAX_BYTES {
                        j += 1;
                    }
                    let addr = e.start + (first + i) * PAGE_SIZE;
                    data.resize(((j - i) * PAGE_SIZE) as usize, 0);
                    mem.read_exact_at(&mut data, addr)
                        .map_err(io(&format!("memory at {addr:#x}")))?;
                    if select == Select::All {
                        append_nonzero(store, addr, &data, &mut runs)?;
                    } else {
                        store.append(addr, &data, &mut runs)?;
                    }
                    i = j;
                }
                first += n;
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
        });
    }
    Ok((mappings, special))
}

/// Stores the pages of `data` that are not all zero.
fn append_nonzero(
    store: &mut PageStoreWriter,
    addr: u64,
    data: &[u8],
    runs: &mut Vec<PageRun>,
) -> Result<(), DumpError> {
    let pages: Vec<&[u8]> = data.chunks(PAGE_SIZE as usize).collect();
    let mut i = 0;
    while i < pages.len() {
        if pages[i].iter().all(|&b| b == 0) {
            i += 1;
            continue;
        }
        let mut j = i + 1;
        while j < pages.len() && !pages[j].iter().all(|&b| b == 0) {
            j += 1;
        }
        let start = i * PAGE_SIZE as usize;
        let end = j * PAGE_SIZE as usize;
        store.append(addr + start as u64, &data[start..end], runs)?;
        i = j;
    }
    Ok(())
}
