//! Process and thread attributes (issue 12): scheduling policy, priority and reset-on-fork,
//! nice, CPU affinity, I/O priority, timer slack and `no_new_privs` of each thread;
//! `oom_score_adj`, audit loginuid, THP disabled, child subreaper, dumpable, supplementary
//! groups, `mlock`/`mlock2(MLOCK_ONFAULT)`/`mlockall(MCL_FUTURE)` and `membarrier`
//! registration of the process: each comes back exactly, twice, also under a seccomp filter.
//! A NUMA memory policy, which ckpt does not set again, is refused, naming it.

use anyhow::{ensure, Context, Result};
use ckpt_tests::*;

#[test]
fn every_attribute_comes_back_twice() -> Result<()> {
    require_root!();
    survives_two_restores("proc_attrs", &[])
}

/// The same under a seccomp filter the main thread installed (after `no_new_privs`): the
/// filter comes back with the rest (see `tests/tests/seccomp.rs` for filters in detail, and
/// what is refused).
#[test]
fn every_attribute_comes_back_twice_under_a_seccomp_filter() -> Result<()> {
    require_root!();
    survives_two_restores("proc_attrs", &["seccomp"])
}

/// A process that moved its root (`chroot`, as daemons do once started) comes back inside the
/// same root, its working directory in it, twice.
#[test]
fn a_chrooted_process_comes_back_in_its_root_twice() -> Result<()> {
    require_root!();
    let dir = tempfile::tempdir()?;
    survives_two_restores("chroot_state", &[dir.path().to_str().unwrap()])
}

/// A process a debugger or tracer outside the checkpoint is attached to is refused, naming the
/// tracer (it would not be attached again); once the tracer lets go, it is checkpointed.
#[test]
fn a_traced_process_is_refused_naming_its_tracer() -> Result<()> {
    require_root!();
    let d = Daemon::start()?;
    let mut app = d.run_example("counter", &[])?;
    app.expect_tick(LINE_TIMEOUT)?;
    // PTRACE_SEIZE (0x4206) leaves the tracee running; the tracer then just waits.
    let script = format!(
        "import ctypes,sys,time\nl=ctypes.CDLL(None,use_errno=True)\n\
         r=l.ptrace(0x4206,{},0,0)\nprint('seized' if r==0 else 'failed %d'%ctypes.get_errno(),flush=True)\ntime.sleep(120)\n",
        app.pid
    );
    let mut tracer = std::process::Command::new("python3")
        .args(["-c", &script])
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(tracer.stdout.take().context("stdout")?),
        &mut line,
    )?;
    ensure!(line.trim() == "seized", "the tracer could not attach: {line}");
    let out = d.ckptctl(&["checkpoint"]);
    let msg = expect_failure_one_line(&out, "checkpoint of a traced process")?;
    ensure!(
        msg.contains(&format!("traced by process {}", tracer.id())) && msg.contains("detach"),
        "the refusal should name the tracer: {msg}"
    );
    tracer.kill()?;
    tracer.wait()?;
    app.drain();
    app.expect_tick(LINE_TIMEOUT)?;
    d.checkpoint().context("once the tracer is gone")?;
    app.kill9()?;
    Ok(())
}

#[test]
fn a_numa_policy_of_the_process_is_refused() -> Result<()> {
    require_root!();
    refused("numa_policy", &["task"], &["NUMA memory policy bind:0", "main thread"])
}

#[test]
fn a_numa_policy_of_another_thread_is_refused() -> Result<()> {
    require_root!();
    refused("numa_policy", &["thread"], &["NUMA memory policy prefer:0", "thread "])
}

#[test]
fn a_numa_policy_of_a_mapping_is_refused() -> Result<()> {
    require_root!();
    refused(
        "numa_policy",
        &["range"],
        &["NUMA memory policy interleave:0", "its memory at "],
    )
}
