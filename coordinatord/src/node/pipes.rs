//! Re-creating the pipes of restored programs on this host, with the bytes they buffered; a
//! pipe on stdio between two restored programs too.

use anyhow::Context;
use ckpt_format::{FdKind, ProcessImage};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};

/// One pipe: its ends (pid, fd, is the write end), the bytes a read end saw buffered with the
/// packets they make (empty for a stream), its capacity.
type Pipe<'a> = (Vec<(i32, i32, bool)>, Option<(&'a [u8], &'a [u32])>, u32);

/// Every pipe end of the images, by (pid, fd number). `stdio` is the restoring `ckptctl`'s.
pub fn make_pipes(images: &[&ProcessImage], stdio_fds: &[OwnedFd]) -> anyhow::Result<HashMap<(i32, i32), OwnedFd>> {
    let mut pipes: BTreeMap<u64, Pipe> = BTreeMap::new();
    let peers = ckpt_format::StdioPeers::new(images.iter().copied());
    let mut out = HashMap::new();
    for img in images {
        for f in &img.fds {
            if let FdKind::Pipe {
                ino,
                write,
                buffered,
                packets,
                capacity,
                stdio,
            } = &f.kind
            {
                // A stdio end whose other end was outside the checkpoint gets the restoring
                // `ckptctl`'s stdio instead: at 0-2 the restorer keeps what it was started
                // with; at another number it is handed that stdio.
                if let Some(n) = stdio.filter(|_| peers.to_ckptctl(&f.kind)) {
                    if f.fd > 2 {
                        out.insert((img.pid, f.fd), ckptctl_stdio(stdio_fds, n)?);
                    }
                    continue;
                }
                let e = pipes.entry(*ino).or_default();
                e.0.push((img.pid, f.fd, *write));
                e.2 = *capacity;
                if !write && e.1.is_none() {
                    e.1 = Some((buffered.as_slice(), packets.as_slice()));
                }
            }
        }
    }
    for (_, (ends, buffered, capacity)) in pipes {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        // The capacity the program's pipe had (it may have set it with F_SETPIPE_SZ); the
        // buffered bytes, never more than that, fit in it packed.
        // SAFETY: fcntl on our own pipe.
        if unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, capacity as i32) } < 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("giving a re-created pipe its capacity of {capacity} bytes"));
        }
        if let Some((b, packets)) = buffered.filter(|(b, _)| !b.is_empty()) {
            refill(&w, b, packets)?;
        }
        // An end nobody in the checkpoint holds is closed: its peer sees EOF or EPIPE.
        for (pid, fd, write) in ends {
            let end = if write { w.try_clone()? } else { r.try_clone()? };
            out.insert((pid, fd), end);
        }
    }
    Ok(out)
}

/// Writes the bytes a pipe held back into it: as they were read, one write per packet in
/// packet mode (each is then one read again), else as one stream. The restorer sets the
/// program's own flags on its ends afterwards.
fn refill(w: &OwnedFd, bytes: &[u8], packets: &[u32]) -> anyhow::Result<()> {
    let mut file = std::fs::File::from(w.try_clone()?);
    if packets.is_empty() {
        return Ok(file.write_all(bytes)?);
    }
    // SAFETY: F_SETFL on our own pipe's write end.
    if unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETFL, libc::O_DIRECT) } < 0 {
        return Err(std::io::Error::last_os_error()).context("putting a re-created pipe in packet mode");
    }
    let mut at = 0usize;
    for &len in packets {
        let Some(packet) = bytes.get(at..at + len as usize) else {
            anyhow::bail!("a pipe's packets are longer than its {} bytes", bytes.len());
        };
        // One write is one packet: a short write would split it.
        let n = file.write(packet)?;
        if n != packet.len() {
            anyhow::bail!("a packet of {} bytes went into a re-created pipe as {n}", packet.len());
        }
        at += len as usize;
    }
    Ok(())
}

/// A copy of the restoring `ckptctl`'s stdio `n`, for an end kept above fd 2 (`/dev/null`
/// when ckptctl gave none, as for fd 0-2).
pub fn ckptctl_stdio(stdio: &[OwnedFd], n: u8) -> anyhow::Result<OwnedFd> {
    match stdio.get(n as usize) {
        Some(f) => f.try_clone().context("duplicating the restoring ckptctl's stdio"),
        None => Ok(std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
            .context("/dev/null")?
            .into()),
    }
}
