//! Default locations, for root and for ordinary users.

use std::path::PathBuf;

fn is_root() -> bool {
    euid() == 0
}

fn env_dir(var: &str) -> Option<PathBuf> {
    std::env::var_os(var).filter(|v| !v.is_empty()).map(PathBuf::from)
}

use crate::peer::euid;

/// `CKPT_SOCKET`, else `/run/ckpt/ckptd.sock` for root, [`user_socket`] otherwise.
pub fn default_socket() -> PathBuf {
    if let Some(p) = env_dir("CKPT_SOCKET") {
        return p;
    }
    if is_root() {
        return PathBuf::from("/run/ckpt/ckptd.sock");
    }
    user_socket(euid(), env_dir("XDG_RUNTIME_DIR"))
}

/// The socket of the ckptd that user `uid` runs for themselves: in their runtime folder
/// (`runtime`, their `$XDG_RUNTIME_DIR`), else in a folder of the temporary folder named after
/// them (each user runs their own ckptd: the names must not meet).
pub fn user_socket(uid: u32, runtime: Option<PathBuf>) -> PathBuf {
    match runtime {
        Some(dir) => dir.join("ckpt").join("ckptd.sock"),
        None => std::env::temp_dir().join(format!("ckpt-{uid}")).join("ckptd.sock"),
    }
}

/// `/var/lib/ckpt` for root, `$XDG_STATE_HOME/ckpt` (or `~/.local/state/ckpt`, or `store` in
/// the user's folder of the temporary folder, beside [`user_socket`]'s) otherwise.
pub fn default_store() -> PathBuf {
    if is_root() {
        return PathBuf::from("/var/lib/ckpt");
    }
    env_dir("XDG_STATE_HOME")
        .or_else(|| env_dir("HOME").map(|h| h.join(".local").join("state")))
        .map(|d| d.join("ckpt"))
        .unwrap_or_else(|| std::env::temp_dir().join(format!("ckpt-{}", euid())).join("store"))
}

/// A binary shipped next to the running one (`ckpt-run` finds the interposer this way, `ckptd`
/// the restorer), so nothing needs installing.
pub fn sibling(name: &str) -> std::io::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .ok_or_else(|| std::io::Error::other("executable has no directory"))?;
    let p = dir.join(name);
    if p.exists() {
        Ok(p)
    } else {
        Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{} not found next to {}", name, exe.display()),
        ))
    }
}

/// This host's name, for the store layout and messages.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}
