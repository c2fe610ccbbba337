//! Reading page stores: one run at a time, checked against its CRC, or many runs on every core
//! (a restore checks, or unpacks, a gigabyte of them before the program runs).

use super::MAGIC;
use crate::{FormatError, PageRun};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

pub struct PageStoreReader {
    path: PathBuf,
    file: File,
    len: u64,
    /// For [`PageStoreReader::read_run`]: reused across runs (a decompression context per run
    /// costs more than a page).
    scratch: Mutex<RunScratch>,
}

/// What reading runs needs besides the store, one per thread: a decompressor and a buffer for
/// the stored bytes.
#[derive(Default)]
pub struct RunScratch {
    unzip: Option<zstd::bulk::Decompressor<'static>>,
    stored: Vec<u8>,
}

/// Below this many bytes of runs, one thread reads them: starting others costs more.
const PARALLEL_BYTES: u64 = 8 << 20;

impl PageStoreReader {
    /// Opens a store and checks its header and that it is as long as the metadata says.
    pub fn open(path: &Path, expected_len: u64) -> Result<Self, FormatError> {
        let file = File::open(path).map_err(|e| FormatError::io(path, e))?;
        let len = file.metadata().map_err(|e| FormatError::io(path, e))?.len();
        crate::header::check(path, &file, len, &MAGIC, "page store", expected_len)?;
        Ok(Self {
            path: path.to_owned(),
            file,
            len,
            scratch: Default::default(),
        })
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads one run into `buf` (resized to the run), decompressing it, and checks its CRC.
    pub fn read_run(&self, run: &PageRun, buf: &mut Vec<u8>) -> Result<(), FormatError> {
        buf.resize(run.len as usize, 0);
        let mut scratch = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        self.read_run_into(run, buf, &mut scratch)
    }

    /// Reads run `run` into `out` (as long as the run), decompressing it, and checks its CRC;
    /// `scratch` is the calling thread's.
    pub fn read_run_into(&self, run: &PageRun, out: &mut [u8], scratch: &mut RunScratch) -> Result<(), FormatError> {
        let stored = run.stored_len();
        if run.offset.saturating_add(stored) > self.len {
            return Err(FormatError::Truncated {
                path: self.path.clone(),
                what: "page store",
                expected: run.offset + stored,
                got: self.len,
            });
        }
        let damaged = || FormatError::Checksum {
            path: self.path.clone(),
            what: format!(
                "pages at {:#x} (+{} bytes, file offset {})",
                run.addr, run.len, run.offset
            ),
        };
        if out.len() as u64 != run.len {
            return Err(damaged());
        }
        let read = |buf: &mut [u8]| {
            self.file
                .read_exact_at(buf, run.offset)
                .map_err(|e| FormatError::io(&self.path, e))
        };
        if run.clen > 0 {
            scratch.stored.resize(stored as usize, 0);
            read(&mut scratch.stored)?;
            if scratch.unzip.is_none() {
                scratch.unzip = zstd::bulk::Decompressor::new().ok();
            }
            let z = scratch.unzip.as_mut().ok_or_else(damaged)?;
            let n = z.decompress_to_buffer(&scratch.stored, out).map_err(|_| damaged())?;
            if n as u64 != run.len {
                return Err(damaged());
            }
        } else {
            read(out)?;
        }
        if crc32c::crc32c(out) != run.crc {
            return Err(damaged());
        }
        Ok(())
    }

    /// Checks every run of this store, on every core; the bytes of memory they hold.
    pub fn verify<'a>(&self, runs: impl IntoIterator<Item = &'a PageRun>) -> Result<u64, FormatError> {
        let mut runs: Vec<&PageRun> = runs.into_iter().collect();
        // In the order of the file: runs compressed and not are written as they are ready.
        runs.sort_by_key(|r| r.offset);
        let total = runs.iter().map(|r| r.len).sum();
        on_every_core(total, runs, |run, (scratch, buf): &mut (RunScratch, Vec<u8>)| {
            buf.resize(run.len as usize, 0);
            self.read_run_into(run, buf, scratch)
        })?;
        Ok(total)
    }
}

/// Reads runs of `stores` into memory on every core, each checked: `jobs` are (the run, whose
/// `store` indexes `stores`, and where its bytes go, as long as the run).
pub fn read_runs_into(stores: &[PageStoreReader], mut jobs: Vec<(&PageRun, &mut [u8])>) -> Result<(), FormatError> {
    // In the order of the files: runs compressed and not are written as they are ready.
    jobs.sort_by_key(|j| (j.0.store, j.0.offset));
    let total = jobs.iter().map(|j| j.0.len).sum();
    on_every_core(total, jobs, |(run, out), scratch: &mut RunScratch| {
        let Some(reader) = stores.get(run.store as usize) else {
            return Err(FormatError::io(
                Path::new("page store"),
                std::io::Error::other(format!("no page store {} for {:#x}", run.store, run.addr)),
            ));
        };
        reader.read_run_into(run, out, scratch)
    })
}

/// Runs `f` on each of `jobs` (`bytes` of runs in all), in order, on as many threads as there
/// are cores (each with its state `S`): neighbouring runs are read at the same time, so the
/// disk still sees one stream, and checksums and decompression use every core. The first
/// failure stops the rest.
fn on_every_core<J: Send, S: Default>(
    bytes: u64,
    jobs: Vec<J>,
    f: impl Fn(J, &mut S) -> Result<(), FormatError> + Sync,
) -> Result<(), FormatError> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    if threads == 1 || bytes < PARALLEL_BYTES {
        let mut state = S::default();
        return jobs.into_iter().try_for_each(|j| f(j, &mut state));
    }
    let queue = Mutex::new(jobs.into_iter());
    let failed = AtomicBool::new(false);
    let first_error = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                let mut state = S::default();
                while !failed.load(Ordering::Relaxed) {
                    let Some(job) = queue.lock().unwrap_or_else(|e| e.into_inner()).next() else {
                        break;
                    };
                    if let Err(e) = f(job, &mut state) {
                        failed.store(true, Ordering::Relaxed);
                        first_error.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(e);
                    }
                }
            });
        }
    });
    match first_error.into_inner().unwrap_or_else(|e| e.into_inner()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
