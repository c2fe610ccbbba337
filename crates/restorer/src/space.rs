//! Where the restorer may put memory of its own (the blob's region, memory filled away from its
//! place): in holes free both in the image's layout, which the blob is about to make, and in
//! the restorer's current one, high in the mmap area and away from the program's stack.

use ckpt_format::{ProcessImage, PAGE_SIZE};
use ckpt_sys::procfs::MapEntry;

/// Gap left on each side of what is placed.
const GUARD: u64 = 1 << 20;
/// Nothing goes below 4 GiB, where programs expect their own low addresses free.
const LOW: u64 = 1 << 32;

/// The address ranges taken, in the image or now.
pub struct Space {
    used: Vec<(u64, u64)>,
}

impl Space {
    pub fn new(img: &ProcessImage, current: &[MapEntry]) -> Space {
        let stack = img
            .mappings
            .iter()
            .find(|m| m.kind == ckpt_format::MappingKind::Stack)
            .map(|m| m.start)
            .unwrap_or(0x7ff0_0000_0000);
        let limit = stack.saturating_sub(1 << 30);
        let mut used: Vec<(u64, u64)> = img.mappings.iter().map(|m| (m.start, m.end)).collect();
        used.extend(img.mappings.iter().filter_map(|m| m.sysv_attach_range()));
        used.extend(img.special.iter().map(|s| (s.start, s.end)));
        used.extend(current.iter().map(|e| (e.start, e.end)));
        used.push((limit, u64::MAX));
        used.sort_unstable();
        Space { used }
    }

    /// Whether `[start, end)` meets anything taken.
    pub fn overlaps(&self, start: u64, end: u64) -> bool {
        self.used.iter().any(|&(s, e)| s < end && start < e)
    }

    /// The highest free range of `size` bytes, now taken.
    pub fn take(&mut self, size: u64) -> Option<u64> {
        let mut best = None;
        let mut prev_end = LOW;
        for &(s, e) in &self.used {
            if s > prev_end && s - prev_end >= size + 2 * GUARD {
                best = Some((s - GUARD - size) & !(PAGE_SIZE - 1));
            }
            prev_end = prev_end.max(e);
        }
        let at = best?;
        let i = self.used.partition_point(|&(s, _)| s < at);
        self.used.insert(i, (at, at + size));
        Some(at)
    }
}
