/* A program for the incremental-checkpoint benchmark: it fills MiB of memory, then idles in a
 * loop that measures its own longest stall (the gap between two wake-ups 200 µs apart), and
 * dirties PCT% of its pages, at random, when asked.
 *
 *   dirty_stall MiB PCT
 *   SIGUSR2: write PCT% of the pages; prints "round <n> us <time it took>"
 *   SIGUSR1: prints "gap <us> end_us <wall-clock µs when it ended>" for each stall over 500 µs
 *            (the last 256), then "maxgap_us <longest stall since the last SIGUSR1>", and resets
 * First line: "ready pages <n> pid <pid>". */
#define _GNU_SOURCE
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t want_round, want_report;
static void on_usr2(int s) { (void)s; want_round = 1; }
static void on_usr1(int s) { (void)s; want_report = 1; }

static uint64_t wall_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static uint64_t now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int main(int argc, char **argv) {
    size_t mib = argc > 1 ? strtoul(argv[1], NULL, 10) : 1024;
    double pct = argc > 2 ? atof(argv[2]) : 10;
    size_t pages = mib * 256;
    unsigned char *mem = mmap(NULL, pages * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) { perror("mmap"); return 2; }
    for (size_t p = 0; p < pages; p++) memset(mem + p * 4096, (int)(p & 0xff), 4096);
    setvbuf(stdout, NULL, _IOLBF, 0);
    signal(SIGUSR2, on_usr2);
    signal(SIGUSR1, on_usr1);
    printf("ready pages %zu pid %d\n", pages, getpid());
    uint64_t rng = 88172645463325252ULL, rounds = 0, maxgap = 0, last = now_us();
    enum { KEEP = 256 };
    uint64_t gaps[KEEP][2];
    size_t ngaps = 0;
    struct timespec nap = {0, 200000};
    for (;;) {
        nanosleep(&nap, NULL);
        uint64_t t = now_us();
        if (t - last > maxgap) maxgap = t - last;
        if (t - last > 500) {
            gaps[ngaps % KEEP][0] = t - last;
            gaps[ngaps % KEEP][1] = wall_us();
            ngaps++;
        }
        last = t;
        if (want_round) {
            want_round = 0;
            size_t n = (size_t)(pages * pct / 100.0);
            uint64_t t0 = now_us();
            for (size_t i = 0; i < n; i++) {
                rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
                mem[(rng % pages) * 4096 + (rng >> 40) % 4096] += 1;
            }
            printf("round %llu us %llu\n", (unsigned long long)++rounds, (unsigned long long)(now_us() - t0));
            last = now_us();
        }
        if (want_report) {
            want_report = 0;
            for (size_t i = ngaps > KEEP ? ngaps - KEEP : 0; i < ngaps; i++)
                printf("gap %llu end_us %llu\n", (unsigned long long)gaps[i % KEEP][0],
                       (unsigned long long)gaps[i % KEEP][1]);
            printf("maxgap_us %llu\n", (unsigned long long)maxgap);
            maxgap = 0;
            ngaps = 0;
            last = now_us();
        }
    }
}
