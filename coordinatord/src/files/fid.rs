//! File handles as fanotify reports them: a file system's id, then the handle's type and
//! bytes. The file watch ([`super::proof`]) and the directory watch ([`super::dirs`]) key
//! files and directories by them, and compare what an event named with what a path holds now.
//! Both make their groups with [`group`], and read them with [`serve`] and [`parse`].

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// The key of a handle: fsid (8 bytes), handle type, handle bytes.
pub fn key(fsid: &[u8], handle_type: i32, handle: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(fsid.len() + 4 + handle.len());
    k.extend_from_slice(fsid);
    k.extend_from_slice(&handle_type.to_ne_bytes());
    k.extend_from_slice(handle);
    k
}

/// The fsid half of a key.
pub fn fsid_of(key: &[u8]) -> Option<[u8; 8]> {
    key.get(..8)?.try_into().ok()
}

const AT_HANDLE_FID: i32 = 0x200;
const MAX_HANDLE_SZ: usize = 128;

/// The file system id of the file behind `fd`.
pub fn fsid(fd: BorrowedFd<'_>) -> std::io::Result<[u8; 8]> {
    // SAFETY: a zeroed statfs is a valid out-buffer.
    let mut sfs: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: sfs is a valid out-pointer.
    if unsafe { libc::fstatfs(fd.as_raw_fd(), &mut sfs) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: f_fsid is two plain ints.
    Ok(unsafe { std::mem::transmute::<libc::fsid_t, [u8; 8]>(sfs.f_fsid) })
}

/// The key fanotify reports the file behind `fd` by.
pub fn key_of(fd: BorrowedFd<'_>) -> std::io::Result<Vec<u8>> {
    let fsid = fsid(fd)?;
    // struct file_handle: u32 bytes, i32 type, then the handle.
    let mut buf = [0u8; 8 + MAX_HANDLE_SZ];
    let mut mount_id = 0;
    let empty = c"";
    let mut get = |flags: i32| {
        buf[..4].copy_from_slice(&(MAX_HANDLE_SZ as u32).to_ne_bytes());
        // SAFETY: buf is a file_handle with room for MAX_HANDLE_SZ bytes.
        unsafe {
            libc::name_to_handle_at(
                fd.as_raw_fd(),
                empty.as_ptr(),
                buf.as_mut_ptr().cast(),
                &mut mount_id,
                libc::AT_EMPTY_PATH | flags,
            )
        }
    };
    // The identifying handle is what fanotify reports; older kernels know only the other.
    if get(AT_HANDLE_FID) != 0 && get(0) != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let n = (u32::from_ne_bytes(buf[..4].try_into().unwrap_or_default()) as usize).min(MAX_HANDLE_SZ);
    let ty = i32::from_ne_bytes(buf[4..8].try_into().unwrap_or_default());
    Ok(key(&fsid, ty, &buf[8..8 + n]))
}

/// What `path` names now (not following a last symlink), by key; `None` when nothing is there.
pub fn key_at(path: &std::path::Path) -> std::io::Result<Option<Vec<u8>>> {
    let c = cstr(path)?;
    // SAFETY: a NUL-terminated path; O_PATH opens nothing's content.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC) };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENOENT) => Ok(None),
            _ => Err(e),
        };
    }
    // SAFETY: a fresh fd that we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    use std::os::fd::AsFd;
    key_of(fd.as_fd()).map(Some)
}

/// The path of the directory a key names, found through `mount` (any fd on its file system;
/// needs CAP_DAC_READ_SEARCH); `None` when it is gone.
pub fn dir_path(mount: BorrowedFd<'_>, key: &[u8]) -> Option<std::path::PathBuf> {
    let ty = i32::from_ne_bytes(key.get(8..12)?.try_into().ok()?);
    let handle = key.get(12..)?;
    if handle.len() > MAX_HANDLE_SZ {
        return None;
    }
    let mut buf = vec![0u8; 8 + handle.len()];
    buf[..4].copy_from_slice(&(handle.len() as u32).to_ne_bytes());
    buf[4..8].copy_from_slice(&ty.to_ne_bytes());
    buf[8..].copy_from_slice(handle);
    // SAFETY: buf is a complete struct file_handle.
    let fd = unsafe {
        libc::open_by_handle_at(
            mount.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return None;
    }
    // SAFETY: a fresh fd that we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let p = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).ok()?;
    // A removed directory reads "/path (deleted)"; one outside this mount, not as a path.
    let s = p.to_str()?;
    (s.starts_with('/') && !s.ends_with(" (deleted)")).then_some(p)
}

pub fn cstr(p: &std::path::Path) -> std::io::Result<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(std::io::Error::other)
}

/// A fanotify notification group with `flags` (close-on-exec, non-blocking and
/// notification-only always), its events opened read-only.
pub fn group(flags: u32) -> std::io::Result<OwnedFd> {
    let flags = flags | libc::FAN_CLASS_NOTIF | libc::FAN_CLOEXEC | libc::FAN_NONBLOCK;
    // SAFETY: fanotify_init with integer arguments.
    let fd = unsafe { libc::fanotify_init(flags, libc::O_RDONLY as u32) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fanotify_init returned a fresh fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Runs on a watch's reader thread for ever: waits for the group `fd` to have events, then
/// calls `drain` (which reads them with [`read_all`]).
pub fn serve(fd: BorrowedFd<'_>, drain: impl Fn()) -> ! {
    loop {
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: pfd is a valid pollfd.
        if unsafe { libc::poll(&mut pfd, 1, -1) } < 0 {
            std::thread::sleep(std::time::Duration::from_millis(10));
            continue;
        }
        drain();
    }
}

/// Reads every event queued on the group `fd`, a buffer at a time, into `f`.
pub fn read_all(fd: BorrowedFd<'_>, mut f: impl FnMut(&[u8])) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        // SAFETY: reading into a buffer we own.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            return;
        }
        f(&buf[..n as usize]);
    }
}

/// One event as read from a fanotify group: its mask, the pid that caused it, its info
/// records.
pub struct Event<'a> {
    pub mask: u64,
    pub pid: i32,
    pub info: &'a [u8],
}

/// The events in a buffer `read` from the fanotify group.
pub fn parse(mut buf: &[u8]) -> Vec<Event<'_>> {
    const META: usize = std::mem::size_of::<libc::fanotify_event_metadata>();
    let mut out = Vec::new();
    while buf.len() >= META {
        let u32_at = |o: usize| u32::from_ne_bytes(buf[o..o + 4].try_into().unwrap_or_default());
        let len = (u32_at(0) as usize).clamp(META, buf.len());
        let meta_len = (u32_at(4) >> 16) as usize;
        let mask = u64::from_ne_bytes(buf[8..16].try_into().unwrap_or_default());
        let pid = u32_at(20) as i32;
        let info = &buf[meta_len.min(len)..len];
        buf = &buf[len..];
        out.push(Event { mask, pid, info });
    }
    out
}
