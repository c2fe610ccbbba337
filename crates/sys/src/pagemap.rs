//! The PAGEMAP_SCAN ioctl on /proc/PID/pagemap: which pages of a range were written since they
//! were last write-protected (userfaultfd async write-protect), re-protecting them in the same
//! call. Works on another process's pagemap.

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

/// Bits of a /proc/PID/pagemap entry.
pub const PM_PRESENT: u64 = 1 << 63;
pub const PM_SWAPPED: u64 = 1 << 62;
pub const PM_FILE: u64 = 1 << 61;
const PFN_MASK: u64 = (1 << 55) - 1;

/// Whether the page behind a pagemap entry holds data: present or swapped, and not the
/// kernel's zero page (a page that was only read).
pub fn holds_data(entry: u64) -> bool {
    let zero = entry & PM_PRESENT != 0 && zero_pfn().is_some_and(|z| entry & PFN_MASK == z);
    entry & (PM_PRESENT | PM_SWAPPED) != 0 && !zero
}

/// Whether a page of a private file mapping behind a pagemap entry was copied away from the
/// file (present and anonymous, or swapped out).
pub fn modified(entry: u64) -> bool {
    entry & PM_SWAPPED != 0 || (entry & PM_PRESENT != 0 && entry & PM_FILE == 0)
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

/// Runs PAGEMAP_SCAN over [start, end) with the given flags and category masks; the matching
/// ranges, adjacent ones merged.
fn scan(pagemap: &std::fs::File, start: u64, end: u64, template: &PmScanArg) -> std::io::Result<Vec<(u64, u64)>> {
    let mut out: Vec<(u64, u64)> = Vec::new();
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
                Some(last) if last.1 == r.start => last.1 = r.end,
                _ => out.push((r.start, r.end)),
            }
        }
        if arg.walk_end <= at {
            break;
        }
        at = arg.walk_end;
    }
    Ok(out)
}

/// Ranges of [start, end) written since last protected; with `rearm`, they are protected
/// again atomically with the read.
pub fn written(pagemap: &std::fs::File, start: u64, end: u64, rearm: bool) -> std::io::Result<Vec<(u64, u64)>> {
    let arg = PmScanArg {
        flags: PM_SCAN_CHECK_WPASYNC | if rearm { PM_SCAN_WP_MATCHING } else { 0 },
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

/// Write-protects every page of [start, end) (a range just registered for tracking), so that
/// only later writes show up.
pub fn protect_all(pagemap: &std::fs::File, start: u64, end: u64) -> std::io::Result<()> {
    written(pagemap, start, end, true).map(|_| ())
}

/// The frame number of the kernel's shared zero page, as /proc/PID/pagemap shows it (root
/// only): a page mapped to it was only read and holds zeros. None when it cannot be learned.
pub fn zero_pfn() -> Option<u64> {
    static PFN: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    *PFN.get_or_init(|| {
        // SAFETY: a fresh private anonymous page, read once (which maps the zero page), unmapped.
        unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            if p == libc::MAP_FAILED {
                return None;
            }
            std::ptr::read_volatile(p as *const u8);
            let f = std::fs::File::open("/proc/self/pagemap").ok();
            let mut e = [0u8; 8];
            let ok =
                f.is_some_and(|f| std::os::unix::fs::FileExt::read_exact_at(&f, &mut e, (p as u64 / 4096) * 8).is_ok());
            libc::munmap(p, 4096);
            let v = u64::from_le_bytes(e);
            let pfn = v & ((1 << 55) - 1);
            (ok && v >> 63 == 1 && pfn != 0).then_some(pfn)
        }
    })
}
