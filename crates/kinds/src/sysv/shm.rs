//! SysV shared memory segments: id, key, owner, mode, size, whether removal is pending
//! (`IPC_RMID` while attached: `SHM_DEST`) or the segment is locked (`SHM_LOCK`), and contents.
//! ckptd reads the contents through a read-only attachment of its own (`shmat` sets the
//! segment's `shm_atime`/`shm_dtime`/`shm_lpid` to ckptd's); the caller stores the pages.
//! Each process's attachments are memory mappings (`ckpt_format::MappingKind::SysvShm`),
//! attached again by the restorer at the same address.

use super::{existing, live, make_with_id, ok, Kind, Perm, Stale};
use crate::KindError;
use serde::{Deserialize, Serialize};

const SHM_DEST: u32 = 0o1000;
const SHM_LOCKED: u32 = 0o2000;
const PAGE: usize = 4096;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub id: i32,
    pub perm: Perm,
    pub size: u64,
    /// Attachments at the checkpoint (every process's mappings of it, ckptd's not counted).
    pub nattch: u64,
}

impl Record {
    /// Removed while attached: it goes once the last process detaches.
    pub fn dest(&self) -> bool {
        self.perm.mode & SHM_DEST != 0
    }
    pub fn locked(&self) -> bool {
        self.perm.mode & SHM_LOCKED != 0
    }
}

pub fn stat(id: i32) -> std::io::Result<libc::shmid_ds> {
    // SAFETY: zeroed shmid_ds is a valid buffer for IPC_STAT.
    let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: IPC_STAT writes into ds.
    ok(unsafe { libc::shmctl(id, libc::IPC_STAT, &mut ds) })?;
    Ok(ds)
}

/// The segment at `id`, if there is one.
pub fn exists(id: i32) -> bool {
    stat(id).is_ok()
}

/// ckptd's own attachment of a segment, detached when dropped.
pub struct Attached {
    addr: *mut u8,
    len: usize,
}

// SAFETY: the attachment is plain memory owned by this value.
unsafe impl Send for Attached {}

impl Attached {
    fn new(id: i32, len: u64, flags: libc::c_int) -> std::io::Result<Attached> {
        // SAFETY: the kernel picks the address; nothing of ours is there.
        let p = unsafe { libc::shmat(id, std::ptr::null(), flags) };
        if p as isize == -1 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Attached {
            addr: p.cast(),
            len: len as usize,
        })
    }

    pub fn bytes(&self) -> &[u8] {
        // SAFETY: the attachment spans `len` bytes and lives as long as self.
        unsafe { std::slice::from_raw_parts(self.addr, self.len) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above; attached read-write by `recreate`.
        unsafe { std::slice::from_raw_parts_mut(self.addr, self.len) }
    }

    /// Writes `data` at `offset` of the segment (clipped to it).
    pub fn write_at(&mut self, offset: u64, data: &[u8]) {
        let all = self.bytes_mut();
        let from = (offset as usize).min(all.len());
        let n = data.len().min(all.len() - from);
        all[from..from + n].copy_from_slice(&data[..n]);
    }

    /// The stretches (offset, length) that may hold data: pages the segment has in memory
    /// (or all of it when some are swapped out, which `mincore` does not show), without
    /// pages of zeros. Pages never touched are not read: reading them would allocate them.
    pub fn data_ranges(&self, id: i32) -> Vec<(u64, u64)> {
        let pages = self.len.div_ceil(PAGE);
        let mut present = vec![1u8; pages];
        if swapped(id) == Some(0) {
            // SAFETY: the vector has one byte per page of the attachment.
            if unsafe { libc::mincore(self.addr.cast(), self.len, present.as_mut_ptr()) } != 0 {
                present.fill(1);
            }
        }
        let bytes = self.bytes();
        let mut out: Vec<(u64, u64)> = Vec::new();
        for (i, p) in present.iter().enumerate() {
            let (s, e) = (i * PAGE, ((i + 1) * PAGE).min(self.len));
            if p & 1 == 0 || bytes[s..e].iter().all(|&b| b == 0) {
                continue;
            }
            match out.last_mut() {
                Some((o, l)) if *o + *l == s as u64 => *l += (e - s) as u64,
                _ => out.push((s as u64, (e - s) as u64)),
            }
        }
        out
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        // SAFETY: detaching our own attachment.
        unsafe { libc::shmdt(self.addr.cast()) };
    }
}

/// Bytes of segment `id` swapped out, from /proc/sysvipc/shm.
fn swapped(id: i32) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/sysvipc/shm").ok()?;
    let head: Vec<&str> = text.lines().next()?.split_whitespace().collect();
    let (idc, swc) = (
        head.iter().position(|c| *c == "shmid")?,
        head.iter().position(|c| *c == "swap")?,
    );
    text.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(idc)?.parse::<i32>().ok()? == id).then(|| f.get(swc)?.parse().ok())?
    })
}

/// Reads segment `id`: its record and a read-only attachment to take its contents from.
pub fn capture(id: i32) -> Result<(Record, Attached), KindError> {
    let what = format!("SysV shared memory segment {id}");
    let ds = stat(id).map_err(KindError::read(what.clone()))?;
    let mem = Attached::new(id, ds.shm_segsz as u64, libc::SHM_RDONLY).map_err(KindError::read(what))?;
    Ok((
        Record {
            id,
            perm: Perm::of(&ds.shm_perm),
            size: ds.shm_segsz as u64,
            nattch: ds.shm_nattch,
        },
        mem,
    ))
}

/// What exists now where `rec` is to be made (see [`super::existing`]): a segment someone is
/// attached to is in use.
pub fn check(rec: &Record) -> Result<Stale, String> {
    existing(
        Kind::Shm,
        rec.id,
        &rec.perm,
        |id| stat(id).ok().map(|ds| ds.shm_perm.__key),
        |id| {
            let ds = stat(id).ok()?;
            (ds.shm_nattch > 0).then(|| {
                let last = live(ds.shm_lpid).unwrap_or_else(|| format!("pid {}", ds.shm_lpid));
                format!(
                    "{} attached processes (the last to attach or detach: {last})",
                    ds.shm_nattch
                )
            })
        },
    )
}

/// Makes the segment again at its id, replacing `stale`, and attaches it read-write for the
/// caller to fill; then call [`finish`].
pub fn recreate(rec: &Record, stale: &Stale) -> Result<Attached, KindError> {
    stale.clear()?;
    // A segment removed while attached had its key made private by the removal.
    let key = if rec.dest() { 0 } else { rec.perm.key };
    let mode = (rec.perm.mode & 0o777) as libc::c_int;
    let size = rec.size as usize;
    make_with_id(Kind::Shm, rec.id, &rec.perm, || {
        // SAFETY: plain shmget.
        ok(unsafe { libc::shmget(key, size, libc::IPC_CREAT | libc::IPC_EXCL | mode) })
    })?;
    let what = format!("SysV shared memory segment {}", rec.id);
    Attached::new(rec.id, rec.size, 0).map_err(KindError::recreate(what))
}

/// Sets owner and mode, locks the segment if it was, and removes it if removal was pending:
/// `mem` (ckptd's attachment) must then be kept until the restored processes have attached
/// it, since a segment removed with no attachment goes at once.
pub fn finish(rec: &Record, mem: Attached) -> Result<Option<Attached>, KindError> {
    let what = format!("SysV shared memory segment {}", rec.id);
    let mut ds = stat(rec.id).map_err(KindError::recreate(what.clone()))?;
    rec.perm.set(&mut ds.shm_perm);
    // SAFETY: IPC_SET reads ds.
    ok(unsafe { libc::shmctl(rec.id, libc::IPC_SET, &mut ds) }).map_err(KindError::recreate(what.clone()))?;
    if rec.locked() {
        // SAFETY: SHM_LOCK takes no buffer.
        ok(unsafe { libc::shmctl(rec.id, libc::SHM_LOCK, std::ptr::null_mut()) })
            .map_err(KindError::recreate(what.clone()))?;
    }
    if !rec.dest() {
        return Ok(None);
    }
    // SAFETY: IPC_RMID takes no buffer.
    ok(unsafe { libc::shmctl(rec.id, libc::IPC_RMID, std::ptr::null_mut()) }).map_err(KindError::recreate(what))?;
    Ok(Some(mem))
}

pub fn describe(rec: &Record) -> String {
    let dest = if rec.dest() { ", removal pending" } else { "" };
    format!(
        "SysV shm {} ({}, {} bytes, mode {:o}, owner {}:{}, {} attached{dest})",
        rec.id,
        rec.perm.describe_key(),
        rec.size,
        rec.perm.mode & 0o777,
        rec.perm.uid,
        rec.perm.gid,
        rec.nattch
    )
}
