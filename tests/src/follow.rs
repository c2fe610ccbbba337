//! Line readers feeding an [`crate::App`]: one for a pipe (the spawned
//! process's stdout), one that follows a regular file the program writes to
//! (multi-host tests, where restored programs keep writing to their file).

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::process::ChildStdout;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::proc_alive;

/// One line of output with the time it was read.
#[derive(Clone, Debug)]
pub struct Line {
    pub text: String,
    pub at: Instant,
}

/// Shared list of every line read.
pub type History = Arc<Mutex<Vec<Line>>>;

fn emit(buf: &[u8], tx: &Sender<Line>, history: &History) {
    let text = String::from_utf8_lossy(buf).trim_end_matches(['\n', '\r']).to_string();
    let line = Line {
        text,
        at: Instant::now(),
    };
    history.lock().unwrap().push(line.clone());
    let _ = tx.send(line);
}

/// Reads a pipe line by line until EOF (then the sender is dropped).
pub fn pipe_reader(stdout: ChildStdout, tx: Sender<Line>, history: History) {
    let mut r = BufReader::new(stdout);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match r.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => emit(&buf, &tx, &history),
        }
    }
}

/// How often a followed file is polled.
pub const FOLLOW_POLL: Duration = Duration::from_millis(10);

/// What a [`file_follower`] follows.
pub struct FollowSpec {
    pub path: PathBuf,
    /// Byte offset to start reading at.
    pub from: u64,
    /// The program writing the file: once it has been seen alive and then
    /// is gone (after a last read), the follower ends (EOF for the App).
    pub pid: i32,
    /// Set to stop the follower.
    pub stop: Arc<AtomicBool>,
}

/// Polls a regular file and emits each complete line appended to it.  When
/// the file shrinks below the read offset (a restore cut it back to its
/// size at the checkpoint), reading resumes at the new end.
pub fn file_follower(spec: FollowSpec, tx: Sender<Line>, history: History) {
    let mut offset = spec.from;
    let mut partial: Vec<u8> = Vec::new();
    let mut seen_alive = false;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if spec.stop.load(Ordering::Relaxed) {
            return;
        }
        // Check liveness before reading, so that a last read follows the
        // process's exit.
        let alive = proc_alive(spec.pid);
        seen_alive |= alive;
        if let Ok(mut f) = File::open(&spec.path) {
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            if len < offset {
                offset = len;
                partial.clear();
            }
            if len > offset && f.seek(SeekFrom::Start(offset)).is_ok() {
                loop {
                    match f.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            offset += n as u64;
                            partial.extend_from_slice(&buf[..n]);
                        }
                    }
                }
                while let Some(i) = partial.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = partial.drain(..=i).collect();
                    emit(&line, &tx, &history);
                }
            }
        }
        if seen_alive && !alive {
            if !partial.is_empty() {
                emit(&partial, &tx, &history);
            }
            return;
        }
        thread::sleep(FOLLOW_POLL);
    }
}
