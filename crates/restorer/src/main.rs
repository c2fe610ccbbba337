//! `ckpt-restore`: started by ckptd with the checkpointed pid, it becomes the checkpointed
//! process. Everything that can fail is checked in ordinary Rust first (image, files, fds);
//! then the blob takes over, replaces this program's memory with the image's and resumes every
//! thread where it was parked. Errors go to the status fd for ckptd; success is silence.
//!
//! fds on entry: 0-2 the stdio for the program, `--status-fd`, `--control-fd`.
//!
//! `ckpt-restore --lazy-guard` is the guard of a lazy restore instead (see `guard`).

mod aio;
mod attrs;
mod blob;
mod cow;
mod creds;
mod fds;
mod guard;
mod lazy;
mod plan;
mod seccomp;
mod signals;
mod space;
mod tree;

use anyhow::{bail, Context};
use ckpt_format::{read_record, PageStoreReader, ProcessImage, RecordKind, PAGE_SIZE};
use ckpt_sys::procfs::{self, MapEntry};
use std::convert::Infallible;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

struct Args {
    meta: PathBuf,
    /// The page stores, in the order of the image's `stores`.
    pages: Vec<PathBuf>,
    status_fd: i32,
    control_fd: i32,
    /// Mapped files ckptd put back or keeps as they are.
    mapped: std::collections::HashMap<String, fds::MappedCheck>,
    /// Private anonymous memory is left to ckptd to load (see `lazy`).
    lazy: bool,
}

fn parse_args(mut it: impl Iterator<Item = String>) -> anyhow::Result<Args> {
    let mut meta = None;
    let mut pages = Vec::new();
    let mut status_fd = 3;
    let mut control_fd = 4;
    let mut mapped = std::collections::HashMap::new();
    let mut lazy = false;
    while let Some(a) = it.next() {
        match a.as_str() {
            "--meta" => meta = it.next().map(PathBuf::from),
            "--lazy" => lazy = true,
            "--pages" => pages.extend(it.next().map(PathBuf::from)),
            "--mapped-any" => {
                mapped.insert(it.next().context("--mapped-any needs a path")?, fds::MappedCheck::Any);
            }
            "--mapped-file" => {
                let path = it.next().context("--mapped-file needs a path")?;
                let mut num =
                    || -> anyhow::Result<i128> { Ok(it.next().context("--mapped-file needs 4 numbers")?.parse()?) };
                let (dev, ino, size, mtime_ns) = (num()? as u64, num()? as u64, num()? as u64, num()?);
                mapped.insert(
                    path,
                    fds::MappedCheck::Ident {
                        dev,
                        ino,
                        size,
                        mtime_ns,
                    },
                );
            }
            _ if a.starts_with("--status-fd=") => status_fd = a["--status-fd=".len()..].parse()?,
            _ if a.starts_with("--control-fd=") => control_fd = a["--control-fd=".len()..].parse()?,
            _ => bail!("unknown argument {a}; ckpt-restore is started by ckptd"),
        }
    }
    Ok(Args {
        meta: meta.context("--meta is required")?,
        pages,
        status_fd,
        control_fd,
        mapped,
        lazy,
    })
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some("--lazy-guard") {
        std::process::exit(guard::main());
    }
    let status_fd = std::env::args()
        .find_map(|a| a.strip_prefix("--status-fd=").and_then(|v| v.parse().ok()))
        .unwrap_or(3);
    let err = match parse_args(std::env::args().skip(1)).and_then(|a| run(a, Vec::new())) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    fail(err, status_fd)
}

/// A child's restorer, forked by its parent's (see `tree::births`) rather than started anew:
/// `argv` are its arguments, `inherited` the memory its parent filled (see `cow`).
pub fn child(argv: Vec<String>, inherited: Vec<cow::Area>) -> ! {
    // The parent's status fd number, which is not ours.
    std::env::remove_var("CKPT_STATUS_FD");
    let err = match parse_args(argv.into_iter().skip(1)).and_then(|a| run(a, inherited)) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    fail(err, 3)
}

/// Says why the restore failed on the status fd and ends.
fn fail(err: anyhow::Error, status_fd: i32) -> ! {
    // `run` moved the status fd above the program's fds; the env var tells where.
    let fd = std::env::var("CKPT_STATUS_FD")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(status_fd);
    let msg = ckpt_proto::restore_status::encode_text(&format!("{err:#}"));
    // SAFETY: writing a buffer we own to the status fd.
    unsafe { libc::write(fd, msg.as_ptr().cast(), msg.len()) };
    std::process::exit(1);
}

fn run(args: Args, inherited: Vec<cow::Area>) -> anyhow::Result<Infallible> {
    let mut img: ProcessImage = read_record(&args.meta, RecordKind::Process)?;
    // SAFETY: getpid has no preconditions.
    let me = unsafe { libc::getpid() };
    if me != img.pid {
        bail!("restorer runs as pid {me}, the image is of pid {}", img.pid);
    }
    let mine = creds::Mine::read()?;
    creds::check(&img, &mine)?;
    let lazy_ranges = if args.lazy { lazy::split(&mut img) } else { Vec::new() };
    let base = img.fds.iter().map(|f| f.fd).max().unwrap_or(2).max(2) + 1;
    let status = fds::lift(args.status_fd, base)?;
    std::env::set_var("CKPT_STATUS_FD", status.to_string());
    let control = fds::lift(args.control_fd, base)?;
    let mut sockets = fds::receive_sockets(control, base)?;
    // Shared memory comes under negative numbers (no fd has one): kept apart, closed once
    // each mapping has its copy.
    let shared: std::collections::HashMap<i32, i32> = sockets
        .iter()
        .filter(|(n, _)| **n < 0)
        .map(|(n, fd)| (*n, *fd))
        .collect();
    sockets.retain(|n, _| *n >= 0);
    if args.pages.len() != img.stores.len().max(1) {
        bail!(
            "the image uses {} page stores, {} were given",
            img.stores.len(),
            args.pages.len()
        );
    }
    let mut readers = Vec::new();
    let mut stores = Vec::new();
    for (i, path) in args.pages.iter().enumerate() {
        // Only this checkpoint's own store has a recorded length; ancestors' runs were verified.
        let r = PageStoreReader::open(path, if i == 0 { img.pages_len } else { 0 })?;
        // SAFETY: dup of an fd the reader holds.
        stores.push(fds::lift(unsafe { libc::dup(r.file().as_raw_fd()) }, base)?);
        readers.push(r);
    }
    let (files, memfds) = fds::mapping_fds(&img, &readers, base, &args.mapped, &shared)?;
    for fd in shared.into_values() {
        // SAFETY: closing our own copies; the mappings have theirs.
        unsafe { libc::close(fd) };
    }
    // Pages are read with pread: compressed runs are unpacked into memory first.
    if let Some(unpacked) = fds::unpack_compressed(&mut img, &readers, stores.len() as u32)? {
        stores.push(fds::lift(unpacked, base)?);
    }
    drop(readers);
    // The memory shared with the parent is made this image's; then, before the first child is
    // forked, the rest of the memory a child could share is filled (see `cow`). The children
    // need nothing else of the program: the fds above are closed in them.
    let mut areas = cow::adopt(&img, inherited, &stores)?;
    let mut filled = false;
    tree::births(control, &mut || {
        if !filled {
            cow::fill(&img, &stores, &files, &mut areas)?;
            filled = true;
        }
        Ok(areas.clone())
    })?;
    // Only now: the children must not get the rings' mappings (see `aio`).
    areas.extend(aio::make(&img)?);
    let lazy = lazy::open(lazy_ranges, base)?;
    let exe = std::fs::File::open(&img.exe)
        .ok()
        .map(|f| fds::lift(std::os::fd::IntoRawFd::into_raw_fd(f), base))
        .transpose()?;

    // The program's dirty-page tracker, made here so that the last steps can register and
    // protect its memory before it runs (see `plan::track`); without one, its interposer
    // makes one and its next checkpoint stores everything.
    let tracker = (img.uffd_fd >= 0)
        .then(ckpt_sys::uffd::open_tracker)
        .and_then(Result::ok)
        .map(|t| fds::lift(std::os::fd::IntoRawFd::into_raw_fd(t), base))
        .transpose()?;
    fds::place_fds(&img, control, &sockets, tracker)?;
    let named = fds::open_named(&img, ckpt_kinds::When::Early, &[])?;
    fds::after_placed(&img)?;
    fds::take_locks(&img)?;
    attrs::check(&img)?;
    seccomp::check(&img)?;
    attrs::process_now(&img)?;
    fds::enter_working_dir(&img)?;
    // SAFETY: umask has no preconditions.
    unsafe { libc::umask(img.umask) };

    let mut all: Vec<i32> = vec![status, control];
    all.extend(&stores);
    all.extend(files.values());
    all.extend(memfds.values());
    all.extend(exe);
    all.extend(lazy.iter().flat_map(|l| [l.fd, l.ready]));
    // The control fd now lives at the program's number; its working copy goes.
    let working = plan::WorkingFds {
        status,
        stores,
        files,
        memfds,
        exe,
        lazy,
        areas,
        all,
    };

    let current = procfs::maps(me)?;
    let (ops_bytes, data_bytes) = plan::bounds(&img, &current);
    let park: u64 = current
        .iter()
        .filter(|e| ckpt_format::is_kernel_special(&e.path))
        .map(MapEntry::len)
        .sum();
    let size = plan::layout(0, ops_bytes, data_bytes, img.threads.len(), park).size;
    let base_addr = choose_region(&img, &current, size)?;
    let region = plan::layout(base_addr, ops_bytes, data_bytes, img.threads.len(), park);
    map_region(&region)?;
    let plan = plan::build(&img, &current, region, &working, &mine, tracker.is_some())?;
    if args.lazy {
        lazy::hand_over(control, working.lazy.as_ref())?;
    }
    // Groups and terminals once every process of the host exists; then, with all of them
    // built, every one becomes its program.
    tree::finish(control, &img, &named)?;
    // Last: nothing after it opens a path (the working directory was entered above and stays).
    if img.root != "/" {
        std::os::unix::fs::chroot(&img.root)
            .with_context(|| format!("cannot enter the root directory {}", img.root))?;
    }
    jump(&region, &plan, status)
}

/// A hole free in both the image's layout and ours.
fn choose_region(img: &ProcessImage, current: &[MapEntry], size: u64) -> anyhow::Result<u64> {
    space::Space::new(img, current)
        .take(size)
        .context("no free address range for the restorer")
}

fn map_region(r: &plan::Region) -> anyhow::Result<()> {
    // SAFETY: mapping fresh anonymous memory at an address checked to be free.
    let p = unsafe {
        libc::mmap(
            r.base as *mut libc::c_void,
            r.size as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED || p as u64 != r.base {
        return Err(std::io::Error::last_os_error()).context("cannot map the restorer region");
    }
    // SAFETY: naming our own mapping; failure is harmless.
    unsafe {
        libc::prctl(
            0x5356_4d41,
            0,
            r.base,
            r.size,
            ckpt_proto::RESTORER_VMA_ANON_NAME.as_ptr(),
        )
    };
    Ok(())
}

fn jump(r: &plan::Region, plan: &plan::Plan, status: i32) -> anyhow::Result<Infallible> {
    let code = blob::code();
    let header = blob::Header {
        ops: r.ops,
        main_stack_top: r.stacks + 16 * 1024 - 64,
        status_fd: status as u64,
        scratch: [0; 5],
    };
    // SAFETY: every destination range lies inside the region mapped read-write above, sized by
    // plan::layout from the same bounds the plan was checked against.
    unsafe {
        std::ptr::copy_nonoverlapping(code.as_ptr(), r.base as *mut u8, code.len());
        std::ptr::write(r.header as *mut blob::Header, header);
        std::ptr::copy_nonoverlapping(plan.data.as_ptr(), r.data as *mut u8, plan.data.len());
        std::ptr::copy_nonoverlapping(plan.ops.as_ptr(), r.ops as *mut blob::Op, plan.ops.len());
        if libc::mprotect(
            r.base as *mut libc::c_void,
            PAGE_SIZE as usize,
            libc::PROT_READ | libc::PROT_EXEC,
        ) != 0
        {
            return Err(std::io::Error::last_os_error()).context("mprotect of the restorer code");
        }
        // Every signal blocked, libc's own included (its sigprocmask leaves the two it uses
        // internally unblocked): the pending signals the plan raises again must wait for each
        // thread's own mask, which its sigreturn puts back.
        let all: u64 = !0;
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &all as *const u64,
            std::ptr::null_mut::<u64>(),
            8usize,
        );
        let entry: extern "C" fn(u64) -> ! = std::mem::transmute(r.base as *const ());
        entry(r.header)
    }
}
