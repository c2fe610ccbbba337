/*
 * shared_anon: a parent and its forked child share memory two ways: an anonymous MAP_SHARED
 * mapping made before the fork, and a memfd the child maps from its second page on (the fd
 * is closed in both, the mappings alone hold it). The child answers each token the parent
 * writes into the shared memory. On SIGUSR1 the parent checks that the contents written at
 * start are intact and that a new token gets its answer through both mappings, and prints
 * "state ok" or "INVARIANT <what>" + "state bad". Prints "child PID" first, then "tick N"
 * every 50 ms.
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096
static volatile sig_atomic_t asked;
static void on_usr1(int s) { (void)s; asked = 1; }

struct box {
    atomic_ulong token, answer;
};

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    char *anon = mmap(NULL, 3 * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    int mfd = memfd_create("shared_anon", 0);
    if (anon == MAP_FAILED || mfd < 0 || ftruncate(mfd, 3 * PAGE) != 0) {
        perror("setup");
        return 2;
    }
    char *whole = mmap(NULL, 3 * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
    if (whole == MAP_FAILED) return 2;
    for (int i = 0; i < PAGE; i++) anon[2 * PAGE + i] = (char)(i * 7), whole[2 * PAGE + i] = (char)(i * 11);
    pid_t child = fork();
    if (child == 0) {
        /* The child sees the memfd from its second page on. */
        char *tail = mmap(NULL, 2 * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, PAGE);
        close(mfd);
        if (tail == MAP_FAILED) _exit(2);
        struct box *a = (struct box *)anon, *m = (struct box *)tail;
        for (;;) {
            unsigned long t = atomic_load(&a->token);
            if (t != atomic_load(&a->answer)) atomic_store(&a->answer, t);
            t = atomic_load(&m->token);
            if (t != atomic_load(&m->answer)) atomic_store(&m->answer, t);
            usleep(1000);
        }
    }
    close(mfd);
    printf("child %d\n", (int)child);
    signal(SIGUSR1, on_usr1);
    struct box *a = (struct box *)anon, *m = (struct box *)(whole + PAGE);
    unsigned long next = 1;
    struct timespec d = {0, 50000000L};
    for (unsigned long long n = 1;; n++) {
        if (asked) {
            asked = 0;
            int bad = 0;
            for (int i = 0; i < PAGE; i++) {
                if (anon[2 * PAGE + i] != (char)(i * 7)) { printf("INVARIANT anonymous shared content at %d\n", i); bad = 1; break; }
                if (whole[2 * PAGE + i] != (char)(i * 11)) { printf("INVARIANT memfd content at %d\n", i); bad = 1; break; }
            }
            next++;
            atomic_store(&a->token, next);
            atomic_store(&m->token, next);
            int ok_a = 0, ok_m = 0;
            for (int i = 0; i < 2000 && !(ok_a && ok_m); i++) {
                ok_a = atomic_load(&a->answer) == next;
                ok_m = atomic_load(&m->answer) == next;
                usleep(1000);
            }
            if (!ok_a) printf("INVARIANT the child did not answer through the anonymous shared memory\n"), bad = 1;
            if (!ok_m) printf("INVARIANT the child did not answer through the memfd (its view from the second page)\n"), bad = 1;
            printf(bad ? "state bad\n" : "state ok\n");
        }
        printf("tick %llu\n", n);
        nanosleep(&d, NULL);
    }
}
