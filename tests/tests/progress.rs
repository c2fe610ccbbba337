//! Progress of long checkpoints and restores (issue 13, goal 7): with `--json`, ckptctl prints
//! ckptd's events, one JSON object per line, before its result; on a terminal, a bar on
//! stderr; otherwise nothing more than before.

use anyhow::{ensure, Context, Result};
use ckpt_tests::*;
use serde_json::Value;
use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::Stdio;
use std::time::Duration;

const CHECKPOINT_PHASES: &[&str] = &["phase1", "parking", "reading", "storing", "committing"];
const RESTORE_PHASES: &[&str] = &["checking-files", "making-objects", "loading-pages", "running"];

/// The progress events among `lines` (other lines: the result, a program's output).
fn events(lines: &[String]) -> Result<Vec<Value>> {
    let mut v = Vec::new();
    for l in lines.iter().filter(|l| is_progress_event(l)) {
        v.push(serde_json::from_str::<Value>(l).with_context(|| format!("event is not JSON: {l:?}"))?);
    }
    Ok(v)
}

/// Checks `evs` of operation `op`: every event has the documented fields, the phases come in
/// the documented order and each appears, bytes never decrease, and the last event has done
/// all of a known total. Returns that total.
fn check_events(op: &str, evs: &[Value], phases: &[&str]) -> Result<u64> {
    ensure!(!evs.is_empty(), "{op}: no progress events");
    let mut rank = 0;
    let mut seen = vec![false; phases.len()];
    let mut done = 0;
    let mut elapsed = 0;
    for e in evs {
        ensure!(e["op"] == op, "{op}: event of another operation: {e}");
        let phase = e["phase"].as_str().with_context(|| format!("no phase in {e}"))?;
        let r = phases
            .iter()
            .position(|p| *p == phase)
            .with_context(|| format!("{op}: undocumented phase {phase:?} in {e}"))?;
        ensure!(r >= rank, "{op}: phase {phase} came after {}: {evs:#?}", phases[rank]);
        rank = r;
        seen[r] = true;
        let d = e["done_bytes"]
            .as_u64()
            .with_context(|| format!("no done_bytes in {e}"))?;
        ensure!(d >= done, "{op}: done_bytes went down from {done} to {d}: {evs:#?}");
        done = d;
        if let Some(t) = e["total_bytes"].as_u64() {
            ensure!(d <= t, "{op}: done_bytes {d} above total_bytes {t} in {e}");
        } else {
            ensure!(
                e["total_bytes"].is_null(),
                "{op}: total_bytes neither a number nor null in {e}"
            );
        }
        ensure!(e["rate_bytes_per_s"].is_u64(), "{op}: no rate_bytes_per_s in {e}");
        ensure!(e["hosts"].is_u64(), "{op}: no hosts in {e}");
        let ms = e["elapsed_ms"]
            .as_u64()
            .with_context(|| format!("no elapsed_ms in {e}"))?;
        ensure!(ms >= elapsed, "{op}: elapsed_ms went back in {e}");
        elapsed = ms;
    }
    ensure!(
        seen.iter().all(|s| *s),
        "{op}: every phase of {phases:?} should be reported; got {evs:#?}"
    );
    let last = evs.last().context("no last event")?;
    let total = last["total_bytes"]
        .as_u64()
        .with_context(|| format!("{op}: the last event should know the total: {last}"))?;
    ensure!(
        last["done_bytes"].as_u64() == Some(total),
        "{op}: the last event should have done all {total} bytes: {last}"
    );
    Ok(total)
}

#[test]
fn checkpoint_and_restore_report_progress_as_json_events() -> Result<()> {
    require_root!();
    let d = Daemon::start()?;
    let mut app = d.run_example("mem_pattern", &["256"])?;
    let pid = app.pid;
    app.expect_tick_line(Duration::from_secs(90))?;

    let out = d.ckptctl(&["--json", "checkpoint"]);
    ensure!(
        out.status.success(),
        "ckptctl --json checkpoint failed\n{}\n{}",
        describe(&out),
        d.context()
    );
    let lines: Vec<String> = stdout_str(&out).lines().map(str::to_string).collect();
    let (result, before) = lines
        .split_last()
        .context("ckptctl --json checkpoint printed nothing")?;
    let evs = events(before)?;
    ensure!(
        evs.len() == before.len(),
        "every line before the result should be an event: {lines:#?}"
    );
    let result: Value = serde_json::from_str(result).with_context(|| format!("result is not JSON: {result:?}"))?;
    let id = result["id"]
        .as_str()
        .with_context(|| format!("no id in {result}"))?
        .to_string();
    let total = check_events("checkpoint", &evs, CHECKPOINT_PHASES)?;
    note!("checkpoint {id}: {} events, {total} bytes stored", evs.len());
    for e in &evs {
        note!("  {e}");
    }
    ensure!(
        total >= 200 << 20,
        "a full checkpoint of 256 MiB of memory should store most of it, progress says {total} bytes"
    );

    app.expect_tick(LINE_TIMEOUT)?;
    app.kill9()?;
    let mut r = d.restore_args(&id, pid, &["--json"])?;
    let st = r.wait_child_exit(Duration::from_secs(120))?;
    ensure!(
        st.success(),
        "ckptctl --json restore {id} failed: {}\n{}",
        fmt_status(&st),
        r.context()
    );
    let (t, line) = r.expect_tick_line(Duration::from_secs(60))?;
    ensure!(
        line.trim_end().ends_with(" ok"),
        "restored mem_pattern: {line:?}\n{}",
        r.context()
    );
    let lines = r.history();
    let evs = events(&lines)?;
    let loaded = check_events("restore", &evs, RESTORE_PHASES)?;
    note!("restore: {} events, {loaded} bytes loaded", evs.len());
    for e in &evs {
        note!("  {e}");
    }
    ensure!(loaded >= 200 << 20, "the restore should load the pages: {loaded} bytes");
    let result = lines
        .iter()
        .find(|l| serde_json::from_str::<Value>(l).is_ok_and(|v| v["id"] == id.as_str() && v["pids"].is_array()))
        .with_context(|| format!("no restore result among {lines:#?}"))?;
    let at = |s: &str| lines.iter().position(|l| l == s);
    let last_event = lines.iter().rposition(|l| is_progress_event(l));
    ensure!(last_event < at(result), "events come before the result: {lines:#?}");
    r.expect_consecutive_ticks(t, 1, true, LINE_TIMEOUT)?;
    r.kill9()?;
    Ok(())
}

#[test]
fn checkpoint_without_terminal_or_json_prints_only_the_id() -> Result<()> {
    require_root!();
    let d = Daemon::start()?;
    let app = d.run_example("counter", &[])?;
    app.expect_tick(LINE_TIMEOUT)?;
    // Long enough that a bar would show, were one shown.
    let out = d.ckptctl(&["checkpoint", "--hold-phase1-ms", "1500"]);
    ensure!(out.status.success(), "ckptctl checkpoint failed\n{}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        stdout.lines().count() == 1 && stdout.trim().parse::<u64>().is_ok(),
        "stdout should be the id alone: {stdout:?}"
    );
    ensure!(
        out.stderr.is_empty(),
        "stderr should stay empty: {:?}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[test]
fn a_bar_shows_on_a_terminal_and_is_cleared() -> Result<()> {
    require_root!();
    let d = Daemon::start()?;
    let app = d.run_example("counter", &[])?;
    app.expect_tick(LINE_TIMEOUT)?;
    let (mut master, mut slave) = (-1, -1);
    // SAFETY: two out-pointers; no name, termios or size.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    ensure!(rc == 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: openpty just made both; each is owned once.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    let child = {
        // Dropped at once: the command would hold the terminal open after ckptctl exits.
        let mut cmd = d.ckptctl_cmd(&["checkpoint", "--hold-phase1-ms", "2000"]);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(slave));
        cmd.spawn().context("starting ckptctl")?
    };
    // The terminal is read until ckptctl, its only other holder, has exited.
    let reader = std::thread::spawn(move || {
        let mut f = std::fs::File::from(master);
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = f.read(&mut buf) {
            if n == 0 {
                break;
            }
            all.extend_from_slice(&buf[..n]);
        }
        all
    });
    let out = child.wait_with_output()?;
    let term = String::from_utf8_lossy(&reader.join().unwrap_or_default()).to_string();
    ensure!(out.status.success(), "ckptctl checkpoint failed: {term}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        stdout.lines().count() == 1 && stdout.trim().parse::<u64>().is_ok(),
        "stdout should still be the id alone: {stdout:?}"
    );
    note!("terminal got {term:?}");
    ensure!(
        term.contains("checkpoint") && term.contains("phase 1"),
        "the terminal should have shown the bar in phase 1: {term:?}"
    );
    // Cleared: the last thing drawn erases the line (ESC [ ... K) and nothing follows it.
    let tail = term.rsplit('\r').next().unwrap_or_default();
    ensure!(
        !tail.contains("checkpoint"),
        "the bar should be cleared at the end, the terminal ends with {tail:?}"
    );
    Ok(())
}

/// A ckptctl of the previous protocol version (its hello, as bincode frames it: length 2,
/// variant `Ctl`, the version as one byte) is refused with the one-line message.
#[test]
fn a_ckptctl_of_the_previous_protocol_is_refused_in_one_line() -> Result<()> {
    use std::io::Write;
    require_root!();
    let d = Daemon::start()?;
    let mut s = std::os::unix::net::UnixStream::connect(d.socket())?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let (old, now) = (ckpt_proto::PROTO_VERSION - 1, ckpt_proto::PROTO_VERSION);
    // bincode's varint: a version below 251 is one byte.
    s.write_all(&[2, 0, 0, 0, 1, old as u8])?;
    let mut len = [0u8; 4];
    s.read_exact(&mut len)?;
    let mut answer = vec![0u8; u32::from_le_bytes(len) as usize];
    s.read_exact(&mut answer)?;
    let text = String::from_utf8_lossy(&answer);
    ensure!(
        text.contains(&format!(
            "protocol version {old} is not supported (ckptd speaks {now}); use matching ckpt binaries"
        )),
        "an old ckptctl should be refused with the version message, got {text:?}"
    );
    Ok(())
}
