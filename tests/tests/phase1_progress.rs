//! Phase 1 stops communication only: while `ckptctl checkpoint
//! --hold-phase1-ms 1500` keeps the gates shut, compute_sender's compute
//! thread keeps counting and its sender thread (plain write(2) calls on a
//! TCP connection to another host, where tcp_echo echoes them back) makes no
//! progress; afterwards the sends resume.  Two hosts, because phase 1 holds
//! only the sends that leave the host.

use anyhow::{bail, ensure, Result};
use ckpt_tests::*;
use std::time::{Duration, Instant};

const HOLD_MS: u64 = 1500;
const KEY: u8 = 7;

fn nums(l: &Line) -> Option<(u64, u64)> {
    let v = fields_u64(&l.text, &["compute", "sends"])?;
    Some((v[0], v[1]))
}

#[test]
fn phase1_hold_stops_sends_not_compute() -> Result<()> {
    require_root!();
    let c = Cluster::start(KEY, 2)?;
    let ip2 = c.host(2).ip.clone();
    let server = c.run_example(2, "echo-server", "tcp_echo", &["server", "9000"])?;
    let app = c.run_example(1, "compute-sender", "compute_sender", &["tcp", &ip2, "9000"])?;
    c.wait_registered(&[(2, &server), (1, &app)], std::time::Duration::from_secs(20))?;
    // Wait until it is sending.
    let t = app.expect_tick(LINE_TIMEOUT)?;
    app.expect_consecutive_ticks(t, 10, false, LINE_TIMEOUT)?;
    app.drain();

    let hold = format!("--hold-phase1-ms={HOLD_MS}");
    let bg = c.checkpoint_bg(1, &[&hold])?;
    // Collect the tick lines printed while ckptctl runs.
    let mut lines: Vec<Line> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !bg.is_finished() {
        ensure!(
            Instant::now() < deadline,
            "ckptctl checkpoint did not finish within 60 s\n{}",
            app.context()
        );
        if let Some(l) = app.wait_line_at(|l| tick_num(l).is_some(), Duration::from_millis(200)) {
            lines.push(l);
        }
    }
    let took = bg.started().elapsed();
    let out = bg.finish()?;
    ensure!(
        out.status.success(),
        "checkpoint --hold-phase1-ms {HOLD_MS} failed\n{}\n{}",
        describe(&out),
        c.context()
    );
    let stats = CkptStats::parse(&stdout_str(&out))?;
    note!(
        "checkpoint {} took {took:?}: {stats:?}; {} tick lines while it ran",
        stats.id,
        lines.len()
    );
    ensure!(
        took >= Duration::from_millis(HOLD_MS),
        "ckptctl returned after {took:?}, before the {HOLD_MS} ms hold was over"
    );
    if let Some(h) = stats.max_held_us {
        ensure!(
            h >= HOLD_MS * 1000,
            "max_held_us = {h} should be at least the hold ({HOLD_MS} ms): {stats:?}"
        );
    }

    // The longest run of tick lines with the same send count.
    let parsed: Vec<(Instant, u64, u64)> = lines
        .iter()
        .filter_map(|l| nums(l).map(|(c, s)| (l.at, c, s)))
        .collect();
    let (mut best_start, mut best_end) = (0usize, 0usize);
    let mut start = 0;
    for i in 1..parsed.len() {
        if parsed[i].2 != parsed[start].2 {
            start = i;
        }
        if parsed[i].0 - parsed[start].0 > parsed[best_end].0 - parsed[best_start].0 {
            best_start = start;
            best_end = i;
        }
    }
    let dump = || lines.iter().map(|l| l.text.as_str()).collect::<Vec<_>>().join("\n");
    ensure!(
        !parsed.is_empty(),
        "no tick lines while the checkpoint ran\n{}",
        app.context()
    );
    let held_for = parsed[best_end].0 - parsed[best_start].0;
    ensure!(
        held_for >= Duration::from_millis(HOLD_MS * 2 / 3),
        "the send counter should stay still for about {HOLD_MS} ms during phase 1; its longest \
         still stretch was {held_for:?}; ticks while ckptctl ran:\n{}",
        dump()
    );
    // Meanwhile the compute counter grows: between every two ticks at least
    // 100 ms apart (a tick may repeat the previous value when the compute
    // thread sleeps), and over the stretch by a lot.
    let run = &parsed[best_start..=best_end];
    let mut grew = 0;
    let mut pairs = 0;
    for w in run.windows(2) {
        pairs += 1;
        if w[1].1 > w[0].1 {
            grew += 1;
        }
    }
    ensure!(
        run.last().unwrap().1 > run[0].1 && grew * 10 >= pairs * 8,
        "the compute counter should keep growing while sends are held (grew in {grew} of {pairs} \
         tick intervals); ticks:\n{}",
        dump()
    );
    let held_sends = run[0].2;
    note!(
        "sends held at {held_sends} for {held_for:?} while compute went {} -> {}",
        run[0].1,
        run.last().unwrap().1
    );

    // Afterwards the sends resume.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let l = app.expect_line_at(
            "a tick line after the checkpoint",
            |l| tick_num(l).is_some(),
            LINE_TIMEOUT,
        )?;
        if let Some((_, s)) = nums(&l) {
            if s > held_sends + 10 {
                break;
            }
        }
        if Instant::now() >= deadline {
            bail!(
                "the send counter did not resume after the checkpoint (last line {:?})",
                l.text
            );
        }
    }
    ensure!(app.is_alive(), "compute_sender died\n{}", app.context());
    Ok(())
}
