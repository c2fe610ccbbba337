//! Linux plumbing shared by ckpt's binaries.

pub mod caps;
pub mod cli;
pub mod kill;
pub mod pagemap;
pub mod paths;
pub mod peer;
pub mod probe;
pub mod procfs;
pub mod seccomp;
pub mod spawn;
pub mod uffd;
