//! Progress of a checkpoint or restore while ckptd works: a bar on stderr when it is a
//! terminal and the operation has lasted more than a second (cleared before the answer is
//! printed), or one JSON object per event on stdout with `--json`, or nothing.

use crate::render::bytes;
use ckpt_proto::{Phase, Progress};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::Write;
use std::time::{Duration, Instant};

/// The bar appears only for operations longer than this.
const QUIET_FOR: Duration = Duration::from_secs(1);

/// One `--json` event, its fields in this order (the README documents them).
#[derive(serde::Serialize)]
struct Event {
    event: &'static str,
    op: &'static str,
    phase: &'static str,
    done_bytes: u64,
    total_bytes: Option<u64>,
    rate_bytes_per_s: u64,
    elapsed_ms: u64,
    hosts: u32,
}

pub enum Show {
    Json,
    Bar,
}

pub struct Reporter {
    show: Show,
    /// "checkpoint" or "restore", as the JSON events name it.
    op: &'static str,
    started: Instant,
    last: Option<Progress>,
    bar: Option<ProgressBar>,
    /// The restored programs run and may write to the terminal: no bar any more.
    done: bool,
}

impl Reporter {
    pub fn new(show: Show, op: &'static str) -> Self {
        Self {
            show,
            op,
            started: Instant::now(),
            last: None,
            bar: None,
            done: false,
        }
    }

    /// One event from ckptd.
    pub fn event(&mut self, p: Progress) {
        match self.show {
            Show::Json => {
                let line = Event {
                    event: "progress",
                    op: self.op,
                    phase: p.phase.key(),
                    done_bytes: p.done_bytes,
                    total_bytes: p.total_bytes,
                    rate_bytes_per_s: p.rate_bytes_per_s,
                    elapsed_ms: p.elapsed_ms,
                    hosts: p.hosts,
                };
                let line = serde_json::to_string(&line).unwrap_or_default();
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{line}");
                let _ = out.flush();
            }
            Show::Bar => {
                if p.phase == Phase::Running {
                    self.clear();
                    self.done = true;
                }
                self.last = Some(p);
                self.tick();
            }
        }
    }

    /// Time passed with no event: shows the bar once the operation is long enough.
    pub fn tick(&mut self) {
        if !matches!(self.show, Show::Bar) || self.done || self.started.elapsed() < QUIET_FOR {
            return;
        }
        let Some(p) = &self.last else { return };
        let (op, started) = (self.op, self.started);
        let bar = self.bar.get_or_insert_with(|| {
            // Drawn only once styled; its clock is the operation's.
            let b = ProgressBar::hidden().with_elapsed(started.elapsed());
            b.set_prefix(op);
            b
        });
        let first = bar.is_hidden();
        let rate = if p.rate_bytes_per_s > 0 {
            format!(", {}/s", bytes(p.rate_bytes_per_s))
        } else {
            String::new()
        };
        match p.total_bytes {
            Some(total) if total > 0 => {
                bar.set_style(
                    ProgressStyle::with_template("{prefix} {elapsed:>3} [{bar:30}] {percent:>3}% {msg}")
                        .unwrap_or_else(|_| ProgressStyle::default_bar()),
                );
                bar.set_message(format!(
                    "{}: {} of {}{rate}",
                    p.phase,
                    bytes(p.done_bytes),
                    bytes(total)
                ));
                bar.set_length(total);
                bar.set_position(p.done_bytes.min(total));
            }
            _ => {
                bar.set_style(
                    ProgressStyle::with_template("{prefix} {elapsed:>3} {spinner} {msg}")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                let so_far = if p.done_bytes > 0 {
                    format!(": {}{rate}", bytes(p.done_bytes))
                } else {
                    String::new()
                };
                bar.set_message(format!("{}{so_far}", p.phase));
            }
        }
        if first {
            bar.set_draw_target(ProgressDrawTarget::stderr());
        }
        bar.tick();
    }

    /// Before the answer is printed.
    pub fn clear(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}
