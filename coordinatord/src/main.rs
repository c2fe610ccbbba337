//! `ckptd`: the ckpt daemon. On a single host it is both the node (registry of local programs,
//! local checkpoints and restores) and the manager.

mod dump;
mod files;
mod hot;
mod lazy;
mod manager;
mod node;
mod private;
mod progress;
mod registry;
mod server;
mod session;
mod trace;
mod unblock;

use anyhow::{bail, Context};
use clap::Parser;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Parser)]
#[command(
    name = "ckptd",
    version,
    about = "ckpt daemon: checkpoint/restore of programs started with ckpt-run"
)]
struct Args {
    /// Unix socket for programs and ckptctl [default: $CKPT_SOCKET, /run/ckpt/ckptd.sock for root]
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Directory holding the checkpoints [default: /var/lib/ckpt for root, $XDG_STATE_HOME/ckpt]
    #[arg(long, env = "CKPT_STORE")]
    store: Option<PathBuf>,
    /// Name of this host in checkpoints [default: the hostname]
    #[arg(long)]
    host_name: Option<String>,
    /// Also take the manager role and accept nodes on ADDR (host:port)
    #[arg(long, value_name = "ADDR", conflicts_with = "join")]
    manager_listen: Option<String>,
    /// Join the manager at HOST:PORT as a node
    #[arg(long, value_name = "HOST:PORT")]
    join: Option<String>,
    /// Keep only the newest N checkpoints; older ones are deleted (pages later ones still need
    /// are folded into them)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    keep: Option<u64>,
    /// Compress page stores with zstd (on worker threads)
    #[arg(long)]
    compress: bool,
    /// Copy everything written since the pre-copy while the program is stopped, instead of
    /// storing long written stretches while it runs (a write to one then waits for its page)
    #[arg(long)]
    no_store_window: bool,
    /// Copying memory before the stop (the pre-copy) gives up after this long, so that the cut
    /// comes about this soon after it is asked for, however busy the machine; what was not
    /// copied then is copied while the programs are stopped
    #[arg(long, value_name = "MS", default_value_t = 750)]
    precopy_ms: u64,
    /// Testing hook: wait this long before reading store windows
    #[arg(long, hide = true, default_value_t = 0)]
    test_window_delay_ms: u64,
    /// Testing hook: a lazy restore's background loading waits this long between slices
    #[arg(long, hide = true, default_value_t = 0)]
    test_lazy_delay_ms: u64,
    /// File holding the cluster secret (required with --manager-listen or --join)
    #[arg(long, value_name = "FILE")]
    secret: Option<PathBuf>,
    /// Policy of the files matching GLOB in every checkpoint: snapshot (saved and put back),
    /// append (a log: checked, cut back only with proof nobody else wrote) or keep (left
    /// alone). Repeatable; the first match wins, after `ckptctl checkpoint --file-policy`
    #[arg(long, value_name = "GLOB=POLICY")]
    file_policy: Vec<ckpt_format::FileRule>,
}

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    if let Some(code) = trace::helper_main(&argv) {
        std::process::exit(code);
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none())
        .init();
    let args = Args::try_parse().unwrap_or_else(|e| {
        // --help and --version are printed as they are; a bad argument gets one line.
        if !e.use_stderr() {
            e.exit();
        }
        eprintln!("ckptd: {}; see ckptd --help", ckpt_sys::cli::usage_line(&e.to_string()));
        std::process::exit(2);
    });
    if let Err(e) = run(args) {
        eprintln!("ckptd: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let socket = args.socket.unwrap_or_else(ckpt_sys::paths::default_socket);
    let store_dir = args.store.unwrap_or_else(ckpt_sys::paths::default_store);
    // Inputs are checked before anything is made or changed.
    let secret = match (&args.secret, args.manager_listen.is_some() || args.join.is_some()) {
        (Some(p), _) => manager::auth::load_secret(p)?,
        (None, true) => bail!("--manager-listen and --join need --secret FILE (the same cluster secret on every node)"),
        (None, false) => Vec::new(),
    };
    private::check_store(&store_dir)?;
    let store = ckpt_format::Store::open(&store_dir)
        .with_context(|| format!("cannot open the store {}", store_dir.display()))?;
    for id in store.sweep_incomplete() {
        tracing::warn!(id, "removed an incomplete checkpoint left by a previous run");
    }
    let restorer = ckpt_sys::paths::sibling("ckpt-restore").context("cannot find the restorer")?;

    // Its own share of the CPU, whatever the load of the programs it serves.
    session::own();

    // Block the stop signals in every thread; one thread waits for them.
    let mut stop = nix::sys::signal::SigSet::empty();
    stop.add(nix::sys::signal::SIGTERM);
    stop.add(nix::sys::signal::SIGINT);
    stop.thread_block()?;

    if let Some(dir) = socket.parent().filter(|d| !d.as_os_str().is_empty()) {
        private::check_socket_dir(dir)?;
    }
    if socket.exists() {
        if UnixStream::connect(&socket).is_ok() {
            bail!("another ckptd is already listening on {}", socket.display());
        }
        std::fs::remove_file(&socket)
            .with_context(|| format!("cannot remove the stale socket {}", socket.display()))?;
    }
    let listener = UnixListener::bind(&socket).with_context(|| format!("cannot listen on {}", socket.display()))?;
    // Anyone may connect: programs and requests are checked per peer (root's ckptd takes
    // every user's programs, another's only its own user's).
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666))?;

    // Restored programs are our children; so are their orphans.
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) };
    let host = args.host_name.unwrap_or_else(ckpt_sys::paths::hostname);
    let mut node = node::Node::new(host, store, restorer, args.compress);
    node.store_window = !args.no_store_window;
    node.window_delay = std::time::Duration::from_millis(args.test_window_delay_ms);
    node.lazy.test_delay = std::time::Duration::from_millis(args.test_lazy_delay_ms);
    node.precopy_budget = std::time::Duration::from_millis(args.precopy_ms);
    node.files.rules = args.file_policy;
    let node = Arc::new(node);
    let role = match &args.join {
        Some(addr) => {
            let (n, a, s) = (node.clone(), addr.clone(), secret.clone());
            std::thread::Builder::new()
                .name("join".into())
                .spawn(move || manager::link::join(n, a, s))?;
            server::Role::Joined {
                manager: addr.clone(),
                secret,
            }
        }
        None => {
            let m = Arc::new(manager::Manager::new(
                node.clone(),
                secret,
                args.keep.map(|k| k as usize),
            ));
            if let Some(addr) = &args.manager_listen {
                let l = std::net::TcpListener::bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
                tracing::info!(addr, "manager listening for nodes");
                let m = m.clone();
                std::thread::Builder::new()
                    .name("manager".into())
                    .spawn(move || manager::link::serve(m, l))?;
            }
            server::Role::Manager(m)
        }
    };
    {
        let node = node.clone();
        std::thread::Builder::new()
            .name("reaper".into())
            .spawn(move || node.reaper.run())?;
    }
    {
        let ctx = Arc::new(server::Ctx {
            node: node.clone(),
            role,
        });
        std::thread::Builder::new()
            .name("server".into())
            .spawn(move || server::serve(ctx, listener))?;
    }
    tracing::info!(socket = %socket.display(), store = %store_dir.display(), host = %node.host, pid = std::process::id(), "ckptd ready");
    let sig = stop.wait()?;
    tracing::info!("{}: shutting down", sig.as_str());
    // A program still loading lazily would be killed by its guard once ckptd is gone.
    if !node.lazy.wait_idle(std::time::Duration::ZERO) {
        tracing::info!("waiting for lazy restores to load their pages");
        node.lazy.wait_idle(std::time::Duration::from_secs(600));
    }
    let _ = std::fs::remove_file(&socket);
    Ok(())
}
