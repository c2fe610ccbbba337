/* A tree of processes for the process-tree benchmark: the parent forks NPROC-1 children; each
 * process fills its share (MiB / NPROC) of memory, then idles in a loop that measures its own
 * longest stall (the gap between two wake-ups 200 µs apart) and writes PCT% of its pages, at
 * random, when asked. NPROC 1 is one process holding all of it.
 *
 *   tree_writers NPROC MiB PCT
 *   SIGUSR2 (to the parent): every process writes PCT% of its pages; each prints
 *            "round pid <pid> us <time it took>"
 *   SIGUSR1 (to the parent): each prints "maxgap pid <pid> us <longest stall since the last
 *            SIGUSR1>" and resets it
 * The parent passes both signals on to its children. Each prints "ready pid <pid>" once filled. */
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

static uint64_t now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static pid_t kids[1024];
static int nkids;

static void serve(size_t pages, double pct, uint64_t seed) {
    unsigned char *mem = mmap(NULL, pages * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) { perror("mmap"); exit(2); }
    for (size_t p = 0; p < pages; p++) memset(mem + p * 4096, (int)(p & 0xff), 4096);
    printf("ready pid %d\n", getpid());
    uint64_t rng = seed | 1, maxgap = 0, last = now_us();
    struct timespec nap = {0, 200000};
    for (;;) {
        nanosleep(&nap, NULL);
        uint64_t t = now_us();
        if (t - last > maxgap) maxgap = t - last;
        last = t;
        if (want_round) {
            want_round = 0;
            for (int i = 0; i < nkids; i++) kill(kids[i], SIGUSR2);
            size_t n = (size_t)(pages * pct / 100.0);
            uint64_t t0 = now_us();
            for (size_t i = 0; i < n; i++) {
                rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
                mem[(rng % pages) * 4096 + (rng >> 40) % 4096] += 1;
            }
            printf("round pid %d us %llu\n", getpid(), (unsigned long long)(now_us() - t0));
            last = now_us();
        }
        if (want_report) {
            want_report = 0;
            for (int i = 0; i < nkids; i++) kill(kids[i], SIGUSR1);
            printf("maxgap pid %d us %llu\n", getpid(), (unsigned long long)maxgap);
            maxgap = 0;
            last = now_us();
        }
    }
}

int main(int argc, char **argv) {
    int nproc = argc > 1 ? atoi(argv[1]) : 32;
    size_t mib = argc > 2 ? strtoul(argv[2], NULL, 10) : 1024;
    double pct = argc > 3 ? atof(argv[3]) : 10;
    if (nproc < 1 || nproc > 1024) { fprintf(stderr, "tree_writers: NPROC must be 1 to 1024\n"); return 2; }
    size_t pages = mib * 256 / nproc;
    setvbuf(stdout, NULL, _IOLBF, 0);
    signal(SIGUSR2, on_usr2);
    signal(SIGUSR1, on_usr1);
    for (int i = 1; i < nproc; i++) {
        pid_t c = fork();
        if (c < 0) { perror("fork"); return 2; }
        if (c == 0) {
            nkids = 0;
            serve(pages, pct, 88172645463325252ULL + (uint64_t)i * 7919);
        }
        kids[nkids++] = c;
    }
    serve(pages, pct, 88172645463325252ULL);
    return 0;
}
