//! What a checkpointed program did to its directories since a checkpoint: the files it
//! created, renamed and removed. ckptd watches the file systems the program works on with a
//! fanotify group of their own (filesystem marks, `FAN_CREATE | FAN_RENAME | FAN_DELETE`,
//! events naming the directory and entry and the entry's own handle), keeps the events of the
//! processes under its control (every pid that registered, including those that registered
//! after a checkpoint, and processes it restored), and a restore undoes them ([`undo`]).
//!
//! Attribution is by the event's pid: a process registers before it runs its own code (the
//! interposer's constructor and fork handler wait for ckptd's answer, and ckptd notes the pid
//! before it answers), so every change a program makes comes from a pid ckptd knows by then.
//! A pid counts only for the process that registered it (its start time), so that a process
//! outside the checkpoint that later gets the pid of an exited one is not taken for it; and a
//! change counts for a checkpoint only when its process descends from the checkpoint's (see
//! [`lineage`]).
//!
//! Filesystem marks need `CAP_SYS_ADMIN`, and resolving a directory's handle to its path
//! `CAP_DAC_READ_SEARCH`: an unprivileged ckptd does not watch directories, and a restore
//! says so and leaves them alone, as it does after a queue overflow or a ckptd restart.

pub mod events;
pub mod lineage;
pub mod undo;

#[cfg(test)]
mod tests;

use events::Change;
use lineage::{Lineage, Roots, Who};
use std::collections::HashSet;
use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};

/// At most this many changes are kept; beyond, the oldest go and the checkpoints that needed
/// them can no longer be undone (their restore says so).
const MAX_CHANGES: usize = 200_000;

/// Who ckptd's own changes are by.
const OWN: Who = (0, 0);

const MASK: u64 = libc::FAN_CREATE | libc::FAN_DELETE | libc::FAN_RENAME | libc::FAN_ONDIR;

pub struct DirWatch {
    inner: Option<Arc<Inner>>,
    unavailable: String,
}

struct Inner {
    fd: OwnedFd,
    reading: Mutex<()>,
    state: Mutex<State>,
    me: i32,
}

#[derive(Default)]
struct State {
    /// The order of things: events read so far and ckptd's own changes noted.
    seq: u64,
    overflow_at: Option<u64>,
    /// `seq` of the newest change dropped for room.
    dropped_at: Option<u64>,
    /// The processes under control (registered or restored), and whose child each is.
    lineage: Lineage,
    /// Changes by those processes, with the `seq` of their event and who made them, while a
    /// checkpoint needs them.
    changes: VecDeque<(u64, Who, Change)>,
    /// Marked file systems by fsid: an fd on each (to open directories by handle there).
    filesystems: HashMap<[u8; 8], OwnedFd>,
    /// Checkpoints by id: when their processes were parked, and the file systems they work
    /// on that could not be watched.
    marks: HashMap<String, Mark>,
}

#[derive(Clone)]
struct Mark {
    seq: u64,
    roots: Roots,
    unwatched: Vec<String>,
}

/// What ckptd knows of a checkpoint's directories since it was taken.
pub enum Since {
    Known {
        changes: Vec<Change>,
        /// Places the program works on whose file system could not be watched, with why.
        unwatched: Vec<String>,
    },
    /// Why ckptd cannot tell.
    Unknown(String),
}

impl DirWatch {
    pub fn start() -> Self {
        // The reader keeps up; a bounded queue would turn a burst of other programs' changes
        // into "cannot tell".
        let fd = match super::fid::group(libc::FAN_REPORT_DFID_NAME_TARGET | libc::FAN_UNLIMITED_QUEUE) {
            Ok(fd) => fd,
            Err(e) => {
                tracing::warn!(
                    "cannot watch directories (fanotify: {e}): what programs do to them is not undone at restore"
                );
                return Self {
                    inner: None,
                    unavailable: format!("ckptd cannot watch directories (fanotify: {e})"),
                };
            }
        };
        let inner = Arc::new(Inner {
            fd,
            reading: Mutex::new(()),
            state: Mutex::new(State::default()),
            me: std::process::id() as i32,
        });
        let reader = inner.clone();
        let spawned = std::thread::Builder::new()
            .name("dir-watch".into())
            .spawn(move || reader.run());
        if let Err(e) = spawned {
            return Self {
                inner: None,
                unavailable: format!("ckptd cannot watch directories (no thread: {e})"),
            };
        }
        Self {
            inner: Some(inner),
            unavailable: String::new(),
        }
    }

    /// A process under control from now on: registered (before it runs code of its own), or
    /// `restored` (before it runs).
    pub fn register(&self, pid: i32, restored: bool) {
        let Some(inner) = &self.inner else { return };
        if inner.lock().lineage.full() {
            // Events queued so far are attributed while the processes they name are known.
            inner.drain();
            let mut st = inner.lock();
            let st = &mut *st;
            let needed: HashSet<Who> = st.changes.iter().map(|(_, w, _)| *w).collect();
            let roots: Vec<&Roots> = st.marks.values().map(|m| &m.roots).collect();
            st.lineage.prune(&needed, &roots);
        }
        inner.lock().lineage.register(pid, restored);
    }

    /// Notes the instant checkpoint `id`'s processes (`pids`) are parked, watching first the
    /// file systems of `places` (their working directories, the files they write, /tmp).
    pub fn mark(&self, id: &str, pids: &[i32], places: &[String]) {
        let Some(inner) = &self.inner else { return };
        let mut unwatched = Vec::new();
        for p in places {
            if let Err(e) = inner.watch_fs(p) {
                tracing::warn!(path = p, "cannot watch the directories of this file system: {e}");
                unwatched.push(format!("{p} ({e})"));
            }
        }
        inner.drain();
        let mut st = inner.lock();
        let seq = st.seq;
        let roots = st.lineage.roots(pids);
        st.marks.insert(id.to_string(), Mark { seq, roots, unwatched });
    }

    /// The checkpoint was aborted.
    pub fn forget(&self, id: &str) {
        self.retain(|i| i != id);
    }

    /// Forgets the checkpoints `keep` says no to, and the changes only they needed.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        let Some(inner) = &self.inner else { return };
        let mut st = inner.lock();
        st.marks.retain(|id, _| keep(id));
        let oldest = st.marks.values().map(|m| m.seq).min();
        match oldest {
            Some(seq) => {
                while st.changes.front().is_some_and(|(s, _, _)| *s <= seq) {
                    st.changes.pop_front();
                }
            }
            None => st.changes.clear(),
        }
    }

    /// What the processes under control did to directories since checkpoint `id`, reading
    /// every event queued until now.
    pub fn since(&self, id: &str) -> Since {
        let Some(inner) = &self.inner else {
            return Since::Unknown(self.unavailable.clone());
        };
        inner.drain();
        let st = inner.lock();
        let Some(mark) = st.marks.get(id) else {
            return Since::Unknown("ckptd did not watch them since the checkpoint (restarted since?)".into());
        };
        if st.overflow_at.is_some_and(|at| at > mark.seq) {
            return Since::Unknown("ckptd's directory watch lost events".into());
        }
        if st.dropped_at.is_some_and(|at| at > mark.seq) {
            return Since::Unknown(format!(
                "ckptd keeps at most {MAX_CHANGES} changes and dropped some made since"
            ));
        }
        Since::Known {
            changes: st
                .changes
                .iter()
                .filter(|(s, who, _)| *s > mark.seq && (*who == OWN || st.lineage.belongs(*who, &mark.roots)))
                .map(|(_, _, c)| c.clone())
                .collect(),
            unwatched: mark.unwatched.clone(),
        }
    }

    /// Notes renames ckptd made itself (a restore's): they count for every checkpoint taken
    /// before them, whatever its processes.
    pub fn record_own(&self, changes: Vec<Change>) {
        let Some(inner) = &self.inner else { return };
        inner.drain();
        let mut st = inner.lock();
        if st.marks.is_empty() {
            return;
        }
        // After every checkpoint taken so far, even one taken with no event since.
        st.seq += 1;
        let seq = st.seq;
        for c in changes {
            st.changes.push_back((seq, OWN, c));
        }
    }

    /// Runs `f` with an fd on the file system of handle key `key` (to open by handle there).
    pub fn with_fs<R>(&self, key: &[u8], f: impl FnOnce(BorrowedFd<'_>) -> R) -> Option<R> {
        let inner = self.inner.as_ref()?;
        let fsid = crate::files::fid::fsid_of(key)?;
        let st = inner.lock();
        st.filesystems.get(&fsid).map(|fd| f(fd.as_fd()))
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks the file system `path` is on, once.
    fn watch_fs(&self, path: &str) -> std::io::Result<()> {
        let c = crate::files::fid::cstr(std::path::Path::new(path))?;
        // SAFETY: a NUL-terminated path. A directory opened for reading: open_by_handle_at
        // takes no O_PATH fd.
        let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a fresh fd that we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let fsid = crate::files::fid::fsid(fd.as_fd())?;
        if self.lock().filesystems.contains_key(&fsid) {
            return Ok(());
        }
        // SAFETY: marking the file system of a directory we hold (NULL path: the fd itself).
        let r = unsafe {
            libc::fanotify_mark(
                self.fd.as_raw_fd(),
                libc::FAN_MARK_ADD | libc::FAN_MARK_FILESYSTEM,
                MASK,
                fd.as_raw_fd(),
                std::ptr::null(),
            )
        };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
        self.lock().filesystems.insert(fsid, fd);
        Ok(())
    }

    fn run(&self) {
        super::fid::serve(self.fd.as_fd(), || self.drain())
    }

    /// Reads every queued event.
    fn drain(&self) {
        let _one = self.reading.lock().unwrap_or_else(|e| e.into_inner());
        super::fid::read_all(self.fd.as_fd(), |buf| {
            let evs = events::parse(buf);
            let mut st = self.lock();
            for ev in evs {
                st.seq += 1;
                if ev.mask & libc::FAN_Q_OVERFLOW != 0 {
                    tracing::warn!("directory watch queue overflowed: changes made so far are not undone");
                    st.overflow_at = Some(st.seq);
                    continue;
                }
                if ev.pid == self.me || st.marks.is_empty() {
                    continue;
                }
                // The process that registered, still running or gone without its pid taken.
                let Some(who) = st.lineage.who(ev.pid) else { continue };
                let seq = st.seq;
                for c in ev.changes() {
                    if st.changes.len() >= MAX_CHANGES {
                        if let Some((s, _, _)) = st.changes.pop_front() {
                            st.dropped_at = Some(s);
                        }
                    }
                    st.changes.push_back((seq, who, c));
                }
            }
        });
    }
}

/// The places a checkpoint's processes work on, whose file systems are watched: their working
/// directories, the directories of the files they write to, and /tmp.
pub fn places(images: &[&ckpt_format::ProcessImage]) -> Vec<String> {
    let mut out = vec!["/tmp".to_string()];
    for img in images {
        out.push(img.cwd.clone());
        for f in &img.fds {
            if let ckpt_format::FdKind::File {
                path, writable: true, ..
            } = &f.kind
            {
                if let Some(dir) = std::path::Path::new(path).parent() {
                    out.push(dir.to_string_lossy().into_owned());
                }
            }
        }
    }
    out.retain(|p| p.starts_with('/'));
    out.sort();
    out.dedup();
    out
}
