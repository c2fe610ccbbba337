/*
 * pipe_modes: pipes in every mode, checked when asked: per-description O_NONBLOCK on either
 * end, F_SETPIPE_SZ capacities, bytes waiting, a dup'ed end, ends shared with a forked child
 * (a flag set after the fork is the child's too), a pipe whose read end is closed (EPIPE), one
 * whose write end is closed (EOF after the bytes), and packet mode (O_DIRECT: each write is one
 * read).
 *
 * Prints "tick N" every 50 ms. On SIGUSR1 it checks everything, prints "state ok" or
 * "INVARIANT <what>", and sets the waiting bytes up again.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
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

/* a: read end non-blocking, bytes waiting. b: write end non-blocking, 1 MiB. c: packets.
 * d: read end closed. e: write end closed, bytes waiting. f/g: to and from the child. */
static int a[2], b[2], c[2], d[2], e[2], f[2], g[2], adup;

static void want_flags(const char *what, int fd, int want)
{
    int fl = fcntl(fd, F_GETFL);
    int mask = O_ACCMODE | O_NONBLOCK | O_DIRECT | O_APPEND;
    if (fl < 0 || (fl & mask) != want) invariant(what, fl & mask, want);
}

static void want_size(const char *what, int fd, int want)
{
    int sz = fcntl(fd, F_GETPIPE_SZ);
    if (sz != want) invariant(what, sz, want);
}

static void put(int fd, const char *s)
{
    if (write(fd, s, strlen(s)) != (ssize_t)strlen(s)) invariant("write", errno, 0);
}

static void set_up(void)
{
    put(a[1], "abc");
    put(c[1], "x");
    put(c[1], "yy");
    put(c[1], "zzz");
}

static void child(void)
{
    close(g[0]);
    char ch = 'r';
    /* Ready: every end the child does not use is closed (the parent's d has no reader). */
    if (write(g[1], &ch, 1) != 1) _exit(3);
    /* f[0] is non-blocking (set by the parent after the fork): wait with poll. */
    for (;;) {
        struct pollfd p = {f[0], POLLIN, 0};
        if (poll(&p, 1, -1) < 0) continue;
        ssize_t n = read(f[0], &ch, 1);
        if (n == 0) _exit(0);
        if (n < 0) continue;
        int fl = fcntl(f[0], F_GETFL);
        char r = (fl & O_NONBLOCK) && fcntl(g[1], F_GETPIPE_SZ) == 256 * 1024 ? 'k' : 'n';
        if (write(g[1], &r, 1) != 1) _exit(3);
    }
}

static void check(void)
{
    char buf[8192];
    bad = 0;
    want_flags("a read end flags", a[0], O_RDONLY | O_NONBLOCK);
    want_flags("a write end flags", a[1], O_WRONLY);
    want_flags("a dup flags", adup, O_RDONLY | O_NONBLOCK);
    want_flags("b read end flags", b[0], O_RDONLY);
    want_flags("b write end flags", b[1], O_WRONLY | O_NONBLOCK);
    want_flags("c read end flags", c[0], O_RDONLY);
    want_flags("c write end flags", c[1], O_WRONLY | O_DIRECT);
    want_flags("d write end flags", d[1], O_WRONLY | O_NONBLOCK);
    want_flags("e read end flags", e[0], O_RDONLY);
    want_flags("f read end (shared with the child)", f[0], O_RDONLY | O_NONBLOCK);
    want_size("a capacity", a[0], 65536);
    want_size("b capacity", b[1], 1024 * 1024);
    want_size("c capacity", c[0], 16384);
    want_size("g capacity", g[0], 256 * 1024);
    if (fcntl(adup, F_GETFD) & FD_CLOEXEC) invariant("adup FD_CLOEXEC", 1, 0);
    if (!(fcntl(b[0], F_GETFD) & FD_CLOEXEC)) invariant("b FD_CLOEXEC", 0, 1);

    /* a: "abc" waiting, read through the dup shares it. */
    ssize_t n = read(adup, buf, 2);
    if (n != 2 || memcmp(buf, "ab", 2)) invariant("a first two bytes through the dup", n, 2);
    n = read(a[0], buf, sizeof buf);
    if (n != 1 || buf[0] != 'c') invariant("a last byte", n, 1);
    n = read(a[0], buf, sizeof buf);
    if (n != -1 || errno != EAGAIN) invariant("a empty non-blocking (errno)", errno, EAGAIN);

    /* b: non-blocking writer fills exactly 1 MiB, then EAGAIN. */
    long total = 0;
    for (;;) {
        n = write(b[1], buf, sizeof buf);
        if (n < 0) break;
        total += n;
    }
    if (errno != EAGAIN || total != 1024 * 1024) invariant("b fills its capacity", total, 1024 * 1024);
    while (total > 0) {
        n = read(b[0], buf, sizeof buf);
        if (n <= 0) { invariant("b drain", n, 1); break; }
        total -= n;
    }

    /* c: three packets, one read each. */
    const char *pk[] = {"x", "yy", "zzz"};
    for (int i = 0; i < 3; i++) {
        n = read(c[0], buf, sizeof buf);
        if (n != (ssize_t)strlen(pk[i]) || memcmp(buf, pk[i], n)) invariant("c packet length", n, strlen(pk[i]));
    }

    /* d: the read end is gone: EPIPE. */
    n = write(d[1], "q", 1);
    if (n != -1 || errno != EPIPE) invariant("d write with no reader (errno)", errno, EPIPE);

    /* e: the bytes, then EOF (the write end is closed). */
    n = read(e[0], buf, sizeof buf);
    if (n != 5 || memcmp(buf, "tail!", 5)) invariant("e bytes", n, 5);
    n = read(e[0], buf, sizeof buf);
    if (n != 0) invariant("e EOF", n, 0);

    /* The child checks its own view of the shared ends. */
    if (write(f[1], "?", 1) != 1) invariant("ping child", errno, 0);
    struct pollfd p = {g[0], POLLIN, 0};
    char r = 0;
    if (poll(&p, 1, 5000) != 1 || read(g[0], &r, 1) != 1 || r != 'k') invariant("child's view", r, 'k');
    printf(bad ? "state bad\n" : "state ok\n");
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    signal(SIGPIPE, SIG_IGN);
    if (pipe(a) || pipe2(b, O_CLOEXEC) || pipe2(c, O_DIRECT) || pipe(d) || pipe(e) || pipe(f) || pipe(g)) {
        perror("pipe");
        return 2;
    }
    if (fcntl(g[1], F_SETPIPE_SZ, 256 * 1024) < 0 || fcntl(b[1], F_SETPIPE_SZ, 1024 * 1024) < 0 ||
        fcntl(c[0], F_SETPIPE_SZ, 16384) < 0) {
        perror("F_SETPIPE_SZ");
        return 2;
    }
    pid_t kid = fork();
    if (kid == 0) {
        close(f[1]);
        close(a[0]); close(a[1]); close(b[0]); close(b[1]); close(c[0]); close(c[1]);
        close(d[0]); close(d[1]); close(e[0]); close(e[1]);
        child();
    }
    close(g[1]);
    close(d[0]);
    char ready;
    if (read(g[0], &ready, 1) != 1) { perror("child"); return 2; }
    fcntl(f[0], F_SETFL, O_NONBLOCK); /* the child's description too */
    fcntl(a[0], F_SETFL, O_NONBLOCK);
    fcntl(b[1], F_SETFL, O_NONBLOCK);
    fcntl(d[1], F_SETFL, O_NONBLOCK);
    adup = dup(a[0]);
    put(e[1], "tail!");
    close(e[1]);
    signal(SIGUSR1, on_usr1);
    set_up();
    printf("child %d pid %d\n", (int)kid, (int)getpid());
    struct timespec ts = {0, 50000000L};
    for (unsigned long long n = 1;; n++) {
        if (asked) {
            asked = 0;
            check();
            set_up();
            /* e again, from a fresh pipe at the same numbers. */
            int ne[2];
            if (pipe(ne) == 0) {
                dup2(ne[0], e[0]);
                close(ne[0]);
                put(ne[1], "tail!");
                close(ne[1]);
            }
        }
        printf("tick %llu\n", n);
        nanosleep(&ts, NULL);
    }
}
