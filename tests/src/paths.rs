//! Where things are: the workspace, cargo's target directory, the project's
//! binaries, and the C examples (compiled on demand with gcc).

use anyhow::{bail, Context, Result};
use std::collections::HashSet;
use std::fs::{self, File};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};

/// The workspace root: parent of this package's directory.
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| manifest.to_path_buf())
}

/// Cargo's target directory (`$CARGO_TARGET_DIR` or `<workspace>/target`).
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => {
            let p = PathBuf::from(d);
            if p.is_absolute() {
                p
            } else {
                workspace_root().join(p)
            }
        }
        _ => workspace_root().join("target"),
    }
}

/// Where `ckptd`, `ckpt-run`, `ckptctl` live: `$CKPT_BIN_DIR`, else
/// `<target>/debug`.
pub fn bin_dir() -> PathBuf {
    bin_dir_for("debug")
}

/// `$CKPT_BIN_DIR`, else `<target>/<profile>` (the benchmark uses "release").
pub fn bin_dir_for(profile: &str) -> PathBuf {
    match std::env::var_os("CKPT_BIN_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => target_dir().join(profile),
    }
}

/// Path of one of the project's binaries, checked to exist.
pub fn bin(name: &str) -> Result<PathBuf> {
    let p = bin_dir().join(name);
    if !p.is_file() {
        bail!(
            "binary {} not found (build the workspace first: cargo build --workspace, \
             or point CKPT_BIN_DIR at the binaries)",
            p.display()
        );
    }
    Ok(p)
}

/// `<workspace>/examples`.
pub fn examples_src_dir() -> PathBuf {
    workspace_root().join("examples")
}

/// `<target>/examples`, where the C examples are compiled to.
pub fn examples_out_dir() -> PathBuf {
    target_dir().join("examples")
}

/// The python interpreter used for `.py` examples.
pub const PYTHON3: &str = "/usr/bin/python3";

/// Returns the runnable path of an example: for `foo` (or `foo.c`) the
/// binary `<target>/examples/foo`, compiled from `examples/foo.c` with
/// `gcc -O1 -pthread` unless it is newer than its source (once per process,
/// under an exclusive file lock so concurrent test processes don't race);
/// for `foo.py` the script itself.
pub fn example(name: &str) -> Result<PathBuf> {
    if name.ends_with(".py") {
        let p = examples_src_dir().join(name);
        if !p.is_file() {
            bail!("example script {} not found", p.display());
        }
        return Ok(p);
    }
    let stem = name.strip_suffix(".c").unwrap_or(name);
    compile_example(stem)?;
    Ok(examples_out_dir().join(stem))
}

/// Program + arguments to run an example (`.py` runs under [`PYTHON3`]).
pub fn example_cmdline(name: &str, args: &[&str]) -> Result<(PathBuf, Vec<String>)> {
    let path = example(name)?;
    let mut v: Vec<String> = Vec::new();
    if name.ends_with(".py") {
        v.push(path.display().to_string());
        v.extend(args.iter().map(|s| s.to_string()));
        Ok((PathBuf::from(PYTHON3), v))
    } else {
        v.extend(args.iter().map(|s| s.to_string()));
        Ok((path, v))
    }
}

static COMPILED: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();

/// Compiles every `examples/*.c` (see [`example`]).
pub fn compile_examples() -> Result<()> {
    let mut stems: Vec<String> = fs::read_dir(examples_src_dir())
        .with_context(|| format!("read {}", examples_src_dir().display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().map(|x| x == "c").unwrap_or(false))
        .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().to_string()))
        .collect();
    stems.sort();
    for s in stems {
        compile_example(&s)?;
    }
    Ok(())
}

/// Compiles `examples/<stem>.c` into `<target>/examples/<stem>` if needed.
pub fn compile_example(stem: &str) -> Result<()> {
    let done = COMPILED.get_or_init(|| Mutex::new(HashSet::new()));
    // Held while compiling: one compile at a time within this process.
    let mut done = done.lock().unwrap();
    if done.contains(stem) {
        return Ok(());
    }
    let src = examples_src_dir().join(format!("{stem}.c"));
    if !src.is_file() {
        bail!("example source {} not found", src.display());
    }
    let out_dir = examples_out_dir();
    fs::create_dir_all(&out_dir).with_context(|| format!("mkdir {}", out_dir.display()))?;
    let lock = File::create(out_dir.join(".lock")).context("create examples lock file")?;
    // SAFETY: plain flock on an fd we own; released when `lock` is dropped.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        bail!("flock examples lock: {}", std::io::Error::last_os_error());
    }
    let out = out_dir.join(stem);
    let fresh = match (fs::metadata(&out), fs::metadata(&src)) {
        (Ok(o), Ok(s)) => o.modified().ok() >= s.modified().ok(),
        _ => false,
    };
    if !fresh {
        let tmp = out_dir.join(format!(".{stem}.tmp.{}", std::process::id()));
        let output = Command::new("gcc")
            .args(["-O1", "-pthread", "-Wall", "-o"])
            .arg(&tmp)
            .arg(&src)
            .stdin(Stdio::null())
            .output()
            .context("running gcc (is it installed?)")?;
        if !output.status.success() {
            let _ = fs::remove_file(&tmp);
            bail!(
                "gcc failed for {}: {}\n{}",
                src.display(),
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        fs::rename(&tmp, &out).with_context(|| format!("rename to {}", out.display()))?;
    }
    drop(lock);
    done.insert(stem.to_string());
    Ok(())
}
