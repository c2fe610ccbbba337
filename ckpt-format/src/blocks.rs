//! Block stores: a header page, then the blocks of snapshot files, each at a page-aligned
//! offset (so that extents can be cloned in). Where each block lives and its hash are in the
//! host's file records.

use crate::{Block, CheckpointDir, FormatError, HostFiles, Store};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const MAGIC: [u8; 8] = *b"CKPTBLKS";
use crate::header::HEADER_LEN;
const ALIGN: u64 = 4096;

/// The hash blocks are compared and verified with.
pub fn block_hash(data: &[u8]) -> u128 {
    xxhash_rust::xxh3::xxh3_128(data)
}

pub struct BlockStoreWriter {
    path: PathBuf,
    file: File,
    end: u64,
    /// Cleared once the file system refuses to share extents.
    can_clone: bool,
}

/// `FICLONERANGE`'s argument.
#[repr(C)]
struct CloneRange {
    src_fd: i64,
    src_offset: u64,
    src_length: u64,
    dest_offset: u64,
}
const FICLONERANGE: libc::c_ulong = 0x4020_940d;

impl BlockStoreWriter {
    pub fn create(path: &Path) -> Result<Self, FormatError> {
        let file = crate::private::create_private_file(path).map_err(|e| FormatError::io(path, e))?;
        file.write_all_at(&crate::header::header(&MAGIC), 0)
            .map_err(|e| FormatError::io(path, e))?;
        Ok(Self {
            path: path.to_owned(),
            file,
            end: HEADER_LEN,
            can_clone: true,
        })
    }

    fn advance(&mut self, len: u64) -> u64 {
        let at = self.end;
        self.end = (at + len).div_ceil(ALIGN) * ALIGN;
        at
    }

    /// Stores `data`; returns where.
    pub fn put(&mut self, data: &[u8]) -> Result<u64, FormatError> {
        let at = self.end;
        self.file
            .write_all_at(data, at)
            .map_err(|e| FormatError::io(&self.path, e))?;
        Ok(self.advance(data.len() as u64))
    }

    /// Stores `len` bytes of `src` at `offset` by sharing its extents (btrfs, xfs), and reads
    /// the stored copy into `buf`, so that what is hashed is exactly what is stored. `None`
    /// when the file system cannot (the caller reads and writes instead).
    pub fn clone_from(&mut self, src: &File, offset: u64, len: u64, buf: &mut Vec<u8>) -> Option<u64> {
        if !self.can_clone {
            return None;
        }
        let arg = CloneRange {
            src_fd: src.as_raw_fd() as i64,
            src_offset: offset,
            src_length: len,
            dest_offset: self.end,
        };
        // SAFETY: FICLONERANGE reads a CloneRange we own; both fds are open.
        let r = unsafe { libc::ioctl(self.file.as_raw_fd(), FICLONERANGE, &arg) };
        if r != 0 {
            // EINVAL: this range is not aligned (a short last block); others: never here.
            if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
                self.can_clone = false;
            }
            return None;
        }
        buf.resize(len as usize, 0);
        self.file.read_exact_at(buf, self.end).ok()?;
        Some(self.advance(len))
    }

    /// Forgets the block just stored at `at` (it equals one stored before); the next block
    /// takes its place.
    pub fn undo(&mut self, at: u64) {
        if at >= HEADER_LEN && at < self.end {
            self.end = at;
        }
    }

    pub fn len(&self) -> u64 {
        self.end
    }

    pub fn is_empty(&self) -> bool {
        self.end == HEADER_LEN
    }

    /// Cuts what `undo` left behind and fsyncs; the store is durable when this returns.
    pub fn finish(self) -> Result<u64, FormatError> {
        self.file
            .set_len(self.end)
            .and_then(|_| self.file.sync_all())
            .map_err(|e| FormatError::io(&self.path, e))?;
        Ok(self.end)
    }
}

pub struct BlockStoreReader {
    path: PathBuf,
    file: File,
    len: u64,
}

impl BlockStoreReader {
    /// Opens a store and checks its header and that it is as long as the records say.
    pub fn open(path: &Path, expected_len: u64) -> Result<Self, FormatError> {
        let file = File::open(path).map_err(|e| FormatError::io(path, e))?;
        let len = file.metadata().map_err(|e| FormatError::io(path, e))?.len();
        crate::header::check(path, &file, len, &MAGIC, "file block store", expected_len)?;
        Ok(Self {
            path: path.to_owned(),
            file,
            len,
        })
    }

    /// Reads block `b` into `buf` (resized to it) and checks its hash.
    pub fn read_block(&self, b: &Block, buf: &mut Vec<u8>) -> Result<(), FormatError> {
        let end = b.offset.saturating_add(b.len as u64);
        if end > self.len {
            return Err(FormatError::Truncated {
                path: self.path.clone(),
                what: "file block store",
                expected: end,
                got: self.len,
            });
        }
        buf.resize(b.len as usize, 0);
        self.file
            .read_exact_at(buf, b.offset)
            .map_err(|e| FormatError::io(&self.path, e))?;
        if block_hash(buf) != b.hash {
            return Err(FormatError::Checksum {
                path: self.path.clone(),
                what: format!("file block {} (store offset {})", b.index, b.offset),
            });
        }
        Ok(())
    }
}

/// Opens every store of `files` (paths relative to `root`), in order.
pub fn open_block_stores(root: &Path, files: &HostFiles) -> Result<Vec<BlockStoreReader>, FormatError> {
    files
        .stores
        .iter()
        .enumerate()
        .map(|(i, rel)| BlockStoreReader::open(&root.join(rel), if i == 0 { files.blocks_len } else { 0 }))
        .collect()
}

impl Store {
    /// Copies the blocks `host`'s files in checkpoint `child` keep in stores under `prefix`
    /// (a checkpoint being deleted) into a store of its own, and points them there. Returns
    /// whether anything was folded.
    pub(crate) fn fold_files(
        &self,
        child: &CheckpointDir,
        host: &str,
        prefix: &str,
        gone: &str,
    ) -> Result<bool, FormatError> {
        let mut files = crate::read_host_files(child, host)?;
        let doomed: Vec<usize> = (0..files.stores.len())
            .filter(|&i| files.stores[i].starts_with(prefix))
            .collect();
        if doomed.is_empty() {
            return Ok(false);
        }
        let readers = doomed
            .iter()
            .map(|&i| BlockStoreReader::open(&self.root().join(&files.stores[i]), 0).map(|r| (i as u32, r)))
            .collect::<Result<Vec<_>, _>>()?;
        let rel = format!("{}/{host}/files-folded-{gone}.blocks", child.id);
        let mut out = BlockStoreWriter::create(&self.root().join(&rel))?;
        let kept: Vec<u32> = (0..files.stores.len() as u32)
            .filter(|i| !doomed.contains(&(*i as usize)))
            .collect();
        let folded_index = kept.len() as u32;
        let mut buf = Vec::new();
        for f in &mut files.files {
            let crate::FileContent::Snapshot(s) = &mut f.content else {
                continue;
            };
            for b in &mut s.blocks {
                match readers.iter().find(|(i, _)| *i == b.store) {
                    Some((_, r)) => {
                        r.read_block(b, &mut buf)?;
                        b.offset = out.put(&buf)?;
                        b.store = folded_index;
                    }
                    None => b.store = kept.iter().position(|&k| k == b.store).unwrap_or(0) as u32,
                }
            }
        }
        out.finish()?;
        let mut stores: Vec<String> = kept.iter().map(|&i| files.stores[i as usize].clone()).collect();
        stores.push(rel);
        files.stores = stores;
        crate::write_host_files(child, host, &files)?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_read_verify_truncate() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("files.blocks");
        let mut w = BlockStoreWriter::create(&p).unwrap();
        let a: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        let b = vec![7u8; 100];
        let at_a = w.put(&a).unwrap();
        let at_x = w.put(&b).unwrap();
        w.undo(at_x);
        let at_b = w.put(&b).unwrap();
        assert_eq!((at_a, at_x, at_b), (4096, 3 * 4096, 3 * 4096));
        let len = w.finish().unwrap();
        assert_eq!(len, 4 * 4096);
        let r = BlockStoreReader::open(&p, len).unwrap();
        let blk = |index, data: &[u8], offset| Block {
            index,
            len: data.len() as u32,
            hash: block_hash(data),
            store: 0,
            offset,
        };
        let mut buf = Vec::new();
        r.read_block(&blk(0, &a, at_a), &mut buf).unwrap();
        assert_eq!(buf, a);
        r.read_block(&blk(1, &b, at_b), &mut buf).unwrap();
        assert_eq!(buf, b);

        let mut bytes = std::fs::read(&p).unwrap();
        bytes[4096 + 10] ^= 1;
        std::fs::write(&p, &bytes).unwrap();
        let r = BlockStoreReader::open(&p, len).unwrap();
        assert!(matches!(
            r.read_block(&blk(0, &a, at_a), &mut buf),
            Err(FormatError::Checksum { .. })
        ));
        std::fs::write(&p, &bytes[..5000]).unwrap();
        assert!(matches!(
            BlockStoreReader::open(&p, len),
            Err(FormatError::Truncated { .. })
        ));
    }

    /// On ext4 the clone is refused and the caller writes; with TMPDIR on btrfs or xfs (and
    /// CKPT_EXPECT_CLONE=1) the extents are shared.
    #[test]
    fn clone_falls_back_on_ext4_or_works() {
        let dir = tempfile::tempdir().unwrap();
        let src_path = dir.path().join("src");
        let data = vec![3u8; 2 * 4096];
        std::fs::write(&src_path, &data).unwrap();
        let src = File::open(&src_path).unwrap();
        let mut w = BlockStoreWriter::create(&dir.path().join("s.blocks")).unwrap();
        let mut buf = Vec::new();
        match w.clone_from(&src, 0, data.len() as u64, &mut buf) {
            Some(at) => {
                assert_eq!(at, 4096);
                assert_eq!(buf, data);
            }
            None => assert!(std::env::var_os("CKPT_EXPECT_CLONE").is_none(), "the clone was refused"),
        }
    }
}
