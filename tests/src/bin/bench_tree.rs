//! Process-tree benchmark (issue 11, acceptance 8):
//!
//!   cargo run --release -p ckpt-tests --bin bench_tree -- [--mib 1024] [--procs 32] [--reps 5]
//!
//! `tree_writers` as a tree of `procs` processes (a parent and its forked children, each with
//! 1/procs of the memory) and as one process holding all of it. Before each measured
//! checkpoint (after a first, full one) every process writes 10% of its pages at random.
//! Each is checkpointed `reps` times in the default mode (tracked, pre-copied, incremental)
//! and with `--stop-the-world` (the peer baseline: everything read and written while parked).
//! Printed, as medians: the longest stall any of the programs saw itself (the gap between two
//! of its 200 µs naps), the longest ckptd had one parked (`max_stop_us`), the checkpoint's
//! wall time, and the bytes it stored.
//!
//! Then shared memory (issue 11): `shm_writers` as a parent and a forked child sharing
//! `--shared-mib` MiB (default 512) of shared anonymous memory, a 4 MiB memfd and a 2 MiB SysV
//! segment, writing a few hundred pages between checkpoints: the stop (`max_stop_us`, medians)
//! and bytes of an incremental checkpoint, which takes only the written shared pages, against
//! `--full` (every shared page read while parked, as every checkpoint did before shared memory
//! was tracked) and `--stop-the-world`. `--shared-only` runs only that part.
//!
//! Uses the release binaries (`target/release`) unless CKPT_BIN_DIR is set.

use anyhow::{bail, Context, Result};
use ckpt_tests::*;
use std::time::Duration;

struct Sample {
    stall_ms: f64,
    stop_ms: f64,
    ckpt_ms: f64,
    stored_mib: f64,
}

/// Signals the parent and collects one `key pid P us N` line per process: the largest N.
fn gather(app: &App, sig: i32, key: &str, procs: usize) -> Result<u64> {
    send_signal(app.pid, sig)?;
    let mut most = 0;
    for i in 0..procs {
        let l = app
            .wait_line(|l| l.starts_with(key), Duration::from_secs(120))
            .with_context(|| format!("{key} line {} of {procs} did not come", i + 1))?;
        most = most.max(field_u64(&l, "us").context("line without us")?);
    }
    Ok(most)
}

fn run(procs: usize, mib: u64, mode: &[&str], reps: usize) -> Result<Vec<Sample>> {
    let d = Daemon::start_in(&bin_dir_for("release"))?;
    let (n, m) = (procs.to_string(), mib.to_string());
    let mut app = d.run_example("tree_writers", &[&n, &m, "10"])?;
    let r = measure(&d, &app, procs, mode, reps);
    // The children too: dropping `app` would end only their parent.
    let _ = app.kill9_tree();
    r
}

fn measure(d: &Daemon, app: &App, procs: usize, mode: &[&str], reps: usize) -> Result<Vec<Sample>> {
    for _ in 0..procs {
        app.wait_line(|l| l.starts_with("ready"), Duration::from_secs(300))
            .context("tree_writers did not start")?;
    }
    let first = d.ckptctl_timeout(&["checkpoint", "--json"], Duration::from_secs(600));
    if !first.status.success() {
        bail!("first checkpoint failed: {}", String::from_utf8_lossy(&first.stderr));
    }
    let mut out = Vec::new();
    for _ in 0..reps {
        gather(app, libc::SIGUSR2, "round", procs)?;
        gather(app, libc::SIGUSR1, "maxgap", procs)?;
        let mut args = vec!["checkpoint", "--json"];
        args.extend_from_slice(mode);
        let o = d.ckptctl_timeout(&args, Duration::from_secs(600));
        if !o.status.success() {
            bail!("checkpoint failed: {}", String::from_utf8_lossy(&o.stderr));
        }
        let st = CkptStats::parse(&String::from_utf8_lossy(&o.stdout))?;
        if st.processes != procs as u64 {
            bail!("the checkpoint held {} processes, not {procs}", st.processes);
        }
        let stall = gather(app, libc::SIGUSR1, "maxgap", procs)?;
        out.push(Sample {
            stall_ms: stall as f64 / 1000.0,
            stop_ms: st.max_stop_us as f64 / 1000.0,
            ckpt_ms: st.duration_us as f64 / 1000.0,
            stored_mib: st.stored_bytes as f64 / 1048576.0,
        });
    }
    Ok(out)
}

/// A stop of `shm_writers` holding `mib` MiB of shared memory: `reps` checkpoints in `mode`,
/// each after the processes wrote for 50 ms and were held again.
fn shared(mib: u64, mode: &[&str], reps: usize) -> Result<Vec<Sample>> {
    let d = Daemon::start_in(&bin_dir_for("release"))?;
    let mut app = d.run_example("shm_writers", &["1", &mib.to_string(), "held"])?;
    let r = (|| -> Result<Vec<Sample>> {
        app.wait_line(|l| l.starts_with("ready"), Duration::from_secs(300))
            .context("shm_writers did not start")?;
        // Both processes registered (the child registers itself after its fork).
        std::thread::sleep(Duration::from_millis(500));
        let first = d.ckptctl_timeout(&["checkpoint", "--json"], Duration::from_secs(600));
        if !first.status.success() {
            bail!("first checkpoint failed: {}", String::from_utf8_lossy(&first.stderr));
        }
        let mut out = Vec::new();
        for _ in 0..reps {
            for want in ["release", "hold"] {
                send_signal(app.pid, libc::SIGUSR2)?;
                app.wait_line(|l| l.starts_with(want), Duration::from_secs(60))
                    .with_context(|| format!("no {want} line"))?;
                std::thread::sleep(Duration::from_millis(50));
            }
            let mut args = vec!["checkpoint", "--json"];
            args.extend_from_slice(mode);
            let o = d.ckptctl_timeout(&args, Duration::from_secs(600));
            if !o.status.success() {
                bail!("checkpoint failed: {}", String::from_utf8_lossy(&o.stderr));
            }
            let st = CkptStats::parse(&String::from_utf8_lossy(&o.stdout))?;
            out.push(Sample {
                stall_ms: 0.0,
                stop_ms: st.max_stop_us as f64 / 1000.0,
                ckpt_ms: st.duration_us as f64 / 1000.0,
                stored_mib: st.stored_bytes as f64 / 1048576.0,
            });
        }
        Ok(out)
    })();
    let _ = app.kill9_tree();
    r
}

fn main() -> Result<()> {
    init();
    if !is_root() {
        bail!("the benchmark needs root (as the tests do)");
    }
    let args: Vec<String> = std::env::args().collect();
    let mib = list_arg(&args, "--mib", "1024").first().copied().unwrap_or(1024);
    let procs = list_arg(&args, "--procs", "32").first().copied().unwrap_or(32) as usize;
    let reps = list_arg(&args, "--reps", "5").first().copied().unwrap_or(5) as usize;
    let shared_only = args.iter().any(|a| a == "--shared-only");
    if shared_only {
        println!("bench_tree: shared memory, a few hundred pages written before each checkpoint, {reps} checkpoints per row, medians");
    } else {
        println!("bench_tree: {mib} MiB in all, 10% of the pages written before each checkpoint, {reps} checkpoints per row, medians");
    }
    println!(
        "{:<22} | {:<14} | {:>8} | {:>8} | {:>8} | {:>10}",
        "program", "mode", "stall ms", "stop ms", "ckpt ms", "stored MiB"
    );
    println!("{}", "-".repeat(84));
    let shapes = [
        (procs, format!("tree of {procs} processes")),
        (1, "one process".to_string()),
    ];
    let modes: [(&str, &[&str]); 2] = [("incremental", &[]), ("stop-the-world", &["--stop-the-world"])];
    for (n, shape) in shapes.iter().filter(|_| !shared_only) {
        for (name, mode) in modes {
            let s = run(*n, mib, mode, reps).with_context(|| format!("{shape}, {name}"))?;
            println!(
                "{:<22} | {:<14} | {:>8.2} | {:>8.2} | {:>8.1} | {:>10.1}",
                shape,
                name,
                median_of(s.iter().map(|x| x.stall_ms)),
                median_of(s.iter().map(|x| x.stop_ms)),
                median_of(s.iter().map(|x| x.ckpt_ms)),
                median_of(s.iter().map(|x| x.stored_mib)),
            );
        }
    }
    let shared_mib = list_arg(&args, "--shared-mib", "512").first().copied().unwrap_or(512);
    let shape = format!("{shared_mib} MiB shared, 2 procs");
    let shared_modes: [(&str, &[&str]); 3] = [
        ("incremental", &[]),
        ("--full", &["--full"]),
        ("stop-the-world", &["--stop-the-world"]),
    ];
    for (name, mode) in shared_modes {
        let s = shared(shared_mib, mode, reps).with_context(|| format!("{shape}, {name}"))?;
        println!(
            "{:<22} | {:<14} | {:>8} | {:>8.2} | {:>8.1} | {:>10.1}",
            shape,
            name,
            "-",
            median_of(s.iter().map(|x| x.stop_ms)),
            median_of(s.iter().map(|x| x.ckpt_ms)),
            median_of(s.iter().map(|x| x.stored_mib)),
        );
    }
    println!(
        "stall: the longest any process of the program saw itself stopped during the checkpoint; stop: the \
         longest ckptd had one of them parked (the first parked waits for all the others); ckpt: the \
         checkpoint's wall time"
    );
    Ok(())
}
