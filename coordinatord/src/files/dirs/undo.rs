//! Undoing what a program did to its directories since a checkpoint, at its restore, before any
//! process is made. Nothing is deleted:
//! - a file or directory the program created since, still at its name (the same file, by its
//!   handle), is renamed aside to `NAME.ckpt-aside-ID` beside it, like sqlite companions (a
//!   directory with what is in it);
//! - a file that existed at the checkpoint and that the program renamed since, still at its new
//!   name, is renamed back when its old name is free (or freed by a file set aside);
//! - a file that existed at the checkpoint and that the program removed since cannot come back:
//!   it is reported (one the checkpoint holds open is the fd restore's business, and a file of
//!   the file contract is put back by it).
//!
//! A file made since that is already aside (its path has a `.ckpt-aside-` part: an earlier
//! restore put it there) stays there. ckptd's own renames count as changes of every checkpoint
//! taken before them: a restore of a later checkpoint, whose files they were, renames them back.
//!
//! A rename that replaced a file leaves no trace of the file it replaced (the kernel reports
//! the rename only): that file is not brought back, nor reported.

use super::events::{Change, Place};
use super::{DirWatch, Since};
use crate::files::capture::ASIDE;
use crate::files::fid;
use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// What a restore does to directories, decided before anything changes.
#[derive(Debug, Default)]
pub struct Plan {
    steps: Vec<Step>,
    /// What cannot be undone, or why nothing is.
    pub notes: Vec<String>,
}

#[derive(Debug)]
enum Step {
    Aside(PathBuf),
    Back { now: PathBuf, then: PathBuf },
}

/// Where a file the program touched since the checkpoint was then and is now.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Track {
    pub created: bool,
    pub dir: bool,
    pub then: Option<Place>,
    pub now: Option<Place>,
    pub removed: bool,
}

impl Plan {
    /// Decides what to undo of checkpoint `id`'s directories; `contract`: the files whose
    /// content the file contract brings back (never set aside).
    pub fn make(watch: &DirWatch, id: &str, contract: &HashSet<PathBuf>) -> Plan {
        let (changes, unwatched) = match watch.since(id) {
            Since::Known { changes, unwatched } => (changes, unwatched),
            Since::Unknown(why) => {
                return Plan {
                    steps: Vec::new(),
                    notes: vec![format!(
                        "directories left as they are: {why}; files the program created, renamed or removed after the checkpoint stay so"
                    )],
                }
            }
        };
        let mut plan = Plan::default();
        if !unwatched.is_empty() {
            plan.notes.push(format!(
                "directories not watched, left as they are: {}",
                unwatched.join(", ")
            ));
        }
        let tracks = tracks(changes);
        let mut dirs: HashMap<Vec<u8>, Option<PathBuf>> = HashMap::new();
        let mut path_of = |p: &Place| -> Option<PathBuf> {
            let dir = dirs
                .entry(p.dir.clone())
                .or_insert_with(|| watch.with_fs(&p.dir, |m| fid::dir_path(m, &p.dir)).flatten())
                .clone()?;
            Some(dir.join(OsStr::from_bytes(&p.name)))
        };
        let holds = |path: &Path, child: &[u8]| matches!(fid::key_at(path), Ok(Some(k)) if k == child);
        let (mut aside_files, mut aside_dirs, mut backs) = (Vec::new(), Vec::new(), Vec::new());
        for (child, t) in &tracks {
            match (t.created, &t.now, &t.then) {
                (true, Some(now), _) => {
                    let Some(path) = path_of(now) else { continue };
                    // Set aside by an earlier restore (itself, or the directory it is in).
                    if is_aside(&path) || contract.contains(&path) || !holds(&path, child) {
                        continue;
                    }
                    if t.dir {
                        aside_dirs.push(path);
                    } else {
                        aside_files.push(path);
                    }
                }
                (false, Some(now), Some(then)) if now != then => {
                    let Some(now) = path_of(now).filter(|p| holds(p, child)) else {
                        continue;
                    };
                    match path_of(then) {
                        Some(then) => backs.push((now, then)),
                        None => plan.notes.push(format!(
                            "{} was renamed after the checkpoint and stays so: the directory it was in is gone",
                            now.display()
                        )),
                    }
                }
                (false, None, Some(then)) if t.removed => {
                    let path = path_of(then).unwrap_or_else(|| PathBuf::from(OsStr::from_bytes(&then.name)));
                    if !contract.contains(&path) {
                        plan.notes.push(format!(
                            "{} was removed after the checkpoint and is not brought back",
                            path.display()
                        ));
                    }
                }
                _ => {}
            }
        }
        // What is in a directory set aside goes with it.
        aside_dirs.sort();
        let mut top: Vec<PathBuf> = Vec::new();
        for d in aside_dirs {
            if !top.iter().any(|t| d.starts_with(t)) {
                top.push(d);
            }
        }
        aside_files.retain(|f| !top.iter().any(|t| f.starts_with(t)));
        aside_files.sort();
        // Renames back, in an order where each finds its old name free.
        let mut taken: HashMap<PathBuf, bool> = aside_files.iter().map(|f| (f.clone(), false)).collect();
        let occupied = |p: &Path, taken: &HashMap<PathBuf, bool>| {
            taken
                .get(p)
                .copied()
                .unwrap_or_else(|| std::fs::symlink_metadata(p).is_ok())
        };
        let mut ordered = Vec::new();
        loop {
            let before = backs.len();
            backs.retain(|(now, then): &(PathBuf, PathBuf)| {
                let parent_ok = then.parent().is_some_and(|d| d.is_dir());
                if parent_ok && !occupied(then, &taken) {
                    taken.insert(then.clone(), true);
                    taken.insert(now.clone(), false);
                    ordered.push((now.clone(), then.clone()));
                    false
                } else {
                    true
                }
            });
            if backs.is_empty() || backs.len() == before {
                break;
            }
        }
        for (now, then) in backs {
            plan.notes.push(format!(
                "{} was renamed from {} after the checkpoint and stays so: {} is taken now",
                now.display(),
                then.display(),
                then.display()
            ));
        }
        plan.steps.extend(aside_files.into_iter().map(Step::Aside));
        plan.steps
            .extend(ordered.into_iter().map(|(now, then)| Step::Back { now, then }));
        plan.steps.extend(top.into_iter().map(Step::Aside));
        plan
    }

    /// What the plan renames back, by the path it renames to: where that file is now.
    pub fn moves(&self) -> HashMap<PathBuf, PathBuf> {
        self.steps
            .iter()
            .filter_map(|s| match s {
                Step::Back { now, then } => Some((then.clone(), now.clone())),
                Step::Aside(_) => None,
            })
            .collect()
    }

    /// Carries the plan out; a line for each change. On an error, what was already done is in
    /// it. `watch` notes each of its renames as a change of every checkpoint taken before, so
    /// that restoring a later checkpoint, whose files these were, brings them back.
    pub fn apply(&self, watch: &DirWatch, id: &str) -> Result<Vec<String>, (String, Vec<String>)> {
        let mut own = Vec::new();
        let r = self.apply_steps(id, &mut own);
        watch.record_own(own);
        r
    }

    fn apply_steps(&self, id: &str, own: &mut Vec<Change>) -> Result<Vec<String>, (String, Vec<String>)> {
        let mut done = Vec::new();
        for s in &self.steps {
            let before = placed(match s {
                Step::Aside(path) => path,
                Step::Back { now, .. } => now,
            });
            match s {
                Step::Aside(path) => {
                    let name = path
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    match crate::files::restore::set_aside(&path.to_string_lossy(), &name, id) {
                        Ok(to) => {
                            own.extend(renamed(before, Path::new(&to)));
                            tracing::info!(from = %path.display(), to, "set aside: made after the checkpoint");
                            done.push(format!(
                                "set aside {} as {to} (made by the program after the checkpoint)",
                                path.display()
                            ));
                        }
                        // Removed meanwhile (a dead program's socket file the restore replaced).
                        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                        Err(e) => return Err((format!("cannot set {} aside: {e}", path.display()), done)),
                    }
                }
                Step::Back { now, then } => match rename_noreplace(now, then) {
                    Ok(()) => {
                        own.extend(renamed(before, then));
                        tracing::info!(from = %now.display(), to = %then.display(), "renamed back");
                        let by = if is_aside(now) {
                            "set aside by a restore of an earlier checkpoint"
                        } else {
                            "renamed by the program after the checkpoint"
                        };
                        done.push(format!("renamed {} back to {} ({by})", now.display(), then.display()));
                    }
                    Err(e) => {
                        return Err((
                            format!("cannot rename {} back to {}: {e}", now.display(), then.display()),
                            done,
                        ))
                    }
                },
            }
        }
        Ok(done)
    }
}

/// Whether a restore put `path` (or a directory it is in) aside.
fn is_aside(path: &Path) -> bool {
    path.iter()
        .any(|c| c.as_bytes().windows(ASIDE.len()).any(|w| w == ASIDE.as_bytes()))
}

/// Follows each file the program touched from where it was at the checkpoint (or its creation)
/// to where it is now, by its handle.
pub(super) fn tracks(changes: Vec<Change>) -> Vec<(Vec<u8>, Track)> {
    let mut order: Vec<Vec<u8>> = Vec::new();
    let mut map: HashMap<Vec<u8>, Track> = HashMap::new();
    let mut seen: HashSet<Vec<u8>> = HashSet::new();
    for c in changes {
        let (child, t) = match c {
            Change::Create { at, child, dir } => (
                child,
                Track {
                    created: true,
                    dir,
                    then: None,
                    now: Some(at),
                    removed: false,
                },
            ),
            Change::Rename { from, to, child, dir } => {
                let t = map.remove(&child).unwrap_or(Track {
                    created: false,
                    dir,
                    then: Some(from),
                    now: None,
                    removed: false,
                });
                (child, Track { now: Some(to), ..t })
            }
            Change::Delete { at, child, dir } => {
                let t = map.remove(&child).unwrap_or(Track {
                    created: false,
                    dir,
                    then: Some(at),
                    now: None,
                    removed: false,
                });
                (
                    child,
                    Track {
                        now: None,
                        removed: true,
                        ..t
                    },
                )
            }
        };
        if seen.insert(child.clone()) {
            order.push(child.clone());
        }
        map.insert(child, t);
    }
    order
        .into_iter()
        .filter_map(|k| map.remove(&k).map(|t| (k, t)))
        .collect()
}

/// A path's place (its directory's handle and its name), its own handle, and whether it is a
/// directory.
fn placed(path: &Path) -> Option<(Place, Vec<u8>, bool)> {
    let child = fid::key_at(path).ok()??;
    let dir = fid::key_at(path.parent()?).ok()??;
    let name = path.file_name()?.as_bytes().to_vec();
    let is_dir = std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir());
    Some((Place { dir, name }, child, is_dir))
}

/// The change of a rename ckptd made, from what was `before` to `to`.
fn renamed(before: Option<(Place, Vec<u8>, bool)>, to: &Path) -> Option<Change> {
    let (from, child, dir) = before?;
    let to_dir = fid::key_at(to.parent()?).ok()??;
    Some(Change::Rename {
        from,
        to: Place {
            dir: to_dir,
            name: to.file_name()?.as_bytes().to_vec(),
        },
        child,
        dir,
    })
}

fn rename_noreplace(from: &Path, to: &Path) -> std::io::Result<()> {
    let (f, t) = (fid::cstr(from)?, fid::cstr(to)?);
    // SAFETY: two NUL-terminated paths; NOREPLACE: an existing name is never overwritten.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            f.as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
