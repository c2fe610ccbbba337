//! Pages a parent and its child share copy-on-write since the fork (issue 12): after a
//! restore, every page neither wrote is again one physical page for both, in anonymous memory,
//! the brk heap and a private file mapping, and every page one of them wrote is its own (`examples/cow_pages.c`
//! checks through both pagemaps, and the content of each page in each process).

use anyhow::Result;
use ckpt_tests::*;

#[test]
fn pages_shared_since_the_fork_stay_shared_twice() -> Result<()> {
    require_root!();
    let dir = tempfile::Builder::new().prefix("ckpt-cow-").tempdir()?;
    survives_two_restores("cow_pages", &[path_arg(dir.path())?])
}
