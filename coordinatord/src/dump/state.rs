//! Kernel state other than memory and fds: threads, signals, credentials, limits, layout.

use super::seccomp::Filtered;
use super::DumpError;
use ckpt_format::{Caps, Creds, Itimer, MmFields, ProcessImage, Rlimit, SigAction, ThreadImage};
use ckpt_proto::slots::ProcSlot;
use ckpt_proto::Registration;
use ckpt_sys::procfs;

/// What does not change while a program runs (short of an exec, which ends its registration),
/// read before it is parked.
#[derive(Clone)]
pub struct Fixed {
    exe: String,
    args: Vec<String>,
    auxv: Vec<u8>,
    personality: u64,
}

impl Fixed {
    pub fn read(pid: i32) -> Result<Fixed, DumpError> {
        let perr = |e| DumpError::Proc(e, pid);
        Ok(Fixed {
            exe: procfs::readlink(&format!("/proc/{pid}/exe")).map_err(perr)?,
            args: procfs::cmdline(pid).map_err(perr)?,
            auxv: std::fs::read(format!("/proc/{pid}/auxv")).map_err(|source| DumpError::Io {
                pid,
                what: "auxv".into(),
                source,
            })?,
            personality: std::fs::read_to_string(format!("/proc/{pid}/personality"))
                .ok()
                .and_then(|s| u64::from_str_radix(s.trim(), 16).ok())
                .unwrap_or(0),
        })
    }
}

/// The state of a parked process; `fixed` when it was read before the stop.
/// `status`: the text of /proc/PID/status, read once while parked.
/// With it, the threads that run under seccomp filters, whose programs are still to be read
/// (see [`super::seccomp::read`]).
pub fn dump_state(
    reg: &Registration,
    slots: &ProcSlot,
    fixed: Option<Fixed>,
    status: &str,
) -> Result<(ProcessImage, Vec<Filtered>), DumpError> {
    let pid = reg.pid;
    let perr = |e| DumpError::Proc(e, pid);
    let fixed = match fixed {
        Some(f) => f,
        None => Fixed::read(pid)?,
    };
    let tasks = procfs::list_numeric(&format!("/proc/{pid}/task")).map_err(perr)?;
    let n = slots.nthreads as usize;
    if n != tasks.len() || n > slots.threads.len() {
        return Err(DumpError::ThreadMismatch {
            pid,
            parked: slots.nthreads,
            listed: tasks.len(),
        });
    }
    let mut threads = Vec::with_capacity(n);
    let mut filtered = Vec::new();
    // The main thread's status is the process's (credentials, umask, shared signals).
    let mut main_status = None;
    for t in &slots.threads[..n] {
        let st = procfs::status(pid, Some(t.tid)).map_err(perr)?;
        if st.seccomp == 2 {
            filtered.push(Filtered {
                tid: t.tid,
                count: st.seccomp_filters,
            });
        }
        threads.push(ThreadImage {
            tid: t.tid,
            comm: st.name.clone(),
            uc_addr: t.uc_addr,
            fs_base: t.fs_base,
            gs_base: t.gs_base,
            robust_head: t.robust_head,
            robust_len: t.robust_len,
            clear_tid: t.clear_tid,
            rseq_addr: t.rseq_addr,
            rseq_len: t.rseq_len,
            rseq_sig: t.rseq_sig,
            pending: st.sig_pnd,
            queue: Vec::new(),
            is_control: t.tid == slots.control_tid,
            pdeathsig: t.pdeathsig,
            attrs: super::attrs::thread(pid, t)?,
            caps: Caps {
                inheritable: st.cap_inh,
                permitted: st.cap_prm,
                effective: st.cap_eff,
                bounding: st.cap_bnd,
                ambient: st.cap_amb,
            },
        });
        if t.tid == pid {
            main_status = Some(st);
        }
    }
    // The main thread (tid == pid) goes first: the restorer is that thread.
    threads.sort_by_key(|t| (t.tid != pid, t.tid));
    let Some(st) = main_status else {
        return Err(DumpError::ThreadMismatch {
            pid,
            parked: slots.nthreads,
            listed: tasks.len(),
        });
    };
    let stat = procfs::stat_mm(pid).map_err(perr)?;
    let mut rlimits = Vec::new();
    for res in 0..16u32 {
        let mut old = libc::rlimit64 {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: prlimit64 with a null new limit only reads into `old`.
        if unsafe { libc::prlimit64(pid, res as _, std::ptr::null(), &mut old) } == 0 {
            rlimits.push(Rlimit {
                resource: res,
                cur: old.rlim_cur,
                max: old.rlim_max,
            });
        }
    }
    let sigactions = slots
        .sigactions
        .iter()
        .enumerate()
        .map(|(i, s)| SigAction {
            signo: i as u32 + 1,
            handler: s.handler,
            flags: s.flags,
            restorer: s.restorer,
            mask: s.mask,
        })
        .filter(|s| s.signo != libc::SIGKILL as u32 && s.signo != libc::SIGSTOP as u32)
        .collect();
    let us = |sec: i64, usec: i64| (sec.max(0) as u64) * 1_000_000 + usec.max(0) as u64;
    let itimers = slots.itimers.map(|t| Itimer {
        interval_us: us(t.interval_sec, t.interval_usec),
        value_us: us(t.value_sec, t.value_usec),
    });
    let posix_timers = posix_timers(pid, slots)?;
    let (cwd, cwd_removed) = working_dir(pid)?;
    let image = ProcessImage {
        pid,
        tree: super::tree::read(pid)?,
        exe: fixed.exe,
        args: fixed.args,
        comm: threads[0].comm.clone(),
        cwd,
        cwd_removed,
        root: root(pid)?,
        umask: st.umask,
        personality: fixed.personality,
        creds: Creds {
            uid: st.uid,
            gid: st.gid,
            groups: st.groups,
        },
        attrs: super::attrs::process(pid, slots, status)?,
        rlimits,
        mm: MmFields {
            start_code: stat.start_code,
            end_code: stat.end_code,
            start_data: stat.start_data,
            end_data: stat.end_data,
            start_brk: stat.start_brk,
            brk: slots.brk,
            start_stack: stat.start_stack,
            arg_start: stat.arg_start,
            arg_end: stat.arg_end,
            env_start: stat.env_start,
            env_end: stat.env_end,
        },
        auxv: fixed.auxv,
        sigactions,
        shared_pending: st.shd_pnd,
        shared_queue: Vec::new(),
        itimers,
        posix_timers,
        threads,
        mappings: Vec::new(),
        special: Vec::new(),
        fds: Vec::new(),
        control_fd: slots.control_fd,
        restored_flag_addr: reg.slot_addr + ProcSlot::RESTORED_OFFSET,
        pages_len: 0,
        stores: Vec::new(),
        parent: None,
        uffd_fd: slots.uffd_fd,
    };
    Ok((image, filtered))
}

/// The process's POSIX timers: how each notifies from /proc/PID/timers, its times from the
/// interposer's slots (same ids, or the list changed under us: impossible while parked).
fn posix_timers(pid: i32, slots: &ProcSlot) -> Result<Vec<ckpt_kinds::posix_timer::Record>, DumpError> {
    use ckpt_proto::slots::TIMERS_OVERFLOW;
    let kind = |source| DumpError::Timers { pid, err: source };
    if slots.ntimers == TIMERS_OVERFLOW {
        return Err(kind(ckpt_kinds::KindError::Refused(format!(
            "more than {} POSIX timers (timer_create), or their list was unreadable",
            ckpt_proto::slots::MAX_TIMERS
        ))));
    }
    let listed = ckpt_kinds::posix_timer::list(pid).map_err(kind)?;
    let times = &slots.timers[..(slots.ntimers as usize).min(slots.timers.len())];
    if listed.len() != times.len() {
        return Err(DumpError::TimersChanged { pid });
    }
    listed
        .into_iter()
        .map(|l| {
            let t = times
                .iter()
                .find(|t| t.id == l.id)
                .ok_or(DumpError::TimersChanged { pid })?;
            Ok(ckpt_kinds::posix_timer::Record {
                id: l.id,
                clock: l.clock,
                notify: l.notify,
                signo: l.signo,
                sigval: l.sigval,
                value_ns: t.value_ns,
                interval_ns: t.interval_ns,
                overrun: t.overrun,
            })
        })
        .collect()
}

/// The working directory, and what it was when it was removed (it is made again then).
fn working_dir(pid: i32) -> Result<(String, Option<ckpt_kinds::deleted_dir::Record>), DumpError> {
    let link = format!("/proc/{pid}/cwd");
    let cwd = procfs::readlink(&link).map_err(|e| DumpError::Proc(e, pid))?;
    if !cwd.ends_with(" (deleted)") {
        return Ok((cwd, None));
    }
    let meta = std::fs::metadata(&link).map_err(super::io_err(pid, "its removed working directory"))?;
    let rec = ckpt_kinds::deleted_dir::of(&cwd, &meta, 0);
    Ok((cwd, Some(rec)))
}

/// The process's root directory (`chroot`); one that was removed cannot be entered again.
fn root(pid: i32) -> Result<String, DumpError> {
    let root = procfs::readlink(&format!("/proc/{pid}/root")).map_err(|e| DumpError::Proc(e, pid))?;
    if root.ends_with(" (deleted)") {
        return Err(DumpError::Refused {
            pid,
            what: format!("its root directory {root} was removed"),
            advice: "keep the directory it chroot'ed into".into(),
        });
    }
    Ok(root)
}
