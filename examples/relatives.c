/*
 * relatives: a parent that watches its child the way debuggers, profilers and supervisors do.
 *
 * The child counts in a variable of its own memory every 5 ms. Every 100 ms the parent reads
 * that variable out of the child with process_vm_readv (the count must have moved on, never
 * back), checks with kill(child, 0) and waitpid(WNOHANG) that the child is alive and its own,
 * and prints "tick N". The child checks that getppid() is still the parent ("INVARIANT"
 * otherwise). On SIGUSR1 the parent prints "state ok" or INVARIANT lines and "state bad".
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static volatile long counter;
static volatile sig_atomic_t asked;

static void on_usr1(int s)
{
    (void)s;
    asked = 1;
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    pid_t parent = getpid();
    pid_t child = fork();
    if (child == 0) {
        for (;;) {
            counter++;
            if (getppid() != parent) {
                printf("INVARIANT child's parent is %d, not %d\n", getppid(), parent);
                fflush(stdout);
            }
            usleep(5000);
        }
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    sigaction(SIGUSR1, &sa, NULL);
    long last = -1;
    int ok = 1;
    for (unsigned long n = 1;; n++) {
        struct timespec ts = { 0, 100 * 1000 * 1000 };
        while (nanosleep(&ts, &ts) != 0)
            ;
        long now = 0;
        struct iovec local = { &now, sizeof now }, remote = { (void *)&counter, sizeof now };
        ssize_t r = process_vm_readv(child, &local, 1, &remote, 1, 0);
        if (r != (ssize_t)sizeof now) {
            printf("INVARIANT process_vm_readv of child %d: %zd (%s)\n", child, r, strerror(errno));
            ok = 0;
        } else if (now < last) {
            printf("INVARIANT the child's count went back from %ld to %ld\n", last, now);
            ok = 0;
        } else {
            last = now;
        }
        int st;
        if (kill(child, 0) != 0 || waitpid(child, &st, WNOHANG) != 0) {
            printf("INVARIANT child %d is not a live child of ours (%s)\n", child, strerror(errno));
            ok = 0;
        }
        printf("tick %lu\n", n);
        if (asked) {
            asked = 0;
            printf("state %s\n", ok ? "ok" : "bad");
        }
    }
}
