//! Linux plumbing shared by ckpt's binaries.

pub mod paths;
pub mod procfs;
pub mod spawn;
