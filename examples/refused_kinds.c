/*
 * refused_kinds MODE: holds one thing ckpt refuses to checkpoint rather than bring back
 * changed, and prints "tick N" every 50 ms:
 *   memfd-huge   a huge-page memfd (MFD_HUGETLB) held through an fd
 *   fanotify     a fanotify group with an event queued, not read
 *   aio          an AIO context (io_setup) with a request in flight: a poll of a pipe
 *                nobody writes (prints "aio context 0x…")
 *   aio-unseen   an AIO context made by the program's own system call instruction, which
 *                the interposer does not see (prints "aio context 0x…")
 *   aio-child    an AIO context, and a child forked since, which maps its ring but has no
 *                context (prints "aio context 0x…" and "child PID")
 *   pidfd-out    a pidfd of its parent, which is outside the checkpoint
 *   proc-out     /proc/PPID/status of its parent, outside the checkpoint
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/aio_abi.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/fanotify.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    const char *mode = argc > 1 ? argv[1] : "";
    int fd = -1;
    if (!strcmp(mode, "memfd-huge")) {
        fd = memfd_create("huge", MFD_CLOEXEC | MFD_HUGETLB);
    } else if (!strcmp(mode, "fanotify")) {
        fd = fanotify_init(FAN_CLASS_NOTIF | FAN_REPORT_FID, O_RDONLY);
        char dir[64];
        snprintf(dir, sizeof dir, "/tmp/ckpt-fanotify-%d", (int)getpid());
        if (fd >= 0 && (mkdir(dir, 0700) || fanotify_mark(fd, FAN_MARK_ADD, FAN_DELETE | FAN_ONDIR, AT_FDCWD, "/tmp") ||
                        rmdir(dir)))
            fd = -1;
    } else if (!strcmp(mode, "aio")) {
        aio_context_t ctx = 0;
        static int never[2];
        static struct iocb cb;
        struct iocb *p = &cb;
        cb.aio_lio_opcode = IOCB_CMD_POLL;
        cb.aio_buf = POLLIN;
        if (pipe(never) == 0 && syscall(SYS_io_setup, 8, &ctx) == 0) {
            cb.aio_fildes = never[0];
            fd = syscall(SYS_io_submit, ctx, 1, &p) == 1 ? 0 : -1;
        }
        printf("aio context %#llx\n", (unsigned long long)ctx);
    } else if (!strcmp(mode, "aio-child")) {
        aio_context_t ctx = 0;
        fd = (int)syscall(SYS_io_setup, 8, &ctx);
        printf("aio context %#llx\n", (unsigned long long)ctx);
        pid_t kid = fork();
        if (kid == 0) {
            for (;;) pause();
        }
        printf("child %d\n", (int)kid);
    } else if (!strcmp(mode, "aio-unseen")) {
        aio_context_t ctx = 0;
        long r;
        __asm__ volatile("syscall" : "=a"(r) : "0"((long)SYS_io_setup), "D"(8L), "S"(&ctx) : "rcx", "r11", "memory");
        fd = (int)r;
        printf("aio context %#llx\n", (unsigned long long)ctx);
    } else if (!strcmp(mode, "pidfd-out")) {
        fd = (int)syscall(SYS_pidfd_open, getppid(), 0);
    } else if (!strcmp(mode, "proc-out")) {
        char path[64];
        snprintf(path, sizeof path, "/proc/%d/status", (int)getppid());
        fd = open(path, O_RDONLY);
    } else {
        fprintf(stderr, "usage: refused_kinds memfd-huge|fanotify|aio|aio-unseen|aio-child|pidfd-out|proc-out\n");
        return 2;
    }
    if (fd < 0) {
        perror(mode);
        return 2;
    }
    printf("holding %s (%d) pid %d\n", mode, fd, (int)getpid());
    struct timespec ts = {0, 50000000L};
    for (unsigned long long n = 1;; n++) {
        printf("tick %llu\n", n);
        nanosleep(&ts, NULL);
    }
}
