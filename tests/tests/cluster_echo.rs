//! Two hosts: tcp_echo server on h1, client on h2.  20 checkpoints during
//! the traffic (via either host), each succeeding without disturbing the
//! stream; then both are killed and the 10th checkpoint is restored: the
//! byte stream carries on, checked byte by byte.

use anyhow::{ensure, Result};
use ckpt_tests::*;
use std::time::Duration;

const KEY: u8 = 1;
const PORT: &str = "9000";
const ROUNDS: usize = 20;
const RESTORE_ROUND: usize = 10;

/// Longest time between two tick lines of `app`'s history.
fn longest_tick_gap(app: &App) -> Duration {
    let ticks: Vec<Line> = app
        .history_lines()
        .into_iter()
        .filter(|l| tick_num(&l.text).is_some())
        .collect();
    ticks.windows(2).map(|w| w[1].at - w[0].at).max().unwrap_or_default()
}

fn recv(line: &str) -> u64 {
    field(line, "recv").and_then(|s| s.parse().ok()).unwrap_or(0)
}

#[test]
fn cluster_echo_20_checkpoints_then_restore() -> Result<()> {
    require_root!();
    let c = Cluster::start(KEY, 2)?;
    let ip1 = c.host(1).ip.clone();
    let server = c.run_example(1, "server", "tcp_echo", &["server", PORT])?;
    let client = c.run_example(2, "client", "tcp_echo", &["client", &ip1, PORT])?;
    c.wait_registered(&[(1, &server), (2, &client)], Duration::from_secs(20))?;
    let t = client.expect_tick(LINE_TIMEOUT)?;
    client.expect_consecutive_ticks(t, 2, true, Duration::from_secs(5))?;

    let mut ids = Vec::new();
    for round in 1..=ROUNDS {
        let via = 1 + round % 2;
        let s = c.checkpoint(via, &[])?;
        ensure!(
            s.processes == 2,
            "checkpoint {round} (via h{via}) should hold 2 processes: {s:?}"
        );
        note!(
            "checkpoint {round} via h{via}: id {} total {} us, phase1 {:?} us, phase2 {:?} us, held {:?} us, stop {} us",
            s.id,
            s.duration_us,
            s.phase1_us,
            s.phase2_us,
            s.max_held_us,
            s.max_stop_us
        );
        ids.push(s.id);
        // The stream goes on (a MISMATCH line fails at once).
        client.expect_line(
            "an ok tick after the checkpoint",
            |l| l.ends_with(" ok"),
            Duration::from_secs(5),
        )?;
        std::thread::sleep(Duration::from_millis(200));
    }
    let listed = c.list_ids(1)?;
    for id in &ids {
        ensure!(listed.contains(id), "checkpoint {id} should be listed: {listed:?}");
    }
    let gap = longest_tick_gap(&client);
    note!("longest gap between two client ticks: {gap:?}");
    ensure!(
        gap <= Duration::from_millis(2200),
        "the client's ticks stopped for {gap:?} during the checkpoints (at most ~2 s allowed)\n{}",
        client.context()
    );
    for app in [&server, &client] {
        let h = app.history();
        ensure!(
            !h.iter()
                .any(|l| FAILURE_MARKERS.iter().any(|m| l.contains(m)) || l.contains("peer closed")),
            "{} reported a failure: {:?}",
            app.label(),
            h.iter().rev().take(5).collect::<Vec<_>>()
        );
    }

    // Kill both, restore the 10th checkpoint.
    let (spid, cpid) = (server.pid, client.pid);
    let mut apps = vec![server, client];
    Cluster::kill_all(&mut apps)?;
    let id = ids[RESTORE_ROUND - 1].clone();
    note!("killed {spid} and {cpid}; restoring checkpoint {id}");
    let restored = c.restore(1, &id, apps)?;
    let (server, client) = (&restored[0], &restored[1]);
    let first = client.expect_line(
        "the client's first tick after restore",
        |l| tick_num(l).is_some(),
        LINE_TIMEOUT,
    )?;
    let mut last_recv = recv(&first);
    let t = tick_num(&first).unwrap();
    note!("after restore: {first}");
    for l in client.expect_consecutive_ticks(t, 3, true, Duration::from_secs(5))? {
        let r = recv(&l);
        ensure!(
            r > last_recv,
            "recv should keep growing after restore: {l:?} after {last_recv}\n{}",
            client.context()
        );
        last_recv = r;
    }
    server.expect_line(
        "a server tick after restore",
        |l| l.ends_with(" ok"),
        Duration::from_secs(5),
    )?;
    ensure!(
        server.pid == spid && client.pid == cpid && proc_alive(spid) && proc_alive(cpid),
        "the restored programs should still be alive: {spid} ({:?}) {cpid} ({:?})\n{}\n{}",
        proc_state(spid),
        proc_state(cpid),
        client.context(),
        server.context()
    );
    let st = c.status(1)?;
    ensure!(
        st.contains(&("h1".to_string(), spid)) && st.contains(&("h2".to_string(), cpid)),
        "status should list the restored programs on their hosts: {st:?}"
    );
    Ok(())
}
