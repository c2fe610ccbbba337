//! Turns a process image into the list of operations the blob executes.

use crate::blob::{Header, Op, EXPECT_ARG2, IGNORE_ERROR, POKE, SIGRETURN, SYSCALL, THREAD};
use crate::creds::{self, Mine};
use anyhow::bail;
use ckpt_format::{MappingKind, PageRun, ProcessImage, QueuedSignal, ThreadImage, PAGE_SIZE};
use ckpt_sys::procfs::MapEntry;
use ckpt_sys::spawn::CloneArgs;
use std::collections::HashMap;

const MAP_FIXED: u64 = libc::MAP_FIXED as u64;
const STACK_SIZE: u64 = 16 << 10;
/// One pread moves at most this much (the kernel caps a read just under 2 GiB).
const MAX_READ: u64 = 1 << 30;
const TASK_SIZE: u64 = 0x7fff_ffff_f000;
const PR_SET_VMA: u64 = 0x5356_4d41;

/// The fds the restorer has opened for the blob's use.
pub struct WorkingFds {
    pub status: i32,
    /// Page store fd by store index (0 = this checkpoint's).
    pub stores: Vec<i32>,
    /// fd of each mapped file, by path and whether it is open for writing (see
    /// [`fds::map_writable`](crate::fds::map_writable)).
    pub files: crate::fds::MappedFiles,
    /// memfd holding the content of each shared mapping without a file, by start address.
    pub memfds: HashMap<u64, i32>,
    pub exe: Option<i32>,
    /// Memory ckptd loads after the blob has mapped it (`--lazy`).
    pub lazy: Option<crate::lazy::Lazy>,
    /// Memory filled away from its place, moved there (see `cow`).
    pub areas: Vec<crate::cow::Area>,
    /// Everything to close at the end.
    pub all: Vec<i32>,
}

/// Where the blob, its data, its ops, the thread stacks and the vdso parking lie.
#[derive(Debug, Clone, Copy)]
pub struct Region {
    pub base: u64,
    pub size: u64,
    pub header: u64,
    pub data: u64,
    pub data_cap: u64,
    pub ops: u64,
    pub ops_cap: u64,
    pub stacks: u64,
    pub park: u64,
}

pub fn page_up(n: u64) -> u64 {
    n.div_ceil(PAGE_SIZE) * PAGE_SIZE
}

/// Generous bounds on what the plan will need, to size the region before building it.
pub fn bounds(img: &ProcessImage, current: &[MapEntry]) -> (u64, u64) {
    let runs: usize = img.mappings.iter().map(|m| m.pages.len()).sum();
    let queued = img.shared_queue.len() + img.threads.iter().map(|t| t.queue.len()).sum::<usize>();
    let locks: usize = img.fds.iter().map(|f| f.locks.len()).sum();
    let tracked = img.mappings.iter().filter(|m| m.tracked).count();
    let tracked_runs: usize = img.mappings.iter().filter(|m| m.tracked).map(|m| m.pages.len()).sum();
    let (attr_ops, attr_data) = crate::attrs::bounds(img);
    let (seccomp_ops, seccomp_data) = crate::seccomp::bounds(img);
    let ops = 512
        + current.len() * 2
        + img.mappings.len() * 4
        + runs
        // A thread's tail: its own calls, pending signals sent again, and its capability
        // sets (a bounding set to narrow and ambient ones to raise, one call per capability).
        + img.threads.len() * (96 + 96)
        + img.rlimits.len()
        + img.posix_timers.len() * 2
        + queued
        + locks
        + attr_ops
        + seccomp_ops
        + tracked
        + tracked_runs;
    let names: usize = img.mappings.iter().map(|m| m.name.len() + 1).sum();
    let data = 64 * 1024
        + img.auxv.len()
        + names
        + img.threads.len() * 256
        + (img.creds.groups.len() * 4 + 64) * img.threads.len()
        + img.posix_timers.len() * 128
        + queued * (QueuedSignal::SIZE + 16)
        + locks * 48
        + attr_data
        + seccomp_data
        + (tracked + tracked_runs) * 32
        // Lazy memory, registered once mapped.
        + img.mappings.len() * 48;
    ((ops * std::mem::size_of::<Op>()) as u64, page_up(data as u64))
}

pub fn layout(base: u64, ops_bytes: u64, data_bytes: u64, nthreads: usize, park: u64) -> Region {
    let header = base + PAGE_SIZE;
    let data = header + PAGE_SIZE;
    let ops = data + data_bytes;
    let ops_cap = page_up(ops_bytes);
    let stacks = ops + ops_cap;
    let parkb = stacks + STACK_SIZE * (nthreads as u64 + 1);
    Region {
        base,
        size: parkb + page_up(park) - base,
        header,
        data,
        data_cap: data_bytes,
        ops,
        ops_cap,
        stacks,
        park: parkb,
    }
}

pub struct Plan {
    pub ops: Vec<Op>,
    pub data: Vec<u8>,
    region: Region,
}

impl Plan {
    pub(crate) fn sys(&mut self, nr: i64, args: &[u64], flags: u32) {
        let mut a = [0u64; 6];
        a[..args.len()].copy_from_slice(args);
        self.ops.push(Op {
            kind: SYSCALL,
            flags,
            nr: nr as u64,
            args: a,
        });
    }

    /// `*(addr as *mut u64) = value`, in the restored process.
    pub(crate) fn poke(&mut self, addr: u64, value: u64) {
        self.ops.push(Op {
            kind: POKE,
            flags: 0,
            nr: 0,
            args: [addr, value, 0, 0, 0, 0],
        });
    }

    /// Places bytes in the data area; their address in the restored process.
    pub(crate) fn put(&mut self, bytes: &[u8]) -> u64 {
        while !self.data.len().is_multiple_of(16) {
            self.data.push(0);
        }
        let addr = self.region.data + self.data.len() as u64;
        self.data.extend_from_slice(bytes);
        addr
    }

    pub(crate) fn put_u64s(&mut self, v: &[u64]) -> u64 {
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.put(&bytes)
    }

    fn put_cstr(&mut self, s: &str) -> u64 {
        let mut b = s.as_bytes().to_vec();
        b.push(0);
        self.put(&b)
    }
}

/// Merges runs adjacent in both memory and the store, to issue few reads.
fn merged(runs: &[PageRun]) -> Vec<PageRun> {
    let mut out: Vec<PageRun> = Vec::new();
    for r in runs {
        if let Some(last) = out.last_mut() {
            if last.store == r.store
                && last.addr + last.len == r.addr
                && last.offset + last.len == r.offset
                && last.len + r.len <= MAX_READ
            {
                last.len += r.len;
                continue;
            }
        }
        out.push(*r);
    }
    out
}

pub fn build(
    img: &ProcessImage,
    current: &[MapEntry],
    region: Region,
    fds: &WorkingFds,
    mine: &Mine,
    tracker: bool,
) -> anyhow::Result<Plan> {
    let mut p = Plan {
        ops: Vec::new(),
        data: Vec::new(),
        region,
    };

    // 1. Unmap everything of the restorer but the region, the kernel's special mappings and
    //    the memory filled away from its place.
    let mut keep: Vec<(u64, u64)> = vec![(region.base, region.base + region.size)];
    keep.extend(fds.areas.iter().map(|a| (a.at, a.at + a.len())));
    let cur_special: Vec<&MapEntry> = current
        .iter()
        .filter(|e| ckpt_format::is_kernel_special(&e.path))
        .collect();
    keep.extend(cur_special.iter().map(|e| (e.start, e.end)));
    keep.sort_unstable();
    let mut at = PAGE_SIZE;
    for &(s, e) in &keep {
        if s > at {
            p.sys(libc::SYS_munmap, &[at, s - at], 0);
        }
        at = at.max(e);
    }
    if at < TASK_SIZE {
        p.sys(libc::SYS_munmap, &[at, TASK_SIZE - at], 0);
    }

    // 2. Move vdso and vvar to where the program had them, through a parking spot so that old
    //    and new places may overlap.
    let mut park = region.park;
    let mut moves = Vec::new();
    for e in &cur_special {
        let Some(want) = img.special.iter().find(|s| s.name == e.path) else {
            p.sys(libc::SYS_munmap, &[e.start, e.len()], 0);
            continue;
        };
        if want.end - want.start != e.len() {
            bail!("{} of this kernel is {} bytes, the checkpointed one {}; restore on the kernel that took the checkpoint", e.path, e.len(), want.end - want.start);
        }
        let flags = (libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED) as u64;
        p.sys(libc::SYS_mremap, &[e.start, e.len(), e.len(), flags, park], 0);
        moves.push((park, e.len(), want.start));
        park += e.len();
    }
    for (from, len, to) in moves {
        let flags = (libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED) as u64;
        p.sys(libc::SYS_mremap, &[from, len, len, flags, to], 0);
    }
    for s in &img.special {
        if !cur_special.iter().any(|e| e.path == s.name) {
            bail!("this kernel has no {} but the checkpointed process had one; restore on the kernel that took the checkpoint", s.name);
        }
    }

    // 3. The program's memory: SysV segments attached first (see `sysv_attaches`), then the
    //    rest.
    sysv_attaches(&mut p, img);
    for m in &img.mappings {
        if matches!(m.kind, MappingKind::SysvShm { .. }) {
            continue;
        }
        let len = m.len();
        let prot = m.prot as u64;
        if let Some(a) = fds.areas.iter().find(|a| a.of(m)) {
            // Kept out of the way of every mapping above and of the other areas, so that the
            // move replaces nothing but the parts of the restorer step 1 let go.
            let flags = (libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED) as u64;
            p.sys(libc::SYS_mremap, &[a.at, len, len, flags, m.start], 0);
            if prot != (libc::PROT_READ | libc::PROT_WRITE) as u64 {
                p.sys(libc::SYS_mprotect, &[m.start, len, prot], 0);
            }
            name(&mut p, m);
            continue;
        }
        let share = if m.shared { libc::MAP_SHARED } else { libc::MAP_PRIVATE } as u64;
        let (fd, off, mut flags) = match &m.kind {
            MappingKind::File(id) => match fds.files.get(&(id.path.clone(), crate::fds::map_writable(m))) {
                Some(&fd) => (fd as u64, id.offset, share),
                None => bail!("internal: no fd for {}", id.path),
            },
            MappingKind::Saved { shmem: true } => match fds.memfds.get(&m.start) {
                Some(&fd) => (fd as u64, m.shared_with.map_or(0, |s| s.pgoff), libc::MAP_SHARED as u64),
                None => bail!("internal: no memfd for {:#x}", m.start),
            },
            MappingKind::Stack => (u64::MAX, 0, share | (libc::MAP_ANONYMOUS | libc::MAP_GROWSDOWN) as u64),
            MappingKind::AioRing(_) => bail!("internal: no ring made for the AIO context {:#x}", m.start),
            _ => (u64::MAX, 0, share | libc::MAP_ANONYMOUS as u64),
        };
        flags |= MAP_FIXED | libc::MAP_NORESERVE as u64;
        let fill = !m.pages.is_empty() && !matches!(m.kind, MappingKind::Saved { shmem: true });
        let first_prot = if fill {
            (libc::PROT_READ | libc::PROT_WRITE) as u64
        } else {
            prot
        };
        p.sys(libc::SYS_mmap, &[m.start, len, first_prot, flags, fd, off], 0);
        if fill {
            // In order: an ancestor's runs first, newer ones over them; each clipped to the
            // mapping (an ancestor's run may span memory since unmapped).
            for r in merged(&m.pages) {
                let Some(&store) = fds.stores.get(r.store as usize) else {
                    bail!("internal: no page store {}", r.store);
                };
                let (s, e) = (r.addr.max(m.start), (r.addr + r.len).min(m.end));
                if s < e {
                    p.sys(
                        libc::SYS_pread64,
                        &[store as u64, s, e - s, r.offset + (s - r.addr)],
                        EXPECT_ARG2,
                    );
                }
            }
            if first_prot != prot {
                p.sys(libc::SYS_mprotect, &[m.start, len, prot], 0);
            }
        }
        name(&mut p, m);
    }
    if let Some(l) = &fds.lazy {
        crate::lazy::register(&mut p, l);
    }
    let restored = if tracker {
        ckpt_proto::slots::ProcSlot::RESTORED_TRACKED
    } else {
        1
    };
    p.poke(img.restored_flag_addr, restored);
    // A value no earlier restore of this process used: its threads' timed calls start their
    // remaining time again from now.
    let slots = img.restored_flag_addr - ckpt_proto::slots::ProcSlot::RESTORED_OFFSET;
    p.poke(slots + ckpt_proto::slots::ProcSlot::NONCE_OFFSET, restore_nonce());

    // 4. Process-wide kernel state.
    let mm = &img.mm;
    let auxv = p.put(&img.auxv);
    let exe_fd = fds.exe.map(|f| f as u64).unwrap_or(u32::MAX as u64);
    let map = [
        mm.start_code,
        mm.end_code,
        mm.start_data,
        mm.end_data,
        mm.start_brk,
        mm.brk,
        mm.start_stack,
        mm.arg_start,
        mm.arg_end,
        mm.env_start,
        mm.env_end,
        auxv,
        (img.auxv.len() as u64) | (exe_fd << 32),
    ];
    let map_addr = p.put_u64s(&map);
    p.sys(
        libc::SYS_prctl,
        &[libc::PR_SET_MM as u64, libc::PR_SET_MM_MAP as u64, map_addr, 104, 0],
        0,
    );
    p.sys(libc::SYS_personality, &[img.personality], IGNORE_ERROR);
    for sa in &img.sigactions {
        let addr = p.put_u64s(&[sa.handler, sa.flags, sa.restorer, sa.mask]);
        p.sys(libc::SYS_rt_sigaction, &[sa.signo as u64, addr, 0, 8], IGNORE_ERROR);
    }
    for (which, t) in img.itimers.iter().enumerate() {
        if t.value_us != 0 {
            let v = [
                t.interval_us / 1_000_000,
                t.interval_us % 1_000_000,
                t.value_us / 1_000_000,
                t.value_us % 1_000_000,
            ];
            let addr = p.put_u64s(&v);
            p.sys(libc::SYS_setitimer, &[which as u64, addr, 0], IGNORE_ERROR);
        }
    }
    for &fd in &fds.all {
        if fd != fds.status {
            p.sys(libc::SYS_close, &[fd as u64], IGNORE_ERROR);
        }
    }
    crate::fds::locks_after_close(&mut p, img);
    for r in &img.rlimits {
        let addr = p.put_u64s(&[r.cur, r.max]);
        p.sys(libc::SYS_prlimit64, &[0, r.resource as u64, addr, 0], IGNORE_ERROR);
    }
    // Under the program's own RLIMIT_MEMLOCK.
    crate::attrs::memory_ops(&mut p, img);
    if tracker {
        track(&mut p, img);
    }

    // 5. Threads: each other thread is cloned with its tid and runs its own tail of ops; the
    //    main thread (this one) goes last.
    let Some((main, others)) = img.threads.split_first() else {
        bail!("the image has no threads")
    };
    let filters = crate::seccomp::place(&mut p, img);
    let mut patches = Vec::new();
    for (i, t) in others.iter().enumerate() {
        let tid_addr = p.put(&(t.tid as i64).to_le_bytes());
        let stack = region.stacks + STACK_SIZE * (i as u64 + 1);
        let args = CloneArgs {
            flags: (libc::CLONE_VM
                | libc::CLONE_FS
                | libc::CLONE_FILES
                | libc::CLONE_SIGHAND
                | libc::CLONE_THREAD
                | libc::CLONE_SYSVSEM) as u64,
            stack,
            stack_size: STACK_SIZE,
            set_tid: tid_addr,
            set_tid_size: 1,
            ..Default::default()
        };
        let raw = [
            args.flags,
            args.pidfd,
            args.child_tid,
            args.parent_tid,
            args.exit_signal,
            args.stack,
            args.stack_size,
            args.tls,
            args.set_tid,
            args.set_tid_size,
            args.cgroup,
        ];
        let addr = p.put_u64s(&raw);
        patches.push(p.ops.len());
        p.ops.push(Op {
            kind: THREAD,
            flags: 0,
            nr: 0,
            args: [addr, 88, 0, 0, 0, 0],
        });
    }
    // The other threads wait until the timers exist: a program thread must not see a timer id
    // missing, nor create a timer of its own while ids are being chosen (a process-wide mode).
    let timers_made = (!img.posix_timers.is_empty()).then(|| p.put(&0u64.to_le_bytes()));
    crate::signals::posix_timers(&mut p, img);
    if let Some(word) = timers_made {
        p.poke(word, 1);
        p.sys(
            libc::SYS_futex,
            &[
                word,
                (libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG) as u64,
                i32::MAX as u64,
            ],
            IGNORE_ERROR,
        );
    }
    thread_tail(&mut p, img, main, mine)?;
    // The process's own queue, by its main thread (rt_sigqueueinfo takes any si_code from a
    // thread whose tid is the target pid); signals without a queued siginfo are sent again.
    let pid = img.pid as u64;
    for q in img
        .shared_queue
        .iter()
        .filter(|q| !crate::signals::raised_by_timer(img, None, &q.info))
    {
        let (sig, info) = crate::signals::place_queued(&mut p, q)?;
        p.sys(libc::SYS_rt_sigqueueinfo, &[pid, sig, info], 0);
    }
    for sig in crate::signals::unqueued(img.shared_pending, &img.shared_queue) {
        p.sys(libc::SYS_kill, &[pid, sig], IGNORE_ERROR);
    }
    // A failure from here on can no longer be reported, and the fd number may soon be the
    // program's own (a thread already returned to it may open a file): the blob's failure
    // record goes nowhere (fd -1) rather than into it, and the process just ends.
    p.poke(region.header + std::mem::offset_of!(Header, status_fd) as u64, u64::MAX);
    p.sys(libc::SYS_close, &[fds.status as u64], IGNORE_ERROR);
    crate::seccomp::last_ops(&mut p, img, main, &filters, true)?;
    p.ops.push(Op {
        kind: SIGRETURN,
        flags: 0,
        nr: 0,
        args: [main.uc_addr, 0, 0, 0, 0, 0],
    });
    for (t, at) in others.iter().zip(patches) {
        p.ops[at].args[2] = p.ops.len() as u64;
        if let Some(word) = timers_made {
            // Returns at once (EAGAIN) when the word is already 1.
            p.sys(
                libc::SYS_futex,
                &[word, (libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG) as u64, 0, 0],
                IGNORE_ERROR,
            );
        }
        thread_tail(&mut p, img, t, mine)?;
        crate::seccomp::last_ops(&mut p, img, t, &filters, false)?;
        p.ops.push(Op {
            kind: SIGRETURN,
            flags: 0,
            nr: 0,
            args: [t.uc_addr, 0, 0, 0, 0, 0],
        });
    }

    if p.data.len() as u64 > region.data_cap || (p.ops.len() * std::mem::size_of::<Op>()) as u64 > region.ops_cap {
        bail!("internal: restore plan larger than its bound");
    }
    Ok(p)
}

/// The name a private anonymous mapping was given (`PR_SET_VMA_ANON_NAME`).
fn name(p: &mut Plan, m: &ckpt_format::Mapping) {
    if m.name.starts_with("[anon:") && !m.shared {
        let name = m.name.trim_start_matches("[anon:").trim_end_matches(']').to_string();
        let addr = p.put_cstr(&name);
        p.sys(libc::SYS_prctl, &[PR_SET_VMA, 0, m.start, m.len(), addr], IGNORE_ERROR);
    }
}

/// Registers and write-protects again the memory that was tracked at the checkpoint, with the
/// tracker at the interposer's number, once its content is back and before any of the
/// program runs: from its first instruction on, what the program writes shows, and its next
/// checkpoint can be incremental to the one restored (its memory is that one's). A range the
/// kernel refuses is simply not tracked: it is then stored in full, or as written.
fn track(p: &mut Plan, img: &ProcessImage) {
    let fd = img.uffd_fd as u64;
    for m in img.mappings.iter().filter(|m| m.tracked) {
        let (reg, arg) = ckpt_sys::uffd::register_wp_call(m.start, m.end - m.start);
        let arg = p.put(&arg);
        p.sys(libc::SYS_ioctl, &[fd, reg, arg], IGNORE_ERROR);
        // Only where the restore put content: a page it never touched has no page-table entry
        // and reads as not written until the program writes it, and protecting such pages
        // would build page tables for all of a sparse reservation (2 TiB: 8 GiB of them).
        for (s, e) in data_ranges(m) {
            let (wp, arg) = ckpt_sys::uffd::write_protect_call(s, e - s);
            let arg = p.put(&arg);
            p.sys(libc::SYS_ioctl, &[fd, wp, arg], IGNORE_ERROR);
        }
    }
}

/// The address ranges of `m` its page runs fill, clipped to it, sorted and merged.
fn data_ranges(m: &ckpt_format::Mapping) -> Vec<(u64, u64)> {
    let mut r: Vec<(u64, u64)> = m
        .pages
        .iter()
        .map(|r| (r.addr.max(m.start), (r.addr + r.len).min(m.end)))
        .filter(|(s, e)| s < e)
        .collect();
    r.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(r.len());
    for (s, e) in r {
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

/// Each SysV attachment is made again with `shmat` at its address (ckptd made the segments
/// before the restorer started), read-only if it was: a real attachment, which `shmdt` and
/// `shm_nattch` know. An attach covers the whole segment: the parts the program had unmapped
/// are given back before the other mappings are made (one may lie there), and parts it had
/// `mprotect`ed get their protection.
fn sysv_attaches(p: &mut Plan, img: &ProcessImage) {
    let mut attaches: Vec<(i32, u64, u64, bool)> = Vec::new();
    for m in &img.mappings {
        if let MappingKind::SysvShm {
            shmid,
            attach,
            size,
            rdonly,
        } = m.kind
        {
            if !attaches.iter().any(|a| a.0 == shmid && a.1 == attach) {
                attaches.push((shmid, attach, size, rdonly));
            }
        }
    }
    for (shmid, attach, size, rdonly) in attaches {
        let flags = if rdonly { libc::SHM_RDONLY as u64 } else { 0 };
        p.sys(libc::SYS_shmat, &[shmid as u64, attach, flags], 0);
        let prot = libc::PROT_READ as u32 | if rdonly { 0 } else { libc::PROT_WRITE as u32 };
        let mine: Vec<_> = img
            .mappings
            .iter()
            .filter(|m| matches!(m.kind, MappingKind::SysvShm { shmid: s, attach: a, .. } if s == shmid && a == attach))
            .collect();
        let mut at = attach;
        for m in &mine {
            if m.start > at {
                p.sys(libc::SYS_munmap, &[at, m.start - at], 0);
            }
            if m.prot != prot {
                p.sys(libc::SYS_mprotect, &[m.start, m.len(), m.prot as u64], 0);
            }
            at = at.max(m.end);
        }
        let end = attach + page_up(size);
        if end > at {
            p.sys(libc::SYS_munmap, &[at, end - at], 0);
        }
    }
}

/// What each thread sets for itself before its sigreturn.
fn thread_tail(p: &mut Plan, img: &ProcessImage, t: &ThreadImage, mine: &Mine) -> anyhow::Result<()> {
    p.sys(libc::SYS_set_tid_address, &[t.clear_tid], 0);
    // No alternate signal stack but the program's own: the restorer's main thread has one (Rust
    // sets it up), and the sigreturn below keeps it when the thread had none, since the
    // kernel saved that as a zero-sized stack, which it refuses to set back. A handler with
    // SA_ONSTACK (Python's are) would then run on memory that is gone.
    let disabled = p.put_u64s(&[0, libc::SS_DISABLE as u64, 0]);
    p.sys(libc::SYS_sigaltstack, &[disabled, 0], 0);
    if t.robust_head != 0 {
        p.sys(libc::SYS_set_robust_list, &[t.robust_head, t.robust_len], IGNORE_ERROR);
    }
    p.sys(libc::SYS_arch_prctl, &[0x1002 /* ARCH_SET_FS */, t.fs_base], 0);
    if t.gs_base != 0 {
        p.sys(
            libc::SYS_arch_prctl,
            &[0x1001 /* ARCH_SET_GS */, t.gs_base],
            IGNORE_ERROR,
        );
    }
    if t.rseq_addr != 0 {
        p.sys(
            libc::SYS_rseq,
            &[t.rseq_addr, t.rseq_len as u64, 0, t.rseq_sig as u64],
            IGNORE_ERROR,
        );
    }
    let name = p.put_cstr(&t.comm);
    p.sys(libc::SYS_prctl, &[libc::PR_SET_NAME as u64, name], IGNORE_ERROR);
    // The thread's own queue, by the thread itself (rt_tgsigqueueinfo takes any si_code then).
    // Results are not checked: another thread's tail may run after the main thread closed the
    // status fd, where a failure could not be reported. The kernel held these very signals
    // under the same limits at the checkpoint.
    let (pid, tid) = (img.pid as u64, t.tid as u64);
    for q in t
        .queue
        .iter()
        .filter(|q| !crate::signals::raised_by_timer(img, Some(t.tid), &q.info))
    {
        let (sig, info) = crate::signals::place_queued(p, q)?;
        p.sys(libc::SYS_rt_tgsigqueueinfo, &[pid, tid, sig, info], IGNORE_ERROR);
    }
    for sig in crate::signals::unqueued(t.pending, &t.queue) {
        p.sys(libc::SYS_tgkill, &[pid, tid, sig], IGNORE_ERROR);
    }
    crate::attrs::thread_ops(p, t);
    creds::set(p, &img.creds, t, mine);
    crate::attrs::after_creds(p, img, t);
    Ok(())
}

/// Never the same twice on a machine, never 0: the time, with the pid to tell apart restores
/// started in the same nanosecond.
fn restore_nonce() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    (t ^ ((std::process::id() as u64) << 40)) | 1
}
