//! Store helpers: walking, hashing and measuring checkpoint directories.

use anyhow::{Context, Result};
use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let mut entries: Vec<_> = fs::read_dir(dir)?.flatten().map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        let md = fs::symlink_metadata(&p)?;
        if md.is_dir() {
            out.push(p.clone());
            walk(&p, out)?;
        } else {
            out.push(p);
        }
    }
    Ok(())
}

/// All paths below `dir` (sorted, recursive, dirs included).
pub fn walk_dir(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v = Vec::new();
    walk(dir, &mut v).with_context(|| format!("walk {}", dir.display()))?;
    Ok(v)
}

struct Fnv(u64);
impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf29ce484222325)
    }
    fn bytes(&mut self, b: &[u8]) {
        let mut chunks = b.chunks_exact(8);
        for c in &mut chunks {
            let w = u64::from_le_bytes(c.try_into().unwrap());
            self.0 = (self.0 ^ w).wrapping_mul(0x100000001b3).rotate_left(23);
        }
        for &x in chunks.remainder() {
            self.0 = (self.0 ^ x as u64).wrapping_mul(0x100000001b3);
        }
        self.0 ^= b.len() as u64;
    }
}

/// Hash of the names, sizes and contents of every file below `dir`.
pub fn hash_dir(dir: &Path) -> Result<String> {
    let mut h = Fnv::new();
    let mut buf = vec![0u8; 1 << 20];
    for p in walk_dir(dir)? {
        let rel = p.strip_prefix(dir).unwrap_or(&p);
        h.bytes(rel.as_os_str().as_encoded_bytes());
        let md = fs::symlink_metadata(&p)?;
        if md.is_file() {
            h.bytes(&md.len().to_le_bytes());
            let mut f = File::open(&p).with_context(|| format!("open {}", p.display()))?;
            loop {
                let n = f.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                h.bytes(&buf[..n]);
            }
        } else if md.is_dir() {
            h.bytes(b"/");
        }
    }
    Ok(format!("{:016x}", h.0))
}

/// `(apparent bytes, allocated bytes)` of all files below `dir` (like du).
pub fn dir_usage(dir: &Path) -> Result<(u64, u64)> {
    let mut apparent = 0;
    let mut disk = 0;
    for p in walk_dir(dir)? {
        let md = fs::symlink_metadata(&p)?;
        if md.is_file() {
            apparent += md.len();
            disk += md.blocks() * 512;
        }
    }
    Ok((apparent, disk))
}
