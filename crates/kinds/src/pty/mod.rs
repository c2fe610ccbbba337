//! Pseudo-terminal pairs (`/dev/ptmx` masters and their `/dev/pts/N` slaves) whose master a
//! checkpointed process holds: tmux, screen, `script`, expect-like programs.
//!
//! The master's record carries the whole pair: its index (the pair comes back as the same
//! `/dev/pts/N`, since programs remember their ttyname), the slave's termios (`TCGETS2`, so a
//! custom speed is kept), window size, packet mode and its pending notice, lock, exclusive
//! mode, the slave's owner and mode, and the bytes waiting in each direction ([`queues`]). A
//! slave's record is its index: at restore it is opened again once its pair is made.
//!
//! A slave whose master is outside the checkpoint (the user's own terminal) is not this kind's:
//! ckptd turns its record back into plain stdio or a terminal reopened by path (see
//! `coordinatord/src/dump/pty.rs`).
//!
//! Session, controlling terminal and foreground group belong to the process tree and are not
//! recorded here; [`slave_index`] tells the tree which records are the slave of a given
//! `/dev/pts/N`.

mod ioctl;
pub mod queues;

use crate::{KindError, Source};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::sync::Mutex;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Record {
    /// N of `/dev/pts/N`.
    pub index: u32,
    /// The slave's path (`/dev/pts/N`).
    pub slave: String,
    /// The access mode the description was opened with (`O_RDONLY`, `O_WRONLY`, `O_RDWR`).
    pub access: i32,
    pub end: End,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum End {
    Master(Box<Pair>),
    Slave,
}

/// Everything about a pair that its master's record carries.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Pair {
    /// The multiplexer the master was opened from (`/dev/ptmx`).
    pub ptmx: String,
    pub termios: Termios,
    /// Rows, columns, x and y pixels.
    pub winsize: [u16; 4],
    pub packet: bool,
    /// The packet-mode notice (`TIOCPKT_FLUSHREAD`…) the master had not read yet.
    pub packet_status: u8,
    /// `TIOCSPTLCK`: the slave cannot be opened (until `unlockpt`).
    pub locked: bool,
    /// `TIOCEXCL` on the slave.
    pub exclusive: bool,
    pub uid: u32,
    pub gid: u32,
    /// The slave's permission bits.
    pub mode: u32,
    /// Written to the slave, not yet read from the master.
    pub to_master: Vec<u8>,
    /// Typed into the master, not yet read from the slave.
    pub to_slave: Input,
}

/// The slave's termios as `TCGETS2` gives it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Termios {
    pub iflag: u32,
    pub oflag: u32,
    pub cflag: u32,
    pub lflag: u32,
    pub line: u8,
    pub cc: Vec<u8>,
    pub ispeed: u32,
    pub ospeed: u32,
}

/// Input the slave's reader has not read yet, as its line discipline holds it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Input {
    /// Complete lines (canonical mode), each as one read returns it.
    pub lines: Vec<Line>,
    /// The rest: the line being typed (canonical mode), or every byte (non-canonical).
    pub pending: Vec<u8>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Line {
    /// With its end character ('\n', `VEOL`, `VEOL2`), unless it was ended by EOF.
    pub bytes: Vec<u8>,
    pub eof: bool,
}

impl Input {
    fn len(&self) -> usize {
        self.lines.iter().map(|l| l.bytes.len()).sum::<usize>() + self.pending.len()
    }
}

impl Termios {
    fn from_raw(t: &libc::termios2) -> Self {
        Termios {
            iflag: t.c_iflag,
            oflag: t.c_oflag,
            cflag: t.c_cflag,
            lflag: t.c_lflag,
            line: t.c_line,
            cc: t.c_cc.to_vec(),
            ispeed: t.c_ispeed,
            ospeed: t.c_ospeed,
        }
    }
    fn to_raw(&self) -> libc::termios2 {
        // SAFETY: termios2 is plain data; zero is a valid value.
        let mut t: libc::termios2 = unsafe { std::mem::zeroed() };
        t.c_iflag = self.iflag;
        t.c_oflag = self.oflag;
        t.c_cflag = self.cflag;
        t.c_lflag = self.lflag;
        t.c_line = self.line;
        let n = t.c_cc.len().min(self.cc.len());
        t.c_cc[..n].copy_from_slice(&self.cc[..n]);
        t.c_ispeed = self.ispeed;
        t.c_ospeed = self.ospeed;
        t
    }
}

/// Major numbers of Unix98 pty slaves.
const SLAVE_MAJORS: std::ops::RangeInclusive<u32> = 136..=143;

/// The index of the pty slave with device number `rdev` (`tty_nr` of /proc/PID/stat is one),
/// or None for any other device.
pub fn pts_index(rdev: u64) -> Option<u32> {
    let (major, minor) = (libc::major(rdev), libc::minor(rdev));
    SLAVE_MAJORS
        .contains(&major)
        .then(|| (major - SLAVE_MAJORS.start()) * 256 + minor)
}

fn is_master(rdev: u64) -> bool {
    libc::major(rdev) == 5 && libc::minor(rdev) == 2
}

/// Whether the fd is a pty master or slave.
pub fn claims(src: &Source) -> bool {
    claims_meta(src.meta)
}

/// Whether a file with this `stat` is a pty master or slave.
pub fn claims_meta(meta: &std::fs::Metadata) -> bool {
    meta.file_type().is_char_device() && (is_master(meta.rdev()) || pts_index(meta.rdev()).is_some())
}

/// The pty index of the record (either end).
pub fn index(rec: &Record) -> u32 {
    rec.index
}

/// `Some(N)` if the record is a slave of `/dev/pts/N`: the fd a session leader makes its
/// controlling terminal (`TIOCSCTTY`) when its terminal was that pty.
pub fn slave_index(rec: &Record) -> Option<u32> {
    matches!(rec.end, End::Slave).then_some(rec.index)
}

/// `Some(N)` if the record is the master of `/dev/pts/N`.
pub fn master_index(rec: &Record) -> Option<u32> {
    matches!(rec.end, End::Master(_)).then_some(rec.index)
}

/// The pair's state, for the pair whose master this record is.
pub fn pair(rec: &Record) -> Option<&Pair> {
    match &rec.end {
        End::Master(p) => Some(p),
        End::Slave => None,
    }
}

pub fn capture(src: &Source) -> Result<Record, KindError> {
    let access = src.flags & libc::O_ACCMODE;
    if let Some(index) = pts_index(src.meta.rdev()) {
        return Ok(Record {
            index,
            slave: src.link.to_string(),
            access,
            end: End::Slave,
        });
    }
    let m = src
        .file()
        .map_err(KindError::read(format!("pty master fd {}", src.fd)))?;
    let index = ioctl::get_int(m, libc::TIOCGPTN)
        .map_err(KindError::read(format!("the index of pty master fd {}", src.fd)))? as u32;
    let slave = slave_path(src.link, index);
    // Two processes holding one master are read at the same time; reading takes the bytes
    // out and puts them back, which must not interleave.
    let _one = READING.lock().unwrap_or_else(|e| e.into_inner());
    let pair = read_pair(m).map_err(|e| match e {
        Failure::Io(what, source) => KindError::Read {
            what: format!("{what} of pseudo-terminal {slave} (master fd {})", src.fd),
            source,
        },
        Failure::Refused(why) => KindError::Refused(format!("pseudo-terminal {slave} (master fd {}): {why}", src.fd)),
    })?;
    Ok(Record {
        index,
        slave,
        access,
        end: End::Master(Box::new(Pair {
            ptmx: src.link.to_string(),
            ..pair
        })),
    })
}

static READING: Mutex<()> = Mutex::new(());

/// The default line discipline (linux/tty.h) and the capability `TIOCSTI` needs
/// (linux/capability.h); `libc` has neither.
const N_TTY: i32 = 0;
const CAP_SYS_ADMIN: u32 = 21;

enum Failure {
    Io(&'static str, std::io::Error),
    Refused(String),
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> Failure {
    move |e| Failure::Io(what, e)
}

/// The slave of the master opened as `ptmx`: `/dev/pts/N` beside `/dev/ptmx`, or in the
/// same devpts folder as `…/pts/ptmx`.
fn slave_path(ptmx: &str, index: u32) -> String {
    match ptmx.strip_suffix("/ptmx") {
        Some(dir) if dir.ends_with("/pts") => format!("{dir}/{index}"),
        Some(dir) => format!("{dir}/pts/{index}"),
        None => format!("/dev/pts/{index}"),
    }
}

fn read_pair(m: RawFd) -> Result<Pair, Failure> {
    if ioctl::get_int(m, libc::TIOCGETD).map_err(io("the line discipline"))? != N_TTY {
        return Err(Failure::Refused(
            "its master has a line discipline other than N_TTY".into(),
        ));
    }
    let locked = ioctl::get_int(m, libc::TIOCGPTLCK).map_err(io("the lock"))? != 0;
    let packet = ioctl::get_int(m, libc::TIOCGPKT).map_err(io("packet mode"))? != 0;
    let raw = ioctl::get_termios(m).map_err(io("the termios"))?;
    let ws = ioctl::get_winsize(m).map_err(io("the window size"))?;
    if locked {
        ioctl::set_int(m, libc::TIOCSPTLCK, 0).map_err(io("unlocking"))?;
    }
    let opened = ioctl::open_peer(m, libc::O_RDWR | libc::O_NOCTTY | libc::O_NONBLOCK | libc::O_CLOEXEC);
    let read = opened
        .map_err(io("opening the slave"))
        .and_then(|s| read_through(m, s.as_raw_fd(), &raw, packet));
    if locked {
        ioctl::set_int(m, libc::TIOCSPTLCK, 1).map_err(io("locking again"))?;
    }
    let (exclusive, st, packet_status, to_master, to_slave) = read?;
    Ok(Pair {
        ptmx: String::new(),
        termios: Termios::from_raw(&raw),
        winsize: [ws.ws_row, ws.ws_col, ws.ws_xpixel, ws.ws_ypixel],
        packet,
        packet_status,
        locked,
        exclusive,
        uid: st.st_uid,
        gid: st.st_gid,
        mode: st.st_mode & 0o7777,
        to_master,
        to_slave,
    })
}

type Read = (bool, libc::stat, u8, Vec<u8>, Input);

/// Reads the slave's side of the pair through `s` (our own slave description) and the queues,
/// putting the queues back at once.
fn read_through(m: RawFd, s: RawFd, t: &libc::termios2, packet: bool) -> Result<Read, Failure> {
    if ioctl::get_int(s, libc::TIOCGETD).map_err(io("the line discipline"))? != N_TTY {
        return Err(Failure::Refused(
            "its slave has a line discipline other than N_TTY".into(),
        ));
    }
    let exclusive = ioctl::get_int(s, libc::TIOCGEXCL).map_err(io("exclusive mode"))? != 0;
    // SAFETY: fstat fills a stat for an fd we hold.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::fstat(s, &mut st) } < 0 {
        return Err(Failure::Io("the owner", std::io::Error::last_os_error()));
    }
    if !root() {
        // Without CAP_SYS_ADMIN the bytes could be read but not put back unchanged: refuse
        // when any is waiting (a line being typed in canonical mode is not seen, and stays).
        let waiting = ioctl::get_int(m, libc::FIONREAD).unwrap_or(1) + ioctl::get_int(s, libc::FIONREAD).unwrap_or(1);
        if waiting > 0 {
            return Err(Failure::Refused(
                "bytes are waiting in it, which only a ckptd with CAP_SYS_ADMIN can put back unchanged (TIOCSTI); run ckptd as root".into(),
            ));
        }
        return Ok((exclusive, st, 0, Vec::new(), Input::default()));
    }
    let mut status = 0u8;
    if packet {
        status = take_status(m).map_err(io("the packet-mode notice"))?;
        // Off while the queues are read and put back: termios changes would raise notices.
        ioctl::set_int(m, libc::TIOCPKT, 0).map_err(io("packet mode"))?;
    }
    // The slave's side first: reading it runs the line discipline on any input still in
    // flight, whose echo then joins the master's side.
    let to_slave = queues::take_to_slave(s, t).map_err(io("the bytes for the slave"))?;
    let to_master = queues::take_to_master(m).map_err(io("the bytes for the master"))?;
    let lost =
        queues::put(m, s, t, packet.then_some(status), &to_master, &to_slave).map_err(io("putting back the bytes"))?;
    if lost != 0 {
        tracing::warn!(status, lost, "pty packet-mode notice bits that cannot be raised again");
    }
    let too_many = [to_master.len(), to_slave.len()]
        .into_iter()
        .any(|n| n > queues::MAX_QUEUED);
    if too_many {
        return Err(Failure::Refused(format!(
            "more bytes are waiting in it than its line discipline holds ({} for the master, {} for the slave; at most {})",
            to_master.len(),
            to_slave.len(),
            queues::MAX_QUEUED
        )));
    }
    Ok((exclusive, st, status, to_master, to_slave))
}

/// Takes the packet-mode notice of master `m` (0 if none): a one-byte read returns the
/// notice alone, or only the data marker when there is none (no data is taken then).
fn take_status(m: RawFd) -> std::io::Result<u8> {
    let mut pfd = libc::pollfd {
        fd: m,
        events: libc::POLLPRI,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no wait.
    let r = unsafe { libc::poll(&mut pfd, 1, 0) };
    if r <= 0 || pfd.revents & libc::POLLPRI == 0 {
        return Ok(0);
    }
    let flags = ioctl::get_fl(m)?;
    ioctl::set_fl(m, flags | libc::O_NONBLOCK)?;
    let mut b = [0u8; 1];
    let got = ioctl::read_some(m, &mut b);
    ioctl::set_fl(m, flags)?;
    Ok(match got? {
        Some(1) => b[0],
        _ => 0,
    })
}

/// Whether this process may use `TIOCSTI` on any terminal (CAP_SYS_ADMIN).
fn root() -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_SYS_ADMIN) != 0)
}

pub fn describe(rec: &Record) -> String {
    let Some(p) = pair(rec) else {
        return format!("pty slave {}", rec.slave);
    };
    let mut extra = Vec::new();
    let canon = p.termios.lflag & libc::ICANON != 0;
    extra.push(if canon { "canonical" } else { "non-canonical" }.to_string());
    extra.push(format!("{}x{}", p.winsize[1], p.winsize[0]));
    if p.packet {
        extra.push("packet mode".into());
    }
    if p.locked {
        extra.push("locked".into());
    }
    if p.exclusive {
        extra.push("exclusive".into());
    }
    extra.push(format!(
        "{} bytes for the master, {} for the slave",
        p.to_master.len(),
        p.to_slave.len()
    ));
    format!("pty master of {} ({})", rec.slave, extra.join(", "))
}

/// The pairs made so far in one restore, by index.
#[derive(Default)]
pub struct Made {
    pairs: HashMap<u32, Made1>,
}

struct Made1 {
    master: OwnedFd,
    slave: String,
    state: Option<Pair>,
}

pub fn recreate(rec: &Record, made: &mut Made) -> Result<OwnedFd, KindError> {
    let what = || format!("pseudo-terminal {}", rec.slave);
    let one = match made.pairs.entry(rec.index) {
        std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
        std::collections::hash_map::Entry::Vacant(e) => {
            let ptmx = pair(rec).map(|p| p.ptmx.clone()).unwrap_or_else(|| ptmx_of(&rec.slave));
            let master = open_index(&ptmx, rec.index, rec.access)?;
            // Unlocked while the holders' slave descriptions are opened; locked again at the end.
            ioctl::set_int(master.as_raw_fd(), libc::TIOCSPTLCK, 0).map_err(KindError::recreate(what()))?;
            e.insert(Made1 {
                master,
                slave: rec.slave.clone(),
                state: None,
            })
        }
    };
    match &rec.end {
        End::Master(p) => {
            one.state = Some((**p).clone());
            one.master.try_clone().map_err(KindError::recreate(what()))
        }
        End::Slave => {
            open_slave(&rec.slave, rec.access | libc::O_NOCTTY | libc::O_CLOEXEC).map_err(KindError::recreate(what()))
        }
    }
}

fn ptmx_of(slave: &str) -> String {
    match slave.rsplit_once('/') {
        Some(("/dev/pts", _)) | None => "/dev/ptmx".to_string(),
        Some((dir, _)) => format!("{dir}/ptmx"),
    }
}

fn open_slave(path: &str, flags: i32) -> std::io::Result<OwnedFd> {
    let c = std::ffi::CString::new(path).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: a NUL-terminated path.
    let fd = unsafe { libc::open(c.as_ptr(), flags) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the fd was just opened and is ours.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens `ptmx` until the kernel hands out pair `index` (it gives the lowest free one), then
/// closes the others.
fn open_index(ptmx: &str, index: u32, access: i32) -> Result<OwnedFd, KindError> {
    let what = || format!("pseudo-terminal number {index} (from {ptmx})");
    let mut others = Vec::new();
    loop {
        let m = open_slave(ptmx, access | libc::O_NOCTTY | libc::O_CLOEXEC).map_err(KindError::recreate(what()))?;
        let got = ioctl::get_int(m.as_raw_fd(), libc::TIOCGPTN).map_err(KindError::recreate(what()))? as u32;
        match got.cmp(&index) {
            std::cmp::Ordering::Equal => return Ok(m),
            std::cmp::Ordering::Less => others.push(m),
            std::cmp::Ordering::Greater => {
                return Err(KindError::Refused(format!(
                "pseudo-terminal {} was taken by another program while the restore ran; stop it, then restore again",
                slave_path(ptmx, index)
            )))
            }
        }
    }
}

impl Made {
    /// Puts every pair's state in place, once every holder's description is open.
    pub fn finish(&mut self) -> Result<(), KindError> {
        for (_, one) in self.pairs.drain() {
            let what = || format!("pseudo-terminal {}", one.slave);
            let Some(p) = &one.state else {
                return Err(KindError::Refused(format!(
                    "{}: a slave is in the checkpoint without its master",
                    what()
                )));
            };
            let m = one.master.as_raw_fd();
            let s = ioctl::open_peer(m, libc::O_RDWR | libc::O_NOCTTY | libc::O_NONBLOCK | libc::O_CLOEXEC)
                .map_err(KindError::recreate(what()))?;
            let s = s.as_raw_fd();
            let t = p.termios.to_raw();
            let status = p.packet.then_some(p.packet_status);
            queues::put(m, s, &t, status, &p.to_master, &p.to_slave).map_err(KindError::recreate(what()))?;
            let [ws_row, ws_col, ws_xpixel, ws_ypixel] = p.winsize;
            let ws = libc::winsize {
                ws_row,
                ws_col,
                ws_xpixel,
                ws_ypixel,
            };
            ioctl::set_winsize(m, &ws).map_err(KindError::recreate(what()))?;
            set_owner(s, p).map_err(KindError::recreate(format!("the owner and mode of {}", one.slave)))?;
            if p.exclusive {
                ioctl::arg(s, libc::TIOCEXCL, 0).map_err(KindError::recreate(what()))?;
            }
            if p.locked {
                ioctl::set_int(m, libc::TIOCSPTLCK, 1).map_err(KindError::recreate(what()))?;
            }
        }
        Ok(())
    }
}

fn set_owner(s: RawFd, p: &Pair) -> std::io::Result<()> {
    // SAFETY: fstat fills a stat for an fd we hold.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::fstat(s, &mut st) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fchown/fchmod on the slave's devpts node, through an fd we hold.
    if (st.st_uid, st.st_gid) != (p.uid, p.gid) && unsafe { libc::fchown(s, p.uid, p.gid) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: as above.
    if st.st_mode & 0o7777 != p.mode && unsafe { libc::fchmod(s, p.mode) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slave_paths_and_indexes() {
        assert_eq!(slave_path("/dev/ptmx", 7), "/dev/pts/7");
        assert_eq!(slave_path("/dev/pts/ptmx", 7), "/dev/pts/7");
        assert_eq!(ptmx_of("/dev/pts/3"), "/dev/ptmx");
        assert_eq!(pts_index(libc::makedev(136, 5)), Some(5));
        assert_eq!(pts_index(libc::makedev(137, 1)), Some(257));
        assert_eq!(pts_index(libc::makedev(4, 1)), None);
    }
}
