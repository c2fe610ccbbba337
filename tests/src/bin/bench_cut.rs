//! When the cut comes under CPU load (issue 13, goal 3):
//!
//!   cargo run --release -p ckpt-tests --bin bench_cut -- [--sizes 256,1024] [--reps 3]
//!
//! Twice as many busy processes as cores, all started from the benchmark's session: one per
//! core under `ckpt-run` (`examples/busy_writer.c`: computes and writes its memory, a page at a
//! time, and prints its step count with the time every 10 ms; the size is split among them),
//! one per core outside any checkpoint (the same program, quiet, 1 MiB). ckptd is started as a
//! job of an interactive shell would start it (leading its own process group, so it cannot
//! leave the session: it shares the workload's autogroup) and as a plain child (it then puts
//! itself in a session of its own). For each size and mode (default; `--stop-the-world`),
//! `reps` checkpoints a second apart (the first of a row's ckptd is full); printed, as
//! medians: from just before `ckptctl checkpoint --json` runs to the first program parked (the
//! cut), and to ckptctl's answer; how long the programs were parked; and how many steps the
//! first writer made between the request and the cut (its own count, from its lines: the
//! last one it printed before each moment), against the goal (the cut at most 1 s after the
//! request).
//!
//! Uses the release binaries (`target/release`) unless CKPT_BIN_DIR is set.

use anyhow::{bail, Context, Result};
use ckpt_tests::*;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The cut at most this long after the request.
const GOAL_MS: f64 = 1000.0;

struct Sample {
    cut_ms: f64,
    done_ms: f64,
    stop_ms: f64,
    steps: f64,
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as u64
}

/// The writer's step count at `at_us`: the last it printed before then.
fn steps_at(app: &App, at_us: u64) -> Option<u64> {
    app.history()
        .iter()
        .filter(|l| l.starts_with("done "))
        .filter_map(|l| Some((field_u64(l, "done")?, field_u64(l, "at_us")?)))
        .filter(|&(_, t)| t <= at_us)
        .map(|(s, _)| s)
        .max()
}

/// Busy processes outside any checkpoint, one per core.
struct Load(Vec<Child>);

impl Load {
    fn start(n: usize) -> Result<Load> {
        let prog = example("busy_writer")?;
        let mut v = Vec::new();
        for _ in 0..n {
            v.push(spawn_tracked(
                Command::new(&prog)
                    .args(["1", "quiet"])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null()),
            )?);
        }
        Ok(Load(v))
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One row: ckptd started one way, programs of `size` MiB in all, `reps` checkpoints per mode.
fn run(size: u64, job: bool, reps: usize, cores: usize) -> Result<Vec<(&'static str, Vec<Sample>)>> {
    let extra = ["--keep", "2"];
    let d = if job {
        Daemon::start_job(&bin_dir_for("release"), &extra)?
    } else {
        Daemon::start_with(&bin_dir_for("release"), &extra)?
    };
    let each = (size / cores as u64).max(1).to_string();
    let mut writers = Vec::new();
    for _ in 0..cores {
        writers.push(d.run_example("busy_writer", &[&each])?);
    }
    for w in &writers {
        w.expect_line(
            "its first step count",
            |l| l.starts_with("done "),
            Duration::from_secs(120),
        )?;
    }
    let _load = Load::start(cores)?;
    std::thread::sleep(Duration::from_secs(1));
    let first = &writers[0];
    let mut rows = Vec::new();
    for (name, mode) in [("default", &[][..]), ("stop-the-world", &["--stop-the-world"][..])] {
        let mut samples = Vec::new();
        for _ in 0..reps {
            let mut args = vec!["checkpoint", "--json"];
            args.extend_from_slice(mode);
            let asked = now_us();
            let o = d.ckptctl_timeout(&args, Duration::from_secs(600));
            let answered = now_us();
            if !o.status.success() {
                bail!(
                    "checkpoint failed: {}\n{}",
                    String::from_utf8_lossy(&o.stderr),
                    d.context()
                );
            }
            let v: serde_json::Value = serde_json::from_str(json_result(&String::from_utf8_lossy(&o.stdout)))?;
            let cut = v["first_parked_at_us"].as_u64().context("no first_parked_at_us")?;
            // Its lines up to the cut have all been read once one printed after it has.
            first.expect_line(
                "a step count after the cut",
                |l| l.starts_with("done ") && field_u64(l, "at_us").is_some_and(|t| t > cut),
                Duration::from_secs(60),
            )?;
            let steps = match (steps_at(first, asked), steps_at(first, cut)) {
                (Some(a), Some(c)) => c.saturating_sub(a) as f64,
                _ => f64::NAN,
            };
            if std::env::var_os("BENCH_VERBOSE").is_some() {
                eprintln!("{name}: report {v}");
            }
            samples.push(Sample {
                cut_ms: cut.saturating_sub(asked) as f64 / 1000.0,
                done_ms: answered.saturating_sub(asked) as f64 / 1000.0,
                stop_ms: v["max_stop_us"].as_f64().unwrap_or(0.0) / 1000.0,
                steps,
            });
            std::thread::sleep(Duration::from_secs(1));
        }
        rows.push((name, samples));
    }
    Ok(rows)
}

fn main() -> Result<()> {
    init();
    if !is_root() {
        bail!("the benchmark checkpoints programs and needs root");
    }
    let args: Vec<String> = std::env::args().collect();
    let sizes = list_arg(&args, "--sizes", "256,1024");
    let reps = list_arg(&args, "--reps", "3").first().copied().unwrap_or(3).max(1) as usize;
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    println!(
        "bench_cut: {} busy processes on {cores} cores ({cores} under ckpt-run writing their memory, {cores} \
         outside), {reps} checkpoints per row a second apart, medians",
        2 * cores
    );
    println!(
        "{:>8} | {:<22} | {:<14} | {:>13} | {:>14} | {:>9} | {:>14} | {:>10}",
        "size MiB", "ckptd started", "mode", "request→cut", "request→done", "stop ms", "steps till cut", "goal"
    );
    println!("{}", "-".repeat(125));
    for &size in &sizes {
        for job in [true, false] {
            let how = if job {
                "job of the shell"
            } else {
                "own session (setsid)"
            };
            let rows = run(size, job, reps, cores).with_context(|| format!("{size} MiB, ckptd as {how}"))?;
            for (mode, s) in rows {
                let cut = median_of(s.iter().map(|x| x.cut_ms));
                println!(
                    "{:>8} | {:<22} | {:<14} | {:>10.0} ms | {:>11.0} ms | {:>9.0} | {:>14.0} | {:>10}",
                    size,
                    how,
                    mode,
                    cut,
                    median_of(s.iter().map(|x| x.done_ms)),
                    median_of(s.iter().map(|x| x.stop_ms)),
                    median_of(s.iter().map(|x| x.steps)),
                    if cut <= GOAL_MS { "≤ 1000 ok" } else { "≤ 1000 OVER" },
                );
            }
        }
    }
    println!(
        "request→cut: from just before ckptctl runs to the first program parked; request→done: to its \
         answer; stop: how long ckptd had the programs parked; steps till cut: pages the first writer \
         wrote between the request and the cut (its own count); ckptd's pre-copy budget is its default, \
         750 ms"
    );
    Ok(())
}
