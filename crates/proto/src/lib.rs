//! The ckpt wire protocol. Every message between processes is defined here and framed in one
//! place ([`frame`]): a little-endian u32 length, then the bincode payload; over Unix sockets
//! file descriptors may ride along with a frame.

pub mod frame;
pub mod lazy;
pub mod messages;
pub mod restore_status;
pub mod slots;

pub use frame::{decode_small, encode_small, recv, send, FrameError, MAX_FRAME};
pub use messages::*;

/// Name the restorer gives its leftover mapping in a restored process (`PR_SET_VMA_ANON_NAME`),
/// and how /proc/PID/maps shows it: never part of the program, never tracked or stored.
pub const RESTORER_VMA_ANON_NAME: &std::ffi::CStr = c"ckpt-restorer";
pub const RESTORER_VMA_NAME: &str = "[anon:ckpt-restorer]";

/// Bumped on any incompatible change; peers with another version are refused at hello.
/// 3: progress events (`CtlReply::Progress`, `FromNode::Progress`).
/// 4: lazy restore (`CtlRequest::Restore::lazy`, `WaitLoaded`, `ProcessStatus::loading`).
/// 5: a child's restorer is a fork of its parent's (`TreeStep::Fork` without prog and envp).
pub const PROTO_VERSION: u32 = 5;

#[cfg(test)]
mod tests {
    #[test]
    fn restorer_names_agree() {
        let anon = super::RESTORER_VMA_ANON_NAME.to_str().unwrap_or_default();
        assert_eq!(format!("[anon:{anon}]"), super::RESTORER_VMA_NAME);
    }
}
