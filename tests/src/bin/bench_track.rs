//! Tracking-overhead benchmark (issue 13, goal 8):
//!
//!   cargo run --release -p ckpt-tests --bin bench_track -- [--sizes 256,1024] [--period 60] [--checkpoints 3] [--reps 2]
//!
//! What a program writing at full speed loses to checkpoint control between checkpoints. The
//! program (`examples/dirty_log.c` with percent 0) rewrites random pages of its memory as fast
//! as it can and prints its write count every ~200 ms. It runs, in turns:
//! - plain, without `ckpt-run` (its own throughput);
//! - under `ckpt-run`, checkpointed every `--period` seconds (default mode: dirty pages
//!   tracked with userfaultfd write-protection, pre-copied, stored incrementally while it runs);
//! - the same with `--stop-the-world --full` checkpoints (the DMTCP-like baseline, which tracks
//!   nothing but stops the program for the whole copy).
//!
//! Printed, as medians over `--reps` turns: writes per second plain; under checkpoint control
//! between checkpoints (from a checkpoint's end to the next request: the write-protect faults
//! after each cut, ckptd storing in the background, the interposer's own cost) and over the
//! whole run including the checkpoints; and the overhead against plain. Goal: ≤ 2 % between
//! checkpoints at one checkpoint a minute.
//!
//! Uses the release binaries (`target/release`) unless CKPT_BIN_DIR is set.

use anyhow::{bail, Context, Result};
use ckpt_tests::*;
use std::process::Command;
use std::time::{Duration, Instant};

/// Until then the program is still touching its memory for the first time (page faults, not
/// its steady state): left out of every measure.
const WARMUP: Duration = Duration::from_secs(5);

/// (when the line was read, the program's write count) for every `round` line since `from`.
fn samples(app: &App, from: Instant) -> Vec<(Instant, u64)> {
    app.history_lines()
        .into_iter()
        .filter(|l| l.at >= from && l.text.starts_with("round "))
        .filter_map(|l| Some((l.at, field_u64(&l.text, "writes")?)))
        .collect()
}

/// Writes per second between the first and last sample within [a, b].
fn rate(s: &[(Instant, u64)], a: Instant, b: Instant) -> Option<(f64, f64)> {
    let inside: Vec<&(Instant, u64)> = s.iter().filter(|(t, _)| *t >= a && *t <= b).collect();
    let (first, last) = (inside.first()?, inside.last()?);
    let secs = last.0.duration_since(first.0).as_secs_f64();
    (secs > 0.5).then(|| ((last.1 - first.1) as f64, secs))
}

fn plain(d: &Daemon, size: u64, secs: f64) -> Result<f64> {
    let prog = example("dirty_log")?;
    let mut cmd = Command::new(prog);
    cmd.args([size.to_string(), "0".into()]);
    let (out, err) = (d.dir().join("plain.out"), d.dir().join("plain.err"));
    let mut app = App::spawn_to_file(cmd, "dirty_log (plain)", &out, &err, vec![])?;
    app.wait_line(|l| l.starts_with("start "), Duration::from_secs(120))
        .context("the plain program did not start")?;
    let t0 = Instant::now();
    std::thread::sleep(WARMUP + Duration::from_secs_f64(secs));
    let s = samples(&app, t0);
    app.kill9()?;
    let (w, t) = rate(&s, t0 + WARMUP, Instant::now()).context("no round lines from the plain program")?;
    Ok(w / t)
}

/// (between checkpoints, overall) writes per second under checkpoint control.
fn controlled(d: &Daemon, size: u64, period: Duration, checkpoints: usize, mode: &[&str]) -> Result<(f64, f64)> {
    let mut app = d.run_example("dirty_log", &[&size.to_string(), "0"])?;
    app.wait_line(|l| l.starts_with("start "), Duration::from_secs(120))
        .context("the program did not start")?;
    let t0 = Instant::now();
    std::thread::sleep(WARMUP);
    let checkpoint = || -> Result<(Instant, Instant)> {
        let mut args = vec!["checkpoint", "--json"];
        args.extend_from_slice(mode);
        let asked = Instant::now();
        let o = d.ckptctl_timeout(&args, Duration::from_secs(600));
        if !o.status.success() {
            bail!("checkpoint failed: {}", String::from_utf8_lossy(&o.stderr));
        }
        Ok((asked, Instant::now()))
    };
    // The first checkpoint arms the tracking (and is a full one): measures start after it.
    let (_, mut done) = checkpoint()?;
    let start = done;
    let mut between = (0.0, 0.0);
    for _ in 0..checkpoints {
        std::thread::sleep(period);
        let (asked, end) = checkpoint()?;
        let s = samples(&app, t0);
        if let Some((w, t)) = rate(&s, done, asked) {
            between.0 += w;
            between.1 += t;
        }
        done = end;
    }
    let s = samples(&app, t0);
    app.kill9()?;
    let (w, t) = rate(&s, start, done).context("no round lines under checkpoint control")?;
    if between.1 == 0.0 {
        bail!("no round lines between checkpoints");
    }
    Ok((between.0 / between.1, w / t))
}

fn main() -> Result<()> {
    init();
    if !is_root() {
        bail!("the benchmark runs ckptd and needs root");
    }
    let args: Vec<String> = std::env::args().collect();
    let sizes = list_arg(&args, "--sizes", "256,1024");
    let period = Duration::from_secs(list_arg(&args, "--period", "60").first().copied().unwrap_or(60));
    let checkpoints = list_arg(&args, "--checkpoints", "3").first().copied().unwrap_or(3) as usize;
    let reps = list_arg(&args, "--reps", "2").first().copied().unwrap_or(2) as usize;
    let run_secs = (period.as_secs_f64() + 1.0) * checkpoints as f64;
    println!(
        "bench_track: dirty_log rewriting random pages at full speed; a checkpoint every {} s, {checkpoints} per run; \
         medians of {reps}",
        period.as_secs()
    );
    println!(
        "{:>8} | {:<24} | {:>16} | {:>16} | {:>14} | {:>14}",
        "size MiB", "mode", "between, writes/s", "overall, writes/s", "between vs plain", "overall vs plain"
    );
    println!("{}", "-".repeat(108));
    for &size in &sizes {
        let d = Daemon::start_with(&bin_dir_for("release"), &[])?;
        let modes: [(&str, &[&str]); 2] = [
            ("tracked, incremental", &[]),
            ("--stop-the-world --full", &["--stop-the-world", "--full"]),
        ];
        let mut plain_rates = Vec::new();
        let mut rows: Vec<Vec<(f64, f64)>> = vec![Vec::new(); modes.len()];
        // In turns, so that the machine's own drift falls on every row alike.
        for _ in 0..reps {
            plain_rates.push(plain(&d, size, run_secs).with_context(|| format!("{size} MiB plain"))?);
            for (i, (name, mode)) in modes.iter().enumerate() {
                rows[i].push(
                    controlled(&d, size, period, checkpoints, mode).with_context(|| format!("{size} MiB {name}"))?,
                );
            }
        }
        let base = median(&plain_rates);
        println!(
            "{:>8} | {:<24} | {:>16.0} | {:>16.0} | {:>14} | {:>14}",
            size, "plain (no ckpt-run)", base, base, "-", "-"
        );
        for (i, (name, _)) in modes.iter().enumerate() {
            let between = median_of(rows[i].iter().map(|r| r.0));
            let overall = median_of(rows[i].iter().map(|r| r.1));
            let pct = |r: f64| format!("{:+.1} %", (r / base - 1.0) * 100.0);
            println!(
                "{:>8} | {:<24} | {:>16.0} | {:>16.0} | {:>14} | {:>14}",
                size,
                name,
                between,
                overall,
                pct(between),
                pct(overall)
            );
        }
    }
    println!(
        "between: from a checkpoint's end to the next request (what tracking and background storing cost); \
         overall: from the end of the first checkpoint to the end of the last, checkpoints included. \
         Goal: between ≥ -2 % at one checkpoint a minute (the default --period)."
    );
    Ok(())
}
