//! Kernel AIO contexts made again (see `ckpt_format::aio`).
//!
//! Each context is made with what `io_setup` was asked for, in the order of its index in the
//! process's table of contexts (the kernel finds a context by the index its ring holds; an
//! index left free by a context the program destroyed is taken by one made and destroyed here
//! again). Its ring is brought to the checkpoint's head and tail by requests that complete at
//! once (reads of nothing from /dev/null): as many reaped as bring the kernel's tail to the
//! head, then as many left unreaped as there were events; then its bytes are written as they
//! were, those events included. The kernel keeps its own copy of the tail, and counts the slots
//! the unreaped events hold: both are then as they were.
//!
//! The ring is then moved to a place away from the image's layout, kept by the blob through its
//! first step and moved to its own place in its third, like memory filled away from its place
//! (`cow::Area`): the kernel follows a ring that moves, so its place is the context's id again.
//! They are made after the children are forked: a child would get the rings' mappings (not the
//! contexts), which the program's children did not have.

use crate::cow::Area;
use crate::space::Space;
use anyhow::{bail, Context};
use ckpt_format::aio::AioRing;
use ckpt_format::{Mapping, MappingKind, ProcessImage};
use std::os::fd::AsRawFd;

/// `struct iocb` of `linux/aio_abi.h` (x86-64).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Iocb {
    data: u64,
    key: u32,
    rw_flags: u32,
    opcode: u16,
    reqprio: i16,
    fildes: u32,
    buf: u64,
    nbytes: u64,
    offset: i64,
    reserved2: u64,
    flags: u32,
    resfd: u32,
}

/// `struct io_event`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct IoEvent {
    data: u64,
    obj: u64,
    res: i64,
    res2: i64,
}

const IOCB_CMD_PREAD: u16 = 0;
/// Requests submitted at once.
const BATCH: usize = 64;
/// Indices beyond this are not a table a program made (the kernel grows it by four).
const MAX_INDEX: u32 = 1 << 16;

/// Makes the image's AIO contexts; the areas holding their rings, for the blob to move.
pub fn make(img: &ProcessImage) -> anyhow::Result<Vec<Area>> {
    let mut rings: Vec<(&Mapping, &AioRing)> = img
        .mappings
        .iter()
        .filter_map(|m| match &m.kind {
            MappingKind::AioRing(r) => Some((m, r)),
            _ => None,
        })
        .collect();
    if rings.is_empty() {
        return Ok(Vec::new());
    }
    rings.sort_by_key(|(_, r)| r.index());
    let null = std::fs::File::open("/dev/null").context("opening /dev/null to fill AIO rings")?;
    // Slots a CPU takes from the context's pool stay with that CPU: filling from one CPU keeps
    // every free slot within reach of the next request.
    let pinned = Pinned::here();
    let mut made = Vec::new();
    let mut spares = Vec::new();
    let mut next = 0u32;
    let result = (|| -> anyhow::Result<()> {
        for &(m, r) in &rings {
            let want = r.index();
            if want < next || want >= MAX_INDEX {
                bail!(
                    "the AIO context at {:#x} has index {want} in its process's table, which cannot be made again",
                    m.start
                );
            }
            while next < want {
                spares.push(setup(1).context("making a context to keep an index of the AIO table free")?);
                next += 1;
            }
            let ctx = setup(r.nr_events).with_context(|| format!("making the AIO context at {:#x} again", m.start))?;
            made.push((ctx, m));
            next += 1;
            refill(ctx, m, r, null.as_raw_fd())?;
        }
        Ok(())
    })();
    for ctx in spares {
        destroy(ctx);
    }
    drop(pinned);
    if let Err(e) = result {
        for (ctx, _) in made {
            destroy(ctx);
        }
        return Err(e);
    }
    let mut space = Space::new(img, &ckpt_sys::procfs::maps(std::process::id() as i32)?);
    let mut areas = Vec::new();
    for (ctx, m) in made {
        let at = space.take(m.len()).context("no free address range for an AIO ring")?;
        let flags = libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED;
        // SAFETY: moving a ring this restorer made, whole, to a range free in its layout and the
        // image's.
        let p = unsafe { libc::mremap(ctx as *mut libc::c_void, m.len() as usize, m.len() as usize, flags, at) };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error()).context("moving an AIO ring");
        }
        areas.push(Area {
            at,
            start: m.start,
            end: m.end,
        });
    }
    Ok(areas)
}

/// Brings a new context's ring to the image's: head, tail, events unreaped between them and
/// every byte.
fn refill(ctx: u64, m: &Mapping, r: &AioRing, null: i32) -> anyhow::Result<()> {
    let (nr, len) = (r.nr(), r.bytes.len());
    if m.len() != len as u64 || nr == 0 {
        bail!("internal: the AIO ring at {:#x} is {} bytes in its image", m.start, len);
    }
    let here = word(ctx, 1);
    if here != nr {
        bail!(
            "io_setup({}) makes a ring of {here} events here, the checkpointed process had {nr} (a machine with another number of CPUs?); restore on a machine like the one checkpointed",
            r.nr_events
        );
    }
    complete(ctx, null, r.head() % nr, true)?;
    complete(ctx, null, r.unreaped(), false)?;
    let (head, tail) = (word(ctx, 2), word(ctx, 3));
    if head != r.head() % nr || tail != r.tail() || word(ctx, 0) != r.index() {
        bail!(
            "internal: the AIO ring at {:#x} did not come to its head and tail",
            m.start
        );
    }
    // Everything but the index, which is this process's (the same by construction): the
    // header as the program saw it (its head as it wrote it, if it reaps by itself), the events
    // unreaped and the rest as they were. No request is in flight to write it meanwhile.
    // SAFETY: the ring is `len` bytes of this process's memory, mapped read-write by the kernel.
    unsafe {
        std::ptr::copy_nonoverlapping(r.bytes[4..].as_ptr(), (ctx + 4) as *mut u8, len - 4);
    }
    Ok(())
}

/// Word `i` of the ring header at `ctx`.
fn word(ctx: u64, i: u64) -> u32 {
    // SAFETY: the header of a ring the kernel just mapped in this process.
    unsafe { ((ctx + 4 * i) as *const u32).read_volatile() }
}

/// `count` requests that complete at once (an event each), reaped or left in the ring.
fn complete(ctx: u64, null: i32, count: u32, reap: bool) -> anyhow::Result<()> {
    let mut scratch = [0u8; 8];
    let mut iocbs = [Iocb::default(); BATCH];
    let mut events = [IoEvent::default(); BATCH];
    let mut left = count as usize;
    while left > 0 {
        let n = left.min(BATCH);
        for cb in &mut iocbs[..n] {
            *cb = Iocb {
                opcode: IOCB_CMD_PREAD,
                fildes: null as u32,
                buf: scratch.as_mut_ptr() as u64,
                ..Iocb::default()
            };
        }
        let ptrs: Vec<u64> = iocbs[..n].iter().map(|c| c as *const Iocb as u64).collect();
        // SAFETY: `n` pointers to initialised iocbs that read nothing into `scratch`.
        let got = unsafe { libc::syscall(libc::SYS_io_submit, ctx, n as i64, ptrs.as_ptr()) };
        if got <= 0 {
            return Err(std::io::Error::last_os_error()).context("io_submit while filling an AIO ring");
        }
        let got = got as usize;
        if reap {
            // SAFETY: room for `got` events; no timeout (they completed already).
            let e = unsafe {
                libc::syscall(
                    libc::SYS_io_getevents,
                    ctx,
                    got as i64,
                    got as i64,
                    events.as_mut_ptr(),
                    std::ptr::null::<libc::timespec>(),
                )
            };
            if e != got as i64 {
                return Err(std::io::Error::last_os_error()).context("io_getevents while filling an AIO ring");
            }
        }
        left -= got;
    }
    Ok(())
}

fn setup(nr_events: u32) -> anyhow::Result<u64> {
    let mut ctx = 0u64;
    // SAFETY: io_setup writes the new context's id into `ctx`.
    if unsafe { libc::syscall(libc::SYS_io_setup, nr_events, &mut ctx as *mut u64) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EAGAIN) {
            bail!("io_setup({nr_events}): {e} (the system's limit fs.aio-max-nr is reached)");
        }
        return Err(e).with_context(|| format!("io_setup({nr_events})"));
    }
    Ok(ctx)
}

fn destroy(ctx: u64) {
    // SAFETY: destroying a context this restorer made, with no request in flight.
    unsafe { libc::syscall(libc::SYS_io_destroy, ctx) };
}

/// This thread kept on the CPU it runs on, as long as the value lives.
struct Pinned(Option<libc::cpu_set_t>);

impl Pinned {
    fn here() -> Pinned {
        let size = std::mem::size_of::<libc::cpu_set_t>();
        // SAFETY: cpu_set_t is plain data; zero is an empty set.
        let mut old: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: the calls read and write sets of `size` bytes we own.
        unsafe {
            if libc::sched_getaffinity(0, size, &mut old) != 0 {
                return Pinned(None);
            }
            let cpu = libc::sched_getcpu();
            if cpu < 0 {
                return Pinned(None);
            }
            let mut one: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu as usize, &mut one);
            if libc::sched_setaffinity(0, size, &one) != 0 {
                return Pinned(None);
            }
        }
        Pinned(Some(old))
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        if let Some(old) = &self.0 {
            // SAFETY: giving back the set read above.
            unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), old) };
        }
    }
}
