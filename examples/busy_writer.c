/*
 * busy_writer: keeps a CPU busy computing and writing its memory, and says how far it got, so
 * that the step a checkpoint's cut caught it at can be told from the time of the cut.
 *
 *     busy_writer [MiB [quiet]]
 *
 * Fills MiB (default 64) of private anonymous memory, then forever: a step computes a while
 * (about 20 us of dependent arithmetic) and writes the next page of the memory whole, in order,
 * wrapping around; the step counter lives in memory. Every 10 ms of wall-clock time it prints
 *     done <steps> at_us <CLOCK_REALTIME in us since the epoch>
 * (after "start pages <N> pid <pid>"). With "quiet" it prints nothing: a plain busy load.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096UL
#define WORDS (PAGE / sizeof(uint64_t))
#define SPIN 8000 /* dependent steps of compute per page written */

static uint64_t realtime_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000ULL + (uint64_t)ts.tv_nsec / 1000ULL;
}

int main(int argc, char **argv)
{
    long mib = 64;
    if (argc > 1) {
        char *end = NULL;
        mib = strtol(argv[1], &end, 10);
        if (end == argv[1] || *end != '\0' || mib <= 0) {
            fprintf(stderr, "usage: %s [MiB>0 [quiet]]\n", argv[0]);
            return 2;
        }
    }
    int quiet = argc > 2 && strcmp(argv[2], "quiet") == 0;
    setvbuf(stdout, NULL, _IOLBF, 0);
    uint64_t npages = (uint64_t)mib * (1024 * 1024 / PAGE);
    uint64_t *mem = mmap(NULL, npages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) {
        perror("mmap");
        return 2;
    }
    memset(mem, 1, npages * PAGE);
    if (!quiet)
        printf("start pages %llu pid %d\n", (unsigned long long)npages, (int)getpid());

    static uint64_t steps; /* in memory, like the rest of the state */
    uint64_t x = 88172645463325252ULL;
    uint64_t next_print = realtime_us();
    for (;;) {
        for (int i = 0; i < SPIN; i++) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
        }
        uint64_t *p = mem + (steps % npages) * WORDS;
        for (size_t w = 0; w < WORDS; w++)
            p[w] = x + w;
        steps++;
        if (quiet || (steps & 63) != 0)
            continue;
        uint64_t now = realtime_us();
        if (now >= next_print) {
            printf("done %llu at_us %llu\n", (unsigned long long)steps, (unsigned long long)now);
            next_print = now + 10000;
        }
    }
}
