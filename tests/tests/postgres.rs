//! PostgreSQL from Debian under its own user and that user's ckptd (issue 11, acceptance 3):
//! `initdb` in a temporary folder, the server run as `postgres` under `ckpt-run`, with a
//! ckptd run as `postgres` holding `CAP_CHECKPOINT_RESTORE` and the data folder as a snapshot
//! (`--file-policy DATA/*=snapshot`: PostgreSQL keeps most of its files closed between uses,
//! so the files held open at a checkpoint are not its state). `pgbench -i`, then a `pgbench`
//! load; the load stops and the test reads the row counts and the sum of the balances; a
//! checkpoint; more load (so the state moves on); every postgres process killed; the restore:
//! the same pids, no capability in any of them, queries work and give the checkpoint's
//! counts, a new load adds exactly its own transactions (nothing written after the checkpoint
//! comes back to life). Twice in a row (the second from a checkpoint of the restored server),
//! then `pg_ctl stop -m fast` shuts it down cleanly.
//!
//! pgbench runs outside the checkpoint, as clients of a real server do; one more client (psql)
//! holds a connection across each checkpoint: its backend comes back with its peer closed and
//! ends, and the server runs on.

use anyhow::{bail, ensure, Context, Result};
use ckpt_tests::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = "/usr/lib/postgresql/15/bin";
const PORT: &str = "5432";

/// One server: its folder (data and socket), its user and that user's ckptd.
struct Pg {
    d: Daemon,
    user: RunAs,
    dir: PathBuf,
    data: PathBuf,
    _tmp: tempfile::TempDir,
}

fn bin_of(name: &str) -> Result<PathBuf> {
    let p = Path::new(BIN).join(name);
    ensure!(
        p.is_file(),
        "{} is missing: install Debian's postgresql package (scripts/test.sh does)",
        p.display()
    );
    Ok(p)
}

impl Pg {
    fn new() -> Result<Pg> {
        let user = RunAs::user("postgres", true).context("the postgresql package makes the postgres user")?;
        let tmp = tempfile::Builder::new().prefix("ckpt-pg-").tempdir()?;
        let dir = tmp.path().to_path_buf();
        user.own(&dir)?;
        let data = dir.join("data");
        let rule = format!("{}/*=snapshot", data.display());
        let d = Daemon::start_as(user.clone(), &["--file-policy", &rule])?;
        Ok(Pg {
            d,
            user,
            dir,
            data,
            _tmp: tmp,
        })
    }

    /// `prog ARGS` of PostgreSQL as its user, run to the end.
    fn run(&self, prog: &str, args: &[&str], timeout: Duration) -> Result<Output> {
        let mut c = self.user.command(&bin_of(prog)?);
        c.args(args).current_dir(&self.dir).stdin(Stdio::null());
        run_with_timeout(&mut c, timeout)
    }

    fn run_ok(&self, prog: &str, args: &[&str], timeout: Duration) -> Result<String> {
        let out = self.run(prog, args, timeout)?;
        ensure!(out.status.success(), "{prog} {}: {}", args.join(" "), describe(&out));
        Ok(stdout_str(&out))
    }

    fn conn(&self) -> Vec<String> {
        let dir = self.dir.display().to_string();
        ["-h", &dir, "-p", PORT, "-U", "postgres"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    fn psql(&self, query: &str) -> Result<String> {
        let mut args = self.conn();
        args.extend(["-d", "postgres", "-Atc", query].map(String::from));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.run_ok("psql", &args, Duration::from_secs(60))
    }

    /// pgbench with `extra` arguments; the transactions it made.
    fn pgbench(&self, extra: &[&str]) -> Result<u64> {
        let mut args = self.conn();
        args.extend(extra.iter().map(|s| s.to_string()));
        args.push("postgres".into());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self.run_ok("pgbench", &args, Duration::from_secs(120))?;
        let n = out
            .lines()
            .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
            .and_then(|v| v.split('/').next())
            .and_then(|v| v.trim().parse().ok());
        n.with_context(|| format!("pgbench printed no transaction count:\n{out}"))
    }

    /// Rows in pgbench_history, the sum of the balances, rows in pgbench_accounts.
    fn state(&self) -> Result<(i64, i64, i64)> {
        let q = "select (select count(*) from pgbench_history), (select sum(abalance) from pgbench_accounts), \
                 (select count(*) from pgbench_accounts)";
        let line = self.psql(q)?;
        let v: Vec<i64> = line.split('|').filter_map(|x| x.trim().parse().ok()).collect();
        ensure!(v.len() == 3, "unexpected answer {line:?}");
        Ok((v[0], v[1], v[2]))
    }

    fn wait_ready(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if self.psql("select 1").is_ok_and(|s| s == "1") {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("PostgreSQL does not answer\n{}", self.d.context());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A psql that connects and then waits on its input: a client connection held open.
    fn hold_connection(&self) -> Result<Child> {
        let mut c = self.user.command(&bin_of("psql")?);
        c.args(self.conn()).args(["-d", "postgres"]).env("PGAPPNAME", "held");
        c.current_dir(&self.dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = spawn_tracked(&mut c)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.psql("select count(*) from pg_stat_activity where application_name = 'held'")? != "1" {
            ensure!(Instant::now() < deadline, "the held connection did not show up");
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(child)
    }

    /// The held connection's backend.
    fn held_backend(&self) -> Result<i32> {
        let pid = self.psql("select pid from pg_stat_activity where application_name = 'held'")?;
        pid.parse().with_context(|| format!("no held backend: {pid:?}"))
    }
}

/// The server's processes by role (`postgres: checkpointer` …; the postmaster as `postmaster`).
fn roles(postmaster: i32) -> BTreeMap<String, i32> {
    let mut out = BTreeMap::from([("postmaster".to_string(), postmaster)]);
    for p in descendants(postmaster) {
        let cmd = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if let Some(role) = cmd.trim().strip_prefix("postgres: ") {
            if !role.contains("[local]") && !role.starts_with("autovacuum worker") {
                out.insert(role.trim().to_string(), p);
            }
        }
    }
    out
}

/// Every process of the server runs as `uid` and holds no capability.
fn no_capabilities(postmaster: i32, uid: u32) -> Result<()> {
    for p in std::iter::once(postmaster).chain(descendants(postmaster)) {
        let lines = cap_lines(p);
        ensure!(
            lines
                .iter()
                .any(|l| l.contains(&format!("Uid: {uid} {uid} {uid} {uid}"))),
            "process {p} should run as uid {uid}: {lines:?}"
        );
        let held = held_caps(p);
        ensure!(held.is_empty(), "restored process {p} holds capabilities: {held:?}");
    }
    Ok(())
}

/// Waits until `pid` is gone (a restored process, not our child).
fn gone_within(pid: i32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while proc_alive(pid) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

#[test]
fn postgres_under_its_own_users_ckptd_comes_back_twice() -> Result<()> {
    require_root!();
    let pg = Pg::new()?;
    let data = pg.data.display().to_string();
    let dir = pg.dir.display().to_string();
    let t0 = Instant::now();
    pg.run_ok(
        "initdb",
        &["-D", &data, "-A", "trust", "-U", "postgres", "--no-sync"],
        Duration::from_secs(120),
    )?;
    // Started as Debian's pg_ctlcluster does: `pg_ctl start -l LOG` (the server's output
    // appended to its log), pg_ctl under ckpt-run, so that the server it starts is too.
    let log = pg.dir.join("server.log");
    let opts = format!("-k {dir} -c listen_addresses= -p {PORT}");
    let args = [
        "start",
        "-w",
        "-D",
        &data,
        "-l",
        &log.display().to_string(),
        "-o",
        &opts,
    ]
    .map(String::from);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut ctl = pg.d.run(&bin_of("pg_ctl")?, &args)?;
    let st = ctl.wait_child_exit(Duration::from_secs(120))?;
    ensure!(
        st.success(),
        "pg_ctl start: {}
{}",
        fmt_status(&st),
        ctl.context()
    );
    let pm: i32 = std::fs::read_to_string(pg.data.join("postmaster.pid"))?
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .context("postmaster.pid names no pid")?;
    pg.d.register_pid(pm);
    pg.wait_ready()?;
    let mut init = pg.conn();
    init.extend(["-i", "-s", "1", "-q", "postgres"].map(String::from));
    let init: Vec<&str> = init.iter().map(String::as_str).collect();
    pg.run_ok("pgbench", &init, Duration::from_secs(120))?;
    let (_, _, accounts) = pg.state()?;
    ensure!(
        accounts == 100_000,
        "pgbench -i -s 1 makes 100000 accounts, found {accounts}"
    );
    let n = pg.pgbench(&["-c", "2", "-T", "2"])?;
    note!("setup and first load ({n} transactions): {:?}", t0.elapsed());

    for round in 1..=2 {
        // The load has stopped: this is the committed state the checkpoint must bring back.
        let mut held = pg.hold_connection()?;
        let held_pid = pg.held_backend()?;
        let at_checkpoint = pg.state()?;
        let before = roles(pm);
        let t = Instant::now();
        let id = pg.d.checkpoint().with_context(|| format!("checkpoint {round}"))?;
        note!(
            "round {round}: checkpoint {id} of {} processes in {:?}, state {at_checkpoint:?}",
            before.len(),
            t.elapsed()
        );

        // The state moves on after the checkpoint (pgbench's own vacuum and truncate of the
        // history included), then every process of the server is killed.
        let more = pg.pgbench(&["-c", "2", "-T", "2"])?;
        let moved = pg.state()?;
        ensure!(
            moved != at_checkpoint,
            "the load after the checkpoint ({more} transactions) changed nothing"
        );
        verdict::kill_tree(pm)?;
        let _ = held.kill();
        let _ = held.wait();

        let t = Instant::now();
        let mut r = pg.d.restore(&id, pm)?;
        let st = r.wait_child_exit(Duration::from_secs(120))?;
        ensure!(
            st.success(),
            "restore {round} failed: {}\n{}",
            fmt_status(&st),
            r.context()
        );
        note!("round {round}: restored in {:?}", t.elapsed());
        let after = roles(pm);
        for (role, pid) in &before {
            ensure!(
                after.get(role) == Some(pid),
                "round {round}: {role} was pid {pid}, after the restore {:?} ({after:?})",
                after.get(role)
            );
        }
        no_capabilities(pm, pg.user.uid).with_context(|| format!("round {round}"))?;
        // The held connection's peer is gone: its backend ends, the server runs on.
        ensure!(
            gone_within(held_pid, Duration::from_secs(30)),
            "round {round}: the held connection's backend {held_pid} should end, its client is gone"
        );
        ensure!(proc_alive(pm), "round {round}: the postmaster ended\n{}", r.context());
        pg.wait_ready()?;
        let restored = pg.state()?;
        ensure!(
            restored == at_checkpoint,
            "round {round}: after the restore the state is {restored:?}, at the checkpoint it was {at_checkpoint:?} (it had moved on to {moved:?})"
        );
        // Rows written after the checkpoint stay dead: a new load adds exactly its own.
        let n = pg.pgbench(&["-n", "-c", "2", "-T", "2"])?;
        let (history, _, accounts) = pg.state()?;
        ensure!(
            history == at_checkpoint.0 + n as i64 && accounts == at_checkpoint.2,
            "round {round}: {n} transactions after the restore should make {} history rows, found {history} ({accounts} accounts)",
            at_checkpoint.0 + n as i64
        );
        r.disarm();
    }

    // The log keeps what the killed servers wrote after each checkpoint (a log is left as it
    // is): what counts is what the last server writes as it stops.
    let at_stop = std::fs::metadata(&log)?.len() as usize;
    let out = pg.run(
        "pg_ctl",
        &["stop", "-D", &data, "-m", "fast", "-w", "-t", "60"],
        Duration::from_secs(90),
    )?;
    ensure!(out.status.success(), "pg_ctl stop: {}", describe(&out));
    ensure!(gone_within(pm, Duration::from_secs(30)), "the postmaster did not end");
    let control = pg.run_ok("pg_controldata", &["-D", &data], Duration::from_secs(30))?;
    ensure!(
        control
            .lines()
            .any(|l| l.starts_with("Database cluster state:") && l.ends_with("shut down")),
        "the cluster should be shut down cleanly:\n{control}"
    );
    let log = std::fs::read_to_string(&log)?;
    let stop = log.get(at_stop..).unwrap_or_default();
    ensure!(
        stop.contains("received fast shutdown request") && stop.trim_end().ends_with("database system is shut down"),
        "the server's log should end with a clean shutdown:\n{stop}"
    );
    for bad in ["PANIC", "terminated by signal", "database system was interrupted"] {
        ensure!(!stop.contains(bad), "the server says {bad:?} as it stops:\n{stop}");
    }
    ensure!(!log.contains("PANIC"), "the server's log has a PANIC:\n{log}");
    Ok(())
}
