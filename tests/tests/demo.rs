//! The main job of the README: `scripts/demo.sh` (start ckptd, run a counter under ckpt-run,
//! checkpoint it, kill it, restore it). Run here with the binaries under test, so that a
//! change that breaks the demo fails CI (it once broke unnoticed: a reader it started became
//! the program's child, which refuses a checkpoint).

use anyhow::{ensure, Result};
use ckpt_tests::*;
use std::process::Command;
use std::time::Duration;

#[test]
fn demo_checkpoints_kills_and_restores_the_counter() -> Result<()> {
    require_root!();
    let mut cmd = Command::new("bash");
    cmd.arg(workspace_root().join("scripts/demo.sh"))
        .env("CKPT_BIN_DIR", bin_dir());
    let out = run_with_timeout(&mut cmd, Duration::from_secs(240))?;
    let text = format!(
        "{}\n--- stderr ---\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(out.status.success(), "the demo failed ({}):\n{text}", out.status);
    // The last tick printed before the checkpoint was asked for, the last one read once it had
    // returned, and the first tick the restored program printed: the cut lies between the
    // first two, so the restored counter goes on from there, printing again a tick printed
    // after the cut.
    let before = text
        .lines()
        .take_while(|l| !l.starts_with("== ckptctl status"))
        .filter_map(|l| l.trim().strip_prefix("tick "))
        .filter_map(|n| n.trim().parse::<u64>().ok())
        .last();
    let at = text
        .lines()
        .find_map(|l| l.split("(counter at: tick ").nth(1))
        .and_then(|r| r.trim_end_matches(')').trim().parse::<u64>().ok());
    let first = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("restored: tick "))
        .and_then(|n| n.trim().parse::<u64>().ok());
    match (before, at, first) {
        (Some(before), Some(at), Some(first)) => ensure!(
            first > before && first <= at + 1,
            "the restored counter should go on from the cut, after tick {before} and by tick {at}; it printed \
             tick {first} first:\n{text}"
        ),
        _ => anyhow::bail!("the demo did not print the ticks around the checkpoint and the restored ticks:\n{text}"),
    }
    Ok(())
}
