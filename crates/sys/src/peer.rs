//! Who is at the other end of ckptd's socket. A program hands the ckptd it registers with its
//! dirty-page tracker and lets it trace its threads; ckpt-run and the interposer therefore only
//! talk to a ckptd of their own user or of root, and a ckptd run by an ordinary user takes only
//! that user's programs.

use std::os::fd::{AsRawFd, BorrowedFd};

/// The calling process's effective uid.
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

/// The uid of the process at the other end of the Unix socket `fd`.
pub fn peer_uid(fd: BorrowedFd<'_>) -> Option<u32> {
    peer(fd).map(|c| c.uid)
}

/// The pid, uid and gid of the process at the other end of the Unix socket `fd`.
pub fn peer(fd: BorrowedFd<'_>) -> Option<libc::ucred> {
    let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: cred and len are valid out-pointers of the right size.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    (r == 0).then_some(cred)
}

/// Whether a ckptd running as `uid` may be given this process's programs: its own user's, or
/// root's.
pub fn trusted_daemon(uid: u32) -> bool {
    uid == 0 || uid == euid()
}
