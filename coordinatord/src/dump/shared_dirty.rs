//! Dirty tracking of memory several processes share (shared anonymous memory, memfds).
//!
//! Each process registers its mappings of such memory with its own async write-protect
//! userfaultfd (the interposer's `pages`), but the kernel keeps the protection in each
//! process's page tables: a page one process wrote is written only in its own. So the pages
//! of one piece of memory written since the previous checkpoint are the union, over every
//! process that maps it, of what each wrote through its own mapping; they are taken (and
//! protected again) for all holders at once, while the host is parked.
//!
//! That union is only complete when no process that could have written to the memory since
//! the previous checkpoint has taken its page tables away: one that exited, exec'd or unmapped
//! it, or a child forked since (its page tables start empty and untracked, and it may have
//! exited already). So the memory is read in full, and the log says why, unless exactly the
//! same processes map it at exactly the same places as at the previous checkpoint (which
//! this node remembers, see [`Seen`]), each with that checkpoint as its base, none of them
//! has made a child since (the interposer counts them, `ProcSlot::forks`), and every mapping
//! of it is still registered.

use ckpt_proto::slots::ProcSlot;
use ckpt_sys::procfs::{self, MapEntry};
use std::collections::HashMap;
use std::os::unix::fs::FileExt;

/// One piece of shared memory: the device and inode of its mappings.
type Key = (u32, u32, u64);

/// Address or offset ranges [start, end), sorted and merged.
type Ranges = Vec<(u64, u64)>;

/// A process's mapping of a piece of shared memory.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Debug)]
struct Holding {
    key: Key,
    start: u64,
    end: u64,
    /// Offset in the memory.
    offset: u64,
}

#[derive(Clone, Default)]
struct ProcSeen {
    forks: u64,
    holdings: Vec<Holding>,
}

/// What one checkpoint saw of its host's shared memory: kept by the node once the checkpoint
/// is committed, as what the next one is checked against.
#[derive(Default)]
pub struct Seen {
    /// The checkpoint.
    pub id: String,
    procs: HashMap<i32, ProcSeen>,
}

/// What a checkpoint needs of one mapping of tracked shared memory, as address ranges.
#[derive(Default)]
pub struct Pages {
    /// Written since the previous checkpoint through any of the memory's mappings.
    pub written: Ranges,
    /// Where the memory holds data now.
    pub data: Ranges,
}

/// Per process, per mapping start: the [`Pages`] of each mapping of shared memory whose
/// written pages are known. A tracked mapping that is not here is read in full.
pub type Written = HashMap<i32, HashMap<u64, Pages>>;

/// Where a window (offset, length) of a piece of memory holds data, as offsets: asked once per
/// window and checkpoint (the kernel walks the memory's pages to tell), however many
/// processes map it.
type DataMaps = HashMap<(Key, u64, u64), Ranges>;

/// A parked process, as [`take`] needs it.
pub struct Parked<'a> {
    pub pid: i32,
    /// Where the interposer's slots are in its memory.
    pub slot_addr: u64,
    /// The checkpoint its image will be based on, if any.
    pub base: Option<&'a str>,
}

/// Whether `e` maps memory whose pages are tracked here: shared anonymous memory or a memfd
/// (the interposer registers exactly these; see its `pages`).
pub fn tracked(e: &MapEntry) -> bool {
    let p = e.path.as_str();
    e.shared && (p == "/dev/zero (deleted)" || (p.starts_with("/memfd:") && p.ends_with(" (deleted)")))
}

/// Takes, for the parked processes of a host, what each piece of their shared memory had
/// written since the checkpoint `last` saw, protecting every page again; returns it and what
/// this checkpoint sees (its `id` to be set once committed). Memory that cannot be told
/// precisely is left out of the answer (read in full), with the reason in the log.
pub fn take(parked: &[Parked<'_>], last: Option<&Seen>) -> (Written, Seen) {
    let mut seen = Seen::default();
    // By memory: offsets written, or None once one of its mappings cannot say.
    let mut written: HashMap<Key, Option<Ranges>> = HashMap::new();
    let mut data = DataMaps::new();
    let mut unreadable = None;
    for p in parked {
        match look(p, &mut written, &mut data) {
            Ok(s) => {
                seen.procs.insert(p.pid, s);
            }
            Err(e) => unreadable = Some(format!("process {}: {e}", p.pid)),
        }
    }
    if let Some(why) = unreadable {
        // What this checkpoint saw is incomplete: the next one reads everything too.
        tracing::info!(why, "shared memory read in full");
        return (Written::new(), Seen::default());
    }
    let base_of: HashMap<i32, Option<&str>> = parked.iter().map(|p| (p.pid, p.base)).collect();
    let mut out = Written::new();
    for (key, offsets) in written {
        let now = holders(&seen, key);
        let why = match (last, offsets) {
            (None, _) => Err("no previous checkpoint of this host tracked it".to_string()),
            (_, None) => Err("a mapping of it is not registered for tracking".to_string()),
            (Some(last), Some(offsets)) => check(key, &now, last, &seen, &base_of).map(|()| offsets),
        };
        let offsets = match why {
            Ok(o) => super::memory::merge_ranges(o),
            Err(why) => {
                let (major, minor, ino) = key;
                // The first checkpoint of a program always is: not worth more than debug.
                if last.is_some() {
                    tracing::info!(
                        memory = format!("{major}:{minor}/{ino}"),
                        why,
                        "shared memory read in full"
                    );
                } else {
                    tracing::debug!(
                        memory = format!("{major}:{minor}/{ino}"),
                        why,
                        "shared memory read in full"
                    );
                }
                continue;
            }
        };
        for (pid, h) in now {
            let pages = Pages {
                written: to_addresses(&offsets, &h),
                data: data
                    .get(&(key, h.offset, h.end - h.start))
                    .map_or_else(|| vec![(h.start, h.end)], |d| to_addresses(d, &h)),
            };
            out.entry(pid).or_default().insert(h.start, pages);
        }
    }
    (out, seen)
}

/// The parts of `offsets` (in the memory) that mapping `h` maps, as its addresses.
fn to_addresses(offsets: &[(u64, u64)], h: &Holding) -> Ranges {
    let len = h.end - h.start;
    offsets
        .iter()
        .filter(|&&(s, e)| e > h.offset && s < h.offset + len)
        .map(|&(s, e)| {
            (
                h.start + s.max(h.offset) - h.offset,
                h.start + e.min(h.offset + len) - h.offset,
            )
        })
        .collect()
}

/// Reads one parked process's fork count and its mappings of tracked shared memory, taking what
/// each had written (protected again), as offsets in the memory, into `written`; `data`
/// gains where the windows they map hold data.
fn look(p: &Parked<'_>, written: &mut HashMap<Key, Option<Ranges>>, data: &mut DataMaps) -> std::io::Result<ProcSeen> {
    let pid = p.pid;
    let maps = procfs::maps(pid).map_err(std::io::Error::other)?;
    let mem = std::fs::File::open(format!("/proc/{pid}/mem"))?;
    let mut forks = [0u8; 8];
    mem.read_exact_at(&mut forks, p.slot_addr + ProcSlot::FORKS_OFFSET)?;
    let mut s = ProcSeen {
        forks: u64::from_ne_bytes(forks),
        holdings: Vec::new(),
    };
    let mut pagemap = None;
    for e in maps.iter().filter(|e| tracked(e)) {
        let key = (e.dev_major, e.dev_minor, e.inode);
        s.holdings.push(Holding {
            key,
            start: e.start,
            end: e.end,
            offset: e.offset,
        });
        if pagemap.is_none() {
            pagemap = Some(std::fs::File::open(format!("/proc/{pid}/pagemap"))?);
        }
        let Some(pm) = pagemap.as_ref() else { continue };
        // Every holder's protection is renewed, whatever becomes of this memory now: the next
        // checkpoint can then count on it.
        let window = (key, e.offset, e.end - e.start);
        let held = data.entry(window).or_insert_with(|| {
            let addrs =
                procfs::mapped_file_data(pid, e.start, e.end, e.offset).unwrap_or_else(|| vec![(e.start, e.end)]);
            addrs
                .into_iter()
                .map(|(s, end)| (s - e.start + e.offset, end - e.start + e.offset))
                .collect()
        });
        let h = Holding {
            key,
            start: e.start,
            end: e.end,
            offset: e.offset,
        };
        let taken = take_one(pm, e, &to_addresses(held, &h));
        let entry = written.entry(key).or_insert_with(|| Some(Vec::new()));
        match (taken, entry.as_mut()) {
            (Ok(ranges), Some(v)) => v.extend(
                ranges
                    .into_iter()
                    .map(|(s, end)| (s - e.start + e.offset, end - e.start + e.offset)),
            ),
            // Not registered (the interposer could not, or the mapping was made or moved since
            // it registered): nothing tells what was written through it.
            (Err(_), _) => *entry = None,
            (Ok(_), None) => {}
        }
    }
    Ok(s)
}

/// The ranges of `e` written since they were last protected, protected again where the memory
/// holds data (`data`, addresses). Every process is parked, so nothing is written between the look and the
/// protection. A page written where the memory holds none now (a hole of a big, sparse
/// reservation) is left unprotected, so that it costs no page table here: it reads as written
/// at every checkpoint, where the memory's data is read, which it is not part of until
/// written.
fn take_one(pagemap: &std::fs::File, e: &MapEntry, data: &[(u64, u64)]) -> std::io::Result<Ranges> {
    let written = ckpt_sys::pagemap::written(pagemap, e.start, e.end)?;
    let protect = super::memory::subtract(&written, &super::memory::subtract(&written, data));
    for (s, end) in protect {
        ckpt_sys::pagemap::take_written(pagemap, s, end)?;
    }
    Ok(written)
}

/// The mappings of memory `key` among the processes `seen` has, sorted.
fn holders(seen: &Seen, key: Key) -> Vec<(i32, Holding)> {
    let mut v: Vec<(i32, Holding)> = seen
        .procs
        .iter()
        .flat_map(|(&pid, s)| {
            s.holdings
                .iter()
                .filter(|h| h.key == key)
                .map(move |h| (pid, h.clone()))
        })
        .collect();
    v.sort();
    v
}

/// Whether the union of what the holders `now` of memory `key` wrote since the checkpoint
/// `last` saw is all that was written to it since; else why not.
fn check(
    key: Key,
    now: &[(i32, Holding)],
    last: &Seen,
    seen: &Seen,
    base_of: &HashMap<i32, Option<&str>>,
) -> Result<(), String> {
    if holders(last, key) != now {
        return Err("the processes mapping it, or where they map it, changed since the previous checkpoint".into());
    }
    for (pid, _) in now {
        if base_of.get(pid).copied().flatten() != Some(last.id.as_str()) {
            return Err(format!("process {pid} is not stored against the previous checkpoint"));
        }
        let forks = |s: &Seen| s.procs.get(pid).map(|p| p.forks);
        if forks(seen) != forks(last) {
            return Err(format!(
                "process {pid}, which maps it, made a child since the previous checkpoint"
            ));
        }
    }
    Ok(())
}
