//! What the kernel here, and the privileges of the caller, let ckpt do (`ckptctl check`, like
//! `criu check`). Each probe asks the kernel for the very thing ckpt uses, on objects of its
//! own (never another process), and says what depends on it.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// One feature: whether it works here, what the kernel said, and what ckpt uses it for.
#[derive(Debug, Clone)]
pub struct Feature {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
    pub used_for: &'static str,
}

fn feature(name: &'static str, used_for: &'static str, r: Result<String, String>) -> Feature {
    let (ok, detail) = match r {
        Ok(d) => (true, d),
        Err(d) => (false, d),
    };
    Feature {
        name,
        ok,
        detail,
        used_for,
    }
}

fn os_err(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

/// Every probe, in the order ckpt meets them (checkpoint, then restore).
pub fn all() -> Vec<Feature> {
    vec![
        feature(
            "userfaultfd write-protect (async)",
            "dirty-page tracking: incremental checkpoints and short stops",
            uffd_async_wp(),
        ),
        feature(
            "PAGEMAP_SCAN",
            "reading the written pages without stopping the program long",
            pagemap_scan(),
        ),
        feature(
            "pidfd_getfd",
            "reading fds of a parked process (queues, sockets, timers)",
            pidfd_getfd(),
        ),
        feature("kcmp", "telling which fds share one open file description", kcmp()),
        feature(
            "/proc/PID/map_files",
            "reading shared mappings of deleted files and memfds",
            map_files(),
        ),
        feature(
            "SysV MSG_COPY",
            "reading SysV message queues without taking the messages",
            msg_copy(),
        ),
        feature(
            "PTRACE_SECCOMP_GET_FILTER",
            "reading the seccomp filters of threads that run under some (restored with them)",
            seccomp_get_filter(),
        ),
        feature(
            "fanotify writer pids",
            "proving who wrote a log since the checkpoint (cut back at restore)",
            fanotify_pids(),
        ),
        feature(
            "pid and tid restore (clone3 set_tid)",
            "restoring processes and threads with their pids",
            set_tid(),
        ),
        feature(
            "PR_SET_MM_MAP",
            "giving the restored process its memory layout and /proc/PID/exe",
            mm_map(),
        ),
        feature(
            "AIO ring move (io_setup, mremap)",
            "restoring AIO contexts (io_setup) with their ids, which are their rings' addresses",
            aio_ring_move(),
        ),
        feature(
            "PR_TIMER_CREATE_RESTORE_IDS",
            "restoring POSIX timers with their ids",
            timer_ids(),
        ),
        feature("TIOCSTI", "putting back bytes typed into a pseudo-terminal", tiocsti()),
        feature(
            "sched_getattr",
            "restoring scheduling policies and priorities",
            sched_getattr(),
        ),
    ]
}

fn uffd_async_wp() -> Result<String, String> {
    let wanted = crate::uffd::FEATURE_WP_ASYNC | crate::uffd::FEATURE_WP_UNPOPULATED;
    match crate::uffd::open(0, wanted) {
        Ok(_) => Ok("available".into()),
        Err(e) => match crate::uffd::open(crate::uffd::USER_MODE_ONLY, wanted) {
            Ok(_) => Ok(format!("user-mode faults only ({e} without UFFD_USER_MODE_ONLY)")),
            Err(e) => Err(format!("userfaultfd with WP_ASYNC: {e}")),
        },
    }
}

fn pagemap_scan() -> Result<String, String> {
    let f = std::fs::File::open("/proc/self/pagemap").map_err(|e| format!("/proc/self/pagemap: {e}"))?;
    let page = vec![0u8; 4096];
    let start = page.as_ptr() as u64 & !4095;
    crate::pagemap::populated(&f, start, start + 4096)
        .map(|_| "available".to_string())
        .map_err(|e| format!("PAGEMAP_SCAN: {e}"))
}

fn pidfd_getfd() -> Result<String, String> {
    // SAFETY: pidfd_open of our own pid; returns a new fd or -1.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, libc::getpid(), 0) } as i32;
    if pidfd < 0 {
        return Err(os_err("pidfd_open"));
    }
    // SAFETY: the fd was just created and is owned here.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    // SAFETY: pidfd_getfd of our own pidfd; returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), pidfd.as_raw_fd(), 0) } as i32;
    if fd < 0 {
        return Err(os_err("pidfd_getfd"));
    }
    // SAFETY: the duplicate is ours.
    drop(unsafe { OwnedFd::from_raw_fd(fd) });
    Ok("available".into())
}

fn kcmp() -> Result<String, String> {
    let f = std::fs::File::open("/dev/null").map_err(|e| e.to_string())?;
    let fd = f.as_raw_fd();
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    // SAFETY: kcmp compares one of our own fds with itself (KCMP_FILE = 0).
    let r = unsafe { libc::syscall(libc::SYS_kcmp, pid, pid, 0, fd, fd) };
    if r < 0 {
        return Err(os_err("kcmp"));
    }
    Ok("available".into())
}

fn map_files() -> Result<String, String> {
    let maps = std::fs::read_to_string("/proc/self/maps").map_err(|e| e.to_string())?;
    let range = maps
        .lines()
        .find(|l| l.contains('/'))
        .and_then(|l| l.split_whitespace().next())
        .ok_or("no mapped file to try")?;
    std::fs::File::open(format!("/proc/self/map_files/{range}"))
        .map(|_| "readable".to_string())
        .map_err(|e| format!("/proc/self/map_files: {e} (needs CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN)"))
}

fn msg_copy() -> Result<String, String> {
    // SAFETY: a private queue of our own, removed below.
    let q = unsafe { libc::msgget(libc::IPC_PRIVATE, libc::IPC_CREAT | 0o600) };
    if q < 0 {
        return Err(os_err("msgget"));
    }
    let mut buf = [0u8; 64];
    // SAFETY: msgrcv into a local buffer; MSG_COPY of message 0 of an empty queue.
    let r = unsafe {
        libc::msgrcv(
            q,
            buf.as_mut_ptr().cast(),
            56,
            0,
            libc::IPC_NOWAIT | 0o40000, /* MSG_COPY */
        )
    };
    let e = std::io::Error::last_os_error();
    // SAFETY: removing the queue made above.
    unsafe { libc::msgctl(q, libc::IPC_RMID, std::ptr::null_mut()) };
    // An empty queue answers ENOMSG when MSG_COPY is known, ENOSYS/EINVAL when not.
    match (r, e.raw_os_error()) {
        (_, Some(libc::ENOMSG)) => Ok("available".into()),
        _ => Err(format!("msgrcv(MSG_COPY): {e} (needs CONFIG_CHECKPOINT_RESTORE)")),
    }
}

fn fanotify_pids() -> Result<String, String> {
    // SAFETY: fanotify_init with constant flags; returns a new fd or -1.
    let fd = unsafe {
        libc::fanotify_init(
            libc::FAN_CLASS_NOTIF | libc::FAN_CLOEXEC | libc::FAN_REPORT_FID,
            libc::O_RDONLY as u32,
        )
    };
    if fd < 0 {
        return Err(os_err("fanotify_init"));
    }
    // SAFETY: the fd was just created.
    drop(unsafe { OwnedFd::from_raw_fd(fd) });
    if crate::caps::effective(crate::caps::CAP_SYS_ADMIN) {
        Ok("available".into())
    } else {
        Err("fanotify works but reports no writer pids without CAP_SYS_ADMIN: logs are never cut back".into())
    }
}

fn set_tid() -> Result<String, String> {
    use crate::caps::{effective, CAP_CHECKPOINT_RESTORE, CAP_SYS_ADMIN};
    if !std::path::Path::new("/proc/sys/kernel/ns_last_pid").exists() {
        return Err("/proc/sys/kernel/ns_last_pid is missing (needs CONFIG_CHECKPOINT_RESTORE)".into());
    }
    if effective(CAP_CHECKPOINT_RESTORE) || effective(CAP_SYS_ADMIN) {
        Ok("allowed".into())
    } else {
        Err("needs CAP_CHECKPOINT_RESTORE (or root): restore refuses".into())
    }
}

fn mm_map() -> Result<String, String> {
    let mut size: u32 = 0;
    // SAFETY: PR_SET_MM_MAP_SIZE only writes the structure's size into `size`.
    let r = unsafe { libc::prctl(libc::PR_SET_MM, libc::PR_SET_MM_MAP_SIZE, &mut size as *mut u32, 0, 0) };
    if r < 0 {
        return Err(os_err("prctl(PR_SET_MM, PR_SET_MM_MAP_SIZE)"));
    }
    Ok(format!("available ({size}-byte map)"))
}

/// A context made here, its ring moved elsewhere: the kernel must take the new place as its id.
fn aio_ring_move() -> Result<String, String> {
    let mut ctx = 0u64;
    // SAFETY: io_setup writes the new context's id into `ctx`.
    if unsafe { libc::syscall(libc::SYS_io_setup, 1u32, &mut ctx as *mut u64) } != 0 {
        return Err(os_err("io_setup"));
    }
    // SAFETY: the ring's header, mapped by the kernel at the id: its size in events is word 1.
    let nr = unsafe { ((ctx + 4) as *const u32).read_volatile() } as usize;
    let len = (32 + 32 * nr).div_ceil(4096) * 4096;
    // SAFETY: a fresh reservation, replaced below by the ring.
    let to = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    let moved = if to == libc::MAP_FAILED {
        Err(os_err("mmap"))
    } else {
        let flags = libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED;
        // SAFETY: moving the ring made above, whole, onto our own reservation.
        let p = unsafe { libc::mremap(ctx as *mut libc::c_void, len, len, flags, to) };
        if p == libc::MAP_FAILED {
            // SAFETY: the reservation is ours.
            unsafe { libc::munmap(to, len) };
            Err(os_err("mremap of an AIO ring"))
        } else {
            ctx = to as u64;
            Ok(())
        }
    };
    // An io_submit of no request only looks the context up.
    // SAFETY: integer arguments only.
    let found = moved.and_then(
        |()| match unsafe { libc::syscall(libc::SYS_io_submit, ctx, 0i64, 0usize) } {
            0 => Ok("available".to_string()),
            _ => Err(os_err("io_submit at the ring's new place")),
        },
    );
    // SAFETY: destroying the context made above (its ring goes with it).
    unsafe { libc::syscall(libc::SYS_io_destroy, ctx) };
    found
}

fn timer_ids() -> Result<String, String> {
    const PR_TIMER_CREATE_RESTORE_IDS: libc::c_int = 77;
    const GET: libc::c_ulong = 2;
    // SAFETY: prctl with integer arguments only; GET only reads the mode.
    let r = unsafe { libc::prctl(PR_TIMER_CREATE_RESTORE_IDS, GET, 0, 0, 0) };
    if r < 0 {
        return Err(os_err("prctl(PR_TIMER_CREATE_RESTORE_IDS) (Linux 6.15)"));
    }
    Ok("available".into())
}

fn tiocsti() -> Result<String, String> {
    let legacy = std::fs::read_to_string("/proc/sys/dev/tty/legacy_tiocsti").unwrap_or_default();
    if crate::caps::effective(crate::caps::CAP_SYS_ADMIN) {
        Ok("allowed (CAP_SYS_ADMIN)".into())
    } else if legacy.trim() == "1" {
        Ok("allowed (dev.tty.legacy_tiocsti = 1)".into())
    } else {
        Err("needs CAP_SYS_ADMIN: a pty with bytes waiting is refused at checkpoint".into())
    }
}

fn sched_getattr() -> Result<String, String> {
    let mut raw = [0u8; 56];
    // SAFETY: sched_getattr writes at most 56 bytes into the buffer.
    let r = unsafe { libc::syscall(libc::SYS_sched_getattr, 0, raw.as_mut_ptr(), 56u32, 0u32) };
    if r < 0 {
        return Err(os_err("sched_getattr"));
    }
    Ok("available".into())
}

fn seccomp_get_filter() -> Result<String, String> {
    // A child of our own under an allow-everything filter, read as ckptd reads a parked thread.
    let mut pipe = [0i32; 2];
    // SAFETY: pipe2 writes two fds into the array.
    if unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(os_err("pipe2"));
    }
    // SAFETY: both fds were just created and are owned here.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(pipe[0]), OwnedFd::from_raw_fd(pipe[1])) };
    // SAFETY: the child makes raw system calls only, then ends with _exit.
    let child = unsafe { libc::fork() };
    if child < 0 {
        return Err(os_err("fork"));
    }
    if child == 0 {
        // struct sock_filter { code, jt, jf, k }: ret SECCOMP_RET_ALLOW.
        let allow: [u8; 8] = [0x06, 0, 0, 0, 0, 0, 0xff, 0x7f];
        let prog: [u64; 2] = [1, allow.as_ptr() as u64];
        // SAFETY: prctl and seccomp read `prog` and `allow`, which live until _exit; write
        // and pause take a local byte or nothing.
        unsafe {
            libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
            let ok = libc::syscall(
                libc::SYS_seccomp,
                1, /* SECCOMP_SET_MODE_FILTER */
                0,
                prog.as_ptr(),
            ) == 0;
            let b = ok as u8;
            libc::write(wr.as_raw_fd(), (&b as *const u8).cast(), 1);
            loop {
                libc::pause();
            }
        }
    }
    drop(wr);
    let r = read_child_filter(child, rd.as_raw_fd());
    // SAFETY: ending and reaping our own child.
    unsafe {
        libc::kill(child, libc::SIGKILL);
        libc::waitpid(child, std::ptr::null_mut(), libc::__WALL);
    }
    r
}

fn read_child_filter(child: libc::pid_t, ready: i32) -> Result<String, String> {
    let mut b = 0u8;
    // SAFETY: reads one byte into a local.
    if unsafe { libc::read(ready, (&mut b as *mut u8).cast(), 1) } != 1 || b != 1 {
        return Err("a child could not install a seccomp filter".into());
    }
    // SAFETY: SEIZE and INTERRUPT of our own child take no memory; waitpid writes a local.
    unsafe {
        if libc::ptrace(libc::PTRACE_SEIZE, child, 0, 0) < 0 {
            return Err(os_err("PTRACE_SEIZE"));
        }
        if libc::ptrace(libc::PTRACE_INTERRUPT, child, 0, 0) < 0 {
            return Err(os_err("PTRACE_INTERRUPT"));
        }
        let mut st = 0;
        if libc::waitpid(child, &mut st, libc::__WALL) < 0 {
            return Err(os_err("waitpid"));
        }
    }
    match crate::seccomp::filter(child, 0) {
        Ok(Some(p)) if p.len() == 8 => Ok("available".into()),
        Ok(_) => Err("PTRACE_SECCOMP_GET_FILTER gave another filter than the child's".into()),
        Err(e) => Err(format!(
            "{}: a thread under a seccomp filter is refused at checkpoint",
            crate::seccomp::why(&e)
        )),
    }
}
