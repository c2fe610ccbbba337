//! The interposer: loaded with LD_PRELOAD into every program started by `ckpt-run`.
//!
//! It registers the program with the local `ckptd` before `main` runs, then a control thread
//! serves ckptd's requests. To checkpoint, the control thread parks every thread in a signal
//! handler (their registers are then in the kernel's signal frame on their own stacks), parks
//! itself last, and ckptd reads the process from the outside. Outside a checkpoint the
//! interposer does nothing the program could notice.
//!
//! Rules for this crate: no panics escape, nothing allocates or locks while threads are parked
//! or inside a signal handler, errno is preserved, every fd is close-on-exec.

mod aio;
mod attrs;
mod checkpoint;
mod control;
mod fds;
mod gate;
mod hosts;
mod inflight;
mod pages;
mod restart;
mod signals;
mod spawn;
mod sys;
mod syscall;
mod sysv;
mod timers;

/// Runs before the program's `main`: registers and starts the control thread.
extern "C" fn ckpt_init() {
    // The process-creating wrappers work with or without ckptd.
    spawn::init();
    let _ = std::panic::catch_unwind(control::start);
}

#[used]
#[link_section = ".init_array"]
static INIT: extern "C" fn() = ckpt_init;
