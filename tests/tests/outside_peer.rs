//! Issue 3: a connection to a process outside the checkpoint comes back reset (the program
//! sees the peer go away), and `ckptctl show` says which connection that is.

use anyhow::{ensure, Context, Result};
use ckpt_tests::*;
use std::process::{Command, Stdio};
use std::time::Duration;

#[test]
fn connection_to_an_outside_peer_comes_back_reset() -> Result<()> {
    require_root!();
    let d = Daemon::start()?;
    // The server is not under ckpt-run: it is outside every checkpoint.
    let port = free_low_port()?;
    let port_s = port.to_string();
    let mut server = spawn_tracked(
        Command::new(example("tcp_echo")?)
            .args(["server", &port_s, "127.0.0.1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )?;
    let mut app = d.run_example("tcp_echo", &["client", "127.0.0.1", &port_s])?;
    let pid = app.pid;
    app.expect_line(
        "a tick of the client",
        |l| l.starts_with("tick ") && l.ends_with(" ok"),
        LINE_TIMEOUT,
    )?;

    let id = d.checkpoint()?;
    let shown = d.ckptctl_ok(&["show", &id])?;
    ensure!(
        shown.contains("peer not in the checkpoint: comes back reset"),
        "`ckptctl show {id}` must mark the connection to the outside server:\n{shown}"
    );
    app.kill9()?;

    // The restored client finds its peer gone: its read fails (it prints "peer closed") or its
    // sender thread's write raises SIGPIPE, whichever comes first; either way it ends.
    let restored = d.restore(&id, pid)?;
    wait_proc_gone(pid, LINE_TIMEOUT).with_context(|| {
        format!(
            "the restored client should end once it sees the reset
{}",
            restored.context()
        )
    })?;
    ensure!(
        !restored.history().iter().any(|l| l.starts_with("MISMATCH")),
        "the restored client read bytes that were never sent
{}",
        restored.context()
    );
    let _ = server.kill();
    let _ = wait_child_timeout(&mut server, Duration::from_secs(5));
    Ok(())
}

/// Sends a line on `s` and reads its echo.
fn echo(s: &mut std::net::TcpStream, line: &str) -> Result<String> {
    use std::io::{BufRead, Write};
    s.set_read_timeout(Some(LINE_TIMEOUT))?;
    s.write_all(format!("{line}\n").as_bytes())?;
    let mut back = String::new();
    std::io::BufReader::new(s.try_clone()?).read_line(&mut back)?;
    Ok(back.trim_end().to_string())
}

/// A server that binds without SO_REUSEADDR, killed while outside clients are connected: the
/// connections it accepted linger, in FIN_WAIT2 when the client never closes (round 1) or in
/// TIME_WAIT when it closes after the kill (round 2), and hold its port; the restore still
/// binds it (ckptd clears the dead program's orphaned connections).
#[test]
fn listener_without_reuseaddr_binds_again_while_clients_linger() -> Result<()> {
    require_root!();
    let d = Daemon::start()?;
    let port = free_low_port()?;
    let mut app = d.run_example("plain_listener", &[&port.to_string()])?;
    let pid = app.pid;
    app.expect_tick(LINE_TIMEOUT)?;
    let mut lingering = Vec::new();
    for round in 1..=2 {
        let mut c = std::net::TcpStream::connect(("127.0.0.1", port))?;
        ensure!(
            echo(&mut c, "before")? == "before",
            "round {round}: no echo before the checkpoint"
        );
        let id = d.checkpoint()?;
        app.kill9()?;
        app.disarm();
        if round == 1 {
            // The client keeps its end open: the server's end stays in FIN_WAIT2.
            lingering.push(c);
        } else {
            // The client closes after the server died: the server's end waits in TIME_WAIT.
            drop(c);
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        app = d
            .restore_ok(&id, pid)
            .with_context(|| format!("restore {round}\n{}", d.context()))?;
        app.expect_tick(LINE_TIMEOUT)?;
        let mut fresh = std::net::TcpStream::connect(("127.0.0.1", port))
            .with_context(|| format!("round {round}: a new client after restore"))?;
        ensure!(
            echo(&mut fresh, "after")? == "after",
            "round {round}: no echo after restore"
        );
        ensure!(
            d.log().matches("cleared the connections a killed program left").count() == round,
            "round {round}: the port should have been held by the killed server's connection\n{}",
            d.context()
        );
    }
    app.kill9()?;
    Ok(())
}
