//! A real server against plain memory (issue 10, acceptance 6):
//!
//!   cargo run --release -p ckpt-tests --bin bench_servers -- [--mib 1024] [--reps 3]
//!
//! redis-server holding about `--mib` MiB of keys (`DEBUG POPULATE`, values of 1000 bytes), and
//! a program holding as much plain memory (`examples/dirty_stall.c`, every page written), are
//! each checkpointed (a full first checkpoint, then an incremental one after a small change),
//! killed and restored. Printed side by side, as medians: the resident memory, the wall time
//! of each checkpoint, how long the program was stopped, the bytes stored, and the wall time of
//! the restore until the program answers again (redis: `DBSIZE`; the plain program: its next
//! line). Uses the release binaries unless CKPT_BIN_DIR is set.

use anyhow::{bail, ensure, Context, Result};
use ckpt_tests::*;
use std::time::{Duration, Instant};

#[derive(Default)]
struct Sample {
    rss_mib: f64,
    full_ms: f64,
    full_stop_ms: f64,
    full_mib: f64,
    incr_ms: f64,
    incr_stop_ms: f64,
    incr_mib: f64,
    restore_ms: f64,
}

fn checkpoint(d: &Daemon) -> Result<(f64, f64, f64, String)> {
    let o = d.ckptctl_timeout(&["checkpoint", "--json"], Duration::from_secs(600));
    if !o.status.success() {
        bail!("checkpoint failed: {}", String::from_utf8_lossy(&o.stderr));
    }
    let v: serde_json::Value = serde_json::from_str(json_result(&String::from_utf8_lossy(&o.stdout)))?;
    let ms = |k: &str| v[k].as_f64().unwrap_or(0.0) / 1000.0;
    let id = v["id"].as_str().context("checkpoint without id")?.to_string();
    Ok((
        ms("duration_us"),
        ms("max_stop_us"),
        v["stored_bytes"].as_f64().unwrap_or(0.0) / 1048576.0,
        id,
    ))
}

fn rss_mib(pid: i32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).map(str::to_string))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse::<f64>().ok()))
        .unwrap_or(0.0)
        / 1024.0
}

fn redis(mib: u64) -> Result<Sample> {
    let d = Daemon::start_in(&bin_dir_for("release"))?;
    let (mut app, port) = start_redis(&d, &["--enable-debug-command", "yes"])?;
    let pid = app.pid;
    let keys = mib * 1024 * 1024 / 1100;
    redis_cli(port, &["DEBUG", "POPULATE", &keys.to_string(), "key", "1000"])?;
    let mut s = Sample {
        rss_mib: rss_mib(pid),
        ..Default::default()
    };
    (s.full_ms, s.full_stop_ms, s.full_mib, _) = checkpoint(&d)?;
    redis_cli(port, &["SET", "marker", "1"])?;
    let id;
    (s.incr_ms, s.incr_stop_ms, s.incr_mib, id) = checkpoint(&d)?;
    app.kill9()?;
    app.disarm();
    let t = Instant::now();
    let mut r = d.restore_ok(&id, pid)?;
    wait_listening(port, Duration::from_secs(60))?;
    let size = redis_cli(port, &["DBSIZE"])?;
    s.restore_ms = t.elapsed().as_secs_f64() * 1000.0;
    ensure!(
        size == (keys + 1).to_string(),
        "restored redis has {size} keys, want {}",
        keys + 1
    );
    r.kill9()?;
    Ok(s)
}

fn plain(mib: u64) -> Result<Sample> {
    let d = Daemon::start_in(&bin_dir_for("release"))?;
    let mut app = d.run_example("dirty_stall", &[&mib.to_string(), "10"])?;
    app.wait_line(|l| l.starts_with("ready"), Duration::from_secs(300))
        .context("program did not start")?;
    let pid = app.pid;
    let mut s = Sample {
        rss_mib: rss_mib(pid),
        ..Default::default()
    };
    (s.full_ms, s.full_stop_ms, s.full_mib, _) = checkpoint(&d)?;
    // A round of writes to 10% of the pages, as redis's one key is a small change.
    send_signal(pid, libc::SIGUSR2)?;
    app.wait_line(|l| l.starts_with("round "), Duration::from_secs(120))
        .context("no round line")?;
    let id;
    (s.incr_ms, s.incr_stop_ms, s.incr_mib, id) = checkpoint(&d)?;
    app.kill9()?;
    app.disarm();
    let t = Instant::now();
    let mut r = d.restore_ok(&id, pid)?;
    // The restored program answers its signal with a line.
    send_signal(pid, libc::SIGUSR1)?;
    r.wait_line(|l| l.starts_with("maxgap_us "), Duration::from_secs(60))
        .context("the restored program did not answer")?;
    s.restore_ms = t.elapsed().as_secs_f64() * 1000.0;
    r.kill9()?;
    Ok(s)
}

fn main() -> Result<()> {
    init();
    if !is_root() {
        bail!("the benchmark restores pids and needs root");
    }
    let args: Vec<String> = std::env::args().collect();
    let mib = list_arg(&args, "--mib", "1024").first().copied().unwrap_or(1024);
    let reps = list_arg(&args, "--reps", "3").first().copied().unwrap_or(3) as usize;
    println!(
        "bench_servers: redis-server with {mib} MiB of keys against {mib} MiB of plain memory, {reps} runs, medians"
    );
    println!(
        "{:<14} | {:>8} | {:>8} | {:>9} | {:>9} | {:>8} | {:>9} | {:>9} | {:>10}",
        "program", "RSS MiB", "full ms", "stop ms", "full MiB", "incr ms", "stop ms", "incr MiB", "restore ms"
    );
    println!("{}", "-".repeat(110));
    for (name, f) in [
        ("redis-server", redis as fn(u64) -> Result<Sample>),
        ("plain memory", plain),
    ] {
        let mut v = Vec::new();
        for i in 0..reps {
            v.push(f(mib).with_context(|| format!("{name}, run {}", i + 1))?);
        }
        let m = |g: fn(&Sample) -> f64| median_of(v.iter().map(g));
        println!(
            "{:<14} | {:>8.0} | {:>8.0} | {:>9.2} | {:>9.0} | {:>8.0} | {:>9.2} | {:>9.1} | {:>10.0}",
            name,
            m(|s| s.rss_mib),
            m(|s| s.full_ms),
            m(|s| s.full_stop_ms),
            m(|s| s.full_mib),
            m(|s| s.incr_ms),
            m(|s| s.incr_stop_ms),
            m(|s| s.incr_mib),
            m(|s| s.restore_ms),
        );
    }
    println!(
        "full/incr ms: wall time of `ckptctl checkpoint` (a first, full one; then one after a small change); \
         stop ms: how long ckptd had the program parked; restore ms: `ckptctl restore` until the program \
         answers again"
    );
    Ok(())
}
