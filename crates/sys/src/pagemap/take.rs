//! What a checkpoint takes of a tracked mapping: the pages that hold data (written since they
//! were last protected, or all of them), and the pages gone where an older copy exists,
//! protected again. The work and the protection follow those pages, not the mapping's size.

use super::{
    scan_regions, written, PmScanArg, Region, PAGE_IS_FILE, PAGE_IS_PFNZERO, PAGE_IS_PRESENT, PAGE_IS_SWAPPED,
    PAGE_IS_WRITTEN, PM_SCAN_CHECK_WPASYNC, PM_SCAN_WP_MATCHING,
};
use std::fs::File;
use std::io;

/// Sorted ranges [start, end), adjacent ones merged.
type Ranges = Vec<(u64, u64)>;

/// Pages that matter closer than this are protected in one call, with the pages between them:
/// a call costs more than walking this many page-table entries, and a gap this short lies in
/// page tables that exist already (its markers allocate nothing).
const ARM_GAP: u64 = 256 << 10;

/// Written ranges may exceed where older copies are by this much and still be protected
/// without a closer look (their holes cost at most this much address space in markers).
const DIRECT_SLACK: u64 = 64 << 20;

/// Which pages [`take`] looks for.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Take {
    /// Those written since they were last protected (an incremental copy).
    Written,
    /// All that hold data, written since or not (a full copy).
    All,
}

/// What [`take`] found; every page of it is protected again, so that only later writes show.
#[derive(Default, Debug, PartialEq, Eq)]
pub struct Taken {
    /// Pages holding data: present or swapped, not the zero page, and, in a private file
    /// mapping, copied away from the file.
    pub data: Ranges,
    /// Pages holding none (freed, only read, back to the file's contents) where an older copy
    /// exists: what reading them gives (zeros, the file's contents) must override that copy.
    pub gone: Ranges,
}

impl Taken {
    /// Both kinds, sorted and merged.
    pub fn all(&self) -> Ranges {
        let mut v: Ranges = self.data.iter().chain(&self.gone).copied().collect();
        v.sort_unstable();
        coalesce(v, 0)
    }

    pub fn bytes(&self) -> u64 {
        self.data.iter().chain(&self.gone).map(|r| r.1 - r.0).sum()
    }
}

/// The pages of [start, end) a checkpoint needs (see [`Take`]); `older` (sorted, merged) is
/// where an older copy of a page exists, `file` whether the mapping is a private file mapping.
/// Fails if the range is not registered for async write-protect.
///
/// Three looks: the kernel's fast scan finds the written ranges; unless they are about as big
/// as the older copies, a scan of those alone tells which pages hold data (cheap over holes,
/// which are skipped a page table at a time); only around those pages is the protection
/// renewed, with a scan that reports what it protected, so a page changed in between is
/// never lost.
pub fn take(pagemap: &File, start: u64, end: u64, file: bool, what: Take, older: &[(u64, u64)]) -> io::Result<Taken> {
    let report = PAGE_IS_PRESENT | PAGE_IS_SWAPPED | PAGE_IS_PFNZERO | if file { PAGE_IS_FILE } else { 0 };
    let (look, arm) = match what {
        Take::Written => (
            PmScanArg {
                flags: PM_SCAN_CHECK_WPASYNC,
                category_mask: PAGE_IS_WRITTEN,
                return_mask: report,
                ..Default::default()
            },
            // Everything written in the stretch is protected again, gone pages included (so
            // that they do not read as written next time).
            PmScanArg {
                flags: PM_SCAN_CHECK_WPASYNC | PM_SCAN_WP_MATCHING,
                category_mask: PAGE_IS_WRITTEN,
                return_mask: report,
                ..Default::default()
            },
        ),
        Take::All => {
            // Pages that exist, written since or not; of them the kernel protects the written.
            let exist = PmScanArg {
                flags: PM_SCAN_CHECK_WPASYNC,
                category_anyof_mask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
                return_mask: report,
                ..Default::default()
            };
            (
                exist,
                PmScanArg {
                    flags: exist.flags | PM_SCAN_WP_MATCHING,
                    ..exist
                },
            )
        }
    };
    let around = match what {
        Take::Written => coalesce(written(pagemap, start, end)?, ARM_GAP),
        Take::All => vec![(start, end)],
    };
    // Written ranges no bigger than where older copies are (plus a little) are protected as
    // they are: whatever holes they hold cost markers in proportion to the data. Otherwise
    // they are narrowed to the pages that matter first.
    let size = |v: &[(u64, u64)]| v.iter().map(|r| r.1 - r.0).sum::<u64>();
    let older_here = intersect(start, end, older).map(|r| r.1 - r.0).sum::<u64>();
    let wanted = if what == Take::Written && size(&around) <= older_here.saturating_add(DIRECT_SLACK) {
        around
    } else {
        let mut wanted = Vec::new();
        for (s, e) in around {
            wanted.extend(split(&scan_regions(pagemap, s, e, &look)?, older).all());
        }
        coalesce(wanted, ARM_GAP)
    };
    let mut out = Taken::default();
    for (s, e) in wanted {
        let found = split(&scan_regions(pagemap, s, e, &arm)?, older);
        out.data.extend(found.data);
        out.gone.extend(found.gone);
    }
    out.data = coalesce(out.data, 0);
    out.gone = coalesce(out.gone, 0);
    Ok(out)
}

/// Whether pages of these categories hold data of their own.
fn holds_data(categories: u64) -> bool {
    categories & (PAGE_IS_PRESENT | PAGE_IS_SWAPPED) != 0 && categories & (PAGE_IS_FILE | PAGE_IS_PFNZERO) == 0
}

/// Sorts scanned regions into data, and pages holding none within `older`.
fn split(regions: &[Region], older: &[(u64, u64)]) -> Taken {
    let mut out = Taken::default();
    for &(s, e, c) in regions {
        if holds_data(c) {
            out.data.push((s, e));
        } else {
            out.gone.extend(intersect(s, e, older));
        }
    }
    out
}

/// The parts of `ranges` (sorted, merged) within [s, e).
fn intersect(s: u64, e: u64, ranges: &[(u64, u64)]) -> impl Iterator<Item = (u64, u64)> + '_ {
    let first = ranges.partition_point(|&(_, re)| re <= s);
    ranges[first..]
        .iter()
        .take_while(move |&&(rs, _)| rs < e)
        .map(move |&(rs, re)| (rs.max(s), re.min(e)))
}

/// Sorted ranges with those closer than `gap` joined.
fn coalesce(v: Ranges, gap: u64) -> Ranges {
    let mut out: Ranges = Vec::with_capacity(v.len());
    for (s, e) in v {
        match out.last_mut() {
            Some(last) if s <= last.1.saturating_add(gap) => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::uffd;
    use std::os::fd::AsFd;

    const PAGE: u64 = 4096;

    fn vm_pte_kib() -> u64 {
        let s = std::fs::read_to_string("/proc/self/status").unwrap();
        s.lines()
            .find_map(|l| l.strip_prefix("VmPTE:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    #[test]
    fn ranges_helpers() {
        assert_eq!(coalesce(vec![(0, 10), (10, 20), (25, 30)], 0), vec![(0, 20), (25, 30)]);
        assert_eq!(coalesce(vec![(0, 10), (15, 20)], 5), vec![(0, 20)]);
        let older = [(0, 10), (20, 30), (40, 50)];
        assert_eq!(
            intersect(5, 45, &older).collect::<Vec<_>>(),
            vec![(5, 10), (20, 30), (40, 45)]
        );
        assert_eq!(intersect(10, 20, &older).count(), 0);
    }

    /// A 64 GiB reservation with a few pages written: taking it costs page tables for those
    /// pages only, finds exactly them, and then what was written, freed or only read since.
    #[test]
    fn sparse_reservation_is_taken_page_by_page() {
        let len: u64 = 64 << 30;
        // SAFETY: a fresh private anonymous reservation, unmapped at the end of the test.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        assert_ne!(base, libc::MAP_FAILED);
        let b = base as u64;
        let Ok(fd) = uffd::open(0, uffd::FEATURE_WP_ASYNC | uffd::FEATURE_WP_UNPOPULATED).or_else(|_| {
            uffd::open(
                uffd::USER_MODE_ONLY,
                uffd::FEATURE_WP_ASYNC | uffd::FEATURE_WP_UNPOPULATED,
            )
        }) else {
            eprintln!("SKIPPED: no userfaultfd with async write-protect here");
            return;
        };
        uffd::register_wp(fd.as_fd(), b, len).unwrap();
        let poke = |off: u64, v: u8| {
            // SAFETY: inside the reservation.
            unsafe { std::ptr::write_volatile((b + off) as *mut u8, v) }
        };
        let peek = |off: u64| {
            // SAFETY: inside the reservation.
            unsafe { std::ptr::read_volatile((b + off) as *const u8) }
        };
        // Pages written at 0, 1 GiB, 1 GiB + 1 page, 40 GiB; one page only read at 20 GiB.
        for off in [0, 1 << 30, (1 << 30) + PAGE, 40 << 30] {
            poke(off, 7);
        }
        assert_eq!(peek(20 << 30), 0);
        let pagemap = File::open("/proc/self/pagemap").unwrap();
        let pte_before = vm_pte_kib();
        let t = take(&pagemap, b, b + len, false, Take::All, &[]).unwrap();
        let at = |off: u64, pages: u64| (b + off, b + off + pages * PAGE);
        assert_eq!(t.data, vec![at(0, 1), at(1 << 30, 2), at(40 << 30, 1)]);
        assert!(t.gone.is_empty());
        // Nothing was protected outside those pages: no page tables were filled.
        assert!(
            vm_pte_kib() <= pte_before + 64,
            "VmPTE grew from {pte_before} kB to {} kB",
            vm_pte_kib()
        );
        // Nothing written since: nothing to take.
        let older = t.data.clone();
        assert_eq!(
            take(&pagemap, b, b + len, false, Take::Written, &older).unwrap(),
            Taken::default()
        );
        // A new page, one rewritten, one freed where an older copy exists.
        poke(30 << 30, 1);
        poke(1 << 30, 9);
        // SAFETY: discards one page of the reservation.
        assert_eq!(
            unsafe { libc::madvise((b + (40 << 30)) as *mut _, PAGE as usize, libc::MADV_DONTNEED) },
            0
        );
        let t = take(&pagemap, b, b + len, false, Take::Written, &older).unwrap();
        assert_eq!(t.data, vec![at(1 << 30, 1), at(30 << 30, 1)]);
        assert_eq!(t.gone, vec![at(40 << 30, 1)]);
        // All protected again, the freed page too.
        assert_eq!(
            take(&pagemap, b, b + len, false, Take::Written, &older).unwrap(),
            Taken::default()
        );
        assert!(
            vm_pte_kib() <= pte_before + 64,
            "VmPTE grew from {pte_before} kB to {} kB",
            vm_pte_kib()
        );
        // SAFETY: the reservation mapped above.
        unsafe { libc::munmap(base, len as usize) };
    }
}
