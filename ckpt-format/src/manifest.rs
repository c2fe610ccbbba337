//! The global manifest: written last, it commits a checkpoint.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub id: String,
    /// The checkpoint this one is incremental to (pages not stored here are in the parent).
    pub parent: Option<String>,
    pub created_unix_ms: u64,
    pub hosts: Vec<HostEntry>,
    /// Wall time of the whole checkpoint, from request to commit.
    pub duration_us: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostEntry {
    pub host: String,
    pub processes: Vec<ProcessEntry>,
    /// The files the host's processes wrote to, with their policies.
    pub files: Vec<crate::FileSummary>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcessEntry {
    pub pid: i32,
    pub exe: String,
    pub args: Vec<String>,
    pub threads: u32,
    /// The checkpoint this process's image is incremental to.
    pub parent: Option<String>,
    /// Bytes of page data stored for this process in this checkpoint.
    pub stored_bytes: u64,
    pub mapped_bytes: u64,
    /// When its threads were parked (µs since the Unix epoch): the instant its image shows.
    pub parked_at_us: u64,
    /// How long the process's threads were parked.
    pub stop_us: u64,
    /// How long its communication gate was shut (phase 1 to resume).
    pub held_us: u64,
    /// How long storing its pages took once it ran again, until they were durable.
    pub store_us: u64,
    /// Bytes written just before the stop that were left in place, protected, and read once
    /// it ran again (its store window).
    pub window_bytes: u64,
    /// Pages of the store window a thread of the process wrote to, and waited for.
    pub window_faults: u64,
}

impl Manifest {
    pub fn processes(&self) -> impl Iterator<Item = (&str, &ProcessEntry)> {
        self.hosts
            .iter()
            .flat_map(|h| h.processes.iter().map(move |p| (h.host.as_str(), p)))
    }
    pub fn stored_bytes(&self) -> u64 {
        self.processes().map(|(_, p)| p.stored_bytes).sum()
    }
}
