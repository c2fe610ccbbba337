//! Real servers from Debian come back as they were (issue 10, acceptance 1–3): each is started
//! under ckpt-run, loaded, checkpointed, killed with SIGKILL and restored, twice in a row (the
//! second time from a checkpoint of the restored server), and checked from the outside with its
//! own client tools.

use anyhow::{bail, ensure, Context, Result};
use ckpt_tests::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const SERVER_TIMEOUT: Duration = Duration::from_secs(20);

/// Sets key:000000000000 … key:000000099999, the names redis-benchmark's `-r 100000` uses, so
/// that the load below only rewrites existing keys and DBSIZE stays put.
fn redis_fill(port: u16, n: u32) -> Result<()> {
    let mut c = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "--pipe"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .context("redis-cli --pipe")?;
    {
        let mut w = std::io::BufWriter::new(c.stdin.take().context("stdin")?);
        for i in 0..n {
            let k = format!("key:{i:012}");
            let v = format!("value-{i}");
            write!(w, "*3\r\n$3\r\nSET\r\n${}\r\n{k}\r\n${}\r\n{v}\r\n", k.len(), v.len())?;
        }
    }
    ensure!(c.wait()?.success(), "redis-cli --pipe failed");
    Ok(())
}

/// A GET/SET load from redis-benchmark over the filled keys, until killed.
fn redis_load(port: u16) -> Result<Child> {
    Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-t", "get,set", "-r", "100000", "-n", "100000000", "-c", "8", "-q"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("redis-benchmark")
}

fn stop(mut c: Child) {
    let _ = c.kill();
    let _ = c.wait();
}

#[test]
fn redis_under_load_restored_twice() -> Result<()> {
    require_root!();
    let d = Daemon::start()?;
    let (mut app, port) = start_redis(&d, &["--protected-mode", "no"])?;
    let p = port.to_string();
    let pid = app.pid;
    redis_fill(port, 100_000)?;
    ensure!(
        redis_cli(port, &["DBSIZE"])? == "100000",
        "fill did not give 100000 keys"
    );
    for round in 1..=2 {
        let marker = format!("marker-{round}-{}", std::process::id());
        redis_cli(port, &["SET", "marker", &marker])?;
        let load = redis_load(port)?;
        std::thread::sleep(Duration::from_millis(500));
        let id = d
            .checkpoint()
            .with_context(|| format!("checkpoint {round} under load\n{}", d.context()));
        stop(load);
        let id = id?;
        app.kill9()?;
        app.disarm();
        app = d.restore_ok(&id, pid).with_context(|| format!("restore {round}"))?;
        wait_listening(port, SERVER_TIMEOUT).with_context(|| format!("after restore {round}\n{}", d.context()))?;
        let size = redis_cli(port, &["DBSIZE"])?;
        ensure!(
            size == "100001",
            "round {round}: DBSIZE {size} after restore, want 100001"
        );
        let got = redis_cli(port, &["GET", "marker"])?;
        ensure!(got == marker, "round {round}: marker {got:?}, want {marker:?}");
        // The restored server serves the benchmark again.
        let out = Command::new("redis-benchmark")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &p,
                "-t",
                "set,get",
                "-r",
                "100000",
                "-n",
                "20000",
                "-q",
            ])
            .output()?;
        ensure!(
            out.status.success(),
            "round {round}: redis-benchmark after restore: {}",
            describe(&out)
        );
        note!("round {round}: restored from {id}, DBSIZE {size}, marker kept");
    }
    app.kill9()?;
    Ok(())
}

/// One request/answer on memcached's text protocol.
fn mc(port: u16, req: &str) -> Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(SERVER_TIMEOUT))?;
    s.write_all(req.as_bytes())?;
    let mut r = BufReader::new(s);
    let mut out = String::new();
    loop {
        let mut l = String::new();
        if r.read_line(&mut l)? == 0 {
            bail!("memcached closed the connection after {out:?}");
        }
        out.push_str(&l);
        if matches!(l.trim_end(), "END" | "STORED" | "NOT_STORED" | "ERROR") {
            return Ok(out);
        }
    }
}

#[test]
fn memcached_four_threads_keys_served_after_restore() -> Result<()> {
    require_root!();
    let d = Daemon::start()?;
    let port = free_low_port()?;
    let p = port.to_string();
    // `-u root`: memcached drops privileges with setgroups/setuid, which glibc makes every
    // thread take part in (the interposer's control thread too).
    let args = [
        "-U",
        "0",
        "-l",
        "127.0.0.1",
        "-p",
        &p,
        "-t",
        "4",
        "-u",
        "root",
        "-m",
        "64",
    ];
    let mut app = d.run(std::path::Path::new("/usr/bin/memcached"), &args)?;
    let pid = app.pid;
    wait_listening(port, SERVER_TIMEOUT).map_err(|e| e.context(app.context()))?;
    let keys = 500;
    for i in 0..keys {
        let v = format!("v{i}-{}", "x".repeat(i % 50));
        let ans = mc(port, &format!("set k{i} 0 0 {}\r\n{v}\r\n", v.len()))?;
        ensure!(ans.trim_end() == "STORED", "set k{i}: {ans:?}");
    }
    for round in 1..=2 {
        let id = d
            .checkpoint()
            .with_context(|| format!("checkpoint {round}\n{}", d.context()))?;
        app.kill9()?;
        app.disarm();
        app = d.restore_ok(&id, pid).with_context(|| format!("restore {round}"))?;
        wait_listening(port, SERVER_TIMEOUT).with_context(|| format!("after restore {round}\n{}", d.context()))?;
        // Many connections, so that every worker thread serves some.
        for i in 0..keys {
            let v = format!("v{i}-{}", "x".repeat(i % 50));
            let ans = mc(port, &format!("get k{i}\r\n"))?;
            let want = format!("VALUE k{i} 0 {}\r\n{v}\r\nEND\r\n", v.len());
            ensure!(ans == want, "round {round}: get k{i} gave {ans:?}, want {want:?}");
        }
        let ans = mc(port, &format!("set r{round} 0 0 2\r\nok\r\n"))?;
        ensure!(
            ans.trim_end() == "STORED",
            "round {round}: a new key after restore: {ans:?}"
        );
        note!("round {round}: {keys} keys served by the restored memcached");
    }
    let mut sink = Vec::new();
    let _ = TcpStream::connect(("127.0.0.1", port)).and_then(|mut s| {
        s.write_all(b"quit\r\n")?;
        s.read_to_end(&mut sink)
    });
    app.kill9()?;
    Ok(())
}

/// The clients' progress in a restored job's output, where both programs print.
fn client_bytes(app: &App) -> Result<u64> {
    let l = app.expect_line(
        "a client tick `tick N bytes B`",
        |l| l.contains(" bytes "),
        LINE_TIMEOUT,
    )?;
    field_u64(&l, "bytes").with_context(|| format!("bad client line {l:?}"))
}

/// Waits until the clients have checked more than `after` bytes.
fn clients_progress(app: &App, after: u64) -> Result<u64> {
    let t0 = std::time::Instant::now();
    loop {
        let b = client_bytes(app)?;
        if b > after {
            return Ok(b);
        }
        ensure!(
            t0.elapsed() < LINE_TIMEOUT,
            "the clients made no progress past {after} bytes\n{}",
            app.context()
        );
    }
}

#[test]
fn asyncio_echo_server_and_20_clients_streams_exact() -> Result<()> {
    require_root!();
    let d = Daemon::start()?;
    let port = free_low_port()?;
    let p = port.to_string();
    let mut server = d.run_example("asyncio_echo.py", &[&p])?;
    server.expect_tick(LINE_TIMEOUT)?;
    let mut clients = d.run_example("echo_clients.py", &[&p, "20"])?;
    let (server_pid, clients_pid) = (server.pid, clients.pid);
    let mut b = clients_progress(&clients, 0)?;
    server.expect_line("20 clients connected", |l| l.contains(" clients 20 "), LINE_TIMEOUT)?;
    // Both programs print to the restoring ckptctl's stdout: after a restore, one handle reads
    // both (and stands for the server).
    let mut restored: Option<App> = None;
    for round in 1..=2 {
        let out = restored.as_ref().unwrap_or(&clients);
        b = clients_progress(out, b)?;
        let id = d
            .checkpoint()
            .with_context(|| format!("checkpoint {round}\n{}", d.context()))?;
        if let Some(mut r) = restored.take() {
            // Restored: neither is our child.
            kill_pid(clients_pid).with_context(|| format!("round {round}: killing the restored clients"))?;
            r.kill9()?;
            r.disarm();
        } else {
            clients.kill9()?;
            server.kill9()?;
        }
        clients.disarm();
        server.disarm();
        let both = d
            .restore_ok(&id, server_pid)
            .with_context(|| format!("restore {round}"))?;
        let after = clients_progress(&both, 0)?;
        note!("round {round}: clients at {b} bytes before the checkpoint, {after} after restore");
        b = clients_progress(&both, after + 100_000)
            .with_context(|| format!("round {round}: streams after restore\n{}", d.context()))?;
        ensure!(
            !both.history().iter().any(|l| l.starts_with("INVARIANT")),
            "round {round}: a client saw a wrong byte\n{}",
            both.context()
        );
        both.expect_line("the server's 20 clients", |l| l.contains(" clients 20 "), LINE_TIMEOUT)?;
        restored = Some(both);
    }
    kill_pid(clients_pid).with_context(|| format!("killing the restored clients\n{}", d.context()))?;
    if let Some(mut r) = restored {
        r.kill9()?;
    }
    Ok(())
}

/// `GET path` over HTTP/1.0: the status line's code and the body.
fn http_get(port: u16, path: &str) -> Result<(u32, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(SERVER_TIMEOUT))?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())?;
    let mut all = String::new();
    s.read_to_string(&mut all)?;
    let code = all
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("bad HTTP answer {all:?}"))?;
    let body = all
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

fn nginx_conf(dir: &std::path::Path, port: u16, round: u32) -> String {
    let d = dir.display();
    format!(
        "daemon off;\nmaster_process on;\nworker_processes 2;\nuser root;\npid {d}/nginx.pid;\n\
         error_log {d}/error.log info;\nevents {{ worker_connections 64; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/tmp/body;\n  proxy_temp_path {d}/tmp/proxy;\n\
         fastcgi_temp_path {d}/tmp/fastcgi;\n  uwsgi_temp_path {d}/tmp/uwsgi;\n  scgi_temp_path {d}/tmp/scgi;\n\
         server {{\n    listen 127.0.0.1:{port};\n    root {d}/www;\n    location = /round {{ return 200 \"config {round}\"; }}\n  }}\n}}\n"
    )
}

/// The pids of `pid`'s children.
fn children_of(pid: i32) -> Vec<i32> {
    let mut v: Vec<i32> = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    v.sort_unstable();
    v
}

/// The registered processes other than `pid` (an nginx master's workers, restored or not).
fn others(d: &Daemon, pid: i32) -> Result<Vec<i32>> {
    let mut v: Vec<i32> = d.status_pids()?.into_iter().filter(|p| *p != pid).collect();
    v.sort_unstable();
    Ok(v)
}

#[test]
fn nginx_master_and_workers_serve_and_reload_after_restore() -> Result<()> {
    require_root!();
    let d = Daemon::start()?;
    let port = free_low_port()?;
    let dir = d.dir().join("nginx");
    std::fs::create_dir_all(dir.join("www"))?;
    std::fs::create_dir_all(dir.join("tmp"))?;
    let page = "hello from nginx\n".repeat(100);
    std::fs::write(dir.join("www/index.html"), &page)?;
    let conf = dir.join("nginx.conf");
    std::fs::write(&conf, nginx_conf(&dir, port, 0))?;
    let prefix = dir.to_string_lossy().to_string();
    let conf_s = conf.to_string_lossy().to_string();
    let mut master = d.run(
        std::path::Path::new("/usr/sbin/nginx"),
        &["-p", &prefix, "-c", &conf_s, "-e", &format!("{prefix}/error.log")],
    )?;
    let pid = master.pid;
    wait_listening(port, SERVER_TIMEOUT).map_err(|e| e.context(master.context()))?;
    let t0 = std::time::Instant::now();
    while others(&d, pid)?.len() < 2 {
        ensure!(
            t0.elapsed() < SERVER_TIMEOUT,
            "nginx's 2 workers did not register\n{}",
            d.context()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    ensure!(
        http_get(port, "/index.html")? == (200, page.clone()),
        "nginx does not serve the page"
    );
    for round in 1..=2u32 {
        let workers = others(&d, pid)?;
        let id = d
            .checkpoint()
            .with_context(|| format!("checkpoint {round}\n{}", d.context()))?;
        // The master first: it would start a new worker for each one killed.
        master.kill9()?;
        master.disarm();
        for w in &workers {
            kill_pid(*w)?;
        }
        master = d.restore_ok(&id, pid).with_context(|| format!("restore {round}"))?;
        wait_listening(port, SERVER_TIMEOUT).with_context(|| format!("after restore {round}\n{}", d.context()))?;
        for _ in 0..20 {
            let got = http_get(port, "/index.html")?;
            ensure!(
                got == (200, page.clone()),
                "round {round}: after restore nginx answered {}",
                got.0
            );
        }
        // A reload after restore: the master reads the new configuration and starts new
        // workers of its own, which serve it.
        std::fs::write(&conf, nginx_conf(&dir, port, round))?;
        let out = Command::new("/usr/sbin/nginx")
            .args([
                "-p",
                &prefix,
                "-c",
                &conf_s,
                "-e",
                &format!("{prefix}/error.log"),
                "-s",
                "reload",
            ])
            .output()?;
        ensure!(
            out.status.success(),
            "round {round}: nginx -s reload: {}",
            describe(&out)
        );
        let want = (200, format!("config {round}"));
        let t0 = std::time::Instant::now();
        loop {
            let got = http_get(port, "/round")?;
            if got == want && children_of(pid).len() >= 2 {
                break;
            }
            ensure!(
                t0.elapsed() < SERVER_TIMEOUT,
                "round {round}: after reload /round gave {got:?}, want {want:?}; children {:?}\n{}",
                children_of(pid),
                d.context()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        // The old workers leave; the new ones are the master's own children, registered.
        let t0 = std::time::Instant::now();
        while others(&d, pid)? != children_of(pid) {
            ensure!(
                t0.elapsed() < SERVER_TIMEOUT,
                "round {round}: registered {:?}, the master's children {:?}",
                others(&d, pid)?,
                children_of(pid)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        note!("round {round}: restored, reloaded, workers {:?}", children_of(pid));
    }
    let workers = others(&d, pid)?;
    master.kill9()?;
    for w in workers {
        kill_pid(w)?;
    }
    Ok(())
}
