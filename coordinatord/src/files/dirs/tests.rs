//! Following files through the changes a program made: where each was at the checkpoint and
//! where it is now, for the undo to act on.

use super::events::{Change, Place};
use super::undo::{tracks, Track};

fn at(name: &str) -> Place {
    Place {
        dir: b"d".to_vec(),
        name: name.as_bytes().to_vec(),
    }
}

fn one(changes: Vec<Change>) -> Track {
    let mut t = tracks(changes);
    assert_eq!(t.len(), 1, "one file followed");
    t.remove(0).1
}

#[test]
fn created_then_renamed_is_created_at_its_new_name() {
    let t = one(vec![
        Change::Create {
            at: at("f.o.tmp"),
            child: b"1".to_vec(),
            dir: false,
        },
        Change::Rename {
            from: at("f.o.tmp"),
            to: at("f.o"),
            child: b"1".to_vec(),
            dir: false,
        },
    ]);
    assert!(t.created && !t.removed);
    assert_eq!(t.now, Some(at("f.o")));
}

#[test]
fn renamed_twice_goes_back_to_its_first_name() {
    let t = one(vec![
        Change::Rename {
            from: at("a"),
            to: at("b"),
            child: b"1".to_vec(),
            dir: false,
        },
        Change::Rename {
            from: at("b"),
            to: at("c"),
            child: b"1".to_vec(),
            dir: false,
        },
    ]);
    assert!(!t.created);
    assert_eq!((t.then, t.now), (Some(at("a")), Some(at("c"))));
}

#[test]
fn a_removed_file_is_known_by_its_name_at_the_checkpoint() {
    let t = one(vec![
        Change::Rename {
            from: at("a"),
            to: at("b"),
            child: b"1".to_vec(),
            dir: false,
        },
        Change::Delete {
            at: at("b"),
            child: b"1".to_vec(),
            dir: false,
        },
    ]);
    assert!(!t.created && t.removed && t.now.is_none());
    assert_eq!(t.then, Some(at("a")));
}

#[test]
fn created_and_removed_leaves_nothing_to_do() {
    let t = one(vec![
        Change::Create {
            at: at("tmp"),
            child: b"1".to_vec(),
            dir: false,
        },
        Change::Delete {
            at: at("tmp"),
            child: b"1".to_vec(),
            dir: false,
        },
    ]);
    assert!(t.created && t.now.is_none());
}

#[test]
fn files_are_told_apart_by_handle_not_name() {
    // Removed, and another file made under its name: two files.
    let t = tracks(vec![
        Change::Delete {
            at: at("prog"),
            child: b"1".to_vec(),
            dir: false,
        },
        Change::Create {
            at: at("prog"),
            child: b"2".to_vec(),
            dir: false,
        },
    ]);
    assert_eq!(t.len(), 2);
    assert!(t[0].1.removed && !t[0].1.created);
    assert!(t[1].1.created && t[1].1.now == Some(at("prog")));
}
