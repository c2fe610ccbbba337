//! The SysV IPC objects one host's processes used (`ID/HOST/sysv.img`), recorded once per host
//! however many processes share them; segment contents are in `ID/HOST/sysv.pages`, a page
//! store whose runs are addressed by offset in their segment.

use crate::PageRun;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SysvImage {
    pub objects: ckpt_kinds::sysv::Objects,
    /// The runs of each segment of `objects.shm`, in the same order (addresses are offsets).
    pub shm_pages: Vec<Vec<PageRun>>,
    /// Length of `sysv.pages`, to detect truncation.
    pub pages_len: u64,
}
