//! Acceptance 4: append_lines into a file — after checkpoint, more appends,
//! kill -9, restore, more appends, the file holds `line 1` .. `line M`
//! exactly once each, in order (the restore rolls the file back to its
//! checkpoint-time size).

use anyhow::{bail, ensure, Context, Result};
use ckpt_tests::*;
use std::fs;
use std::time::Duration;

fn check_lines(text: &str) -> std::result::Result<usize, String> {
    let mut n = 0usize;
    for (i, l) in text.split_inclusive('\n').enumerate() {
        let want = format!("line {}\n", i + 1);
        if l != want {
            let lines: Vec<&str> = text.lines().collect();
            let lo = i.saturating_sub(3);
            let hi = (i + 4).min(lines.len());
            return Err(format!(
                "line #{} is {:?}, expected {:?}; around it: {:?} (file has {} lines)",
                i + 1,
                l,
                want,
                &lines[lo..hi],
                lines.len()
            ));
        }
        n = i + 1;
    }
    Ok(n)
}

#[test]
fn append_lines_file_consistent_after_restore() -> Result<()> {
    require_root!();
    let d = Daemon::start()?;
    let path = d.dir().join("append.txt");
    let path_s = path.to_str().unwrap().to_string();
    let mut app = d.run_example("append_lines", &[&path_s])?;
    let pid = app.pid;
    let t = app.expect_tick(LINE_TIMEOUT)?;
    ensure!(t >= 100, "first tick should be >= 100 lines, got {t}");

    let cp = d.checkpoint_app(&app)?;
    note!(
        "checkpoint {} took {:?}; lines ~{}..{}",
        cp.id,
        cp.took,
        cp.last_before,
        cp.first_after
    );
    std::thread::sleep(Duration::from_secs(1));
    app.kill9()?;
    let before = fs::read_to_string(&path)?;
    let m1 = check_lines(&before).map_err(|e| anyhow::anyhow!("file broken before the restore: {e}"))?;
    note!("killed {pid} with {m1} lines in the file");

    let mut r = d.restore_ok(&cp.id, pid)?;
    let rt = r
        .expect_tick(Duration::from_secs(20))
        .context("restored append_lines should keep ticking")?;
    cp.check_resumed(rt, &r).or_else(|e| {
        // tick lines come every 100 lines, so "carry on" means the
        // restored tick is the next multiple of 100 after the checkpoint.
        if rt > cp.last_before && rt <= cp.first_after + 100 {
            Ok(())
        } else {
            Err(e)
        }
    })?;
    std::thread::sleep(Duration::from_secs(1));
    r.kill9()?;

    let text = fs::read_to_string(&path)?;
    let m = match check_lines(&text) {
        Ok(m) => m,
        Err(e) => bail!(
            "{} after restore: {e}\n(the checkpoint was taken around line {}; the file had {m1} \
             lines when the original was killed; the restored program's first tick was {rt})\n{}",
            path.display(),
            cp.first_after,
            r.context()
        ),
    };
    ensure!(
        m as u64 >= rt,
        "the file has {m} lines but the restored program reported tick {rt}"
    );
    note!("file ok: line 1 .. line {m}");
    Ok(())
}
