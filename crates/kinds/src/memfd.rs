//! memfds held through an fd (`memfd_create`): a file that lives in memory only, so its
//! content travels in the image (as a deleted file's does), with its name, size, seals, mode
//! and owner; every description comes back at its offset, descriptions of one memfd sharing it
//! again. A memfd also mapped shared is that same memfd again for the mapping (see ckptd's
//! `shared_memory`), so a write through one is seen through the other.

use crate::deleted::{self, Chunk, Read};
use crate::reopen::{self, check};
use crate::{KindError, Source};
use serde::{Deserialize, Serialize};
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

/// `MFD_EXEC` (Linux 6.3): executable whatever `vm.memfd_noexec` says; the mode is set after.
const MFD_EXEC: libc::c_uint = 0x10;
const HUGETLBFS_MAGIC: i64 = 0x958458f6;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Record {
    /// The name given to `memfd_create` (`/memfd:NAME` in /proc).
    pub name: String,
    /// The memfd on the host at the checkpoint: descriptions of one memfd share it again.
    pub dev: u64,
    pub ino: u64,
    /// `O_RDONLY`, `O_WRONLY` or `O_RDWR` of this description.
    pub access: i32,
    pub pos: u64,
    pub size: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// `F_GET_SEALS`: `F_SEAL_SEAL` alone for a memfd made without `MFD_ALLOW_SEALING`;
    /// `F_SEAL_EXEC` for `MFD_NOEXEC_SEAL`.
    pub seals: i32,
    pub chunks: Vec<Chunk>,
}

pub fn claims(src: &Source) -> bool {
    src.meta.file_type().is_file() && src.link.starts_with("/memfd:")
}

pub fn capture(src: &Source) -> Result<Record, KindError> {
    let shown = src.link.strip_suffix(" (deleted)").unwrap_or(src.link);
    let name = shown.strip_prefix("/memfd:").unwrap_or(shown).to_string();
    let what = || format!("memfd {shown} (fd {})", src.fd);
    let fd = src.file().map_err(KindError::read(what()))?;
    let mut fs = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: fstatfs fills the buffer for an fd we hold.
    check(unsafe { libc::fstatfs(fd, fs.as_mut_ptr()) } as i64).map_err(KindError::read(what()))?;
    // SAFETY: fstatfs succeeded.
    #[allow(clippy::unnecessary_cast)] // f_type's width differs between targets
    let fs_type = unsafe { fs.assume_init() }.f_type as i64;
    if fs_type == HUGETLBFS_MAGIC {
        return Err(KindError::Refused(format!(
            "{} is a huge-page memfd (MFD_HUGETLB), which ckpt does not save",
            what()
        )));
    }
    // SAFETY: F_GET_SEALS only reads.
    let seals = check(unsafe { libc::fcntl(fd, libc::F_GET_SEALS) } as i64).map_err(KindError::read(what()))? as i32;
    let pos = src.pos()?;
    // Our own description: seeking it for holes leaves the program's offset alone.
    let own = reopen::of_process(src.pid, src.fd, libc::O_RDONLY).map_err(KindError::read(what()))?;
    let size = src.meta.size();
    let chunks = deleted::read_chunks(own.as_raw_fd(), size, shown).map_err(|e| match e {
        Read::Io(e) => KindError::read(what())(e),
        Read::TooBig(n) => KindError::Refused(format!(
            "{} holds {} MiB of data; ckpt saves memfds held through an fd of up to {} MiB",
            what(),
            n >> 20,
            deleted::DATA_MAX >> 20
        )),
    })?;
    Ok(Record {
        name,
        dev: src.meta.dev(),
        ino: src.meta.ino(),
        access: src.flags & libc::O_ACCMODE,
        pos,
        size,
        mode: src.meta.mode() & 0o7777,
        uid: src.meta.uid(),
        gid: src.meta.gid(),
        seals,
        chunks,
    })
}

/// The memfds re-created so far, by their inode at the checkpoint.
pub type Made = reopen::Inodes;

/// One description of the re-created memfd, at its offset.
pub fn recreate(rec: &Record, made: &mut Made) -> Result<OwnedFd, KindError> {
    made.description((rec.dev, rec.ino), rec.access, rec.pos, || make(rec))
        .map_err(KindError::recreate(format!("memfd {}", rec.name)))
}

/// Makes the memfd with its name, owner, mode, size and content, then its seals (last: they
/// may forbid writing or resizing).
fn make(rec: &Record) -> std::io::Result<OwnedFd> {
    let name = CString::new(rec.name.as_str()).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let base = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
    // SAFETY: memfd_create with a valid C string; returns a new fd or -1.
    let mut raw = unsafe { libc::memfd_create(name.as_ptr(), base | MFD_EXEC) };
    if raw < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
        // A kernel before MFD_EXEC: every memfd is executable there.
        // SAFETY: as above.
        raw = unsafe { libc::memfd_create(name.as_ptr(), base) };
    }
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the fd was just created and is ours.
    let file = unsafe { OwnedFd::from_raw_fd(raw) };
    let fd = file.as_raw_fd();
    reopen::set_owner_mode(fd, rec.uid, rec.gid, rec.mode)?;
    deleted::write_chunks(fd, rec.size, &rec.chunks)?;
    if rec.seals != 0 {
        // SAFETY: F_ADD_SEALS on our own memfd.
        check(unsafe { libc::fcntl(fd, libc::F_ADD_SEALS, rec.seals) } as i64)?;
    }
    Ok(file)
}

pub fn describe(rec: &Record) -> String {
    let stored: u64 = rec.chunks.iter().map(|c| c.len).sum();
    format!(
        "memfd {} ({} bytes, {stored} with data; seals {:#x}; at offset {})",
        rec.name, rec.size, rec.seals, rec.pos
    )
}
