//! A token ring of 4 processes on 4 hosts: checkpoint during the traffic,
//! kill all, restore: the ring carries on with no token lost, duplicated or
//! reordered (token_ring checks every hop; `live` = tokens seen in the last
//! second must stay K on every process).

use anyhow::{ensure, Result};
use ckpt_tests::*;
use std::time::Duration;

const KEY: u8 = 2;
const HOSTS: usize = 4;
const TOKENS: u64 = 8;
const PORT: u16 = 9100;

fn num(line: &str, key: &str) -> u64 {
    field(line, key).and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// Waits for `n` tick lines on every member: each `ok`, with every token
/// seen recently (`live == K`) and `seen` growing.  On failure the error
/// ends with every member's last lines (the first to fail may only report
/// that a neighbour died).
fn check_ring(ring: &[App], n: usize, what: &str) -> Result<()> {
    check_members(ring, n, what).map_err(|e| {
        let mut s = format!("{e:#}\n=== every member's last lines ===");
        for app in ring {
            s.push_str(&format!("\n--- {} (pid {}) ---\n{}", app.label(), app.pid, app.tail(4)));
        }
        anyhow::anyhow!(s)
    })
}

fn check_members(ring: &[App], n: usize, what: &str) -> Result<()> {
    for app in ring {
        let mut last_seen = 0;
        for _ in 0..n {
            let l = app.expect_line(
                &format!("a tick line ({what})"),
                |l| tick_num(l).is_some(),
                Duration::from_secs(5),
            )?;
            ensure!(
                l.ends_with(" ok"),
                "{}: bad tick line {l:?} ({what})\n{}",
                app.label(),
                app.context()
            );
            ensure!(
                num(&l, "ids") == TOKENS && num(&l, "live") == TOKENS,
                "{}: every one of the {TOKENS} tokens should come by every second ({what}): {l:?}\n{}",
                app.label(),
                app.context()
            );
            let seen = num(&l, "seen");
            ensure!(
                seen > last_seen,
                "{}: `seen` should grow ({what}): {l:?}\n{}",
                app.label(),
                app.context()
            );
            last_seen = seen;
        }
    }
    Ok(())
}

#[test]
fn cluster_token_ring_checkpoint_kill_restore() -> Result<()> {
    require_root!();
    let c = Cluster::start(KEY, HOSTS)?;
    let addrs: Vec<String> = (1..=HOSTS).map(|i| format!("{}:{PORT}", c.host(i).ip)).collect();
    let k = TOKENS.to_string();
    let mut ring = Vec::new();
    for i in 1..=HOSTS {
        let idx = (i - 1).to_string();
        let mut args: Vec<&str> = vec![&idx, &k];
        args.extend(addrs.iter().map(String::as_str));
        ring.push(c.run_example(i, &format!("ring{i}"), "token_ring", &args)?);
    }
    let members: Vec<(usize, &App)> = ring.iter().enumerate().map(|(i, a)| (i + 1, a)).collect();
    c.wait_registered(&members, Duration::from_secs(20))?;
    // The first tick may come before the ring is complete.
    for app in &ring {
        app.expect_tick(LINE_TIMEOUT)?;
    }
    check_ring(&ring, 2, "before the checkpoint")?;

    let s = c.checkpoint(3, &[])?;
    note!("checkpoint {s:?}");
    ensure!(
        s.processes == HOSTS as u64,
        "the checkpoint should hold {HOSTS} processes: {s:?}"
    );
    check_ring(&ring, 2, "after the checkpoint")?;

    let pids: Vec<i32> = ring.iter().map(|a| a.pid).collect();
    Cluster::kill_all(&mut ring)?;
    note!("killed {pids:?}; restoring {}", s.id);
    let ring = c.restore(1, &s.id, ring)?;
    // The first tick after the restore may still count the time the ring
    // was dead; then every token must come by every second.
    for app in &ring {
        app.expect_tick(LINE_TIMEOUT)?;
    }
    check_ring(&ring, 4, "after the restore")?;
    let st = c.status(2)?;
    for (i, pid) in pids.iter().enumerate() {
        let h = format!("h{}", i + 1);
        ensure!(
            st.contains(&(h.clone(), *pid)),
            "status should list pid {pid} on {h}: {st:?}"
        );
    }
    Ok(())
}
