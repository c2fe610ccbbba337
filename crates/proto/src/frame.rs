//! Framing and encoding: the only place that turns messages into bytes.

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use serde::{de::DeserializeOwned, Serialize};
use std::io::{IoSlice, IoSliceMut, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

/// Larger frames are refused: a peer that sends one is broken or hostile.
pub const MAX_FRAME: u32 = 64 << 20;
/// At most this many fds ride along with one frame.
pub const MAX_FDS: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("connection closed by peer")]
    Closed,
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("frame of {0} bytes is larger than allowed")]
    TooLarge(u64),
    #[error("cannot encode message: {0}")]
    Encode(String),
    #[error("cannot decode message: {0}")]
    Decode(String),
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard()
}

fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let payload = bincode::serde::encode_to_vec(msg, config()).map_err(|e| FrameError::Encode(e.to_string()))?;
    if payload.len() as u64 > MAX_FRAME as u64 {
        return Err(FrameError::TooLarge(payload.len() as u64));
    }
    let mut buf = Vec::with_capacity(4 + payload.len());
    buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buf.extend_from_slice(&payload);
    Ok(buf)
}

fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, FrameError> {
    bincode::serde::decode_from_slice(payload, config())
        .map(|(v, _)| v)
        .map_err(|e| FrameError::Decode(e.to_string()))
}

/// Sends one message, with `fds` attached to its first byte.
pub fn send<T: Serialize>(sock: &UnixStream, msg: &T, fds: &[RawFd]) -> Result<(), FrameError> {
    let buf = encode(msg)?;
    let mut sent = 0;
    while sent < buf.len() {
        let iov = [IoSlice::new(&buf[sent..])];
        let rights = [ControlMessage::ScmRights(fds)];
        let cmsgs: &[ControlMessage] = if sent == 0 && !fds.is_empty() { &rights } else { &[] };
        match sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
            Ok(n) => sent += n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(FrameError::Io(e.into())),
        }
    }
    Ok(())
}

/// Receives one message and the fds that came with it.
pub fn recv<T: DeserializeOwned>(sock: &UnixStream) -> Result<(T, Vec<OwnedFd>), FrameError> {
    let mut len_buf = [0u8; 4];
    let mut fds = Vec::new();
    let mut got = 0;
    // The fds arrive with the first byte, so the length is read with recvmsg.
    while got < 4 {
        let mut cmsg_space = nix::cmsg_space!([RawFd; MAX_FDS]);
        let mut iov = [IoSliceMut::new(&mut len_buf[got..])];
        let msg = match recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg_space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(m) => m,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(FrameError::Io(e.into())),
        };
        for c in msg.cmsgs().map_err(|e| FrameError::Io(e.into()))? {
            if let ControlMessageOwned::ScmRights(raw) = c {
                // SAFETY: the kernel just installed these descriptors for us; we own them.
                fds.extend(raw.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
            }
        }
        if msg.bytes == 0 {
            return Err(FrameError::Closed);
        }
        got += msg.bytes;
    }
    let len = u32::from_le_bytes(len_buf);
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len as u64));
    }
    let mut payload = vec![0u8; len as usize];
    let mut r: &UnixStream = sock;
    r.read_exact(&mut payload).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            FrameError::Closed
        } else {
            FrameError::Io(e)
        }
    })?;
    Ok((decode(&payload)?, fds))
}

/// Writes one frame to any byte stream (TCP between daemons).
pub fn write_frame<T: Serialize>(w: &mut impl std::io::Write, msg: &T) -> Result<(), FrameError> {
    w.write_all(&encode(msg)?)?;
    w.flush()?;
    Ok(())
}

/// Reads one frame from any byte stream.
pub fn read_frame<T: DeserializeOwned>(r: &mut impl Read) -> Result<T, FrameError> {
    let mut len_buf = [0u8; 4];
    r.read_exact(&mut len_buf).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => FrameError::Closed,
        _ => FrameError::Io(e),
    })?;
    let len = u32::from_le_bytes(len_buf);
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len as u64));
    }
    let mut payload = vec![0u8; len as usize];
    r.read_exact(&mut payload)?;
    decode(&payload)
}

/// Encodes a frame into `buf` without allocating, for code that must not touch the heap (the
/// interposer while the program's threads are parked). Returns the frame length.
pub fn encode_small<T: Serialize>(msg: &T, buf: &mut [u8]) -> Option<usize> {
    let (len_buf, payload) = buf.split_at_mut_checked(4)?;
    let n = bincode::serde::encode_into_slice(msg, payload, config()).ok()?;
    len_buf.copy_from_slice(&(n as u32).to_le_bytes());
    Some(4 + n)
}

/// Decodes a frame payload (without its length prefix) without allocating, for messages with no
/// heap data.
pub fn decode_small<T: DeserializeOwned>(payload: &[u8]) -> Option<T> {
    bincode::serde::decode_from_slice(payload, config())
        .ok()
        .map(|(v, _)| v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AppMsg, NodeMsg};

    #[test]
    fn send_recv_with_fds() {
        let (a, b) = UnixStream::pair().unwrap();
        let f = std::fs::File::open("/dev/null").unwrap();
        send(&a, &NodeMsg::Park { timeout_ms: 7 }, &[f.as_raw_fd()]).unwrap();
        let (m, fds): (NodeMsg, _) = recv(&b).unwrap();
        assert!(matches!(m, NodeMsg::Park { timeout_ms: 7 }));
        assert_eq!(fds.len(), 1);
        drop(a);
        assert!(matches!(recv::<NodeMsg>(&b), Err(FrameError::Closed)));
    }

    #[test]
    fn small_roundtrip() {
        let mut buf = [0u8; 64];
        let n = encode_small(&AppMsg::Parked { nthreads: 9 }, &mut buf).unwrap();
        let m: AppMsg = decode_small(&buf[4..n]).unwrap();
        assert!(matches!(m, AppMsg::Parked { nthreads: 9 }));
    }
}
