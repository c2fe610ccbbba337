//! Re-creating the kernel objects (`ckpt_kinds`) of restored programs on this host: each
//! distinct object once, a duplicate of it for every other holder.

use anyhow::Context;
use ckpt_format::{FdKind, ProcessImage};
use std::collections::HashMap;
use std::os::fd::OwnedFd;

/// Every object fd of the images, by (pid, fd number). Fds that share a description with an
/// earlier fd of their process are not listed: the restorer duplicates those itself. `stdio`
/// is the restoring `ckptctl`'s.
pub fn make_objects(images: &[&ProcessImage], stdio: &[OwnedFd]) -> anyhow::Result<HashMap<(i32, i32), OwnedFd>> {
    let mut made: HashMap<u64, OwnedFd> = HashMap::new();
    let mut out = HashMap::new();
    let mut restore = ckpt_kinds::Restore::default();
    let peers = ckpt_format::StdioPeers::new(images.iter().copied());
    for img in images {
        for f in img.fds.iter().filter(|f| f.dup_of.is_none()) {
            let FdKind::Object {
                ident, obj, stdio: n, ..
            } = &f.kind
            else {
                continue;
            };
            // A stdio socket whose peer was outside the checkpoint gets the restoring
            // `ckptctl`'s stdio instead: at 0-2 the restorer keeps what it was started with;
            // at another number it is handed that stdio.
            if let Some(n) = n.filter(|_| peers.to_ckptctl(&f.kind)) {
                if f.fd > 2 {
                    out.insert((img.pid, f.fd), super::pipes::ckptctl_stdio(stdio, n)?);
                }
                continue;
            }
            let fd = match made.get(ident) {
                Some(fd) => fd.try_clone().context("duplicating a re-created object")?,
                None => {
                    // The kind's error says its cause itself: as a chain it would be said twice.
                    let fd = restore
                        .recreate(*ident, obj)
                        .map_err(|e| anyhow::anyhow!("process {} fd {}: {e}", img.pid, f.fd))?;
                    made.insert(*ident, fd.try_clone().context("duplicating a re-created object")?);
                    fd
                }
            };
            out.insert((img.pid, f.fd), fd);
        }
    }
    restore.finish().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(out)
}
