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

fn redis_cli(port: u16, args: &[&str]) -> Result<String> {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .context("running redis-cli")?;
    ensure!(out.status.success(), "redis-cli {args:?}: {}", describe(&out));
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

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
    let port = free_low_port()?;
    let p = port.to_string();
    let args = [
        "--port",
        &p,
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--protected-mode",
        "no",
    ];
    let mut app = d.run(std::path::Path::new("/usr/bin/redis-server"), &args)?;
    let pid = app.pid;
    wait_listening(port, SERVER_TIMEOUT).map_err(|e| e.context(app.context()))?;
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
