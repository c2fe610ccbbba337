//! Progress of long checkpoints and restores, for the `ckptctl` that asked: each node meters
//! its own part ([`Meter`]) and reports it while it answers the manager, which gathers every
//! node's reports into one account ([`Gather`]).

mod gather;
mod meter;

pub use gather::Gather;
pub use meter::{read_bytes, Meter};

/// Where a node's reports go while it answers one request.
pub type NodeSink<'a> = &'a (dyn Fn(ckpt_proto::NodeProgress) + Sync);
