//! Checkpoint/restore benchmark.
//!
//!   cargo run --release -p ckpt-tests --bin bench -- [--sizes 256,1024] [--reps 3]
//!   cargo run --release -p ckpt-tests --bin bench -- --hosts 2,4 [--reps 5]
//!
//! For each size: a fresh ckptd, mem_pattern <size> under ckpt-run, a few
//! ticks, then a timed `ckptctl checkpoint` (wall time), the program's own
//! longest stall around it (`maxgap_us`), the image size (du of the
//! checkpoint dir), then kill -9 and a timed `ckptctl restore` up to the
//! first tick line printed by the restored program.  Each size is repeated
//! `--reps` times and the medians are printed as a table.
//!
//! With `--hosts`, the cluster mode runs instead (both run when `--sizes` is
//! given too): see `bench/cluster.rs`; `--reps` is then the number of
//! checkpoints per host count (default 5).
//!
//! Uses the release binaries (`target/release`) unless CKPT_BIN_DIR is set.

use anyhow::{bail, Context, Result};
use ckpt_tests::*;
use std::time::{Duration, Instant};

#[path = "bench/cluster.rs"]
mod cluster;

struct Sample {
    ckpt_ms: f64,
    stall_ms: f64,
    image_mib: f64,
    disk_mib: f64,
    restore_ms: f64,
}

fn usage() -> ! {
    eprintln!(
        "usage: bench [--sizes MiB,MiB,...] [--hosts N,N,...] [--reps N]\n\
         (default --sizes 256,1024 --reps 3; with --hosts alone only the cluster mode runs, --reps 5)"
    );
    std::process::exit(2);
}

struct Opts {
    sizes: Vec<u64>,
    hosts: Vec<usize>,
    reps: Option<usize>,
}

fn parse_list<T: std::str::FromStr + PartialEq + Default>(v: &str) -> Vec<T> {
    let l: Vec<T> = v
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.trim().parse().unwrap_or_else(|_| usage()))
        .collect();
    if l.is_empty() || l.contains(&T::default()) {
        usage();
    }
    l
}

fn parse_args() -> Opts {
    let mut sizes = None;
    let mut hosts = Vec::new();
    let mut reps = None;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let (key, val) = match a.split_once('=') {
            Some((k, v)) => (k.to_string(), Some(v.to_string())),
            None => (a.clone(), None),
        };
        match key.as_str() {
            "--sizes" => {
                let v = val.or_else(|| it.next()).unwrap_or_else(|| usage());
                sizes = Some(parse_list::<u64>(&v));
            }
            "--hosts" => {
                let v = val.or_else(|| it.next()).unwrap_or_else(|| usage());
                hosts = parse_list::<usize>(&v);
                if hosts.iter().any(|&h| h > 100) {
                    usage();
                }
            }
            "--reps" => {
                let v = val.or_else(|| it.next()).unwrap_or_else(|| usage());
                let r: usize = v.parse().unwrap_or_else(|_| usage());
                if r == 0 {
                    usage();
                }
                reps = Some(r);
            }
            "-h" | "--help" => usage(),
            _ => {
                eprintln!("bench: unknown argument {a:?}");
                usage()
            }
        }
    }
    let sizes = match sizes {
        Some(s) => s,
        None if hosts.is_empty() => vec![256, 1024],
        None => Vec::new(),
    };
    Opts { sizes, hosts, reps }
}

fn maxgap_us(line: &str) -> Option<u64> {
    field(line, "maxgap_us")?.parse().ok()
}

fn run_once(size: u64) -> Result<Sample> {
    let d = Daemon::start_in(&bin_dir_for("release"))?;
    let size_s = size.to_string();
    let mut app = d.run_example("mem_pattern", &[&size_s])?;
    let pid = app.pid;
    // The initial fill takes a while for big sizes.
    let t = app.expect_tick(Duration::from_secs(300))?;
    app.expect_consecutive_ticks(t, 2, true, LINE_TIMEOUT)?;
    app.drain();

    let t0 = Instant::now();
    let id = d.checkpoint()?;
    let ckpt = t0.elapsed();
    let done = Instant::now();

    // The program's longest stall: max maxgap_us over the tick lines read
    // since the checkpoint started, up to the second tick read after it
    // returned (the tick covering the stall is printed after it).
    let mut stall_us = 0u64;
    let mut after = 0;
    while after < 2 {
        let l = app.expect_line_at(
            "a tick line around the checkpoint",
            |l| tick_num(l).is_some(),
            LINE_TIMEOUT,
        )?;
        stall_us = stall_us.max(maxgap_us(&l.text).unwrap_or(0));
        if l.at >= done {
            after += 1;
        }
    }

    let (apparent, disk) = dir_usage(&d.ckpt_dir(&id))?;
    app.kill9()?;

    let t1 = Instant::now();
    let mut r = d.restore(&id, pid)?;
    let first = r
        .expect_line_at(
            "the first tick after restore",
            |l| tick_num(l).is_some(),
            Duration::from_secs(300),
        )
        .context("restore")?;
    let restore = first.at.duration_since(t1);
    let st = r.wait_child_exit(Duration::from_secs(120))?;
    if !st.success() {
        bail!("ckptctl restore {id} failed: {}\n{}", fmt_status(&st), r.context());
    }
    if !first.text.trim_end().ends_with(" ok") {
        bail!("restored program printed {:?}\n{}", first.text, r.context());
    }
    r.kill9()?;
    drop(r);
    drop(d);
    Ok(Sample {
        ckpt_ms: ckpt.as_secs_f64() * 1e3,
        stall_ms: stall_us as f64 / 1e3,
        image_mib: apparent as f64 / (1024.0 * 1024.0),
        disk_mib: disk as f64 / (1024.0 * 1024.0),
        restore_ms: restore.as_secs_f64() * 1e3,
    })
}

fn main() -> Result<()> {
    let opts = parse_args();
    let (sizes, reps) = (opts.sizes, opts.reps.unwrap_or(3));
    if std::env::var_os("CKPT_BIN_DIR").is_none() {
        std::env::set_var("CKPT_BIN_DIR", target_dir().join("release"));
    }
    if !is_root() {
        eprintln!("bench: warning: not root; checkpoint/restore will probably fail");
    }
    eprintln!("bench: binaries from {}", bin_dir().display());
    let mut cluster_rows = Vec::new();
    let creps = opts.reps.unwrap_or(5);
    for &n in &opts.hosts {
        eprintln!("bench: cluster of {n} hosts, {creps} checkpoints");
        cluster_rows.push(cluster::run(n, creps).with_context(|| format!("cluster of {n} hosts"))?);
    }
    if !cluster_rows.is_empty() {
        cluster::print(&cluster_rows, creps);
    }
    if sizes.is_empty() {
        return Ok(());
    }
    eprintln!("bench: sizes {sizes:?} MiB, {reps} reps each");
    let mut rows = Vec::new();
    for &size in &sizes {
        let mut samples = Vec::new();
        for rep in 1..=reps {
            let s = run_once(size).with_context(|| format!("size {size} MiB, run {rep}"))?;
            eprintln!(
                "  {size:>6} MiB run {rep}: checkpoint {:.1} ms, stall {:.1} ms, image {:.1} MiB \
                 (disk {:.1} MiB), restore-to-first-tick {:.1} ms",
                s.ckpt_ms, s.stall_ms, s.image_mib, s.disk_mib, s.restore_ms
            );
            samples.push(s);
        }
        let m = |f: fn(&Sample) -> f64| median(&samples.iter().map(f).collect::<Vec<_>>());
        rows.push((
            size,
            m(|s| s.ckpt_ms),
            m(|s| s.stall_ms),
            m(|s| s.image_mib),
            m(|s| s.disk_mib),
            m(|s| s.restore_ms),
        ));
    }
    println!("medians of {reps} runs");
    println!(
        "{:>9} | {:>13} | {:>12} | {:>10} | {:>9} | {:>18}",
        "size MiB", "checkpoint ms", "app stall ms", "image MiB", "disk MiB", "restore->tick ms"
    );
    println!("{}", "-".repeat(9 + 13 + 12 + 10 + 9 + 18 + 15));
    for (size, c, s, i, dk, r) in rows {
        println!("{size:>9} | {c:>13.1} | {s:>12.1} | {i:>10.1} | {dk:>9.1} | {r:>18.1}");
    }
    Ok(())
}
