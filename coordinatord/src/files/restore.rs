//! Restoring files: every check first, on every file of every process (a restore that would
//! refuse one file changes none); then, once every node has prepared, the changes: companions
//! set aside, snapshots written back in place, logs cut back where ckptd has proof.

use super::capture::{changed_sample, companions, read_full, ASIDE};
use super::proof::{Proof, Watch};
use ckpt_format::{
    block_hash, first_match, read_host_files, BlockStoreReader, CheckpointDir, FileContent, FilePolicy, FileRecord,
    FileRule, HostFiles, MappingKind, ProcessImage, Snapshot, Store, FILE_BLOCK,
};
use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

/// The files of one host for one restore, verified.
pub struct FileRestore {
    id: String,
    files: HostFiles,
    /// Readers of the block stores, by index (`None`: no block lives there).
    readers: Vec<Option<BlockStoreReader>>,
    rules: Vec<FileRule>,
    /// Files the directory undo will rename back to these paths before the files are put
    /// back: a path is checked where its file is now.
    moves: HashMap<std::path::PathBuf, std::path::PathBuf>,
}

/// What the restore does with each file.
#[derive(Debug, Clone)]
pub enum Action {
    PutBack(usize),
    Cut(usize, String),
    /// Left as it is; the note for the summary, if any.
    Leave(usize, Option<String>),
}

/// What applying changed: one line per file for the summary, and the identity of each file
/// put back (for the restorer's check of mapped files).
#[derive(Debug, Default)]
pub struct Applied {
    pub notes: Vec<String>,
    pub put_back: HashMap<String, Ident>,
}

/// A file's identity as the restorer checks a mapped one.
#[derive(Debug, Clone, Copy)]
pub struct Ident {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i128,
}

impl Ident {
    pub fn of(m: &std::fs::Metadata) -> Self {
        Self {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
        }
    }
}

impl FileRestore {
    /// Reads the host's file records and verifies every block they refer to.
    pub fn open(store: &Store, dir: &CheckpointDir, host: &str, rules: &[FileRule]) -> Result<Self, String> {
        let files = read_host_files(dir, host).map_err(|e| e.to_string())?;
        let used: Vec<bool> = (0..files.stores.len())
            .map(|i| {
                files.files.iter().any(|f| match &f.content {
                    FileContent::Snapshot(s) => s.blocks.iter().any(|b| b.store as usize == i),
                    _ => false,
                })
            })
            .collect();
        let mut readers = Vec::new();
        for (i, rel) in files.stores.iter().enumerate() {
            readers.push(if used[i] {
                let expected = if i == 0 { files.blocks_len } else { 0 };
                Some(BlockStoreReader::open(&store.root().join(rel), expected).map_err(|e| e.to_string())?)
            } else {
                None
            });
        }
        let me = Self {
            id: dir.id.clone(),
            files,
            readers,
            rules: rules.to_vec(),
            moves: HashMap::new(),
        };
        let mut buf = Vec::new();
        for f in &me.files.files {
            if let FileContent::Snapshot(s) = &f.content {
                for b in &s.blocks {
                    me.reader(b.store)?.read_block(b, &mut buf).map_err(|e| e.to_string())?;
                }
            }
        }
        Ok(me)
    }

    /// What the directory undo will rename back (to → from), for the checks.
    pub fn set_moves(&mut self, moves: HashMap<std::path::PathBuf, std::path::PathBuf>) {
        self.moves = moves;
    }

    /// Where the file that will be at `path` is now.
    fn now_at<'a>(&'a self, path: &'a str) -> &'a Path {
        self.moves.get(Path::new(path)).map_or(Path::new(path), |p| p.as_path())
    }

    /// The files whose content this restore brings back or checks, and sqlite's companions
    /// beside the snapshots: the directory undo leaves them to the contract.
    pub fn contract_paths(&self) -> std::collections::HashSet<std::path::PathBuf> {
        let mut out = std::collections::HashSet::new();
        for f in &self.files.files {
            out.insert(std::path::PathBuf::from(&f.path));
            if matches!(f.content, FileContent::Snapshot(_)) {
                for c in ["-journal", "-wal", "-shm"] {
                    out.insert(std::path::PathBuf::from(format!("{}{c}", f.path)));
                }
            }
        }
        out
    }

    fn reader(&self, store: u32) -> Result<&BlockStoreReader, String> {
        self.readers
            .get(store as usize)
            .and_then(Option::as_ref)
            .ok_or_else(|| {
                format!(
                    "checkpoint {}: a file block names store {store}, which it does not list; the image is damaged",
                    self.id
                )
            })
    }

    /// The policy the restore applies to `f`, and whether the user forced it.
    fn policy(&self, f: &FileRecord) -> (FilePolicy, bool) {
        match first_match(&self.rules, &f.path) {
            Some(r) => (r.policy, true),
            None => (f.policy, false),
        }
    }

    /// Checks every file; on success, what to do with each. Changes nothing.
    pub fn check(&self, images: &[&ProcessImage], watch: &Watch) -> Result<Vec<Action>, Vec<String>> {
        let mut problems = Vec::new();
        let mut actions = Vec::new();
        for (i, f) in self.files.files.iter().enumerate() {
            let key = (f.dev, f.ino);
            let override_hint = format!(
                "`ckptctl restore {id} --file-policy {p}=snapshot` rolls it back anyway, `--file-policy {p}=keep` leaves it",
                id = self.id,
                p = f.path
            );
            let (policy, forced) = self.policy(f);
            match (&f.content, policy) {
                (_, FilePolicy::Keep) => actions.push(Action::Leave(i, None)),
                (FileContent::Snapshot(_), FilePolicy::Snapshot) => {
                    let parent = Path::new(&f.path).parent().unwrap_or(Path::new("/"));
                    if !parent.is_dir() {
                        problems.push(format!(
                            "{}: its directory {} is gone; create it, or {}",
                            f.path,
                            parent.display(),
                            self.keep_hint(&f.path)
                        ));
                        continue;
                    }
                    if !forced {
                        if let Proof::Foreign { pid, comm } = watch.proof(&self.id, key) {
                            problems.push(format!(
                                "{}: modified since the checkpoint by pid {pid} ({comm}); {override_hint}",
                                f.path
                            ));
                            continue;
                        }
                    }
                    actions.push(Action::PutBack(i));
                }
                (FileContent::Append(mark), FilePolicy::Append | FilePolicy::Snapshot) => {
                    let force_cut = forced && policy == FilePolicy::Snapshot;
                    match check_log(self.now_at(&f.path), mark) {
                        Err(why) if !(force_cut && why.1) => {
                            problems.push(format!("{}: {}; {}", f.path, why.0, self.keep_hint(&f.path)));
                            continue;
                        }
                        _ => {}
                    }
                    if force_cut {
                        actions.push(Action::Cut(i, "forced with --file-policy".into()));
                        continue;
                    }
                    let left = |why: String| {
                        format!(
                            "left {} as it is ({why}); lines the restored program wrote after the checkpoint may appear twice",
                            f.path
                        )
                    };
                    match watch.proof(&self.id, key) {
                        Proof::Proven => actions.push(Action::Cut(
                            i,
                            "only the checkpointed programs wrote to it since".into(),
                        )),
                        Proof::Foreign { pid, comm } => actions.push(Action::Leave(
                            i,
                            Some(left(format!("pid {pid} ({comm}) wrote to it since the checkpoint"))),
                        )),
                        Proof::Unknown(why) => actions.push(Action::Leave(i, Some(left(why)))),
                    }
                }
                // A policy the record cannot serve (snapshot of a file that was not copied,
                // append of a file recorded as a snapshot or kept): leave it.
                _ => actions.push(Action::Leave(
                    i,
                    Some(format!(
                        "left {} as it is (the checkpoint took no {policy} record of it)",
                        f.path
                    )),
                )),
            }
        }
        problems.extend(self.check_mapped(images));
        if problems.is_empty() {
            Ok(actions)
        } else {
            Err(problems)
        }
    }

    /// Mapped files that are not put back must be the very files that were mapped.
    fn check_mapped(&self, images: &[&ProcessImage]) -> Vec<String> {
        let mut problems = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for img in images {
            for m in &img.mappings {
                let MappingKind::File(id) = &m.kind else { continue };
                if !seen.insert(id.path.clone()) || self.mapped_override(&id.path).is_some() {
                    continue;
                }
                let same = std::fs::metadata(self.now_at(&id.path)).map(|meta| {
                    let i = Ident::of(&meta);
                    (i.dev, i.ino, i.size, i.mtime_ns) == (id.dev, id.ino, id.size, id.mtime_ns)
                });
                match same {
                    Ok(true) => {}
                    Ok(false) => problems.push(format!(
                        "{}: mapped by pid {} and changed since the checkpoint; {}",
                        id.path,
                        img.pid,
                        self.keep_hint(&id.path)
                    )),
                    Err(e) => problems.push(format!(
                        "{}: mapped by pid {} and now unreadable ({e})",
                        id.path, img.pid
                    )),
                }
            }
        }
        problems
    }

    /// How the restorer is to check a mapped file that is not unchanged: `Some(true)` when it
    /// is put back (checked against what was written), `Some(false)` when it is kept as is.
    pub fn mapped_override(&self, path: &str) -> Option<bool> {
        // A file only mapped for reading (a library) has no record, but `=keep` is for it too.
        let Some(f) = self.files.files.iter().find(|f| f.path == path) else {
            return first_match(&self.rules, path)
                .filter(|r| r.policy == FilePolicy::Keep)
                .map(|_| false);
        };
        match (self.policy(f).0, &f.content) {
            (FilePolicy::Snapshot, FileContent::Snapshot(_)) => Some(true),
            (FilePolicy::Keep, _) => Some(false),
            _ => None,
        }
    }

    /// Applies `actions`. On an error, what was already changed is in the error.
    pub fn apply(&self, actions: &[Action]) -> Result<Applied, (String, Applied)> {
        let mut done = Applied::default();
        // Companions that appeared or changed since go first: a journal from the abandoned
        // future (a hot one, or a persistent one rewritten) must not meet the restored
        // database. Those the checkpoint holds themselves are put back instead.
        for a in actions {
            let Action::PutBack(i) = a else { continue };
            let f = &self.files.files[*i];
            let FileContent::Snapshot(s) = &f.content else { continue };
            for now in companions(&f.path) {
                let name = &now.name;
                let full = Path::new(&f.path).with_file_name(name);
                if s.companions.contains(&now) || self.files.files.iter().any(|o| Path::new(&o.path) == full) {
                    continue;
                }
                let why = if s.companions.iter().any(|c| &c.name == name) {
                    "it changed after the checkpoint"
                } else {
                    "it appeared after the checkpoint"
                };
                match set_aside(&f.path, name, &self.id) {
                    Ok(to) => {
                        tracing::warn!(from = name, to, why, "companion set aside");
                        done.notes.push(format!("set aside {name} as {to} ({why})"));
                    }
                    Err(e) => return Err((format!("cannot set {name} aside: {e}"), done)),
                }
            }
        }
        for a in actions {
            let r = match a {
                Action::PutBack(i) => {
                    let f = &self.files.files[*i];
                    let FileContent::Snapshot(s) = &f.content else { continue };
                    self.put_back(&f.path, s).map(|(ident, before, n)| {
                        done.put_back.insert(f.path.clone(), ident);
                        (n > 0 || before != s.size).then(|| {
                            format!(
                                "rolled back {} to its {} bytes at the checkpoint ({n} blocks rewritten, it had {before} bytes)",
                                f.path, s.size
                            )
                        })
                    })
                }
                Action::Cut(i, why) => {
                    let f = &self.files.files[*i];
                    let FileContent::Append(m) = &f.content else { continue };
                    cut(&f.path, m.size).map(|cut| {
                        (cut > 0).then(|| format!("cut {} back to {} bytes, {cut} bytes less ({why})", f.path, m.size))
                    })
                }
                Action::Leave(_, Some(note)) => Ok(Some(note.clone())),
                Action::Leave(_, None) => continue,
            };
            match r {
                Ok(Some(note)) => {
                    tracing::info!("{note}");
                    done.notes.push(note);
                }
                Ok(None) => {}
                Err(e) => {
                    let path = match a {
                        Action::PutBack(i) | Action::Cut(i, _) | Action::Leave(i, _) => &self.files.files[*i].path,
                    };
                    return Err((format!("{path}: {e}"), done));
                }
            }
        }
        Ok(done)
    }

    /// Writes snapshot `s` back at `path` in place (creating it if gone): only the blocks
    /// that differ are written. Returns the result's identity, the size it had before and how
    /// many blocks were written.
    fn put_back(&self, path: &str, s: &Snapshot) -> std::io::Result<(Ident, u64, u64)> {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)?;
        let now = f.metadata()?.len();
        let by_index: HashMap<u64, &ckpt_format::Block> = s.blocks.iter().map(|b| (b.index, b)).collect();
        let (mut want, mut have) = (Vec::new(), vec![0u8; FILE_BLOCK as usize]);
        let mut written = 0;
        for index in 0..s.size.div_ceil(FILE_BLOCK) {
            let off = index * FILE_BLOCK;
            let len = FILE_BLOCK.min(s.size - off) as usize;
            let n = if off < now {
                read_full(&f, &mut have[..len], off)?
            } else {
                0
            };
            let current = &have[..n];
            match by_index.get(&index) {
                Some(b) => {
                    if n == b.len as usize && block_hash(current) == b.hash {
                        continue;
                    }
                    self.reader(b.store)
                        .map_err(std::io::Error::other)?
                        .read_block(b, &mut want)
                        .map_err(std::io::Error::other)?;
                    f.write_all_at(&want, off)?;
                    written += 1;
                }
                None if current.iter().any(|&x| x != 0) => {
                    f.write_all_at(&vec![0u8; n], off)?;
                    written += 1;
                }
                None => {}
            }
        }
        f.set_len(s.size)?;
        // SAFETY: fchown/fchmod on an fd we hold.
        unsafe {
            libc::fchown(f.as_raw_fd(), s.uid, s.gid);
            libc::fchmod(f.as_raw_fd(), s.mode);
        }
        f.sync_all()?;
        Ok((Ident::of(&f.metadata()?), now, written))
    }
}

impl FileRestore {
    fn keep_hint(&self, path: &str) -> String {
        format!(
            "`ckptctl restore {} --file-policy {path}=keep` leaves it as it is",
            self.id
        )
    }
}

/// Whether a log still begins with what it held at the checkpoint: `Err((why, forcible))`,
/// forcible when a forced rollback can still cut it back.
fn check_log(path: &Path, mark: &ckpt_format::AppendMark) -> Result<(), (String, bool)> {
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) => {
            return Err((
                format!("cannot open it ({e}); it was {} bytes at the checkpoint", mark.size),
                false,
            ))
        }
    };
    let now = f.metadata().map(|m| m.len()).map_err(|e| (e.to_string(), false))?;
    if now < mark.size {
        return Err((
            format!("now {now} bytes, shorter than at the checkpoint ({})", mark.size),
            false,
        ));
    }
    match changed_sample(&f, mark) {
        Ok(None) => Ok(()),
        Ok(Some(at)) => Err((
            format!(
                "its bytes before offset {} changed since the checkpoint (at offset {at})",
                mark.size
            ),
            true,
        )),
        Err(e) => Err((format!("cannot read it ({e})"), false)),
    }
}

/// Cuts a log back to `size`; returns how much went.
fn cut(path: &str, size: u64) -> std::io::Result<u64> {
    let f = std::fs::OpenOptions::new().write(true).open(path)?;
    let now = f.metadata()?.len();
    if now > size {
        f.set_len(size)?;
        f.sync_all()?;
    }
    Ok(now.saturating_sub(size))
}

/// Renames `NAME` beside `snapshot` to `NAME.ckpt-aside-ID` (or `…-ID.N` if taken); never
/// deletes anything.
pub(crate) fn set_aside(snapshot: &str, name: &str, id: &str) -> std::io::Result<String> {
    let dir = Path::new(snapshot).parent().unwrap_or(Path::new("/"));
    let from = dir.join(name);
    for n in 0..1000 {
        let to_name = match n {
            0 => format!("{name}{ASIDE}{id}"),
            n => format!("{name}{ASIDE}{id}.{n}"),
        };
        let to = dir.join(&to_name);
        let (cf, ct) = (cstr(&from)?, cstr(&to)?);
        // SAFETY: two NUL-terminated paths; NOREPLACE: an existing name is never overwritten.
        let r = unsafe {
            libc::renameat2(
                libc::AT_FDCWD,
                cf.as_ptr(),
                libc::AT_FDCWD,
                ct.as_ptr(),
                libc::RENAME_NOREPLACE,
            )
        };
        if r == 0 {
            return Ok(to.display().to_string());
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EEXIST) {
            return Err(e);
        }
    }
    Err(std::io::Error::other("too many set-aside copies"))
}

fn cstr(p: &Path) -> std::io::Result<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(std::io::Error::other)
}
