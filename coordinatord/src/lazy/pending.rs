//! The pages still to be copied into one address space: address ranges, each with the address
//! its content had at the checkpoint (a move by `mremap` shifts a range, its content goes
//! with it).

use std::collections::BTreeMap;

#[derive(Clone, Default)]
pub struct Pending {
    /// start → (end, start's address at the checkpoint); disjoint.
    map: BTreeMap<u64, (u64, u64)>,
    bytes: u64,
}

impl Pending {
    /// Ranges in place (each where it was at the checkpoint).
    pub fn new(ranges: impl IntoIterator<Item = (u64, u64)>) -> Self {
        let mut p = Self::default();
        for (s, e) in ranges {
            p.insert(s, e, s);
        }
        p
    }

    fn insert(&mut self, s: u64, e: u64, orig: u64) {
        if s < e {
            self.map.insert(s, (e, orig));
            self.bytes += e - s;
        }
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn clear(&mut self) {
        self.map.clear();
        self.bytes = 0;
    }

    /// The range holding `addr`: (start, end, checkpoint address of `addr`).
    pub fn find(&self, addr: u64) -> Option<(u64, u64, u64)> {
        let (&s, &(e, orig)) = self.map.range(..=addr).next_back()?;
        (addr < e).then_some((s, e, orig + (addr - s)))
    }

    /// The lowest range: (start, end, checkpoint address of start).
    pub fn first(&self) -> Option<(u64, u64, u64)> {
        self.map.iter().next().map(|(&s, &(e, orig))| (s, e, orig))
    }

    /// Where the next range at or above `addr` begins.
    pub fn next_start(&self, addr: u64) -> Option<u64> {
        self.map.range(addr..).next().map(|(&s, _)| s)
    }

    /// Takes out and returns what lies in [s, e), split at its ends.
    fn take(&mut self, s: u64, e: u64) -> Vec<(u64, u64, u64)> {
        let mut hit: Vec<u64> = self
            .map
            .range(..e)
            .rev()
            .take_while(|(_, &(end, _))| end > s)
            .map(|(&k, _)| k)
            .collect();
        hit.reverse();
        let mut out = Vec::new();
        for k in hit {
            let Some((end, orig)) = self.map.remove(&k) else {
                continue;
            };
            self.bytes -= end - k;
            // What lies outside [s, e) stays.
            self.insert(k, s.max(k).min(end), orig);
            self.insert(e.min(end).max(k), end, orig + (e.min(end).max(k) - k));
            let (a, b) = (k.max(s), end.min(e));
            if a < b {
                out.push((a, b, orig + (a - k)));
            }
        }
        out
    }

    /// [s, e) has nothing to load any more (copied, discarded, unmapped).
    pub fn remove(&mut self, s: u64, e: u64) {
        self.take(s, e);
    }

    /// [from, from+len) moved to `to` (mremap).
    pub fn moved(&mut self, from: u64, to: u64, len: u64) {
        for (a, b, orig) in self.take(from, from + len) {
            let at = a - from + to;
            // Whatever was at the destination was unmapped by the move.
            self.take(at, at + (b - a));
            self.insert(at, at + (b - a), orig);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(p: &Pending) -> Vec<(u64, u64, u64)> {
        p.map.iter().map(|(&s, &(e, o))| (s, e, o)).collect()
    }

    #[test]
    fn remove_splits_and_counts() {
        let mut p = Pending::new([(0x1000, 0x9000), (0x10000, 0x12000)]);
        assert_eq!(p.bytes(), 0xa000);
        p.remove(0x3000, 0x5000);
        p.remove(0x8000, 0x11000);
        assert_eq!(
            all(&p),
            vec![
                (0x1000, 0x3000, 0x1000),
                (0x5000, 0x8000, 0x5000),
                (0x11000, 0x12000, 0x11000)
            ]
        );
        assert_eq!(p.bytes(), 0x2000 + 0x3000 + 0x1000);
        assert_eq!(p.find(0x6000), Some((0x5000, 0x8000, 0x6000)));
        assert_eq!(p.find(0x4000), None);
        assert_eq!(p.next_start(0x4000), Some(0x5000));
    }

    #[test]
    fn a_move_keeps_where_the_content_came_from() {
        let mut p = Pending::new([(0x1000, 0x5000)]);
        p.moved(0x2000, 0x100000, 0x2000);
        assert_eq!(
            all(&p),
            vec![
                (0x1000, 0x2000, 0x1000),
                (0x4000, 0x5000, 0x4000),
                (0x100000, 0x102000, 0x2000)
            ]
        );
        assert_eq!(p.find(0x101000), Some((0x100000, 0x102000, 0x3000)));
        assert_eq!(p.bytes(), 0x4000);
        // Moved back over part of itself.
        p.moved(0x100000, 0x4000, 0x1000);
        assert_eq!(
            all(&p),
            vec![
                (0x1000, 0x2000, 0x1000),
                (0x4000, 0x5000, 0x2000),
                (0x101000, 0x102000, 0x3000)
            ]
        );
        assert_eq!(p.bytes(), 0x3000);
    }
}
