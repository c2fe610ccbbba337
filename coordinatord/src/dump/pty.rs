//! Pty slaves whose master is outside the checkpoint (the user's own terminal, an ssh or
//! tmux pane ckpt does not checkpoint): they keep what a terminal always got. On stdio they
//! become the restoring `ckptctl`'s stdio, elsewhere they are reopened by path; only pairs
//! whose master is held by a checkpointed process of the host are made again.

use ckpt_format::{FdKind, ProcessImage};
use ckpt_kinds::{pty, Object};
use std::collections::HashSet;

/// Turns the slave records of pairs without a master among `images` (one host's) back into
/// plain stdio or a terminal reopened by path. Runs after [`super::objects::link`].
pub fn outside_masters(images: &mut [&mut ProcessImage]) {
    let masters: HashSet<u32> = images
        .iter()
        .flat_map(|i| i.fds.iter())
        .filter_map(|f| match &f.kind {
            FdKind::Object {
                obj: Object::Pty(r), ..
            } => pty::master_index(r),
            _ => None,
        })
        .collect();
    for img in images.iter_mut() {
        for f in img.fds.iter_mut() {
            let FdKind::Object {
                obj: Object::Pty(r), ..
            } = &f.kind
            else {
                continue;
            };
            if pty::slave_index(r).is_none_or(|n| masters.contains(&n)) {
                continue;
            }
            let path = r.slave.clone();
            if f.fd <= 2 {
                // As every stdio terminal always was: each of fd 0-2 on its own.
                f.kind = FdKind::Stdio { what: path };
                f.dup_of = None;
            } else {
                f.kind = FdKind::Tty { path };
            }
        }
    }
}
