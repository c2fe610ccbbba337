//! Who may use what ckptd is given at startup. A checkpoint holds a program's whole memory, and
//! the cluster secret lets its holder drive every ckptd of the cluster: neither may be open to
//! other users. Each user runs their own ckptd, with a store of their own.

use anyhow::{bail, Context};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use ckpt_sys::peer::euid;

/// Refuses a store folder that other users can write or that belongs to another user (root
/// aside); makes private a store folder this user owns that others could read. A store that
/// does not exist yet is created private when opened.
pub fn check_store(root: &Path) -> anyhow::Result<()> {
    let shown = root.display();
    let meta = match std::fs::metadata(root) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => bail!("cannot use the store {shown} ({e}); pass another --store"),
    };
    if !meta.is_dir() {
        bail!("the store {shown} is not a folder; pass another --store");
    }
    let (me, owner, mode) = (euid(), meta.uid(), meta.mode() & 0o7777);
    if owner != me && owner != 0 {
        bail!(
            "the store {shown} belongs to uid {owner}, but this ckptd runs as uid {me}; each user runs \
             their own ckptd with a store of their own: pass another --store"
        );
    }
    if mode & 0o022 != 0 {
        bail!(
            "other users can write to the store {shown} (mode {mode:04o}); make it private with \
             `chmod 700 {shown}`, or pass another --store"
        );
    }
    if owner != me {
        // Root's folder: not ours to change, but it must let us in.
        let path = std::ffi::CString::new(root.as_os_str().as_encoded_bytes())?;
        // SAFETY: a NUL-terminated path; access only reads.
        if unsafe { libc::access(path.as_ptr(), libc::W_OK | libc::X_OK) } != 0 {
            bail!("the store {shown} belongs to root and uid {me} cannot write to it; pass a --store of your own");
        }
        return Ok(());
    }
    if mode & 0o077 != 0 {
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot make the store {shown} private (chmod 700)"))?;
        tracing::warn!(store = %shown, was = format!("{mode:04o}"), "other users could read the store: it is now private (0700)");
    }
    Ok(())
}

/// Refuses a cluster secret file that other users can change or read, or that belongs to
/// another user (root aside), as ssh does for private keys: whoever knows the secret controls
/// the cluster.
pub fn check_secret(path: &Path, meta: &std::fs::Metadata) -> anyhow::Result<()> {
    let shown = path.display();
    let (me, owner, mode) = (euid(), meta.uid(), meta.mode() & 0o7777);
    let fix = format!("make it private with `chmod 600 {shown}`");
    if mode & 0o022 != 0 {
        bail!("other users can change the cluster secret {shown} (mode {mode:04o}); {fix}");
    }
    if mode & 0o077 != 0 {
        bail!("other users can read the cluster secret {shown} (mode {mode:04o}); {fix}");
    }
    if owner != me && owner != 0 {
        bail!(
            "the cluster secret {shown} belongs to uid {owner}, who could change it; this ckptd runs as \
             uid {me}: give it to uid {me} (`chown {me} {shown}`)"
        );
    }
    Ok(())
}

/// The folder of ckptd's socket: created private when missing; refused when another user
/// (root aside) owns it (they could put their own socket in ours' place); a warning when
/// others may write in it without the sticky bit.
pub fn check_socket_dir(dir: &Path) -> anyhow::Result<()> {
    let shown = dir.display();
    let meta = match std::fs::metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return ckpt_format::private::create_private_dir_all(dir)
                .with_context(|| format!("cannot create the socket folder {shown}"));
        }
        Err(e) => bail!("cannot use the socket folder {shown} ({e}); pass another --socket"),
    };
    let (me, owner, mode) = (euid(), meta.uid(), meta.mode() & 0o7777);
    if owner != me && owner != 0 {
        bail!(
            "the socket folder {shown} belongs to uid {owner}, but this ckptd runs as uid {me}; pass \
             a --socket in a folder of your own"
        );
    }
    if mode & 0o022 != 0 && mode & 0o1000 == 0 {
        // Another user could put a socket of theirs in ours' place; programs and ckpt-run check
        // who answers and would refuse it, but a private folder avoids the question.
        tracing::warn!(
            folder = %shown,
            mode = format_args!("{mode:o}"),
            "other users can write in the socket's folder; `chmod go-w` it"
        );
    }
    Ok(())
}
