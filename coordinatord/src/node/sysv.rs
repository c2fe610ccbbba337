//! Making a host's SysV IPC objects again at restore (see `dump::sysv`), before any of its
//! processes: with the same ids and keys, owners, modes and contents, each replacing the killed
//! program's object still there. [`check`] runs with the other checks, before anything changes;
//! [`make`] checks again and makes them.

use anyhow::{anyhow, Context};
use ckpt_format::{read_record, CheckpointDir, PageStoreReader, RecordKind, SysvImage};
use ckpt_kinds::sysv::{msg, sem, shm};

/// The host's SysV objects in checkpoint `dir`, their segment contents verified; None when its
/// processes used none.
fn load(dir: &CheckpointDir, host: &str) -> anyhow::Result<Option<(SysvImage, Option<PageStoreReader>)>> {
    let path = dir.sysv_path(host);
    if !path.exists() {
        return Ok(None);
    }
    let image: SysvImage = read_record(&path, RecordKind::Sysv)?;
    let pages = if image.shm_pages.is_empty() {
        None
    } else {
        let r = PageStoreReader::open(&dir.sysv_pages_path(host), image.pages_len)?;
        r.verify(image.shm_pages.iter().flatten())?;
        Some(r)
    };
    Ok(Some((image, pages)))
}

/// Every reason the host's SysV objects cannot be made again now (an image that cannot be
/// read, an object a live process uses, an id another object holds).
pub fn check(dir: &CheckpointDir, host: &str) -> Vec<String> {
    match load(dir, host) {
        Ok(Some((image, _))) => problems(&image.objects),
        Ok(None) => Vec::new(),
        Err(e) => vec![format!("{e:#}")],
    }
}

fn problems(o: &ckpt_kinds::sysv::Objects) -> Vec<String> {
    let shm = o.shm.iter().filter_map(|r| shm::check(r).err());
    let sem = o.sem.iter().filter_map(|r| sem::check(r).err());
    shm.chain(sem)
        .chain(o.msg.iter().filter_map(|r| msg::check(r).err()))
        .collect()
}

/// ckptd's attachments of segments whose removal is pending, kept until the restored processes
/// have attached them (a segment removed with nothing attached goes at once).
pub struct Held(#[allow(dead_code)] Vec<shm::Attached>);

/// Makes the host's SysV objects of checkpoint `dir` again.
pub fn make(dir: &CheckpointDir, host: &str) -> anyhow::Result<Held> {
    let Some((image, pages)) = load(dir, host)? else {
        return Ok(Held(Vec::new()));
    };
    let o = &image.objects;
    let p = problems(o);
    if !p.is_empty() {
        return Err(anyhow!("{}", p.join("; ")));
    }
    let mut held = Vec::new();
    let mut buf = Vec::new();
    for (rec, runs) in o.shm.iter().zip(&image.shm_pages) {
        let stale = shm::check(rec).map_err(|e| anyhow!(e))?;
        let mut mem = shm::recreate(rec, &stale)?;
        for r in runs {
            let reader = pages.as_ref().context("internal: no SysV page store")?;
            reader.read_run(r, &mut buf)?;
            mem.write_at(r.addr, &buf);
        }
        held.extend(shm::finish(rec, mem)?);
    }
    for rec in &o.sem {
        let stale = sem::check(rec).map_err(|e| anyhow!(e))?;
        sem::recreate(rec, &stale)?;
    }
    for rec in &o.msg {
        let stale = msg::check(rec).map_err(|e| anyhow!(e))?;
        msg::recreate(rec, &stale)?;
    }
    tracing::info!(
        shm = o.shm.len(),
        sem = o.sem.len(),
        msg = o.msg.len(),
        "SysV objects made again"
    );
    Ok(Held(held))
}
