//! The disk's own rates, for the benchmarks that hold a store rate or a restore rate against
//! them: sequential writes made durable, and reads of what is not in the page cache, of the
//! same kind of data as the program's memory (this VM's disk is faster with some content).

use anyhow::{Context, Result};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Instant;

const PAGE: usize = 4096;
const MB: f64 = 1e6;

/// What a page holds: the same generator as `examples/rate_fill.c`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Content {
    /// One byte repeated (what `dirty_stall` fills its memory with).
    Constant,
    /// Random words: does not compress.
    Random,
    /// Words of a small dictionary, separated by spaces: compresses.
    Text,
}

impl Content {
    /// The name `rate_fill` takes.
    pub fn name(self) -> &'static str {
        match self {
            Content::Constant => "constant",
            Content::Random => "random",
            Content::Text => "text",
        }
    }
}

const WORDS: &[&str] = &[
    "the",
    "of",
    "and",
    "checkpoint",
    "memory",
    "page",
    "store",
    "restore",
    "program",
    "process",
    "thread",
    "file",
    "socket",
    "kernel",
    "signal",
    "write",
    "read",
    "disk",
    "rate",
    "time",
    "state",
    "image",
    "run",
    "before",
    "after",
    "when",
    "which",
    "every",
    "one",
    "two",
    "many",
    "again",
    "written",
    "stored",
    "loaded",
    "a",
    "to",
    "in",
    "is",
    "it",
    "that",
    "for",
    "on",
    "with",
    "as",
    "by",
    "from",
    "at",
    "or",
    "not",
    "this",
    "be",
    "are",
    "was",
    "all",
    "its",
    "their",
    "there",
    "only",
    "each",
    "while",
    "until",
    "first",
    "last",
];

fn seed(page: u64) -> u64 {
    let mut x = (page + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^= x >> 31;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 29;
    x | 1
}

fn next(s: &mut u64) -> u64 {
    let mut x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *s = x;
    x
}

/// Fills `out` (whole pages) with pages `first`, `first + 1`… of `content`.
pub fn fill_pages(content: Content, first: u64, out: &mut [u8]) {
    for (i, page) in out.chunks_mut(PAGE).enumerate() {
        let mut s = seed(first + i as u64);
        match content {
            Content::Constant => page.fill(0x5a),
            Content::Random => {
                for w in page.chunks_mut(8) {
                    w.copy_from_slice(&next(&mut s).to_le_bytes()[..w.len()]);
                }
            }
            Content::Text => {
                let mut at = 0;
                while at < page.len() {
                    let w = WORDS[(next(&mut s) % WORDS.len() as u64) as usize].as_bytes();
                    let n = w.len().min(page.len() - at);
                    page[at..at + n].copy_from_slice(&w[..n]);
                    at += n;
                    if at < page.len() {
                        page[at] = b' ';
                        at += 1;
                    }
                }
            }
        }
    }
}

/// Blocks to write, made before the clock starts: generating a gigabyte of random words
/// takes longer than writing it. Each block written is told apart by its first word.
struct Source {
    buf: Vec<u8>,
    /// Where the page-aligned part of `buf` starts (O_DIRECT wants aligned memory).
    at: usize,
    len: usize,
}

/// Distinct content generated for the blocks: written again and again with a mark per page.
const SOURCE_BYTES: usize = 64 << 20;

impl Source {
    fn new(content: Content, len: usize) -> Source {
        let mut buf = vec![0u8; len + PAGE];
        let at = buf.as_ptr().align_offset(PAGE);
        fill_pages(content, 0, &mut buf[at..at + len]);
        Source { buf, at, len }
    }

    /// Block `n` of `block` bytes: the source's bytes there, each page marked with `n`.
    fn block(&mut self, n: u64, block: usize) -> &[u8] {
        let off = self.at + (n as usize * block) % self.len;
        let b = &mut self.buf[off..off + block];
        for p in b.chunks_mut(PAGE) {
            p[..8].copy_from_slice(&n.to_le_bytes());
        }
        b
    }
}

/// Drops `path`'s pages from the page cache (written back first), so that the next read
/// of it comes from the disk. Only this file's: other sessions' caches stay.
pub fn drop_cached(path: &Path) -> Result<()> {
    let f = File::open(path).with_context(|| format!("open {}", path.display()))?;
    f.sync_all()?;
    // SAFETY: fadvise on an fd we hold.
    let r = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if r != 0 {
        return Err(std::io::Error::from_raw_os_error(r)).with_context(|| format!("fadvise {}", path.display()));
    }
    Ok(())
}

/// [`drop_cached`] for every file below `dir`.
pub fn drop_cached_dir(dir: &Path) -> Result<()> {
    for p in crate::walk_dir(dir)? {
        if p.is_file() {
            drop_cached(&p)?;
        }
    }
    Ok(())
}

/// Writes `mib` MiB of `content` to a file under `dir` in 1 MiB writes through the page
/// cache and fsyncs it: the disk's rate in MB/s, as a program that writes and syncs sees it.
pub fn write_rate(dir: &Path, mib: u64, content: Content) -> Result<f64> {
    let path = dir.join("disk-rate.tmp");
    let r = timed_write(&path, mib, content, false);
    let _ = std::fs::remove_file(&path);
    r
}

/// Writes `mib` MiB to `path` in 1 MiB writes and fsyncs (with `direct`: 4 MiB writes with
/// O_DIRECT, past the page cache); MB/s.
fn timed_write(path: &Path, mib: u64, content: Content, direct: bool) -> Result<f64> {
    let block = if direct { 4 << 20 } else { 1 << 20 };
    // A whole number of blocks.
    let mut src = Source::new(content, (SOURCE_BYTES.min((mib as usize) << 20) / block).max(1) * block);
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    if direct {
        o.custom_flags(libc::O_DIRECT);
    }
    let t = Instant::now();
    let mut f = o.open(path).with_context(|| format!("create {}", path.display()))?;
    let total = mib << 20;
    let mut n = 0u64;
    while n * (block as u64) < total {
        let len = (total - n * block as u64).min(block as u64) as usize;
        f.write_all(&src.block(n, block)[..len])
            .with_context(|| format!("write {}", path.display()))?;
        n += 1;
    }
    f.sync_all()?;
    Ok(total as f64 / MB / t.elapsed().as_secs_f64())
}

/// Reads `path` from the disk (its cached pages dropped first) in 1 MiB reads into one
/// buffer (with `direct`: 4 MiB reads with O_DIRECT); MB/s.
fn timed_read(path: &Path, direct: bool) -> Result<f64> {
    drop_cached(path)?;
    let block = if direct { 4 << 20 } else { 1 << 20 };
    let mut buf = vec![0u8; block + PAGE];
    let at = buf.as_ptr().align_offset(PAGE);
    let mut o = std::fs::OpenOptions::new();
    o.read(true);
    if direct {
        o.custom_flags(libc::O_DIRECT);
    }
    let t = Instant::now();
    let mut f = o.open(path).with_context(|| format!("open {}", path.display()))?;
    let mut total = 0u64;
    loop {
        let n = f
            .read(&mut buf[at..at + block])
            .with_context(|| format!("read {}", path.display()))?;
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    Ok(total as f64 / MB / t.elapsed().as_secs_f64())
}

/// The disk's rates in MB/s, through the page cache and past it (O_DIRECT).
#[derive(Clone, Copy, Debug, Default)]
pub struct DiskRates {
    pub write: f64,
    pub write_direct: f64,
    pub read: f64,
    pub read_direct: f64,
}

impl DiskRates {
    /// The rate the disk can write at: the faster way.
    pub fn best_write(&self) -> f64 {
        self.write.max(self.write_direct)
    }
    pub fn best_read(&self) -> f64 {
        self.read.max(self.read_direct)
    }
}

/// Measures the disk under `dir` with a file of `mib` MiB of `content`: written through the
/// page cache and fsynced, then read back cold; the same with O_DIRECT. The file goes after.
pub fn disk_rates(dir: &Path, mib: u64, content: Content) -> Result<DiskRates> {
    let path = dir.join("disk-rate.tmp");
    let r = (|| {
        let write = timed_write(&path, mib, content, false)?;
        let read = timed_read(&path, false)?;
        let write_direct = timed_write(&path, mib, content, true)?;
        let read_direct = timed_read(&path, true)?;
        Ok(DiskRates {
            write,
            write_direct,
            read,
            read_direct,
        })
    })();
    let _ = std::fs::remove_file(&path);
    r
}
