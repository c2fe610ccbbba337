//! Acceptance 3 (incremental checkpoints): the address space changes
//! between two checkpoints.  `map_changes` does one step per SIGUSR2 (mmap
//! a new region, munmap half of one, mremap one to twice its size, sbrk up,
//! sbrk down, MADV_DONTNEED, a modified private file mapping; then again
//! with new regions) and verifies every region, the holes it made and the
//! program break on SIGUSR1.
//!
//! A checkpoint at start (full) and one after each of 14 steps (two cycles;
//! incremental: each names the previous as parent).  Then every checkpoint
//! is restored in turn (the running instance killed first): `verify ok`
//! with the step number of that checkpoint.

use anyhow::{bail, Context, Result};
use ckpt_tests::*;
use std::time::{Duration, Instant};

const STEPS: u64 = 14;
const VERIFY_TIMEOUT: Duration = Duration::from_secs(30);

struct Taken {
    id: String,
    step: u64,
    what: String,
    stored_bytes: u64,
}

#[test]
fn map_changes_checkpoint_after_each_step_restore_each() -> Result<()> {
    require_root!();
    let d = Daemon::start()?;
    let dir = d.dir().display().to_string();
    let mut app = d.run_example("map_changes", &[&dir])?;
    let pid = app.pid;
    let ready = app.expect_line("the `ready` line", |l| l.starts_with("ready "), LINE_TIMEOUT)?;
    note!("{ready}");

    let mut taken: Vec<Taken> = Vec::new();
    let mut problems: Vec<String> = Vec::new();
    for step in 0..=STEPS {
        let what = if step == 0 {
            "start".to_string()
        } else {
            app.signal(libc::SIGUSR2)?;
            let l = app.expect_line(
                &format!("`step {step} ... ok`"),
                |l| l.starts_with("step ") || l.starts_with("STEP FAILED") || l.starts_with("VERIFY FAILED"),
                LINE_TIMEOUT,
            )?;
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() != 4 || f[0] != "step" || f[1] != step.to_string() || f[3] != "ok" {
                bail!("expected `step {step} <what> ok`, got {l:?}\n{}", app.context());
            }
            f[2].to_string()
        };
        let st = d
            .checkpoint_json(&[])
            .with_context(|| format!("checkpoint after step {step} ({what})\n{}", app.context()))?;
        let (parent, proc_parents) = d.manifest_parent(&st.id)?;
        let want = taken.last().map(|t| t.id.clone());
        note!(
            "step {step:2} {what:8}: checkpoint {} parent {parent:?} stored {} bytes, max stop {} us",
            st.id,
            st.stored_bytes,
            st.max_stop_us
        );
        if parent != want {
            problems.push(format!(
                "checkpoint {} after step {step} ({what}): manifest.parent is {parent:?}, expected {want:?} \
                 (the process entries' parents: {proc_parents:?})",
                st.id
            ));
        }
        taken.push(Taken {
            id: st.id,
            step,
            what,
            stored_bytes: st.stored_bytes,
        });
    }
    let l = app
        .verify(VERIFY_TIMEOUT)
        .context("verifying the original map_changes")?;
    note!("original: {l}");
    app.kill9()?;

    let mut failed: Vec<String> = Vec::new();
    for t in &taken {
        let t0 = Instant::now();
        let r = (|| -> Result<String> {
            let mut r = d.restore_ok(&t.id, pid)?;
            let l = r.verify(VERIFY_TIMEOUT)?;
            if field(&l, "step") != Some(t.step.to_string().as_str()) {
                bail!(
                    "restored checkpoint {} (taken after step {}) reports {l:?}: wrong step\n{}",
                    t.id,
                    t.step,
                    r.context()
                );
            }
            r.kill9()?;
            Ok(l)
        })();
        match r {
            Ok(l) => note!(
                "restore {} (after step {} {}) in {:?}: {l}",
                t.id,
                t.step,
                t.what,
                t0.elapsed()
            ),
            Err(e) => {
                note!("restore {} (after step {} {}) FAILED: {e:#}", t.id, t.step, t.what);
                failed.push(format!(
                    "checkpoint {} (after step {} {}, {} bytes stored): {e:#}",
                    t.id, t.step, t.what, t.stored_bytes
                ));
            }
        }
        if proc_exists(pid) {
            kill9_and_wait(pid)?;
        }
        reap_orphans();
    }
    if !failed.is_empty() || !problems.is_empty() {
        let mut msg = String::new();
        for p in problems.iter().chain(failed.iter()) {
            msg.push_str(&format!("- {p}\n"));
        }
        bail!(
            "{} of {} restores failed; {} other problem(s):\n{msg}{}",
            failed.len(),
            taken.len(),
            problems.len(),
            d.context()
        );
    }
    Ok(())
}
