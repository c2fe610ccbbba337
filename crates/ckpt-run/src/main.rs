//! `ckpt-run [--socket PATH] -- PROG ARGS…`: runs PROG under checkpoint control. It checks that
//! ckptd answers, then execs PROG with the interposer preloaded, so PROG keeps this process's
//! pid, stdio, exit code and signals.

use clap::Parser;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "ckpt-run", version, about = "Run a program under ckpt checkpoint control")]
struct Args {
    /// ckptd's socket [default: $CKPT_SOCKET, /run/ckpt/ckptd.sock for root]
    #[arg(long)]
    socket: Option<PathBuf>,
    /// The program and its arguments
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

fn main() {
    let args = Args::try_parse().unwrap_or_else(|e| {
        // --help, --version, and the help a bare command gets, are printed as they are.
        if !e.use_stderr() || e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
            e.exit();
        }
        eprintln!(
            "ckpt-run: {}; see ckpt-run --help",
            ckpt_sys::cli::usage_line(&e.to_string())
        );
        std::process::exit(2);
    });
    let code = match run(args) {
        Ok(never) => match never {},
        Err((code, msg)) => {
            eprintln!("ckpt-run: {msg}");
            code
        }
    };
    std::process::exit(code);
}

enum Never {}

fn run(args: Args) -> Result<Never, (i32, String)> {
    let socket = args.socket.unwrap_or_else(ckpt_sys::paths::default_socket);
    let socket = std::path::absolute(&socket).unwrap_or(socket);
    ping(&socket).map_err(|e| (2, e))?;
    let lib = ckpt_sys::paths::sibling("libckpt_interposer.so").map_err(|e| {
        (
            2,
            format!("cannot find the interposer ({e}); it is built and shipped with ckpt-run"),
        )
    })?;
    let preload = match std::env::var("LD_PRELOAD") {
        Ok(old) if !old.is_empty() => format!("{}:{old}", lib.display()),
        _ => lib.display().to_string(),
    };
    // Rust ignores SIGPIPE for itself; the program must get the default it would have had.
    // SAFETY: resetting a disposition before exec.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let (prog, rest) = args.command.split_first().ok_or((2, "no program given".to_string()))?;
    let err = std::process::Command::new(prog)
        .args(rest)
        .env("LD_PRELOAD", preload)
        .env("CKPT_SOCKET", &socket)
        .exec();
    let code = if err.kind() == std::io::ErrorKind::NotFound {
        127
    } else {
        126
    };
    Err((code, format!("cannot run {prog}: {err}")))
}

/// Checks that the ckptd at `socket` answers and takes this user's programs; the one line to
/// print if not.
fn ping(socket: &std::path::Path) -> Result<(), String> {
    use ckpt_proto::{CtlReply, CtlRequest, Hello, Welcome, PROTO_VERSION};
    let at = socket.display();
    let s = std::os::unix::net::UnixStream::connect(socket).map_err(|e| match e.kind() {
        std::io::ErrorKind::PermissionDenied => format!(
            "cannot use the ckptd at {at} ({e}): it is another user's; each user runs their own ckptd: \
             start one and pass its socket (--socket or CKPT_SOCKET)"
        ),
        _ => format!("ckptd is not reachable at {at} ({e}); start ckptd first (or pass --socket / set CKPT_SOCKET)"),
    })?;
    if let Some(uid) = ckpt_sys::peer::peer_uid(std::os::fd::AsFd::as_fd(&s)) {
        if !ckpt_sys::peer::trusted_daemon(uid) {
            return Err(format!(
                "the ckptd at {at} runs as uid {uid}, neither your user nor root: it will not be given \
                 your programs; each user runs their own ckptd: start one and pass its socket \
                 (--socket or CKPT_SOCKET)"
            ));
        }
    }
    let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(10)));
    let io = |e: ckpt_proto::FrameError| format!("ckptd at {at} broke off ({e}); check that it runs, or restart it");
    ckpt_proto::send(&s, &Hello::Ctl { version: PROTO_VERSION }, &[]).map_err(io)?;
    if let Welcome::Refused { reason } = ckpt_proto::recv(&s).map_err(io)?.0 {
        return Err(format!("ckptd at {at} refused: {reason}"));
    }
    ckpt_proto::send(&s, &CtlRequest::Ping, &[]).map_err(io)?;
    match ckpt_proto::recv::<CtlReply>(&s).map_err(io)?.0 {
        CtlReply::Pong { .. } => Ok(()),
        CtlReply::Error { message } => Err(format!("ckptd at {at}: {message}")),
        _ => Err(format!(
            "ckptd at {at} gave an unexpected answer; use ckpt-run and ckptd of the same build"
        )),
    }
}
