use std::path::PathBuf;

/// Everything that can be wrong with a checkpoint on disk.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a ckpt {what} file (bad magic); the image is corrupt or not an image")]
    BadMagic { path: PathBuf, what: &'static str },
    #[error("{path}: truncated: {what} needs {expected} bytes, the file has {got}; the image is damaged, restore another checkpoint")]
    Truncated {
        path: PathBuf,
        what: &'static str,
        expected: u64,
        got: u64,
    },
    #[error("{path}: checksum mismatch in {what}; the image is corrupt, restore another checkpoint")]
    Checksum { path: PathBuf, what: String },
    #[error("{path}: format version {found} is newer than this ckpt supports ({supported}); upgrade ckpt to read it")]
    Version { path: PathBuf, found: u32, supported: u32 },
    #[error(
        "{path}: written by an older ckpt (format {found}; this one reads {oldest} and later); take a new checkpoint"
    )]
    Old { path: PathBuf, found: u32, oldest: u32 },
    #[error("{path}: cannot decode {what}: {msg}")]
    Decode {
        path: PathBuf,
        what: &'static str,
        msg: String,
    },
    #[error("checkpoint {id} does not exist (see `ckptctl list`)")]
    UnknownId { id: String },
    #[error("checkpoint {id} is incomplete (no valid MANIFEST); it cannot be restored")]
    Incomplete { id: String },
}

impl FormatError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        FormatError::Io {
            path: path.into(),
            source,
        }
    }
}
