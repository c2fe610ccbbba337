//! Memory shared between checkpointed processes comes back shared (issue 11's first part, and
//! what nginx's master and workers need): an anonymous MAP_SHARED mapping inherited across fork
//! and a memfd mapped at different offsets by a parent and its child. The parent checks after
//! each restore that contents are intact and that the child answers through both mappings.

use anyhow::{Context, Result};
use ckpt_tests::*;

#[test]
fn shared_memory_between_processes_stays_shared() -> Result<()> {
    require_root!();
    let d = Daemon::start()?;
    let mut app = d.run_example("shared_anon", &[])?;
    let pid = app.pid;
    let l = app.expect_line("`child PID`", |l| l.starts_with("child "), LINE_TIMEOUT)?;
    let child: i32 = field(&l, "child")
        .and_then(|s| s.parse().ok())
        .context("bad child line")?;
    let t0 = std::time::Instant::now();
    while !d.status_pids()?.contains(&child) {
        anyhow::ensure!(
            t0.elapsed() < LINE_TIMEOUT,
            "the child did not register\n{}",
            d.context()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    ask_state(&app).context("before any checkpoint")?;
    for round in 1..=2 {
        let id = d
            .checkpoint()
            .with_context(|| format!("checkpoint {round}\n{}", d.context()))?;
        app.kill9_tree()?;
        app = d.restore_ok(&id, pid).with_context(|| format!("restore {round}"))?;
        app.expect_tick(LINE_TIMEOUT)?;
        ask_state(&app).with_context(|| format!("after restore {round}\n{}", d.context()))?;
    }
    app.kill9_tree()?;
    Ok(())
}

/// A /dev/shm file mapped shared is the file after restore, not a copy of its content: what the
/// program writes through the mapping is in the file others open by name.
#[test]
fn dev_shm_mapping_stays_the_file() -> Result<()> {
    require_root!();
    let path = format!(
        "/dev/shm/ckpt-test-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos()
    );
    let r = survives_two_restores("dev_shm_map.py", &[&path]);
    let _ = std::fs::remove_file(&path);
    r
}
