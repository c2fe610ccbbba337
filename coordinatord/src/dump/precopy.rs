//! Pre-copy: while the program still runs, the pages of its tracked memory written since its
//! last checkpoint (all populated pages when there is none) are read and the tracking is
//! re-armed; once it is parked, only what was written since has to be copied. This keeps the
//! stop short whatever the size of the memory.

use super::copy::{walk_pages, Batch, Pool};
use super::memory::{inherited_runs, merge_ranges, renumber, run_ranges, store_numbers, subtract};
use super::DumpError;
use ckpt_format::ProcessImage;
use ckpt_sys::pagemap::{take, Take};
use ckpt_sys::procfs;
use std::collections::HashMap;
use std::fs::File;

/// What was copied of one tracked mapping before the stop.
#[derive(Default)]
pub struct PreMapping {
    /// Pages as they were when read (a later write shows up in the tracking).
    pub batches: Vec<Batch>,
    /// The base's runs this mapping still needs (store numbers as in the new checkpoint).
    pub inherited: Vec<ckpt_format::PageRun>,
    /// Where an older copy of a page exists (inherited runs, copied pages), sorted and merged.
    pub cover: Vec<(u64, u64)>,
    /// Pages whose tracking was re-armed but which were not copied (out of time), sorted and
    /// merged: no write since shows them, so the stop reads them whatever it finds written.
    /// They are in neither `batches` nor `cover`.
    pub pending: Vec<(u64, u64)>,
}

/// A process's memory copied before the stop.
#[derive(Default)]
pub struct Precopy {
    /// By mapping (start, end).
    pub mappings: HashMap<(u64, u64), PreMapping>,
    /// Mappings registered for tracking at the time.
    pub tracked: Vec<(u64, u64)>,
    /// Buffers of copies superseded since.
    pub pool: Pool,
}

fn anonymous(path: &str) -> bool {
    path.is_empty() || path == "[heap]" || path == "[stack]" || path.starts_with("[anon:")
}

/// A private mapping of a file that is still there: its pages copied on write are tracked.
fn file_backed(path: &str) -> bool {
    path.starts_with('/') && !path.starts_with("/dev/") && !path.ends_with(" (deleted)")
}

/// Where an older copy of a page exists: the base's runs still in use, pages copied so far.
fn cover_of(m: &PreMapping) -> Vec<(u64, u64)> {
    merge_ranges(
        run_ranges(&m.inherited)
            .chain(m.batches.iter().flat_map(|b| b.ranges()))
            .collect(),
    )
}

/// Pages are copied in pieces of this much, the deadline looked at between them: at most one
/// piece is copied once it has passed.
const PIECE_BYTES: u64 = 4 << 20;

/// Copies `ranges` (sorted, merged, their tracking just re-armed) of a mapping into `m`'s
/// batches, piece by piece; once `late`, what is left joins `m.pending` for the stop.
fn copy_pieces(
    pid: i32,
    mem: &File,
    pool: &mut Pool,
    ranges: &[(u64, u64)],
    m: &mut PreMapping,
    late: &impl Fn() -> bool,
) -> Result<(), DumpError> {
    // The next page to copy: in ranges[i], from `at`.
    let (mut i, mut at) = (0, ranges.first().map_or(0, |r| r.0));
    while i < ranges.len() {
        if late() {
            let left = std::iter::once((at, ranges[i].1)).chain(ranges[i + 1..].iter().copied());
            m.pending = merge_ranges(m.pending.drain(..).chain(left).collect());
            break;
        }
        let (mut piece, mut bytes) = (Vec::new(), 0);
        while i < ranges.len() && bytes < PIECE_BYTES {
            let take = (ranges[i].1 - at).min(PIECE_BYTES - bytes);
            piece.push((at, at + take));
            bytes += take;
            at += take;
            if at == ranges[i].1 {
                i += 1;
                at = ranges.get(i).map_or(0, |r| r.0);
            }
        }
        walk_pages(pid, mem, pool, &piece, |b| {
            m.batches.push(b);
            Ok(())
        })
        .map_err(|e| e.into_dump(pid))?;
    }
    Ok(())
}

/// Rounds of pre-copy at most: each copies what was written during the one before.
const MAX_ROUNDS: usize = 4;
/// A round that finds fewer pages written than this is the last: the stop copies the rest.
const SETTLED_PAGES: u64 = 256;

/// Copies what a checkpoint against `base` needs of the tracked memory of `pid`, which runs;
/// `own_store` is the new checkpoint's page store, as its image will name it. Like a live
/// migration, it copies again what was written during the copy, in rounds, while the rounds
/// get smaller; what a program keeps rewriting faster than that is left to the stop. Past
/// `deadline` it gives up, between pieces of a mapping: a mapping it did not reach is read by
/// the stop as if there were no pre-copy, and what it re-armed but did not copy is pending.
pub fn precopy(
    pid: i32,
    own_store: String,
    base: Option<&ProcessImage>,
    deadline: std::time::Instant,
) -> Result<Precopy, DumpError> {
    let late = || std::time::Instant::now() >= deadline;
    let (_, store_map) = store_numbers(own_store, base);
    let io = |what: &str| super::io_err(pid, what);
    let maps = procfs::maps(pid).map_err(|e| DumpError::Proc(e, pid))?;
    let tracked = procfs::uffd_wp_ranges(pid).map_err(|e| DumpError::Proc(e, pid))?;
    let mem = File::open(format!("/proc/{pid}/mem")).map_err(io("memory"))?;
    let pagemap = File::open(format!("/proc/{pid}/pagemap")).map_err(io("pagemap"))?;
    let mut out = Precopy::default();
    let regions: Vec<&procfs::MapEntry> = maps
        .iter()
        .filter(|e| !e.shared && (anonymous(&e.path) || file_backed(&e.path)) && tracked.contains(&(e.start, e.end)))
        .collect();
    for e in &regions {
        // Out of time: a mapping not reached is read by the stop as without a pre-copy
        // (one replaced meanwhile, no longer registered, as untracked).
        if late() {
            break;
        }
        let file = file_backed(&e.path);
        let mut m = PreMapping::default();
        // Against a base: what was written since it, and what is gone where its runs are.
        // Without one: every page holding data.
        let taken = match base {
            Some(b) => {
                let older = merge_ranges(run_ranges(&inherited_runs(b, e.start, e.end, &[])).collect());
                let t = take(&pagemap, e.start, e.end, file, Take::Written, &older).map_err(io("written pages"))?;
                // Worked out now rather than while the program is stopped.
                m.inherited = renumber(inherited_runs(b, e.start, e.end, &t.all()), &store_map)
                    .ok_or(DumpError::BadBase { pid })?;
                t
            }
            None => take(&pagemap, e.start, e.end, file, Take::All, &[]).map_err(io("tracking"))?,
        };
        // Kept even if out of time before its first piece: what was re-armed is pending.
        copy_pieces(pid, &mem, &mut out.pool, &taken.all(), &mut m, &late)?;
        out.mappings.insert((e.start, e.end), m);
    }
    let copied = |out: &Precopy| -> u64 {
        out.mappings
            .values()
            .flat_map(|m| m.batches.iter())
            .flat_map(|b| b.runs.iter())
            .map(|r| r.2 as u64 / ckpt_format::PAGE_SIZE)
            .sum()
    };
    let mut last = copied(&out);
    for _ in 1..MAX_ROUNDS {
        let mut pages = 0;
        for e in &regions {
            if late() {
                break;
            }
            let Some(m) = out.mappings.get_mut(&(e.start, e.end)) else {
                continue;
            };
            // Not registered any more: the stop reads all of it.
            let older = cover_of(m);
            let Ok(again) = take(&pagemap, e.start, e.end, file_backed(&e.path), Take::Written, &older) else {
                continue;
            };
            if again.data.is_empty() && again.gone.is_empty() {
                continue;
            }
            pages += again.bytes() / ckpt_format::PAGE_SIZE;
            let again = again.all();
            for b in &mut m.batches {
                if let Some(buf) = b.drop_ranges(&again, true) {
                    out.pool.give(buf);
                }
            }
            m.batches.retain(|b| !b.runs.is_empty());
            m.pending = subtract(&m.pending, &again);
            copy_pieces(pid, &mem, &mut out.pool, &again, m, &late)?;
        }
        tracing::debug!(pid, pages, "pre-copy round");
        // Settled, or not getting smaller: the program writes as fast as this copies.
        if pages < SETTLED_PAGES || pages * 2 > last || late() {
            break;
        }
        last = pages;
    }
    for m in out.mappings.values_mut() {
        m.cover = cover_of(m);
    }
    let pending: u64 = out.mappings.values().flat_map(|m| &m.pending).map(|r| r.1 - r.0).sum();
    let not_reached = regions.len() - out.mappings.len();
    if pending > 0 || not_reached > 0 {
        tracing::info!(
            pid,
            pending_kib = pending >> 10,
            not_reached,
            "pre-copy out of time; the stop copies the rest"
        );
    }
    out.tracked = tracked;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    /// Out of time part-way through a mapping: what was copied and what is pending are
    /// disjoint and make up every page asked for, and the copies hold the memory's content.
    #[test]
    fn out_of_time_inside_a_mapping_leaves_the_rest_pending() {
        let page = ckpt_format::PAGE_SIZE;
        let buf: Vec<u8> = (0..(14 << 20)).map(|i: usize| (i / 4096 % 251) as u8 ^ 0x5a).collect();
        let base = (buf.as_ptr() as u64).div_ceil(page) * page;
        // 3 pages, a hole, then 9 MiB: 4 MiB pieces are cut inside the second range.
        let ranges = vec![(base, base + 3 * page), (base + 4 * page, base + 4 * page + (9 << 20))];
        // In time for two pieces.
        let looks = Cell::new(0);
        let late = || {
            looks.set(looks.get() + 1);
            looks.get() > 2
        };
        let mem = File::open("/proc/self/mem").unwrap();
        let mut m = PreMapping::default();
        let pid = std::process::id() as i32;
        assert!(copy_pieces(pid, &mem, &mut Pool::default(), &ranges, &mut m, &late).is_ok());
        let copied = merge_ranges(m.batches.iter().flat_map(|b| b.ranges()).collect());
        let bytes = |v: &[(u64, u64)]| v.iter().map(|r| r.1 - r.0).sum::<u64>();
        assert_eq!(bytes(&copied), 2 * PIECE_BYTES);
        assert_eq!(subtract(&copied, &m.pending), copied, "copied and pending overlap");
        assert_eq!(merge_ranges(copied.iter().chain(&m.pending).copied().collect()), ranges);
        for b in &m.batches {
            for &(a, off, len) in &b.runs {
                let at = (a - buf.as_ptr() as u64) as usize;
                assert!(
                    b.data[off..off + len] == buf[at..at + len],
                    "page at {a:#x} copied wrong"
                );
            }
        }
    }
}
