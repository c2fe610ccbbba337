//! Copying pages out of a process: the ranges its pagemap selected, read in batches with
//! process_vm_readv (one system call for many scattered pages; /proc/PID/mem serves what it
//! cannot read), kept in memory while the program is parked and written to the page store
//! once it runs again.

use super::DumpError;
use ckpt_format::{Mapping, PageRun, PageStoreWriter, PAGE_SIZE};
use std::fs::File;
use std::os::unix::fs::FileExt;

const BATCH_RUNS: usize = 512;
const BATCH_BYTES: u64 = 16 << 20;

/// Pages read in one go: the bytes, and where each run of them lies (address, offset, length).
pub struct Batch {
    pub data: Vec<u8>,
    pub runs: Vec<(u64, usize, usize)>,
}

impl Batch {
    /// The same bytes with only the pages that are not all zero; a batch left mostly empty
    /// keeps only what is left (memory that is mostly zeros must not be held whole).
    pub fn nonzero(self) -> Batch {
        let mut runs = Vec::new();
        for &(addr, off, len) in &self.runs {
            let pages = len / PAGE_SIZE as usize;
            let zero = |p: usize| {
                self.data[off + p * PAGE_SIZE as usize..off + (p + 1) * PAGE_SIZE as usize]
                    .iter()
                    .all(|&b| b == 0)
            };
            let mut p = 0;
            while p < pages {
                if zero(p) {
                    p += 1;
                    continue;
                }
                let mut q = p + 1;
                while q < pages && !zero(q) {
                    q += 1;
                }
                let at = p * PAGE_SIZE as usize;
                runs.push((addr + at as u64, off + at, (q - p) * PAGE_SIZE as usize));
                p = q;
            }
        }
        let mut b = Batch { data: self.data, runs };
        b.compact();
        b
    }

    /// When less than half of its buffer is still in use, keeps only what is; returns the
    /// buffer given up, if any.
    fn compact(&mut self) -> Option<Vec<u8>> {
        let left: usize = self.runs.iter().map(|r| r.2).sum();
        if left * 2 >= self.data.len() {
            return None;
        }
        let mut data = Vec::with_capacity(left);
        for r in &mut self.runs {
            let at = data.len();
            data.extend_from_slice(&self.data[r.1..r.1 + r.2]);
            r.1 = at;
        }
        Some(std::mem::replace(&mut self.data, data))
    }

    /// Forgets the parts of its runs inside `ranges` (sorted, merged): pages read again later.
    /// With `compact`, a batch left mostly empty keeps only what is left. Returns the buffer
    /// given up, if any.
    pub fn drop_ranges(&mut self, ranges: &[(u64, u64)], compact: bool) -> Option<Vec<u8>> {
        let mut kept = Vec::with_capacity(self.runs.len());
        for &(addr, off, len) in &self.runs {
            let end = addr + len as u64;
            let mut at = addr;
            // The ranges that may overlap [addr, end), in order.
            let first = ranges.partition_point(|&(_, re)| re <= addr);
            for &(rs, re) in ranges[first..].iter().take_while(|&&(rs, _)| rs < end) {
                if rs > at {
                    kept.push((at, off + (at - addr) as usize, (rs - at) as usize));
                }
                at = at.max(re);
            }
            if at < end {
                kept.push((at, off + (at - addr) as usize, (end - at) as usize));
            }
        }
        self.runs = kept;
        if self.runs.is_empty() {
            return Some(std::mem::take(&mut self.data));
        }
        // Mostly dropped: keep only what is left, so that rounds of copying do not pile up.
        if compact {
            return self.compact();
        }
        None
    }

    pub fn ranges(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.runs.iter().map(|&(a, _, l)| (a, a + l as u64))
    }
}

/// Buffers given up by batches whose pages were read again, for the next batches: their
/// memory is already in place, which saves a fault per page while the program is parked.
#[derive(Default)]
pub struct Pool {
    bufs: Vec<Vec<u8>>,
}

impl Pool {
    pub fn give(&mut self, buf: Vec<u8>) {
        if buf.capacity() > 0 {
            self.bufs.push(buf);
        }
    }

    /// A buffer of `len` bytes (contents unspecified: the caller overwrites them).
    pub fn take(&mut self, len: usize) -> Vec<u8> {
        match self.bufs.iter().position(|b| b.capacity() >= len) {
            Some(i) => {
                let mut b = self.bufs.swap_remove(i);
                if b.len() >= len {
                    b.truncate(len);
                } else {
                    b.resize(len, 0);
                }
                b
            }
            None => vec![0u8; len],
        }
    }
}

pub enum WalkError {
    Io(String, std::io::Error),
    Dump(DumpError),
}

impl From<DumpError> for WalkError {
    fn from(d: DumpError) -> Self {
        WalkError::Dump(d)
    }
}

impl WalkError {
    pub fn into_dump(self, pid: i32) -> DumpError {
        match self {
            WalkError::Io(what, source) => DumpError::Io { pid, what, source },
            WalkError::Dump(d) => d,
        }
    }
}

/// Reads the pages of `ranges` (sorted) and hands them to `f` in batches of at most about
/// [`BATCH_BYTES`] (many small ranges share a batch).
pub fn walk_pages(
    pid: i32,
    mem: &File,
    pool: &mut Pool,
    ranges: &[(u64, u64)],
    mut f: impl FnMut(Batch) -> Result<(), DumpError>,
) -> Result<(), WalkError> {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    let mut batched = 0u64;
    let mut flush = |runs: &mut Vec<(u64, u64)>| -> Result<(), WalkError> {
        let total: u64 = runs.iter().map(|r| r.1).sum();
        let mut data = pool.take(total as usize);
        read_runs(pid, mem, runs, &mut data)?;
        let mut at = 0usize;
        let mut placed = Vec::with_capacity(runs.len());
        for &(addr, len) in runs.iter() {
            placed.push((addr, at, len as usize));
            at += len as usize;
        }
        runs.clear();
        f(Batch { data, runs: placed })?;
        Ok(())
    };
    for &(rs, re) in ranges {
        let mut at = rs;
        while at < re {
            let len = (re - at).min(ckpt_format::RUN_MAX_BYTES);
            runs.push((at, len));
            batched += len;
            if runs.len() >= BATCH_RUNS || batched >= BATCH_BYTES {
                flush(&mut runs)?;
                batched = 0;
            }
            at += len;
        }
    }
    if !runs.is_empty() {
        flush(&mut runs)?;
    }
    Ok(())
}

/// Reads `runs` (address, length) of process `pid` into `data`, one after the other: in one
/// process_vm_readv, or through its /proc/PID/mem `mem` for what that cannot read.
pub(super) fn read_runs(pid: i32, mem: &File, runs: &[(u64, u64)], data: &mut [u8]) -> Result<(), WalkError> {
    if read_batch(pid, runs, data) {
        return Ok(());
    }
    let mut at = 0usize;
    for &(addr, len) in runs {
        mem.read_exact_at(&mut data[at..at + len as usize], addr)
            .map_err(|e| WalkError::Io(format!("memory at {addr:#x}"), e))?;
        at += len as usize;
    }
    Ok(())
}

/// Reads `runs` of process `pid` into `data` in one process_vm_readv; false if it could not
/// read them all.
fn read_batch(pid: i32, runs: &[(u64, u64)], data: &mut [u8]) -> bool {
    let local = [libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: data.len(),
    }];
    let remote: Vec<libc::iovec> = runs
        .iter()
        .map(|&(a, l)| libc::iovec {
            iov_base: a as *mut libc::c_void,
            iov_len: l as usize,
        })
        .collect();
    // SAFETY: `local` covers exactly `data`; the remote iovecs are addresses in the other process.
    let n = unsafe { libc::process_vm_readv(pid, local.as_ptr(), 1, remote.as_ptr(), remote.len() as u64, 0) };
    n >= 0 && n as usize == data.len()
}

/// Pages copied out of a parked program, written to its page store once it runs again.
pub struct Captured {
    batches: Vec<(usize, Batch)>,
    bytes: u64,
    /// Past this many bytes, pages go straight to the store (the program stays parked longer).
    budget: u64,
    /// Over budget: batches written together once they make [`SPILL_BYTES`] when compressed
    /// (each write sets up its compression workers and waits for the last of them), and the
    /// runs of those written, by mapping.
    spill: Vec<(usize, Batch)>,
    spill_bytes: u64,
    spilled: Vec<(usize, Vec<PageRun>)>,
}

/// Pages over budget are written in groups of about this many bytes.
const SPILL_BYTES: u64 = 64 << 20;

/// Writes the runs of `batches` (mapping number, batch) with one call; the runs stored for
/// each batch's mapping go to `out`, in order.
fn write_batches(
    batches: &[(usize, Batch)],
    store: &mut PageStoreWriter,
    out: &mut Vec<(usize, Vec<PageRun>)>,
) -> Result<(), DumpError> {
    let mut owners = Vec::new();
    let mut pieces: Vec<(u64, &[u8])> = Vec::new();
    for (m, b) in batches {
        for &(a, o, l) in &b.runs {
            owners.push(*m);
            pieces.push((a, &b.data[o..o + l]));
        }
    }
    let mut outs: Vec<Vec<PageRun>> = vec![Vec::new(); pieces.len()];
    let mut refs: Vec<&mut Vec<PageRun>> = outs.iter_mut().collect();
    store.append_many(&pieces, &mut refs)?;
    out.extend(owners.into_iter().zip(outs));
    Ok(())
}

impl Captured {
    pub fn new(limit: u64) -> Self {
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
            batches: Vec::new(),
            bytes: 0,
            budget: limit.min(avail / 2),
            spill: Vec::new(),
            spill_bytes: 0,
            spilled: Vec::new(),
        }
    }

    /// Keeps a batch of mapping number `mapping` for later or, over budget, writes it (when
    /// compressed, with those before it once they are enough). Its runs go to the mapping's in
    /// [`Captured::write`].
    pub fn take(&mut self, mapping: usize, batch: Batch, store: &mut PageStoreWriter) -> Result<(), DumpError> {
        if self.bytes + batch.data.len() as u64 <= self.budget {
            self.bytes += batch.data.len() as u64;
            self.batches.push((mapping, batch));
            return Ok(());
        }
        self.spill_bytes += batch.data.len() as u64;
        self.spill.push((mapping, batch));
        // Uncompressed, a batch goes at once: the memory it leaves is taken again warm.
        if self.spill_bytes < SPILL_BYTES && store.compresses() {
            return Ok(());
        }
        self.flush(store)
    }

    /// Writes the batches over budget not written yet.
    pub fn flush(&mut self, store: &mut PageStoreWriter) -> Result<(), DumpError> {
        // Written while the program is parked (or may be): it must not wait for the disk too.
        store.hold_behind(true);
        let r = write_batches(&self.spill, store, &mut self.spilled);
        store.hold_behind(false);
        r?;
        self.spill_bytes = 0;
        self.spill.clear();
        Ok(())
    }

    /// Bytes of pages not written yet.
    pub fn bytes(&self) -> u64 {
        self.bytes + self.spill_bytes
    }

    /// Writes what was kept; the runs go after each mapping's runs so far.
    pub fn write(mut self, store: &mut PageStoreWriter, mappings: &mut [Mapping]) -> Result<(), DumpError> {
        self.flush(store)?;
        // One call for everything: batches are often single pages, and each call sets up its
        // compression workers.
        write_batches(&self.batches, store, &mut self.spilled)?;
        for (m, runs) in self.spilled {
            mappings[m].pages.extend(runs);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Batch;

    #[test]
    fn drop_ranges_keeps_what_lies_outside() {
        let p = 4096u64;
        let mut b = Batch {
            data: vec![0; 10 * p as usize],
            // Two runs: pages 0..6 at offset 0, pages 20..24 at offset 6 pages.
            runs: vec![(0, 0, 6 * p as usize), (20 * p, 6 * p as usize, 4 * p as usize)],
        };
        // Drop page 1, pages 4..21 (the end of the first run and the start of the second).
        assert!(b.drop_ranges(&[(p, 2 * p), (4 * p, 21 * p)], true).is_none());
        let pu = p as usize;
        assert_eq!(
            b.runs,
            vec![(0, 0, pu), (2 * p, 2 * pu, 2 * pu), (21 * p, 7 * pu, 3 * pu)]
        );
        assert_eq!(b.drop_ranges(&[(0, 100 * p)], true).map(|d| d.len()), Some(10 * pu));
        assert!(b.runs.is_empty());
    }
}
