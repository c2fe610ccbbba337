/*
 * mem_pattern: fills N MiB (argv[1], default 256) with a known pattern and
 * keeps verifying and rewriting it in 1 MiB chunks forever.
 *
 * Every chunk carries a "generation": during pass P, chunks already processed
 * hold generation P+1 and the others generation P.  Each chunk-step verifies
 * the chunk against generation P and rewrites it with generation P+1, so a
 * restore that brings back stale or mixed pages is detected.
 *
 * Once per second it prints
 *     tick <counter> pid <getpid()> maxgap_us <max gap since last print> ok
 * where <counter> is an in-memory tick counter (incremented per print), the
 * pid is asked from the kernel at every print (not cached), and
 * maxgap_us is the longest monotonic-time gap between two consecutive
 * chunk-steps since the previous print: it shows how long the program was
 * stopped (e.g. by a checkpoint).  On any mismatch it prints "MISMATCH ..."
 * and exits with status 3.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define CHUNK_BYTES (1024UL * 1024UL)
#define WORDS_PER_CHUNK (CHUNK_BYTES / sizeof(uint64_t))
#define CHUNKS_PER_NAP 4 /* sleep ~1 ms every this many chunks */

static inline uint64_t pattern(uint64_t index, uint64_t gen)
{
    uint64_t x = index * 0x9E3779B97F4A7C15ULL ^ (gen * 0xC2B2AE3D27D4EB4FULL);
    x ^= x >> 31;
    x *= 0xBF58476D1CE4E5B9ULL;
    x ^= x >> 29;
    return x | 1; /* never zero: an all-zero page is always wrong */
}

static uint64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000ULL + (uint64_t)ts.tv_nsec / 1000ULL;
}

int main(int argc, char **argv)
{
    long mib = 256;
    if (argc > 1) {
        char *end = NULL;
        mib = strtol(argv[1], &end, 10);
        if (end == argv[1] || *end != '\0' || mib <= 0) {
            fprintf(stderr, "usage: %s [MiB>0]\n", argv[0]);
            return 2;
        }
    }
    setvbuf(stdout, NULL, _IOLBF, 0);

    size_t nchunks = (size_t)mib;
    size_t bytes = nchunks * CHUNK_BYTES;
    uint64_t *mem = mmap(NULL, bytes, PROT_READ | PROT_WRITE,
                         MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) {
        perror("mmap");
        return 2;
    }

    /* Initial fill: generation 0 everywhere. */
    size_t nwords = nchunks * WORDS_PER_CHUNK;
    for (size_t i = 0; i < nwords; i++)
        mem[i] = pattern(i, 0);

    uint64_t counter = 0; /* ticks printed; lives in memory */
    uint64_t pass = 0;    /* completed full passes */
    uint64_t maxgap = 0;
    uint64_t last_step = now_us();
    uint64_t last_print = last_step;
    struct timespec nap = {0, 1000000L};

    for (;;) {
        for (size_t c = 0; c < nchunks; c++) {
            uint64_t *w = mem + c * WORDS_PER_CHUNK;
            size_t base = c * WORDS_PER_CHUNK;
            for (size_t j = 0; j < WORDS_PER_CHUNK; j++) {
                uint64_t want = pattern(base + j, pass);
                if (w[j] != want) {
                    printf("MISMATCH chunk %zu word %zu pass %llu expected %016llx got %016llx pid %d\n",
                           c, j, (unsigned long long)pass,
                           (unsigned long long)want, (unsigned long long)w[j],
                           (int)getpid());
                    fflush(stdout);
                    exit(3);
                }
                w[j] = pattern(base + j, pass + 1);
            }

            uint64_t t = now_us();
            uint64_t gap = t > last_step ? t - last_step : 0;
            if (gap > maxgap)
                maxgap = gap;
            last_step = t;

            if (t < last_print || t - last_print >= 1000000ULL) {
                counter++;
                printf("tick %llu pid %d maxgap_us %llu ok\n",
                       (unsigned long long)counter, (int)getpid(),
                       (unsigned long long)maxgap);
                fflush(stdout);
                maxgap = 0;
                last_print = t;
                /* the print itself is not a stall of the program */
                last_step = now_us();
            }

            if ((c + 1) % CHUNKS_PER_NAP == 0) {
                nanosleep(&nap, NULL);
            }
        }
        pass++;
    }
}
