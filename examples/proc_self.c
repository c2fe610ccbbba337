/*
 * proc_self: holds fds on /proc files of itself and of its child, opened by fd and by pid:
 * /proc/self/status (read partly: its offset), /proc/<pid>/stat, /proc/<child>/stat, the
 * directory /proc/self/fd, /proc/self/mem, /proc/self/task/<tid>/comm. When asked, it checks
 * each still describes the same (live) process: the pid in status and stat, the child's pid and
 * state, its own fds listed through the directory fd, a variable read through mem.
 *
 * Prints "tick N" every 50 ms; on SIGUSR1 prints "state ok" or "INVARIANT <what>".
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t asked;
static void on_usr1(int s) { (void)s; asked = 1; }

static int bad;
static void invariant(const char *what, long a, long b)
{
    printf("INVARIANT %s: got %ld, want %ld\n", what, a, b);
    bad = 1;
}

static int status_fd, stat_fd, kid_fd, fd_dir, mem_fd, comm_fd;
static pid_t kid;
static volatile long secret = 0x5ec7e7;

static long pid_in(int fd, const char *key)
{
    char buf[4096];
    ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
    if (n <= 0) return -errno;
    buf[n] = 0;
    if (!key) return strtol(buf, NULL, 10);
    char *p = strstr(buf, key);
    return p ? strtol(p + strlen(key), NULL, 10) : -1;
}

static void check(void)
{
    bad = 0;
    if (lseek(status_fd, 0, SEEK_CUR) != 10) invariant("status offset", lseek(status_fd, 0, SEEK_CUR), 10);
    if (pid_in(status_fd, "\nPid:\t") != getpid()) invariant("Pid in /proc/self/status", pid_in(status_fd, "\nPid:\t"), getpid());
    if (pid_in(stat_fd, NULL) != getpid()) invariant("pid in /proc/PID/stat", pid_in(stat_fd, NULL), getpid());
    if (pid_in(kid_fd, NULL) != kid) invariant("pid in /proc/CHILD/stat", pid_in(kid_fd, NULL), kid);
    char buf[4096];
    ssize_t n = pread(kid_fd, buf, sizeof buf - 1, 0);
    buf[n > 0 ? n : 0] = 0;
    char *st = strrchr(buf, ')');
    if (!st || st[2] == 'Z' || st[2] == 'X') invariant("child alive", st ? st[2] : 0, 'S');
    /* The fd directory lists our own fds, the mem fd among them. */
    int seen = 0;
    int dup_dir = dup(fd_dir);
    lseek(dup_dir, 0, SEEK_SET);
    DIR *d = fdopendir(dup_dir);
    struct dirent *e;
    while (d && (e = readdir(d)))
        if (atoi(e->d_name) == mem_fd) seen = 1;
    if (d) closedir(d);
    if (!seen) invariant("mem fd listed through the /proc/self/fd dir fd", seen, 1);
    long v = 0;
    if (pread(mem_fd, &v, sizeof v, (off_t)(unsigned long)&secret) != sizeof v || v != secret)
        invariant("a variable read through /proc/self/mem", v, secret);
    n = pread(comm_fd, buf, sizeof buf, 0);
    if (n != 10 || memcmp(buf, "procself!\n", 10)) invariant("task comm", n, 10);
    printf(bad ? "state bad\n" : "state ok\n");
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    prctl(PR_SET_NAME, "procself!");
    kid = fork();
    if (kid == 0) {
        for (;;) pause();
    }
    char path[64];
    status_fd = open("/proc/self/status", O_RDONLY);
    snprintf(path, sizeof path, "/proc/%d/stat", (int)getpid());
    stat_fd = open(path, O_RDONLY);
    snprintf(path, sizeof path, "/proc/%d/stat", (int)kid);
    kid_fd = open(path, O_RDONLY);
    fd_dir = open("/proc/self/fd", O_RDONLY | O_DIRECTORY);
    mem_fd = open("/proc/self/mem", O_RDWR);
    snprintf(path, sizeof path, "/proc/self/task/%d/comm", (int)getpid());
    comm_fd = open(path, O_RDONLY);
    char buf[10];
    if (status_fd < 0 || stat_fd < 0 || kid_fd < 0 || fd_dir < 0 || mem_fd < 0 || comm_fd < 0 ||
        read(status_fd, buf, 10) != 10) {
        perror("open /proc");
        return 2;
    }
    signal(SIGUSR1, on_usr1);
    printf("child %d pid %d\n", (int)kid, (int)getpid());
    struct timespec ts = {0, 50000000L};
    for (unsigned long long n = 1;; n++) {
        if (asked) {
            asked = 0;
            check();
        }
        printf("tick %llu\n", n);
        nanosleep(&ts, NULL);
    }
}
