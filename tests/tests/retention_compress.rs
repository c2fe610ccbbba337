//! Issue 4: `ckptd --keep N` keeps only the newest N checkpoints, the survivors stay
//! restorable; `ckptd --compress` stores compressible memory smaller and restores it exactly.

use anyhow::{ensure, Context, Result};
use ckpt_tests::*;
use std::time::Duration;

const VERIFY_TIMEOUT: Duration = Duration::from_secs(60);

#[test]
fn keep_three_deletes_older_checkpoints_and_the_rest_restores() -> Result<()> {
    require_root!();
    let d = Daemon::start_with(&bin_dir(), &["--keep", "3"])?;
    let mut app = d.run_example("dirty_log", &["64", "1", "50"])?;
    let pid = app.pid;
    app.expect_line("a round", |l| l.starts_with("round "), LINE_TIMEOUT)?;
    let mut ids = Vec::new();
    for _ in 0..6 {
        ids.push(d.checkpoint_json(&[])?.id);
        std::thread::sleep(Duration::from_millis(150));
    }
    let kept = d.committed_ids();
    ensure!(
        kept == ids[3..].to_vec(),
        "--keep 3 should leave {:?}, the store lists {kept:?}\n{}",
        &ids[3..],
        d.context()
    );
    app.kill9()?;
    for id in &ids[3..] {
        let restored = d
            .restore_ok(id, pid)
            .with_context(|| format!("restore of kept checkpoint {id}"))?;
        let l = restored.verify(VERIFY_TIMEOUT)?;
        note!("restored {id}: {l}");
        kill9_and_wait(pid)?;
    }
    Ok(())
}

#[test]
fn compressed_store_is_smaller_and_restores() -> Result<()> {
    require_root!();
    let d = Daemon::start_with(&bin_dir(), &["--compress"])?;
    // map_changes fills its regions with a simple pattern: it compresses well.
    let dir = d.dir().to_string_lossy().into_owned();
    let mut app = d.run_example("map_changes", &[&dir, "auto"])?;
    let pid = app.pid;
    app.expect_line("step 3", |l| l.starts_with("step 3"), LINE_TIMEOUT)?;
    let st = d.checkpoint_json(&["--full"])?;
    let (on_disk, _) = dir_usage(&d.ckpt_dir(&st.id))?;
    note!("stored {} bytes of pages, {} bytes on disk", st.stored_bytes, on_disk);
    ensure!(
        on_disk < st.stored_bytes,
        "with --compress the checkpoint ({on_disk} bytes on disk) should be smaller than its pages ({})",
        st.stored_bytes
    );
    app.kill9()?;
    let restored = d.restore_ok(&st.id, pid)?;
    restored.verify(VERIFY_TIMEOUT)?;
    Ok(())
}
