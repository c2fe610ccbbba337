//! Test harness for ckpt: locates the binaries, compiles the example
//! programs, runs a private `ckptd` per test (or a cluster of them, one per
//! network namespace) and drives `ckpt-run` / `ckptctl` with timeouts
//! everywhere.
//!
//! Every process this harness starts is reaped.  The test process makes
//! itself a child subreaper, so restored processes orphaned by ckptd land
//! here (instead of on PID 1, which does not reap on this machine) and are
//! reaped by [`wait_proc_gone`] / [`reap_orphans`].
//!
//! Modules: [`paths`] (binaries, examples), [`procs`] (spawn, reap,
//! signals, /proc), [`output`] (line parsing, messages), [`store`]
//! (checkpoint directories), [`follow`] (line readers), [`memstat`] (a
//! process's memory figures), [`ports`] (loopback ports of servers), [`run_as`] (another user's ckptd), [`app`] ([`App`]),
//! [`daemon`] ([`Daemon`]), [`netns`] (hosts as network namespaces),
//! [`cluster`] ([`Cluster`]), [`cluster_ctl`] (ckptctl against it) and [`verdict`]
//! (self-checking examples), [`churn`] (programs whose processes come and go), [`disk`] (the
//! disk's own rates, for the benchmarks).
//! Everything is re-exported here.

use std::time::Duration;

#[macro_use]
pub mod output;
pub mod app;
pub mod chain;
pub mod churn;
pub mod clients;
pub mod cluster;
pub mod cluster_ctl;
pub mod daemon;
pub mod disk;
pub mod follow;
pub mod memstat;
pub mod netns;
pub mod paths;
pub mod ports;
pub mod procs;
pub mod run_as;
pub mod store;
pub mod verdict;
pub mod written;

pub use app::*;
pub use churn::*;
pub use clients::*;
pub use cluster::*;
pub use daemon::*;
pub use disk::*;
pub use follow::Line;
pub use memstat::*;
pub use netns::*;
pub use output::*;
pub use paths::*;
pub use ports::*;
pub use procs::*;
pub use run_as::*;
pub use store::*;
pub use verdict::*;

/// Default timeout for one `ckptctl` invocation.
pub const CKPTCTL_TIMEOUT: Duration = Duration::from_secs(180);
/// Default timeout for waiting for an output line.
pub const LINE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long to wait for a killed process to disappear from /proc.
pub const GONE_TIMEOUT: Duration = Duration::from_secs(20);

/// Lines that make an example program's output a failure at once.
pub const FAILURE_MARKERS: &[&str] = &["MISMATCH", "INVARIANT", "WRITE_FAILED", "STALLED"];
