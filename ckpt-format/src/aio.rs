//! A kernel AIO context (`io_setup`) as a checkpoint keeps it.
//!
//! A context's id is the address of its ring, a shared mapping of the kernel's (`/[aio]` in
//! the maps) that the process reads completed events from: a 32-byte header (the context's
//! index in the process's table of contexts, the ring's size `nr`, `head`, `tail`, constants)
//! then `nr` slots of 32-byte events. The kernel writes an event at its own copy of the tail
//! and moves the ring's tail; `io_getevents` (or the program itself) takes events from the
//! head and moves it. A context is recorded as its ring, byte for byte, with what `io_setup`
//! was asked for, and only when no request is in flight (ckptd refuses the checkpoint
//! otherwise): every request it ever took is then an event in the ring or reaped.

use serde::{Deserialize, Serialize};

/// Bytes of the ring's header, and of one event.
pub const HEADER: usize = 32;
pub const EVENT: usize = 32;

/// The ring of one context; the mapping holding it says where (its start is the id).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AioRing {
    /// What `io_setup` was asked for: asked again, it gives a ring of the same size on a
    /// machine with as many possible CPUs (see [`ring_events`]).
    pub nr_events: u32,
    /// The whole ring as the process saw it.
    pub bytes: Vec<u8>,
}

impl AioRing {
    fn word(&self, i: usize) -> u32 {
        self.bytes
            .get(i * 4..i * 4 + 4)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u32::from_ne_bytes)
    }

    /// The context's index in the process's table (the kernel looks the context up by it).
    pub fn index(&self) -> u32 {
        self.word(0)
    }

    /// Events the ring holds: what fits in its pages (the kernel's own count; the header's
    /// copy is the program's to overwrite).
    pub fn nr(&self) -> u32 {
        (self.bytes.len().saturating_sub(HEADER) / EVENT) as u32
    }

    /// Where the next event is taken, as the header has it (the kernel takes it modulo `nr`).
    pub fn head(&self) -> u32 {
        self.word(2)
    }

    pub fn tail(&self) -> u32 {
        self.word(3)
    }

    /// Completed events not taken yet.
    pub fn unreaped(&self) -> u32 {
        let nr = self.nr().max(1);
        (self.tail() % nr + nr - self.head() % nr) % nr
    }

    /// For `ckptctl show`.
    pub fn describe(&self) -> String {
        format!(
            "AIO context, io_setup({}), {} events, {} completed not reaped",
            self.nr_events,
            self.nr(),
            self.unreaped()
        )
    }
}

/// The ring size, in events, that `io_setup(nr_events)` makes with `cpus` possible CPUs: the
/// kernel asks for twice `nr_events` (at least 8 per CPU) plus 2, and rounds up to whole
/// pages; None for what it refuses.
pub fn ring_events(nr_events: u32, cpus: u32) -> Option<u32> {
    let asked = (nr_events.max(cpus.checked_mul(4)?) as u64) * 2;
    if nr_events == 0 || asked > 0x1000_0000 / EVENT as u64 {
        return None;
    }
    let bytes = HEADER as u64 + (asked + 2) * EVENT as u64;
    let pages = bytes.div_ceil(crate::PAGE_SIZE);
    Some(((pages * crate::PAGE_SIZE - HEADER as u64) / EVENT as u64) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_sizes_are_the_kernels() {
        // Seen on a 2-CPU machine: io_setup(1) gives 127 events, io_setup(100) 255.
        assert_eq!(ring_events(1, 2), Some(127));
        assert_eq!(ring_events(100, 2), Some(255));
        assert_eq!(ring_events(300, 2), Some(639));
        assert_eq!(ring_events(0, 2), None);
    }

    #[test]
    fn unreaped_wraps_around() {
        let mut bytes = vec![0u8; 4096];
        bytes[8..12].copy_from_slice(&120u32.to_ne_bytes());
        bytes[12..16].copy_from_slice(&3u32.to_ne_bytes());
        let r = AioRing { nr_events: 1, bytes };
        assert_eq!(r.nr(), 127);
        assert_eq!(r.unreaped(), 10);
    }
}
