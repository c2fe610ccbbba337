/*
 * eventfd_state: holds eventfds in every mode and checks, when asked, that each is as it was
 * set up: a plain counter of 5, a semaphore counter of 3 (read one at a time), a counter above
 * 2^32, a non-blocking zero counter (read gives EAGAIN), the same eventfd at two fd numbers
 * (dup: one open file description), and the flags (O_NONBLOCK, FD_CLOEXEC).
 *
 * Prints "tick N" every 50 ms. On SIGUSR1 it checks everything (consuming the counters), prints
 * "state ok" or "INVARIANT <what>", and sets them up again.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t asked;
static void on_usr1(int s) { (void)s; asked = 1; }

static int plain, sem, big, empty, dupd;
static int bad;

static void invariant(const char *what, long long a, long long b)
{
    printf("INVARIANT %s: got %lld, want %lld\n", what, a, b);
    bad = 1;
}

static void set_up(void)
{
    uint64_t v = 5;
    if (write(plain, &v, 8) != 8) invariant("write plain", errno, 0);
    v = 3;
    if (write(sem, &v, 8) != 8) invariant("write sem", errno, 0);
    v = (1ULL << 33) + 7;
    if (write(big, &v, 8) != 8) invariant("write big", errno, 0);
}

static void check(void)
{
    uint64_t v = 0;
    bad = 0;
    if (read(plain, &v, 8) != 8 || v != 5) invariant("plain counter", (long long)v, 5);
    for (int i = 0; i < 3; i++) {
        v = 0;
        if (read(sem, &v, 8) != 8 || v != 1) invariant("semaphore read", (long long)v, 1);
    }
    /* The semaphore is now zero and non-blocking: EAGAIN. */
    if (read(sem, &v, 8) != -1 || errno != EAGAIN) invariant("semaphore empty (errno)", errno, EAGAIN);
    v = 0;
    if (read(big, &v, 8) != 8 || v != (1ULL << 33) + 7) invariant("big counter", (long long)v, (long long)((1ULL << 33) + 7));
    if (read(empty, &v, 8) != -1 || errno != EAGAIN) invariant("empty non-blocking (errno)", errno, EAGAIN);
    if (!(fcntl(empty, F_GETFL) & O_NONBLOCK)) invariant("O_NONBLOCK on empty", 0, 1);
    if (!(fcntl(empty, F_GETFD) & FD_CLOEXEC)) invariant("FD_CLOEXEC on empty", 0, 1);
    if (fcntl(plain, F_GETFD) & FD_CLOEXEC) invariant("FD_CLOEXEC on plain", 1, 0);
    /* dupd shares big's description: a write through one is read through the other. */
    v = 11;
    if (write(dupd, &v, 8) != 8) invariant("write dup", errno, 0);
    v = 0;
    if (read(big, &v, 8) != 8 || v != 11) invariant("dup shares the counter", (long long)v, 11);
    printf(bad ? "state bad\n" : "state ok\n");
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    plain = eventfd(0, 0);
    sem = eventfd(0, EFD_SEMAPHORE | EFD_NONBLOCK);
    big = eventfd(0, EFD_NONBLOCK);
    empty = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    dupd = dup(big);
    if (plain < 0 || sem < 0 || big < 0 || empty < 0 || dupd < 0) {
        perror("eventfd");
        return 2;
    }
    signal(SIGUSR1, on_usr1);
    set_up();
    printf("fds %d %d %d %d %d pid %d\n", plain, sem, big, empty, dupd, (int)getpid());
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
