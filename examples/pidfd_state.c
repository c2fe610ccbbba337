/*
 * pidfd_state: holds pidfds of itself, of a live child (PIDFD_NONBLOCK) and of a child that
 * has exited and is not reaped (a zombie, exit status 7). When asked it checks each still
 * refers to the same process: the pid its fdinfo names, signals sent through it, the child's
 * exit status read through it (waitid P_PIDFD, WNOWAIT), poll (the zombie's is readable, the
 * live child's is not), the non-blocking wait (EAGAIN), the flags, and an epoll watching the
 * live child's pidfd (still registered: EPOLL_CTL_MOD works, and it reports nothing).
 *
 * Prints "tick N" every 50 ms; on SIGUSR1 prints "state ok" or "INVARIANT <what>".
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef PIDFD_NONBLOCK
#define PIDFD_NONBLOCK O_NONBLOCK
#endif
#ifndef P_PIDFD
#define P_PIDFD 3
#endif

static volatile sig_atomic_t asked;
static void on_usr1(int s) { (void)s; asked = 1; }

static int bad;
static void invariant(const char *what, long a, long b)
{
    printf("INVARIANT %s: got %ld, want %ld\n", what, a, b);
    bad = 1;
}

static int self_fd, live_fd, zombie_fd, ep;
static pid_t live, zombie;

static long fdinfo_pid(int fd)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/self/fdinfo/%d", fd);
    FILE *f = fopen(path, "r");
    if (!f) return -2;
    long pid = -3;
    while (fgets(buf, sizeof buf, f))
        if (!strncmp(buf, "Pid:", 4)) pid = strtol(buf + 4, NULL, 10);
    fclose(f);
    return pid;
}

static void check(void)
{
    bad = 0;
    if (fdinfo_pid(self_fd) != getpid()) invariant("self pidfd's pid", fdinfo_pid(self_fd), getpid());
    if (fdinfo_pid(live_fd) != live) invariant("live child's pidfd's pid", fdinfo_pid(live_fd), live);
    if (fdinfo_pid(zombie_fd) != zombie) invariant("zombie's pidfd's pid", fdinfo_pid(zombie_fd), zombie);
    if (!(fcntl(live_fd, F_GETFL) & O_NONBLOCK)) invariant("PIDFD_NONBLOCK", 0, 1);
    if (fcntl(self_fd, F_GETFL) & O_NONBLOCK) invariant("self pidfd blocking", 1, 0);
    if (!(fcntl(self_fd, F_GETFD) & FD_CLOEXEC)) invariant("pidfd FD_CLOEXEC", 0, 1);
    if (syscall(SYS_pidfd_send_signal, live_fd, 0, NULL, 0) != 0) invariant("signal the live child", errno, 0);
    if (syscall(SYS_pidfd_send_signal, self_fd, 0, NULL, 0) != 0) invariant("signal self", errno, 0);
    siginfo_t si;
    memset(&si, 0, sizeof si);
    errno = 0;
    if (waitid(P_PIDFD, live_fd, &si, WEXITED) != -1 || errno != EAGAIN)
        invariant("non-blocking wait on the live child (errno)", errno, EAGAIN);
    memset(&si, 0, sizeof si);
    if (waitid(P_PIDFD, zombie_fd, &si, WEXITED | WNOWAIT) != 0 || si.si_pid != zombie || si.si_status != 7)
        invariant("the zombie's status through its pidfd", si.si_status, 7);
    struct pollfd p[2] = {{live_fd, POLLIN, 0}, {zombie_fd, POLLIN, 0}};
    if (poll(p, 2, 0) != 1 || p[0].revents || !(p[1].revents & POLLIN))
        invariant("poll: only the zombie's pidfd is readable", p[1].revents, POLLIN);
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 7};
    if (epoll_ctl(ep, EPOLL_CTL_MOD, live_fd, &ev) != 0) invariant("the epoll still watches the live pidfd (errno)", errno, 0);
    if (epoll_wait(ep, &ev, 1, 0) != 0) invariant("epoll events for a live child", 1, 0);
    printf(bad ? "state bad\n" : "state ok\n");
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    live = fork();
    if (live == 0) {
        for (;;) pause();
    }
    zombie = fork();
    if (zombie == 0) _exit(7);
    siginfo_t si;
    waitid(P_PID, zombie, &si, WEXITED | WNOWAIT);
    self_fd = syscall(SYS_pidfd_open, getpid(), 0);
    live_fd = syscall(SYS_pidfd_open, live, PIDFD_NONBLOCK);
    zombie_fd = syscall(SYS_pidfd_open, zombie, 0);
    ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 7};
    if (self_fd < 0 || live_fd < 0 || zombie_fd < 0 || ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, live_fd, &ev)) {
        perror("pidfd_open");
        return 2;
    }
    signal(SIGUSR1, on_usr1);
    printf("live %d zombie %d pid %d\n", (int)live, (int)zombie, (int)getpid());
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
