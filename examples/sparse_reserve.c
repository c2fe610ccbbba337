/*
 * sparse_reserve: reserves a huge private anonymous range with MAP_NORESERVE (argv[1] GiB,
 * default 2048 = 2 TiB) and writes only a little of it (argv[2] MiB, default 64), in 1 MiB
 * chunks spread evenly over the whole reservation; it also reads PROBES pages spread over it
 * without writing them (such a page maps the kernel's zero page). With argv[4] MiB > 0, a
 * shared anonymous reservation of the same size gets that many chunks too.
 *
 *   sparse_reserve [GiB] [MiB] [tick ms, default 1000] [shared MiB, default 0]
 *
 * Like mem_pattern, every chunk carries a generation: during pass P, chunks already processed
 * hold generation P+1 and the others generation P. Each step verifies a chunk against
 * generation P and rewrites it with P+1; the probe pages must read as zeros. A restore that
 * brings back stale, mixed or missing pages is detected.
 *
 * First line: "ready reserve_gib <G> written_mib <M> shared_mib <S> pid <pid>". Then, once
 * per tick:
 *     tick <counter> pid <getpid()> maxgap_us <longest gap between steps> ok
 * On a wrong byte it prints "MISMATCH ..." and exits with status 3.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define CHUNK_BYTES (1024UL * 1024UL)
#define WORDS_PER_CHUNK (CHUNK_BYTES / sizeof(uint64_t))
#define PROBES 256 /* zero pages read, spread over the private reservation */

static inline uint64_t pattern(uint64_t index, uint64_t gen)
{
    uint64_t x = index * 0x9E3779B97F4A7C15ULL ^ (gen * 0xC2B2AE3D27D4EB4FULL);
    x ^= x >> 31;
    x *= 0xBF58476D1CE4E5B9ULL;
    x ^= x >> 29;
    return x | 1; /* never zero: a page that went missing is always wrong */
}

static uint64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000ULL + (uint64_t)ts.tv_nsec / 1000ULL;
}

static long arg(int argc, char **argv, int i, long dflt)
{
    if (argc <= i)
        return dflt;
    char *end = NULL;
    long v = strtol(argv[i], &end, 10);
    if (end == argv[i] || *end != '\0' || v < 0 || (v == 0 && i != 4)) {
        fprintf(stderr, "usage: %s [reserve GiB>0] [written MiB>0] [tick ms>0] [shared MiB]\n", argv[0]);
        exit(2);
    }
    return v;
}

/* A reservation and the chunks written in it: chunk c at c * stride. Chunk numbers go on
 * from `first` so that no two chunks of the program hold the same pattern. */
struct region {
    unsigned char *base;
    size_t stride, nchunks, first;
};

static size_t reserve, pstride;
static struct region priv, shared;

/* Offset of probe page p in the private reservation (the last page before (p + 1) * pstride),
 * or 0 when it would fall inside a chunk. */
static size_t probe(size_t p)
{
    size_t off = (p + 1) * pstride - 4096;
    if (off / priv.stride < priv.nchunks && off % priv.stride < CHUNK_BYTES)
        return 0;
    return off;
}

static int reserve_region(struct region *r, size_t nchunks, size_t first, int flags)
{
    r->nchunks = nchunks;
    r->first = first;
    if (nchunks == 0)
        return 0;
    r->base = mmap(NULL, reserve, PROT_READ | PROT_WRITE, flags | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (r->base == MAP_FAILED) {
        perror("mmap");
        return -1;
    }
    r->stride = reserve / nchunks / CHUNK_BYTES * CHUNK_BYTES;
    return 0;
}

static uint64_t *chunk(const struct region *r, size_t c)
{
    return (uint64_t *)(r->base + c * r->stride);
}

/* Checks chunk c against generation `pass` and rewrites it with the next. */
static void step(const struct region *r, size_t c, uint64_t pass)
{
    uint64_t *w = chunk(r, c);
    uint64_t index = (r->first + c) * WORDS_PER_CHUNK;
    for (size_t j = 0; j < WORDS_PER_CHUNK; j++) {
        uint64_t want = pattern(index + j, pass);
        if (w[j] != want) {
            printf("MISMATCH %s chunk %zu word %zu pass %llu expected %016llx got %016llx pid %d\n",
                   r == &shared ? "shared" : "private", c, j, (unsigned long long)pass,
                   (unsigned long long)want, (unsigned long long)w[j], (int)getpid());
            exit(3);
        }
        w[j] = pattern(index + j, pass + 1);
    }
}

int main(int argc, char **argv)
{
    reserve = (size_t)arg(argc, argv, 1, 2048) << 30;
    size_t nchunks = (size_t)arg(argc, argv, 2, 64);
    uint64_t tick_us = (uint64_t)arg(argc, argv, 3, 1000) * 1000;
    size_t nshared = (size_t)arg(argc, argv, 4, 0);
    if ((nchunks + nshared) * CHUNK_BYTES > reserve) {
        fprintf(stderr, "%s: cannot write more than the reservation\n", argv[0]);
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (reserve_region(&priv, nchunks, 0, MAP_PRIVATE) || reserve_region(&shared, nshared, nchunks, MAP_SHARED))
        return 2;
    pstride = reserve / PROBES;
    for (size_t p = 0; p < PROBES; p++)
        if (probe(p) && *(volatile unsigned char *)(priv.base + probe(p)) != 0) {
            printf("MISMATCH fresh memory is not zero\n");
            return 3;
        }
    const struct region *regions[] = {&priv, &shared};
    for (int k = 0; k < 2; k++)
        for (size_t c = 0; c < regions[k]->nchunks; c++) {
            uint64_t *w = chunk(regions[k], c);
            for (size_t j = 0; j < WORDS_PER_CHUNK; j++)
                w[j] = pattern((regions[k]->first + c) * WORDS_PER_CHUNK + j, 0);
        }
    printf("ready reserve_gib %zu written_mib %zu shared_mib %zu pid %d\n", reserve >> 30, nchunks, nshared,
           (int)getpid());

    uint64_t counter = 0, pass = 0, maxgap = 0;
    uint64_t last_step = now_us(), last_print = last_step;
    struct timespec nap = {0, 2000000L};
    for (;;) {
        for (size_t i = 0; i < nchunks + nshared; i++) {
            if (i < nchunks)
                step(&priv, i, pass);
            else
                step(&shared, i - nchunks, pass);
            uint64_t t = now_us();
            if (t - last_step > maxgap)
                maxgap = t - last_step;
            last_step = t;
            if (t - last_print >= tick_us) {
                for (size_t p = 0; p < PROBES; p++) {
                    unsigned char v = probe(p) ? *(volatile unsigned char *)(priv.base + probe(p)) : 0;
                    if (v != 0) {
                        printf("MISMATCH probe %zu reads %u, not 0, pid %d\n", p, v, (int)getpid());
                        exit(3);
                    }
                }
                counter++;
                printf("tick %llu pid %d maxgap_us %llu ok\n", (unsigned long long)counter, (int)getpid(),
                       (unsigned long long)maxgap);
                maxgap = 0;
                last_print = t;
                last_step = now_us();
            }
            nanosleep(&nap, NULL);
        }
        pass++;
    }
}
