//! Deleting a checkpoint that others build on: the pages and file blocks they still need from
//! it are copied into stores of their own first ("folded"), then it goes.

use crate::{
    read_record, write_record, FormatError, Manifest, PageStoreReader, PageStoreWriter, ProcessImage, RecordKind, Store,
};

impl Store {
    /// Deletes checkpoint `id`, folding what later checkpoints need from it into them. Returns
    /// the ids of the checkpoints that were folded into.
    pub fn delete(&self, id: &str) -> Result<Vec<String>, FormatError> {
        let (dir, gone) = self.get(id)?;
        let prefix = format!("{id}/");
        let mut folded = Vec::new();
        for m in self.list()? {
            if m.id == id {
                continue;
            }
            let Ok((child_dir, mut manifest)) = self.get(&m.id) else {
                continue;
            };
            let mut touched = false;
            for h in &mut manifest.hosts {
                for p in &mut h.processes {
                    let meta = child_dir.meta_path(&h.host, p.pid);
                    let mut image: ProcessImage = read_record(&meta, RecordKind::Process)?;
                    if !image.stores.iter().any(|s| s.starts_with(&prefix)) {
                        continue;
                    }
                    let rel = format!("{}/{}/{}/folded-{id}.img", m.id, h.host, p.pid);
                    self.fold(&mut image, &prefix, &rel)?;
                    if image.parent.as_deref() == Some(id) {
                        image.parent = gone.parent.clone();
                    }
                    write_record(&meta, RecordKind::Process, &image)?;
                    if p.parent.as_deref() == Some(id) {
                        p.parent = gone.parent.clone();
                    }
                    touched = true;
                }
                // Blocks of snapshot files kept in the doomed checkpoint's block store.
                touched |= self.fold_files(&child_dir, &h.host, &prefix, id)?;
            }
            if touched {
                if manifest.parent.as_deref() == Some(id) {
                    manifest.parent = gone.parent.clone();
                }
                self.commit(&child_dir, &manifest)?;
                folded.push(m.id.clone());
            }
        }
        self.remove(&dir)?;
        Ok(folded)
    }

    /// Copies every run of `image` that lives in a store under `prefix` into a new store at
    /// `rel` (relative to the root) and points the runs there.
    fn fold(&self, image: &mut ProcessImage, prefix: &str, rel: &str) -> Result<(), FormatError> {
        let doomed: Vec<usize> = (0..image.stores.len())
            .filter(|&i| image.stores[i].starts_with(prefix))
            .collect();
        let readers = doomed
            .iter()
            .map(|&i| PageStoreReader::open(&self.root().join(&image.stores[i]), 0).map(|r| (i, r)))
            .collect::<Result<Vec<_>, _>>()?;
        let mut out = PageStoreWriter::create(&self.root().join(rel))?;
        // New numbering: the kept stores in order, then the folded one.
        let kept: Vec<usize> = (0..image.stores.len()).filter(|i| !doomed.contains(i)).collect();
        let folded_index = kept.len() as u32;
        let renumber = |old: u32| kept.iter().position(|&k| k == old as usize).map(|p| p as u32);
        let mut buf = Vec::new();
        for m in &mut image.mappings {
            let mut runs = Vec::with_capacity(m.pages.len());
            for r in &m.pages {
                match readers.iter().find(|(i, _)| *i == r.store as usize) {
                    Some((_, reader)) => {
                        reader.read_run(r, &mut buf)?;
                        let mut new = Vec::new();
                        out.append(r.addr, &buf, &mut new)?;
                        runs.extend(new.into_iter().map(|n| crate::PageRun {
                            store: folded_index,
                            ..n
                        }));
                    }
                    None => runs.push(crate::PageRun {
                        store: renumber(r.store).unwrap_or(r.store),
                        ..*r
                    }),
                }
            }
            m.pages = runs;
        }
        out.finish()?;
        let mut stores: Vec<String> = kept.iter().map(|&i| image.stores[i].clone()).collect();
        stores.push(rel.to_string());
        image.stores = stores;
        Ok(())
    }

    /// Keeps the newest `keep` checkpoints, deleting (with folding) the older ones. Returns the
    /// ids deleted.
    pub fn retain(&self, keep: usize) -> Result<Vec<String>, FormatError> {
        let all: Vec<Manifest> = self.list()?;
        let mut deleted = Vec::new();
        for m in all.iter().take(all.len().saturating_sub(keep)) {
            self.delete(&m.id)?;
            deleted.push(m.id.clone());
        }
        Ok(deleted)
    }
}
