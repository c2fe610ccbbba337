//! Pre-copy: while the program still runs, the pages of its tracked memory written since its
//! last checkpoint (all populated pages when there is none) are read and the tracking is
//! re-armed; once it is parked, only what was written since has to be copied. This keeps the
//! stop short whatever the size of the memory.

use super::copy::{walk_pages, Batch, Pool};
use super::memory::{inherited_runs, inside, merge_ranges, renumber, store_numbers};
use super::DumpError;
use ckpt_format::ProcessImage;
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
        m.inherited
            .iter()
            .map(|r| (r.addr, r.addr + r.len))
            .chain(m.batches.iter().flat_map(|b| b.ranges()))
            .collect(),
    )
}

/// Which written pages to copy: those holding data (in a file mapping, those copied away from
/// the file), and those gone (freed, or only read since) where an older copy exists, which
/// their zeros (or the file's contents) must override.
fn wanted(older: &[(u64, u64)], file: bool) -> impl Fn(u64, u64) -> bool + '_ {
    move |v, addr| {
        let data = if file {
            ckpt_sys::pagemap::modified(v)
        } else {
            ckpt_sys::pagemap::holds_data(v)
        };
        data || inside(older, addr, addr + 1)
    }
}

/// Rounds of pre-copy at most: each copies what was written during the one before.
const MAX_ROUNDS: usize = 4;
/// A round that finds fewer pages written than this is the last: the stop copies the rest.
const SETTLED_PAGES: u64 = 256;

/// Copies what a checkpoint against `base` needs of the tracked memory of `pid`, which runs;
/// `own_store` is the new checkpoint's page store, as its image will name it. Like a live
/// migration, it copies again what was written during the copy, in rounds, while the rounds
/// get smaller; what a program keeps rewriting faster than that is left to the stop.
pub fn precopy(pid: i32, own_store: String, base: Option<&ProcessImage>) -> Result<Precopy, DumpError> {
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
        let mut m = PreMapping::default();
        let ranges = if base.is_some() {
            ckpt_sys::pagemap::written(&pagemap, e.start, e.end, true).map_err(io("written pages"))?
        } else {
            ckpt_sys::pagemap::protect_all(&pagemap, e.start, e.end).map_err(io("tracking"))?;
            vec![(e.start, e.end)]
        };
        // Worked out now rather than while the program is stopped.
        if let Some(b) = base {
            m.inherited = renumber(
                inherited_runs(b, e.start, e.end, &merge_ranges(ranges.clone())),
                &store_map,
            )
            .ok_or(DumpError::BadBase { pid })?;
        }
        let older = cover_of(&m);
        walk_pages(
            pid,
            &mem,
            &pagemap,
            &mut out.pool,
            &ranges,
            Some(&wanted(&older, file_backed(&e.path))),
            |b| {
                m.batches.push(b);
                Ok(())
            },
        )
        .map_err(|e| e.into_dump(pid))?;
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
            let Some(m) = out.mappings.get_mut(&(e.start, e.end)) else {
                continue;
            };
            // Not registered any more: the stop reads all of it.
            let Ok(again) = ckpt_sys::pagemap::written(&pagemap, e.start, e.end, true) else {
                continue;
            };
            if again.is_empty() {
                continue;
            }
            pages += again.iter().map(|r| (r.1 - r.0) / ckpt_format::PAGE_SIZE).sum::<u64>();
            let again = merge_ranges(again);
            let older = cover_of(m);
            for b in &mut m.batches {
                if let Some(buf) = b.drop_ranges(&again, true) {
                    out.pool.give(buf);
                }
            }
            m.batches.retain(|b| !b.runs.is_empty());
            let want = wanted(&older, file_backed(&e.path));
            walk_pages(pid, &mem, &pagemap, &mut out.pool, &again, Some(&want), |b| {
                m.batches.push(b);
                Ok(())
            })
            .map_err(|e| e.into_dump(pid))?;
        }
        tracing::debug!(pid, pages, "pre-copy round");
        // Settled, or not getting smaller: the program writes as fast as this copies.
        if pages < SETTLED_PAGES || pages * 2 > last {
            break;
        }
        last = pages;
    }
    for m in out.mappings.values_mut() {
        m.cover = cover_of(m);
    }
    out.tracked = tracked;
    Ok(out)
}
