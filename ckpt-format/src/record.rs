//! The one framing of every metadata file: magic, version, kind, payload length, CRC32C, payload.

use crate::FormatError;
use serde::{de::DeserializeOwned, Serialize};
use std::io::Write;
use std::path::Path;

/// Version of the format written by this build. Readers accept versions from
/// [`OLDEST_READABLE`] up to this one.
pub const FORMAT_VERSION: u32 = 6;
/// Version 2 gave files a policy (`FdKind::File`, the manifest's file list, `files.img`);
/// version 3 added kernel objects (`FdKind::Object`), POSIX timers and IP socket options;
/// version 4 the process tree (parents, groups, sessions, zombies), terminals and SysV IPC;
/// version 5 which of the job's stdio a pipe or socket end kept at another number is, file
/// locks and leases, open file descriptions shared across processes, each thread's
/// capability sets; version 6 kernel AIO contexts (`MappingKind::AioRing`).
/// bincode records have no optional fields, so each version reads only its own.
pub const OLDEST_READABLE: u32 = 6;

const MAGIC: [u8; 8] = *b"CKPTREC\0";
const HEADER_LEN: usize = 8 + 4 + 4 + 8 + 4 + 4;

/// What a record holds; checked on read so a manifest is never decoded as a process image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum RecordKind {
    Manifest = 1,
    Process = 2,
    Files = 3,
    Sysv = 4,
}

impl RecordKind {
    fn name(self) -> &'static str {
        match self {
            RecordKind::Manifest => "manifest",
            RecordKind::Process => "process metadata",
            RecordKind::Files => "file records",
            RecordKind::Sysv => "SysV IPC records",
        }
    }
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard()
}

/// Encodes `value` and writes it atomically (temp file, fsync, rename) to `path`, readable by
/// its owner alone.
pub fn write_record<T: Serialize>(path: &Path, kind: RecordKind, value: &T) -> Result<u64, FormatError> {
    let payload = bincode::serde::encode_to_vec(value, config()).map_err(|e| FormatError::Decode {
        path: path.to_owned(),
        what: kind.name(),
        msg: e.to_string(),
    })?;
    let mut buf = Vec::with_capacity(HEADER_LEN + payload.len());
    buf.extend_from_slice(&MAGIC);
    buf.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    buf.extend_from_slice(&(kind as u32).to_le_bytes());
    buf.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    buf.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
    let header_crc = crc32c::crc32c(&buf);
    buf.extend_from_slice(&header_crc.to_le_bytes());
    buf.extend_from_slice(&payload);

    let tmp = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        let mut f = crate::private::create_private_file(&tmp)?;
        f.write_all(&buf)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| FormatError::io(path, e))?;
    Ok(buf.len() as u64)
}

/// Reads and verifies a record written by [`write_record`].
pub fn read_record<T: DeserializeOwned>(path: &Path, kind: RecordKind) -> Result<T, FormatError> {
    let buf = std::fs::read(path).map_err(|e| FormatError::io(path, e))?;
    let truncated = |expected: u64| FormatError::Truncated {
        path: path.to_owned(),
        what: kind.name(),
        expected,
        got: buf.len() as u64,
    };
    if buf.len() < HEADER_LEN {
        if buf.len() >= 8 && buf[..8] != MAGIC {
            return Err(FormatError::BadMagic {
                path: path.to_owned(),
                what: kind.name(),
            });
        }
        return Err(truncated(HEADER_LEN as u64));
    }
    if buf[..8] != MAGIC {
        return Err(FormatError::BadMagic {
            path: path.to_owned(),
            what: kind.name(),
        });
    }
    let u32_at = |o: usize| u32::from_le_bytes(buf[o..o + 4].try_into().unwrap_or_default());
    let header_crc = u32_at(28);
    if crc32c::crc32c(&buf[..28]) != header_crc {
        return Err(FormatError::Checksum {
            path: path.to_owned(),
            what: format!("{} header", kind.name()),
        });
    }
    let version = u32_at(8);
    if version > FORMAT_VERSION {
        return Err(FormatError::Version {
            path: path.to_owned(),
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    if version < OLDEST_READABLE {
        return Err(FormatError::Old {
            path: path.to_owned(),
            found: version,
            oldest: OLDEST_READABLE,
        });
    }
    if u32_at(12) != kind as u32 {
        return Err(FormatError::BadMagic {
            path: path.to_owned(),
            what: kind.name(),
        });
    }
    let len = u64::from_le_bytes(buf[16..24].try_into().unwrap_or_default());
    let payload_crc = u32_at(24);
    let end = (HEADER_LEN as u64).saturating_add(len);
    if (buf.len() as u64) < end {
        return Err(truncated(end));
    }
    let payload = &buf[HEADER_LEN..end as usize];
    if crc32c::crc32c(payload) != payload_crc {
        return Err(FormatError::Checksum {
            path: path.to_owned(),
            what: kind.name().to_string(),
        });
    }
    let (value, _) = bincode::serde::decode_from_slice(payload, config()).map_err(|e| FormatError::Decode {
        path: path.to_owned(),
        what: kind.name(),
        msg: e.to_string(),
    })?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_damage() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.img");
        let v: Vec<String> = vec!["a".into(), "bc".into()];
        write_record(&p, RecordKind::Process, &v).unwrap();
        let back: Vec<String> = read_record(&p, RecordKind::Process).unwrap();
        assert_eq!(back, v);
        assert!(matches!(
            read_record::<Vec<String>>(&p, RecordKind::Manifest),
            Err(FormatError::BadMagic { .. })
        ));

        let mut bytes = std::fs::read(&p).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x40;
        std::fs::write(&p, &bytes).unwrap();
        assert!(matches!(
            read_record::<Vec<String>>(&p, RecordKind::Process),
            Err(FormatError::Checksum { .. })
        ));

        bytes[last] ^= 0x40;
        std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
        assert!(matches!(
            read_record::<Vec<String>>(&p, RecordKind::Process),
            Err(FormatError::Truncated { .. })
        ));
    }
}
