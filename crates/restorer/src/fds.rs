//! Putting the program's file descriptors back at their numbers, and opening what the blob
//! needs (page stores, mapped files) at numbers above them.

use anyhow::{bail, Context};
use ckpt_format::{FdImage, FdKind, FileId, FilePolicy, MappingKind, PageStoreReader, ProcessImage};
use std::collections::HashMap;
use std::ffi::CString;
use std::os::fd::{AsRawFd, IntoRawFd, RawFd};
use std::os::unix::fs::{FileExt, MetadataExt};

/// Moves `fd` to the lowest free number >= `base`, close-on-exec.
pub fn lift(fd: RawFd, base: RawFd) -> anyhow::Result<RawFd> {
    // SAFETY: plain fcntl/close on fds we own.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, base) };
    if new < 0 {
        return Err(std::io::Error::last_os_error()).context("moving a working fd");
    }
    // SAFETY: fd is ours and replaced by `new`.
    unsafe { libc::close(fd) };
    Ok(new)
}

fn open(path: &str, flags: i32) -> anyhow::Result<RawFd> {
    let c = CString::new(path)?;
    // SAFETY: a NUL-terminated path.
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("cannot reopen {path}"));
    }
    Ok(fd)
}

/// Receives the sockets ckptd re-created for the program: fd number in the program → fd here,
/// each moved to `base` or above.
pub fn receive_sockets(control: RawFd, base: RawFd) -> anyhow::Result<HashMap<i32, RawFd>> {
    // SAFETY: borrowing the control fd for the duration of this call.
    let s = std::mem::ManuallyDrop::new(unsafe {
        <std::os::unix::net::UnixStream as std::os::fd::FromRawFd>::from_raw_fd(control)
    });
    s.set_read_timeout(Some(std::time::Duration::from_secs(60)))?;
    let mut out = HashMap::new();
    loop {
        let (msg, fds): (ckpt_proto::SocketFds, _) = ckpt_proto::recv(&s).context("receiving sockets from ckptd")?;
        if msg.numbers.len() != fds.len() {
            bail!("ckptd sent {} socket numbers with {} fds", msg.numbers.len(), fds.len());
        }
        for (n, fd) in msg.numbers.into_iter().zip(fds) {
            out.insert(n, lift(fd.into_raw_fd(), base)?);
        }
        if msg.last {
            break;
        }
    }
    s.set_read_timeout(None)?;
    Ok(out)
}

/// Puts every fd of the image at its number. `sockets` are the re-created sockets by number.
/// `tracker`: the dirty-page tracker made for the program, placed at the number its image
/// recorded for the interposer's (else a placeholder goes there).
pub fn place_fds(
    img: &ProcessImage,
    control: RawFd,
    sockets: &HashMap<i32, RawFd>,
    tracker: Option<RawFd>,
) -> anyhow::Result<()> {
    let wanted: Vec<i32> = img.fds.iter().map(|f| f.fd).collect();
    for f in &img.fds {
        let src = match &f.kind {
            FdKind::Stdio { .. } => continue,
            // ckptd hands a stdio pipe or socket end only when its other end is restored too;
            // without one, each of fd 0-2 keeps the stdio this restorer was started with (the
            // `ckptctl restore`'s), even when it shared one socket with another of them.
            k if k.is_stdio_end() && f.fd <= 2 && !sockets.contains_key(&f.dup_of.unwrap_or(f.fd)) => continue,
            FdKind::Control => control,
            FdKind::Uffd => match tracker {
                Some(t) => t,
                // A placeholder: the restored interposer makes a new tracker at this number.
                None => open("/dev/null", libc::O_RDWR)?,
            },
            // ckptd checked and put back the files before starting us; a log's fd goes to its
            // end (never inside what others wrote since), any other to its offset.
            // A description other processes share: ckptd opened it, at its offset.
            FdKind::File { .. } | FdKind::Dir { .. } if f.dup_of.is_none() && sockets.contains_key(&f.fd) => {
                sockets[&f.fd]
            }
            FdKind::File { path, pos, policy, .. } => reopen(f, path)?
                .inspect(|&fd| {
                    let (off, whence) = match policy {
                        Some(FilePolicy::Append) => (0, libc::SEEK_END),
                        _ => (*pos as i64, libc::SEEK_SET),
                    };
                    // SAFETY: lseek on the fd just opened.
                    unsafe { libc::lseek(fd, off, whence) };
                })
                .unwrap_or(-1),
            FdKind::Dir { path } => reopen(f, path)?.unwrap_or(-1),
            FdKind::CharDev { path, .. } | FdKind::Tty { path } => reopen(f, path)?.unwrap_or(-1),
            FdKind::TcpListen { .. }
            | FdKind::TcpConn { .. }
            | FdKind::TcpSocket { .. }
            | FdKind::Udp { .. }
            | FdKind::Pipe { .. }
            | FdKind::Object { .. }
                if f.dup_of.is_some() =>
            {
                -1
            }
            FdKind::TcpListen { .. }
            | FdKind::TcpConn { .. }
            | FdKind::TcpSocket { .. }
            | FdKind::Udp { .. }
            | FdKind::Pipe { .. }
            | FdKind::Object { .. } => {
                match sockets.get(&f.fd) {
                    Some(&s) => {
                        // The program's file flags (O_NONBLOCK…) on the new socket.
                        // SAFETY: F_SETFL on a socket we hold.
                        unsafe { libc::fcntl(s, libc::F_SETFL, f.flags) };
                        s
                    }
                    None => bail!("ckptd sent no socket for fd {}", f.fd),
                }
            }
        };
        let src = match f.dup_of {
            Some(other) => other,
            None => src,
        };
        let flags = if f.cloexec { libc::O_CLOEXEC } else { 0 };
        // SAFETY: dup3 onto the wanted number; the source is an fd we hold.
        if src != f.fd && unsafe { libc::dup3(src, f.fd, flags) } < 0 {
            return Err(std::io::Error::last_os_error()).with_context(|| format!("cannot place fd {}", f.fd));
        }
        if src == f.fd && !f.cloexec {
            // SAFETY: clearing close-on-exec on an fd we hold.
            unsafe { libc::fcntl(src, libc::F_SETFD, 0) };
        }
        if f.dup_of.is_none() && src != f.fd && src != control {
            // SAFETY: the temporary fd is ours.
            unsafe { libc::close(src) };
        }
    }
    // Anything else below the working fds (stdio we were given but the program had closed).
    for fd in 0..3 {
        if !wanted.contains(&fd) {
            // SAFETY: closing an fd the program did not have.
            unsafe { libc::close(fd) };
        }
    }
    Ok(())
}

/// Takes the locks owned by open file descriptions (OFD, flock) again, and tests that every
/// POSIX lock can be taken (they are taken in the restorer's last steps, see `plan`): a lock
/// another program holds now fails the restore, naming it.
pub fn take_locks(img: &ProcessImage) -> anyhow::Result<()> {
    for f in img.fds.iter().filter(|f| !f.locks.is_empty()) {
        for l in &f.locks {
            let what = || format!("fd {} ({}): the {}", f.fd, f.kind.describe(), l.describe());
            if let Some(why) = ckpt_kinds::lock::conflict(f.fd, l) {
                bail!("{} cannot be taken back: {why}", what());
            }
            ckpt_kinds::lock::take(f.fd, l).map_err(|e| {
                let why = match e.raw_os_error() {
                    Some(libc::EAGAIN) => ckpt_kinds::lock::holder(f.fd, l)
                        .unwrap_or_else(|| "another program holds a conflicting one now".to_string()),
                    _ => e.to_string(),
                };
                anyhow::anyhow!("{} cannot be taken back: {why}", what())
            })?;
        }
    }
    Ok(())
}

/// What each kind of object does inside the restored process once every fd is at its number
/// (an epoll registers its targets under the program's fd numbers).
pub fn after_placed(img: &ProcessImage) -> anyhow::Result<()> {
    for f in img.fds.iter().filter(|f| f.dup_of.is_none()) {
        if let FdKind::Object { owner, obj, .. } = &f.kind {
            ckpt_kinds::after_placed(f.fd, obj, *owner).with_context(|| format!("fd {} ({})", f.fd, obj.describe()))?;
        }
    }
    Ok(())
}

/// Puts the objects that name processes (pidfds, `/proc/PID/…` files; placeholders until
/// then) at their numbers, and an fd sharing a description with one gets a duplicate of it
/// again: early, those whose process exists already; late, once every process of the restore
/// exists, zombies included, the rest (then also clearing the events the restore raised in
/// fanotify groups). Returns the fds placed.
pub fn open_named(img: &ProcessImage, when: ckpt_kinds::When, done: &[i32]) -> anyhow::Result<Vec<i32>> {
    let mut placed = Vec::new();
    for f in img.fds.iter().filter(|f| f.dup_of.is_none() && !done.contains(&f.fd)) {
        if let FdKind::Object { obj, owner, .. } = &f.kind {
            if ckpt_kinds::open_named(f.fd, obj, f.cloexec, *owner, when)
                .with_context(|| format!("fd {} ({})", f.fd, obj.describe()))?
            {
                placed.push(f.fd);
            }
        }
    }
    for f in img.fds.iter().filter(|f| f.dup_of.is_some_and(|d| placed.contains(&d))) {
        let flags = if f.cloexec { libc::O_CLOEXEC } else { 0 };
        // SAFETY: dup3 between two of the program's fds.
        if unsafe { libc::dup3(f.dup_of.unwrap_or(f.fd), f.fd, flags) } < 0 {
            return Err(std::io::Error::last_os_error()).with_context(|| format!("placing fd {}", f.fd));
        }
    }
    Ok(placed)
}

/// Enters the program's working directory. One that was removed is made again and removed:
/// the directory of an fd of the process on the same one, else one of its own.
pub fn enter_working_dir(img: &ProcessImage) -> anyhow::Result<()> {
    let Some(rec) = &img.cwd_removed else {
        return std::env::set_current_dir(&img.cwd)
            .with_context(|| format!("cannot enter the working directory {}", img.cwd));
    };
    let held = img.fds.iter().find_map(|f| match &f.kind {
        FdKind::Object {
            obj: ckpt_kinds::Object::DeletedDir(r),
            ..
        } if (r.dev, r.ino) == (rec.dev, rec.ino) => Some(f.fd),
        _ => None,
    });
    let made;
    let fd = match held {
        Some(fd) => fd,
        None => {
            made = ckpt_kinds::deleted_dir::make(rec)
                .with_context(|| format!("cannot make the removed working directory {} again", rec.path))?;
            std::os::fd::AsRawFd::as_raw_fd(&made)
        }
    };
    // SAFETY: fchdir to a directory fd we hold.
    if unsafe { libc::fchdir(fd) } < 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("cannot enter the removed working directory {}", rec.path));
    }
    Ok(())
}

fn reopen(f: &FdImage, path: &str) -> anyhow::Result<Option<RawFd>> {
    if f.dup_of.is_some() {
        return Ok(None);
    }
    let flags = f.flags & !(libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC) | libc::O_NOCTTY;
    Ok(Some(open(path, flags)?))
}

/// How a mapped file is checked: against its identity at the checkpoint, against the one ckptd
/// gave it when it put the file back (a snapshot file), or not at all (kept as it is).
pub enum MappedCheck {
    Ident {
        dev: u64,
        ino: u64,
        size: u64,
        mtime_ns: i128,
    },
    Any,
}

fn same_file(id: &FileId, meta: &std::fs::Metadata, check: Option<&MappedCheck>) -> bool {
    let mtime = meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128;
    let now = (meta.dev(), meta.ino(), meta.size(), mtime);
    match check {
        None => now == (id.dev, id.ino, id.size, id.mtime_ns),
        Some(MappedCheck::Ident {
            dev,
            ino,
            size,
            mtime_ns,
        }) => now == (*dev, *ino, *size, *mtime_ns),
        Some(MappedCheck::Any) => true,
    }
}

/// fds of mapped files by path and whether they are open for writing (see [`map_writable`]).
pub type MappedFiles = HashMap<(String, bool), RawFd>;

/// Opens every mapped file (checking it is the one that was mapped, or the one ckptd put
/// back) and fills a memfd for each shared mapping without a file. Returns fds by path and by
/// mapping start.
pub fn mapping_fds(
    img: &ProcessImage,
    stores: &[PageStoreReader],
    base: RawFd,
    checks: &HashMap<String, MappedCheck>,
    shared: &HashMap<i32, RawFd>,
) -> anyhow::Result<(MappedFiles, HashMap<u64, RawFd>)> {
    let mut files = HashMap::new();
    let mut memfds = HashMap::new();
    for m in &img.mappings {
        if let Some(s) = m.shared_with {
            // Memory other processes share: ckptd made and filled it; each mapping gets a copy
            // of the fd, closed once mapped.
            let Some(&fd) = shared.get(&s.handed_as()) else {
                bail!("ckptd sent no shared memory for the mapping at {:#x}", m.start)
            };
            let copy = if m.may_write {
                // SAFETY: F_DUPFD_CLOEXEC of an fd we hold.
                let copy = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, base) };
                if copy < 0 {
                    return Err(std::io::Error::last_os_error()).context("duplicating shared memory");
                }
                copy
            } else {
                read_only(fd, base)?
            };
            memfds.insert(m.start, copy);
            continue;
        }
        match &m.kind {
            MappingKind::File(id) if !files.contains_key(&(id.path.clone(), map_writable(m))) => {
                let writable = map_writable(m);
                let f = std::fs::OpenOptions::new()
                    .read(true)
                    .write(writable)
                    .open(&id.path)
                    .with_context(|| format!("cannot open mapped file {}", id.path))?;
                let meta = f.metadata()?;
                if !same_file(id, &meta, checks.get(&id.path)) {
                    bail!(
                        "mapped file {} changed since the checkpoint; restore needs the same file",
                        id.path
                    );
                }
                files.insert((id.path.clone(), writable), lift(f.into_raw_fd(), base)?);
            }
            MappingKind::Saved { shmem: true } => {
                // SAFETY: memfd_create with a literal name.
                let fd = unsafe { libc::memfd_create(c"ckpt-shmem".as_ptr(), libc::MFD_CLOEXEC) };
                if fd < 0 {
                    return Err(std::io::Error::last_os_error()).context("memfd_create");
                }
                // SAFETY: the memfd was just created and is ours.
                let file = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
                file.set_len(m.len())?;
                let mut buf = Vec::new();
                for r in &m.pages {
                    let Some(pages) = stores.get(r.store as usize) else {
                        bail!("no page store {} for {:#x}", r.store, m.start)
                    };
                    pages.read_run(r, &mut buf)?;
                    file.write_all_at(&buf, r.addr - m.start)?;
                }
                let fd = if m.may_write {
                    lift(file.into_raw_fd(), base)?
                } else {
                    read_only(file.as_raw_fd(), base)?
                };
                memfds.insert(m.start, fd);
            }
            _ => {}
        }
    }
    Ok((files, memfds))
}

/// A read-only open of the memory `fd` holds, above `base`: a shared mapping made from it can
/// never be made writable, as the program's could not.
fn read_only(fd: RawFd, base: RawFd) -> anyhow::Result<RawFd> {
    let f = std::fs::File::open(format!("/proc/self/fd/{fd}")).context("reopening shared memory read-only")?;
    lift(f.into_raw_fd(), base)
}

/// Whether a file mapping is made from an fd open for writing: a shared one that is writable
/// or may be made so (the kernel lets a shared mapping be made writable only when its file
/// was opened for writing, and remembers it as VmFlags `mw`). A private one never needs it.
pub fn map_writable(m: &ckpt_format::Mapping) -> bool {
    m.shared && (m.may_write || m.prot & ckpt_format::PROT_WRITE != 0)
}

/// Decompresses every compressed run into one memfd and points the runs there (as store number
/// `index`). Returns the memfd, if any run was compressed. The runs are read, decompressed and
/// checked on every core, straight into the memfd's pages.
pub fn unpack_compressed(
    img: &mut ProcessImage,
    stores: &[PageStoreReader],
    index: u32,
) -> anyhow::Result<Option<RawFd>> {
    let total: u64 = img
        .mappings
        .iter()
        .flat_map(|m| &m.pages)
        .filter(|r| r.clen > 0)
        .map(|r| r.len)
        .sum();
    if total == 0 {
        return Ok(None);
    }
    // SAFETY: memfd_create with a literal name.
    let fd = unsafe { libc::memfd_create(c"ckpt-unpacked".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("memfd_create");
    }
    // SAFETY: the memfd was just created and is ours.
    let file = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    file.set_len(total).context("sizing the memfd of unpacked pages")?;
    let mut map = Unpacked::map(&file, total)?;
    // Each run gets its place, in order; the runs are pointed there once all are in.
    let mut places = Vec::new();
    let mut rest: &mut [u8] = map.bytes();
    for r in img.mappings.iter().flat_map(|m| &m.pages).filter(|r| r.clen > 0) {
        let (here, after) = std::mem::take(&mut rest).split_at_mut(r.len as usize);
        places.push((r, here));
        rest = after;
    }
    ckpt_format::read_runs_into(stores, places)?;
    drop(map);
    let mut at = 0u64;
    for r in img
        .mappings
        .iter_mut()
        .flat_map(|m| &mut m.pages)
        .filter(|r| r.clen > 0)
    {
        r.store = index;
        r.offset = at;
        r.clen = 0;
        at += r.len;
    }
    Ok(Some(file.into_raw_fd()))
}

/// A shared mapping of the memfd being filled, unmapped when dropped.
struct Unpacked {
    addr: *mut libc::c_void,
    len: usize,
}

impl Unpacked {
    fn map(file: &std::fs::File, len: u64) -> anyhow::Result<Unpacked> {
        // SAFETY: a new shared mapping of a memfd we hold, at an address the kernel picks.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error()).context("mapping the memfd of unpacked pages");
        }
        Ok(Unpacked {
            addr,
            len: len as usize,
        })
    }

    fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: the mapping is ours, readable and writable, `len` bytes long, and lives as
        // long as the borrow of `self`.
        unsafe { std::slice::from_raw_parts_mut(self.addr.cast(), self.len) }
    }
}

impl Drop for Unpacked {
    fn drop(&mut self) {
        // SAFETY: unmapping the mapping made in `map`; no slice of it outlives `self`.
        unsafe { libc::munmap(self.addr, self.len) };
    }
}

/// POSIX locks and leases, taken once the restorer's own fds are closed: closing any fd of a
/// file drops the process's POSIX locks on it, and opening one breaks a lease. A lock another
/// program took in the meantime fails the restore here (the restorer tested each beforehand,
/// to name the holder).
pub(crate) fn locks_after_close(p: &mut crate::plan::Plan, img: &ProcessImage) {
    for f in &img.fds {
        for l in &f.locks {
            if let Some(bytes) = ckpt_kinds::lock::posix_setlk(l) {
                let addr = p.put(&bytes);
                p.sys(libc::SYS_fcntl, &[f.fd as u64, libc::F_SETLK as u64, addr], 0);
            }
            if let Some(arg) = ckpt_kinds::lock::lease_arg(l) {
                p.sys(libc::SYS_fcntl, &[f.fd as u64, libc::F_SETLEASE as u64, arg], 0);
            }
        }
    }
}
