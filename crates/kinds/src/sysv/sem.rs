//! SysV semaphore sets: id, key, owner, mode and every semaphore's value (`GETALL`).
//! Adjustments on exit (`SEM_UNDO`) are kept by the kernel per process and shown nowhere: a
//! process that made an operation with `SEM_UNDO` is refused at checkpoint (the interposer
//! notes it), since its adjustments would be lost.

use super::{existing, live, make_with_id, ok, Kind, Perm, Stale};
use crate::KindError;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub id: i32,
    pub perm: Perm,
    pub values: Vec<u16>,
}

fn stat(id: i32) -> std::io::Result<libc::semid_ds> {
    // SAFETY: zeroed semid_ds is a valid buffer for IPC_STAT.
    let mut ds: libc::semid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: IPC_STAT writes into ds (passed as the semun word).
    ok(unsafe { libc::semctl(id, 0, libc::IPC_STAT, &mut ds as *mut libc::semid_ds) })?;
    Ok(ds)
}

pub fn exists(id: i32) -> bool {
    stat(id).is_ok()
}

/// Reads set `id` and the value of each of its semaphores.
pub fn capture(id: i32) -> Result<Record, KindError> {
    let what = format!("SysV semaphore set {id}");
    let ds = stat(id).map_err(KindError::read(what.clone()))?;
    let mut values = vec![0u16; ds.sem_nsems as usize];
    // SAFETY: GETALL writes sem_nsems values into the array.
    ok(unsafe { libc::semctl(id, 0, libc::GETALL, values.as_mut_ptr()) }).map_err(KindError::read(what))?;
    Ok(Record {
        id,
        perm: Perm::of(&ds.sem_perm),
        values,
    })
}

/// Who uses set `id`: a live process that was the last to operate on one of its semaphores,
/// or processes waiting on one.
fn user(id: i32) -> Option<String> {
    let ds = stat(id).ok()?;
    for n in 0..ds.sem_nsems as i32 {
        // SAFETY: GETPID/GETNCNT/GETZCNT take no argument.
        let (pid, ncnt, zcnt) = unsafe {
            (
                libc::semctl(id, n, libc::GETPID),
                libc::semctl(id, n, libc::GETNCNT),
                libc::semctl(id, n, libc::GETZCNT),
            )
        };
        if ncnt > 0 || zcnt > 0 {
            return Some(format!("{} waiting processes", ncnt.max(0) + zcnt.max(0)));
        }
        if let Some(who) = live(pid) {
            return Some(who);
        }
    }
    None
}

pub fn check(rec: &Record) -> Result<Stale, String> {
    existing(
        Kind::Sem,
        rec.id,
        &rec.perm,
        |id| stat(id).ok().map(|ds| ds.sem_perm.__key),
        user,
    )
}

/// Makes the set again at its id with its values, owner and mode, replacing `stale`.
pub fn recreate(rec: &Record, stale: &Stale) -> Result<(), KindError> {
    stale.clear()?;
    let what = format!("SysV semaphore set {}", rec.id);
    let (key, n) = (rec.perm.key, rec.values.len() as libc::c_int);
    let mode = (rec.perm.mode & 0o777) as libc::c_int;
    make_with_id(Kind::Sem, rec.id, &rec.perm, || {
        // SAFETY: plain semget.
        ok(unsafe { libc::semget(key, n, libc::IPC_CREAT | libc::IPC_EXCL | mode) })
    })?;
    let mut values = rec.values.clone();
    // SAFETY: SETALL reads one value per semaphore of the set.
    ok(unsafe { libc::semctl(rec.id, 0, libc::SETALL, values.as_mut_ptr()) })
        .map_err(KindError::recreate(what.clone()))?;
    let mut ds = stat(rec.id).map_err(KindError::recreate(what.clone()))?;
    rec.perm.set(&mut ds.sem_perm);
    // SAFETY: IPC_SET reads ds.
    ok(unsafe { libc::semctl(rec.id, 0, libc::IPC_SET, &mut ds as *mut libc::semid_ds) })
        .map_err(KindError::recreate(what))?;
    Ok(())
}

pub fn describe(rec: &Record) -> String {
    format!(
        "SysV semaphores {} ({}, values {:?}, mode {:o}, owner {}:{})",
        rec.id,
        rec.perm.describe_key(),
        rec.values,
        rec.perm.mode & 0o777,
        rec.perm.uid,
        rec.perm.gid
    )
}
