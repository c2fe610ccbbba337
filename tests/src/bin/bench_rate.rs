//! Store and restore rates against the disk's (issue 13, goal 5):
//!
//!   cargo run --release -p ckpt-tests --bin bench_rate -- [--sizes 1024,4096] [--reps 3] [--rows 1,2,3,4]
//!
//! For each size, a program (`examples/rate_fill.c`) whose memory is all written, with data
//! that does not compress (random words) and with data that does (text), under a ckptd
//! storing plainly and one with `--compress` (rows 1 to 4 in that order). Each repetition
//! measures the disk under the store with a file of the same size and kind of data (written
//! and fsynced, read back cold; through the page cache and with O_DIRECT), then takes a full
//! checkpoint in the default mode and one with `--stop-the-world`, and after each kills the
//! program, drops the checkpoint's files from the page cache and restores it (after the
//! default-mode one, a second time with `--lazy`).
//!
//! Printed, as medians: the bytes of memory stored (and on disk), the store rate (the bytes of
//! memory over the time from the cut to the store being durable: the program's stop plus
//! the storing after it; and over the time pages were being written) against the disk's write
//! rate, and the restore rate (the same bytes over the time from the start of `ckptctl
//! restore` to the program's first line after it; lazily, to every page in) against the
//! disk's read rate. The disk's rate is the faster of its two ways; the ratios are medians of
//! each repetition's ratio.
//!
//! Uses the release binaries (`target/release`) unless CKPT_BIN_DIR is set.

use anyhow::{bail, Context, Result};
use ckpt_tests::*;
use std::time::{Duration, Instant};

/// One checkpoint and its restore, with the disk measured just before.
struct Sample {
    stored_mib: f64,
    on_disk_mib: f64,
    stop_ms: f64,
    store_mbs: f64,
    /// The same over the time pages were being written (the default mode writes them once
    /// the program runs again; stop-the-world while it is parked and after).
    writing_mbs: f64,
    restore_mbs: f64,
    /// With `--lazy`, until every page is in (default mode only).
    lazy_mbs: f64,
    disk: DiskRates,
}

const MODES: [(&str, &[&str]); 2] = [("default", &[]), ("stop-the-world", &["--stop-the-world"])];

/// Kills `app`'s program, restores checkpoint `id` from a cold page cache and waits for its
/// first line (with `lazy`, for every page to be in: ckptctl's exit): the restored program
/// (memory checked) and the seconds it took.
fn restore(d: &Daemon, mut app: App, id: &str, lazy: bool) -> Result<(App, f64)> {
    let pid = app.pid;
    app.kill9()?;
    app.disarm();
    drop(app);
    drop_cached_dir(&d.ckpt_dir(id))?;
    let extra: &[&str] = if lazy { &["--lazy"] } else { &[] };
    let t0 = Instant::now();
    let mut r = d.restore_args(id, pid, extra)?;
    let back = r.expect_line_at(
        "the restored program's first line",
        |l| l.starts_with("back "),
        Duration::from_secs(600),
    )?;
    let st = r.wait_child_exit(Duration::from_secs(600))?;
    let secs = if lazy { t0.elapsed() } else { back.at.duration_since(t0) }.as_secs_f64();
    if !st.success() {
        bail!("ckptctl restore {id} failed: {}\n{}", fmt_status(&st), r.context());
    }
    r.verify(Duration::from_secs(600))?;
    Ok((r, secs))
}

/// `reps` repetitions of: the disk measured, then a full checkpoint and its restore in each mode.
fn run(size: u64, content: Content, daemon: &[&str], reps: usize) -> Result<Vec<Vec<Sample>>> {
    let d = Daemon::start_with(&bin_dir_for("release"), daemon)?;
    let size_s = size.to_string();
    let mut app = d.run_example("rate_fill", &[&size_s, content.name()])?;
    app.expect_line("its ready line", |l| l.starts_with("ready"), Duration::from_secs(600))?;
    let mut out: Vec<Vec<Sample>> = MODES.iter().map(|_| Vec::new()).collect();
    // With BENCH_VERBOSE, ckptd's log of each checkpoint and restore (RUST_LOG=debug for more).
    let mut logged = 0;
    for rep in 0..reps {
        let disk = disk_rates(d.store(), size, content)?;
        for (i, (name, extra)) in MODES.iter().enumerate() {
            let mut args = vec!["--full"];
            args.extend_from_slice(extra);
            let s = d.checkpoint_json(&args)?;
            let (on_disk, _) = dir_usage(&d.ckpt_dir(&s.id))?;
            let (restored, secs) = restore(&d, app, &s.id, false).with_context(|| format!("restoring {}", s.id))?;
            app = restored;
            // Lazily too, once per repetition: every page is checked as it comes in, in one pass.
            let lazy_mbs = if i == 0 {
                let (restored, lazy_secs) =
                    restore(&d, app, &s.id, true).with_context(|| format!("restoring {} lazily", s.id))?;
                app = restored;
                s.stored_bytes as f64 / 1e6 / lazy_secs
            } else {
                f64::NAN
            };
            d.ckptctl_ok(&["delete", &s.id])?;
            let store_s = (s.max_stop_us + s.max_store_us) as f64 / 1e6;
            let sample = Sample {
                stored_mib: s.stored_bytes as f64 / 1048576.0,
                on_disk_mib: on_disk as f64 / 1048576.0,
                stop_ms: s.max_stop_us as f64 / 1e3,
                store_mbs: s.stored_bytes as f64 / 1e6 / store_s.max(1e-9),
                writing_mbs: s.stored_bytes as f64
                    / 1e6
                    / (if i == 0 { s.max_store_us as f64 / 1e6 } else { store_s }).max(1e-9),
                restore_mbs: s.stored_bytes as f64 / 1e6 / secs,
                lazy_mbs,
                disk,
            };
            eprintln!(
                "{size} MiB {} {:?} {name} rep {rep}: disk write {:.0}/{:.0} read {:.0}/{:.0} MB/s; \
                 stored {:.0} MiB ({:.0} on disk), stop {:.0} ms, store {:.0} MB/s (writing {:.0}), restore {:.0} MB/s, lazy {:.0} MB/s",
                content.name(),
                daemon,
                disk.write,
                disk.write_direct,
                disk.read,
                disk.read_direct,
                sample.stored_mib,
                sample.on_disk_mib,
                sample.stop_ms,
                sample.store_mbs,
                sample.writing_mbs,
                sample.restore_mbs,
                sample.lazy_mbs
            );
            if std::env::var_os("BENCH_VERBOSE").is_some() {
                let log = d.log();
                for l in log[logged..].lines().filter(|l| !l.contains("TRACE")) {
                    eprintln!("  ckptd: {l}");
                }
                logged = log.len();
            }
            out[i].push(sample);
        }
    }
    Ok(out)
}

fn main() -> Result<()> {
    init();
    if !is_root() {
        bail!("the benchmark restores pids and needs root");
    }
    let args: Vec<String> = std::env::args().collect();
    let sizes = list_arg(&args, "--sizes", "1024");
    let reps = list_arg(&args, "--reps", "3").first().copied().unwrap_or(3).max(1) as usize;
    let rows = list_arg(&args, "--rows", "1,2,3,4");
    println!(
        "bench_rate: full checkpoints and their restores, {reps} per row, medians; disk MB/s: page cache / O_DIRECT"
    );
    println!(
        "{:>8} | {:<6} | {:<10} | {:<14} | {:>6} | {:>7} | {:>7} | {:>10} | {:>11} | {:>5} | {:>12} | {:>5} | {:>11} | {:>11} | {:>5} | {:>9} | {:>5}",
        "size MiB",
        "data",
        "store",
        "mode",
        "stored",
        "on disk",
        "stop ms",
        "store MB/s",
        "disk write",
        "ratio",
        "writing MB/s",
        "ratio",
        "restore MB/s",
        "disk read",
        "ratio",
        "lazy MB/s",
        "ratio"
    );
    println!("{}", "-".repeat(195));
    let kinds = [
        (Content::Random, "plain", &[][..]),
        (Content::Random, "compressed", &["--compress"][..]),
        (Content::Text, "plain", &[][..]),
        (Content::Text, "compressed", &["--compress"][..]),
    ];
    for &size in &sizes {
        for (k, &(content, store, daemon)) in kinds.iter().enumerate() {
            if !rows.contains(&(k as u64 + 1)) {
                continue;
            }
            let samples =
                run(size, content, daemon, reps).with_context(|| format!("{size} MiB {} {store}", content.name()))?;
            for ((mode, _), s) in MODES.iter().zip(samples) {
                let m = |f: &dyn Fn(&Sample) -> f64| median_of(s.iter().map(f));
                // Lazy restores are timed in the default mode only.
                let (lazy, lazy_ratio) = if s.iter().all(|x| x.lazy_mbs.is_nan()) {
                    ("-".to_string(), "-".to_string())
                } else {
                    (
                        format!("{:.0}", m(&|x| x.lazy_mbs)),
                        format!("{:.2}", m(&|x| x.lazy_mbs / x.disk.best_read())),
                    )
                };
                println!(
                    "{:>8} | {:<6} | {:<10} | {:<14} | {:>6.0} | {:>7.0} | {:>7.0} | {:>10.0} | {:>5.0}/{:<5.0} | {:>5.2} | {:>12.0} | {:>5.2} | {:>12.0} | {:>5.0}/{:<5.0} | {:>5.2} | {:>9} | {:>5}",
                    size,
                    content.name(),
                    store,
                    mode,
                    m(&|x| x.stored_mib),
                    m(&|x| x.on_disk_mib),
                    m(&|x| x.stop_ms),
                    m(&|x| x.store_mbs),
                    m(&|x| x.disk.write),
                    m(&|x| x.disk.write_direct),
                    m(&|x| x.store_mbs / x.disk.best_write()),
                    m(&|x| x.writing_mbs),
                    m(&|x| x.writing_mbs / x.disk.best_write()),
                    m(&|x| x.restore_mbs),
                    m(&|x| x.disk.read),
                    m(&|x| x.disk.read_direct),
                    m(&|x| x.restore_mbs / x.disk.best_read()),
                    lazy,
                    lazy_ratio,
                );
            }
        }
    }
    println!(
        "stored: MiB of memory stored (on disk: the checkpoint's files); store MB/s: those bytes over the \
         time from the cut to the store being durable (the stop plus the storing after it); writing MB/s: \
         over the time pages were being written (default: after the stop; stop-the-world: the same as \
         store); restore MB/s: \
         the same bytes over the time from the start of `ckptctl restore` (page cache dropped) to the \
         program's first line; lazy MB/s: the same with `ckptctl restore --lazy`, until every page is in \
         (ckptctl's exit); ratio: against the faster of the disk's two rates, measured with as much data of \
         the same kind just before"
    );
    Ok(())
}
