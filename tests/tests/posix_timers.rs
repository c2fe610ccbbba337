//! POSIX timers (issue 10): `posix_timers` holds timers of every clock and notification kind
//! and checks its own state when asked (SIGUSR1); it is checkpointed, killed and restored twice.

use anyhow::Result;
use ckpt_tests::*;

#[test]
fn posix_timers_keep_ids_clocks_targets_and_times() -> Result<()> {
    require_root!();
    survives_two_restores("posix_timers", &[])
}
