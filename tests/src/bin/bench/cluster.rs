//! Cluster mode of the benchmark (`--hosts 2,4`): for each host count n, a
//! cluster of n network namespaces with n tcp_echo pairs (server on host i,
//! client on host i+1 mod n), then `--reps` checkpoints during the traffic;
//! prints the medians of the two-phase timings ckptctl reports.

use anyhow::{ensure, Context, Result};
use ckpt_tests::*;
use std::time::Duration;

pub struct Row {
    pub hosts: usize,
    pub processes: u64,
    pub phase1_ms: f64,
    pub phase2_ms: f64,
    pub held_ms: f64,
    pub stop_ms: f64,
    pub total_ms: f64,
}

const PORT: &str = "9000";

fn ms(us: Option<u64>) -> f64 {
    us.map(|u| u as f64 / 1e3).unwrap_or(f64::NAN)
}

pub fn run(hosts: usize, reps: usize) -> Result<Row> {
    // Netns key: distinct from the tests' (1..=19).
    let c = Cluster::start(20 + hosts.min(100) as u8, hosts)?;
    let mut pairs = Vec::new();
    for i in 1..=hosts {
        let j = i % hosts + 1;
        let ip = c.host(i).ip.clone();
        let server = c.run_example(i, &format!("server{i}"), "tcp_echo", &["server", PORT])?;
        let client = c.run_example(j, &format!("client{j}"), "tcp_echo", &["client", &ip, PORT])?;
        pairs.push((i, server, j, client));
    }
    let reg: Vec<(usize, &App)> = pairs.iter().flat_map(|(i, s, j, cl)| [(*i, s), (*j, cl)]).collect();
    c.wait_registered(&reg, Duration::from_secs(30))?;
    for (_, _, _, client) in &pairs {
        client.expect_tick(LINE_TIMEOUT)?;
    }
    let mut samples = Vec::new();
    for rep in 1..=reps {
        let s = c
            .checkpoint(1 + rep % hosts, &[])
            .with_context(|| format!("checkpoint {rep}"))?;
        ensure!(
            s.processes == 2 * hosts as u64,
            "checkpoint {rep} should hold {} processes: {s:?}",
            2 * hosts
        );
        eprintln!(
            "  {hosts} hosts, checkpoint {rep}: phase1 {:.2} ms, phase2 {:.2} ms, held {:.2} ms, \
             stop {:.2} ms, total {:.2} ms",
            ms(s.phase1_us),
            ms(s.phase2_us),
            ms(s.max_held_us),
            ms(Some(s.max_stop_us)),
            ms(Some(s.duration_us))
        );
        samples.push(s);
        std::thread::sleep(Duration::from_millis(500));
    }
    // The traffic survived every checkpoint.
    for (_, _, _, client) in &pairs {
        client.drain();
        client.expect_line(
            "an ok tick after the checkpoints",
            |l| l.ends_with(" ok"),
            Duration::from_secs(5),
        )?;
    }
    let m = |f: &dyn Fn(&CkptStats) -> f64| median(&samples.iter().map(f).collect::<Vec<_>>());
    Ok(Row {
        hosts,
        processes: samples[0].processes,
        phase1_ms: m(&|s| ms(s.phase1_us)),
        phase2_ms: m(&|s| ms(s.phase2_us)),
        held_ms: m(&|s| ms(s.max_held_us)),
        stop_ms: m(&|s| ms(Some(s.max_stop_us))),
        total_ms: m(&|s| ms(Some(s.duration_us))),
    })
}

pub fn print(rows: &[Row], reps: usize) {
    println!("cluster: tcp_echo pairs, medians of {reps} checkpoints");
    println!(
        "{:>5} | {:>9} | {:>9} | {:>9} | {:>13} | {:>12} | {:>8}",
        "hosts", "processes", "phase1 ms", "phase2 ms", "sends held ms", "app stop ms", "total ms"
    );
    println!("{}", "-".repeat(5 + 9 + 9 + 9 + 13 + 12 + 8 + 18));
    for r in rows {
        println!(
            "{:>5} | {:>9} | {:>9.2} | {:>9.2} | {:>13.2} | {:>12.2} | {:>8.2}",
            r.hosts, r.processes, r.phase1_ms, r.phase2_ms, r.held_ms, r.stop_ms, r.total_ms
        );
    }
}
