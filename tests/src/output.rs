//! Helpers for program and command output: tick lines, fields, exit
//! statuses, one-line errors, log tails, progress notes, medians.

use anyhow::{bail, Context, Result};
use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{ExitStatus, Output};
use std::sync::OnceLock;
use std::time::Instant;

/// `tick <n> ...` -> n.
pub fn tick_num(line: &str) -> Option<u64> {
    let mut it = line.split_whitespace();
    if it.next()? != "tick" {
        return None;
    }
    it.next()?.parse().ok()
}

/// The token following `key` in a whitespace separated line
/// (`field("tick 3 pid 42", "pid") == Some("42")`).
pub fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let mut it = line.split_whitespace();
    while let Some(t) = it.next() {
        if t == key {
            return it.next();
        }
    }
    None
}

/// The number following `key` in a whitespace separated line.
pub fn field_u64(line: &str, key: &str) -> Option<u64> {
    field(line, key)?.parse().ok()
}

/// True if `text` contains `n` as a whole number (not part of a larger one).
pub fn contains_number(text: &str, n: i64) -> bool {
    let want = n.to_string();
    text.split(|c: char| !c.is_ascii_digit()).any(|tok| tok == want)
}

/// First word of every line of `ckptctl list` output (ids, plus a header
/// word if there is a header).
pub fn first_words(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// Human readable dump of an `Output`.
pub fn describe(out: &Output) -> String {
    format!(
        "status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        fmt_status(&out.status),
        String::from_utf8_lossy(&out.stdout).trim_end(),
        String::from_utf8_lossy(&out.stderr).trim_end()
    )
}

/// "exit code N" / "killed by signal N".
pub fn fmt_status(st: &ExitStatus) -> String {
    match (st.code(), st.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => format!("{st:?}"),
    }
}

/// Trimmed stdout as a String.
pub fn stdout_str(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Checks that `out` failed (non-zero exit, not killed by a signal) with
/// exactly one non-empty line on stderr; returns that line.
pub fn expect_failure_one_line(out: &Output, what: &str) -> Result<String> {
    if out.status.success() {
        bail!("{what}: expected a non-zero exit, got success\n{}", describe(out));
    }
    if out.status.code().is_none() {
        bail!("{what}: expected a non-zero exit code, process died\n{}", describe(out));
    }
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.len() != 1 {
        bail!(
            "{what}: expected exactly one line on stderr, got {}\n{}",
            lines.len(),
            describe(out)
        );
    }
    Ok(lines[0].trim().to_string())
}

/// Removes ANSI escape sequences (colored log output).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        if c == '\x1b' {
            if it.peek() == Some(&'[') {
                it.next();
                for d in it.by_ref() {
                    if ('@'..='~').contains(&d) {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// Last `n` lines of a file (empty string if unreadable), ANSI-stripped.
pub fn file_tail(path: &Path, n: usize) -> String {
    let s = fs::read(path).unwrap_or_default();
    let s = strip_ansi(&String::from_utf8_lossy(&s));
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Timestamped progress message on stderr (shown by cargo test on failure
/// or with --nocapture).
#[macro_export]
macro_rules! note {
    ($($arg:tt)*) => {
        eprintln!("[{}] {}", $crate::elapsed_str(), format!($($arg)*))
    };
}

static T0: OnceLock<Instant> = OnceLock::new();

/// Seconds since the first call, for [`note!`].
pub fn elapsed_str() -> String {
    let t0 = *T0.get_or_init(Instant::now);
    format!("{:8.3}s", t0.elapsed().as_secs_f64())
}

/// Median of a non-empty slice (mean of the two middle values).
pub fn median(v: &[f64]) -> f64 {
    let mut s: Vec<f64> = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = s.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// Median of the values (see [`median`]).
pub fn median_of(v: impl Iterator<Item = f64>) -> f64 {
    median(&v.collect::<Vec<f64>>())
}

/// Whether `line` is one of the progress events `ckptctl --json checkpoint|restore` prints
/// before its result.
pub fn is_progress_event(line: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(line).is_ok_and(|v| v["event"] == "progress")
}

/// The result `ckptctl --json checkpoint` prints: its last line (progress events come before).
pub fn json_result(stdout: &str) -> &str {
    stdout.trim_end().lines().last().unwrap_or_default()
}

/// What `ckptctl checkpoint --json` reports.  The phase fields are `None`
/// when the binaries do not report them.
#[derive(Clone, Debug, Default)]
pub struct CkptStats {
    pub id: String,
    pub processes: u64,
    pub stored_bytes: u64,
    pub duration_us: u64,
    pub max_stop_us: u64,
    /// The longest time storing a host's pages took once its programs ran again.
    pub max_store_us: u64,
    pub phase1_us: Option<u64>,
    pub phase2_us: Option<u64>,
    pub max_held_us: Option<u64>,
    pub window_bytes: u64,
    pub window_faults: u64,
}

impl CkptStats {
    /// Parses the JSON object printed by `ckptctl checkpoint --json`.
    pub fn parse(text: &str) -> Result<CkptStats> {
        let v: serde_json::Value = serde_json::from_str(json_result(text))
            .map_err(|e| anyhow::anyhow!("ckptctl checkpoint --json: not JSON ({e}): {text:?}"))?;
        let id = match v.get("id") {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Number(n)) => n.to_string(),
            _ => bail!("ckptctl checkpoint --json: no \"id\": {text}"),
        };
        let u = |k: &str| v.get(k).and_then(|x| x.as_u64());
        Ok(CkptStats {
            id,
            processes: u("processes").unwrap_or(0),
            stored_bytes: u("stored_bytes").unwrap_or(0),
            duration_us: u("duration_us").unwrap_or(0),
            max_stop_us: u("max_stop_us").unwrap_or(0),
            max_store_us: u("max_store_us").unwrap_or(0),
            phase1_us: u("phase1_us"),
            phase2_us: u("phase2_us"),
            max_held_us: u("max_held_us"),
            window_bytes: u("window_bytes").unwrap_or(0),
            window_faults: u("window_faults").unwrap_or(0),
        })
    }
}

/// The numbers following each of `keys` in a line (`fields_u64("tick 3 compute 10 sends 2", &["compute", "sends"])
/// == Some(vec![10, 2])`).
pub fn fields_u64(line: &str, keys: &[&str]) -> Option<Vec<u64>> {
    keys.iter().map(|k| field_u64(line, k)).collect()
}

/// The comma-separated numbers after `--name` in `args` (`default` when it is absent), for
/// the benchmarks' options (`--sizes 256,1024`).
pub fn list_arg(args: &[String], name: &str, default: &str) -> Vec<u64> {
    let v = args
        .iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
        .unwrap_or(default);
    v.split(',').filter_map(|s| s.trim().parse().ok()).collect()
}

/// `(host, pid)` of each process in the output of `ckptctl status --json`.
pub fn parse_status(json: &str) -> Result<Vec<(String, i32)>> {
    let v: serde_json::Value =
        serde_json::from_str(json).with_context(|| format!("ckptctl status --json: not JSON: {json:?}"))?;
    let procs = v
        .get("processes")
        .and_then(|p| p.as_array())
        .ok_or_else(|| anyhow::anyhow!("ckptctl status --json: no \"processes\" array: {json}"))?;
    let mut out = Vec::new();
    for p in procs {
        match (
            p.get("host").and_then(|x| x.as_str()),
            p.get("pid").and_then(|x| x.as_i64()),
        ) {
            (Some(h), Some(pid)) => out.push((h.to_string(), pid as i32)),
            _ => anyhow::bail!("ckptctl status --json: entry without host or pid: {p}"),
        }
    }
    Ok(out)
}
