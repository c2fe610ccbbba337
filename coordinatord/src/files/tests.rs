//! Capture and restore of snapshot files against real files in a real store: incremental
//! blocks, holes, put back in place, companions set aside.

use super::capture::Capture;
use super::policy::Decided;
use super::proof::Watch;
use super::restore::{Action, FileRestore};
use ckpt_format::{FileContent, FilePolicy, Manifest, Store, FILE_BLOCK};
use std::os::unix::fs::{FileExt, MetadataExt};

const HOST: &str = "h";

fn decided(path: &std::path::Path) -> Decided {
    let m = std::fs::metadata(path).unwrap();
    Decided {
        key: (m.dev(), m.ino()),
        path: path.to_str().unwrap().to_string(),
        open: path.to_str().unwrap().to_string(),
        policy: FilePolicy::Snapshot,
        why: "test".into(),
        pids: vec![1],
        mapped: false,
    }
}

/// Takes `path` as a snapshot file in a new committed checkpoint; its id.
fn take(store: &Store, path: &std::path::Path, precopy: bool) -> String {
    let dir = store.begin().unwrap();
    let mut c = Capture::begin(store, &dir, HOST, Vec::new());
    let d = [decided(path)];
    if precopy {
        c.precopy(&d);
    }
    let records = c.records(&d).unwrap();
    c.finish(records).unwrap();
    let m = Manifest {
        id: dir.id.clone(),
        parent: None,
        created_unix_ms: 0,
        hosts: vec![ckpt_format::HostEntry {
            host: HOST.into(),
            processes: vec![],
            files: vec![],
        }],
        duration_us: 0,
    };
    store.commit(&dir, &m).unwrap();
    dir.id
}

fn snapshot_of(store: &Store, id: &str) -> (ckpt_format::Snapshot, Vec<String>) {
    let (dir, _) = store.get(id).unwrap();
    let files = ckpt_format::read_host_files(&dir, HOST).unwrap();
    match &files.files[0].content {
        FileContent::Snapshot(s) => (s.clone(), files.stores),
        other => panic!("not a snapshot: {other:?}"),
    }
}

#[test]
fn incremental_holes_put_back_and_companions() {
    let t = tempfile::tempdir().unwrap();
    let store = Store::open(&t.path().join("store")).unwrap();
    let path = t.path().join("data.db");
    let f = std::fs::File::create(&path).unwrap();
    let b = FILE_BLOCK as usize;
    // Blocks 0, 2 and a short 4th hold data; block 1 and 3 are holes.
    f.write_all_at(&vec![1u8; b], 0).unwrap();
    f.write_all_at(&vec![2u8; b], 2 * FILE_BLOCK).unwrap();
    f.write_all_at(&vec![4u8; 1000], 4 * FILE_BLOCK).unwrap();
    let first = take(&store, &path, true);
    let (s1, _) = snapshot_of(&store, &first);
    assert_eq!(s1.size, 4 * FILE_BLOCK + 1000);
    let idx: Vec<u64> = s1.blocks.iter().map(|b| b.index).collect();
    assert_eq!(idx, vec![0, 2, 4], "zero blocks are not stored");
    assert_eq!(s1.stored_bytes(), 2 * FILE_BLOCK + 1000);

    // Only block 2 changes: the next checkpoint stores it alone.
    f.write_all_at(&[3u8; 10], 2 * FILE_BLOCK + 5).unwrap();
    let second = take(&store, &path, false);
    let (s2, stores) = snapshot_of(&store, &second);
    assert_eq!(s2.stored_bytes(), FILE_BLOCK);
    assert_eq!(stores.len(), 2, "the parent's store is referred to");
    assert!(s2.blocks.iter().filter(|b| b.index != 2).all(|b| b.store == 1));
    let want = std::fs::read(&path).unwrap();

    // The future: rewritten, grown, a journal beside it.
    f.write_all_at(&vec![9u8; 3 * b], 1000).unwrap();
    f.write_all_at(b"tail", 9 * FILE_BLOCK).unwrap();
    std::fs::write(t.path().join("data.db-journal"), b"hot").unwrap();
    let (dir, _) = store.get(&second).unwrap();
    let r = FileRestore::open(&store, &dir, HOST, &[]).unwrap();
    let watch = Watch::start();
    let actions = r.check(&[], &watch).unwrap();
    assert!(matches!(actions[..], [Action::PutBack(0)]));
    let done = r.apply(&actions).unwrap();
    assert_eq!(
        std::fs::read(&path).unwrap(),
        want,
        "content as at the second checkpoint"
    );
    let aside = t.path().join(format!("data.db-journal.ckpt-aside-{second}"));
    assert_eq!(std::fs::read(aside).unwrap(), b"hot");
    assert!(done.notes.iter().any(|n| n.contains("set aside")));
    // Other names beside it are not sqlite's companions: left alone.
    let other = t.path().join("data.db-notes");
    std::fs::write(&other, b"mine").unwrap();
    assert!(done.put_back.contains_key(path.to_str().unwrap()));

    // Deleting the first checkpoint folds its blocks into the second, which still restores.
    store.delete(&first).unwrap();
    std::fs::write(&path, b"gone").unwrap();
    let r = FileRestore::open(&store, &dir, HOST, &[]).unwrap();
    r.apply(&r.check(&[], &watch).unwrap()).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), want);
    assert_eq!(std::fs::read(&other).unwrap(), b"mine");
}

/// sqlite's `journal_mode=PERSIST` keeps `NAME-journal` between transactions: one rewritten
/// after the checkpoint (a hot journal of a later transaction) is set aside too.
#[test]
fn a_persistent_journal_rewritten_since_is_set_aside() {
    let t = tempfile::tempdir().unwrap();
    let store = Store::open(&t.path().join("store")).unwrap();
    let path = t.path().join("p.db");
    std::fs::write(&path, vec![5u8; 3 * FILE_BLOCK as usize]).unwrap();
    let journal = t.path().join("p.db-journal");
    std::fs::write(&journal, [0u8; 512]).unwrap();
    let id = take(&store, &path, true);
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(&journal, b"hot journal of a later transaction").unwrap();
    std::fs::write(&path, b"changed").unwrap();
    let (dir, _) = store.get(&id).unwrap();
    let r = FileRestore::open(&store, &dir, HOST, &[]).unwrap();
    let watch = Watch::start();
    r.apply(&r.check(&[], &watch).unwrap()).unwrap();
    assert!(!journal.exists(), "the rewritten journal is set aside");
    let aside = t.path().join(format!("p.db-journal.ckpt-aside-{id}"));
    assert_eq!(std::fs::read(aside).unwrap(), b"hot journal of a later transaction");
    assert_eq!(std::fs::read(&path).unwrap(), vec![5u8; 3 * FILE_BLOCK as usize]);
}
