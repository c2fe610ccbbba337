/*
 * tree_state: a small process tree whose relations the program checks itself.
 *
 * The parent P forks:
 * - z1, which exits with code 3 at once, and z2, which is killed by SIGTERM: P does not reap
 *   them, so they stay zombies (P looks at them with waitid(WNOWAIT), which leaves them so);
 * - k, which leads a process group of its own and forks g (in k's group, with SIGTERM as its
 *   parent-death signal); k and g answer P's questions through pipes with their getppid,
 *   getpgrp, getsid and parent-death signal.
 * P counts the SIGCHLDs it gets once both have ended; a restore must not add any.
 * Prints "tick N" every 100 ms. On SIGUSR1 it checks: z1 and z2 are still its unreaped
 * children with the same statuses, k's parent is P and k leads its group, g's parent is k and
 * g is in k's group, all are in P's session, and no SIGCHLD came since; then prints
 * "state ok" or INVARIANT lines and "state bad".
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t asked, chld;

static void on_usr1(int s)
{
    (void)s;
    asked = 1;
}

static void on_chld(int s)
{
    (void)s;
    chld++;
}

struct rel {
    int ppid, pgrp, sid, pdeath;
};

static struct rel me(void)
{
    struct rel r = { getppid(), getpgrp(), getsid(0), 0 };
    prctl(PR_GET_PDEATHSIG, &r.pdeath);
    return r;
}

static int full_read(int fd, void *buf, size_t n)
{
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, (char *)buf + got, n - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        got += (size_t)r;
    }
    return 0;
}

/* Answers each byte on `ask` with its own relations (and, for k, g's after them). */
static void answer_loop(int ask, int tell, int g_ask, int g_tell)
{
    char c;
    while (full_read(ask, &c, 1) == 0) {
        struct rel r[2] = { me(), { 0, 0, 0, 0 } };
        if (g_ask >= 0) {
            if (write(g_ask, "?", 1) != 1 || full_read(g_tell, &r[1], sizeof r[1]) != 0)
                r[1].ppid = -1;
        }
        /* g answers for itself only, k for both. */
        size_t n = g_ask >= 0 ? sizeof r : sizeof r[0];
        if (write(tell, r, n) != (ssize_t)n)
            _exit(1);
    }
    _exit(0);
}

static int ok = 1;

static void bad(const char *what, long got, long want)
{
    printf("INVARIANT %s: %ld, expected %ld\n", what, got, want);
    ok = 0;
}

static void zombie_is(pid_t pid, int code, int status, const char *name)
{
    siginfo_t si;
    memset(&si, 0, sizeof si);
    if (waitid(P_PID, (id_t)pid, &si, WEXITED | WNOHANG | WNOWAIT) != 0) {
        printf("INVARIANT %s (%d) is not an unreaped child: %s\n", name, pid, strerror(errno));
        ok = 0;
        return;
    }
    if (si.si_pid != pid)
        bad("pid of the exited child", si.si_pid, pid);
    if (si.si_code != code)
        bad("how the exited child ended (si_code)", si.si_code, code);
    if (si.si_status != status)
        bad("the exited child's status", si.si_status, status);
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_chld;
    sa.sa_flags = SA_RESTART;
    sigaction(SIGCHLD, &sa, NULL);
    sa.sa_handler = on_usr1;
    sigaction(SIGUSR1, &sa, NULL);

    pid_t z1 = fork();
    if (z1 == 0)
        _exit(3);
    pid_t z2 = fork();
    if (z2 == 0) {
        signal(SIGTERM, SIG_DFL);
        raise(SIGTERM);
        _exit(99);
    }
    int ask[2], tell[2];
    if (pipe(ask) || pipe(tell))
        return 1;
    pid_t k = fork();
    if (k == 0) {
        setpgid(0, 0);
        int gask[2], gtell[2];
        if (pipe(gask) || pipe(gtell))
            _exit(1);
        pid_t g = fork();
        if (g == 0) {
            prctl(PR_SET_PDEATHSIG, SIGTERM);
            answer_loop(gask[0], gtell[1], -1, -1);
        }
        answer_loop(ask[0], tell[1], gask[1], gtell[0]);
    }
    /* Both zombies are there and their SIGCHLDs came before the first tick (two may merge
     * into one: SIGCHLD is not queued, so they are not counted to know). */
    for (int i = 0; i < 2; i++) {
        pid_t z = i ? z2 : z1;
        siginfo_t si;
        memset(&si, 0, sizeof si);
        while (waitid(P_PID, (id_t)z, &si, WEXITED | WNOHANG | WNOWAIT) != 0 || si.si_pid != z)
            usleep(1000);
    }
    usleep(50 * 1000);
    int seen = chld;
    setpgid(k, k);
    printf("tree parent %d child %d zombies %d %d\n", getpid(), k, z1, z2);

    for (unsigned long n = 1;; n++) {
        printf("tick %lu\n", n);
        struct timespec ts = { 0, 100 * 1000 * 1000 };
        while (nanosleep(&ts, &ts) != 0 && !asked)
            ;
        if (!asked)
            continue;
        asked = 0;
        ok = 1;
        zombie_is(z1, CLD_EXITED, 3, "z1");
        zombie_is(z2, CLD_KILLED, SIGTERM, "z2");
        struct rel r[2];
        if (write(ask[1], "?", 1) != 1 || full_read(tell[0], r, sizeof r) != 0) {
            printf("INVARIANT child %d does not answer\n", k);
            ok = 0;
        } else {
            if (r[0].ppid != getpid())
                bad("child's parent", r[0].ppid, getpid());
            if (r[0].pgrp != k)
                bad("child's group", r[0].pgrp, k);
            if (r[0].sid != getsid(0))
                bad("child's session", r[0].sid, getsid(0));
            if (r[1].ppid != k)
                bad("grandchild's parent", r[1].ppid, k);
            if (r[1].pgrp != k)
                bad("grandchild's group", r[1].pgrp, k);
            if (r[1].sid != getsid(0))
                bad("grandchild's session", r[1].sid, getsid(0));
            if (r[1].pdeath != SIGTERM)
                bad("grandchild's parent-death signal", r[1].pdeath, SIGTERM);
        }
        if (getpgid(k) != k)
            bad("getpgid(child)", getpgid(k), k);
        if (chld != seen)
            bad("SIGCHLDs received", chld, seen);
        printf("state %s\n", ok ? "ok" : "bad");
    }
}
