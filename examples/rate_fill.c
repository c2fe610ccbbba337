/* A program for the store and restore rate benchmark (bench_rate): it fills its memory with
 * data that does not compress (random words) or that does (text: words of a small
 * dictionary), then naps 200 µs at a time and notices when it was away.
 *
 *   rate_fill MiB random|text
 *   First line: "ready pages <n> pid <pid>".
 *   After a nap that took over 50 ms (a checkpoint's stop, a restore): "back gap_us <us>".
 *   SIGUSR1: checks every page against what was written: "verify ok pages <n>", or
 *            "MISMATCH page <p>" and exit status 3.
 *
 * Each page's content follows from its number alone (the benchmark makes files of the same
 * kind with the same generator, tests/src/disk.rs), so it is checked without a copy. */
#define _GNU_SOURCE
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096UL

static const char *const WORDS[] = {
    "the",     "of",     "and",   "checkpoint", "memory", "page",    "store",  "restore", "program",
    "process", "thread", "file",  "socket",     "kernel", "signal",  "write",  "read",    "disk",
    "rate",    "time",   "state", "image",      "run",    "before",  "after",  "when",    "which",
    "every",   "one",    "two",   "many",       "again",  "written", "stored", "loaded",  "a",
    "to",      "in",     "is",    "it",         "that",   "for",     "on",     "with",    "as",
    "by",      "from",   "at",    "or",         "not",    "this",    "be",     "are",     "was",
    "all",     "its",    "their", "there",      "only",   "each",    "while",  "until",   "first",
    "last",
};
#define NWORDS (sizeof WORDS / sizeof WORDS[0])

static volatile sig_atomic_t want_verify;
static void on_usr1(int s) { (void)s; want_verify = 1; }

static uint64_t now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static uint64_t seed(uint64_t page) {
    uint64_t x = (page + 1) * 0x9E3779B97F4A7C15ULL;
    x ^= x >> 31;
    x *= 0xBF58476D1CE4E5B9ULL;
    x ^= x >> 29;
    return x | 1;
}

static uint64_t next(uint64_t *s) {
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *s = x;
    return x;
}

/* Page `p`'s content into `out` (PAGE bytes). */
static void page_content(uint64_t p, int text, unsigned char *out) {
    uint64_t s = seed(p);
    if (!text) {
        for (size_t i = 0; i < PAGE / 8; i++) {
            uint64_t w = next(&s);
            memcpy(out + i * 8, &w, 8);
        }
        return;
    }
    size_t at = 0;
    while (at < PAGE) {
        const char *w = WORDS[next(&s) % NWORDS];
        size_t n = strlen(w);
        for (size_t i = 0; i < n && at < PAGE; i++)
            out[at++] = (unsigned char)w[i];
        if (at < PAGE)
            out[at++] = ' ';
    }
}

int main(int argc, char **argv) {
    if (argc != 3 || (strcmp(argv[2], "random") && strcmp(argv[2], "text"))) {
        fprintf(stderr, "usage: rate_fill MiB random|text\n");
        return 2;
    }
    size_t pages = strtoul(argv[1], NULL, 10) * 256;
    int text = !strcmp(argv[2], "text");
    unsigned char *mem = mmap(NULL, pages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) {
        perror("mmap");
        return 2;
    }
    for (size_t p = 0; p < pages; p++)
        page_content(p, text, mem + p * PAGE);
    setvbuf(stdout, NULL, _IOLBF, 0);
    signal(SIGUSR1, on_usr1);
    printf("ready pages %zu pid %d\n", pages, getpid());
    unsigned char want[PAGE];
    struct timespec nap = {0, 200000};
    uint64_t last = now_us();
    for (;;) {
        nanosleep(&nap, NULL);
        uint64_t t = now_us();
        if (t - last > 50000)
            printf("back gap_us %llu\n", (unsigned long long)(t - last));
        if (want_verify) {
            want_verify = 0;
            for (size_t p = 0; p < pages; p++) {
                page_content(p, text, want);
                if (memcmp(want, mem + p * PAGE, PAGE)) {
                    printf("MISMATCH page %zu\n", p);
                    return 3;
                }
            }
            printf("verify ok pages %zu\n", pages);
            t = now_us();
        }
        last = t;
    }
}
