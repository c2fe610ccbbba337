//! SysV message queues: id, key, owner, mode, the byte limit (`msg_qbytes`) and every message
//! with its type, in order. Messages are read without taking them (`msgrcv` with `MSG_COPY`,
//! which needs a kernel with `CONFIG_CHECKPOINT_RESTORE`) and sent again by ckptd at restore,
//! so the queue's last sender (`msg_lspid`) is ckptd afterwards.

use super::{existing, live, make_with_id, ok, Kind, Perm, Stale};
use crate::KindError;
use serde::{Deserialize, Serialize};

const MSG_COPY: libc::c_int = 0o40000;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub id: i32,
    pub perm: Perm,
    pub qbytes: u64,
    pub messages: Vec<Message>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Message {
    pub mtype: i64,
    pub data: Vec<u8>,
}

fn stat(id: i32) -> std::io::Result<libc::msqid_ds> {
    // SAFETY: zeroed msqid_ds is a valid buffer for IPC_STAT.
    let mut ds: libc::msqid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: IPC_STAT writes into ds.
    ok(unsafe { libc::msgctl(id, libc::IPC_STAT, &mut ds) })?;
    Ok(ds)
}

pub fn exists(id: i32) -> bool {
    stat(id).is_ok()
}

/// Reads queue `id` and a copy of each message, leaving the queue as it is.
pub fn capture(id: i32) -> Result<Record, KindError> {
    let what = format!("SysV message queue {id}");
    let ds = stat(id).map_err(KindError::read(what.clone()))?;
    // No message is longer than the queue may hold, nor than the system's limit at send time.
    let msgmax: usize = std::fs::read_to_string("/proc/sys/kernel/msgmax")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(8192);
    let cap = msgmax.max(ds.msg_qbytes as usize);
    let mut buf = vec![0u8; 8 + cap];
    let mut messages = Vec::new();
    for n in 0..ds.msg_qnum as libc::c_long {
        // SAFETY: buf holds the type word and `cap` bytes; MSG_COPY takes the n-th message
        // without removing it.
        let r = unsafe { libc::msgrcv(id, buf.as_mut_ptr().cast(), cap, n, MSG_COPY | libc::IPC_NOWAIT) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(libc::ENOSYS) => KindError::Refused(format!(
                    "{what}: this kernel cannot read messages without taking them (it lacks CONFIG_CHECKPOINT_RESTORE)"
                )),
                Some(libc::ENOMSG) => KindError::Refused(format!(
                    "{what}: a process outside the checkpoint took a message while it was read; try again"
                )),
                _ => KindError::read(what)(e),
            });
        }
        let mtype = i64::from_ne_bytes(buf[..8].try_into().unwrap_or_default());
        messages.push(Message {
            mtype,
            data: buf[8..8 + r as usize].to_vec(),
        });
    }
    Ok(Record {
        id,
        perm: Perm::of(&ds.msg_perm),
        qbytes: ds.msg_qbytes,
        messages,
    })
}

/// Who uses queue `id`: a live process that was the last to send to or receive from it.
fn user(id: i32) -> Option<String> {
    let ds = stat(id).ok()?;
    live(ds.msg_lspid).or_else(|| live(ds.msg_lrpid))
}

pub fn check(rec: &Record) -> Result<Stale, String> {
    existing(
        Kind::Msg,
        rec.id,
        &rec.perm,
        |id| stat(id).ok().map(|ds| ds.msg_perm.__key),
        user,
    )
}

/// Makes the queue again at its id with its limit, owner, mode and messages, replacing `stale`.
pub fn recreate(rec: &Record, stale: &Stale) -> Result<(), KindError> {
    stale.clear()?;
    let what = format!("SysV message queue {}", rec.id);
    let key = rec.perm.key;
    let mode = (rec.perm.mode & 0o777) as libc::c_int;
    make_with_id(Kind::Msg, rec.id, &rec.perm, || {
        // SAFETY: plain msgget.
        ok(unsafe { libc::msgget(key, libc::IPC_CREAT | libc::IPC_EXCL | mode) })
    })?;
    // The limit first: the messages must fit. The owner last: ckptd sends as root until then.
    let mut ds = stat(rec.id).map_err(KindError::recreate(what.clone()))?;
    ds.msg_qbytes = rec.qbytes;
    // SAFETY: IPC_SET reads ds.
    ok(unsafe { libc::msgctl(rec.id, libc::IPC_SET, &mut ds) }).map_err(KindError::recreate(what.clone()))?;
    for m in &rec.messages {
        let mut buf = m.mtype.to_ne_bytes().to_vec();
        buf.extend_from_slice(&m.data);
        // SAFETY: buf holds the type word and the message.
        let r = unsafe { libc::msgsnd(rec.id, buf.as_ptr().cast(), m.data.len(), libc::IPC_NOWAIT) };
        ok(r).map_err(KindError::recreate(format!("{what}: a message")))?;
    }
    let mut ds = stat(rec.id).map_err(KindError::recreate(what.clone()))?;
    rec.perm.set(&mut ds.msg_perm);
    // SAFETY: IPC_SET reads ds.
    ok(unsafe { libc::msgctl(rec.id, libc::IPC_SET, &mut ds) }).map_err(KindError::recreate(what))?;
    Ok(())
}

pub fn describe(rec: &Record) -> String {
    let bytes: usize = rec.messages.iter().map(|m| m.data.len()).sum();
    format!(
        "SysV message queue {} ({}, {} messages, {bytes} bytes, limit {}, mode {:o}, owner {}:{})",
        rec.id,
        rec.perm.describe_key(),
        rec.messages.len(),
        rec.qbytes,
        rec.perm.mode & 0o777,
        rec.perm.uid,
        rec.perm.gid
    )
}
