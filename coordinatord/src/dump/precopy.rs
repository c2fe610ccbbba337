//! Pre-copy: while the program still runs, the pages of its tracked memory written since its
//! last checkpoint (all populated pages when there is none) are read and the tracking is
//! re-armed; once it is parked, only what was written since has to be copied. This keeps the
//! stop short whatever the size of the memory.

use super::copy::{walk_pages, Batch, Pool};
use super::memory::{inherited_runs, merge_ranges, renumber, run_ranges, store_numbers};
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

/// Rounds of pre-copy at most: each copies what was written during the one before.
const MAX_ROUNDS: usize = 4;
/// A round that finds fewer pages written than this is the last: the stop copies the rest.
const SETTLED_PAGES: u64 = 256;

/// Copies what a checkpoint against `base` needs of the tracked memory of `pid`, which runs;
/// `own_store` is the new checkpoint's page store, as its image will name it. Like a live
/// migration, it copies again what was written during the copy, in rounds, while the rounds
/// get smaller; what a program keeps rewriting faster than that is left to the stop. Past
/// `deadline` it gives up, between mappings (a mapping whose tracking it re-armed is always
/// copied): a mapping it did not reach is read by the stop as if there were no pre-copy.
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
            tracing::info!(pid, "pre-copy out of time; the stop copies the rest");
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
        walk_pages(pid, &mem, &mut out.pool, &taken.all(), |b| {
            m.batches.push(b);
            Ok(())
        })
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
            walk_pages(pid, &mem, &mut out.pool, &again, |b| {
                m.batches.push(b);
                Ok(())
            })
            .map_err(|e| e.into_dump(pid))?;
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
    out.tracked = tracked;
    Ok(out)
}
