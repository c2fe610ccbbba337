//! Who wrote to a file since a checkpoint. ckptd marks each append and snapshot file of a
//! checkpoint with fanotify (`FAN_MODIFY` on the inode, notification class, events identified
//! by file handle so that no file is opened per event) while its processes are parked, and a
//! thread of its own reads the events, noting per file which pids modified it and when.
//!
//! A restore may cut a log back only when every write since the checkpoint came from the
//! checkpoint's own processes ([`Proof::Proven`]); an overflow of the queue, a ckptd restart or
//! no fanotify at all (an unprivileged ckptd) leave it unprovable, and the log is left alone.
//! Writes through a shared mapping, and writes by a pid that exited and was reused before its
//! event was read, are not seen.

use super::FileKey;
use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};

/// What ckptd knows about the writers of a file since a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Proof {
    /// Only the checkpoint's processes wrote to it (or nobody did).
    Proven,
    /// Another process did.
    Foreign { pid: i32, comm: String },
    /// ckptd cannot tell.
    Unknown(String),
}

pub struct Watch {
    inner: Option<Arc<Inner>>,
    /// Why there is no watch.
    unavailable: String,
}

struct Inner {
    fd: OwnedFd,
    /// One reader at a time (the thread, or a caller syncing).
    reading: Mutex<()>,
    state: Mutex<State>,
    me: i32,
}

#[derive(Default)]
struct State {
    /// Events read so far.
    seq: u64,
    /// `seq` when the queue last overflowed.
    overflow_at: Option<u64>,
    /// File handle (fsid, type, bytes) → file.
    handles: HashMap<Vec<u8>, FileKey>,
    /// Per file, per (pid, is one of ours): the last event and the command.
    writers: HashMap<FileKey, HashMap<(i32, bool), Writer>>,
    /// The processes ckptd checkpointed or restored: a pidfd and the start time of each.
    ours: HashMap<i32, (OwnedFd, Option<u64>)>,
    /// Checkpoints by id: when their processes were parked, which, and which files.
    marks: HashMap<String, Mark>,
}

struct Writer {
    last: u64,
    comm: String,
}

#[derive(Clone)]
struct Mark {
    seq: u64,
    pids: Vec<i32>,
    files: HashSet<FileKey>,
}

impl Watch {
    /// Starts watching (and its reader thread); without fanotify, a watch that proves nothing.
    pub fn start() -> Self {
        // Without CAP_SYS_ADMIN the kernel hides every writer's pid from the group (it reports
        // 0): no write could be told to be the checkpoint's own, so such a watch proves nothing.
        if !ckpt_sys::caps::effective(ckpt_sys::caps::CAP_SYS_ADMIN) {
            tracing::warn!("cannot tell who writes to files (fanotify names no writer to a ckptd without CAP_SYS_ADMIN): logs are never cut back at restore");
            return Self {
                inner: None,
                unavailable: "ckptd cannot tell who writes to files (it runs without CAP_SYS_ADMIN)".into(),
            };
        }
        let fd = match super::fid::group(libc::FAN_REPORT_FID) {
            Ok(fd) => fd,
            Err(e) => {
                tracing::warn!("cannot watch files (fanotify: {e}): logs are never cut back at restore");
                return Self {
                    inner: None,
                    unavailable: format!("ckptd cannot watch files (fanotify: {e})"),
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
            .name("file-watch".into())
            .spawn(move || reader.run());
        if let Err(e) = spawned {
            return Self {
                inner: None,
                unavailable: format!("ckptd cannot watch files (no thread: {e})"),
            };
        }
        Self {
            inner: Some(inner),
            unavailable: String::new(),
        }
    }

    /// A process ckptd checkpointed or restored (adopted before it runs, for a restored one):
    /// its writes count as the checkpoint's.
    pub fn adopt(&self, pid: i32) {
        let Some(inner) = &self.inner else { return };
        // SAFETY: pidfd_open with plain integers.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as i32;
        if fd >= 0 {
            // SAFETY: a fresh fd that we own.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            // Events queued so far are attributed while the processes they name are known.
            inner.drain();
            let mut st = inner.lock();
            if st.ours.len() >= PRUNE_OURS_AT {
                // Processes that have exited wrote nothing since the drain: their pidfds go
                // (a shell's short-lived children would otherwise pile up until EMFILE).
                st.ours.retain(|_, (fd, _)| alive(fd));
            }
            st.ours.insert(pid, (fd, start_time(pid)));
        }
    }

    /// Forgets the checkpoints `keep` says no (deleted), and the files only they watched.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        let Some(inner) = &self.inner else { return };
        let mut st = inner.lock();
        st.marks.retain(|id, _| keep(id));
        let live: HashSet<FileKey> = st.marks.values().flat_map(|m| m.files.iter().copied()).collect();
        st.handles.retain(|_, k| live.contains(k));
        st.writers.retain(|k, _| live.contains(k));
    }

    /// Marks the files (each opened through `open`, a path to its inode) of checkpoint `id`,
    /// whose processes are parked now, and notes the instant. Files that cannot be marked are
    /// left out (unprovable).
    pub fn mark(&self, id: &str, pids: &[i32], files: &[(FileKey, String)]) {
        let Some(inner) = &self.inner else { return };
        let mut marked = HashSet::new();
        for (key, open) in files {
            match inner.add_mark(open) {
                Ok(handle) => {
                    inner.lock().handles.insert(handle, *key);
                    marked.insert(*key);
                }
                Err(e) => tracing::warn!(path = open, "cannot watch file writers: {e}"),
            }
        }
        // Writes before this instant are before the checkpoint.
        inner.drain();
        let mut st = inner.lock();
        let seq = st.seq;
        st.marks.insert(
            id.to_string(),
            Mark {
                seq,
                pids: pids.to_vec(),
                files: marked,
            },
        );
    }

    /// The checkpoint was aborted.
    pub fn forget(&self, id: &str) {
        if let Some(inner) = &self.inner {
            inner.lock().marks.remove(id);
        }
    }

    /// Who wrote to `key` since checkpoint `id`, reading every event queued until now.
    pub fn proof(&self, id: &str, key: FileKey) -> Proof {
        let Some(inner) = &self.inner else {
            return Proof::Unknown(self.unavailable.clone());
        };
        inner.drain();
        let st = inner.lock();
        let Some(mark) = st.marks.get(id) else {
            return Proof::Unknown("ckptd did not watch it since the checkpoint (restarted since?)".into());
        };
        if !mark.files.contains(&key) {
            return Proof::Unknown("ckptd could not watch it".into());
        }
        if st.overflow_at.is_some_and(|at| at > mark.seq) {
            return Proof::Unknown("ckptd's watch lost events".into());
        }
        let foreign = st.writers.get(&key).and_then(|w| {
            w.iter()
                .filter(|(_, w)| w.last > mark.seq)
                .find(|((pid, ours), _)| !*ours || !mark.pids.contains(pid))
                .map(|((pid, _), w)| Proof::Foreign {
                    pid: *pid,
                    comm: w.comm.clone(),
                })
        });
        foreign.unwrap_or(Proof::Proven)
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks the inode `open` leads to; returns the key its events will carry.
    fn add_mark(&self, open: &str) -> std::io::Result<Vec<u8>> {
        let file = std::fs::File::open(open)?;
        // SAFETY: marking the inode of an fd we hold (NULL path: the fd itself).
        let r = unsafe {
            libc::fanotify_mark(
                self.fd.as_raw_fd(),
                libc::FAN_MARK_ADD,
                libc::FAN_MODIFY,
                file.as_raw_fd(),
                std::ptr::null(),
            )
        };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
        use std::os::fd::AsFd;
        super::fid::key_of(file.as_fd())
    }

    fn run(&self) {
        super::fid::serve(self.fd.as_fd(), || self.drain())
    }

    /// Reads every queued event.
    fn drain(&self) {
        let _one = self.reading.lock().unwrap_or_else(|e| e.into_inner());
        super::fid::read_all(self.fd.as_fd(), |buf| self.events(buf));
    }

    fn events(&self, buf: &[u8]) {
        let mut st = self.lock();
        for super::fid::Event { mask, pid, info } in super::fid::parse(buf) {
            st.seq += 1;
            if mask & libc::FAN_Q_OVERFLOW != 0 {
                tracing::warn!("file watch queue overflowed: logs written so far are not cut back");
                st.overflow_at = Some(st.seq);
                continue;
            }
            if pid == self.me {
                continue;
            }
            // The first info record: header (type, pad, len), fsid, file_handle.
            if info.len() < 4 + 8 + 8 || info[0] != 1 {
                continue;
            }
            let rec_len = (u16::from_ne_bytes([info[2], info[3]]) as usize).min(info.len());
            let rec = &info[..rec_len];
            if rec.len() < 20 {
                continue;
            }
            let hbytes = u32::from_ne_bytes(rec[12..16].try_into().unwrap_or_default()) as usize;
            let htype = i32::from_ne_bytes(rec[16..20].try_into().unwrap_or_default());
            let Some(handle) = rec.get(20..20 + hbytes) else {
                continue;
            };
            let Some(&key) = st.handles.get(&super::fid::key(&rec[4..12], htype, handle)) else {
                continue;
            };
            let ours = st.ours.get(&pid).is_some_and(|(fd, start)| is_ours(fd, *start, pid));
            let seq = st.seq;
            st.writers
                .entry(key)
                .or_default()
                .entry((pid, ours))
                .and_modify(|w| w.last = seq)
                .or_insert_with(|| Writer {
                    last: seq,
                    comm: comm_of(pid),
                });
        }
    }
}

/// How many processes ckptd keeps pidfds of before it drops those that have exited.
const PRUNE_OURS_AT: usize = 256;

/// Whether the process behind `pidfd` still exists.
fn alive(pidfd: &OwnedFd) -> bool {
    // SAFETY: signal 0 through a pidfd we hold only checks that the process exists.
    unsafe { libc::syscall(libc::SYS_pidfd_send_signal, pidfd.as_raw_fd(), 0, 0usize, 0) == 0 }
}

/// Whether the writer `pid` is the process ckptd holds `pidfd` of: it still runs, or it is
/// dying or gone and no other process has its pid (it wrote, then was killed before the event
/// was read).
fn is_ours(pidfd: &OwnedFd, start: Option<u64>, pid: i32) -> bool {
    alive(pidfd) || {
        let now = start_time(pid);
        now.is_none() || now == start
    }
}

fn start_time(pid: i32) -> Option<u64> {
    ckpt_sys::procfs::start_time(pid)
}

fn comm_of(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "exited".to_string())
}
