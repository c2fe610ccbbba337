//! What a lazy restore (`ckptctl restore --lazy`) leaves to be brought in after the program
//! runs. The restorer maps that memory empty and registers it for missing-page faults; ckptd
//! copies its pages in, on first touch and in the background. Both sides decide with this one
//! function.

use crate::attrs::Locked;
use crate::{Mapping, MappingKind, ProcessImage};

/// The part of `m` loaded lazily: from its first stored page to the end of its last, if `m` is
/// private anonymous memory (heap and stack included) that holds data. Memory of files and
/// shared memory is loaded before the program runs, and so is locked memory (locking it would
/// fault every page in before the program runs anyway). Registering only the span that holds
/// data leaves growth beyond it (brk, a stack going down, the untouched rest of a
/// reservation) to the kernel alone.
pub fn lazy_span(img: &ProcessImage, m: &Mapping) -> Option<(u64, u64)> {
    const MCL_CURRENT: i32 = 1;
    if m.shared
        || !matches!(m.kind, MappingKind::Anon | MappingKind::Heap | MappingKind::Stack)
        || m.locked != Locked::No
        || img.attrs.mlockall & MCL_CURRENT != 0
    {
        return None;
    }
    let clipped = m
        .pages
        .iter()
        .map(|r| (r.addr.max(m.start), (r.addr + r.len).min(m.end)))
        .filter(|(s, e)| s < e);
    let (start, end) = clipped.fold((u64::MAX, 0), |(s, e), (rs, re)| (s.min(rs), e.max(re)));
    (start < end).then_some((start, end))
}
