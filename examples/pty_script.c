/*
 * pty_script: like script(1), a parent holds the master of a pseudo-terminal and a forked
 * child has its slave as stdin, stdout and stderr (default termios but echo off: canonical,
 * output \n made \r\n). The parent keeps three "ping N" lines in flight; the child answers
 * each with "pong N TTYNAME" and checks the pings come in order. The parent checks the
 * pongs come in order and name the slave.
 *
 * Neither waits for nor asks about the other (no wait(), no getppid()), and the slave is not
 * the child's controlling terminal: each may be restored on its own.
 *
 * The parent prints "child PID", "tick N" every 50 ms; on SIGUSR1 it prints "state ok" when
 * everything was in order and pongs kept coming since the last check, else INVARIANT lines
 * and "state bad". The child reports a ping out of order as a line "INVARIANT child …" on
 * the terminal, which the parent passes on.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t asked;
static void on_usr1(int s) { (void)s; asked = 1; }

static void die(const char *what)
{
    perror(what);
    exit(2);
}

static void child_loop(void)
{
    char line[256];
    unsigned long long want = 1;
    const char *me = ttyname(0);
    setvbuf(stdout, NULL, _IOLBF, 0);
    while (fgets(line, sizeof line, stdin)) {
        unsigned long long n;
        if (sscanf(line, "ping %llu", &n) != 1) {
            printf("INVARIANT child: a line that is no ping: %s", line);
            continue;
        }
        if (n != want) printf("INVARIANT child ping order: got %llu, want %llu\n", n, want);
        want = n + 1;
        printf("pong %llu %s\n", n, me ? me : "(no tty)");
    }
    exit(0);
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    int m = open("/dev/ptmx", O_RDWR | O_NOCTTY);
    if (m < 0) die("ptmx");
    int zero = 0, index = -1;
    if (ioctl(m, TIOCSPTLCK, &zero) < 0 || ioctl(m, TIOCGPTN, &index) < 0) die("unlock");
    char name[64];
    snprintf(name, sizeof name, "/dev/pts/%d", index);
    int s = open(name, O_RDWR | O_NOCTTY);
    if (s < 0) die(name);
    /* Echo off before the child runs (as `stty -echo` would): an echo and the child's output
     * may interleave within a line, which real terminals do but this check cannot follow. */
    struct termios t;
    if (tcgetattr(m, &t) < 0) die("tcgetattr");
    t.c_lflag &= ~(ECHO | ECHOE | ECHOK | ECHONL);
    if (tcsetattr(m, TCSANOW, &t) < 0) die("tcsetattr");
    pid_t child = fork();
    if (child < 0) die("fork");
    if (child == 0) {
        close(m);
        dup2(s, 0);
        dup2(s, 1);
        dup2(s, 2);
        if (s > 2) close(s);
        child_loop();
    }
    close(s);
    signal(SIGUSR1, on_usr1);
    printf("child %d pty %s\n", (int)child, name);

    unsigned long long sent = 0, ponged = 0, at_check = 0;
    int bad = 0, checking = 0;
    time_t check_by = 0;
    char buf[4096];
    size_t have = 0;
    struct timespec last_tick, now;
    clock_gettime(CLOCK_MONOTONIC, &last_tick);
    for (unsigned long long tick = 1;;) {
        while (sent < ponged + 3) {
            char ping[64];
            int k = snprintf(ping, sizeof ping, "ping %llu\n", ++sent);
            if (write(m, ping, (size_t)k) != k) die("write ping");
        }
        struct pollfd p = {m, POLLIN, 0};
        int r = poll(&p, 1, 20);
        if (r > 0) {
            ssize_t n = read(m, buf + have, sizeof buf - 1 - have);
            if (n < 0 && errno != EINTR && errno != EAGAIN) die("read master");
            if (n > 0) have += (size_t)n;
        }
        char *nl;
        while ((nl = memchr(buf, '\n', have))) {
            *nl = 0;
            if (nl > buf && nl[-1] == '\r') nl[-1] = 0;
            unsigned long long k;
            char tty[64];
            if (sscanf(buf, "pong %llu %63s", &k, tty) == 2) {
                if (k != ponged + 1) {
                    printf("INVARIANT pong order: got %llu, want %llu\n", k, ponged + 1);
                    bad = 1;
                }
                if (strcmp(tty, name)) {
                    printf("INVARIANT child's ttyname: got %s, want %s\n", tty, name);
                    bad = 1;
                }
                ponged = k;
            } else {
                printf("%s\n", buf[0] ? buf : "INVARIANT an empty line from the child");
                bad = 1;
            }
            have -= (size_t)(nl + 1 - buf);
            memmove(buf, nl + 1, have);
        }
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (asked && !checking) {
            asked = 0;
            checking = 1;
            check_by = now.tv_sec + 3;
        }
        /* Answered once a pong came since the last check, or after 3 s without one. */
        if (checking && (ponged > at_check || now.tv_sec >= check_by)) {
            checking = 0;
            if (ponged <= at_check) {
                printf("INVARIANT pongs since the last check: got %llu, want more than %llu\n", ponged, at_check);
                bad = 1;
            }
            at_check = ponged;
            printf(bad ? "state bad\n" : "state ok\n");
            bad = 0;
        }
        if ((now.tv_sec - last_tick.tv_sec) * 1000000000LL + (now.tv_nsec - last_tick.tv_nsec) > 50000000LL) {
            printf("tick %llu\n", tick++);
            last_tick = now;
        }
    }
}
