//! What the kernel does with async write-protect on shared memory, which ckptd's tracking of
//! shared memory (`dump::shared_dirty`) is built on: protection lives in each process's page
//! tables, so a write through another process's mapping of the same memory does not show in
//! this one's; discarding a page of this mapping (`MADV_DONTNEED`) keeps its protection and
//! is no write; punching the page out of the memory (`MADV_REMOVE`) changes the content
//! without showing as a write either; a write through /proc/PID/mem does show.

use super::{take_written, written};
use crate::uffd;
use std::fs::File;
use std::os::fd::AsFd;

const PAGE: u64 = 4096;

fn map_shared_anon(pages: u64) -> u64 {
    // SAFETY: a fresh shared anonymous mapping; unmapped by the test.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            (pages * PAGE) as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED);
    p as u64
}

fn poke(addr: u64, v: u8) {
    // SAFETY: inside a mapping of the test.
    unsafe { std::ptr::write_volatile(addr as *mut u8, v) }
}

fn peek(addr: u64) -> u8 {
    // SAFETY: inside a mapping of the test.
    unsafe { std::ptr::read_volatile(addr as *const u8) }
}

#[test]
fn shared_memory_protection_is_per_page_table() {
    let n = 16;
    let b = map_shared_anon(n);
    for p in [0, 5, 7] {
        poke(b + p * PAGE, 1);
    }
    let Ok(fd) = uffd::open(0, uffd::FEATURE_WP_ASYNC | uffd::FEATURE_WP_UNPOPULATED) else {
        eprintln!("SKIPPED: no userfaultfd with async write-protect here");
        return;
    };
    uffd::register_wp(fd.as_fd(), b, n * PAGE).unwrap();
    let pagemap = File::open("/proc/self/pagemap").unwrap();
    let end = b + n * PAGE;
    // Registered, never protected: everything reads as written, holes too.
    assert_eq!(written(&pagemap, b, end).unwrap(), vec![(b, end)]);
    take_written(&pagemap, b, end).unwrap();
    assert!(written(&pagemap, b, end).unwrap().is_empty());
    // A write here shows; a read does not.
    poke(b + PAGE, 2);
    let _ = peek(b + 2 * PAGE);
    assert_eq!(written(&pagemap, b, end).unwrap(), vec![(b + PAGE, b + 2 * PAGE)]);
    // A child's write through its own page tables does not show here.
    // SAFETY: the child only writes one byte and exits.
    let child = unsafe { libc::fork() };
    if child == 0 {
        poke(b + 3 * PAGE, 3);
        // SAFETY: ends the child at once.
        unsafe { libc::_exit(0) };
    }
    let mut status = 0;
    // SAFETY: waits for our own child.
    unsafe { libc::waitpid(child, &mut status, 0) };
    assert_eq!(peek(b + 3 * PAGE), 3, "the child's write is in the memory");
    assert_eq!(written(&pagemap, b, end).unwrap(), vec![(b + PAGE, b + 2 * PAGE)]);
    // Dropping a page from this mapping keeps it protected: not a write, content kept.
    // SAFETY: discards one page of our mapping.
    assert_eq!(
        unsafe { libc::madvise((b + 5 * PAGE) as *mut _, PAGE as usize, libc::MADV_DONTNEED) },
        0
    );
    assert_eq!(peek(b + 5 * PAGE), 1);
    // Punching a page out of the memory changes it without a write.
    // SAFETY: frees one page of the memory.
    assert_eq!(
        unsafe { libc::madvise((b + 7 * PAGE) as *mut _, PAGE as usize, libc::MADV_REMOVE) },
        0
    );
    assert_eq!(peek(b + 7 * PAGE), 0);
    // A write through /proc/self/mem (as by a debugger, or process_vm_writev) shows.
    let mem = std::fs::OpenOptions::new().write(true).open("/proc/self/mem").unwrap();
    std::os::unix::fs::FileExt::write_at(&mem, &[4], b + 10 * PAGE).unwrap();
    assert_eq!(
        take_written(&pagemap, b, end).unwrap(),
        vec![(b + PAGE, b + 2 * PAGE), (b + 10 * PAGE, b + 11 * PAGE)]
    );
    // SAFETY: the mapping made above.
    unsafe { libc::munmap(b as *mut _, (n * PAGE) as usize) };
}
