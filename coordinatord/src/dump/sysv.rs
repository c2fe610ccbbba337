//! The SysV IPC objects of a host's parked processes, recorded once for the host
//! (`ID/HOST/sysv.img`, segment contents in `sysv.pages`).
//!
//! Which objects: those the interposer noted in each process's slots (ids `shmget`/`semget`/
//! `msgget` returned and ids passed to the calls that use one, inherited across fork, dropped
//! on `IPC_RMID`), and every segment a process has attached (its mappings named `/SYSV…`,
//! whose inode number is the segment's id). Read while every process of the host is parked
//! (the per-host barrier), so no checkpointed process writes to a segment, operates on a
//! semaphore or sends a message while they are read.

use anyhow::{anyhow, Context};
use ckpt_format::{write_record, CheckpointDir, PageStoreWriter, RecordKind, SysvImage};
use ckpt_kinds::sysv::{msg, sem, shm};
use ckpt_kinds::KindError;
use ckpt_proto::slots::{ProcSlot, SysvKind};
use ckpt_proto::Registration;
use ckpt_sys::procfs::{self, MapEntry};
use std::collections::BTreeSet;
use std::os::unix::fs::FileExt;

/// Whether `e` maps a SysV shared memory segment.
pub fn is_attachment(e: &MapEntry) -> bool {
    e.shared && e.path.starts_with("/SYSV")
}

/// The size of segment `shmid`, if it exists.
pub fn segment_size(shmid: i32) -> Option<u64> {
    shm::stat(shmid).ok().map(|ds| ds.shm_segsz as u64)
}

/// The objects process `reg` uses; reasons to refuse it.
fn used_by(reg: &Registration, out: &mut BTreeSet<(SysvKind, i32)>, refused: &mut Vec<String>) -> anyhow::Result<()> {
    let pid = reg.pid;
    let mem = std::fs::File::open(format!("/proc/{pid}/mem")).with_context(|| format!("process {pid}: memory"))?;
    let mut buf = vec![0u8; std::mem::size_of::<ProcSlot>()];
    mem.read_exact_at(&mut buf, reg.slot_addr)
        .with_context(|| format!("process {pid}: interposer slots"))?;
    let slot =
        ProcSlot::from_bytes(&buf).ok_or_else(|| anyhow!("process {pid}: the interposer's slots are corrupt"))?;
    out.extend(slot.sysv.iter().filter_map(|&e| SysvKind::decode(e)));
    if slot.sysv_overflow != 0 {
        refused.push(format!(
            "process {pid}: it used more than {} SysV IPC objects, which ckpt cannot follow",
            slot.sysv.len()
        ));
    }
    if slot.sem_undo_pid == pid {
        refused.push(format!(
            "process {pid}: it made SysV semaphore operations with SEM_UNDO, whose adjustments the kernel does not show; ckpt cannot bring them back"
        ));
    }
    let maps = procfs::maps(pid).map_err(|e| anyhow!("process {pid}: {e}"))?;
    out.extend(
        maps.iter()
            .filter(|e| is_attachment(e))
            .map(|e| (SysvKind::Shm, e.inode as i32)),
    );
    Ok(())
}

/// Whether `e` says the object is gone (removed by a process outside the checkpoint, or an
/// id the program noted that no longer names anything).
fn gone(e: &KindError) -> bool {
    matches!(e, KindError::Read { source, .. } if matches!(source.raw_os_error(), Some(libc::EINVAL | libc::EIDRM)))
}

/// Reads the objects the parked processes `regs` use and writes them under `dir`; nothing is
/// written when they use none. Refusals (and failures) come back as one message.
pub fn capture(regs: &[&Registration], dir: &CheckpointDir, host: &str, compress: bool) -> anyhow::Result<()> {
    let mut ids = BTreeSet::new();
    let mut refused = Vec::new();
    for reg in regs {
        used_by(reg, &mut ids, &mut refused)?;
    }
    let mut image = SysvImage::default();
    let mut store: Option<PageStoreWriter> = None;
    for (kind, id) in ids {
        let r = match kind {
            SysvKind::Shm => shm::capture(id).and_then(|(rec, mem)| {
                let s = match store.as_mut() {
                    Some(s) => s,
                    None => {
                        let w = PageStoreWriter::create(&dir.sysv_pages_path(host))
                            .map_err(|e| KindError::Refused(e.to_string()))?;
                        store.insert(if compress { w.compressed(3) } else { w })
                    }
                };
                let bytes = mem.bytes();
                let mut runs = Vec::new();
                for (off, len) in mem.data_ranges(id) {
                    s.append(off, &bytes[off as usize..(off + len) as usize], &mut runs)
                        .map_err(|e| KindError::Refused(e.to_string()))?;
                }
                image.objects.shm.push(rec);
                image.shm_pages.push(runs);
                Ok(())
            }),
            SysvKind::Sem => sem::capture(id).map(|r| image.objects.sem.push(r)),
            SysvKind::Msg => msg::capture(id).map(|r| image.objects.msg.push(r)),
        };
        match r {
            Ok(()) => {}
            Err(e) if gone(&e) => tracing::debug!(id, "SysV object gone: not in the checkpoint"),
            Err(e) => refused.push(e.to_string()),
        }
    }
    if !refused.is_empty() {
        return Err(anyhow!("{}", refused.join("; ")));
    }
    if let Some(s) = store {
        image.pages_len = s.finish()?;
    }
    if !image.objects.is_empty() {
        write_record(&dir.sysv_path(host), RecordKind::Sysv, &image)?;
    }
    Ok(())
}
