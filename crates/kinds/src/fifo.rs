//! Named FIFOs: reopened by path at restore, with the bytes that were waiting in them.
//!
//! Two opens of one FIFO are two open file descriptions (each its own access mode and flags)
//! but one pipe buffer: each description is re-created on its own, and the buffer is refilled
//! once per FIFO (by its inode at the checkpoint), whichever description comes first.

use crate::reopen::{self, check};
use crate::{KindError, Source};
use serde::{Deserialize, Serialize};
use std::collections::hash_map::{Entry, HashMap};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Record {
    pub path: String,
    /// The FIFO's inode on the host at the checkpoint: descriptions of one FIFO share a buffer.
    pub dev: u64,
    pub ino: u64,
    /// `O_RDONLY`, `O_WRONLY` or `O_RDWR`.
    pub access: i32,
    /// `F_GETPIPE_SZ`: the buffer's capacity.
    pub pipe_size: i32,
    /// What a reader would read next (the same for every description of the FIFO).
    pub buffered: Vec<u8>,
}

/// A FIFO that is not an anonymous pipe (`pipe:[…]`).
pub fn claims(src: &Source) -> bool {
    src.meta.file_type().is_fifo() && !src.link.starts_with("pipe:")
}

pub fn capture(src: &Source) -> Result<Record, KindError> {
    if src.link.ends_with(" (deleted)") || !src.link.starts_with('/') {
        return Err(KindError::Unsupported(format!(
            "a named FIFO whose file was removed ({})",
            src.link
        )));
    }
    let what = || format!("named FIFO {}", src.link);
    let access = src.flags & libc::O_ACCMODE;
    // A reader of the program's own peeks without consuming; a write-only holder needs a reader
    // of ours (opening one never blocks with O_NONBLOCK).
    let own;
    let rd = if access == libc::O_WRONLY {
        own =
            reopen::of_process(src.pid, src.fd, libc::O_RDONLY | libc::O_NONBLOCK).map_err(KindError::read(what()))?;
        own.as_raw_fd()
    } else {
        src.file().map_err(KindError::read(what()))?
    };
    // SAFETY: F_GETPIPE_SZ on a FIFO we hold.
    let pipe_size =
        check(unsafe { libc::fcntl(rd, libc::F_GETPIPE_SZ) } as i64).map_err(KindError::read(what()))? as i32;
    let (buffered, packets) = peek_pipe_packets(rd).map_err(KindError::read(what()))?;
    if !packets.is_empty() {
        return Err(KindError::Refused(format!(
            "named FIFO {} (fd {}) holds {} packets written in packet mode (O_DIRECT), which ckpt \
             keeps for anonymous pipes only; let the reader drain it first",
            src.link,
            src.fd,
            packets.len()
        )));
    }
    Ok(Record {
        path: src.link.to_string(),
        dev: src.meta.dev(),
        ino: src.meta.ino(),
        access,
        pipe_size,
        buffered,
    })
}

/// The bytes waiting in a pipe (a FIFO or an anonymous one), copied with `tee`: nothing is
/// consumed. `tee` copies whole pipe buffers, one per slot of the scratch pipe, and a pipe may
/// hold many small buffers: the scratch pipe gets as many slots as the source has.
///
/// With the bytes, the packets they make when some were written in packet mode (`O_DIRECT`):
/// `tee` keeps a buffer's packet mark, and a read stops at a packet's end, so reads as large
/// as everything waiting return one packet each. Empty when one read returned it all (a plain
/// stream).
pub fn peek_pipe_packets(rd: RawFd) -> std::io::Result<(Vec<u8>, Vec<u32>)> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int.
    check(unsafe { libc::ioctl(rd, libc::FIONREAD, &mut n) } as i64)?;
    if n <= 0 {
        return Ok(Default::default());
    }
    // SAFETY: F_GETPIPE_SZ only reads the pipe's capacity.
    let capacity = check(unsafe { libc::fcntl(rd, libc::F_GETPIPE_SZ) } as i64)?;
    let (tr, tw) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    // SAFETY: fcntl on our own pipe.
    check(unsafe {
        libc::fcntl(
            tw.as_raw_fd(),
            libc::F_SETPIPE_SZ,
            capacity.max(n as i64) as libc::c_int,
        )
    } as i64)?;
    // SAFETY: tee between two pipes we hold copies without consuming.
    let copied = check(unsafe { libc::tee(rd, tw.as_raw_fd(), n as usize, libc::SPLICE_F_NONBLOCK) } as i64)?;
    drop(tw);
    let mut out = vec![0u8; copied as usize];
    let mut packets = Vec::new();
    let mut at = 0usize;
    while at < out.len() {
        // SAFETY: read into the rest of a buffer we own, of its length.
        let got = check(unsafe { libc::read(tr.as_raw_fd(), out[at..].as_mut_ptr().cast(), out.len() - at) } as i64)?;
        if got == 0 {
            break;
        }
        packets.push(got as u32);
        at += got as usize;
    }
    out.truncate(at);
    if out.len() != n as usize {
        // A partial copy is not the pipe's content.
        return Err(std::io::Error::other(format!(
            "copied {} of the {n} bytes waiting in a pipe",
            out.len()
        )));
    }
    if packets.len() == 1 {
        packets.clear();
    }
    Ok((out, packets))
}

/// The FIFOs opened so far (by inode at the checkpoint), each held open for reading and
/// writing: it keeps the refilled buffer alive until the holders have their fds, and lets
/// write-only descriptions open without a reader.
#[derive(Default)]
pub struct Made {
    fifos: HashMap<(u64, u64), OwnedFd>,
}

pub fn recreate(rec: &Record, made: &mut Made) -> Result<OwnedFd, KindError> {
    let what = || format!("named FIFO {}", rec.path);
    let keeper = match made.fifos.entry((rec.dev, rec.ino)) {
        Entry::Occupied(e) => e.into_mut(),
        Entry::Vacant(e) => e.insert(open_and_refill(rec)?),
    };
    // The restorer sets the program's flags (clearing O_NONBLOCK if it had not set it).
    reopen::of_own(keeper.as_raw_fd(), rec.access | libc::O_NONBLOCK).map_err(KindError::recreate(what()))
}

fn open_and_refill(rec: &Record) -> Result<OwnedFd, KindError> {
    let what = || format!("named FIFO {}", rec.path);
    let meta = std::fs::metadata(&rec.path).map_err(|e| {
        KindError::Refused(format!(
            "named FIFO {} is gone ({e}); create it again (mkfifo) and restore again",
            rec.path
        ))
    })?;
    if !meta.file_type().is_fifo() {
        return Err(KindError::Refused(format!(
            "{} is no longer a named FIFO; put the FIFO back (mkfifo) and restore again",
            rec.path
        )));
    }
    let keeper = reopen::open(&rec.path, libc::O_RDWR | libc::O_NONBLOCK).map_err(KindError::recreate(what()))?;
    let fd = keeper.as_raw_fd();
    let mut waiting: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int.
    unsafe { libc::ioctl(fd, libc::FIONREAD, &mut waiting) };
    if waiting > 0 {
        return Err(KindError::Refused(format!(
            "named FIFO {} already holds {waiting} bytes from a program still using it; \
             stop that program (or wait for it to read them) and restore again",
            rec.path
        )));
    }
    // SAFETY: F_GETPIPE_SZ / F_SETPIPE_SZ on the FIFO we hold.
    if unsafe { libc::fcntl(fd, libc::F_GETPIPE_SZ) } != rec.pipe_size {
        // SAFETY: as above.
        check(unsafe { libc::fcntl(fd, libc::F_SETPIPE_SZ, rec.pipe_size) } as i64)
            .map_err(KindError::recreate(format!("the buffer size of {}", what())))?;
    }
    let mut rest = &rec.buffered[..];
    while !rest.is_empty() {
        // SAFETY: write from a slice we own, of its length.
        let n = check(unsafe { libc::write(fd, rest.as_ptr().cast(), rest.len()) } as i64)
            .map_err(KindError::recreate(format!("the bytes waiting in {}", what())))?;
        rest = &rest[n as usize..];
    }
    Ok(keeper)
}

pub fn describe(rec: &Record) -> String {
    let mode = match rec.access {
        libc::O_RDONLY => "read",
        libc::O_WRONLY => "write",
        _ => "read-write",
    };
    format!("named FIFO {} ({mode}, {} bytes waiting)", rec.path, rec.buffered.len())
}
