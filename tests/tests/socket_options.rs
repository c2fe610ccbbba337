//! TCP and UDP socket options (issue 10): `sockopt_state` holds listeners sharing a port with
//! SO_REUSEPORT, a connection to itself, UDP sockets sharing a port with SO_REUSEADDR and joined
//! to multicast groups, each with every option that changes what a program sees; it checks them
//! itself when asked (SIGUSR1) and is checkpointed, killed and restored twice. A dual-stack
//! `[::]` listener (IPV6_V6ONLY=0) must take IPv4 clients again, and a v6-only one must come
//! back beside an IPv4 listener on the same port.

use anyhow::{ensure, Context, Result};
use ckpt_tests::*;
use std::net::TcpStream;
use std::time::Duration;

/// Connects to `addr` and expects the program to accept it on listener `name` from a client
/// of family `family` (`v4`, `v4mapped`, `v6`).
fn expect_accept(app: &App, addr: &str, name: &str, family: &str) -> Result<()> {
    let addr: std::net::SocketAddr = addr.parse()?;
    // Closed first, so that the TIME_WAIT is the client's (see sockopt_state's accept).
    drop(TcpStream::connect_timeout(&addr, Duration::from_secs(5)).with_context(|| format!("connecting to {addr}"))?);
    let want = format!("accept {name} {family}");
    app.expect_line(&want, |l| l == want, LINE_TIMEOUT)
        .with_context(|| format!("client of {addr}"))?;
    Ok(())
}

fn ports() -> Result<[u16; 4]> {
    let mut p = [0u16; 4];
    for slot in p.iter_mut() {
        *slot = free_low_port()?;
    }
    ensure!(
        p.iter().enumerate().all(|(i, a)| p[..i].iter().all(|b| a != b)),
        "free_low_port gave one port twice: {p:?}"
    );
    Ok(p)
}

fn listeners_accept(app: &App, [_, dual, only6, _]: [u16; 4]) -> Result<()> {
    expect_accept(app, &format!("127.0.0.1:{dual}"), "dual", "v4mapped")?;
    expect_accept(app, &format!("[::1]:{dual}"), "dual", "v6")?;
    expect_accept(app, &format!("[::1]:{only6}"), "v6only", "v6")?;
    expect_accept(app, &format!("127.0.0.1:{only6}"), "v4", "v4")?;
    Ok(())
}

#[test]
fn socket_options_come_back_before_bind() -> Result<()> {
    require_root!();
    let d = Daemon::start()?;
    let p = ports()?;
    let args: Vec<String> = p.iter().map(u16::to_string).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut app = d.run_example("sockopt_state", &args)?;
    let pid = app.pid;
    app.expect_tick(LINE_TIMEOUT)?;
    ask_state(&app).context("before any checkpoint")?;
    listeners_accept(&app, p).context("before any checkpoint")?;
    for round in 1..=2 {
        let cp = d.checkpoint_app(&app).with_context(|| format!("checkpoint {round}"))?;
        app.kill9()?;
        app.disarm();
        app = d.restore_ok(&cp.id, pid).with_context(|| format!("restore {round}"))?;
        app.expect_tick(LINE_TIMEOUT)
            .with_context(|| format!("after restore {round}"))?;
        ask_state(&app).with_context(|| format!("after restore {round}\n{}", d.context()))?;
        listeners_accept(&app, p).with_context(|| format!("after restore {round}"))?;
    }
    app.kill9()?;
    Ok(())
}
