/*
 * signalfd_state: blocks SIGUSR2, SIGWINCH and SIGRTMIN+3, holds two signalfds for them and
 * keeps all three pending, and checks, when asked, that the signalfds read exactly them:
 *   one  reads SIGWINCH only (blocking, close-on-exec);
 *   all  reads the three (non-blocking): SIGUSR2 sent to the process, SIGRTMIN+3 to the thread;
 *        then nothing (EAGAIN), and nothing stays pending.
 *
 * Prints "tick N" every 50 ms. On SIGUSR1 it checks everything (reading the signals), prints
 * "state ok" or "state bad" after "INVARIANT <what>" lines, and raises the signals again.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/signalfd.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t asked;
static void on_usr1(int s) { (void)s; asked = 1; }

static int one, all;
static int bad;

static void invariant(const char *what, long long a, long long b)
{
    printf("INVARIANT %s: got %lld, want %lld\n", what, a, b);
    bad = 1;
}

static void set_up(void)
{
    if (kill(getpid(), SIGUSR2) < 0) invariant("kill SIGUSR2", errno, 0);
    if (kill(getpid(), SIGWINCH) < 0) invariant("kill SIGWINCH", errno, 0);
    if (syscall(SYS_tgkill, getpid(), gettid(), SIGRTMIN + 3) < 0) invariant("tgkill SIGRTMIN+3", errno, 0);
}

/* The signal number a read returns, or -errno. */
static int next(int fd)
{
    struct signalfd_siginfo si;
    if (read(fd, &si, sizeof si) != (ssize_t)sizeof si) return -errno;
    return (int)si.ssi_signo;
}

static void check(void)
{
    bad = 0;
    struct pollfd p = {one, POLLIN, 0};
    if (poll(&p, 1, 1000) != 1) invariant("one: readable", 0, 1);
    else {
        int s = next(one);
        if (s != SIGWINCH) invariant("one: signal", s, SIGWINCH);
    }
    int seen_usr2 = 0, seen_rt = 0;
    for (int k = 0; k < 2; k++) {
        int s = next(all);
        if (s == SIGUSR2) seen_usr2++;
        else if (s == SIGRTMIN + 3) seen_rt++;
        else invariant("all: signal", s, k == 0 ? SIGUSR2 : SIGRTMIN + 3);
    }
    if (seen_usr2 != 1) invariant("all: SIGUSR2 read", seen_usr2, 1);
    if (seen_rt != 1) invariant("all: SIGRTMIN+3 read", seen_rt, 1);
    int s = next(all);
    if (s != -EAGAIN) invariant("all: nothing more (signal or -errno)", s, -EAGAIN);
    sigset_t pend;
    sigpending(&pend);
    if (sigismember(&pend, SIGUSR2) || sigismember(&pend, SIGWINCH) || sigismember(&pend, SIGRTMIN + 3))
        invariant("signals still pending after reading them", 1, 0);
    sigset_t cur;
    sigprocmask(SIG_BLOCK, NULL, &cur);
    if (!sigismember(&cur, SIGUSR2) || !sigismember(&cur, SIGWINCH) || !sigismember(&cur, SIGRTMIN + 3))
        invariant("signals blocked", 0, 1);
    if (!(fcntl(all, F_GETFL) & O_NONBLOCK)) invariant("all: O_NONBLOCK", 0, 1);
    if (fcntl(all, F_GETFD) & FD_CLOEXEC) invariant("all: FD_CLOEXEC", 1, 0);
    if (fcntl(one, F_GETFL) & O_NONBLOCK) invariant("one: O_NONBLOCK", 1, 0);
    if (!(fcntl(one, F_GETFD) & FD_CLOEXEC)) invariant("one: FD_CLOEXEC", 0, 1);
    printf(bad ? "state bad\n" : "state ok\n");
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR2);
    sigaddset(&set, SIGWINCH);
    sigaddset(&set, SIGRTMIN + 3);
    if (sigprocmask(SIG_BLOCK, &set, NULL) < 0) {
        perror("sigprocmask");
        return 2;
    }
    all = signalfd(-1, &set, SFD_NONBLOCK);
    sigemptyset(&set);
    sigaddset(&set, SIGWINCH);
    one = signalfd(-1, &set, SFD_CLOEXEC);
    if (one < 0 || all < 0) {
        perror("signalfd");
        return 2;
    }
    signal(SIGUSR1, on_usr1);
    set_up();
    printf("fds %d %d pid %d\n", one, all, (int)getpid());
    struct timespec d = {0, 50000000L};
    for (unsigned long long n = 1;; n++) {
        if (asked) {
            asked = 0;
            check();
            set_up();
        }
        printf("tick %llu\n", n);
        nanosleep(&d, NULL);
    }
}
