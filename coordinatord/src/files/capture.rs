//! Taking the files of a checkpoint: snapshot files are copied block by block into the
//! checkpoint's block store, first in phase 1 while their writes are held, then again while
//! the processes are parked for those that changed anyway (and always for files mapped shared
//! writable); both copies are incremental (a block equal to the parent checkpoint's, or to the
//! phase-1 copy, is referenced). Logs get their size and samples of the bytes before it.

use super::policy::{self, Decided, Use};
use super::proof::Watch;
use super::FileKey;
use anyhow::Context;
use ckpt_format::{
    block_hash, create_private_dir, sample_ranges, write_host_files, AppendMark, Block, BlockStoreWriter,
    CheckpointDir, FileContent, FilePolicy, FileRecord, FileRule, FileSummary, HostFiles, ProcessImage, Sample,
    Snapshot, Store, FILE_BLOCK,
};
use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};

/// What tells that a file changed: its identity, size and times. (The kernel gives a changed
/// file a finer timestamp once its times were read, so two writes in one clock tick show.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(m: &std::fs::Metadata) -> Self {
        Self {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        }
    }
}

/// A block of the parent checkpoint: (hash, length, store, offset).
type BaseBlock = (u128, u32, String, u64);

struct Copied {
    blocks: Vec<Block>,
    stamp: Stamp,
}

/// The files of one checkpoint on this host, between phase 1 and the end of phase 2.
pub struct Capture {
    dir: CheckpointDir,
    host: String,
    /// Overrides, this checkpoint's before ckptd's, with where each came from.
    pub rules: Vec<(FileRule, &'static str)>,
    writer: Option<BlockStoreWriter>,
    /// Block stores the blocks point into: this checkpoint's own first.
    stores: Vec<String>,
    /// The parent checkpoint's snapshots, by path.
    base: HashMap<String, HashMap<u64, BaseBlock>>,
    /// Phase-1 copies.
    copies: HashMap<FileKey, Copied>,
    buf: Vec<u8>,
    /// Bytes copied in phase 1 and while parked, for the log.
    pub copied: (u64, u64),
}

impl Capture {
    /// Starts the files of checkpoint `dir` on `host`: the newest committed checkpoint with
    /// files on this host is the parent the blocks are compared with.
    pub fn begin(store: &Store, dir: &CheckpointDir, host: &str, rules: Vec<(FileRule, &'static str)>) -> Self {
        let mut base = HashMap::new();
        let parents = store.list().unwrap_or_default();
        for m in parents.iter().rev().filter(|m| m.id != dir.id) {
            let Ok((pdir, _)) = store.get(&m.id) else { continue };
            let Ok(files) = ckpt_format::read_host_files(&pdir, host) else {
                continue;
            };
            if files.files.is_empty() {
                continue;
            }
            for f in &files.files {
                if let FileContent::Snapshot(s) = &f.content {
                    let blocks = s
                        .blocks
                        .iter()
                        .filter_map(|b| {
                            let rel = files.stores.get(b.store as usize)?;
                            Some((b.index, (b.hash, b.len, rel.clone(), b.offset)))
                        })
                        .collect();
                    base.insert(f.path.clone(), blocks);
                }
            }
            break;
        }
        Self {
            dir: dir.clone(),
            host: host.to_string(),
            rules,
            writer: None,
            stores: vec![dir.blocks_rel(host)],
            base,
            copies: HashMap::new(),
            buf: Vec::new(),
            copied: (0, 0),
        }
    }

    fn writer(&mut self) -> anyhow::Result<&mut BlockStoreWriter> {
        if self.writer.is_none() {
            create_private_dir(&self.dir.host_dir(&self.host))?;
            self.writer = Some(BlockStoreWriter::create(&self.dir.blocks_path(&self.host))?);
        }
        self.writer.as_mut().context("no block store")
    }

    fn store_index(&mut self, rel: &str) -> u32 {
        match self.stores.iter().position(|s| s == rel) {
            Some(i) => i as u32,
            None => {
                self.stores.push(rel.to_string());
                (self.stores.len() - 1) as u32
            }
        }
    }

    /// Before the gates shut: the policies of the files the running processes (pid, control
    /// fd) write to, and the snapshot files whose writes the gates are to hold.
    pub fn before_stop(&self, running: &[i32]) -> (Vec<Decided>, Vec<FileKey>) {
        let uses: Vec<Use> = running.iter().flat_map(|&pid| policy::uses_of_running(pid)).collect();
        let mut decided = policy::decide(&uses, &self.rules);
        // A pattern too wide is said once, at the park, where it refuses the checkpoint.
        decided.extend(super::unheld::find(&self.rules, &decided).unwrap_or_default());
        let hold = decided
            .iter()
            .filter(|d| d.policy == FilePolicy::Snapshot)
            .map(|d| d.key)
            .collect();
        (decided, hold)
    }

    /// Phase 1: copies every snapshot file while its writes are held. A file that cannot be
    /// read now is copied while parked.
    pub fn precopy(&mut self, decided: &[Decided]) {
        let t = std::time::Instant::now();
        for d in decided.iter().filter(|d| d.policy == FilePolicy::Snapshot) {
            // Gates stay shut only so long without word from ckptd: what is not copied by
            // then is copied while the programs are parked.
            if t.elapsed() > PRECOPY_MAX {
                tracing::info!(
                    path = d.path,
                    "file left for the stop: the copy before it took too long"
                );
                continue;
            }
            let r = (|| -> anyhow::Result<Copied> {
                let f = File::open(&d.open)?;
                let stamp = Stamp::of(&f.metadata()?);
                let blocks = self.copy_blocks(&f, stamp.size, None, &d.path)?;
                Ok(Copied { blocks, stamp })
            })();
            match r {
                Ok(c) => {
                    self.copies.insert(d.key, c);
                }
                Err(e) => tracing::debug!(path = d.path, "file not copied before the stop: {e:#}"),
            }
        }
        self.copied.0 = self.writer.as_ref().map_or(0, |w| w.len());
        tracing::debug!(
            bytes = self.copied.0,
            us = t.elapsed().as_micros() as u64,
            "files copied while their writes are held"
        );
    }

    /// While every process is parked: decides each file's policy over all its holders, writes
    /// it into their fds, has `watch` note who writes to them from this instant (checkpoint
    /// `id`), then takes the files (see [`Capture::records`]). Watching first: a write by
    /// another process while the files are taken is then seen, and makes the file unprovable,
    /// instead of slipping in between the record and the watch.
    pub fn at_park(
        &mut self,
        images: &mut [&mut ProcessImage],
        watch: &Watch,
        id: &str,
    ) -> anyhow::Result<Vec<FileRecord>> {
        let t = std::time::Instant::now();
        let uses: Vec<Use> = images.iter().flat_map(|i| policy::uses_of_image(i)).collect();
        let mut decided = policy::decide(&uses, &self.rules);
        super::set_fd_policies(images, &decided);
        decided.extend(super::unheld::find(&self.rules, &decided)?);
        let pids: Vec<i32> = images.iter().map(|i| i.pid).collect();
        for &pid in &pids {
            watch.adopt(pid);
        }
        let watched: Vec<_> = decided
            .iter()
            .filter(|d| d.policy != FilePolicy::Keep)
            .map(|d| (d.key, d.open.clone()))
            .collect();
        watch.mark(id, &pids, &watched);
        let records = self.records(&decided)?;
        tracing::debug!(
            files = records.len(),
            bytes = self.copied.1,
            us = t.elapsed().as_micros() as u64,
            "files taken while parked"
        );
        Ok(records)
    }

    /// The record of every file, copying again the snapshot files that changed since phase 1
    /// (or were not copied then) and those mapped shared writable.
    pub fn records(&mut self, decided: &[Decided]) -> anyhow::Result<Vec<FileRecord>> {
        let before = self.writer.as_ref().map_or(0, |w| w.len());
        let mut out = Vec::new();
        for d in decided {
            let content = match d.policy {
                FilePolicy::Snapshot => FileContent::Snapshot(
                    self.snapshot_parked(d)
                        .with_context(|| format!("cannot copy {} (a file the program writes to)", d.path))?,
                ),
                FilePolicy::Append => FileContent::Append(
                    File::open(&d.open)
                        .and_then(|f| append_mark(&f))
                        .with_context(|| format!("cannot read the log {}", d.path))?,
                ),
                FilePolicy::Keep => FileContent::Keep,
            };
            out.push(FileRecord {
                path: d.path.clone(),
                dev: d.key.0,
                ino: d.key.1,
                policy: d.policy,
                why: d.why.clone(),
                pids: d.pids.clone(),
                content,
            });
        }
        self.copied.1 = self
            .writer
            .as_ref()
            .map_or(0, |w| w.len())
            .saturating_sub(before.max(self.copied.0));
        Ok(out)
    }

    fn snapshot_parked(&mut self, d: &Decided) -> anyhow::Result<Snapshot> {
        let f = File::open(&d.open)?;
        let meta = f.metadata()?;
        let stamp = Stamp::of(&meta);
        let prev = self.copies.remove(&d.key);
        let blocks = match prev {
            Some(c) if c.stamp == stamp && !d.mapped => c.blocks,
            prev => self.copy_blocks(&f, stamp.size, prev.as_ref().map(|c| &c.blocks[..]), &d.path)?,
        };
        Ok(Snapshot {
            size: stamp.size,
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
            blocks,
            companions: companions(&d.path),
        })
    }

    /// Copies the blocks of `f` (`size` bytes) that are not all zero, referring to an equal
    /// block of `prev` (an earlier copy into this checkpoint) or of the parent's copy of `path`
    /// instead of storing it again.
    fn copy_blocks(&mut self, f: &File, size: u64, prev: Option<&[Block]>, path: &str) -> anyhow::Result<Vec<Block>> {
        let prev: HashMap<u64, Block> = prev.unwrap_or_default().iter().map(|b| (b.index, *b)).collect();
        let base = self.base.remove(path).unwrap_or_default();
        let mut buf = std::mem::take(&mut self.buf);
        let r = (|| {
            let mut out = Vec::new();
            let mut index = 0;
            while index < size.div_ceil(FILE_BLOCK) {
                let off = index * FILE_BLOCK;
                match seek_data(f, off) {
                    None => break,
                    Some(d) if d >= off + FILE_BLOCK => {
                        index = d / FILE_BLOCK;
                        continue;
                    }
                    Some(_) => {}
                }
                let len = FILE_BLOCK.min(size - off);
                let cloned = self.writer()?.clone_from(f, off, len, &mut buf);
                if cloned.is_none() {
                    buf.resize(len as usize, 0);
                    let n = read_full(f, &mut buf, off)?;
                    buf.truncate(n);
                }
                let undo = |w: &mut BlockStoreWriter| {
                    if let Some(at) = cloned {
                        w.undo(at);
                    }
                };
                if buf.is_empty() || buf.iter().all(|&b| b == 0) {
                    undo(self.writer()?);
                    index += 1;
                    continue;
                }
                let (hash, len) = (block_hash(&buf), buf.len() as u32);
                let same = prev.get(&index).filter(|b| (b.hash, b.len) == (hash, len)).copied();
                let same = same.or_else(|| {
                    let (_, _, rel, offset) = base.get(&index).filter(|b| (b.0, b.1) == (hash, len))?;
                    Some(Block {
                        index,
                        len,
                        hash,
                        store: self.store_index(rel),
                        offset: *offset,
                    })
                });
                let block = match same {
                    Some(b) => {
                        undo(self.writer()?);
                        b
                    }
                    None => {
                        let offset = match cloned {
                            Some(at) => at,
                            None => self.writer()?.put(&buf)?,
                        };
                        Block {
                            index,
                            len,
                            hash,
                            store: 0,
                            offset,
                        }
                    }
                };
                out.push(block);
                index += 1;
            }
            Ok(out)
        })();
        self.buf = buf;
        self.base.insert(path.to_string(), base);
        r
    }

    /// Makes the block store durable and writes the file records; what `ckptctl show` lists.
    pub fn finish(self, records: Vec<FileRecord>) -> anyhow::Result<Vec<FileSummary>> {
        let blocks_len = match self.writer {
            Some(w) => w.finish()?,
            None => 0,
        };
        if records.is_empty() {
            return Ok(Vec::new());
        }
        create_private_dir(&self.dir.host_dir(&self.host))?;
        // Without blocks of its own, store 0 does not exist and no block refers to it.
        let stores = self.stores;
        let summaries = records.iter().map(FileRecord::summary).collect();
        write_host_files(
            &self.dir,
            &self.host,
            &HostFiles {
                files: records,
                stores,
                blocks_len,
            },
        )?;
        Ok(summaries)
    }
}

/// The next offset at or after `off` holding data; `None` when none does (the rest is a
/// hole). File systems that cannot tell report data everywhere.
fn seek_data(f: &File, off: u64) -> Option<u64> {
    // SAFETY: lseek on an fd we hold.
    let r = unsafe { libc::lseek(f.as_raw_fd(), off as i64, libc::SEEK_DATA) };
    if r >= 0 {
        return Some(r as u64);
    }
    match std::io::Error::last_os_error().raw_os_error() {
        Some(libc::ENXIO) => None,
        _ => Some(off),
    }
}

/// Reads up to `buf.len()` bytes at `off`; fewer at the end of the file.
pub fn read_full(f: &File, buf: &mut [u8], off: u64) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match f.read_at(&mut buf[got..], off + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// A log's size and the checksums of its samples.
pub fn append_mark(f: &File) -> std::io::Result<AppendMark> {
    let size = f.metadata()?.len();
    let mut samples = Vec::new();
    let mut buf = Vec::new();
    for (offset, len) in sample_ranges(size) {
        buf.resize(len as usize, 0);
        f.read_exact_at(&mut buf, offset)?;
        samples.push(Sample {
            offset,
            len: len as u32,
            crc: crc32c::crc32c(&buf),
        });
    }
    Ok(AppendMark { size, samples })
}

/// The first sample of `mark` that `f` does not hold any more (its offset).
pub fn changed_sample(f: &File, mark: &AppendMark) -> std::io::Result<Option<u64>> {
    let mut buf = Vec::new();
    for s in &mark.samples {
        buf.resize(s.len as usize, 0);
        let n = read_full(f, &mut buf, s.offset)?;
        if n < buf.len() || crc32c::crc32c(&buf) != s.crc {
            return Ok(Some(s.offset));
        }
    }
    Ok(None)
}

/// How long the copy of files while their writes are held may take (well within the time a
/// program keeps its gate shut without word from ckptd, two minutes).
const PRECOPY_MAX: std::time::Duration = std::time::Duration::from_secs(30);

/// Suffix of the names a restore gives companions it sets aside.
pub const ASIDE: &str = ".ckpt-aside-";

/// The names sqlite gives the files beside a database (`NAME-journal`, `NAME-wal`,
/// `NAME-shm`): only those are companions (another `NAME-…` is some other file).
const COMPANION_SUFFIXES: [&str; 3] = ["-journal", "-wal", "-shm"];

/// The companions beside `path` now, as they are.
pub fn companions(path: &str) -> Vec<ckpt_format::Companion> {
    use std::os::unix::fs::MetadataExt;
    let p = std::path::Path::new(path);
    let Some(name) = p.file_name().and_then(|n| n.to_str()) else {
        return Vec::new();
    };
    COMPANION_SUFFIXES
        .iter()
        .filter_map(|suffix| {
            let name = format!("{name}{suffix}");
            let m = std::fs::symlink_metadata(p.with_file_name(&name)).ok()?;
            Some(ckpt_format::Companion {
                name,
                ino: m.ino(),
                size: m.size(),
                mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
            })
        })
        .collect()
}
