//! The last stage of a restore: a few hundred bytes of position-independent machine code,
//! copied into a region that neither the restorer nor the checkpointed program uses. It runs
//! a list of prepared operations (mostly raw system calls with every argument computed in
//! advance): unmap the restorer, move the vdso, map the program's memory and read its pages,
//! restore kernel state, create the threads, and finally `rt_sigreturn` each thread into the
//! signal frame it was parked on. It needs no stack, heap or TLS of its own, so nothing of the
//! restorer is left that it depends on.
//!
//! Failure record written to the status fd (layout in `ckpt_proto::restore_status`):
//! `TAG_OP`, op index, syscall result, syscall number (or 1000 + op kind), first argument.

use std::arch::global_asm;

/// One operation, 64 bytes: the layout the assembly below reads.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct Op {
    pub kind: u32,
    pub flags: u32,
    /// Syscall number for `SYSCALL`.
    pub nr: u64,
    pub args: [u64; 6],
}

/// `args[0..6]` are the syscall's arguments.
pub const SYSCALL: u32 = 1;
/// `*(args[0] as *mut u64) = args[1]`.
pub const POKE: u32 = 2;
/// clone3 with the `clone_args` at `args[0]` (size `args[1]`); the child continues at op
/// index `args[2]`, the parent with the next op.
pub const THREAD: u32 = 3;
/// `rsp = args[0]; rt_sigreturn`.
pub const SIGRETURN: u32 = 4;
/// `*(args[0] as *mut u64) += args[1]`, atomically.
pub const ADD: u32 = 5;
/// Waits until `*(args[0] as *const u64) >= args[1]`, spinning; between looks, a
/// `sched_yield` when `args[2]` is not 0, else none: a thread whose seccomp filters another
/// thread may be installing makes no system call while it waits (see `crate::seccomp`).
pub const WAIT: u32 = 6;

/// The result of this op does not matter.
pub const IGNORE_ERROR: u32 = 1;
/// The syscall must return exactly `args[2]` (a full read).
pub const EXPECT_ARG2: u32 = 2;

/// Passed in rdi to the blob.
#[repr(C)]
pub struct Header {
    pub ops: u64,
    pub main_stack_top: u64,
    pub status_fd: u64,
    /// Where a failing op composes its record before writing it (the code page is read-only).
    pub scratch: [u64; 5],
}

global_asm!(
    r#"
    .pushsection .text.ckpt_blob, "ax", @progbits
    .balign 4096
    .globl ckpt_blob_start
    .globl ckpt_blob_end
ckpt_blob_start:
    mov r12, rdi
    mov rsp, [r12 + 8]
    mov r13, [r12]
    xor r14, r14
2:
    mov rbx, r14
    shl rbx, 6
    add rbx, r13
    mov eax, dword ptr [rbx]
    cmp eax, 1
    je 10f
    cmp eax, 2
    je 20f
    cmp eax, 3
    je 30f
    cmp eax, 4
    je 40f
    cmp eax, 5
    je 50f
    cmp eax, 6
    je 60f
    mov rax, -22
    jmp 90f
10:
    mov rax, [rbx + 8]
    mov rdi, [rbx + 16]
    mov rsi, [rbx + 24]
    mov rdx, [rbx + 32]
    mov r10, [rbx + 40]
    mov r8, [rbx + 48]
    mov r9, [rbx + 56]
    syscall
    mov ecx, dword ptr [rbx + 4]
    test ecx, 1
    jnz 19f
    cmp rax, -4095
    jae 90f
    test ecx, 2
    jz 19f
    cmp rax, [rbx + 32]
    je 19f
    mov rax, -5
    jmp 90f
19:
    inc r14
    jmp 2b
20:
    mov rdi, [rbx + 16]
    mov rsi, [rbx + 24]
    mov [rdi], rsi
    inc r14
    jmp 2b
30:
    mov eax, 435
    mov rdi, [rbx + 16]
    mov rsi, [rbx + 24]
    syscall
    test rax, rax
    jz 35f
    cmp rax, -4095
    jae 90f
    inc r14
    jmp 2b
35:
    mov r14, [rbx + 32]
    jmp 2b
40:
    mov rsp, [rbx + 16]
    mov eax, 15
    syscall
    jmp 90f
50:
    mov rdi, [rbx + 16]
    mov rsi, [rbx + 24]
    lock add [rdi], rsi
    inc r14
    jmp 2b
60:
    mov rdi, [rbx + 16]
    mov rax, [rdi]
    cmp rax, [rbx + 24]
    jae 69f
    pause
    cmp qword ptr [rbx + 32], 0
    je 60b
    mov eax, 24
    syscall
    jmp 60b
69:
    inc r14
    jmp 2b
90:
    mov r15, rax
    lea rsi, [r12 + 24]
    mov qword ptr [rsi], 2
    mov [rsi + 8], r14
    mov [rsi + 16], r15
    mov eax, dword ptr [rbx]
    cmp eax, 1
    jne 91f
    mov rax, [rbx + 8]
    jmp 92f
91:
    add rax, 1000
92:
    mov [rsi + 24], rax
    mov rax, [rbx + 16]
    mov [rsi + 32], rax
    mov rdi, [r12 + 16]
    mov edx, 40
    mov eax, 1
    syscall
    mov edi, 111
    mov eax, 231
    syscall
    ud2
ckpt_blob_end:
    .popsection
"#
);

extern "C" {
    static ckpt_blob_start: u8;
    static ckpt_blob_end: u8;
}

/// The machine code to copy.
pub fn code() -> &'static [u8] {
    // SAFETY: both symbols are defined in the assembly above, in this order, in one section.
    unsafe {
        let start = &raw const ckpt_blob_start;
        let end = &raw const ckpt_blob_end;
        std::slice::from_raw_parts(start, end.offset_from(start) as usize)
    }
}
