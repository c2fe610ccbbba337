//! SysV IPC objects: shared memory segments ([`shm`]), semaphore sets ([`sem`]) and message
//! queues ([`msg`]). They are not held through fds and outlive processes: ckptd records those
//! the checkpointed processes use (the ids the interposer noted, and every segment attached)
//! once per host, and makes them again at restore, before any process, with the same ids and
//! keys, owners and modes, and contents.
//!
//! Ids come back through the kernel's `/proc/sys/kernel/{shm,sem,msg}_next_id` (the next
//! object made takes that id; the file resets itself to -1 after use), which needs
//! `CAP_CHECKPOINT_RESTORE` or `CAP_SYS_ADMIN`. The object the killed program used is usually
//! still there at restore: one with the same key (or, for a private one, at the same id) that
//! no live process uses is replaced; one a live process uses, or another object holding the id,
//! refuses the restore before anything changes ([`check`]).

pub mod msg;
pub mod sem;
pub mod shm;

use crate::KindError;
use serde::{Deserialize, Serialize};

/// Owner, creator, mode and key of an object (`struct ipc_perm`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Perm {
    /// `IPC_PRIVATE` (0) for a private object, and for a segment removed while attached.
    pub key: i32,
    pub uid: u32,
    pub gid: u32,
    pub cuid: u32,
    pub cgid: u32,
    /// The permission bits, and for a segment `SHM_DEST`/`SHM_LOCKED`.
    pub mode: u32,
}

impl Perm {
    fn of(p: &libc::ipc_perm) -> Perm {
        Perm {
            key: p.__key,
            uid: p.uid,
            gid: p.gid,
            cuid: p.cuid,
            cgid: p.cgid,
            mode: p.mode as u32,
        }
    }

    /// Copies owner and permission bits into `p`, for `IPC_SET`.
    fn set(&self, p: &mut libc::ipc_perm) {
        p.uid = self.uid;
        p.gid = self.gid;
        p.mode = (self.mode & 0o777) as u16;
    }

    fn describe_key(&self) -> String {
        if self.key == 0 {
            "private".to_string()
        } else {
            format!("key {:#x}", self.key as u32)
        }
    }
}

/// The three kinds, for the kernel's file names and for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Shm,
    Sem,
    Msg,
}

impl Kind {
    fn next_id_file(self) -> &'static str {
        match self {
            Kind::Shm => "/proc/sys/kernel/shm_next_id",
            Kind::Sem => "/proc/sys/kernel/sem_next_id",
            Kind::Msg => "/proc/sys/kernel/msg_next_id",
        }
    }

    /// What `ipcs`/`ipcrm` call it, and the `ipcrm` option that removes one by id.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Shm => "SysV shared memory segment",
            Kind::Sem => "SysV semaphore set",
            Kind::Msg => "SysV message queue",
        }
    }

    fn ipcrm(self) -> &'static str {
        match self {
            Kind::Shm => "-m",
            Kind::Sem => "-s",
            Kind::Msg => "-q",
        }
    }

    fn remove(self, id: i32) -> std::io::Result<()> {
        // SAFETY: IPC_RMID takes no buffer; a null one is passed.
        let r = unsafe {
            match self {
                Kind::Shm => libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()),
                Kind::Sem => libc::semctl(id, 0, libc::IPC_RMID),
                Kind::Msg => libc::msgctl(id, libc::IPC_RMID, std::ptr::null_mut()),
            }
        };
        ok(r).map(drop)
    }

    /// The id of the object with `key`, if there is one.
    fn by_key(self, key: i32) -> Option<i32> {
        if key == 0 {
            return None;
        }
        // SAFETY: plain calls that look an object up without creating it.
        let id = unsafe {
            match self {
                Kind::Shm => libc::shmget(key, 0, 0),
                Kind::Sem => libc::semget(key, 0, 0),
                Kind::Msg => libc::msgget(key, 0),
            }
        };
        (id >= 0).then_some(id)
    }
}

fn ok(r: libc::c_int) -> std::io::Result<libc::c_int> {
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// What exists at restore where an object is to be made: the killed program's objects to
/// replace, or why the restore cannot go on.
pub struct Stale {
    kind: Kind,
    ids: Vec<i32>,
}

impl Stale {
    /// Removes the stale objects.
    fn clear(&self) -> Result<(), KindError> {
        for &id in &self.ids {
            match self.kind.remove(id) {
                Ok(()) => {}
                // Gone meanwhile.
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EIDRM)) => {}
                Err(e) => {
                    return Err(KindError::recreate(format!(
                        "removing the old {} {id}",
                        self.kind.name()
                    ))(e))
                }
            }
        }
        Ok(())
    }
}

/// The objects already there for object `id` with `perm` of `kind`: one at the same id with
/// the same key, one with the same key elsewhere. `in_use(id)` says who uses an existing one;
/// `key_of(id)` gives the key of the object at `id`, if any.
fn existing(
    kind: Kind,
    id: i32,
    perm: &Perm,
    key_of: impl Fn(i32) -> Option<i32>,
    in_use: impl Fn(i32) -> Option<String>,
) -> Result<Stale, String> {
    let what = format!("{} {id} ({})", kind.name(), perm.describe_key());
    let mut ids = Vec::new();
    if let Some(key) = key_of(id) {
        if key != perm.key {
            return Err(format!(
                "{what}: its id is taken by another one (key {:#x}); remove it (`ipcrm {} {id}`) if nothing uses it, then restore again",
                key as u32,
                kind.ipcrm()
            ));
        }
        ids.push(id);
    }
    if let Some(other) = kind.by_key(perm.key).filter(|&o| o != id) {
        ids.push(other);
    }
    for &old in &ids {
        if let Some(who) = in_use(old) {
            return Err(format!(
                "{what}: the one there now (id {old}) is in use by {who}; stop it, then restore again"
            ));
        }
    }
    Ok(Stale { kind, ids })
}

/// Makes an object of `kind` with id `id`, owned by `perm`'s creator: `make` runs on a thread
/// of its own that takes the creator's effective ids (the kernel records them as `cuid`/`cgid`),
/// right after the wanted id was written to the kernel's next-id file.
fn make_with_id(
    kind: Kind,
    id: i32,
    perm: &Perm,
    make: impl FnOnce() -> std::io::Result<i32> + Send,
) -> Result<(), KindError> {
    let what = format!("{} {id}", kind.name());
    let made = std::thread::scope(|s| {
        s.spawn(|| -> std::io::Result<i32> {
            std::fs::write(kind.next_id_file(), id.to_string())?;
            // SAFETY: geteuid/getegid have no preconditions.
            let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
            // Raw system calls change this thread's credentials alone (libc's wrappers would
            // change every thread's); the thread ends right after.
            if perm.cgid != egid {
                // SAFETY: setresgid with -1 for the ids left as they are.
                ok(unsafe { libc::syscall(libc::SYS_setresgid, -1i64, perm.cgid as i64, -1i64) } as i32)?;
            }
            if perm.cuid != euid {
                // SAFETY: as above.
                ok(unsafe { libc::syscall(libc::SYS_setresuid, -1i64, perm.cuid as i64, -1i64) } as i32)?;
            }
            let r = make();
            if r.is_err() {
                // The id must not go to whoever makes the next object.
                let _ = std::fs::write(kind.next_id_file(), "-1");
            }
            r
        })
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("thread panicked")))
    });
    let got = match made {
        Ok(got) => got,
        Err(e) if e.raw_os_error() == Some(libc::EACCES) || e.raw_os_error() == Some(libc::EPERM) => {
            return Err(KindError::Refused(format!(
                "re-creating {what}: {e}; choosing its id needs CAP_CHECKPOINT_RESTORE: run ckptd as root, or start it with that capability"
            )))
        }
        Err(e) => return Err(KindError::recreate(what)(e)),
    };
    if got != id {
        let _ = kind.remove(got);
        return Err(KindError::Recreate {
            what,
            source: std::io::Error::other(format!(
                "the kernel gave id {got}; another object was made at the same time, try again"
            )),
        });
    }
    Ok(())
}

/// Reads whether the process `pid` lives (not a zombie); its command for messages.
fn live(pid: i32) -> Option<String> {
    // ckptd itself: it sent a restored queue's messages and set a restored set's values.
    // SAFETY: getpid has no preconditions.
    if pid <= 0 || pid == unsafe { libc::getpid() } {
        return None;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let state = stat.rsplit_once(") ")?.1.chars().next()?;
    if state == 'Z' || state == 'X' {
        return None;
    }
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    Some(format!("process {pid} ({})", comm.trim()))
}

/// One host's SysV objects as a checkpoint records them.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Objects {
    pub shm: Vec<shm::Record>,
    pub sem: Vec<sem::Record>,
    pub msg: Vec<msg::Record>,
}

impl Objects {
    pub fn is_empty(&self) -> bool {
        self.shm.is_empty() && self.sem.is_empty() && self.msg.is_empty()
    }

    /// One line per object, for `ckptctl show`.
    pub fn describe(&self) -> Vec<String> {
        let shm = self.shm.iter().map(shm::describe);
        let sem = self.sem.iter().map(sem::describe);
        shm.chain(sem).chain(self.msg.iter().map(msg::describe)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::{msg, sem, shm};

    fn root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }

    /// A queue and a set read, removed (as a killed program's objects would stay, they are
    /// replaced), and made again at the same ids with the same contents.
    #[test]
    fn queue_and_set_come_back_at_their_ids() {
        if !root() {
            eprintln!("SKIPPED: choosing ids needs root");
            return;
        }
        let key = 0x5d00_0000 | (std::process::id() as i32 & 0xffff);
        // SAFETY: plain calls on objects this test makes.
        let (q, s) = unsafe {
            let q = libc::msgget(key, libc::IPC_CREAT | libc::IPC_EXCL | 0o640);
            let s = libc::semget(key, 3, libc::IPC_CREAT | libc::IPC_EXCL | 0o600);
            assert!(q >= 0 && s >= 0);
            for (t, text) in [(2i64, &b"two"[..]), (1, b"one!"), (2, b"")] {
                let mut buf = t.to_ne_bytes().to_vec();
                buf.extend_from_slice(text);
                assert_eq!(libc::msgsnd(q, buf.as_ptr().cast(), text.len(), 0), 0);
            }
            let mut v = [3u16, 0, 32767];
            assert_eq!(libc::semctl(s, 0, libc::SETALL, v.as_mut_ptr()), 0);
            (q, s)
        };
        let mrec = msg::capture(q).unwrap();
        let srec = sem::capture(s).unwrap();
        assert_eq!(srec.values, [3, 0, 32767]);
        let types: Vec<i64> = mrec.messages.iter().map(|m| m.mtype).collect();
        assert_eq!(types, [2, 1, 2]);
        // The old ones are there and unused: replaced.
        let (ms, ss) = (msg::check(&mrec).unwrap(), sem::check(&srec).unwrap());
        msg::recreate(&mrec, &ms).unwrap();
        sem::recreate(&srec, &ss).unwrap();
        let (m2, s2) = (msg::capture(q).unwrap(), sem::capture(s).unwrap());
        assert_eq!(s2.values, srec.values);
        assert_eq!((m2.perm, s2.perm), (mrec.perm, srec.perm));
        let texts: Vec<&[u8]> = m2.messages.iter().map(|m| &m.data[..]).collect();
        assert_eq!(texts, [&b"two"[..], b"one!", b""]);
        // SAFETY: removing this test's objects.
        unsafe {
            libc::msgctl(q, libc::IPC_RMID, std::ptr::null_mut());
            libc::semctl(s, 0, libc::IPC_RMID);
        }
    }

    /// A segment someone is attached to refuses; once detached it is replaced, contents kept.
    #[test]
    fn attached_segment_refuses_then_comes_back() {
        if !root() {
            eprintln!("SKIPPED: choosing ids needs root");
            return;
        }
        let key = 0x5e00_0000 | (std::process::id() as i32 & 0xffff);
        // SAFETY: plain calls on a segment this test makes.
        let id = unsafe { libc::shmget(key, 3 * 4096 + 10, libc::IPC_CREAT | libc::IPC_EXCL | 0o600) };
        assert!(id >= 0);
        let (rec, mem) = shm::capture(id).unwrap();
        assert!(shm::check(&rec).err().unwrap().contains("in use by"));
        drop(mem);
        let stale = shm::check(&rec).unwrap();
        let mut made = shm::recreate(&rec, &stale).unwrap();
        made.write_at(4096, b"hello");
        assert!(shm::finish(&rec, made).unwrap().is_none());
        let (again, mem) = shm::capture(id).unwrap();
        assert_eq!((again.size, again.perm), (rec.size, rec.perm));
        assert_eq!(&mem.bytes()[4096..4101], b"hello");
        assert_eq!(mem.data_ranges(id), [(4096, 4096)]);
        drop(mem);
        // SAFETY: removing this test's segment.
        unsafe { libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()) };
    }
}
