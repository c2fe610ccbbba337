//! Write-behind for long sequential writes (page stores): the disk is set writing each window
//! as soon as it is written, and a window is dropped from the page cache once the disk has it.
//!
//! Left to the kernel, a gigabyte written and then fsynced sits dirty in the page cache until
//! the fsync, so the disk idles while it is copied in and the writer waits for all of it at
//! the end; and the page cache grows by the whole store, pushing out what programs had cached
//! (on a VM whose free memory goes back to the host, taking fresh pages is itself the slow
//! part: 1 GiB written took 4 s before its fsync, against 0.8 s in windows). A store is read
//! again only by a restore, later.

use std::fs::File;
use std::os::fd::AsRawFd;

/// Bytes written before the disk is set writing them: large enough for the disk to take them
/// in big requests, small enough that two of them sit in the page cache at most.
const WINDOW: u64 = 32 << 20;

#[derive(Default)]
pub struct WriteBehind {
    /// The disk was set writing everything before this offset.
    started: u64,
    /// Everything before this offset is on the disk and out of the page cache.
    dropped: u64,
    /// Writes are left to the page cache for now (see [`WriteBehind::hold`]).
    held: bool,
}

impl WriteBehind {
    /// While `held`, nothing waits for the disk: a program parked while its pages are written
    /// would wait too. What was written meanwhile is set writing at the next window after.
    pub fn hold(&mut self, held: bool) {
        self.held = held;
    }

    /// After a write: `written` bytes of `file` are written (from offset 0). Once a window
    /// is full, the disk is set writing it, and the window before it, waited for, leaves the
    /// page cache.
    pub fn written(&mut self, file: &File, written: u64) {
        if self.held || written < self.started + WINDOW {
            return;
        }
        let fd = file.as_raw_fd();
        // Failures only lose the head start: the fsync at the end makes the store durable
        // whatever happens here.
        // SAFETY: sync_file_range and fadvise on an fd we hold, with plain integers.
        unsafe {
            libc::sync_file_range(
                fd,
                self.started as i64,
                (written - self.started) as i64,
                libc::SYNC_FILE_RANGE_WRITE,
            );
            if self.started > self.dropped {
                let (at, len) = (self.dropped as i64, (self.started - self.dropped) as i64);
                libc::sync_file_range(
                    fd,
                    at,
                    len,
                    libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WRITE | libc::SYNC_FILE_RANGE_WAIT_AFTER,
                );
                libc::posix_fadvise(fd, at, len, libc::POSIX_FADV_DONTNEED);
            }
        }
        self.dropped = self.started;
        self.started = written;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Pages of `f` in [at, at + len) that are in the page cache.
    fn cached(f: &File, at: u64, len: u64) -> usize {
        let pages = (len / 4096) as usize;
        let mut v = vec![0u8; pages];
        // SAFETY: a shared read-only mapping of our file, looked at with mincore and unmapped.
        unsafe {
            let m = libc::mmap(
                std::ptr::null_mut(),
                len as usize,
                libc::PROT_READ,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                at as i64,
            );
            assert_ne!(m, libc::MAP_FAILED);
            assert_eq!(libc::mincore(m, len as usize, v.as_mut_ptr()), 0);
            libc::munmap(m, len as usize);
        }
        v.iter().filter(|&&b| b & 1 != 0).count()
    }

    /// Held, nothing leaves the cache; let go, the next window sets everything written before
    /// it writing, and the one after waits for it and drops it.
    #[test]
    fn held_writes_wait_for_the_next_windows() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&p)
            .unwrap();
        let mut w = WriteBehind::default();
        let block = vec![7u8; 1 << 20];
        let mut n = 0u64;
        let mut write = |w: &mut WriteBehind, blocks: u64| {
            for _ in 0..blocks {
                f.write_all(&block).unwrap();
                n += block.len() as u64;
                w.written(&f, n);
            }
        };
        w.hold(true);
        write(&mut w, (3 * WINDOW) >> 20);
        assert_eq!((w.started, w.dropped), (0, 0));
        w.hold(false);
        write(&mut w, 1);
        assert_eq!((w.started, w.dropped), (3 * WINDOW + (1 << 20), 0));
        write(&mut w, WINDOW >> 20);
        assert_eq!(w.dropped, 3 * WINDOW + (1 << 20));
    }

    /// What is written in windows reads back whole, and what the disk has leaves the cache.
    #[test]
    fn windows_leave_the_cache_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&p)
            .unwrap();
        let mut w = WriteBehind::default();
        let block: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 253) as u8).collect();
        let mut n = 0u64;
        // Three windows and a bit: the first two are on the disk and out of the cache.
        for _ in 0..((3 * WINDOW) >> 20) + 1 {
            f.write_all(&block).unwrap();
            n += block.len() as u64;
            w.written(&f, n);
        }
        assert_eq!(w.dropped, 2 * WINDOW);
        assert_eq!(cached(&f, 0, 2 * WINDOW), 0, "windows the disk has are still cached");
        f.sync_all().unwrap();
        let back = std::fs::read(&p).unwrap();
        assert_eq!(back.len() as u64, n);
        assert!(back.chunks(1 << 20).all(|c| c == block));
    }
}
