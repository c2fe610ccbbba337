//! Cluster authentication: challenge–response over HMAC-SHA256 with the cluster secret, both
//! ways; the secret itself never crosses the wire.

use anyhow::{bail, Context};
use ckpt_proto::frame::{read_frame, write_frame};
use ckpt_proto::{AuthResult, Challenge, PeerHello, Proof, PROTO_VERSION};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::net::TcpStream;

type HmacSha256 = Hmac<Sha256>;

/// Reads the cluster secret from `path`, which must be its owner's alone (see
/// [`crate::private::check_secret`]).
pub fn load_secret(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    use std::io::Read;
    let cannot = || format!("cannot read the cluster secret {}", path.display());
    let mut f = std::fs::File::open(path).with_context(cannot)?;
    crate::private::check_secret(path, &f.metadata().with_context(cannot)?)?;
    let mut s = Vec::new();
    f.read_to_end(&mut s).with_context(cannot)?;
    let s = s.trim_ascii().to_vec();
    if s.len() < 8 {
        bail!("the cluster secret in {} is shorter than 8 bytes", path.display());
    }
    Ok(s)
}

fn nonce() -> Vec<u8> {
    let mut n = vec![0u8; 32];
    // SAFETY: getrandom fills the buffer we own.
    unsafe { libc::getrandom(n.as_mut_ptr().cast(), n.len(), 0) };
    n
}

fn mac(secret: &[u8], label: &[u8], nonce: &[u8]) -> Vec<u8> {
    let mut m = <HmacSha256 as Mac>::new_from_slice(secret).expect("HMAC takes keys of any length");
    m.update(label);
    m.update(nonce);
    m.finalize().into_bytes().to_vec()
}

fn verify(secret: &[u8], label: &[u8], nonce: &[u8], tag: &[u8]) -> bool {
    let mut m = <HmacSha256 as Mac>::new_from_slice(secret).expect("HMAC takes keys of any length");
    m.update(label);
    m.update(nonce);
    m.verify_slice(tag).is_ok()
}

/// Manager side: returns the peer's hello once it proved it knows the secret.
pub fn accept(s: &mut TcpStream, secret: &[u8]) -> anyhow::Result<PeerHello> {
    let hello: PeerHello = read_frame(s)?;
    let (version, host) = match &hello {
        PeerHello::Node { version, host } | PeerHello::Ctl { version, host } => (*version, host.clone()),
    };
    if version != PROTO_VERSION {
        let reason = format!("protocol version {version} is not supported (the manager speaks {PROTO_VERSION})");
        write_frame(s, &Challenge::Refused { reason: reason.clone() })?;
        bail!("{host}: {reason}");
    }
    let n = nonce();
    write_frame(
        s,
        &Challenge::Nonce {
            version: PROTO_VERSION,
            nonce: n.clone(),
        },
    )?;
    let proof: Proof = read_frame(s)?;
    if !verify(secret, b"peer", &n, &proof.mac) {
        let reason = "wrong cluster secret".to_string();
        write_frame(s, &AuthResult::Refused { reason: reason.clone() })?;
        bail!(
            "{host} ({}): {reason}",
            s.peer_addr().map(|a| a.to_string()).unwrap_or_default()
        );
    }
    write_frame(
        s,
        &AuthResult::Accepted {
            mac: mac(secret, b"manager", &proof.nonce),
        },
    )?;
    Ok(hello)
}

/// Peer side: proves the secret and checks that the manager knows it too.
pub fn connect(s: &mut TcpStream, secret: &[u8], hello: PeerHello) -> anyhow::Result<()> {
    write_frame(s, &hello)?;
    let n = match read_frame::<Challenge>(s)? {
        Challenge::Nonce { nonce, .. } => nonce,
        Challenge::Refused { reason } => bail!("the manager refused: {reason}"),
    };
    let mine = nonce();
    write_frame(
        s,
        &Proof {
            mac: mac(secret, b"peer", &n),
            nonce: mine.clone(),
        },
    )?;
    match read_frame::<AuthResult>(s)? {
        AuthResult::Accepted { mac } if verify(secret, b"manager", &mine, &mac) => Ok(()),
        AuthResult::Accepted { .. } => bail!("the manager does not know the cluster secret"),
        AuthResult::Refused { reason } => bail!("the manager refused: {reason}"),
    }
}
