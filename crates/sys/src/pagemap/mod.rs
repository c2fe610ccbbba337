//! The PAGEMAP_SCAN ioctl on /proc/PID/pagemap: which pages of a range hold data, which were
//! written since they were last write-protected (userfaultfd async write-protect), and
//! re-protecting them in the same call. Works on another process's pagemap.
//!
//! On a range registered for async write-protect, the kernel reports every page that holds
//! nothing (never touched, or freed) as written, and protecting such pages fills the page
//! tables with markers: one entry per page, a page table per 2 MiB. A sparse reservation of
//! terabytes must therefore never be protected whole; [`take`] protects only around the pages
//! that matter.

#[cfg(test)]
mod shmem_probe;
mod take;
pub use take::{take, Take, Taken};

use std::os::fd::AsRawFd;

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct PageRegion {
    start: u64,
    end: u64,
    categories: u64,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

/// `_IOWR('f', 16, struct pm_scan_arg)`.
const PAGEMAP_SCAN: u64 = (3 << 30) | ((std::mem::size_of::<PmScanArg>() as u64) << 16) | ((b'f' as u64) << 8) | 16;
const PM_SCAN_WP_MATCHING: u64 = 1;
const PM_SCAN_CHECK_WPASYNC: u64 = 2;
const PAGE_IS_WRITTEN: u64 = 1 << 1;
const PAGE_IS_FILE: u64 = 1 << 2;
const PAGE_IS_PRESENT: u64 = 1 << 3;
const PAGE_IS_SWAPPED: u64 = 1 << 4;
const PAGE_IS_PFNZERO: u64 = 1 << 5;

/// A stretch of pages [start, end) and the categories (PAGE_IS_*) the kernel reports of them.
type Region = (u64, u64, u64);

/// Runs PAGEMAP_SCAN over [start, end) with the given flags and category masks; the matching
/// regions, adjacent ones of the same categories merged.
fn scan_regions(pagemap: &std::fs::File, start: u64, end: u64, template: &PmScanArg) -> std::io::Result<Vec<Region>> {
    let mut out: Vec<Region> = Vec::new();
    let mut vec = vec![PageRegion::default(); 1024];
    let mut at = start;
    while at < end {
        let mut arg = PmScanArg {
            size: std::mem::size_of::<PmScanArg>() as u64,
            start: at,
            end,
            vec: vec.as_mut_ptr() as u64,
            vec_len: vec.len() as u64,
            walk_end: 0,
            ..*template
        };
        // SAFETY: arg and vec are valid for the ioctl; the kernel writes at most vec_len regions.
        let n = unsafe { libc::ioctl(pagemap.as_raw_fd(), PAGEMAP_SCAN as _, &mut arg) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        for r in &vec[..n as usize] {
            match out.last_mut() {
                Some(last) if last.1 == r.start && last.2 == r.categories => last.1 = r.end,
                _ => out.push((r.start, r.end, r.categories)),
            }
        }
        if arg.walk_end <= at {
            break;
        }
        at = arg.walk_end;
    }
    Ok(out)
}

/// Like [`scan_regions`], the matching ranges merged whatever their categories.
fn scan(pagemap: &std::fs::File, start: u64, end: u64, template: &PmScanArg) -> std::io::Result<Vec<(u64, u64)>> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (s, e, _) in scan_regions(pagemap, start, end, template)? {
        match out.last_mut() {
            Some(last) if last.1 == s => last.1 = e,
            _ => out.push((s, e)),
        }
    }
    Ok(out)
}

/// Ranges of [start, end) written since last protected, pages holding nothing included. The
/// kernel has a fast path for exactly this question: it is the cheapest look at a big range.
pub fn written(pagemap: &std::fs::File, start: u64, end: u64) -> std::io::Result<Vec<(u64, u64)>> {
    let arg = PmScanArg {
        flags: PM_SCAN_CHECK_WPASYNC,
        category_mask: PAGE_IS_WRITTEN,
        return_mask: PAGE_IS_WRITTEN,
        ..Default::default()
    };
    scan(pagemap, start, end, &arg)
}

/// Ranges of [start, end) written since they were last protected, protected again in the same
/// walk, holes included: in shared memory a page this process does not map (never touched
/// here, or dropped) says nothing of the memory's content, and what was written is all that
/// counts. Protecting a page this process does not map leaves a marker in its page table (a
/// page table per 2 MiB): the caller protects only where the memory holds data.
pub fn take_written(pagemap: &std::fs::File, start: u64, end: u64) -> std::io::Result<Vec<(u64, u64)>> {
    let arg = PmScanArg {
        flags: PM_SCAN_CHECK_WPASYNC | PM_SCAN_WP_MATCHING,
        category_mask: PAGE_IS_WRITTEN,
        return_mask: PAGE_IS_WRITTEN,
        ..Default::default()
    };
    scan(pagemap, start, end, &arg)
}

/// Ranges of [start, end) whose pages exist (present or swapped) and are not the zero page:
/// the only ones that can hold data. Much cheaper than reading the pagemap of a sparse range.
pub fn populated(pagemap: &std::fs::File, start: u64, end: u64) -> std::io::Result<Vec<(u64, u64)>> {
    let arg = PmScanArg {
        category_inverted: PAGE_IS_PFNZERO,
        category_mask: PAGE_IS_PFNZERO,
        category_anyof_mask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
        return_mask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
        ..Default::default()
    };
    scan(pagemap, start, end, &arg)
}

/// Ranges of [start, end), in a private file mapping, whose pages were copied away from the
/// file (present and anonymous, or swapped out): the only ones that differ from the file.
pub fn modified_private(pagemap: &std::fs::File, start: u64, end: u64) -> std::io::Result<Vec<(u64, u64)>> {
    let arg = PmScanArg {
        category_inverted: PAGE_IS_FILE | PAGE_IS_PFNZERO,
        category_mask: PAGE_IS_FILE | PAGE_IS_PFNZERO,
        category_anyof_mask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
        return_mask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
        ..Default::default()
    };
    scan(pagemap, start, end, &arg)
}

/// Ranges of [start, end), in a private file mapping, whose pages are present copies away
/// from the file. Unlike [`modified_private`], this leaves out non-present entries: the
/// kernel marks a discarded, write-protected file page with one that reads as swapped.
pub fn copied_present(pagemap: &std::fs::File, start: u64, end: u64) -> std::io::Result<Vec<(u64, u64)>> {
    let arg = PmScanArg {
        category_inverted: PAGE_IS_FILE | PAGE_IS_PFNZERO,
        category_mask: PAGE_IS_FILE | PAGE_IS_PFNZERO | PAGE_IS_PRESENT,
        return_mask: PAGE_IS_PRESENT,
        ..Default::default()
    };
    scan(pagemap, start, end, &arg)
}
