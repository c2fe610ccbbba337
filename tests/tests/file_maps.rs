//! File mappings (issue 12): every combination of protection, sharing and file access comes
//! back as it was, with what the kernel lets the program do with it (`examples/file_maps.c`
//! compares the VmFlags `mr mw me ms` of each mapping): a private mapping of a file opened
//! read-only that the program made writable and wrote, PROT_NONE guards inside private and
//! shared file mappings, a shared read-only mapping that must stay impossible to make
//! writable, one of a file opened read-write that may be made writable (its fd closed), a
//! file mapped both private and shared writable. Restored twice.

use anyhow::Result;
use ckpt_tests::*;

#[test]
fn file_mappings_keep_protection_and_access() -> Result<()> {
    require_root!();
    let dir = tempfile::tempdir()?;
    survives_two_restores("file_maps", &[dir.path().to_str().unwrap()])
}
