/*
 * fifo_state DIR: holds named FIFOs made in DIR and checks, when asked, that each is as it was
 * set up:
 *   - DIR/shared: three descriptions (a non-blocking reader, a blocking writer, a second
 *     non-blocking reader) of one FIFO holding "waiting bytes\n": the first reader reads it
 *     exactly once, the second then finds nothing (one buffer, refilled once);
 *   - DIR/rw: one read-write description with a 128 KiB buffer, holding "rw data";
 *   - DIR/orphan: only a writer is open; "orphan data" waits in it for a reader to come.
 *
 * Prints "tick N" every 50 ms. On SIGUSR1 it checks everything (reading the bytes), prints
 * "state ok" or "INVARIANT <what>" lines then "state bad", and puts the bytes back.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t asked;
static void on_usr1(int s) { (void)s; asked = 1; }

static int rd, wr, rd2, rw, orphan;
static char orphan_path[4096];
static int bad;

static void invariant(const char *what, long long a, long long b)
{
    printf("INVARIANT %s: got %lld, want %lld\n", what, a, b);
    bad = 1;
}

static void die(const char *what)
{
    perror(what);
    exit(2);
}

static void expect_read(int fd, const char *want, const char *what)
{
    char buf[256] = {0};
    ssize_t n = read(fd, buf, sizeof buf - 1);
    if (n != (ssize_t)strlen(want) || memcmp(buf, want, strlen(want)) != 0) {
        printf("INVARIANT %s: read %zd \"%s\", want \"%s\"\n", what, n, n > 0 ? buf : "", want);
        bad = 1;
    }
}

static void expect_mode(int fd, int acc, int nonblock, const char *what)
{
    int fl = fcntl(fd, F_GETFL);
    if ((fl & O_ACCMODE) != acc) invariant(what, fl & O_ACCMODE, acc);
    if (!!(fl & O_NONBLOCK) != nonblock) invariant(what, !!(fl & O_NONBLOCK), nonblock);
}

static void put(int fd, const char *s)
{
    if (write(fd, s, strlen(s)) != (ssize_t)strlen(s)) die("write");
}

static void set_up(void)
{
    put(wr, "waiting bytes\n");
    put(rw, "rw data");
    /* A reader only for the time of the write: afterwards only the writer holds the FIFO. */
    int r = open(orphan_path, O_RDONLY | O_NONBLOCK);
    if (r < 0) die("open orphan reader");
    put(orphan, "orphan data");
    close(r);
}

static void check(void)
{
    bad = 0;
    expect_mode(rd, O_RDONLY, 1, "shared reader mode");
    expect_mode(wr, O_WRONLY, 0, "shared writer mode");
    expect_mode(rd2, O_RDONLY, 1, "second reader mode");
    expect_mode(rw, O_RDWR, 0, "rw mode");
    expect_mode(orphan, O_WRONLY, 0, "orphan writer mode");
    expect_read(rd, "waiting bytes\n", "shared FIFO bytes");
    char c;
    ssize_t n = read(rd2, &c, 1);
    if (!(n == -1 && errno == EAGAIN)) invariant("second reader finds the buffer empty (read)", n, -1);
    int sz = fcntl(rw, F_GETPIPE_SZ);
    if (sz != 128 * 1024) invariant("rw FIFO buffer size", sz, 128 * 1024);
    expect_read(rw, "rw data", "rw FIFO bytes");
    int r = open(orphan_path, O_RDONLY | O_NONBLOCK);
    if (r < 0) invariant("open orphan reader", errno, 0);
    expect_read(r, "orphan data", "orphan FIFO bytes");
    close(r);
    printf(bad ? "state bad\n" : "state ok\n");
}

static void fifo_path(char *out, const char *dir, const char *name)
{
    snprintf(out, 4096, "%s/%s", dir, name);
    unlink(out);
    if (mkfifo(out, 0600) != 0) die("mkfifo");
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: fifo_state DIR\n");
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    char p[4096];
    fifo_path(p, argv[1], "shared");
    rd = open(p, O_RDONLY | O_NONBLOCK);
    wr = open(p, O_WRONLY);
    rd2 = open(p, O_RDONLY | O_NONBLOCK);
    fifo_path(p, argv[1], "rw");
    rw = open(p, O_RDWR);
    fifo_path(orphan_path, argv[1], "orphan");
    int r = open(orphan_path, O_RDONLY | O_NONBLOCK);
    orphan = open(orphan_path, O_WRONLY);
    close(r);
    if (rd < 0 || wr < 0 || rd2 < 0 || rw < 0 || orphan < 0) die("open");
    if (fcntl(rw, F_SETPIPE_SZ, 128 * 1024) < 0) die("F_SETPIPE_SZ");
    signal(SIGUSR1, on_usr1);
    set_up();
    printf("fds %d %d %d %d %d pid %d\n", rd, wr, rd2, rw, orphan, (int)getpid());
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
