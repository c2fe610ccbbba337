//! `--lazy`: the restorer's part of a lazy restore. Private anonymous memory that holds data
//! (see `ckpt_format::lazy::lazy_span`) is mapped empty and registered with a userfaultfd made
//! here, instead of being read from the page stores; ckptd gets that descriptor before the
//! blob runs and copies the pages in from then on, on first touch (the blob's own writes, the
//! signal frames `rt_sigreturn` reads and the kernel's reads count) and in the background. The
//! program never holds the descriptor: the blob closes this copy with the restorer's others.
//! Until the blob has registered the memory, there is nothing ckptd could copy into (the
//! restorer's own memory is still there): the blob says when with a byte on a pipe.

use crate::plan::Plan;
use anyhow::Context;
use ckpt_format::ProcessImage;
use ckpt_proto::lazy::LazyHandover;
use std::os::fd::{FromRawFd, IntoRawFd, RawFd};
use std::os::unix::net::UnixStream;

/// The userfaultfd (a working fd of the restorer) and the ranges registered with it; the pipe
/// the blob writes a byte to once they are.
pub struct Lazy {
    pub fd: RawFd,
    pub ranges: Vec<(u64, u64)>,
    /// Write end: a working fd, closed by the blob with the others.
    pub ready: RawFd,
    /// Read end, for ckptd.
    ready_for_ckptd: RawFd,
}

/// Takes the memory loaded lazily out of what the blob fills and tracks: its runs are ckptd's
/// to copy, and the program's dirty-page tracker cannot register memory another userfaultfd
/// holds (its next checkpoint stores that memory in full). Returns its ranges.
pub fn split(img: &mut ProcessImage) -> Vec<(u64, u64)> {
    let spans: Vec<(usize, (u64, u64))> = img
        .mappings
        .iter()
        .enumerate()
        .filter_map(|(i, m)| ckpt_format::lazy::lazy_span(img, m).map(|s| (i, s)))
        .collect();
    for &(i, _) in &spans {
        let m = &mut img.mappings[i];
        m.pages.clear();
        m.tracked = false;
    }
    spans.into_iter().map(|(_, s)| s).collect()
}

/// The userfaultfd for `ranges`, above the program's fds (`base`); none without ranges.
pub fn open(ranges: Vec<(u64, u64)>, base: RawFd) -> anyhow::Result<Option<Lazy>> {
    if ranges.is_empty() {
        return Ok(None);
    }
    let fd = ckpt_sys::uffd::open_lazy().context(
        "cannot make the userfaultfd of a lazy restore (it must see the kernel's faults too); restore without --lazy",
    )?;
    let fd = crate::fds::lift(fd.into_raw_fd(), base)?;
    let mut ends = [0; 2];
    // SAFETY: pipe2 fills the two fds.
    if unsafe { libc::pipe2(ends.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error()).context("pipe");
    }
    // Both above the program's fds, which are placed at their numbers after this.
    Ok(Some(Lazy {
        fd,
        ranges,
        ready: crate::fds::lift(ends[1], base)?,
        ready_for_ckptd: crate::fds::lift(ends[0], base)?,
    }))
}

/// The blob's registration of the lazy memory, once it is mapped. A range the kernel refuses
/// fails the restore: that memory would otherwise come back empty.
pub fn register(p: &mut Plan, l: &Lazy) {
    for &(start, end) in &l.ranges {
        let (req, arg) = ckpt_sys::uffd::register_missing_call(start, end - start);
        let arg = p.put(&arg);
        p.sys(libc::SYS_ioctl, &[l.fd as u64, req, arg], 0);
    }
    let byte = p.put(&[1]);
    p.sys(libc::SYS_write, &[l.ready as u64, byte, 1], crate::blob::EXPECT_ARG2);
}

/// Hands the ranges and the userfaultfd to ckptd, which serves it before it lets the blob run.
pub fn hand_over(control: RawFd, l: Option<&Lazy>) -> anyhow::Result<()> {
    // SAFETY: borrowing the control fd for the call; never closed here.
    let s = std::mem::ManuallyDrop::new(unsafe { UnixStream::from_raw_fd(control) });
    let msg = LazyHandover {
        ranges: l.map(|l| l.ranges.clone()).unwrap_or_default(),
    };
    let fds: Vec<RawFd> = l.map(|l| [l.fd, l.ready_for_ckptd]).into_iter().flatten().collect();
    ckpt_proto::send(&s, &msg, &fds).context("handing the lazy memory to ckptd")?;
    if let Some(l) = l {
        // SAFETY: our copy of the read end; ckptd has its own now.
        unsafe { libc::close(l.ready_for_ckptd) };
    }
    Ok(())
}
