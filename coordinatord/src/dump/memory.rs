//! Memory: which mappings exist, which of their pages hold data, and those pages.

use super::DumpError;
use ckpt_format::{
    FileId, Mapping, MappingKind, PageRun, PageStoreWriter, ProcessImage, SpecialMapping, PAGE_SIZE, PROT_EXEC,
    PROT_READ, PROT_WRITE,
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

/// Pages copied out of a parked program, written to its page store once it runs again.
#[derive(Default)]
pub struct Captured {
    chunks: Vec<Chunk>,
    bytes: u64,
    /// Past this many bytes, pages go straight to the store (the program stays parked longer).
    budget: u64,
}

struct Chunk {
    mapping: usize,
    addr: u64,
    data: Vec<u8>,
}

impl Captured {
    fn new() -> Self {
        let avail = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find_map(|l| l.strip_prefix("MemAvailable:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
            .unwrap_or(0)
            * 1024;
        Self {
            chunks: Vec::new(),
            bytes: 0,
            budget: avail / 2,
        }
    }

    /// Keeps `data` (at `addr`, of mapping number `mapping`) for later, or writes it now.
    fn take(
        &mut self,
        mapping: usize,
        addr: u64,
        data: &[u8],
        runs: &mut Vec<PageRun>,
        store: &mut PageStoreWriter,
    ) -> Result<(), DumpError> {
        if self.bytes + data.len() as u64 > self.budget {
            store.append(addr, data, runs)?;
        } else {
            self.bytes += data.len() as u64;
            self.chunks.push(Chunk {
                mapping,
                addr,
                data: data.to_vec(),
            });
        }
        Ok(())
    }

    /// Writes what was kept; the runs go after each mapping's runs so far.
    pub fn write(self, store: &mut PageStoreWriter, mappings: &mut [Mapping]) -> Result<(), DumpError> {
        for c in self.chunks {
            store.append(c.addr, &c.data, &mut mappings[c.mapping].pages)?;
        }
        Ok(())
    }
}

/// What memory looked like at the checkpoint instant.
pub struct MemoryDump {
    pub mappings: Vec<Mapping>,
    pub special: Vec<SpecialMapping>,
    pub captured: Captured,
    /// Page stores the runs point into (the first is this checkpoint's own).
    pub stores: Vec<String>,
}

fn anon_kind(k: &MappingKind) -> bool {
    matches!(k, MappingKind::Anon | MappingKind::Heap | MappingKind::Stack)
}

/// Reads the maps, selects pages via pagemap and copies them. With `base` (this process's
/// previous checkpoint), memory tracked since then contributes only the pages written since,
/// and refers to the base's runs for the rest. Tracked memory is re-armed either way.
pub fn dump_memory(
    pid: i32,
    own_store: String,
    base: Option<&ProcessImage>,
    store: &mut PageStoreWriter,
) -> Result<MemoryDump, DumpError> {
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
    let tracked = procfs::uffd_wp_ranges(pid).map_err(|e| DumpError::Proc(e, pid))?;
    let mut stores = vec![own_store];
    // The base's store numbers, renumbered into ours.
    let store_map: Vec<u32> = base
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
    let mut captured = Captured::new();
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
        let idx = mappings.len();
        let is_tracked = tracked.contains(&(e.start, e.end));
        let mut runs: Vec<PageRun> = Vec::new();
        // Which pages to take: a list of ranges to look at, with what to select in them.
        let (ranges, inherited): (Vec<(u64, u64)>, Vec<PageRun>) = match base {
            Some(b) if is_tracked && anon_kind(&kind) => {
                let written =
                    ckpt_sys::pagemap::written(&pagemap, e.start, e.end, true).map_err(io("written pages"))?;
                let inherited: Vec<PageRun> = b
                    .mappings
                    .iter()
                    .filter(|m| anon_kind(&m.kind) && m.start < e.end && m.end > e.start)
                    .flat_map(|m| m.pages.iter())
                    .filter(|r| r.addr < e.end && r.addr + r.len > e.start)
                    // A run entirely rewritten since is not needed any more.
                    .filter(|r| !written.iter().any(|&(ws, we)| ws <= r.addr && r.addr + r.len <= we))
                    .map(|r| PageRun {
                        store: store_map.get(r.store as usize).copied().unwrap_or(u32::MAX),
                        ..*r
                    })
                    .collect();
                (written, inherited)
            }
            _ => {
                if is_tracked {
                    ckpt_sys::pagemap::protect_all(&pagemap, e.start, e.end).map_err(io("tracking"))?;
                }
                (vec![(e.start, e.end)], Vec::new())
            }
        };
        if inherited.iter().any(|r| r.store == u32::MAX) {
            return Err(DumpError::BadSlots { pid });
        }
        runs.extend_from_slice(&inherited);
        let incremental = base.is_some() && is_tracked && anon_kind(&kind);
        let covered = |addr: u64| inherited.iter().any(|r| r.addr <= addr && addr < r.addr + r.len);
        if select != Select::None {
            for &(rs, re) in &ranges {
                let npages = (re - rs) / PAGE_SIZE;
                let mut first = 0;
                while first < npages {
                    let n = (npages - first).min(PAGEMAP_CHUNK);
                    pm.resize((n * 8) as usize, 0);
                    pagemap
                        .read_exact_at(&mut pm, (rs / PAGE_SIZE + first) * 8)
                        .map_err(io("pagemap"))?;
                    let wanted = |i: u64| {
                        let v = u64::from_le_bytes(
                            pm[(i * 8) as usize..(i * 8 + 8) as usize]
                                .try_into()
                                .unwrap_or_default(),
                        );
                        let populated = v & (PM_PRESENT | PM_SWAPPED) != 0;
                        match select {
                            // A written page now gone must still override the base's copy.
                            Select::Populated if incremental => populated || covered(rs + (first + i) * PAGE_SIZE),
                            Select::Populated => populated,
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
                        let addr = rs + (first + i) * PAGE_SIZE;
                        data.resize(((j - i) * PAGE_SIZE) as usize, 0);
                        mem.read_exact_at(&mut data, addr)
                            .map_err(io(&format!("memory at {addr:#x}")))?;
                        if select == Select::All {
                            for (a, d) in nonzero(addr, &data) {
                                captured.take(idx, a, d, &mut runs, store)?;
                            }
                        } else {
                            captured.take(idx, addr, &data, &mut runs, store)?;
                        }
                        i = j;
                    }
                    first += n;
                }
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
    Ok(MemoryDump {
        mappings,
        special,
        captured,
        stores,
    })
}

/// The runs of `data` (at `addr`) that are not all zero.
fn nonzero(addr: u64, data: &[u8]) -> Vec<(u64, &[u8])> {
    let pages: Vec<&[u8]> = data.chunks(PAGE_SIZE as usize).collect();
    let mut out = Vec::new();
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
        let (s, e) = (i * PAGE_SIZE as usize, j * PAGE_SIZE as usize);
        out.push((addr + s as u64, &data[s..e]));
        i = j;
    }
    out
}
