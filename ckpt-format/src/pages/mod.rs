//! Page stores: a header page, then raw page data. Where each run lives and its CRC32C are in
//! the process metadata, so a store can be streamed without seeking back.

mod read;

pub use read::{read_runs_into, PageStoreReader, RunScratch};

use crate::{FormatError, PageRun};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

pub const PAGE_SIZE: u64 = 4096;
/// Runs are cut at this size so that a damaged byte is pinned to a small range and a reader
/// can verify while streaming.
pub const RUN_MAX_BYTES: u64 = 1 << 20;
pub(crate) const MAGIC: [u8; 8] = *b"CKPTPAGE";
/// Compressed runs are handed between threads in groups of about this many bytes.
const GROUP_BYTES: usize = 1 << 20;
/// The first bytes of memory of a store are all compressed; past them, compression has to
/// keep pace with the disk (see [`PageStoreWriter::append_many`]).
const COMPRESS_ALL_BYTES: u64 = 16 << 20;
/// Compressed groups kept ready for the writer at most.
const READY_GROUPS: usize = 32;
use crate::behind::WriteBehind;
use crate::header::HEADER_LEN;

pub struct PageStoreWriter {
    path: PathBuf,
    out: BufWriter<File>,
    /// Where the next run goes.
    offset: u64,
    /// zstd level, when runs are compressed.
    compress: Option<i32>,
    compressor: Option<Compressor>,
    /// Bytes of memory stored so far are added here (a checkpoint's progress).
    counter: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
    /// Bytes of memory stored so far.
    memory: u64,
    behind: WriteBehind,
}

/// A run ready to be written: its bytes, compressed or, borrowed, as they are.
struct Encoded<'a> {
    addr: u64,
    len: u64,
    crc: u32,
    bytes: std::borrow::Cow<'a, [u8]>,
    compressed: bool,
}

/// A zstd compressor, reused: making a context per run costs more than compressing a page.
type Compressor = zstd::bulk::Compressor<'static>;

/// Pages looked at to tell whether a long run compresses, spread over it.
const SAMPLE_PAGES: usize = 4;

/// Whether `data` looks worth compressing: a few of its pages, compressed, save at least a
/// sixteenth (random data, already compressed data, keys, do not: compressing them whole
/// would cost the cores' time for nothing).
fn compresses(data: &[u8], z: &mut Compressor) -> bool {
    let page = PAGE_SIZE as usize;
    if data.len() < 4 * SAMPLE_PAGES * page {
        return true;
    }
    let step = data.len() / page / SAMPLE_PAGES * page;
    let sample: Vec<u8> = (0..SAMPLE_PAGES)
        .flat_map(|i| &data[i * step..i * step + page])
        .copied()
        .collect();
    z.compress(&sample)
        .is_ok_and(|c| c.len() <= sample.len() - sample.len() / 16)
}

fn encode<'a>(addr: u64, data: &'a [u8], z: Option<&mut Compressor>) -> Encoded<'a> {
    let crc = crc32c::crc32c(data);
    if let Some(z) = z {
        // Kept compressed only when that saves something.
        if let Some(c) = compresses(data, z).then(|| z.compress(data).ok()).flatten() {
            if c.len() < data.len() {
                return Encoded {
                    addr,
                    len: data.len() as u64,
                    crc,
                    bytes: c.into(),
                    compressed: true,
                };
            }
        }
    }
    Encoded {
        addr,
        len: data.len() as u64,
        crc,
        bytes: data.into(),
        compressed: false,
    }
}

impl PageStoreWriter {
    /// Creates the page store at `path`, readable by its owner alone.
    pub fn create(path: &Path) -> Result<Self, FormatError> {
        let f = crate::private::create_private_file(path).map_err(|e| FormatError::io(path, e))?;
        let mut out = BufWriter::with_capacity(1 << 20, f);
        out.write_all(&crate::header::header(&MAGIC))
            .map_err(|e| FormatError::io(path, e))?;
        Ok(Self {
            path: path.to_owned(),
            out,
            offset: HEADER_LEN,
            compress: None,
            compressor: None,
            counter: None,
            memory: 0,
            behind: WriteBehind::default(),
        })
    }

    /// Adds the bytes of memory stored (before compression) to `counter` as runs are written.
    pub fn counting(mut self, counter: std::sync::Arc<std::sync::atomic::AtomicU64>) -> Self {
        self.counter = Some(counter);
        self
    }

    /// Compresses runs with zstd at `level` from now on.
    pub fn compressed(mut self, level: i32) -> Self {
        self.compress = Some(level);
        self.compressor = Compressor::new(level).ok();
        self
    }

    /// Writes run `e` at the current end; returns where it went, to record in the metadata.
    fn write_encoded(&mut self, e: Encoded<'_>) -> Result<PageRun, FormatError> {
        self.out
            .write_all(&e.bytes)
            .map_err(|err| FormatError::io(&self.path, err))?;
        let run = PageRun {
            addr: e.addr,
            len: e.len,
            store: 0,
            offset: self.offset,
            crc: e.crc,
            clen: if e.compressed { e.bytes.len() as u64 } else { 0 },
        };
        self.offset += e.bytes.len() as u64;
        self.memory += e.len;
        if let Some(c) = &self.counter {
            c.fetch_add(e.len, std::sync::atomic::Ordering::Relaxed);
        }
        // What the buffer holds is not in the file yet.
        let in_file = self.offset - self.out.buffer().len() as u64;
        self.behind.written(self.out.get_ref(), in_file);
        Ok(run)
    }

    /// Appends many pieces of memory at once, each cut into runs; when compressing, the runs
    /// are compressed on worker threads (one per core) while this thread writes. `out[i]`
    /// receives the runs of `pieces[i]`.
    ///
    /// Compression must not make storing slower than the disk: when no compressed group is
    /// ready, the writer takes the next one itself and, past the store's first
    /// [`COMPRESS_ALL_BYTES`], writes it as it is (a run records whether it is compressed).
    /// The writer is held back by the disk (see [`WriteBehind`]) and the workers, which run
    /// only on time the cores have to spare, compress meanwhile: a slow disk or idle cores get
    /// everything compressed, a fast disk and busy cores as much as they manage (and pages
    /// written held, see [`PageStoreWriter::hold_behind`], little but the first).
    pub fn append_many(&mut self, pieces: &[(u64, &[u8])], out: &mut [&mut Vec<PageRun>]) -> Result<(), FormatError> {
        // Without compression, workers do not pay: checksums are cheaper than handing them out.
        let Some(level) = self.compress else {
            for ((addr, data), runs) in pieces.iter().zip(out.iter_mut()) {
                self.append(*addr, data, runs)?;
            }
            return Ok(());
        };
        let jobs: Vec<(usize, u64, &[u8])> = pieces
            .iter()
            .enumerate()
            .flat_map(|(i, (addr, data))| {
                data.chunks(RUN_MAX_BYTES as usize)
                    .enumerate()
                    .map(move |(k, c)| (i, addr + k as u64 * RUN_MAX_BYTES, c))
            })
            .collect();
        let workers = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .max(1);
        // Runs go out in groups of about a megabyte: a program's scattered pages make many
        // one-page runs, and handing each over alone costs more than compressing it. Workers
        // take groups in turn; this thread writes each as soon as it is ready, so the disk is
        // busy while they compress.
        let mut groups: Vec<std::ops::Range<usize>> = Vec::new();
        let (mut from, mut bytes) = (0, 0);
        for (k, job) in jobs.iter().enumerate() {
            bytes += job.2.len();
            if bytes >= GROUP_BYTES || k + 1 == jobs.len() {
                groups.push(from..k + 1);
                (from, bytes) = (k + 1, 0);
            }
        }
        // Written in the order they are ready; recorded in the order of the pieces.
        let mut placed: Vec<Option<PageRun>> = vec![None; jobs.len()];
        let next = std::sync::atomic::AtomicUsize::new(0);
        // Workers go on while the writer waits for the disk.
        let (tx, rx) = std::sync::mpsc::sync_channel::<(usize, Vec<Encoded>)>(READY_GROUPS);
        std::thread::scope(|s| {
            for _ in 0..workers {
                let (tx, jobs, groups, next) = (tx.clone(), &jobs, &groups, &next);
                s.spawn(move || {
                    // Compression takes what the cores have to spare: the writer (and the
                    // programs) come first.
                    // SAFETY: sched_setscheduler of the calling thread with a plain struct.
                    unsafe {
                        let p = libc::sched_param { sched_priority: 0 };
                        libc::sched_setscheduler(0, libc::SCHED_IDLE, &p);
                    }
                    let mut z = Compressor::new(level).ok();
                    loop {
                        let g = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(range) = groups.get(g) else { break };
                        let enc = jobs[range.clone()]
                            .iter()
                            .map(|&(_, a, d)| encode(a, d, z.as_mut()))
                            .collect();
                        if tx.send((g, enc)).is_err() {
                            break;
                        }
                    }
                });
            }
            drop(tx);
            // Dropped with this closure, should writing fail: workers waiting to hand over a
            // group then stop rather than hold up the end of the scope.
            let rx = rx;
            let mut left = groups.len();
            while left > 0 {
                let ready = match rx.try_recv() {
                    Ok(r) => Some(r),
                    Err(_) => match next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) {
                        // Nothing compressed is ready: this thread does the next group itself,
                        // compressed while the store is small, else as it is.
                        g if g < groups.len() => {
                            let mut z = self.compressor.as_mut().filter(|_| self.memory < COMPRESS_ALL_BYTES);
                            let enc = jobs[groups[g].clone()]
                                .iter()
                                .map(|&(_, a, d)| encode(a, d, z.as_deref_mut()))
                                .collect();
                            Some((g, enc))
                        }
                        _ => rx.recv().ok(),
                    },
                };
                let Some((g, enc)) = ready else { break };
                for (k, e) in groups[g].clone().zip(enc) {
                    placed[k] = Some(self.write_encoded(e)?);
                }
                left -= 1;
            }
            if left > 0 {
                return Err(FormatError::io(
                    &self.path,
                    std::io::Error::other("a compression worker failed"),
                ));
            }
            Ok(())
        })?;
        for (job, run) in jobs.iter().zip(placed) {
            out[job.0].extend(run);
        }
        Ok(())
    }

    /// Appends the bytes of memory starting at `addr`, cut into runs of at most
    /// [`RUN_MAX_BYTES`], and returns the runs to record in the metadata.
    pub fn append(&mut self, addr: u64, data: &[u8], runs: &mut Vec<PageRun>) -> Result<(), FormatError> {
        for (i, chunk) in data.chunks(RUN_MAX_BYTES as usize).enumerate() {
            let e = encode(addr + i as u64 * RUN_MAX_BYTES, chunk, self.compressor.as_mut());
            runs.push(self.write_encoded(e)?);
        }
        Ok(())
    }

    pub fn len(&self) -> u64 {
        self.offset
    }

    pub fn is_empty(&self) -> bool {
        self.offset == HEADER_LEN
    }

    /// Flushes and fsyncs; the store is durable when this returns.
    pub fn finish(self) -> Result<u64, FormatError> {
        let path = self.path;
        let f = self
            .out
            .into_inner()
            .map_err(|e| FormatError::io(&path, e.into_error()))?;
        f.sync_all().map_err(|e| FormatError::io(&path, e))?;
        // What is left in the page cache (written while held, the last windows) goes too: the
        // store is read again only by a restore, later.
        // SAFETY: fadvise on the fd we hold.
        unsafe { libc::posix_fadvise(std::os::fd::AsRawFd::as_raw_fd(&f), 0, 0, libc::POSIX_FADV_DONTNEED) };
        Ok(self.offset)
    }

    /// Whether runs are compressed.
    pub fn compresses(&self) -> bool {
        self.compress.is_some()
    }

    /// While `held`, writing does not wait for the disk (see [`WriteBehind::hold`]): for pages
    /// written while their program is parked.
    pub fn hold_behind(&mut self, held: bool) {
        self.behind.hold(held);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compressed_runs_roundtrip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pages.img");
        let mut w = PageStoreWriter::create(&p).unwrap().compressed(3);
        let zeros = vec![0u8; 3 * RUN_MAX_BYTES as usize / 2];
        let noise: Vec<u8> = (0..8192u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        let (mut a, mut b) = (Vec::new(), Vec::new());
        w.append_many(&[(0x1000, &zeros), (0x900000, &noise)], &mut [&mut a, &mut b])
            .unwrap();
        let len = w.finish().unwrap();
        assert!(a.iter().all(|r| r.clen > 0 && r.clen < r.len), "zeros compress");
        let r = PageStoreReader::open(&p, len).unwrap();
        let mut buf = Vec::new();
        r.read_run(&a[1], &mut buf).unwrap();
        assert_eq!(buf.len() as u64, a[1].len);
        assert!(buf.iter().all(|&x| x == 0));
        r.read_run(&b[0], &mut buf).unwrap();
        assert_eq!(buf, noise);
    }

    /// A store larger than the part always compressed: its runs, compressed or written as
    /// they are, whichever way each went, come back whole and in order of the pieces, checked
    /// on every core; a damaged one is found.
    #[test]
    fn big_compressed_store_reads_back_on_every_core() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pages.img");
        let mut w = PageStoreWriter::create(&p).unwrap().compressed(3);
        // Compressible, but not in no time: words of a few letters in a varying order.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let data: Vec<u8> = (0..3 * COMPRESS_ALL_BYTES as usize)
            .map(|i| {
                if i % 8 == 0 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                }
                b"abcdefgh"[((x >> (i % 8 * 3)) & 7) as usize]
            })
            .collect();
        let half = data.len() / 2;
        let (mut a, mut b) = (Vec::new(), Vec::new());
        w.append_many(
            &[(0x10000000, &data[..half]), (0x40000000, &data[half..])],
            &mut [&mut a, &mut b],
        )
        .unwrap();
        let len = w.finish().unwrap();
        assert!(
            a.windows(2).all(|r| r[0].addr + r[0].len == r[1].addr),
            "runs out of order"
        );
        let first = COMPRESS_ALL_BYTES / RUN_MAX_BYTES;
        assert!(
            a.iter().take(first as usize).all(|r| r.clen > 0),
            "the first runs are compressed"
        );
        let r = PageStoreReader::open(&p, len).unwrap();
        let runs: Vec<&PageRun> = a.iter().chain(&b).collect();
        assert_eq!(r.verify(runs.iter().copied()).unwrap(), data.len() as u64);
        let mut back = vec![0u8; data.len()];
        let mut rest = &mut back[..];
        let mut jobs = Vec::new();
        for run in &runs {
            let (here, after) = std::mem::take(&mut rest).split_at_mut(run.len as usize);
            jobs.push((*run, here));
            rest = after;
        }
        let stores = [r];
        read_runs_into(&stores, jobs).unwrap();
        assert!(back == data, "read back differs");
        let mut bytes = std::fs::read(&p).unwrap();
        let last = b.last().unwrap();
        bytes[(last.offset + last.stored_len() / 2) as usize] ^= 1;
        std::fs::write(&p, &bytes).unwrap();
        let r = PageStoreReader::open(&p, len).unwrap();
        assert!(matches!(
            r.verify(runs.iter().copied()),
            Err(FormatError::Checksum { .. })
        ));
    }

    #[test]
    fn write_verify_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pages.img");
        let mut w = PageStoreWriter::create(&p).unwrap();
        let data: Vec<u8> = (0..(3 * RUN_MAX_BYTES / 2)).map(|i| (i % 251) as u8).collect();
        let mut runs = Vec::new();
        w.append(0x10000, &data, &mut runs).unwrap();
        let len = w.finish().unwrap();
        assert_eq!(runs.len(), 2);
        assert_eq!(runs[1].addr, 0x10000 + RUN_MAX_BYTES);
        let r = PageStoreReader::open(&p, len).unwrap();
        assert_eq!(r.verify(&runs).unwrap(), data.len() as u64);

        let mut bytes = std::fs::read(&p).unwrap();
        bytes[(HEADER_LEN + 100) as usize] ^= 1;
        std::fs::write(&p, &bytes).unwrap();
        let r = PageStoreReader::open(&p, len).unwrap();
        assert!(matches!(r.verify(&runs), Err(FormatError::Checksum { .. })));
        std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
        assert!(matches!(
            PageStoreReader::open(&p, len),
            Err(FormatError::Truncated { .. })
        ));
    }
}
