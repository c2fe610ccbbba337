//! Memory a pre-fork tree costs after a restore (issue 12: pages shared copy-on-write).
//!
//!   cargo run --release -p ckpt-tests --bin bench_cow -- [--mib 512] [--children 8] [--pct 10] [--reps 3]
//!
//! `prefork`: a parent fills `--mib` MiB, forks `--children` workers, each rewriting its own
//! `--pct` % of the pages. Printed, as medians: the tree's memory (the sum of its processes'
//! Pss, shared pages divided among their holders) before the checkpoint and after a restore,
//! the sum of their Rss (what the tree would cost with every page a copy of its own), and the
//! restore's time from `ckptctl restore` to the restored program's first tick.
//!
//! Uses the release binaries (`target/release`) unless CKPT_BIN_DIR is set.

use anyhow::{Context, Result};
use ckpt_tests::*;
use std::time::{Duration, Instant};

struct Sample {
    before: u64,
    after: u64,
    copies: u64,
    restore_ms: f64,
}

fn tree_sum(root: i32, f: fn(i32) -> Result<u64>) -> Result<u64> {
    std::iter::once(root).chain(descendants(root)).map(f).sum()
}

fn rss(pid: i32) -> Result<u64> {
    vm_bytes(pid, "VmRSS")
}

fn once(mib: u64, children: usize, pct: u64) -> Result<Sample> {
    let d = Daemon::start_in(&bin_dir_for("release"))?;
    let mut app = d.run_example("prefork", &[&mib.to_string(), &children.to_string(), &pct.to_string()])?;
    for i in 0..children {
        app.wait_line(|l| l.starts_with("ready"), Duration::from_secs(120))
            .with_context(|| format!("worker {i} did not start"))?;
    }
    app.expect_tick(LINE_TIMEOUT)?;
    let before = tree_sum(app.pid, pss_bytes)?;
    let cp = d.checkpoint_app(&app)?;
    let pid = app.pid;
    app.kill9_tree()?;
    let t = Instant::now();
    let mut app = d.restore_ok(&cp.id, pid)?;
    app.expect_tick(LINE_TIMEOUT)?;
    let restore_ms = t.elapsed().as_secs_f64() * 1e3;
    let after = tree_sum(pid, pss_bytes)?;
    let copies = tree_sum(pid, rss)?;
    app.kill9_tree()?;
    Ok(Sample {
        before,
        after,
        copies,
        restore_ms,
    })
}

fn main() -> Result<()> {
    let (mut mib, mut children, mut pct, mut reps) = (512u64, 8usize, 10u64, 3usize);
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = || it.next().context("a value after each option");
        match a.as_str() {
            "--mib" => mib = val()?.parse()?,
            "--children" => children = val()?.parse()?,
            "--pct" => pct = val()?.parse()?,
            "--reps" => reps = val()?.parse()?,
            _ => anyhow::bail!("usage: bench_cow [--mib N] [--children N] [--pct N] [--reps N]"),
        }
    }
    let mut samples = Vec::new();
    for r in 1..=reps {
        samples.push(once(mib, children, pct).with_context(|| format!("repetition {r}"))?);
    }
    let med = |f: &dyn Fn(&Sample) -> f64| {
        let mut v: Vec<f64> = samples.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    fn m(b: u64) -> f64 {
        b as f64 / (1u64 << 20) as f64
    }
    println!("prefork: {mib} MiB, {children} workers each rewriting {pct} %, medians of {reps}");
    println!(
        "{:>18} {:>18} {:>22} {:>12}",
        "tree Pss before", "tree Pss restored", "every page a copy", "restore ms"
    );
    println!(
        "{:>14.1} MiB {:>14.1} MiB {:>18.1} MiB {:>12.0}",
        med(&|s| m(s.before)),
        med(&|s| m(s.after)),
        med(&|s| m(s.copies)),
        med(&|s| s.restore_ms)
    );
    Ok(())
}
