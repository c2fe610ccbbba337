//! The job's stdio kept at other numbers. A program may move the stdio it was started with
//! away from fd 0-2 (tcsh keeps its output at fd 17 and points 0-2 at /dev/null between
//! commands). Such an end, when its other end is outside the checkpoint, must still become the
//! restoring `ckptctl`'s stdio, not a pipe with nobody at the other end: ckptd notes the pipes
//! and sockets each process had on fd 0-2 when it came under control ([`at_start`]), and marks
//! the ends of those at any number ([`mark`]).

use ckpt_format::{FdKind, ProcessImage};
use std::collections::HashMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

/// The inode of each pipe or socket on fd 0-2 of `pid` now (another kind of file: `None`).
pub fn at_start(pid: i32) -> [Option<u64>; 3] {
    std::array::from_fn(|n| pipe_or_socket(std::fs::metadata(format!("/proc/{pid}/fd/{n}")).ok()))
}

/// The same, of fds ckptd holds (the stdio a `ckptctl restore` handed over).
pub fn of_fds(fds: &[std::os::fd::OwnedFd]) -> [Option<u64>; 3] {
    std::array::from_fn(|n| {
        fds.get(n)
            .and_then(|f| f.try_clone().ok())
            .and_then(|f| pipe_or_socket(std::fs::File::from(f).metadata().ok()))
    })
}

fn pipe_or_socket(meta: Option<std::fs::Metadata>) -> Option<u64> {
    let meta = meta?;
    let t = meta.file_type();
    (t.is_fifo() || t.is_socket()).then(|| meta.ino())
}

/// Marks every pipe or Unix socket end above fd 2 that is one of the job's stdio (`job`: inode
/// → 0, 1 or 2, from [`at_start`] of the host's processes). Whether it is reconnected or
/// replaced is decided at restore, as for fd 0-2.
pub fn mark(images: &mut [&mut ProcessImage], job: &HashMap<u64, u8>) {
    for f in images.iter_mut().flat_map(|img| img.fds.iter_mut()) {
        if f.fd <= 2 {
            continue;
        }
        match &mut f.kind {
            FdKind::Pipe { ino, stdio, .. } if stdio.is_none() => *stdio = job.get(ino).copied(),
            FdKind::Object {
                obj: ckpt_kinds::Object::Unix(r),
                stdio,
                ..
            } if stdio.is_none() => *stdio = job.get(&r.ino).copied(),
            _ => {}
        }
    }
}

/// The job's stdio over the host's processes (each one's [`at_start`]): inode → 0, 1 or 2,
/// the lowest when one pipe was several (`2>&1`).
pub fn job<'a>(procs: impl Iterator<Item = &'a [Option<u64>; 3]>) -> HashMap<u64, u8> {
    let mut job = HashMap::new();
    for stdio in procs {
        for (n, ino) in stdio.iter().enumerate() {
            if let Some(ino) = ino {
                let n = n as u8;
                job.entry(*ino).and_modify(|m: &mut u8| *m = (*m).min(n)).or_insert(n);
            }
        }
    }
    job
}
