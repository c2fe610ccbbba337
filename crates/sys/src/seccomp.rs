//! Reading a thread's seccomp filters from outside: `PTRACE_SECCOMP_GET_FILTER` and
//! `PTRACE_SECCOMP_GET_METADATA` on a thread the caller has attached and stopped. Both need
//! `CAP_SYS_ADMIN` and a caller that does not itself run under seccomp.

/// `PTRACE_SECCOMP_GET_FILTER`.
const GET_FILTER: libc::c_uint = 0x420c;
/// `PTRACE_SECCOMP_GET_METADATA`.
const GET_METADATA: libc::c_uint = 0x420d;

/// Filter `index` of stopped thread `tid` (0 is the oldest, the one installed first): its
/// `struct sock_filter` instructions as bytes; `None` past the newest.
pub fn filter(tid: i32, index: u64) -> std::io::Result<Option<Vec<u8>>> {
    // SAFETY: with a null buffer the request only returns the program's length.
    let len = unsafe { libc::ptrace(GET_FILTER, tid, index as *mut libc::c_void, std::ptr::null_mut::<u8>()) };
    if len < 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENOENT) => Ok(None),
            _ => Err(e),
        };
    }
    let mut buf = vec![0u8; len as usize * 8];
    // SAFETY: the buffer holds `len` instructions of 8 bytes, what the request writes (the
    // thread is stopped: its filters cannot change in between).
    let got = unsafe { libc::ptrace(GET_FILTER, tid, index as *mut libc::c_void, buf.as_mut_ptr()) };
    if got < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if got != len {
        return Err(std::io::Error::other(format!(
            "filter {index} of thread {tid} changed length while it was read"
        )));
    }
    Ok(Some(buf))
}

/// The flags the kernel keeps of filter `index` of stopped thread `tid`
/// (`SECCOMP_FILTER_FLAG_LOG`).
pub fn filter_flags(tid: i32, index: u64) -> std::io::Result<u32> {
    // `struct seccomp_metadata`: filter_off in, flags out.
    let mut md: [u64; 2] = [index, 0];
    // SAFETY: the kernel reads and writes at most `size` (16) bytes of `md`.
    let r = unsafe { libc::ptrace(GET_METADATA, tid, 16usize as *mut libc::c_void, md.as_mut_ptr()) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(md[1] as u32)
}

/// Why reading filters failed with `e`, for a message: the requirement the caller misses.
pub fn why(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::EACCES) => {
            format!("{e}: PTRACE_SECCOMP_GET_FILTER needs CAP_SYS_ADMIN and a reader that does not run under seccomp itself")
        }
        Some(libc::EIO | libc::EINVAL) => {
            format!("{e}: this kernel cannot show seccomp filters (it needs CONFIG_CHECKPOINT_RESTORE)")
        }
        Some(libc::EMEDIUMTYPE) => format!("{e}: the filter is not a classic BPF program"),
        _ => e.to_string(),
    }
}

/// The seccomp mode (`Seccomp:` of /proc/thread-self/status: 0 none, 1 strict, 2 filters)
/// of the calling thread.
pub fn own_mode() -> u32 {
    std::fs::read_to_string("/proc/thread-self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Seccomp:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}
