//! Where the content of each lazily loaded page is: the page runs of its mapping (an ancestor
//! checkpoint's first, newer ones over them: the newest run holding a page owns it), read from
//! the page stores ckptd opened when the restore was prepared, and checked against their CRC
//! before any of their bytes reach the program. Whole runs that follow each other in memory
//! and in one store (a checkpoint taken while the program wrote holds many single pages) are
//! read together, up to [`SEGMENT_MAX`] at a time.

use anyhow::{anyhow, bail};
use ckpt_format::{FormatError, Mapping, PageRun, PageStoreReader};
use std::collections::{BinaryHeap, VecDeque};
use std::os::unix::fs::FileExt;

/// Segments read and checked are kept for the faults that follow in them.
const CACHED: usize = 4;
/// Runs read together at most.
const SEGMENT_MAX: u64 = 1 << 20;

/// Memory whose content is read at once, at its checkpoint addresses.
#[derive(Debug, Clone)]
pub struct Segment {
    pub start: u64,
    pub end: u64,
    how: Read,
}

#[derive(Debug, Clone)]
enum Read {
    /// Whole uncompressed runs, back to back in memory and in their store: the runs
    /// `order[from..to]`.
    Direct { from: usize, to: usize },
    /// Part of run `run` (a newer run owns the rest, or it is compressed): the run is read
    /// whole, for its CRC.
    Part { run: usize },
}

pub struct Source {
    runs: Vec<PageRun>,
    /// Run indices in the order of the segments' direct reads.
    order: Vec<u32>,
    /// Sorted, disjoint.
    segments: Vec<Segment>,
    readers: Vec<PageStoreReader>,
    cache: VecDeque<(usize, Vec<u8>)>,
}

/// A stretch one run owns.
struct Piece {
    start: u64,
    end: u64,
    run: usize,
}

impl Source {
    /// The segments of `ranges` (each within one of `mappings`), read through `readers` (by
    /// store index).
    pub fn new(mappings: &[Mapping], ranges: &[(u64, u64)], readers: Vec<PageStoreReader>) -> anyhow::Result<Self> {
        let n: usize = mappings.iter().map(|m| m.pages.len()).sum();
        let mut runs = Vec::with_capacity(n);
        let mut pieces = Vec::with_capacity(n);
        for &(s, e) in ranges {
            let Some(m) = mappings.iter().find(|m| m.start <= s && e <= m.end) else {
                bail!("the restorer registered {s:#x}-{e:#x} for lazy loading, which no mapping holds");
            };
            let first = runs.len();
            for r in &m.pages {
                if readers.get(r.store as usize).is_none() {
                    bail!("no page store {} for the pages at {:#x}", r.store, r.addr);
                }
                runs.push(*r);
            }
            owners(&runs[first..], first, s, e, &mut pieces);
        }
        // The ranges come in address order, and so do their pieces, most often.
        if !pieces.windows(2).all(|w| w[0].start <= w[1].start) {
            pieces.sort_unstable_by_key(|p| p.start);
        }
        let (order, segments) = segments(&runs, &pieces);
        Ok(Self {
            order,
            segments,
            runs,
            readers,
            cache: VecDeque::new(),
        })
    }

    /// Every page to load, merged into ranges.
    pub fn ranges(&self) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        for p in &self.segments {
            match out.last_mut() {
                Some(l) if l.1 == p.start => l.1 = p.end,
                _ => out.push((p.start, p.end)),
            }
        }
        out
    }

    /// The segment holding checkpoint address `addr` (its index, and its bounds).
    pub fn segment_at(&self, addr: u64) -> Option<(usize, u64, u64)> {
        let i = self.segments.partition_point(|p| p.start <= addr).checked_sub(1)?;
        let p = &self.segments[i];
        (addr < p.end).then_some((i, p.start, p.end))
    }

    /// The content of [from, to) (checkpoint addresses, within segment `i`).
    pub fn data(&mut self, i: usize, from: u64, to: u64) -> anyhow::Result<&[u8]> {
        let seg = self.segments[i].clone();
        if !(seg.start <= from && from <= to && to <= seg.end) {
            return Err(anyhow!("internal: {from:#x}-{to:#x} is not within its segment"));
        }
        let at = match self.cache.iter().position(|(k, _)| *k == i) {
            Some(at) => at,
            None => {
                let mut buf = match self.cache.len() >= CACHED {
                    true => self.cache.pop_front().map(|(_, b)| b).unwrap_or_default(),
                    false => Vec::new(),
                };
                // Its own line only: the store's errors say their cause in it already.
                let base = self.read(&seg, &mut buf).map_err(|e| anyhow!("{e}"))?;
                // Kept as the segment's own bytes: from its start.
                buf.drain(..(seg.start - base) as usize);
                self.cache.push_back((i, buf));
                self.cache.len() - 1
            }
        };
        let off = (from - seg.start) as usize;
        Ok(&self.cache[at].1[off..off + (to - from) as usize])
    }

    /// Reads what `seg` needs into `buf`; the address its first byte belongs at. Errors are
    /// one line each (the store's path and what is wrong with it).
    fn read(&self, seg: &Segment, buf: &mut Vec<u8>) -> Result<u64, FormatError> {
        match &seg.how {
            Read::Part { run } => {
                let r = &self.runs[*run];
                self.readers[r.store as usize].read_run(r, buf)?;
                Ok(r.addr)
            }
            Read::Direct { from, to } => {
                let runs = &self.order[*from..*to];
                let first = &self.runs[runs[0] as usize];
                let reader = &self.readers[first.store as usize];
                let path = reader.path();
                buf.resize((seg.end - seg.start) as usize, 0);
                if let Err(source) = reader.file().read_exact_at(buf, first.offset) {
                    // Cut short since the restore began: says how much is missing.
                    let got = reader.file().metadata().map_or(0, |m| m.len());
                    let expected = first.offset + buf.len() as u64;
                    return Err(match source.kind() {
                        std::io::ErrorKind::UnexpectedEof if got < expected => FormatError::Truncated {
                            path: path.to_path_buf(),
                            what: "page store",
                            expected,
                            got,
                        },
                        _ => FormatError::Io {
                            path: path.to_path_buf(),
                            source,
                        },
                    });
                }
                for r in runs.iter().map(|&i| &self.runs[i as usize]) {
                    let off = (r.addr - seg.start) as usize;
                    if crc32c::crc32c(&buf[off..off + r.len as usize]) != r.crc {
                        return Err(FormatError::Checksum {
                            path: path.to_path_buf(),
                            what: format!("pages at {:#x} (+{} bytes, file offset {})", r.addr, r.len, r.offset),
                        });
                    }
                }
                Ok(seg.start)
            }
        }
    }
}

/// Appends to `out` the stretches of [s, e) each of `runs` owns (the last run holding a page
/// owns it); `base` is the index of `runs[0]`.
fn owners(runs: &[PageRun], base: usize, s: u64, e: u64, out: &mut Vec<Piece>) {
    let clip = |r: &PageRun| (r.addr.max(s), (r.addr + r.len).min(e));
    // Usually no two runs overlap (one store, no ancestor): every run owns all of itself.
    let mut sorted: Vec<(u64, u64, usize)> = runs
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let (a, b) = clip(r);
            (a, b, i)
        })
        .filter(|(a, b, _)| a < b)
        .collect();
    // An image lists its runs in a few stretches each in address order (copied before the
    // stop, then at it): the stable sort merges them.
    sorted.sort_by_key(|p| p.0);
    // Runs that overlap none other own all of themselves; each cluster of overlapping ones is
    // swept.
    let mut i = 0;
    while i < sorted.len() {
        let (mut j, mut end) = (i + 1, sorted[i].1);
        while j < sorted.len() && sorted[j].0 < end {
            end = end.max(sorted[j].1);
            j += 1;
        }
        if j == i + 1 {
            let (start, end, r) = sorted[i];
            out.push(Piece {
                start,
                end,
                run: base + r,
            });
        } else {
            sweep(&sorted[i..j], base, out);
        }
        i = j;
    }
}

/// Owners within overlapping runs (start, end, index; sorted by start): between two of their
/// ends, the newest run (highest index) that covers the stretch owns it.
fn sweep(runs: &[(u64, u64, usize)], base: usize, out: &mut Vec<Piece>) {
    let mut bounds: Vec<u64> = runs.iter().flat_map(|&(a, b, _)| [a, b]).collect();
    bounds.sort_unstable();
    bounds.dedup();
    let mut active: BinaryHeap<(usize, u64)> = BinaryHeap::new();
    let mut next = 0;
    let first = out.len();
    for w in bounds.windows(2) {
        let (x, y) = (w[0], w[1]);
        while next < runs.len() && runs[next].0 <= x {
            active.push((runs[next].2, runs[next].1));
            next += 1;
        }
        while active.peek().is_some_and(|&(_, end)| end <= x) {
            active.pop();
        }
        let Some(&(i, _)) = active.peek() else { continue };
        let mine = out.len() > first;
        match out.last_mut() {
            Some(p) if mine && p.run == base + i && p.end == x => p.end = y,
            _ => out.push(Piece {
                start: x,
                end: y,
                run: base + i,
            }),
        }
    }
}

/// Groups sorted pieces into segments: whole uncompressed runs that follow each other in memory
/// and in one store are read together. Returns the order of the runs the direct reads take.
fn segments(runs: &[PageRun], pieces: &[Piece]) -> (Vec<u32>, Vec<Segment>) {
    let mut out: Vec<Segment> = Vec::new();
    let mut order: Vec<u32> = Vec::with_capacity(pieces.len());
    for p in pieces {
        let r = &runs[p.run];
        let whole = p.start == r.addr && p.end == r.addr + r.len && r.clen == 0;
        if !whole {
            out.push(Segment {
                start: p.start,
                end: p.end,
                how: Read::Part { run: p.run },
            });
            continue;
        }
        if let Some(last) = out.last_mut() {
            if let Read::Direct { to, .. } = &mut last.how {
                let prev = &runs[order[*to - 1] as usize];
                // The runs of a segment are the last ones in `order`.
                if *to == order.len()
                    && last.end == p.start
                    && prev.store == r.store
                    && prev.offset + prev.len == r.offset
                    && last.end - last.start + r.len <= SEGMENT_MAX
                {
                    order.push(p.run as u32);
                    *to += 1;
                    last.end = p.end;
                    continue;
                }
            }
        }
        order.push(p.run as u32);
        out.push(Segment {
            start: p.start,
            end: p.end,
            how: Read::Direct {
                from: order.len() - 1,
                to: order.len(),
            },
        });
    }
    (order, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(addr: u64, len: u64, offset: u64) -> PageRun {
        PageRun {
            addr,
            len,
            store: 0,
            offset,
            crc: 0,
            clen: 0,
        }
    }

    #[test]
    fn runs_next_to_each_other_are_read_together() {
        // Out of order in the image; back to back in memory and store but for the last one.
        let runs = vec![
            run(0x2000, 0x1000, 0x2000),
            run(0x1000, 0x1000, 0x1000),
            run(0x3000, 0x1000, 0x9000),
        ];
        let mut pieces = Vec::new();
        owners(&runs, 0, 0, 0x10000, &mut pieces);
        pieces.sort_unstable_by_key(|p| p.start);
        let (_, segs) = segments(&runs, &pieces);
        let bounds: Vec<(u64, u64)> = segs.iter().map(|s| (s.start, s.end)).collect();
        assert_eq!(bounds, vec![(0x1000, 0x3000), (0x3000, 0x4000)]);
    }

    #[test]
    fn an_older_run_keeps_what_a_newer_one_leaves() {
        let runs = vec![run(0x1000, 0x4000, 0), run(0x2000, 0x1000, 0x4000)];
        let mut pieces = Vec::new();
        owners(&runs, 0, 0, 0x10000, &mut pieces);
        let got: Vec<(u64, u64, usize)> = pieces.iter().map(|p| (p.start, p.end, p.run)).collect();
        assert_eq!(got, vec![(0x1000, 0x2000, 0), (0x2000, 0x3000, 1), (0x3000, 0x5000, 0)]);
        let (_, segs) = segments(&runs, &pieces);
        assert!(matches!(segs[0].how, Read::Part { run: 0 }));
        assert!(matches!(segs[1].how, Read::Direct { .. }));
        // An older run over a newer one, one past the end of the range, one newer over all.
        let runs = vec![
            run(0x2000, 0x1000, 0),
            run(0x1000, 0x4000, 0x1000),
            run(0x4000, 0x4000, 0x5000),
            run(0x1000, 0x1000, 0x9000),
        ];
        let mut pieces = Vec::new();
        owners(&runs, 7, 0x1000, 0x6000, &mut pieces);
        let got: Vec<(u64, u64, usize)> = pieces.iter().map(|p| (p.start, p.end, p.run)).collect();
        assert_eq!(
            got,
            vec![(0x1000, 0x2000, 10), (0x2000, 0x4000, 8), (0x4000, 0x6000, 9)]
        );
    }
}
