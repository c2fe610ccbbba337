//! Files a snapshot override names that no process holds open. A database keeps most of its
//! files closed between uses (PostgreSQL opens a table's file, writes, closes it; its
//! checkpointer fsyncs and unlinks files later), so the files held at the instant of a
//! checkpoint are not its state: `--file-policy '/srv/pg/data/*=snapshot'` on `ckptd` or
//! `ckptctl checkpoint` takes every regular file the pattern matches under its folder, open or
//! not, as a snapshot file of the checkpoint. The restore puts each back (a file removed since
//! is made again).

use super::policy::Decided;
use ckpt_format::{FilePolicy, FileRule};
use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

/// More files and folders than this under one pattern is a mistake (a pattern naming a whole
/// file system), refused rather than walked.
const MAX_FILES: usize = 100_000;

/// Where a pattern's files lie: the one file it names outright, or the folder of its literal
/// part (up to the last `/` before the first wildcard), walked. `None` for a pattern that is
/// not absolute or whose folder would be `/` itself.
fn root_of(glob: &str) -> Option<PathBuf> {
    if !glob.starts_with('/') {
        return None;
    }
    let Some(wild) = glob.find(['*', '?', '[']) else {
        return Some(PathBuf::from(glob));
    };
    let dir = &glob[..glob[..wild].rfind('/')?];
    (!dir.is_empty()).then(|| PathBuf::from(dir))
}

/// The snapshot files no process holds: every regular file under a snapshot rule's folder
/// whose path that rule is the first to match, not already in `held`.
pub fn find(rules: &[(FileRule, &'static str)], held: &[Decided]) -> anyhow::Result<Vec<Decided>> {
    let mut seen: HashSet<(u64, u64)> = held.iter().map(|d| d.key).collect();
    let mut out = Vec::new();
    for (rule, whose) in rules.iter().filter(|(r, _)| r.policy == FilePolicy::Snapshot) {
        let Some(root) = root_of(&rule.glob) else { continue };
        let mut stack = vec![root];
        let mut visited = 0usize;
        while let Some(path) = stack.pop() {
            // What is gone or unreadable holds nothing this ckptd could copy.
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            visited += 1;
            if visited > MAX_FILES {
                anyhow::bail!(
                    "--file-policy {rule} covers more than {MAX_FILES} files and folders; name the program's own folder"
                );
            }
            if meta.is_dir() {
                if let Ok(entries) = std::fs::read_dir(&path) {
                    stack.extend(entries.flatten().map(|e| e.path()));
                }
                continue;
            }
            let Some(text) = path.to_str() else { continue };
            if !meta.is_file() || !rule.matches(text) {
                continue;
            }
            let first = rules.iter().find(|(r, _)| r.matches(text));
            if !first.is_some_and(|(r, _)| std::ptr::eq(r, rule)) || !seen.insert((meta.dev(), meta.ino())) {
                continue;
            }
            out.push(Decided {
                key: (meta.dev(), meta.ino()),
                path: text.to_string(),
                open: text.to_string(),
                policy: FilePolicy::Snapshot,
                why: format!("{whose} --file-policy {rule} (held open by no process)"),
                pids: Vec::new(),
                mapped: false,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::root_of;
    use std::path::PathBuf;

    #[test]
    fn the_folder_before_the_first_wildcard() {
        assert_eq!(root_of("/srv/pg/data/*"), Some(PathBuf::from("/srv/pg/data")));
        assert_eq!(root_of("/srv/pg/da*/base/*"), Some(PathBuf::from("/srv/pg")));
        assert_eq!(root_of("/srv/db.sqlite"), Some(PathBuf::from("/srv/db.sqlite")));
        assert_eq!(root_of("/*.db"), None);
        assert_eq!(root_of("*.db"), None);
    }
}
