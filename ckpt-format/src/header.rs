//! The header page every store file (page store, block store) starts with: a magic naming its
//! kind, then the format version. A page, so that the data after it stays page-aligned.

use crate::{FormatError, PAGE_SIZE};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Length of the header: data starts after it.
pub const HEADER_LEN: u64 = PAGE_SIZE;

/// The header of a store file of kind `magic`.
pub fn header(magic: &[u8; 8]) -> Vec<u8> {
    let mut h = vec![0u8; HEADER_LEN as usize];
    h[..8].copy_from_slice(magic);
    h[8..12].copy_from_slice(&crate::FORMAT_VERSION.to_le_bytes());
    h
}

/// Checks that `file` (`len` bytes long; the records say `expected_len`) is a store of kind
/// `magic` (`what`, for messages) that this version can read.
pub fn check(
    path: &Path,
    file: &File,
    len: u64,
    magic: &[u8; 8],
    what: &'static str,
    expected_len: u64,
) -> Result<(), FormatError> {
    let truncated = |expected| FormatError::Truncated {
        path: path.to_owned(),
        what,
        expected,
        got: len,
    };
    if len < 12 {
        return Err(truncated(HEADER_LEN.max(expected_len)));
    }
    let mut h = [0u8; 12];
    file.read_exact_at(&mut h, 0).map_err(|e| FormatError::io(path, e))?;
    if h[..8] != magic[..] {
        return Err(FormatError::BadMagic {
            path: path.to_owned(),
            what,
        });
    }
    let version = u32::from_le_bytes(h[8..12].try_into().unwrap_or_default());
    if version > crate::FORMAT_VERSION {
        return Err(FormatError::Version {
            path: path.to_owned(),
            found: version,
            supported: crate::FORMAT_VERSION,
        });
    }
    if len < expected_len {
        return Err(truncated(expected_len));
    }
    Ok(())
}
