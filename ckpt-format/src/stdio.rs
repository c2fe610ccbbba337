//! Which pipe and socket ends on the job's stdio are reconnected at restore, and which become
//! the stdio of the `ckptctl restore` that brings the processes back.

use crate::{FdKind, ProcessImage};
use std::collections::{HashMap, HashSet};

/// Which stdio ends of one host's images are reconnected at restore: an end of a pipe that has
/// both a read and a write end among the images, a Unix socket whose peer is among them. Any
/// other stdio end (its other end was outside the checkpoint: the user's shell, a test harness)
/// is replaced by the stdio of the `ckptctl restore`. Pipe and socket numbers are per host:
/// made from one host's images.
pub struct StdioPeers {
    pipes: HashSet<u64>,
    unix: HashSet<u64>,
}

impl StdioPeers {
    pub fn new<'a>(images: impl IntoIterator<Item = &'a ProcessImage>) -> Self {
        let mut ends: HashMap<u64, (bool, bool)> = HashMap::new();
        let mut unix = HashSet::new();
        for f in images.into_iter().flat_map(|i| i.fds.iter()) {
            match &f.kind {
                FdKind::Pipe { ino, write, .. } => {
                    let e = ends.entry(*ino).or_default();
                    if *write {
                        e.1 = true;
                    } else {
                        e.0 = true;
                    }
                }
                FdKind::Object {
                    obj: ckpt_kinds::Object::Unix(r),
                    ..
                } => {
                    unix.insert(r.ino);
                }
                _ => {}
            }
        }
        let pipes = ends
            .into_iter()
            .filter(|(_, (r, w))| *r && *w)
            .map(|(ino, _)| ino)
            .collect();
        StdioPeers { pipes, unix }
    }

    /// Whether `kind`, a stdio end, comes back connected to its other end (false for any
    /// other kind).
    pub fn reconnected(&self, kind: &FdKind) -> bool {
        match kind {
            FdKind::Pipe {
                ino, stdio: Some(_), ..
            } => self.pipes.contains(ino),
            FdKind::Object {
                obj: ckpt_kinds::Object::Unix(r),
                stdio: Some(_),
                ..
            } => ckpt_kinds::unix::peer_within(r, &self.unix),
            _ => false,
        }
    }

    /// Whether `kind` is a stdio end whose other end was outside the checkpoint: it becomes
    /// the stdio of the `ckptctl restore`.
    pub fn to_ckptctl(&self, kind: &FdKind) -> bool {
        kind.is_stdio_end() && !self.reconnected(kind)
    }
}
