//! Incremental-checkpoint benchmark (issue 4):
//!
//!   cargo run --release -p ckpt-tests --bin bench_incr -- [--sizes 256,1024,4096] [--reps 3] [--rows 1,2,3,4]
//!
//! For each size, a program (`examples/dirty_stall.c`) that filled its memory writes 10% of its
//! pages at random between checkpoints. After a first full checkpoint, each measured
//! checkpoint is taken right after such a round: in the default mode (tracked, pre-copied,
//! incremental), with `--stop-the-world` (incremental, but read and written while the program
//! is stopped) and with `--stop-the-world --full` (the DMTCP-like baseline); and with
//! `ckptd --compress`. Printed, as medians: how long the program was stopped (its own
//! longest stall, the same measured over a quiet stretch as the machine's noise floor, and
//! ckptd's own count), the checkpoint's wall time, the bytes it stored, its store rate
//! against the disk's write rate measured in the same run, and the time of a 10% write round
//! with dirty tracking armed against the same round before tracking (the tracking slowdown).
//!
//! Uses the release binaries (`target/release`) unless CKPT_BIN_DIR is set.

use anyhow::{bail, Context, Result};
use ckpt_tests::*;
use std::time::Duration;

struct Sample {
    /// The program's longest stall while the checkpoint ran.
    stall_ms: f64,
    /// Its stall around the stop (500 µs when it was shorter than that).
    at_stop_ms: f64,
    /// The program's longest stall over as long a time without a checkpoint: the machine's own.
    idle_ms: f64,
    /// How long ckptd had it parked.
    stop_ms: f64,
    ckpt_ms: f64,
    store_ms: f64,
    stored_mib: f64,
    round_ratio: f64,
}

fn round(app: &App, pid: i32) -> Result<u64> {
    send_signal(pid, libc::SIGUSR2)?;
    let l = app
        .wait_line(|l| l.starts_with("round "), Duration::from_secs(120))
        .context("no round line")?;
    field_u64(&l, "us").context("round line without time")
}

/// The program's stalls since the last call: the longest, and those over 500 µs as
/// (length, end) in wall-clock µs.
fn stalls(app: &App, pid: i32) -> Result<(u64, Vec<(u64, u64)>)> {
    send_signal(pid, libc::SIGUSR1)?;
    let mut gaps = Vec::new();
    let l = app
        .wait_line(
            |l| {
                if l.starts_with("gap ") {
                    if let (Some(g), Some(e)) = (field_u64(l, "gap"), field_u64(l, "end_us")) {
                        gaps.push((g, e));
                    }
                }
                l.starts_with("maxgap_us ")
            },
            Duration::from_secs(30),
        )
        .context("no maxgap line")?;
    Ok((field_u64(&l, "maxgap_us").context("bad maxgap line")?, gaps))
}

fn maxgap(app: &App, pid: i32) -> Result<u64> {
    Ok(stalls(app, pid)?.0)
}

fn run(size: u64, daemon: &[&str], mode: &[&str], reps: usize) -> Result<(Vec<Sample>, f64)> {
    let d = Daemon::start_with(&bin_dir_for("release"), daemon)?;
    let disk = write_rate(d.store(), size.min(1024), Content::Constant)?;
    let size_s = size.to_string();
    let app = d.run_example("dirty_stall", &[&size_s, "10"])?;
    app.wait_line(|l| l.starts_with("ready"), Duration::from_secs(300))
        .context("program did not start")?;
    let pid = app.pid;
    // The reference round, without tracking: the median of three (right after the fill, a
    // single round is often slowed by the machine itself).
    let mut refs = Vec::new();
    for _ in 0..3 {
        refs.push(round(&app, pid)? as f64);
    }
    let untracked = median(&refs) as u64;
    let first = d.ckptctl_timeout(&["checkpoint", "--json"], Duration::from_secs(600));
    if !first.status.success() {
        bail!("first checkpoint failed: {}", String::from_utf8_lossy(&first.stderr));
    }
    let mut out = Vec::new();
    let mut window = Duration::from_millis(250);
    for _ in 0..reps {
        let tracked = round(&app, pid)?;
        maxgap(&app, pid)?;
        std::thread::sleep(window);
        let idle = maxgap(&app, pid)?;
        let mut args = vec!["checkpoint", "--json"];
        args.extend_from_slice(mode);
        let o = d.ckptctl_timeout(&args, Duration::from_secs(600));
        if !o.status.success() {
            bail!("checkpoint failed: {}", String::from_utf8_lossy(&o.stderr));
        }
        let (stall, gaps) = stalls(&app, pid)?;
        let v: serde_json::Value = serde_json::from_str(json_result(&String::from_utf8_lossy(&o.stdout)))?;
        // The stall that spans the stop: it began before the program was parked and ended
        // after it was let go (a 200 µs nap at most away on either side).
        let (at, stop) = (
            v["first_parked_at_us"].as_u64().unwrap_or(0),
            v["max_stop_us"].as_u64().unwrap_or(0),
        );
        let at_stop = gaps
            .iter()
            .filter(|&&(g, end)| end >= at + stop && end - g <= at + 300)
            .map(|&(g, _)| g)
            .max()
            .unwrap_or(500);
        if std::env::var_os("BENCH_VERBOSE").is_some() {
            eprintln!("stall_us {stall} report {v}");
        }
        let ms = |k: &str| v[k].as_f64().unwrap_or(0.0) / 1000.0;
        window = Duration::from_secs_f64(ms("duration_us") / 1000.0);
        out.push(Sample {
            stall_ms: stall as f64 / 1000.0,
            at_stop_ms: at_stop as f64 / 1000.0,
            idle_ms: idle as f64 / 1000.0,
            stop_ms: ms("max_stop_us"),
            ckpt_ms: ms("duration_us"),
            store_ms: ms("max_store_us"),
            stored_mib: v["stored_bytes"].as_f64().unwrap_or(0.0) / 1048576.0,
            round_ratio: tracked as f64 / untracked.max(1) as f64,
        });
    }
    Ok((out, disk))
}

fn main() -> Result<()> {
    init();
    if !is_root() {
        bail!("the benchmark restores pids and needs root");
    }
    let args: Vec<String> = std::env::args().collect();
    let sizes = list_arg(&args, "--sizes", "256,1024,4096");
    let reps = list_arg(&args, "--reps", "3").first().copied().unwrap_or(3) as usize;
    // Rows to run, by number (1 incremental, 2 compressed, 3 stop-the-world, 4 full): all by default.
    let rows = list_arg(&args, "--rows", "1,2,3,4");
    println!("bench_incr: 10% of the pages written between checkpoints, {reps} checkpoints per row, medians");
    println!(
        "{:>8} | {:<14} | {:>8} | {:>8} | {:>8} | {:>8} | {:>8} | {:>10} | {:>10} | {:>9} | {:>17}",
        "size MiB",
        "mode",
        "stall ms",
        "at stop",
        "idle ms",
        "stop ms",
        "ckpt ms",
        "stored MiB",
        "store MB/s",
        "disk MB/s",
        "tracking slowdown"
    );
    println!("{}", "-".repeat(139));
    for &size in &sizes {
        let modes: [(&str, &[&str], &[&str]); 4] = [
            ("incremental", &[], &[]),
            ("+ compression", &["--compress"], &[]),
            ("stop-the-world", &[], &["--stop-the-world"]),
            ("full, stopped", &[], &["--stop-the-world", "--full"]),
        ];
        for (i, (name, daemon, mode)) in modes.into_iter().enumerate() {
            if !rows.contains(&(i as u64 + 1)) {
                continue;
            }
            let (s, disk) = run(size, daemon, mode, reps).with_context(|| format!("{size} MiB {name}"))?;
            let stored = median_of(s.iter().map(|x| x.stored_mib));
            // Stopped modes write the pages while the program is parked: that time counts too.
            let stopped = mode.contains(&"--stop-the-world");
            let store = median_of(s.iter().map(|x| x.store_ms + if stopped { x.stop_ms } else { 0.0 }));
            println!(
                "{:>8} | {:<14} | {:>8.2} | {:>8.2} | {:>8.2} | {:>8.2} | {:>8.1} | {:>10.1} | {:>10.0} | {:>9.0} | {:>16.2}x",
                size,
                name,
                median_of(s.iter().map(|x| x.stall_ms)),
                median_of(s.iter().map(|x| x.at_stop_ms)),
                median_of(s.iter().map(|x| x.idle_ms)),
                median_of(s.iter().map(|x| x.stop_ms)),
                median_of(s.iter().map(|x| x.ckpt_ms)),
                stored,
                stored * 1.048_576 / (store / 1000.0).max(1e-9),
                disk,
                median_of(s.iter().map(|x| x.round_ratio)),
            );
        }
    }
    println!(
        "stall: the program's own longest stall during the checkpoint; at stop: its stall that spans the \
         stop; idle: its longest stall over as long a time without a checkpoint (this machine's noise); \
         stop: how long ckptd had it parked; store MB/s: stored bytes \
         over the time spent writing them until they were durable (after the release; in stop-the-world \
         modes, also while it is parked)"
    );
    Ok(())
}
