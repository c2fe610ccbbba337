//! The ckpt wire protocol. Every message between processes is defined here and framed in one
//! place ([`frame`]): a little-endian u32 length, then the bincode payload; over Unix sockets
//! file descriptors may ride along with a frame.

pub mod frame;
pub mod messages;
pub mod restore_status;
pub mod slots;

pub use frame::{decode_small, encode_small, recv, send, FrameError, MAX_FRAME};
pub use messages::*;

/// Bumped on any incompatible change; peers with another version are refused at hello.
pub const PROTO_VERSION: u32 = 1;
