/*
 * lazy_events: memory that is forked, moved and discarded while a lazy restore
 * (`ckptctl restore --lazy`) still brings it in.
 *
 *     lazy_events [MiB]        (default 128)
 *
 * Three private anonymous mappings: A (MiB/4), B (MiB/4) and C (MiB/2), each
 * word filled with pattern(region, index), never zero.  After the fill it
 * prints
 *     ready pid <pid>
 * and then waits for signals:
 *   SIGUSR1: verifies all of its memory:
 *     verify ok bytes <n>
 *     VERIFY FAILED region <r> word <w> got <x> want <y>   (and exit 3)
 *   SIGUSR2 (once): in turn
 *     - forks a child that verifies all of it and exits 0 (or 3):
 *         fork ok | FORK FAILED status <s>
 *     - makes the middle third of A read-only (A is then three mappings);
 *     - moves B to another address with mremap (the content must follow);
 *     - discards the second half of C with MADV_DONTNEED (it must read zero,
 *       the first half keep its content);
 *     - forks 100 children, one after the other, each checking a word of each
 *       region and exiting at once (a shell running commands):
 *         forks ok | FORK FAILED status <s>
 *     - verifies all, as SIGUSR1:
 *         events ok bytes <n> | VERIFY FAILED ...
 * Where B is and whether C was cut are globals: they are checkpointed too.
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

static volatile sig_atomic_t want_verify, want_events;
static uint64_t *region[3];
static size_t words[3];
static int events_done, c_cut;

static uint64_t pattern(int r, uint64_t i)
{
    uint64_t x = (i + 1) * 0x9E3779B97F4A7C15ULL ^ ((uint64_t)(r + 1) * 0xC2B2AE3D27D4EB4FULL);
    x ^= x >> 31;
    x *= 0xBF58476D1CE4E5B9ULL;
    x ^= x >> 29;
    return x | 1;
}

/* 0 if every word is as it must be; else prints what differs. */
static int verify(uint64_t *bytes)
{
    uint64_t n = 0;
    for (int r = 0; r < 3; r++) {
        for (size_t i = 0; i < words[r]; i++) {
            uint64_t want = (r == 2 && c_cut && i >= words[r] / 2) ? 0 : pattern(r, i);
            if (region[r][i] != want) {
                printf("VERIFY FAILED region %d word %zu got %llx want %llx\n", r, i,
                       (unsigned long long)region[r][i], (unsigned long long)want);
                return 1;
            }
        }
        n += words[r] * 8;
    }
    *bytes = n;
    return 0;
}

static void on_signal(int sig)
{
    if (sig == SIGUSR1)
        want_verify = 1;
    else
        want_events = 1;
}

static int events(void)
{
    uint64_t bytes;
    pid_t child = fork();
    if (child < 0) {
        perror("fork");
        return 1;
    }
    if (child == 0)
        _exit(verify(&bytes) ? 3 : 0);
    int st = 0;
    waitpid(child, &st, 0);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        printf("FORK FAILED status %d\n", st);
        return 1;
    }
    printf("fork ok\n");
    size_t third = (words[0] * 8 / 3) & ~(size_t)4095;
    if (mprotect((char *)region[0] + third, third, PROT_READ) != 0) {
        perror("mprotect");
        return 1;
    }
    size_t len = words[1] * 8;
    void *to = mmap(NULL, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    void *moved = mremap(region[1], len, len, MREMAP_MAYMOVE | MREMAP_FIXED, to);
    if (to == MAP_FAILED || moved == MAP_FAILED) {
        perror("mremap");
        return 1;
    }
    region[1] = moved;
    size_t half = words[2] * 8 / 2;
    if (madvise((char *)region[2] + half, half, MADV_DONTNEED) != 0) {
        perror("madvise");
        return 1;
    }
    c_cut = 1;
    events_done = 1;
    for (int k = 0; k < 100; k++) {
        child = fork();
        if (child < 0) {
            perror("fork");
            return 1;
        }
        if (child == 0) {
            for (int r = 0; r < 3; r++) {
                size_t i = ((size_t)k * 7919 * 512) % words[r];
                uint64_t want = (r == 2 && c_cut && i >= words[r] / 2) ? 0 : pattern(r, i);
                if (region[r][i] != want)
                    _exit(3);
            }
            _exit(0);
        }
        waitpid(child, &st, 0);
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            printf("FORK FAILED status %d\n", st);
            return 1;
        }
    }
    printf("forks ok\n");
    if (verify(&bytes))
        return 1;
    printf("events ok bytes %llu\n", (unsigned long long)bytes);
    return 0;
}

int main(int argc, char **argv)
{
    long mib = argc > 1 ? atol(argv[1]) : 128;
    if (mib < 4) {
        fprintf(stderr, "usage: %s [MiB>=4]\n", argv[0]);
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    size_t total = (size_t)mib << 20;
    size_t sizes[3] = {total / 4, total / 4, total / 2};
    for (int r = 0; r < 3; r++) {
        region[r] = mmap(NULL, sizes[r], PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (region[r] == MAP_FAILED) {
            perror("mmap");
            return 2;
        }
        words[r] = sizes[r] / 8;
        for (size_t i = 0; i < words[r]; i++)
            region[r][i] = pattern(r, i);
    }
    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    sigaction(SIGUSR1, &sa, NULL);
    sigaction(SIGUSR2, &sa, NULL);
    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, SIGUSR1);
    sigaddset(&block, SIGUSR2);
    sigprocmask(SIG_BLOCK, &block, &old);
    printf("ready pid %d\n", (int)getpid());
    for (;;) {
        while (!want_verify && !want_events)
            sigsuspend(&old);
        if (want_events) {
            want_events = 0;
            if (!events_done && events())
                return 3;
        }
        if (want_verify) {
            want_verify = 0;
            uint64_t bytes;
            if (verify(&bytes))
                return 3;
            printf("verify ok bytes %llu\n", (unsigned long long)bytes);
        }
    }
}
