//! The status pipe from a restorer to the ckptd that started it. The restorer's last stage is
//! hand-written assembly with the program's memory already in place, so its failure record is a
//! fixed binary layout (see `crates/restorer/src/blob.rs`), not a bincode frame.
//!
//! A record starts with a u64 tag. EOF with no record means success.

/// Followed by a u64 length and that many bytes of UTF-8: an error found before the point of no
/// return.
pub const TAG_TEXT: u64 = 1;
/// Followed by 4 u64: op index, the (negative) syscall result, op kind, first argument.
pub const TAG_OP: u64 = 2;

pub fn encode_text(msg: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(16 + msg.len());
    v.extend_from_slice(&TAG_TEXT.to_le_bytes());
    v.extend_from_slice(&(msg.len() as u64).to_le_bytes());
    v.extend_from_slice(msg.as_bytes());
    v
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Text(String),
    Op { index: u64, ret: i64, kind: u64, arg0: u64 },
}

/// Parses everything the restorer wrote; `None` when it wrote nothing (success).
pub fn decode(bytes: &[u8]) -> Option<Status> {
    let u64_at = |o: usize| {
        bytes
            .get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()))
    };
    match u64_at(0)? {
        TAG_TEXT => {
            let len = u64_at(8)? as usize;
            let text = bytes.get(16..16 + len.min(bytes.len().saturating_sub(16)))?;
            Some(Status::Text(String::from_utf8_lossy(text).into_owned()))
        }
        TAG_OP => Some(Status::Op {
            index: u64_at(8)?,
            ret: u64_at(16)? as i64,
            kind: u64_at(24)?,
            arg0: u64_at(32)?,
        }),
        other => Some(Status::Text(format!(
            "restorer wrote an unknown status record (tag {other})"
        ))),
    }
}
