/*
 * close_all: a program that closes every descriptor it did not open itself, the way daemons,
 * screen and shells do, and keeps counting.
 *
 * At start and then every 200 ms it: closes everything above 2 with close_range(3, ~0U, 0), then
 * with closefrom(3), then one by one up to its fd limit (close(2) on each, errors ignored), and
 * with a raw syscall(SYS_close_range, …); then it opens /dev/null and checks that it got fd 3
 * (nothing of ckpt's is left at a low number); dup2's that onto every number from 900 to 1100
 * and closes them again (where ckpt keeps its own descriptors). A counter in memory goes up
 * between rounds. Prints "tick N" every 100 ms, "INVARIANT …" on a surprise.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static void die(const char *what)
{
    printf("INVARIANT %s: %s\n", what, strerror(errno));
    fflush(stdout);
    _exit(3);
}

static void close_everything(void)
{
    if (close_range(3, ~0U, 0) < 0)
        die("close_range");
    closefrom(3);
    struct rlimit r;
    getrlimit(RLIMIT_NOFILE, &r);
    for (long fd = 3; fd < (long)r.rlim_cur && fd < 65536; fd++)
        close((int)fd);
    if (syscall(SYS_close_range, 3, ~0U, 0) < 0)
        die("syscall(close_range)");
}

static void round_trip(void)
{
    close_everything();
    int fd = open("/dev/null", O_RDWR);
    if (fd != 3) {
        printf("INVARIANT open after closing everything gave fd %d, not 3\n", fd);
        fflush(stdout);
        _exit(3);
    }
    for (int n = 900; n <= 1100; n++) {
        if (dup2(fd, n) != n)
            die("dup2");
    }
    for (int n = 900; n <= 1100; n++) {
        if (close(n) < 0)
            die("close");
    }
    if (dup3(fd, 1000, O_CLOEXEC) != 1000)
        die("dup3");
    if (syscall(SYS_dup3, fd, 1001, 0) != 1001)
        die("syscall(dup3)");
    close(1000);
    close(1001);
    close(fd);
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    round_trip();
    unsigned long long counter = 0;
    for (unsigned long long n = 1;; n++) {
        for (int i = 0; i < 10; i++) {
            struct timespec d = {0, 10 * 1000000L};
            nanosleep(&d, NULL);
            counter++;
        }
        if (counter != n * 10) {
            printf("MISMATCH counter %llu at tick %llu\n", counter, n);
            fflush(stdout);
            _exit(3);
        }
        printf("tick %llu\n", n);
        if (n % 2 == 0)
            round_trip();
    }
}
