//! The ckptctl surface around the acceptance items: `status --json` schema,
//! `checkpoint --json`, `list [--json]`, `show <id> [--json]`, `delete <id>`
//! and ckptd's clean exit on SIGTERM.

use anyhow::{ensure, Context, Result};
use ckpt_tests::*;
use serde_json::Value;

/// True if any string equal to `id`, or number whose text is `id`, occurs
/// anywhere in `v`.
fn json_mentions(v: &Value, id: &str) -> bool {
    match v {
        Value::String(s) => s == id,
        Value::Number(n) => n.to_string() == id,
        Value::Array(a) => a.iter().any(|x| json_mentions(x, id)),
        Value::Object(o) => o.values().any(|x| json_mentions(x, id)),
        _ => false,
    }
}

fn parse_json(what: &str, s: &str) -> Result<Value> {
    serde_json::from_str(s).with_context(|| format!("{what}: stdout is not JSON: {s:?}"))
}

#[test]
fn ckptctl_json_list_show_delete_and_sigterm() -> Result<()> {
    require_root!();
    let mut d = Daemon::start()?;
    let counter = example("counter")?;
    let app = d.run(&counter, &["alpha", "beta"])?;
    let pid = app.pid;
    app.expect_tick(LINE_TIMEOUT)?;

    // status --json: {"processes":[{"pid":..,"exe":"/path","args":[..]}]}
    let s = d.ckptctl_ok(&["status", "--json"])?;
    let v = parse_json("status --json", &s)?;
    let procs = v["processes"]
        .as_array()
        .with_context(|| format!("status --json: no processes array: {s}"))?;
    let p = procs
        .iter()
        .find(|p| p["pid"].as_i64() == Some(pid as i64))
        .with_context(|| format!("status --json does not list pid {pid}: {s}"))?;
    let exe = p["exe"].as_str().with_context(|| format!("no exe string in {p}"))?;
    ensure!(
        std::fs::canonicalize(exe).ok() == std::fs::canonicalize(&counter).ok(),
        "status --json: exe {exe:?}, expected {}",
        counter.display()
    );
    let args: Vec<&str> = p["args"]
        .as_array()
        .with_context(|| format!("no args array in {p}"))?
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    ensure!(
        args.ends_with(&["alpha", "beta"]),
        "status --json: args {args:?} should end with [\"alpha\", \"beta\"]"
    );

    // checkpoint --json
    let before = d.committed_ids();
    let s = d.ckptctl_ok(&["checkpoint", "--json"])?;
    // Progress events, one per line, come before the result.
    let (result, events) = s
        .lines()
        .collect::<Vec<_>>()
        .split_last()
        .map(|(r, e)| (*r, e.to_vec()))
        .unwrap_or_default();
    ensure!(
        events.iter().all(|l| is_progress_event(l)),
        "checkpoint --json: every line before the result should be a progress event: {s}"
    );
    let v1 = parse_json("checkpoint --json", result)?;
    let after = d.committed_ids();
    let new: Vec<&String> = after.iter().filter(|i| !before.contains(i)).collect();
    ensure!(
        new.len() == 1,
        "checkpoint --json should commit one checkpoint: {before:?} -> {after:?}"
    );
    let id1 = new[0].clone();
    ensure!(
        json_mentions(&v1, &id1),
        "checkpoint --json output should mention the new id {id1}: {s}"
    );
    let id2 = d.checkpoint()?;
    ensure!(id1 != id2, "two checkpoints got the same id {id1}");

    // list / list --json
    let l = d.ckptctl_ok(&["list"])?;
    for id in [&id1, &id2] {
        ensure!(first_words(&l).contains(id), "`ckptctl list` should show {id}:\n{l}");
    }
    let lj = d.ckptctl_ok(&["list", "--json"])?;
    let lv = parse_json("list --json", &lj)?;
    for id in [&id1, &id2] {
        ensure!(json_mentions(&lv, id), "`list --json` should mention {id}: {lj}");
    }

    // show
    let sh = d.ckptctl_ok(&["show", &id2])?;
    ensure!(!sh.is_empty(), "`ckptctl show {id2}` printed nothing");
    ensure!(
        contains_number(&sh, pid as i64),
        "`ckptctl show {id2}` should mention pid {pid}:\n{sh}"
    );
    let shj = d.ckptctl_ok(&["show", &id2, "--json"])?;
    let shv = parse_json("show --json", &shj)?;
    ensure!(
        json_mentions(&shv, &pid.to_string()),
        "`show {id2} --json` should mention pid {pid}"
    );

    // delete
    d.ckptctl_ok(&["delete", &id1])?;
    let l = d.ckptctl_ok(&["list"])?;
    ensure!(
        !first_words(&l).contains(&id1),
        "`ckptctl list` still shows deleted {id1}:\n{l}"
    );
    ensure!(
        !d.committed_ids().contains(&id1),
        "{} still has a MANIFEST after delete",
        d.ckpt_dir(&id1).display()
    );
    let out = d.ckptctl(&["restore", &id1]);
    let msg = expect_failure_one_line(&out, "restore of a deleted checkpoint")?;
    ensure!(msg.contains(id1.as_str()), "message should name {id1}: {msg:?}");
    ensure!(app.is_alive(), "the program must still run");

    // the other checkpoint is intact and listed
    ensure!(d.committed_ids().contains(&id2), "{id2} vanished");

    drop(app);
    let st = d.stop()?.context("ckptd was not running")?;
    ensure!(
        st.success(),
        "ckptd should exit cleanly (0) on SIGTERM, got {}\n{}",
        fmt_status(&st),
        d.context()
    );
    Ok(())
}

/// `ckptctl check` needs no ckptd: as root every feature ckpt uses works on this machine (the
/// CI machine is the one ckpt targets), `--json` lists them; as an ordinary user without
/// capabilities it says which ones that user lacks, and exits 1.
#[test]
fn ckptctl_check_reports_this_machine() -> Result<()> {
    require_root!();
    use std::os::unix::process::CommandExt;
    let run = |json: bool, nobody: bool| -> Result<std::process::Output> {
        let mut c = std::process::Command::new(bin("ckptctl")?);
        c.arg("check");
        if json {
            c.arg("--json");
        }
        if nobody {
            c.uid(65534).gid(65534);
        }
        Ok(c.output()?)
    };
    let out = run(false, false)?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    ensure!(
        out.status.success(),
        "ckptctl check as root must find everything:\n{text}"
    );
    for f in [
        "userfaultfd write-protect",
        "PAGEMAP_SCAN",
        "clone3 set_tid",
        "PR_TIMER_CREATE_RESTORE_IDS",
        "PTRACE_SECCOMP_GET_FILTER",
        "AIO ring move",
    ] {
        ensure!(text.contains(f), "the table should list {f}:\n{text}");
    }
    let v = parse_json("check --json", &String::from_utf8_lossy(&run(true, false)?.stdout))?;
    let list = v.as_array().context("check --json is a list")?;
    ensure!(
        list.len() >= 10
            && list
                .iter()
                .all(|f| f["ok"] == Value::Bool(true) && f["feature"].is_string()),
        "every feature ok, named: {v}"
    );
    let out = run(false, true)?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    ensure!(
        out.status.code() == Some(1),
        "an ordinary user lacks some: exit 1\n{text}"
    );
    ensure!(
        text.lines()
            .any(|l| l.starts_with("NO") && l.contains("set_tid") && l.contains("CAP_CHECKPOINT_RESTORE")),
        "it should say pids cannot be restored without CAP_CHECKPOINT_RESTORE:\n{text}"
    );
    Ok(())
}
