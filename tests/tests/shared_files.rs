//! A regular file's open file description shared by several processes (opened before fork,
//! like a shell's `> out` inherited by its children) comes back one description, shared: the
//! writers go on writing each at the offset the other left, nothing overwritten.

use anyhow::Result;
use ckpt_tests::*;

#[test]
fn writers_sharing_one_offset_keep_sharing_it_twice() -> Result<()> {
    require_root!();
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("out");
    survives_two_restores("shared_offset", &[out.to_str().unwrap()])
}
