/*
 * timerfd_state: holds timerfds in every mode and checks, when asked, that each is as it was
 * set up:
 *   once    CLOCK_MONOTONIC, relative one-shot of 1 ms, expired and unread: reads 1 at once,
 *           then nothing (it is disarmed);
 *   absint  CLOCK_MONOTONIC, absolute (TFD_TIMER_ABSTIME), every 20 ms from a fixed instant,
 *           never read: its count is the number of periods since that instant (time passes
 *           while the process is dead, and an absolute timer counts it);
 *   relint  CLOCK_BOOTTIME, relative, every 10 ms: fires at that cadence;
 *   wall    CLOCK_REALTIME, absolute with TFD_TIMER_CANCEL_ON_SET, one hour ahead: the time
 *           left is the time to that instant of the wall clock;
 *   far     CLOCK_MONOTONIC, relative one-shot of one hour: its time left counts only the time
 *           the process ran (at most an hour, at least an hour minus the time since set up);
 *   off     disarmed, with a 5 s period kept (gettime shows it), reads nothing;
 *   never   never set, O_NONBLOCK and FD_CLOEXEC.
 *
 * Prints "tick N" every 50 ms. On SIGUSR1 it checks everything (reading the counts), prints
 * "state ok" or "state bad" after "INVARIANT <what>" lines, and sets everything up again.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define MS 1000000LL
#define SEC 1000000000LL

static volatile sig_atomic_t asked;
static void on_usr1(int s) { (void)s; asked = 1; }

static int once, absint, relint, wall, far, off, never;
static long long absint_start, wall_at, far_set;
static int bad;

static void invariant(const char *what, long long a, long long b)
{
    printf("INVARIANT %s: got %lld, want %lld\n", what, a, b);
    bad = 1;
}

static long long now(clockid_t c)
{
    struct timespec t;
    clock_gettime(c, &t);
    return t.tv_sec * SEC + t.tv_nsec;
}

static struct timespec ts(long long ns) { return (struct timespec){ns / SEC, ns % SEC}; }
static long long ns(struct timespec t) { return t.tv_sec * SEC + t.tv_nsec; }

static void arm(int fd, int flags, long long value, long long interval, const char *what)
{
    struct itimerspec its = {ts(interval), ts(value)};
    if (timerfd_settime(fd, flags, &its, NULL) < 0) invariant(what, errno, 0);
}

/* The count a read returns, or -errno. */
static long long count(int fd)
{
    uint64_t v = 0;
    if (read(fd, &v, 8) != 8) return -errno;
    return (long long)v;
}

static void left(int fd, long long *value, long long *interval)
{
    struct itimerspec its;
    timerfd_gettime(fd, &its);
    *value = ns(its.it_value);
    *interval = ns(its.it_interval);
}

static void set_up(void)
{
    arm(once, 0, 1 * MS, 0, "arm once");
    absint_start = now(CLOCK_MONOTONIC) + 20 * MS;
    arm(absint, TFD_TIMER_ABSTIME, absint_start, 20 * MS, "arm absint");
    arm(relint, 0, 10 * MS, 10 * MS, "arm relint");
    wall_at = now(CLOCK_REALTIME) + 3600 * SEC;
    arm(wall, TFD_TIMER_ABSTIME | TFD_TIMER_CANCEL_ON_SET, wall_at, 0, "arm wall");
    far_set = now(CLOCK_MONOTONIC);
    arm(far, 0, 3600 * SEC, 0, "arm far");
    arm(off, 0, 0, 5 * SEC, "arm off");
    /* Let "once" and "absint" expire before anything else happens. */
    struct timespec d = {0, 25 * MS};
    nanosleep(&d, NULL);
}

static void check(void)
{
    long long v, i, c, before, after;
    bad = 0;

    /* once: expired, unread: 1 right away, then EAGAIN and disarmed. */
    c = count(once);
    if (c != 1) invariant("once: unread expirations", c, 1);
    c = count(once);
    if (c != -EAGAIN) invariant("once: a second read", c, -EAGAIN);
    left(once, &v, &i);
    if (v != 0 || i != 0) invariant("once: disarmed after expiring (ns left)", v, 0);

    /* absint: one expiration per 20 ms since its start, dead time included. */
    before = now(CLOCK_MONOTONIC);
    c = count(absint);
    after = now(CLOCK_MONOTONIC);
    if (c == -EAGAIN) c = 0;
    long long lo = (before - absint_start) / (20 * MS) + 1, hi = (after - absint_start) / (20 * MS) + 1;
    if (c < lo - 1 || c > hi + 1) invariant("absint: expirations since its absolute start", c, lo);
    left(absint, &v, &i);
    if (i != 20 * MS) invariant("absint: interval (ns)", i, 20 * MS);
    if (v <= 0 || v > 20 * MS) invariant("absint: ns to the next expiry", v, 20 * MS);
    else {
        /* The next expiry is on the grid of the absolute start. */
        long long next = now(CLOCK_MONOTONIC) + v, off_grid = (next - absint_start) % (20 * MS);
        if (off_grid > 2 * MS && off_grid < 18 * MS) invariant("absint: next expiry off its grid (ns)", off_grid, 0);
    }

    /* relint: fires at its 10 ms cadence. */
    struct pollfd p = {relint, POLLIN, 0};
    if (poll(&p, 1, 1000) != 1) invariant("relint: fires", 0, 1);
    c = count(relint);
    if (c < 1) invariant("relint: expirations", c, 1);
    before = now(CLOCK_BOOTTIME);
    struct timespec d = {0, 200 * MS};
    nanosleep(&d, NULL);
    c = count(relint);
    after = now(CLOCK_BOOTTIME);
    long long want = (after - before) / (10 * MS);
    if (c < want - 3 || c > want + 3) invariant("relint: expirations in a measured time", c, want);
    left(relint, &v, &i);
    if (i != 10 * MS) invariant("relint: interval (ns)", i, 10 * MS);

    /* wall: the time left is the time to its absolute instant. */
    left(wall, &v, &i);
    want = wall_at - now(CLOCK_REALTIME);
    if (v < want - 50 * MS || v > want + 50 * MS) invariant("wall: ns to its absolute instant", v, want);
    if (count(wall) != -EAGAIN) invariant("wall: nothing to read", 0, 1);

    /* far: at most an hour left, at least an hour minus the time since it was set. */
    left(far, &v, &i);
    long long ran = now(CLOCK_MONOTONIC) - far_set;
    if (v > 3600 * SEC) invariant("far: ns left at most an hour", v, 3600 * SEC);
    if (v < 3600 * SEC - ran - 50 * MS) invariant("far: ns left", v, 3600 * SEC - ran);
    if (i != 0) invariant("far: one-shot", i, 0);

    /* off: disarmed, its period kept; nothing to read. */
    left(off, &v, &i);
    if (v != 0) invariant("off: disarmed (ns left)", v, 0);
    if (i != 5 * SEC) invariant("off: interval kept (ns)", i, 5 * SEC);
    p = (struct pollfd){off, POLLIN, 0};
    if (poll(&p, 1, 0) != 0) invariant("off: readable", 1, 0);

    /* never: never set; its flags. */
    left(never, &v, &i);
    if (v != 0 || i != 0) invariant("never: disarmed", v, 0);
    if (count(never) != -EAGAIN) invariant("never: read (errno)", 0, EAGAIN);
    if (!(fcntl(never, F_GETFL) & O_NONBLOCK)) invariant("never: O_NONBLOCK", 0, 1);
    if (!(fcntl(never, F_GETFD) & FD_CLOEXEC)) invariant("never: FD_CLOEXEC", 0, 1);
    if (fcntl(far, F_GETFL) & O_NONBLOCK) invariant("far: O_NONBLOCK", 1, 0);
    if (fcntl(far, F_GETFD) & FD_CLOEXEC) invariant("far: FD_CLOEXEC", 1, 0);

    printf(bad ? "state bad\n" : "state ok\n");
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    once = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
    absint = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
    relint = timerfd_create(CLOCK_BOOTTIME, TFD_NONBLOCK);
    wall = timerfd_create(CLOCK_REALTIME, TFD_NONBLOCK);
    far = timerfd_create(CLOCK_MONOTONIC, 0);
    off = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
    never = timerfd_create(CLOCK_BOOTTIME, TFD_NONBLOCK | TFD_CLOEXEC);
    if (once < 0 || absint < 0 || relint < 0 || wall < 0 || far < 0 || off < 0 || never < 0) {
        perror("timerfd_create");
        return 2;
    }
    signal(SIGUSR1, on_usr1);
    set_up();
    printf("fds %d %d %d %d %d %d %d pid %d\n", once, absint, relint, wall, far, off, never, (int)getpid());
    struct timespec d = {0, 50 * MS};
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
