/* window_drop: discards memory it has just written while a checkpoint stores it.
 *
 *   window_drop [MiB]
 *
 * A writer thread rewrites random pages of MiB (default 64) of memory as fast as it can, so
 * that what it wrote last before a stop goes through ckptd's store window. The main thread
 * prints "beat <n> writes <count>" every 10 ms; on SIGUSR1 it discards the whole region with
 * MADV_DONTNEED and prints "dropped". First line: "ready pid <pid>". */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static unsigned char *mem;
static size_t pages;
static volatile uint64_t writes;
static volatile sig_atomic_t want_drop;

static void on_usr1(int s) { (void)s; want_drop = 1; }

static void *writer(void *arg) {
    (void)arg;
    uint64_t rng = 88172645463325252ULL;
    for (;;) {
        rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
        mem[(rng % pages) * 4096 + (rng >> 40) % 4096] += 1;
        writes++;
    }
    return NULL;
}

int main(int argc, char **argv) {
    size_t mib = argc > 1 ? strtoul(argv[1], NULL, 10) : 64;
    pages = mib * 256;
    mem = mmap(NULL, pages * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) { perror("mmap"); return 2; }
    for (size_t p = 0; p < pages; p++) mem[p * 4096] = 1;
    setvbuf(stdout, NULL, _IOLBF, 0);
    signal(SIGUSR1, on_usr1);
    pthread_t t;
    if (pthread_create(&t, NULL, writer, NULL) != 0) { perror("pthread_create"); return 2; }
    printf("ready pid %d\n", getpid());
    struct timespec nap = {0, 10000000};
    for (uint64_t n = 0;; n++) {
        nanosleep(&nap, NULL);
        if (want_drop) {
            want_drop = 0;
            if (madvise(mem, pages * 4096, MADV_DONTNEED) != 0) perror("madvise");
            printf("dropped\n");
        }
        printf("beat %llu writes %llu\n", (unsigned long long)n, (unsigned long long)writes);
    }
}
