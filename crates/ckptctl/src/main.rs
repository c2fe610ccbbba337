//! `ckptctl`: talks to the local ckptd.

mod attach;
mod check;
mod client;
mod progress;
mod render;

use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "ckptctl",
    version,
    about = "Control ckpt: take, list, inspect, restore and delete checkpoints"
)]
struct Args {
    /// ckptd's socket [default: $CKPT_SOCKET, /run/ckpt/ckptd.sock for root]
    #[arg(long, global = true)]
    socket: Option<PathBuf>,
    /// Machine-readable output on stdout
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Checkpoint every registered process; prints the new id
    Checkpoint {
        /// Store every page, not only those written since the previous checkpoint
        #[arg(long)]
        full: bool,
        /// Baseline mode: no copying before the stop, pages written to disk while the programs
        /// are stopped
        #[arg(long)]
        stop_the_world: bool,
        /// Keep communication stopped this long between the two phases (for testing)
        #[arg(long, default_value_t = 0, hide = true)]
        hold_phase1_ms: u32,
        /// Policy of the files matching GLOB: snapshot (saved, put back at restore), append (a
        /// log: checked, cut back only with proof nobody else wrote) or keep (left alone).
        /// Repeatable; the first match wins, before ckptd's own --file-policy
        #[arg(long, value_name = "GLOB=POLICY")]
        file_policy: Vec<ckpt_format::FileRule>,
    },
    /// List the committed checkpoints
    List,
    /// Show what a checkpoint holds: processes, threads, mappings, fds, sizes
    Show { id: String },
    /// Show the processes under checkpoint control
    Status,
    /// Bring back the processes of a checkpoint, with their pids; their terminal stdio, and
    /// stdio pipes/sockets whose other end is not in the checkpoint, become this command's
    Restore {
        id: String,
        /// Stay until the restored processes of this host have exited, pass them SIGINT, SIGTERM,
        /// SIGHUP, SIGQUIT, SIGWINCH and job control, and exit with the first one's status
        /// [default when stdin is a terminal]
        #[arg(long, conflicts_with = "detach")]
        attach: bool,
        /// Return once the processes are back; they run on as ckptd's [default when stdin is
        /// not a terminal]
        #[arg(long)]
        detach: bool,
        /// For the files matching GLOB: keep leaves them as they are (unchecked), snapshot rolls
        /// them back even when a check would refuse (a log: cut back without proof).
        /// Repeatable; the first match wins
        #[arg(long, value_name = "GLOB=POLICY")]
        file_policy: Vec<ckpt_format::FileRule>,
        /// Run the programs as soon as their threads and fds are back and bring their memory
        /// in after: a page on first touch, the rest in the background. Without --attach,
        /// waits until every page is in (exit code 1, and the programs killed, if one cannot
        /// be read)
        #[arg(long)]
        lazy: bool,
    },
    /// Delete a checkpoint
    Delete { id: String },
    /// Report which kernel features ckpt needs work on this machine, with the privileges of
    /// this command (run it as ckptd's user); needs no ckptd
    Check,
}

fn main() {
    // Output piped into `head` that stops reading ends ckptctl quietly, as for any tool (Rust
    // ignores SIGPIPE, and `println!` would panic on the broken pipe).
    // SAFETY: setting a disposition before any thread exists.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let args = Args::try_parse().unwrap_or_else(|e| {
        // --help, --version, and the help a bare command gets, are printed as they are.
        if !e.use_stderr() || e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
            e.exit();
        }
        eprintln!(
            "ckptctl: {}; see ckptctl --help",
            ckpt_sys::cli::usage_line(&e.to_string())
        );
        std::process::exit(2);
    });
    let socket = args.socket.clone().unwrap_or_else(ckpt_sys::paths::default_socket);
    let code = match run(&args, &socket) {
        Ok(code) => code,
        Err(client::Failure::Gone(msg)) => {
            eprintln!("ckptctl: {msg}");
            2
        }
        Err(client::Failure::Unreachable(msg)) => {
            eprintln!("ckptctl: {msg}; is ckptd running? (start it, or pass --socket / set CKPT_SOCKET)");
            2
        }
        Err(client::Failure::NotYours(msg)) => {
            eprintln!("ckptctl: {msg}");
            2
        }
        Err(client::Failure::Refused(msg)) => {
            eprintln!("ckptctl: {}", msg.lines().next().unwrap_or_default());
            1
        }
    };
    std::process::exit(code);
}

/// Runs the command; ckptctl's exit code.
fn run(args: &Args, socket: &std::path::Path) -> Result<i32, client::Failure> {
    use ckpt_proto::{CtlReply, CtlRequest};
    use std::io::IsTerminal;
    let attach = match &args.cmd {
        Cmd::Restore { attach, detach, .. } => *attach || (!*detach && std::io::stdin().is_terminal()),
        _ => false,
    };
    let caught = if attach { Some(attach::catch()?) } else { None };
    // Progress as events with --json, as a bar on a terminal; nothing more otherwise.
    let show = if args.json {
        Some(progress::Show::Json)
    } else if std::io::stderr().is_terminal() {
        Some(progress::Show::Bar)
    } else {
        None
    };
    let op = match &args.cmd {
        Cmd::Checkpoint { .. } => "checkpoint",
        _ => "restore",
    };
    let want_progress = show.is_some();
    let mut reporter = show.map(|s| progress::Reporter::new(s, op));
    let (req, fds): (CtlRequest, Vec<i32>) = match &args.cmd {
        // Asks the kernel here, not ckptd.
        Cmd::Check => return Ok(check::run(args.json)),
        Cmd::Checkpoint {
            hold_phase1_ms,
            full,
            stop_the_world,
            file_policy,
        } => (
            CtlRequest::Checkpoint {
                hold_phase1_ms: *hold_phase1_ms,
                mode: ckpt_proto::CheckpointMode {
                    full: *full,
                    stop_the_world: *stop_the_world,
                    no_window: false,
                },
                file_policies: file_policy.clone(),
                progress: want_progress,
            },
            vec![],
        ),
        Cmd::List => (CtlRequest::List, vec![]),
        Cmd::Show { id } => (CtlRequest::Show { id: id.clone() }, vec![]),
        Cmd::Status => (CtlRequest::Status, vec![]),
        // Our stdio goes along: it becomes the restored programs' stdio.
        Cmd::Restore {
            id, file_policy, lazy, ..
        } => (
            CtlRequest::Restore {
                id: id.clone(),
                file_policies: file_policy.clone(),
                progress: want_progress,
                lazy: *lazy,
            },
            vec![0, 1, 2],
        ),
        Cmd::Delete { id } => (CtlRequest::Delete { id: id.clone() }, vec![]),
    };
    let c = client::Client::connect(socket)?;
    let metered = matches!(req, CtlRequest::Checkpoint { .. } | CtlRequest::Restore { .. });
    match c.call(&req, &fds, reporter.as_mut().filter(|_| metered))? {
        CtlReply::Error { message } => Err(client::Failure::Refused(message)),
        reply => {
            render::print(&reply, args.json);
            let lazy = matches!(args.cmd, Cmd::Restore { lazy: true, .. });
            match (caught, &reply) {
                (Some(caught), CtlReply::Restored { id, .. }) => attach::follow(&c, id, caught),
                (None, CtlReply::Restored { id, .. }) if lazy => {
                    // No bar: the programs run and may write to the terminal.
                    let mut reporter = args
                        .json
                        .then(|| progress::Reporter::new(progress::Show::Json, "restore"));
                    let req = CtlRequest::WaitLoaded {
                        id: id.clone(),
                        progress: reporter.is_some(),
                    };
                    match c.call(&req, &[], reporter.as_mut())? {
                        CtlReply::Error { message } => Err(client::Failure::Refused(message)),
                        loaded => {
                            render::print(&loaded, args.json);
                            Ok(0)
                        }
                    }
                }
                _ => Ok(0),
            }
        }
    }
}
