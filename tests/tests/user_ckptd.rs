//! A ckptd run by an ordinary user (issue 11): given `CAP_CHECKPOINT_RESTORE` and nothing
//! else, it restores that user's programs with their pids, and the restored program holds no
//! capability (the restorer gives each thread its own sets back, those of the checkpoint);
//! without the capability, the restore says in one line what it needs. A root program's
//! capability sets come back as they were, too.

use anyhow::{ensure, Context, Result};
use ckpt_tests::*;
use std::time::Duration;

const NOBODY: &str = "nobody";

/// Checkpoint, kill, restore `app` (of a user's ckptd) twice, the second time from a checkpoint
/// of the restored program: each time the same pid, the count carries on, and no thread holds
/// any capability.
#[test]
fn a_users_ckptd_with_the_capability_restores_pids_and_keeps_none() -> Result<()> {
    require_root!();
    let user = RunAs::user(NOBODY, true)?;
    let d = Daemon::start_as(user.clone(), &[])?;
    let ckptd_caps = cap_lines(d.pid());
    ensure!(
        ckptd_caps.iter().any(|l| l.contains("CapEff: 0000010000000000")),
        "ckptd should hold CAP_CHECKPOINT_RESTORE alone: {ckptd_caps:?}"
    );
    let mut app = d.run_example("counter", &[])?;
    app.expect_tick(LINE_TIMEOUT)?;
    let pid = app.pid;
    let before = held_caps(pid);
    ensure!(before.is_empty(), "the program starts with no capability: {before:?}");
    for round in 1..=2 {
        let cp = d.checkpoint_app(&app).with_context(|| format!("checkpoint {round}"))?;
        app.kill9_tree()?;
        app = d.restore_ok(&cp.id, pid).with_context(|| format!("restore {round}"))?;
        let first = app
            .expect_tick(LINE_TIMEOUT)
            .with_context(|| format!("after restore {round}\n{}", d.context()))?;
        cp.check_resumed(first, &app)?;
        let lines = cap_lines(pid);
        note!("restore {round}: {}", lines.join("; "));
        ensure!(
            lines
                .iter()
                .any(|l| l.contains(&format!("Uid: {0} {0} {0} {0}", user.uid))),
            "the restored program runs as {}: {lines:?}",
            user.name
        );
        let held = held_caps(pid);
        ensure!(
            held.is_empty(),
            "restore {round}: the restored program must hold no capability, it holds {held:?}"
        );
        ensure!(
            task_tids(pid).len() >= 2,
            "the interposer's thread is back too: {:?}",
            task_tids(pid)
        );
    }
    verdict::kill_pid(pid)?;
    Ok(())
}

/// Without the capability, a user's ckptd checkpoints as before and its restore is refused in
/// one line that names what it needs, leaving the store as it was.
#[test]
fn without_the_capability_the_restore_says_what_it_needs() -> Result<()> {
    require_root!();
    let d = Daemon::start_as(RunAs::user(NOBODY, false)?, &[])?;
    let mut app = d.run_example("counter", &[])?;
    app.expect_tick(LINE_TIMEOUT)?;
    let pid = app.pid;
    let cp = d.checkpoint_app(&app)?;
    app.kill9_tree()?;
    let out = d.ckptctl(&["restore", &cp.id, "--detach"]);
    let msg = expect_failure_one_line(&out, "restore by a ckptd without the capability")?;
    note!("{msg}");
    ensure!(
        msg.contains("CAP_CHECKPOINT_RESTORE")
            && msg.contains(&format!("pid {pid}"))
            && msg.contains("nothing was changed"),
        "the refusal should name the pid and the capability, before anything changed: {msg:?}"
    );
    ensure!(!proc_exists(pid), "nothing may run as pid {pid}");
    ensure!(d.committed_ids() == vec![cp.id.clone()], "the checkpoint stays");
    Ok(())
}

/// A root program started with a narrowed bounding set and an inheritable capability gets
/// exactly those sets back from a root ckptd (the restorer holds every capability).
#[test]
fn a_root_programs_capability_sets_come_back_as_they_were() -> Result<()> {
    require_root!();
    let d = Daemon::start()?;
    let (prog, argv) = example_cmdline("counter", &[])?;
    let mut c = std::process::Command::new("setpriv");
    c.args(["--bounding-set", "-net_raw,-sys_time", "--inh-caps", "+net_admin"]);
    c.arg(bin("ckpt-run")?)
        .arg("--socket")
        .arg(d.socket())
        .arg("--")
        .arg(prog)
        .args(argv);
    let mut app = App::spawn_to_file(
        c,
        "setpriv … ckpt-run counter",
        &d.dir().join("counter.out"),
        &d.dir().join("counter.err"),
        vec![d.log_path().to_path_buf()],
    )?;
    app.expect_tick(LINE_TIMEOUT)?;
    let pid = app.pid;
    let before = cap_lines(pid);
    ensure!(
        before.iter().any(|l| l.contains("CapInh: 0000000000001000")),
        "setpriv should have given the program cap_net_admin as inheritable: {before:?}"
    );
    let cp = d.checkpoint_app(&app)?;
    app.kill9_tree()?;
    let r = d.ckptctl_timeout(&["restore", &cp.id, "--detach"], Duration::from_secs(120));
    ensure!(r.status.success(), "restore failed: {}\n{}", describe(&r), d.context());
    let after = cap_lines(pid);
    ensure!(
        after == before,
        "capability sets before the checkpoint and after the restore differ:\n{before:?}\n{after:?}"
    );
    verdict::kill_pid(pid)?;
    Ok(())
}
