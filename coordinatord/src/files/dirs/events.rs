//! Reading the directory watch's events: each names a directory by handle and an entry by
//! name (two of each for a rename), and the entry's own handle (`FAN_REPORT_TARGET_FID`), so
//! that a restore can tell whether a name still holds the very file the event was about.

/// An entry of a directory: the directory's handle key (see [`crate::files::fid`]) and the
/// entry's name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Place {
    pub dir: Vec<u8>,
    pub name: Vec<u8>,
}

/// What a process did to a directory entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Create {
        at: Place,
        child: Vec<u8>,
        dir: bool,
    },
    Delete {
        at: Place,
        child: Vec<u8>,
        dir: bool,
    },
    Rename {
        from: Place,
        to: Place,
        child: Vec<u8>,
        dir: bool,
    },
}

pub use crate::files::fid::{parse, Event};

impl Event<'_> {
    /// What the event stands for (read only for the events of ckptd's processes: the file
    /// systems' other events are many).
    pub fn changes(&self) -> Vec<Change> {
        changes(self.mask, &Records::of(self.info))
    }
}

const OLD_DFID_NAME: u8 = libc::FAN_EVENT_INFO_TYPE_OLD_DFID_NAME;
const NEW_DFID_NAME: u8 = libc::FAN_EVENT_INFO_TYPE_NEW_DFID_NAME;
const DFID_NAME: u8 = libc::FAN_EVENT_INFO_TYPE_DFID_NAME;
const FID: u8 = libc::FAN_EVENT_INFO_TYPE_FID;

#[derive(Default)]
struct Records {
    at: Option<Place>,
    old: Option<Place>,
    new: Option<Place>,
    child: Option<Vec<u8>>,
}

impl Records {
    fn of(mut info: &[u8]) -> Self {
        let mut r = Records::default();
        // Each record: type, pad, length (u16), fsid (8), file_handle (u32 bytes, i32 type,
        // the handle), and for the name kinds the entry's name, NUL-terminated.
        while info.len() >= 4 {
            let ty = info[0];
            let len = (u16::from_ne_bytes([info[2], info[3]]) as usize).min(info.len());
            if len < 4 {
                break;
            }
            let rec = &info[..len];
            info = &info[len..];
            let Some((key, rest)) = handle(rec) else { continue };
            let name = || {
                let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
                Place {
                    dir: key.clone(),
                    name: rest[..end].to_vec(),
                }
            };
            match ty {
                DFID_NAME => r.at = Some(name()),
                OLD_DFID_NAME => r.old = Some(name()),
                NEW_DFID_NAME => r.new = Some(name()),
                FID => r.child = Some(key),
                _ => {}
            }
        }
        r
    }
}

/// A record's handle key, and what follows the handle.
fn handle(rec: &[u8]) -> Option<(Vec<u8>, &[u8])> {
    let fsid = rec.get(4..12)?;
    let bytes = u32::from_ne_bytes(rec.get(12..16)?.try_into().ok()?) as usize;
    let ty = i32::from_ne_bytes(rec.get(16..20)?.try_into().ok()?);
    let h = rec.get(20..20 + bytes)?;
    Some((crate::files::fid::key(fsid, ty, h), &rec[20 + bytes..]))
}

/// The changes one event stands for. Events the kernel merged (the same entry, file and
/// process: a file created and removed again before the event was read) carry several bits;
/// they happened in the order create, then delete.
fn changes(mask: u64, r: &Records) -> Vec<Change> {
    let mut out = Vec::new();
    let dir = mask & libc::FAN_ONDIR != 0;
    let Some(child) = r.child.clone() else {
        return out;
    };
    if mask & libc::FAN_RENAME != 0 {
        if let (Some(from), Some(to)) = (r.old.clone(), r.new.clone()) {
            out.push(Change::Rename { from, to, child, dir });
        }
        return out;
    }
    let Some(at) = r.at.clone() else { return out };
    if mask & libc::FAN_CREATE != 0 {
        out.push(Change::Create {
            at: at.clone(),
            child: child.clone(),
            dir,
        });
    }
    if mask & libc::FAN_DELETE != 0 {
        out.push(Change::Delete { at, child, dir });
    }
    out
}
