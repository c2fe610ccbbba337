//! The program's credentials and capability sets. The kernel keeps both per thread, so each
//! thread of the restored process sets its own, as the last thing before it becomes the
//! program again. The restorer may hold what the program never had — root's capabilities, or
//! the `CAP_CHECKPOINT_RESTORE` a user's ckptd is given to choose pids — and none of it may
//! reach the program: every set is put back exactly as the checkpoint saw it.

use crate::blob::IGNORE_ERROR;
use crate::plan::Plan;
use anyhow::{bail, Context};
use ckpt_format::{Caps, Creds, ProcessImage, ThreadImage};

const CAP_SETPCAP: u32 = 8;
const LINUX_CAPABILITY_VERSION_3: u64 = 0x2008_0522;

/// The restorer's own credentials, which every thread it clones starts from.
pub struct Mine {
    uid: [u32; 3],
    gid: [u32; 3],
    groups: Vec<u32>,
    caps: Caps,
}

impl Mine {
    pub fn read() -> anyhow::Result<Mine> {
        // SAFETY: getpid has no preconditions.
        let me = unsafe { libc::getpid() };
        let st = ckpt_sys::procfs::status(me, None).context("reading the restorer's own credentials")?;
        Ok(Mine {
            uid: st.uid,
            gid: st.gid,
            groups: st.groups,
            caps: Caps {
                inheritable: st.cap_inh,
                permitted: st.cap_prm,
                effective: st.cap_eff,
                bounding: st.cap_bnd,
                ambient: st.cap_amb,
            },
        })
    }

    fn has(&self, cap: u32) -> bool {
        self.caps.effective & (1 << cap) != 0
    }
}

/// Names of the capabilities in `set`, for messages: `cap_net_admin, cap_sys_admin`.
fn names(set: u64) -> String {
    const NAMES: [&str; 41] = [
        "chown",
        "dac_override",
        "dac_read_search",
        "fowner",
        "fsetid",
        "kill",
        "setgid",
        "setuid",
        "setpcap",
        "linux_immutable",
        "net_bind_service",
        "net_broadcast",
        "net_admin",
        "net_raw",
        "ipc_lock",
        "ipc_owner",
        "sys_module",
        "sys_rawio",
        "sys_chroot",
        "sys_ptrace",
        "sys_pacct",
        "sys_admin",
        "sys_boot",
        "sys_nice",
        "sys_resource",
        "sys_time",
        "sys_tty_config",
        "mknod",
        "lease",
        "audit_write",
        "audit_control",
        "setfcap",
        "mac_override",
        "mac_admin",
        "syslog",
        "wake_alarm",
        "block_suspend",
        "audit_read",
        "perfmon",
        "bpf",
        "checkpoint_restore",
    ];
    (0..64u32)
        .filter(|b| set & (1 << b) != 0)
        .map(|b| match NAMES.get(b as usize) {
            Some(n) => format!("cap_{n}"),
            None => format!("capability {b}"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Refuses, in ordinary Rust and before anything of the program is in place, what the ops
/// could only report as a failed system call: capabilities the program held that this
/// restorer cannot give, or a bounding set it cannot narrow.
pub fn check(img: &ProcessImage, mine: &Mine) -> anyhow::Result<()> {
    for t in &img.threads {
        let c = &t.caps;
        let missing = c.permitted & !mine.caps.permitted;
        if missing != 0 {
            bail!(
                "thread {} of pid {} held capabilities this ckptd does not have ({}); restore it with a ckptd that holds them (root's)",
                t.tid,
                img.pid,
                names(missing)
            );
        }
        let drop = mine.caps.bounding & !c.bounding;
        if drop != 0 && !mine.has(CAP_SETPCAP) {
            bail!(
                "thread {} of pid {} had a narrower capability bounding set than this ckptd (without {}); narrowing it needs CAP_SETPCAP: run ckptd as root, or start it with the program's bounding set",
                t.tid,
                img.pid,
                names(drop)
            );
        }
        // capset lets the inheritable set grow only within the old inheritable and permitted
        // sets (the effective CAP_SETPCAP that would allow more is gone after a uid change).
        let beyond = c.inheritable & !(mine.caps.inheritable | mine.caps.permitted);
        if beyond != 0 {
            bail!(
                "thread {} of pid {} had inheritable capabilities this ckptd does not have ({}); restore it with a ckptd that holds them (root's)",
                t.tid,
                img.pid,
                names(beyond)
            );
        }
    }
    Ok(())
}

/// Ops by which thread `t` takes the program's credentials and capability sets. Bounding set
/// first (narrowing it needs `CAP_SETPCAP`, which a uid change takes away), then groups, gids
/// and uids (the capabilities kept through a uid change when the program had some), then the
/// three sets, then the ambient set (a `capset` keeps only what is both permitted and
/// inheritable; what the program had is raised again).
pub fn set(p: &mut Plan, creds: &Creds, t: &ThreadImage, mine: &Mine) {
    let caps = t.caps;
    for cap in 0..64u64 {
        if mine.caps.bounding & !caps.bounding & (1 << cap) != 0 {
            p.sys(libc::SYS_prctl, &[libc::PR_CAPBSET_DROP as u64, cap], 0);
        }
    }
    let uid_changes = creds.uid != mine.uid;
    let keep = uid_changes && caps.permitted != 0;
    if keep {
        p.sys(libc::SYS_prctl, &[libc::PR_SET_KEEPCAPS as u64, 1], 0);
    }
    if creds.groups != mine.groups {
        let groups: Vec<u8> = creds.groups.iter().flat_map(|g| g.to_le_bytes()).collect();
        let gaddr = p.put(&groups);
        p.sys(libc::SYS_setgroups, &[creds.groups.len() as u64, gaddr], 0);
    }
    if creds.gid != mine.gid {
        let g = creds.gid.map(u64::from);
        p.sys(libc::SYS_setresgid, &g, 0);
    }
    if uid_changes {
        let u = creds.uid.map(u64::from);
        p.sys(libc::SYS_setresuid, &u, 0);
    }
    if keep {
        p.sys(libc::SYS_prctl, &[libc::PR_SET_KEEPCAPS as u64, 0], 0);
    }
    let header = p.put_u64s(&[LINUX_CAPABILITY_VERSION_3]);
    let low = |v: u64| v & 0xffff_ffff;
    let high = |v: u64| v >> 32;
    // Two `__user_cap_data_struct`s (effective, permitted, inheritable; 32 bits each): the
    // low and the high halves of the sets.
    let words = [
        low(caps.effective) | low(caps.permitted) << 32,
        low(caps.inheritable) | high(caps.effective) << 32,
        high(caps.permitted) | high(caps.inheritable) << 32,
    ];
    let data = p.put_u64s(&words);
    p.sys(libc::SYS_capset, &[header, data], 0);
    p.sys(
        libc::SYS_prctl,
        &[
            libc::PR_CAP_AMBIENT as u64,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as u64,
            0,
            0,
            0,
        ],
        IGNORE_ERROR,
    );
    for cap in 0..64u64 {
        if caps.ambient & (1 << cap) != 0 {
            p.sys(
                libc::SYS_prctl,
                &[
                    libc::PR_CAP_AMBIENT as u64,
                    libc::PR_CAP_AMBIENT_RAISE as u64,
                    cap,
                    0,
                    0,
                ],
                0,
            );
        }
    }
    securebits(p, t.attrs.securebits, caps.effective);
}

/// `SECBIT_KEEP_CAPS`, the one securebit anyone may set (`PR_SET_KEEPCAPS`).
const SECBIT_KEEP_CAPS: u32 = 1 << 4;

/// The thread's securebits, last: its own capabilities are in place and none of the steps
/// above is then stopped by a bit (`SECBIT_NO_CAP_AMBIENT_RAISE`, a locked `KEEP_CAPS`).
/// Setting them takes `CAP_SETPCAP`, which the thread has (the checkpoint refuses a thread
/// without it that holds any bit but `KEEP_CAPS`).
fn securebits(p: &mut Plan, bits: u32, effective: u64) {
    if bits & !SECBIT_KEEP_CAPS != 0 && effective & (1 << CAP_SETPCAP) != 0 {
        p.sys(libc::SYS_prctl, &[libc::PR_SET_SECUREBITS as u64, bits as u64], 0);
    } else if bits & SECBIT_KEEP_CAPS != 0 {
        p.sys(libc::SYS_prctl, &[libc::PR_SET_KEEPCAPS as u64, 1], 0);
    }
}
