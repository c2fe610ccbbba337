//! Open files whose name is gone: unlinked scratch files, `tmpfile()` and `O_TMPFILE` files.
//! Nothing on disk holds them after the program dies, so their content travels in the image
//! (zstd-compressed, holes and zero blocks left out) and they come back open, unlinked, at the
//! same offset, in the same directory.
//!
//! A file the process maps `MAP_SHARED` while it holds it through an fd is refused by ckptd:
//! the mapping's pages come back in a memfd of their own, so the two would be two files.

use crate::reopen::{self, check};
use crate::{KindError, Source};
use serde::{Deserialize, Serialize};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;

/// Most data (holes left out) a deleted file may hold: the content lives inside the process
/// image, which is read whole.
pub const DATA_MAX: u64 = 64 << 20;

/// Content is stored in chunks of this size; a chunk of zeros is not stored.
const CHUNK: u64 = 1 << 20;

/// `O_TMPFILE` without the `O_DIRECTORY` it includes.
const TMPFILE_BIT: i32 = libc::O_TMPFILE & !libc::O_DIRECTORY;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Record {
    /// The name the file had (`/tmp/scratch`), or for an `O_TMPFILE` file `/dir/#inode`.
    pub path: String,
    /// Made with `O_TMPFILE` (it never had a name).
    pub tmpfile: bool,
    /// The inode on the host at the checkpoint: descriptions of one inode share it again.
    pub dev: u64,
    pub ino: u64,
    /// `O_RDONLY`, `O_WRONLY` or `O_RDWR` of this description.
    pub access: i32,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    /// The description's offset.
    pub pos: u64,
    pub chunks: Vec<Chunk>,
}

/// A stored piece of content; everything not covered reads as zeros.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Chunk {
    pub offset: u64,
    pub len: u64,
    /// zstd frame of the `len` bytes.
    pub zdata: Vec<u8>,
}

/// A regular file whose link says it was removed. Memfds are named like deleted files but are
/// not in a directory.
pub fn claims(src: &Source) -> bool {
    src.meta.file_type().is_file() && src.link.ends_with(" (deleted)") && !crate::mqueue::claims(src)
}

pub fn capture(src: &Source) -> Result<Record, KindError> {
    let path = src.link.strip_suffix(" (deleted)").unwrap_or(src.link).to_string();
    if path.starts_with("/memfd:") {
        return Err(KindError::Unsupported(format!("a memfd ({path})")));
    }
    if !path.starts_with('/') {
        return Err(KindError::Unsupported(format!(
            "a deleted file outside any directory ({path})"
        )));
    }
    let pos = src.pos()?;
    // Our own description: seeking it for holes leaves the program's offset alone.
    let what = || format!("the content of deleted file {path}");
    let own = reopen::of_process(src.pid, src.fd, libc::O_RDONLY).map_err(KindError::read(what()))?;
    let size = src.meta.size();
    let chunks = read_chunks(own.as_raw_fd(), size, &path).map_err(|e| match e {
        Read::Io(e) => KindError::read(what())(e),
        Read::TooBig(n) => KindError::Refused(format!(
            "deleted file {path} (fd {}) holds {} MiB of data; ckpt saves deleted files of up to {} MiB",
            src.fd,
            n >> 20,
            DATA_MAX >> 20
        )),
    })?;
    Ok(Record {
        tmpfile: src.flags & TMPFILE_BIT == TMPFILE_BIT,
        path,
        dev: src.meta.dev(),
        ino: src.meta.ino(),
        access: src.flags & libc::O_ACCMODE,
        mode: src.meta.mode() & 0o7777,
        uid: src.meta.uid(),
        gid: src.meta.gid(),
        size,
        pos,
        chunks,
    })
}

pub(crate) enum Read {
    Io(std::io::Error),
    TooBig(u64),
}

/// The data ranges (`SEEK_DATA`/`SEEK_HOLE`) of the file, in compressed chunks.
pub(crate) fn read_chunks(fd: RawFd, size: u64, path: &str) -> Result<Vec<Chunk>, Read> {
    let mut chunks = Vec::new();
    let mut stored = 0u64;
    let mut at = 0u64;
    let mut buf = vec![0u8; CHUNK as usize];
    while at < size {
        // SAFETY: lseek on our own description.
        let data = unsafe { libc::lseek(fd, at as i64, libc::SEEK_DATA) };
        if data < 0 {
            match std::io::Error::last_os_error() {
                e if e.raw_os_error() == Some(libc::ENXIO) => break,
                e => return Err(Read::Io(e)),
            }
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        let end = (check(hole).map_err(Read::Io)? as u64).min(size);
        let mut off = data as u64;
        while off < end {
            let len = (end - off).min(CHUNK) as usize;
            let part = &mut buf[..len];
            read_exact_at(fd, part, off).map_err(Read::Io)?;
            if part.iter().any(|&b| b != 0) {
                stored += len as u64;
                if stored > DATA_MAX {
                    return Err(Read::TooBig(stored));
                }
                let zdata = zstd::bulk::compress(part, 3).map_err(Read::Io)?;
                chunks.push(Chunk {
                    offset: off,
                    len: len as u64,
                    zdata,
                });
            }
            off += len as u64;
        }
        at = end;
    }
    tracing::debug!(path, chunks = chunks.len(), stored, "deleted file content");
    Ok(chunks)
}

fn read_exact_at(fd: RawFd, mut buf: &mut [u8], mut off: u64) -> std::io::Result<()> {
    while !buf.is_empty() {
        // SAFETY: pread into a buffer we own, of its length.
        let n = check(unsafe { libc::pread(fd, buf.as_mut_ptr().cast(), buf.len(), off as i64) } as i64)?;
        if n == 0 {
            // Truncated under us: the rest reads as zeros.
            buf.fill(0);
            return Ok(());
        }
        buf = &mut buf[n as usize..];
        off += n as u64;
    }
    Ok(())
}

/// The files re-created so far, by their inode at the checkpoint: one per inode, however many
/// descriptions of it there were.
pub type Made = reopen::Inodes;

/// One description of the re-created file, at its offset (the offset belongs to the
/// description, which every holder shares).
pub fn recreate(rec: &Record, made: &mut Made) -> Result<OwnedFd, KindError> {
    made.description((rec.dev, rec.ino), rec.access, rec.pos, || make(rec))
        .map_err(KindError::recreate(format!("deleted file {}", rec.path)))
}

/// Creates the file in its directory (or the nearest one still there), fills it, unlinks it.
fn make(rec: &Record) -> std::io::Result<OwnedFd> {
    let (dir, name) = rec.path.rsplit_once('/').unwrap_or(("", &rec.path));
    let mut dir = if dir.is_empty() { "/" } else { dir };
    let original_dir = std::path::Path::new(dir).is_dir();
    while !std::path::Path::new(dir).is_dir() {
        dir = match dir.rsplit_once('/') {
            Some(("", _)) | None => "/",
            Some((up, _)) => up,
        };
    }
    let file = if rec.tmpfile {
        match reopen::open(dir, libc::O_TMPFILE | libc::O_RDWR) {
            Ok(f) => f,
            // A filesystem without O_TMPFILE: a named file, unlinked, is the same to the program.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP) | Some(libc::EISDIR)) => {
                named(dir, name, false)?
            }
            Err(e) => return Err(e),
        }
    } else {
        named(dir, name, original_dir)?
    };
    let fd = file.as_raw_fd();
    reopen::set_owner_mode(fd, rec.uid, rec.gid, rec.mode)?;
    write_chunks(fd, rec.size, &rec.chunks)?;
    Ok(file)
}

/// A new file under its old name when that is free (its `/proc` link then reads as before),
/// else under a hidden one; unlinked at once.
fn named(dir: &str, name: &str, try_original: bool) -> std::io::Result<OwnedFd> {
    let sep = if dir.ends_with('/') { "" } else { "/" };
    let original = (try_original && !name.is_empty()).then(|| format!("{dir}{sep}{name}"));
    let hidden = format!("{dir}{sep}.ckpt-deleted-");
    reopen::create_unlinked(
        original.into_iter().chain(reopen::spare_names(&hidden)),
        |path| reopen::open(path, libc::O_CREAT | libc::O_EXCL | libc::O_RDWR),
        |path| std::fs::remove_file(path),
    )
}

/// Gives the file just made (empty) `size` bytes and the content of `chunks` (what
/// [`read_chunks`] took), the rest holes.
pub(crate) fn write_chunks(fd: RawFd, size: u64, chunks: &[Chunk]) -> std::io::Result<()> {
    // SAFETY: ftruncate on a file we own; the data is written over the holes.
    check(unsafe { libc::ftruncate(fd, size as i64) } as i64)?;
    for c in chunks {
        let data = zstd::bulk::decompress(&c.zdata, c.len as usize)?;
        if data.len() as u64 != c.len {
            return Err(std::io::ErrorKind::InvalidData.into());
        }
        write_all_at(fd, &data, c.offset)?;
    }
    Ok(())
}

fn write_all_at(fd: RawFd, mut buf: &[u8], mut off: u64) -> std::io::Result<()> {
    while !buf.is_empty() {
        // SAFETY: pwrite from a buffer we own, of its length.
        let n = check(unsafe { libc::pwrite(fd, buf.as_ptr().cast(), buf.len(), off as i64) } as i64)?;
        buf = &buf[n as usize..];
        off += n as u64;
    }
    Ok(())
}

pub fn describe(rec: &Record) -> String {
    let stored: u64 = rec.chunks.iter().map(|c| c.len).sum();
    let how = if rec.tmpfile { "O_TMPFILE file" } else { "deleted file" };
    format!(
        "{how} {} ({} bytes, {stored} with data; at offset {})",
        rec.path, rec.size, rec.pos
    )
}
