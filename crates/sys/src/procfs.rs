//! Parsers for the /proc files the checkpointer reads.

use std::collections::HashMap;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: unexpected content: {line}")]
    Parse { path: PathBuf, line: String },
}

fn read(path: PathBuf) -> Result<String, ProcError> {
    std::fs::read_to_string(&path).map_err(|source| ProcError::Io { path, source })
}

fn parse_err(path: PathBuf, line: &str) -> ProcError {
    ProcError::Parse {
        path,
        line: line.chars().take(200).collect(),
    }
}

/// One line of /proc/PID/maps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapEntry {
    pub start: u64,
    pub end: u64,
    pub read: bool,
    pub write: bool,
    pub exec: bool,
    pub shared: bool,
    pub offset: u64,
    pub dev_major: u32,
    pub dev_minor: u32,
    pub inode: u64,
    pub path: String,
}

impl MapEntry {
    pub fn len(&self) -> u64 {
        self.end - self.start
    }
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }
}

pub fn parse_maps_line(line: &str) -> Option<MapEntry> {
    let mut it = line.splitn(6, ' ');
    let range = it.next()?;
    let perms = it.next()?.as_bytes();
    let offset = u64::from_str_radix(it.next()?, 16).ok()?;
    let dev = it.next()?;
    let inode = it.next()?.parse().ok()?;
    let path = it.next().unwrap_or("").trim_start().to_string();
    let (s, e) = range.split_once('-')?;
    let (maj, min) = dev.split_once(':')?;
    if perms.len() < 4 {
        return None;
    }
    Some(MapEntry {
        start: u64::from_str_radix(s, 16).ok()?,
        end: u64::from_str_radix(e, 16).ok()?,
        read: perms[0] == b'r',
        write: perms[1] == b'w',
        exec: perms[2] == b'x',
        shared: perms[3] == b's',
        offset,
        dev_major: u32::from_str_radix(maj, 16).ok()?,
        dev_minor: u32::from_str_radix(min, 16).ok()?,
        inode,
        path,
    })
}

pub fn maps(pid: i32) -> Result<Vec<MapEntry>, ProcError> {
    let path = PathBuf::from(format!("/proc/{pid}/maps"));
    let text = read(path.clone())?;
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| parse_maps_line(l).ok_or_else(|| parse_err(path.clone(), l)))
        .collect()
}

/// The address-space fields of /proc/PID/stat (see proc(5)).
#[derive(Debug, Clone, Copy, Default)]
pub struct StatMm {
    pub start_code: u64,
    pub end_code: u64,
    pub start_stack: u64,
    pub start_data: u64,
    pub end_data: u64,
    pub start_brk: u64,
    pub arg_start: u64,
    pub arg_end: u64,
    pub env_start: u64,
    pub env_end: u64,
    pub num_threads: u64,
}

/// The fields of /proc/PID/stat from field 3 (state) on, and a reader of field `n` (numbered
/// as in proc(5)) as a number.
struct Stat {
    path: PathBuf,
    text: String,
}

impl Stat {
    fn read(pid: i32) -> Result<Stat, ProcError> {
        let path = PathBuf::from(format!("/proc/{pid}/stat"));
        let text = read(path.clone())?;
        Ok(Stat { path, text })
    }

    /// Fields from 3 (state) on: the command name may hold spaces and parentheses, fields
    /// resume after the last ')'.
    fn fields(&self) -> Result<Vec<&str>, ProcError> {
        let rest = self
            .text
            .rsplit_once(')')
            .map(|(_, r)| r)
            .ok_or_else(|| parse_err(self.path.clone(), &self.text))?;
        Ok(rest.split_whitespace().collect())
    }

    fn num(&self, f: &[&str], n: usize) -> Result<i64, ProcError> {
        f.get(n - 3)
            .and_then(|s| s.parse::<i64>().ok())
            .ok_or_else(|| parse_err(self.path.clone(), &self.text))
    }
}

pub fn stat_mm(pid: i32) -> Result<StatMm, ProcError> {
    let st = Stat::read(pid)?;
    let f = st.fields()?;
    let field = |n: usize| st.num(&f, n).map(|v| v as u64);
    Ok(StatMm {
        num_threads: field(20)?,
        start_code: field(26)?,
        end_code: field(27)?,
        start_stack: field(28)?,
        start_data: field(45)?,
        end_data: field(46)?,
        start_brk: field(47)?,
        arg_start: field(48)?,
        arg_end: field(49)?,
        env_start: field(50)?,
        env_end: field(51)?,
    })
}

/// A process's place in the tree, from /proc/PID/stat (see proc(5)).
#[derive(Debug, Clone, Default)]
pub struct StatTree {
    pub state: char,
    pub ppid: i32,
    pub pgrp: i32,
    pub session: i32,
    pub tty_nr: u64,
    pub tpgid: i32,
    pub exit_signal: i32,
    /// For a zombie, its status as `waitpid` reports it.
    pub exit_code: i32,
}

pub fn stat_tree(pid: i32) -> Result<StatTree, ProcError> {
    let st = Stat::read(pid)?;
    let f = st.fields()?;
    let num = |n: usize| st.num(&f, n);
    Ok(StatTree {
        state: f.first().and_then(|s| s.chars().next()).unwrap_or('?'),
        ppid: num(4)? as i32,
        pgrp: num(5)? as i32,
        session: num(6)? as i32,
        tty_nr: num(7)? as u64,
        tpgid: num(8)? as i32,
        exit_signal: num(38)? as i32,
        exit_code: num(52)? as i32,
    })
}

/// The children of every thread of `pid` (zombies included), sorted.
pub fn children(pid: i32) -> Result<Vec<i32>, ProcError> {
    let mut all = Vec::new();
    for tid in list_numeric(&format!("/proc/{pid}/task"))? {
        let path = PathBuf::from(format!("/proc/{pid}/task/{tid}/children"));
        // A thread that ended since the listing has no children left to list.
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        all.extend(text.split_whitespace().filter_map(|s| s.parse::<i32>().ok()));
    }
    all.sort_unstable();
    all.dedup();
    Ok(all)
}

/// The parts of /proc/PID/status the checkpointer needs.
#[derive(Debug, Clone, Default)]
pub struct Status {
    /// The thread's name (comm).
    pub name: String,
    pub umask: u32,
    pub uid: [u32; 3],
    pub gid: [u32; 3],
    pub groups: Vec<u32>,
    pub shd_pnd: u64,
    pub sig_pnd: u64,
    /// Signals the thread blocks.
    pub sig_blk: u64,
    pub state: char,
    /// Threads of the process.
    pub threads: u32,
    /// Capability sets (`CapInh`, `CapPrm`, `CapEff`, `CapBnd`, `CapAmb`), bit n = capability n.
    pub cap_inh: u64,
    pub cap_prm: u64,
    pub cap_eff: u64,
    pub cap_bnd: u64,
    pub cap_amb: u64,
    /// Seccomp mode: 0 none, 1 strict, 2 filters.
    pub seccomp: u32,
    /// How many seccomp filters the thread runs under (`Seccomp_filters`).
    pub seccomp_filters: u32,
}

pub fn status(pid: i32, tid: Option<i32>) -> Result<Status, ProcError> {
    let path = match tid {
        Some(t) => PathBuf::from(format!("/proc/{pid}/task/{t}/status")),
        None => PathBuf::from(format!("/proc/{pid}/status")),
    };
    let text = read(path.clone())?;
    let mut st = Status::default();
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else { continue };
        let v = v.trim();
        let ids = |v: &str| -> [u32; 3] {
            let n: Vec<u32> = v.split_whitespace().filter_map(|x| x.parse().ok()).collect();
            [
                n.first().copied().unwrap_or(0),
                n.get(1).copied().unwrap_or(0),
                n.get(2).copied().unwrap_or(0),
            ]
        };
        match k {
            "Name" => st.name = v.to_string(),
            "Umask" => st.umask = u32::from_str_radix(v, 8).unwrap_or(0o022),
            "Uid" => st.uid = ids(v),
            "Gid" => st.gid = ids(v),
            "Groups" => st.groups = v.split_whitespace().filter_map(|x| x.parse().ok()).collect(),
            "ShdPnd" => st.shd_pnd = u64::from_str_radix(v, 16).unwrap_or(0),
            "SigPnd" => st.sig_pnd = u64::from_str_radix(v, 16).unwrap_or(0),
            "SigBlk" => st.sig_blk = u64::from_str_radix(v, 16).unwrap_or(0),
            "State" => st.state = v.chars().next().unwrap_or('?'),
            "Threads" => st.threads = v.parse().unwrap_or(0),
            "CapInh" => st.cap_inh = u64::from_str_radix(v, 16).unwrap_or(0),
            "CapPrm" => st.cap_prm = u64::from_str_radix(v, 16).unwrap_or(0),
            "CapEff" => st.cap_eff = u64::from_str_radix(v, 16).unwrap_or(0),
            "CapBnd" => st.cap_bnd = u64::from_str_radix(v, 16).unwrap_or(0),
            "CapAmb" => st.cap_amb = u64::from_str_radix(v, 16).unwrap_or(0),
            "Seccomp" => st.seccomp = v.parse().unwrap_or(0),
            "Seccomp_filters" => st.seccomp_filters = v.parse().unwrap_or(0),
            _ => {}
        }
    }
    Ok(st)
}

/// /proc/PID/fdinfo/FD: position and `F_GETFL` flags (octal in the file).
#[derive(Debug, Clone, Copy, Default)]
pub struct FdInfo {
    pub pos: u64,
    pub flags: i32,
}

pub fn fdinfo(pid: i32, fd: i32) -> Result<FdInfo, ProcError> {
    let path = PathBuf::from(format!("/proc/{pid}/fdinfo/{fd}"));
    let text = read(path.clone())?;
    let mut info = FdInfo::default();
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("pos:") {
            info.pos = v.trim().parse().map_err(|_| parse_err(path.clone(), line))?;
        } else if let Some(v) = line.strip_prefix("flags:") {
            info.flags = i32::from_str_radix(v.trim(), 8).map_err(|_| parse_err(path.clone(), line))?;
        }
    }
    Ok(info)
}

/// Numeric entries of a /proc directory (tasks, fds), sorted.
pub fn list_numeric(dir: &str) -> Result<Vec<i32>, ProcError> {
    let rd = std::fs::read_dir(dir).map_err(|source| ProcError::Io {
        path: dir.into(),
        source,
    })?;
    let mut v: Vec<i32> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
        .collect();
    v.sort_unstable();
    Ok(v)
}

pub fn readlink(path: &str) -> Result<String, ProcError> {
    std::fs::read_link(path)
        .map(|p| p.to_string_lossy().into_owned())
        .map_err(|source| ProcError::Io {
            path: path.into(),
            source,
        })
}

/// Ranges registered for userfaultfd write-protect ("uw" in the VmFlags of /proc/PID/smaps).
pub fn uffd_wp_ranges(pid: i32) -> Result<Vec<(u64, u64)>, ProcError> {
    let path = PathBuf::from(format!("/proc/{pid}/smaps"));
    let text = read(path)?;
    let mut out = Vec::new();
    let mut cur: Option<(u64, u64)> = None;
    for line in text.lines() {
        if let Some(flags) = line.strip_prefix("VmFlags:") {
            if let Some(r) = cur.take() {
                if flags.split_whitespace().any(|f| f == "uw") {
                    out.push(r);
                }
            }
        } else if let Some(e) = parse_maps_line(line) {
            cur = Some((e.start, e.end));
        }
    }
    Ok(out)
}

/// The VmFlags of each mapping of `pid` that `want` picks, by start address ("mw": may be
/// made writable, "me": executable, …).
pub fn vm_flags(pid: i32, want: impl Fn(&MapEntry) -> bool) -> Result<HashMap<u64, Vec<String>>, ProcError> {
    let text = read(PathBuf::from(format!("/proc/{pid}/smaps")))?;
    let mut out = HashMap::new();
    let mut cur: Option<u64> = None;
    for line in text.lines() {
        if let Some(flags) = line.strip_prefix("VmFlags:") {
            if let Some(start) = cur.take() {
                out.insert(start, flags.split_whitespace().map(str::to_string).collect());
            }
        } else if let Some(e) = parse_maps_line(line) {
            cur = want(&e).then_some(e.start);
        }
    }
    Ok(out)
}

/// The parts of the shared mapping [start, end) of `pid` (at `offset` in its file) whose file
/// holds data, page-aligned: SEEK_DATA and SEEK_HOLE on /proc/PID/map_files, which a
/// checkpointer may open. None when they cannot be asked (the caller then reads it all). A
/// shared memory object is often far bigger than what was ever written to it, and reading a
/// hole of one would allocate it.
pub fn mapped_file_data(pid: i32, start: u64, end: u64, offset: u64) -> Option<Vec<(u64, u64)>> {
    use std::os::fd::AsRawFd;
    const PAGE: u64 = 4096;
    let f = std::fs::File::open(format!("/proc/{pid}/map_files/{start:x}-{end:x}")).ok()?;
    let seek = |at: u64, whence: i32| -> Option<Option<u64>> {
        // SAFETY: lseek on a descriptor we own.
        let r = unsafe { libc::lseek(f.as_raw_fd(), at as libc::off_t, whence) };
        if r >= 0 {
            return Some(Some(r as u64));
        }
        // ENXIO: no data from `at` on (or `at` is past the end of the file).
        (std::io::Error::last_os_error().raw_os_error() == Some(libc::ENXIO)).then_some(None)
    };
    let last = offset + (end - start);
    let mut out: Vec<(u64, u64)> = Vec::new();
    let mut at = offset;
    while at < last {
        let Some(data) = seek(at, libc::SEEK_DATA)?.filter(|&d| d < last) else {
            break;
        };
        let hole = seek(data, libc::SEEK_HOLE)?.unwrap_or(last).clamp(data + 1, last);
        let (s, e) = (data / PAGE * PAGE, hole.div_ceil(PAGE) * PAGE);
        let (s, e) = (start + s.max(offset) - offset, start + e.min(last) - offset);
        match out.last_mut() {
            Some(l) if l.1 >= s => l.1 = l.1.max(e),
            _ => out.push((s, e)),
        }
        at = hole;
    }
    Some(out)
}

/// NUL-separated /proc/PID/cmdline.
pub fn cmdline(pid: i32) -> Result<Vec<String>, ProcError> {
    let path = PathBuf::from(format!("/proc/{pid}/cmdline"));
    let bytes = std::fs::read(&path).map_err(|source| ProcError::Io { path, source })?;
    Ok(bytes
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect())
}

/// True when `pid` names a live (not zombie) process.
/// When process `pid` started (field 22 of /proc/PID/stat, in clock ticks since boot), if it
/// exists: with the pid, it tells a process from a later one that reused its pid.
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

pub fn alive(pid: i32) -> bool {
    match status(pid, None) {
        // A zombie main thread with threads still running (pthread_exit in main) is a live
        // process.
        Ok(st) => (st.state != 'Z' && st.state != 'X') || st.threads > 1,
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A shared mapping of 1 GiB with two pages written: only those are data.
    #[test]
    fn shared_mapping_data_is_found_by_its_file() {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::FileExt;
        let len = 1u64 << 30;
        // SAFETY: memfd_create with a literal name; the fd is owned by the File below.
        let fd = unsafe { libc::memfd_create(c"ckpt-test".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: just created, nothing else owns it.
        let f = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        f.set_len(len).unwrap();
        f.write_all_at(b"x", 4096 * 3 + 5).unwrap();
        f.write_all_at(b"y", (512 << 20) + 4096 * 2).unwrap();
        // SAFETY: a fresh shared mapping of the memfd, unmapped below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len as usize,
                libc::PROT_READ,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        let start = p as u64;
        let found = mapped_file_data(std::process::id() as i32, start, start + len, 0);
        // SAFETY: the mapping made above.
        unsafe { libc::munmap(p, len as usize) };
        // SAFETY: geteuid has no preconditions.
        let Some(found) = found else {
            assert_ne!(unsafe { libc::geteuid() }, 0, "root may open /proc/PID/map_files");
            return;
        };
        let page = |n: u64| (start + n * 4096, start + (n + 1) * 4096);
        assert_eq!(found, vec![page(3), page((512 << 8) + 2)]);
    }

    #[test]
    fn maps_line() {
        let e = parse_maps_line("7f00aa000000-7f00aa021000 rw-p 00001000 fd:01 1234    /usr/lib/x (deleted)").unwrap();
        assert_eq!(e.start, 0x7f00aa000000);
        assert!(e.read && e.write && !e.exec && !e.shared);
        assert_eq!((e.dev_major, e.dev_minor, e.inode, e.offset), (0xfd, 1, 1234, 0x1000));
        assert_eq!(e.path, "/usr/lib/x (deleted)");
        let v = parse_maps_line("ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]")
            .unwrap();
        assert_eq!(v.path, "[vsyscall]");
        let a = parse_maps_line("55d0-55e0 rw-p 00000000 00:00 0").unwrap();
        assert_eq!(a.path, "");
    }

    #[test]
    fn self_files() {
        let me = std::process::id() as i32;
        assert!(!maps(me).unwrap().is_empty());
        let st = stat_mm(me).unwrap();
        assert!(st.num_threads >= 1 && st.arg_start < st.arg_end);
        assert!(status(me, None).unwrap().state != 'Z');
        assert!(fdinfo(me, 0).is_ok() || fdinfo(me, 1).is_ok() || fdinfo(me, 2).is_ok());
    }
}
