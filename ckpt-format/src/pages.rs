//! Page stores: a header page, then raw page data. Where each run lives and its CRC32C are in
//! the process metadata, so a store can be streamed without seeking back.

use crate::{FormatError, PageRun, FORMAT_VERSION};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

pub const PAGE_SIZE: u64 = 4096;
/// Runs are cut at this size so that a damaged byte is pinned to a small range and a reader
/// can verify while streaming.
pub const RUN_MAX_BYTES: u64 = 1 << 20;
const MAGIC: [u8; 8] = *b"CKPTPAGE";
/// The header takes a whole page so that page data stays page-aligned in the file.
const HEADER_LEN: u64 = PAGE_SIZE;

pub struct PageStoreWriter {
    path: PathBuf,
    out: BufWriter<File>,
    offset: u64,
}

impl PageStoreWriter {
    pub fn create(path: &Path) -> Result<Self, FormatError> {
        let f = File::create(path).map_err(|e| FormatError::io(path, e))?;
        let mut out = BufWriter::with_capacity(1 << 20, f);
        let mut header = vec![0u8; HEADER_LEN as usize];
        header[..8].copy_from_slice(&MAGIC);
        header[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.write_all(&header).map_err(|e| FormatError::io(path, e))?;
        Ok(Self {
            path: path.to_owned(),
            out,
            offset: HEADER_LEN,
        })
    }

    /// Appends the bytes of memory starting at `addr`, cut into runs of at most
    /// [`RUN_MAX_BYTES`], and returns the runs to record in the metadata.
    pub fn append(&mut self, addr: u64, data: &[u8], runs: &mut Vec<PageRun>) -> Result<(), FormatError> {
        for (i, chunk) in data.chunks(RUN_MAX_BYTES as usize).enumerate() {
            self.out.write_all(chunk).map_err(|e| FormatError::io(&self.path, e))?;
            runs.push(PageRun {
                addr: addr + i as u64 * RUN_MAX_BYTES,
                len: chunk.len() as u64,
                store: 0,
                offset: self.offset,
                crc: crc32c::crc32c(chunk),
            });
            self.offset += chunk.len() as u64;
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
        Ok(self.offset)
    }
}

pub struct PageStoreReader {
    path: PathBuf,
    file: File,
    len: u64,
}

impl PageStoreReader {
    /// Opens a store and checks its header and that it is as long as the metadata says.
    pub fn open(path: &Path, expected_len: u64) -> Result<Self, FormatError> {
        let file = File::open(path).map_err(|e| FormatError::io(path, e))?;
        let len = file.metadata().map_err(|e| FormatError::io(path, e))?.len();
        let mut header = [0u8; 12];
        if len < header.len() as u64 {
            return Err(FormatError::Truncated {
                path: path.to_owned(),
                what: "page store",
                expected: expected_len,
                got: len,
            });
        }
        file.read_exact_at(&mut header, 0)
            .map_err(|e| FormatError::io(path, e))?;
        if header[..8] != MAGIC {
            return Err(FormatError::BadMagic {
                path: path.to_owned(),
                what: "page store",
            });
        }
        let version = u32::from_le_bytes(header[8..12].try_into().unwrap_or_default());
        if version > FORMAT_VERSION {
            return Err(FormatError::Version {
                path: path.to_owned(),
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        if len < expected_len {
            return Err(FormatError::Truncated {
                path: path.to_owned(),
                what: "page store",
                expected: expected_len,
                got: len,
            });
        }
        Ok(Self {
            path: path.to_owned(),
            file,
            len,
        })
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads one run into `buf` (resized to the run) and checks its CRC.
    pub fn read_run(&self, run: &PageRun, buf: &mut Vec<u8>) -> Result<(), FormatError> {
        if run.offset.saturating_add(run.len) > self.len {
            return Err(FormatError::Truncated {
                path: self.path.clone(),
                what: "page store",
                expected: run.offset + run.len,
                got: self.len,
            });
        }
        buf.resize(run.len as usize, 0);
        self.file
            .read_exact_at(buf, run.offset)
            .map_err(|e| FormatError::io(&self.path, e))?;
        if crc32c::crc32c(buf) != run.crc {
            return Err(FormatError::Checksum {
                path: self.path.clone(),
                what: format!(
                    "pages at {:#x} (+{} bytes, file offset {})",
                    run.addr, run.len, run.offset
                ),
            });
        }
        Ok(())
    }

    /// Checks every run of this store.
    pub fn verify<'a>(&self, runs: impl IntoIterator<Item = &'a PageRun>) -> Result<u64, FormatError> {
        let mut buf = Vec::new();
        let mut total = 0;
        for run in runs {
            self.read_run(run, &mut buf)?;
            total += run.len;
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
