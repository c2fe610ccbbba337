//! Pending signals keep their siginfo: `pending_signals` holds signals queued for the process
//! and for each of its threads (real-time ones several times, with values, a standard one from
//! `kill`, thread-directed ones from `pthread_kill`/`tgkill`) and checks every siginfo and
//! their order when asked (SIGUSR1), then queues them again. It is checked after a checkpoint
//! it survives, then checkpointed, killed and restored twice, and checked after each restore.

use anyhow::{Context, Result};
use ckpt_tests::*;

#[test]
fn pending_signals_come_back_with_their_siginfo_in_order() -> Result<()> {
    require_root!();
    let d = Daemon::start()?;
    let app = d.run_example("pending_signals", &[])?;
    app.expect_tick(LINE_TIMEOUT)?;
    // The program's own check holds without ckpt, and queues everything again.
    ask_state(&app).context("before any checkpoint")?;
    // Reading the queues stops its threads with ptrace: the program runs on unharmed, its
    // signals still queued as they were.
    d.checkpoint_app(&app).context("checkpoint 0")?;
    app.expect_tick(LINE_TIMEOUT).context("after checkpoint 0")?;
    ask_state(&app).with_context(|| format!("after checkpoint 0, still running\n{}", d.context()))?;
    let mut app = restore_twice(&d, app)?;
    app.kill9()?;
    Ok(())
}

/// Alternate signal stacks come back as the program had them: none on the main thread (whose
/// SA_ONSTACK handler crashed after a restore, on the restorer's stack that was gone), its own
/// on a thread that set one.
#[test]
fn alternate_signal_stacks_come_back_as_they_were() -> Result<()> {
    require_root!();
    survives_two_restores("altstack_state", &[])
}
