//! Store-window benchmark (issue 4): a program that rewrites its memory faster than the
//! pre-copy can follow.
//!
//!   cargo run --release -p ckpt-tests --bin bench_window -- [--sizes 256,1024] [--reps 5]
//!
//! `dirty_log MiB 0` writes random pages as fast as it can. Each size is checkpointed `reps`
//! times (after a first, full one) with ckptd's default, where long stretches written since
//! the last pre-copy round stay in place, protected, and are stored while the program runs (a
//! write to one waits for that page), and with `ckptd --no-store-window`, where all of it is
//! copied while the program is stopped. Printed, as medians: how long ckptd had the program
//! parked, the checkpoint's wall time, the bytes it stored, the bytes that went through the
//! window and how many of the program's writes waited for a page, and the program's write
//! rate during the checkpoint against its rate just before.
//!
//! Uses the release binaries (`target/release`) unless CKPT_BIN_DIR is set.

use anyhow::{bail, Context, Result};
use ckpt_tests::*;
use std::time::{Duration, Instant};

struct Sample {
    stop_ms: f64,
    ckpt_ms: f64,
    stored_mib: f64,
    window_mib: f64,
    waited: f64,
    /// Writes per second during the checkpoint over writes per second before it.
    rate: f64,
    /// Pages stored over pages changed since the parent (read from the images).
    over_written: f64,
}

/// The write count of the program's next `round` line, and when it arrived.
fn next_round(app: &App) -> Result<(u64, Instant)> {
    let l = app
        .wait_line(|l| l.starts_with("round "), Duration::from_secs(60))
        .context("dirty_log printed no round line")?;
    let n = field_u64(&l, "writes").context("round line without writes")?;
    Ok((n, Instant::now()))
}

fn run(size: u64, daemon: &[&str], reps: usize) -> Result<Vec<Sample>> {
    let d = Daemon::start_with(&bin_dir_for("release"), daemon)?;
    let size_s = size.to_string();
    let app = d.run_example("dirty_log", &[&size_s, "0"])?;
    app.wait_line(|l| l.starts_with("start "), Duration::from_secs(300))
        .context("dirty_log did not start")?;
    for _ in 0..3 {
        next_round(&app)?;
    }
    let first = d.ckptctl_timeout(&["checkpoint", "--json"], Duration::from_secs(600));
    if !first.status.success() {
        bail!("first checkpoint failed: {}", String::from_utf8_lossy(&first.stderr));
    }
    let id_of = |o: &std::process::Output| -> Result<(serde_json::Value, String)> {
        let v: serde_json::Value = serde_json::from_str(json_result(&String::from_utf8_lossy(&o.stdout)))?;
        let id = v["id"].as_str().context("no id in the checkpoint report")?.to_string();
        Ok((v, id))
    };
    let mut parent = id_of(&first)?.1;
    let mut out = Vec::new();
    for _ in 0..reps {
        app.drain();
        let (w0, t0) = next_round(&app)?;
        let (w1, t1) = next_round(&app)?;
        let before = (w1 - w0) as f64 / (t1 - t0).as_secs_f64();
        let o = d.ckptctl_timeout(&["checkpoint", "--json"], Duration::from_secs(600));
        if !o.status.success() {
            bail!("checkpoint failed: {}", String::from_utf8_lossy(&o.stderr));
        }
        // The program prints every ~200 ms: its rate over the round lines around the checkpoint.
        let (w2, t2) = next_round(&app)?;
        let during = (w2 - w1) as f64 / (t2 - t1).as_secs_f64();
        let (v, id) = id_of(&o)?;
        let (stored, changed) = written::stored_and_changed(&d, app.pid, &parent, &id)?;
        parent = id;
        if std::env::var_os("BENCH_VERBOSE").is_some() {
            eprintln!("report {v}");
        }
        let ms = |k: &str| v[k].as_f64().unwrap_or(0.0) / 1000.0;
        let mib = |k: &str| v[k].as_f64().unwrap_or(0.0) / 1048576.0;
        out.push(Sample {
            stop_ms: ms("max_stop_us"),
            ckpt_ms: ms("duration_us"),
            stored_mib: mib("stored_bytes"),
            window_mib: mib("window_bytes"),
            waited: v["window_faults"].as_f64().unwrap_or(0.0),
            rate: during / before.max(1.0),
            over_written: stored as f64 / changed.max(1) as f64,
        });
    }
    Ok(out)
}

fn main() -> Result<()> {
    init();
    if !is_root() {
        bail!("the benchmark needs root");
    }
    let args: Vec<String> = std::env::args().collect();
    let sizes = list_arg(&args, "--sizes", "256,1024");
    let reps = list_arg(&args, "--reps", "5").first().copied().unwrap_or(5) as usize;
    println!("bench_window: dirty_log writing random pages as fast as it can, {reps} checkpoints per row, medians");
    println!(
        "{:>8} | {:<16} | {:>8} | {:>8} | {:>10} | {:>10} | {:>12} | {:>10} | {:>15}",
        "size MiB",
        "mode",
        "stop ms",
        "ckpt ms",
        "stored MiB",
        "window MiB",
        "writes waited",
        "write rate",
        "stored/written"
    );
    println!("{}", "-".repeat(123));
    for &size in &sizes {
        let modes: [(&str, &[&str]); 2] = [("store window", &[]), ("copy while parked", &["--no-store-window"])];
        for (name, daemon) in modes {
            let s = run(size, daemon, reps).with_context(|| format!("{size} MiB {name}"))?;
            println!(
                "{:>8} | {:<16} | {:>8.1} | {:>8.0} | {:>10.1} | {:>10.1} | {:>12.0} | {:>9.2}x | {:>14.3}x",
                size,
                name,
                median_of(s.iter().map(|x| x.stop_ms)),
                median_of(s.iter().map(|x| x.ckpt_ms)),
                median_of(s.iter().map(|x| x.stored_mib)),
                median_of(s.iter().map(|x| x.window_mib)),
                median_of(s.iter().map(|x| x.waited)),
                median_of(s.iter().map(|x| x.rate)),
                median_of(s.iter().map(|x| x.over_written)),
            );
        }
    }
    println!(
        "stop: how long ckptd had the program parked; window MiB: written just before the stop, left in \
         place and stored while it ran; writes waited: its writes to such pages not stored yet (each \
         waited for that page alone); write rate: its writes per second from the round line before the \
         checkpoint to the first after it, over its rate just before; stored/written: pages the \
         checkpoint stored over pages whose content changed since its parent, read from both images \
         (goal: at most 1.1)"
    );
    Ok(())
}
