//! Sockets in the states issue 12 found changed after a restore (`examples/sock_state.c`): an
//! ICMP echo socket, a locked classic BPF filter, TCP sockets made or bound but not connected,
//! a half-closed local connection (FIN_WAIT2 / CLOSE_WAIT with its unread bytes) and one shut
//! for reading, a raw ICMP socket with its ICMP_FILTER, a Unix socket's filter and
//! socket-level options, route and generic netlink sockets (port id, groups, flags), a packet
//! socket (interface, options, membership): each comes back exactly, twice. What cannot come back (an
//! eBPF filter, a connection both sides closed, a netlink socket with replies unread, a packet
//! socket with a ring) refuses the checkpoint, named, and the program runs on.

use anyhow::{ensure, Context, Result};
use ckpt_tests::*;

const PING_RANGE: &str = "/proc/sys/net/ipv4/ping_group_range";

/// Lets root's group make ICMP echo sockets while any test of this file needs it (the kernel's
/// default range holds no group, root's neither), then puts the range back. The tests run side
/// by side: the last one to end puts it back, not the first.
struct PingGroups;

/// How many tests hold the range open, and the range to put back (None: it was open already).
static PING: std::sync::Mutex<(usize, Option<String>)> = std::sync::Mutex::new((0, None));

impl PingGroups {
    fn allow_root() -> Result<Self> {
        let mut held = PING.lock().unwrap_or_else(|e| e.into_inner());
        if held.0 == 0 {
            let old = std::fs::read_to_string(PING_RANGE).context("reading ping_group_range")?;
            let mut it = old.split_whitespace().map(|n| n.parse::<u64>().unwrap_or(u64::MAX));
            let (lo, hi) = (it.next().unwrap_or(1), it.next().unwrap_or(0));
            held.1 = None;
            if !(lo == 0 && hi >= lo) {
                std::fs::write(PING_RANGE, "0 0").context("widening ping_group_range")?;
                held.1 = Some(old);
            }
        }
        held.0 += 1;
        Ok(PingGroups)
    }
}

impl Drop for PingGroups {
    fn drop(&mut self) {
        let mut held = PING.lock().unwrap_or_else(|e| e.into_inner());
        held.0 -= 1;
        if held.0 == 0 {
            if let Some(old) = held.1.take() {
                let _ = std::fs::write(PING_RANGE, old.trim());
            }
        }
    }
}

#[test]
fn socket_states_come_back_twice() -> Result<()> {
    require_root!();
    let _ping = PingGroups::allow_root()?;
    survives_two_restores("sock_state", &[])
}

/// Starts sock_state in `mode`, expects `checkpoint` refused naming the process, the fd the
/// program printed after `<mode> on fd ` and `what`, then the program running on.
fn refused(mode: &str, what: &str) -> Result<()> {
    let _ping = PingGroups::allow_root()?;
    let d = Daemon::start()?;
    let mut app = d.run_example("sock_state", &[mode])?;
    let prefix = format!("{mode} on fd ");
    let line = app.expect_line(&prefix, |l| l.starts_with(&prefix), LINE_TIMEOUT)?;
    let fd = line.trim_start_matches(&prefix).to_string();
    app.expect_tick(LINE_TIMEOUT)?;
    let out = d.ckptctl(&["checkpoint"]);
    let msg = expect_failure_one_line(&out, &format!("checkpoint of sock_state {mode}")).context(d.context())?;
    note!("ckptctl said: {msg}");
    let names_fd = msg.contains(&format!("fd {fd}:")) || msg.contains(&format!("fd {fd} is"));
    ensure!(
        msg.contains(&format!("process {}", app.pid)) && names_fd && msg.contains(what),
        "the refusal does not name the process, fd {fd} and {what}: {msg}"
    );
    let t = app.drain_last_tick().unwrap_or(0);
    app.expect_consecutive_ticks(t, 3, false, LINE_TIMEOUT)
        .context("the program must run on")?;
    ask_state(&app).context("the program after the refused checkpoint")?;
    app.kill9()?;
    Ok(())
}

#[test]
fn an_ebpf_socket_filter_is_refused_by_name() -> Result<()> {
    require_root!();
    refused("ebpf", "SO_ATTACH_BPF")
}

#[test]
fn a_connection_closed_by_both_sides_is_refused_by_name() -> Result<()> {
    require_root!();
    refused("ended", "a TCP socket whose connection has ended")
}

#[test]
fn a_netlink_socket_with_messages_unread_is_refused_by_name() -> Result<()> {
    require_root!();
    refused("nlqueued", "bytes of netlink messages wait unread")
}

#[test]
fn a_packet_socket_with_a_ring_is_refused_by_name() -> Result<()> {
    require_root!();
    refused("packetring", "a packet socket with a mapped ring")
}
