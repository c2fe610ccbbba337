//! Re-creating the pipes of restored programs on this host, with the bytes they buffered.

use ckpt_format::{FdKind, ProcessImage};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};

/// One pipe: its ends (pid, fd, is the write end) and the bytes a read end saw buffered.
type Pipe<'a> = (Vec<(i32, i32, bool)>, Option<&'a [u8]>);

/// Every pipe end of the images, by (pid, fd number).
pub fn make_pipes(images: &[&ProcessImage]) -> anyhow::Result<HashMap<(i32, i32), OwnedFd>> {
    let mut pipes: BTreeMap<u64, Pipe> = BTreeMap::new();
    for img in images {
        for f in &img.fds {
            if let FdKind::Pipe { ino, write, buffered } = &f.kind {
                let e = pipes.entry(*ino).or_default();
                e.0.push((img.pid, f.fd, *write));
                if !write && e.1.is_none() {
                    e.1 = Some(buffered);
                }
            }
        }
    }
    let mut out = HashMap::new();
    for (_, (ends, buffered)) in pipes {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        if let Some(b) = buffered.filter(|b| !b.is_empty()) {
            // SAFETY: fcntl on our own pipe: room for the buffered bytes.
            unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, b.len() as i32) };
            std::fs::File::from(w.try_clone()?).write_all(b)?;
        }
        // An end nobody in the checkpoint holds is closed: its peer sees EOF or EPIPE.
        for (pid, fd, write) in ends {
            let end = if write { w.try_clone()? } else { r.try_clone()? };
            out.insert((pid, fd), end);
        }
    }
    Ok(out)
}
