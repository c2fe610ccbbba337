//! Restore to first output, eager against lazy (issue 13, goal 6).
//!
//!   cargo run --release -p ckpt-tests --bin bench_lazy -- [--sizes 1024,4096] [--reps 3]
//!
//! For each size: a fresh ckptd, `mem_pattern <size>` under ckpt-run, one checkpoint, the
//! program killed; then, `--reps` times each, `ckptctl restore` and `ckptctl restore --lazy`
//! of it, timed from the start of ckptctl to the first tick line the restored program prints
//! (it prints one as soon as it has verified and rewritten the 1 MiB chunk it was at), and for
//! the lazy one also to ckptctl's exit (every page in). Medians are printed as a table.
//!
//! Uses the release binaries (`target/release`) unless CKPT_BIN_DIR is set.

use anyhow::{bail, Context, Result};
use ckpt_tests::*;
use std::time::{Duration, Instant};

fn usage() -> ! {
    eprintln!("usage: bench_lazy [--sizes MiB,MiB,...] [--reps N]   (default --sizes 1024,4096 --reps 3)");
    std::process::exit(2);
}

struct Opts {
    sizes: Vec<u64>,
    reps: usize,
}

fn parse_args() -> Opts {
    let mut o = Opts {
        sizes: vec![1024, 4096],
        reps: 3,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let (key, val) = match a.split_once('=') {
            Some((k, v)) => (k.to_string(), Some(v.to_string())),
            None => (a.clone(), None),
        };
        let mut val = || val.clone().or_else(|| it.next()).unwrap_or_else(|| usage());
        match key.as_str() {
            "--sizes" => {
                o.sizes = val()
                    .split(',')
                    .map(|s| s.trim().parse().unwrap_or_else(|_| usage()))
                    .collect();
                if o.sizes.is_empty() || o.sizes.contains(&0) {
                    usage();
                }
            }
            "--reps" => {
                o.reps = val().parse().unwrap_or_else(|_| usage());
                if o.reps == 0 {
                    usage();
                }
            }
            _ => usage(),
        }
    }
    o
}

/// One restore: ms to the first tick, and to ckptctl's exit.
fn restore_once(d: &Daemon, id: &str, pid: i32, lazy: bool) -> Result<(f64, f64)> {
    let extra: &[&str] = if lazy { &["--lazy"] } else { &[] };
    let t0 = Instant::now();
    let mut r = d.restore_args(id, pid, extra)?;
    let first = r
        .expect_line_at(
            "the first tick after restore",
            |l| tick_num(l).is_some(),
            Duration::from_secs(300),
        )
        .context("restore")?;
    let to_tick = first.at.duration_since(t0);
    let st = r.wait_child_exit(Duration::from_secs(300))?;
    let to_exit = t0.elapsed();
    if !st.success() {
        bail!("ckptctl restore {id} failed: {}\n{}", fmt_status(&st), r.context());
    }
    if !first.text.trim_end().ends_with(" ok") {
        bail!("restored program printed {:?}\n{}", first.text, r.context());
    }
    // It runs on, verifying and rewriting its memory chunk by chunk.
    r.expect_consecutive_ticks(tick_num(&first.text).unwrap_or(0), 2, true, LINE_TIMEOUT)?;
    r.kill9()?;
    Ok((to_tick.as_secs_f64() * 1e3, to_exit.as_secs_f64() * 1e3))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() -> Result<()> {
    let o = parse_args();
    if !is_root() {
        eprintln!("bench_lazy: warning: not root; restore will probably fail");
    }
    println!(
        "{:>8} {:>16} {:>16} {:>18}",
        "size MiB", "eager ->tick ms", "lazy ->tick ms", "lazy all-in ms"
    );
    for &size in &o.sizes {
        let d = Daemon::start_in(&bin_dir_for("release"))?;
        let size_s = size.to_string();
        let mut app = d.run_example("mem_pattern", &[&size_s])?;
        let pid = app.pid;
        let t = app.expect_tick(Duration::from_secs(600))?;
        app.expect_consecutive_ticks(t, 2, true, LINE_TIMEOUT)?;
        let id = d.checkpoint()?;
        app.kill9()?;
        let (mut eager, mut lazy, mut all_in) = (Vec::new(), Vec::new(), Vec::new());
        for rep in 0..o.reps {
            let (e, _) = restore_once(&d, &id, pid, false)?;
            let (l, a) = restore_once(&d, &id, pid, true)?;
            eprintln!("{size} MiB rep {rep}: eager {e:.1} ms, lazy {l:.1} ms to the first tick, {a:.1} ms all in");
            eager.push(e);
            lazy.push(l);
            all_in.push(a);
        }
        println!(
            "{:>8} {:>16.1} {:>16.1} {:>18.1}",
            size,
            median(eager),
            median(lazy),
            median(all_in)
        );
    }
    Ok(())
}
