//! What an incremental checkpoint stored against what the program changed since its parent,
//! read from the images themselves (issue 13, goal 2: stored ≤ 1.1 × written).

use crate::Daemon;
use anyhow::{Context, Result};
use ckpt_format::{read_record, PageStoreReader, ProcessImage, RecordKind, PAGE_SIZE};
use std::collections::HashMap;
use std::path::Path;

/// Pages of process `pid` that checkpoint `id` of `d`'s store stored in its own page store, and
/// how many of them hold content other than in `parent` (a page the program rewrote with the
/// same bytes counts as unchanged: for a program whose every write changes its page, as
/// `examples/dirty_log.c`, these are the pages it wrote).
pub fn stored_and_changed(d: &Daemon, pid: i32, parent: &str, id: &str) -> Result<(u64, u64)> {
    let root = d.store();
    let image = |id: &str| -> Result<ProcessImage> {
        let p = d.image_file(id, pid, "meta.img")?;
        read_record(&p, RecordKind::Process).with_context(|| format!("reading {}", p.display()))
    };
    let (old, new) = (image(parent)?, image(id)?);
    let old_pages = contents(root, &old, |_| true)?;
    let own = contents(root, &new, |store| store == 0)?;
    let changed = own
        .iter()
        .filter(|(addr, page)| old_pages.get(addr) != Some(page))
        .count() as u64;
    // Where the pages stored but not changed are, mapping by mapping.
    if std::env::var_os("BENCH_VERBOSE").is_some() {
        for m in &new.mappings {
            let (mut same, mut absent, mut diff) = (0, 0, 0);
            for (a, page) in own.iter().filter(|(a, _)| **a >= m.start && **a < m.end) {
                match old_pages.get(a) {
                    Some(o) if o == page => same += 1,
                    Some(_) => diff += 1,
                    None => absent += 1,
                }
            }
            if same + absent + diff > 0 {
                eprintln!(
                    "{:#x}-{:#x} {:?}: changed {diff}, new {absent}, same {same}",
                    m.start, m.end, m.name
                );
            }
        }
    }
    Ok((own.len() as u64, changed))
}

/// Every page the image holds (the newest run wins), of the runs whose store `pick` accepts,
/// by address (its CRC stands for its content: a false match is one in four billion).
fn contents(root: &Path, img: &ProcessImage, pick: impl Fn(u32) -> bool) -> Result<HashMap<u64, u32>> {
    let mut readers: HashMap<u32, PageStoreReader> = HashMap::new();
    let mut out = HashMap::new();
    let mut buf = Vec::new();
    for m in &img.mappings {
        for r in m.pages.iter().filter(|r| pick(r.store)) {
            let reader = match readers.entry(r.store) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(v) => {
                    let path = root.join(img.stores.get(r.store as usize).context("a run names no store")?);
                    v.insert(PageStoreReader::open(&path, 0).with_context(|| format!("opening {}", path.display()))?)
                }
            };
            reader.read_run(r, &mut buf)?;
            for (i, page) in buf.chunks(PAGE_SIZE as usize).enumerate() {
                let addr = r.addr + i as u64 * PAGE_SIZE;
                if addr >= m.start && addr < m.end {
                    out.insert(addr, crc32c::crc32c(page));
                }
            }
        }
    }
    Ok(out)
}
