//! Opening a file again through its `/proc/…/fd/N` link: a new open file description of the
//! same inode (even once unlinked), so that kinds can read a parked program's file without
//! moving its offset or flags, and hand several descriptions of one re-created inode.

use std::collections::HashMap;
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// A new description of the file behind fd `fd` of process `pid` (close-on-exec).
pub fn of_process(pid: i32, fd: RawFd, flags: i32) -> std::io::Result<OwnedFd> {
    open(&format!("/proc/{pid}/fd/{fd}"), flags)
}

/// A new description of the file behind our own fd `fd` (close-on-exec).
pub fn of_own(fd: RawFd, flags: i32) -> std::io::Result<OwnedFd> {
    open(&format!("/proc/self/fd/{fd}"), flags)
}

pub fn open(path: &str, flags: i32) -> std::io::Result<OwnedFd> {
    let c = CString::new(path).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: open with a valid C string; returns a new fd or -1.
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC | libc::O_NOCTTY, 0o600) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the fd was just opened and is ours.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Makes an object under the first free name of `names` (`create` fails with EEXIST on a
/// taken one) and unlinks it at once: a file or queue that must come back without a name.
pub fn create_unlinked(
    names: impl IntoIterator<Item = String>,
    create: impl Fn(&str) -> std::io::Result<OwnedFd>,
    unlink: impl Fn(&str) -> std::io::Result<()>,
) -> std::io::Result<OwnedFd> {
    let mut last = std::io::Error::from(std::io::ErrorKind::AlreadyExists);
    for name in names {
        match create(&name) {
            Ok(made) => {
                unlink(&name)?;
                return Ok(made);
            }
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => last = e,
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

/// Names of ckptd's own to fall back on when an old name is taken: `{prefix}{pid}-{n}`.
pub fn spare_names(prefix: &str) -> impl Iterator<Item = String> + '_ {
    (0..100).map(move |n| format!("{prefix}{}-{n}", std::process::id()))
}

/// `fchown` + `fchmod`, so that a re-created file has the owner and permission bits it had
/// (the umask of ckptd does not apply).
pub fn set_owner_mode(fd: RawFd, uid: u32, gid: u32, mode: u32) -> std::io::Result<()> {
    // SAFETY: fchown/fchmod on an fd we hold.
    if unsafe { libc::fchown(fd, uid, gid) } < 0 || unsafe { libc::fchmod(fd, mode & 0o7777) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The last OS error as an `io::Error`, when a libc call returned -1.
pub fn check(ret: i64) -> std::io::Result<i64> {
    if ret < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Files a restore makes once per inode (by (device, inode) at the checkpoint), however many
/// descriptions of them there were: each holder gets a description of its own.
#[derive(Default)]
pub struct Inodes {
    files: HashMap<(u64, u64), OwnedFd>,
}

impl Inodes {
    /// A new description of the file of `key` (made with `make` the first time), with the
    /// access mode `access`, at `pos` (the offset belongs to the description).
    pub fn description(
        &mut self,
        key: (u64, u64),
        access: i32,
        pos: u64,
        make: impl FnOnce() -> std::io::Result<OwnedFd>,
    ) -> std::io::Result<OwnedFd> {
        let file = match self.files.entry(key) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(make()?),
        };
        let fd = of_own(file.as_raw_fd(), access)?;
        // SAFETY: lseek on the description just opened.
        check(unsafe { libc::lseek(fd.as_raw_fd(), pos as i64, libc::SEEK_SET) })?;
        Ok(fd)
    }
}
