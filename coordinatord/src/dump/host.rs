//! What is decided over all of a host's parked processes at once, once each was read: which
//! fds of different processes are one object or one open file description, which pipes and
//! sockets are the job's stdio, which pty masters are outside, which mappings are one piece
//! of shared memory; and what of the tree cannot be made again. Returns every reason the
//! checkpoint is refused.

use ckpt_format::ProcessImage;
use std::collections::HashMap;

/// `job`: the job's stdio (see [`super::stdio::job`]).
pub fn link(images: &mut [&mut ProcessImage], job: &HashMap<u64, u8>) -> Vec<String> {
    super::objects::link(images);
    super::objects::link_files(images);
    super::stdio::mark(images, job);
    super::pty::outside_masters(images);
    let mut refused = super::shared_memory::link(images);
    refused.extend(super::tree::check(images));
    refused.extend(super::objects::outside_processes(images));
    refused
}
