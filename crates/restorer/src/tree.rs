//! The restorer's part in making the host's process tree (`ckpt_proto::TreeStep`): before it
//! becomes the program, it forks its children (each a copy of this restorer, which restores the
//! child's image and may share its memory: see `cow`) and its zombies,
//! joins its process group and takes its terminal, as ckptd asks, so that the restored tree
//! has the same parents, groups and sessions.

use anyhow::{anyhow, bail, Context};
use ckpt_proto::{TreeAnswer, TreeStep};
use ckpt_sys::spawn::{self, Options};
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

fn stream(control: RawFd) -> std::mem::ManuallyDrop<UnixStream> {
    // SAFETY: borrowing the control fd, which outlives every call here; never closed by us.
    std::mem::ManuallyDrop::new(unsafe { UnixStream::from_raw_fd(control) })
}

fn answer(s: &UnixStream, r: &anyhow::Result<()>) -> anyhow::Result<()> {
    let a = match r {
        Ok(()) => TreeAnswer::Done,
        Err(e) => TreeAnswer::Failed {
            message: format!("{e:#}"),
        },
    };
    ckpt_proto::send(s, &a, &[]).context("answering ckptd")
}

/// Forks the children ckptd asks for, until it says to build. Each child's restorer is a fork
/// of this one, not a new program, so that it can share this one's memory (see `cow`):
/// `before_fork` gives the memory to hand over.
pub fn births(
    control: RawFd,
    before_fork: &mut dyn FnMut() -> anyhow::Result<Vec<crate::cow::Area>>,
) -> anyhow::Result<()> {
    let s = stream(control);
    loop {
        let (step, fds): (TreeStep, Vec<OwnedFd>) = ckpt_proto::recv(&s).context("waiting for ckptd")?;
        match step {
            TreeStep::Fork {
                pid,
                exit_signal,
                setsid,
                lead_group,
                argv,
            } => {
                let opts = Options {
                    setsid,
                    lead_group,
                    exit_signal,
                };
                let r = before_fork().and_then(|areas| fork(pid, opts, argv, areas, &fds));
                drop(fds);
                answer(&s, &r)?;
                r?;
            }
            TreeStep::Build => return Ok(()),
            other => bail!("ckptd asked for {} before the children were made", name(&other)),
        }
    }
}

fn fork(
    pid: i32,
    opts: Options,
    argv: Vec<String>,
    areas: Vec<crate::cow::Area>,
    fds: &[OwnedFd],
) -> anyhow::Result<()> {
    if fds.len() != 5 {
        bail!("ckptd sent {} fds for child {pid}, not 5", fds.len());
    }
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let ret = spawn::fork_with_pid(pid, &raw, opts).with_context(|| format!("forking child {pid}"))?;
    if ret == 0 {
        crate::child(argv, areas);
    }
    Ok(())
}

/// Says the program is built, then makes zombies, joins the group and takes the terminal as
/// ckptd asks, until it says go.
/// `named` are the fds naming processes opened already (see `fds::open_named`).
pub fn finish(control: RawFd, img: &ckpt_format::ProcessImage, named: &[i32]) -> anyhow::Result<()> {
    let s = stream(control);
    answer(&s, &Ok(()))?;
    loop {
        let (step, _fds): (TreeStep, Vec<OwnedFd>) = ckpt_proto::recv(&s).context("waiting for ckptd")?;
        let r = match step {
            TreeStep::Go => {
                // Every process of the restore exists now: pidfds and /proc files can name them.
                crate::fds::open_named(img, ckpt_kinds::When::Late, named)?;
                return death_signal(img);
            }
            TreeStep::Zombie {
                pid,
                comm,
                exit_signal,
                setsid,
                lead_group,
                join,
                status,
            } => spawn::zombie(
                pid,
                &CString::new(comm).unwrap_or_default(),
                Options {
                    setsid,
                    lead_group,
                    exit_signal,
                },
                join,
                status,
            )
            .with_context(|| format!("re-creating exited child {pid}")),
            // SAFETY: setpgid on ourselves.
            TreeStep::Join { pgid } => match unsafe { libc::setpgid(0, pgid) } {
                0 => Ok(()),
                _ => Err(std::io::Error::last_os_error()).with_context(|| format!("joining process group {pgid}")),
            },
            TreeStep::Terminal { tty_nr, foreground } => terminal(tty_nr, foreground),
            other => Err(anyhow!("ckptd asked for {} after the build", name(&other))),
        };
        answer(&s, &r)?;
        r?;
    }
}

/// The signal the program gets when its parent ends, set again once its parent is its own: a
/// topmost process's parent is now ckptd, whose end must not take the program with it.
fn death_signal(img: &ckpt_format::ProcessImage) -> anyhow::Result<()> {
    let sig = img.threads.first().map_or(0, |t| t.pdeathsig);
    // SAFETY: getppid has no preconditions.
    if sig == 0 || unsafe { libc::getppid() } != img.tree.ppid {
        return Ok(());
    }
    // SAFETY: prctl with plain integers.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong) } != 0 {
        return Err(std::io::Error::last_os_error()).context("setting the parent-death signal");
    }
    Ok(())
}

/// Takes the terminal with device number `tty_nr` as this session's controlling terminal
/// (through an fd of the program's that is on it, else by its /dev/pts path), with group
/// `foreground` in front.
fn terminal(tty_nr: u64, foreground: Option<i32>) -> anyhow::Result<()> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
    let mine = std::fs::read_dir("/proc/self/fd")?.filter_map(|e| {
        let fd: RawFd = e.ok()?.file_name().to_str()?.parse().ok()?;
        let m = std::fs::metadata(format!("/proc/self/fd/{fd}")).ok()?;
        (m.file_type().is_char_device() && m.rdev() == tty_nr).then_some(fd)
    });
    let found: Vec<RawFd> = mine.collect();
    let opened;
    let fd = match found.first() {
        Some(&fd) => fd,
        None => {
            let (major, minor) = (libc::major(tty_nr), libc::minor(tty_nr));
            if !(136..=143).contains(&major) {
                bail!("the controlling terminal (device {major}:{minor}) is not a pseudo-terminal the program holds");
            }
            let path = format!("/dev/pts/{}", (major - 136) * 256 + minor);
            opened = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NOCTTY)
                .open(&path)
                .with_context(|| format!("opening the controlling terminal {path}"))?;
            opened.as_raw_fd()
        }
    };
    // SAFETY: ioctls on an fd we hold; TIOCSCTTY's argument 0 never steals a terminal.
    if unsafe { libc::ioctl(fd, libc::TIOCSCTTY, 0) } != 0 {
        return Err(std::io::Error::last_os_error()).context("taking the controlling terminal back");
    }
    let Some(g) = foreground else { return Ok(()) };
    // A session leader that just took its terminal is in front, but SIGTTOU stays blocked for
    // the call so that nothing can stop us here.
    // SAFETY: sigset operations on a local set, then tcsetpgrp on an fd we hold.
    let r = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTTOU);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old);
        let r = libc::tcsetpgrp(fd, g);
        let err = std::io::Error::last_os_error();
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        (r, err)
    };
    if r.0 != 0 {
        return Err(r.1).with_context(|| format!("putting process group {g} in the terminal's foreground"));
    }
    Ok(())
}

fn name(step: &TreeStep) -> &'static str {
    match step {
        TreeStep::Fork { .. } => "a fork",
        TreeStep::Build => "the build",
        TreeStep::Zombie { .. } => "a zombie",
        TreeStep::Join { .. } => "a group",
        TreeStep::Terminal { .. } => "the terminal",
        TreeStep::Go => "go",
    }
}
