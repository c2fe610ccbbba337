//! Creating a process is communication: a child made while a checkpoint runs would be in it or
//! not depending on timing, and its parent's view (its children, its `wait`) with it. While the
//! gate is shut (phase 1 until the checkpoint ends), the calls that create a process or replace
//! this one's program wait, like a send does; the gate counts as shut only once none of them is
//! in the kernel (see `gate::enter_spawn`). ckptd then sees every child made before, waits for
//! those still registering, and shuts their gates too (`coordinatord/src/node/children.rs`).
//!
//! Outside a checkpoint a wrapper costs two atomic additions and a load. Waiting happens in a
//! futex wait of the calling thread: the park signal still parks it.
//!
//! - `fork`, `_Fork`, `posix_spawn`, `posix_spawnp`, `popen`, `clone` (without `CLONE_THREAD`;
//!   threads are not processes) and the exec calls that take an array (`execve`, `execv`,
//!   `execvp`, `execvpe`, `fexecve`, `execveat`) are counted in flight until they return (an exec
//!   that succeeds never returns; its process re-registers from the new program).
//! - `vfork` returns twice on one stack: a wrapper with a frame of its own would have its
//!   return address overwritten by the child before the parent uses it. It is written here
//!   without a frame, the way libc writes it: the return address is kept in a register across
//!   the system call and pushed back after, then the parent (only) leaves the count. The child
//!   shares the parent's memory, so it must not touch the counts.
//! - `system` runs its command to the end: it waits at the gate but is not counted (the count
//!   would keep the gate from shutting for the whole command). `execl`, `execle`, `execlp` are
//!   variadic: a frameless trampoline waits at the gate and jumps to libc's, untouched.
//! - An exec in a child that shares this process's memory (a `vfork` or `clone(CLONE_VM)`
//!   child, whose parent is held in the kernel until it execs) is never held nor counted: the
//!   gate it sees is its parent's.

use crate::{gate, sys};
use libc::{c_char, c_int, c_void, pid_t, FILE};
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering::*};

/// This process's pid, as the interposer last set itself up (constructor, forked child): a
/// thread whose `getpid` differs runs in a child sharing our memory.
static OWN_PID: AtomicI32 = AtomicI32::new(0);

/// Sets up the wrappers; from the constructor and in a forked child.
pub fn init() {
    OWN_PID.store(sys::getpid(), SeqCst);
    for (cell, name) in REALS {
        sys::libc_symbol(cell, name);
    }
    resolve_variadic();
}

static REAL_FORK: AtomicUsize = AtomicUsize::new(0);
static REAL_UFORK: AtomicUsize = AtomicUsize::new(0);
static REAL_SPAWN: AtomicUsize = AtomicUsize::new(0);
static REAL_SPAWNP: AtomicUsize = AtomicUsize::new(0);
static REAL_POPEN: AtomicUsize = AtomicUsize::new(0);
static REAL_SYSTEM: AtomicUsize = AtomicUsize::new(0);
static REAL_CLONE: AtomicUsize = AtomicUsize::new(0);
static REAL_EXECVE: AtomicUsize = AtomicUsize::new(0);
static REAL_EXECV: AtomicUsize = AtomicUsize::new(0);
static REAL_EXECVP: AtomicUsize = AtomicUsize::new(0);
static REAL_EXECVPE: AtomicUsize = AtomicUsize::new(0);
static REAL_FEXECVE: AtomicUsize = AtomicUsize::new(0);
static REAL_EXECVEAT: AtomicUsize = AtomicUsize::new(0);
/// Read by the trampolines: never 0 once [`resolve_variadic`] ran.
static REAL_EXECL: AtomicUsize = AtomicUsize::new(0);
static REAL_EXECLE: AtomicUsize = AtomicUsize::new(0);
static REAL_EXECLP: AtomicUsize = AtomicUsize::new(0);

/// Resolved up front: a `vfork` child must not run the dynamic linker's lookup.
static REALS: [(&AtomicUsize, &std::ffi::CStr); 13] = [
    (&REAL_FORK, c"fork"),
    (&REAL_UFORK, c"_Fork"),
    (&REAL_SPAWN, c"posix_spawn"),
    (&REAL_SPAWNP, c"posix_spawnp"),
    (&REAL_POPEN, c"popen"),
    (&REAL_SYSTEM, c"system"),
    (&REAL_CLONE, c"clone"),
    (&REAL_EXECVE, c"execve"),
    (&REAL_EXECV, c"execv"),
    (&REAL_EXECVP, c"execvp"),
    (&REAL_EXECVPE, c"execvpe"),
    (&REAL_FEXECVE, c"fexecve"),
    (&REAL_EXECVEAT, c"execveat"),
];

/// Whether this thread runs in the process the interposer set itself up in (not in a child
/// sharing its memory).
fn own_process() -> bool {
    OWN_PID.load(Relaxed) == sys::getpid()
}

/// Runs `call` counted in flight through the gate.
fn counted<R>(call: impl FnOnce() -> R) -> R {
    gate::enter_spawn();
    let r = call();
    gate::leave_spawn();
    r
}

#[no_mangle]
pub unsafe extern "C" fn fork() -> pid_t {
    let Some(f) = sys::libc_symbol_or_enosys(&REAL_FORK, c"fork") else {
        return -1;
    };
    gate::enter_spawn();
    // SAFETY: libc's fork, no arguments.
    let r = unsafe { std::mem::transmute::<usize, unsafe extern "C" fn() -> pid_t>(f)() };
    // The child's count is its parent's copy: the child resets its gate as it registers.
    if r != 0 {
        gate::leave_spawn();
    }
    r
}

/// `_Fork` runs no fork handlers: its child does not register (until it execs a program that
/// loads the interposer) and keeps the parent's gate as it was, which `gate` tells is not its own.
#[no_mangle]
pub unsafe extern "C" fn _Fork() -> pid_t {
    let Some(f) = sys::libc_symbol_or_enosys(&REAL_UFORK, c"_Fork") else {
        return -1;
    };
    gate::enter_spawn();
    // SAFETY: libc's _Fork, no arguments.
    let r = unsafe { std::mem::transmute::<usize, unsafe extern "C" fn() -> pid_t>(f)() };
    if r != 0 {
        gate::leave_spawn();
    }
    if r > 0 {
        // No fork handlers ran: counted here (see `ProcSlot::forks`).
        crate::checkpoint::SLOTS.count_fork();
    }
    r
}

type SpawnFn = unsafe extern "C" fn(
    *mut pid_t,
    *const c_char,
    *const libc::posix_spawn_file_actions_t,
    *const libc::posix_spawnattr_t,
    *const *mut c_char,
    *const *mut c_char,
) -> c_int;

/// posix_spawn returns once the child has exec'd (or failed to).
#[no_mangle]
pub unsafe extern "C" fn posix_spawn(
    pid: *mut pid_t,
    path: *const c_char,
    actions: *const libc::posix_spawn_file_actions_t,
    attr: *const libc::posix_spawnattr_t,
    argv: *const *mut c_char,
    envp: *const *mut c_char,
) -> c_int {
    let Some(f) = sys::libc_symbol_or_enosys(&REAL_SPAWN, c"posix_spawn") else {
        return libc::ENOSYS;
    };
    // SAFETY: libc's posix_spawn; the caller's arguments passed through.
    counted(|| unsafe { std::mem::transmute::<usize, SpawnFn>(f)(pid, path, actions, attr, argv, envp) })
}

#[no_mangle]
pub unsafe extern "C" fn posix_spawnp(
    pid: *mut pid_t,
    file: *const c_char,
    actions: *const libc::posix_spawn_file_actions_t,
    attr: *const libc::posix_spawnattr_t,
    argv: *const *mut c_char,
    envp: *const *mut c_char,
) -> c_int {
    let Some(f) = sys::libc_symbol_or_enosys(&REAL_SPAWNP, c"posix_spawnp") else {
        return libc::ENOSYS;
    };
    // SAFETY: libc's posix_spawnp; the caller's arguments passed through.
    counted(|| unsafe { std::mem::transmute::<usize, SpawnFn>(f)(pid, file, actions, attr, argv, envp) })
}

/// popen returns once its child is started.
#[no_mangle]
pub unsafe extern "C" fn popen(command: *const c_char, mode: *const c_char) -> *mut FILE {
    let Some(f) = sys::libc_symbol_or_enosys(&REAL_POPEN, c"popen") else {
        return std::ptr::null_mut();
    };
    type F = unsafe extern "C" fn(*const c_char, *const c_char) -> *mut FILE;
    // SAFETY: libc's popen; the caller's arguments passed through.
    counted(|| unsafe { std::mem::transmute::<usize, F>(f)(command, mode) })
}

#[no_mangle]
pub unsafe extern "C" fn system(command: *const c_char) -> c_int {
    let Some(f) = sys::libc_symbol_or_enosys(&REAL_SYSTEM, c"system") else {
        return -1;
    };
    gate::wait_open();
    // SAFETY: libc's system; the caller's argument passed through.
    unsafe { std::mem::transmute::<usize, unsafe extern "C" fn(*const c_char) -> c_int>(f)(command) }
}

type CloneFn = unsafe extern "C" fn(extern "C" fn(*mut c_void) -> c_int, *mut c_void, c_int, *mut c_void, ...) -> c_int;

/// Declared with its three optional arguments fixed: on x86-64 a variadic caller passes them
/// where a fixed one is read, and libc's clone looks at each only when a flag asks for it. The
/// child runs `f` on its own stack and never comes back here; the parent does.
#[no_mangle]
pub unsafe extern "C" fn clone(
    f: extern "C" fn(*mut c_void) -> c_int,
    stack: *mut c_void,
    flags: c_int,
    arg: *mut c_void,
    ptid: *mut pid_t,
    tls: *mut c_void,
    ctid: *mut pid_t,
) -> c_int {
    let Some(real_clone) = sys::libc_symbol_or_enosys(&REAL_CLONE, c"clone") else {
        return -1;
    };
    // SAFETY: libc's clone, with the caller's arguments.
    let call = || unsafe { std::mem::transmute::<usize, CloneFn>(real_clone)(f, stack, flags, arg, ptid, tls, ctid) };
    if flags & libc::CLONE_THREAD != 0 {
        return call();
    }
    let r = counted(call);
    if r > 0 && flags & libc::CLONE_VM == 0 {
        // A child with page tables of its own (see `ProcSlot::forks`).
        crate::checkpoint::SLOTS.count_fork();
    }
    r
}

/// An exec of this process's program, counted unless it runs in a child sharing our memory.
fn exec(call: impl FnOnce() -> c_int) -> c_int {
    if !own_process() {
        return call();
    }
    counted(call)
}

type ExecveFn = unsafe extern "C" fn(*const c_char, *const *const c_char, *const *const c_char) -> c_int;
type ExecvFn = unsafe extern "C" fn(*const c_char, *const *const c_char) -> c_int;

#[no_mangle]
pub unsafe extern "C" fn execve(path: *const c_char, argv: *const *const c_char, envp: *const *const c_char) -> c_int {
    let Some(f) = sys::libc_symbol_or_enosys(&REAL_EXECVE, c"execve") else {
        return -1;
    };
    // SAFETY: libc's execve; the caller's arguments passed through.
    exec(|| unsafe { std::mem::transmute::<usize, ExecveFn>(f)(path, argv, envp) })
}

#[no_mangle]
pub unsafe extern "C" fn execv(path: *const c_char, argv: *const *const c_char) -> c_int {
    let Some(f) = sys::libc_symbol_or_enosys(&REAL_EXECV, c"execv") else {
        return -1;
    };
    // SAFETY: libc's execv; the caller's arguments passed through.
    exec(|| unsafe { std::mem::transmute::<usize, ExecvFn>(f)(path, argv) })
}

#[no_mangle]
pub unsafe extern "C" fn execvp(file: *const c_char, argv: *const *const c_char) -> c_int {
    let Some(f) = sys::libc_symbol_or_enosys(&REAL_EXECVP, c"execvp") else {
        return -1;
    };
    // SAFETY: libc's execvp; the caller's arguments passed through.
    exec(|| unsafe { std::mem::transmute::<usize, ExecvFn>(f)(file, argv) })
}

#[no_mangle]
pub unsafe extern "C" fn execvpe(file: *const c_char, argv: *const *const c_char, envp: *const *const c_char) -> c_int {
    let Some(f) = sys::libc_symbol_or_enosys(&REAL_EXECVPE, c"execvpe") else {
        return -1;
    };
    // SAFETY: libc's execvpe; the caller's arguments passed through.
    exec(|| unsafe { std::mem::transmute::<usize, ExecveFn>(f)(file, argv, envp) })
}

#[no_mangle]
pub unsafe extern "C" fn fexecve(fd: c_int, argv: *const *const c_char, envp: *const *const c_char) -> c_int {
    let Some(f) = sys::libc_symbol_or_enosys(&REAL_FEXECVE, c"fexecve") else {
        return -1;
    };
    type F = unsafe extern "C" fn(c_int, *const *const c_char, *const *const c_char) -> c_int;
    // SAFETY: libc's fexecve; the caller's arguments passed through.
    exec(|| unsafe { std::mem::transmute::<usize, F>(f)(fd, argv, envp) })
}

#[no_mangle]
pub unsafe extern "C" fn execveat(
    dirfd: c_int,
    path: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
    flags: c_int,
) -> c_int {
    let Some(f) = sys::libc_symbol_or_enosys(&REAL_EXECVEAT, c"execveat") else {
        return -1;
    };
    type F = unsafe extern "C" fn(c_int, *const c_char, *const *const c_char, *const *const c_char, c_int) -> c_int;
    // SAFETY: libc's execveat; the caller's arguments passed through.
    exec(|| unsafe { std::mem::transmute::<usize, F>(f)(dirfd, path, argv, envp, flags) })
}

/// Called by `vfork` before the system call (an ordinary frame: the child does not exist yet).
extern "C" fn vfork_enter() {
    gate::enter_spawn();
}

/// Called by `vfork` in the parent once the child has exec'd or exited (the stack below the
/// caller's frame is the parent's again): the raw result, made libc's (-1 and errno).
extern "C" fn vfork_leave(raw: i64) -> i64 {
    gate::leave_spawn();
    if (-4095..0).contains(&raw) {
        sys::set_errno(-raw as i32);
        return -1;
    }
    raw
}

/// `vfork`, frameless (see the module's comment). At entry the stack holds the return address
/// alone (rsp = 8 mod 16); the calls are made 16-byte aligned. The system call keeps rdi; the
/// child's `ret` pops the address pushed back, and the parent pushes it again itself after the
/// call, whatever the child wrote there.
#[no_mangle]
#[unsafe(naked)]
pub unsafe extern "C" fn vfork() -> pid_t {
    std::arch::naked_asm!(
        "sub rsp, 8",
        "call {enter}",
        "add rsp, 8",
        "pop rdi",
        "mov eax, {nr}",
        "syscall",
        "push rdi",
        "test rax, rax",
        "jz 2f",
        "mov rdi, rax",
        "sub rsp, 8",
        "call {leave}",
        "add rsp, 8",
        "2:",
        "ret",
        enter = sym vfork_enter,
        leave = sym vfork_leave,
        nr = const libc::SYS_vfork,
    )
}

/// Before a variadic exec: waits at the gate unless in a child sharing our memory; makes sure
/// the trampolines have somewhere to jump.
extern "C" fn exec_wait() {
    resolve_variadic();
    if own_process() {
        gate::wait_open();
    }
}

/// The variadic execs' targets; a libc without one gets a function that fails with ENOSYS.
fn resolve_variadic() {
    for (cell, name) in [
        (&REAL_EXECL, c"execl"),
        (&REAL_EXECLE, c"execle"),
        (&REAL_EXECLP, c"execlp"),
    ] {
        if cell.load(Relaxed) == 0 && sys::libc_symbol(cell, name) == 0 {
            cell.store(no_exec as *const () as usize, Relaxed);
        }
    }
}

extern "C" fn no_exec() -> c_int {
    sys::set_errno(libc::ENOSYS);
    -1
}

/// A frameless trampoline for a variadic function: saves the argument registers (and al, the
/// count of vector registers a variadic call passes), calls `exec_wait`, restores them and jumps
/// to libc's function, which finds the stack and registers as its caller left them. Seven
/// pushes over the return address leave the stack 16-byte aligned for the call.
macro_rules! exec_trampoline {
    ($name:ident, $cell:ident) => {
        #[no_mangle]
        #[unsafe(naked)]
        pub unsafe extern "C" fn $name() -> c_int {
            std::arch::naked_asm!(
                "push rdi",
                "push rsi",
                "push rdx",
                "push rcx",
                "push r8",
                "push r9",
                "push rax",
                "call {wait}",
                "pop rax",
                "pop r9",
                "pop r8",
                "pop rcx",
                "pop rdx",
                "pop rsi",
                "pop rdi",
                "jmp qword ptr [rip + {real}]",
                wait = sym exec_wait,
                real = sym $cell,
            )
        }
    };
}

exec_trampoline!(execl, REAL_EXECL);
exec_trampoline!(execle, REAL_EXECLE);
exec_trampoline!(execlp, REAL_EXECLP);
