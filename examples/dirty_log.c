/*
 * dirty_log: writes pseudo-random pages of a big anonymous mapping and keeps
 * a log of what each page must hold, so that any checkpoint (full or
 * incremental) that loses or mixes up pages is detected after a restore.
 *
 *     dirty_log [MiB [percent [pause]]]
 *
 * MiB (default 1024): size of the data area, N = MiB * 256 pages of 4 KiB.
 * percent (default 10, may be fractional, e.g. 1 or 0.5): pages written per
 *   round, as a percentage of N.  0 = "as fast as it can": write
 *   continuously, never sleep, and print a round line every ~200 ms.
 * pause (default 50): milliseconds to sleep after each round; or "sig": do
 *   one round per SIGUSR2 (nothing is written in between), so that a test
 *   knows exactly how much was written between two checkpoints.
 * DIRTY_LOG_HOT=H (environment, percent of N): write only within a hot set of
 *   H% of the pages that drifts one page per 1000 writes (a cache or a
 *   simulation's active region); the set follows from the global seq, so it
 *   needs no state of its own.
 * In the continuous mode (percent 0), SIGUSR2 prints "maxgap_us <us>": the
 *   longest time between two batches of 64 writes since the last SIGUSR2 (how
 *   long the program saw itself stopped), and resets it.
 *
 * Memory layout: ONE private anonymous mapping holding the N data pages
 * followed by the log seq[N] (one u64 per page, 2 MiB per GiB of data).
 * The few words of state (xorshift state, global sequence number, round
 * counters, the "pending" record) are globals in .data/.bss, so they are
 * checkpointed too.
 *
 * One write:
 *     s = ++global_seq; p = xorshift() % N;
 *     pending = {page p, seq s}          (1) record what is about to happen
 *     page p = pattern(p, s, w) for w in 0..511     (2) the content
 *     seq[p] = s                          (3) the log
 * with a compiler barrier between the steps (one thread; a checkpoint parks
 * it at an instruction boundary, and the thread's own stores are seen in
 * program order), so whatever instruction a checkpoint stops the thread at,
 * the saved memory is one of: page p still old and seq[p] old (before (2)),
 * page p partly/wholly new with seq[p] old (inside (2), pending says so),
 * or both new.  Verification runs only between two writes (SIGUSR1 sets a
 * flag that the main loop checks), so a restored process always finishes
 * the interrupted write before verifying; still, to be robust, verification
 * accepts for page p a content that matches pattern(p, seq[p]) OR, when
 * pending.page == p, pattern(p, pending.seq) -- never anything else.  A page
 * with seq[p] == 0 was never written and must be all zero.  Pattern words
 * are never zero, so an all-zero page never passes for a written one.
 *
 * Output (line buffered):
 *     start pages <N> percent <P> pid <pid>
 *     round <r> writes <total> ok
 *     verify ok pages <N> written <distinct pages> seq <global seq>
 *     VERIFY FAILED page <p> word <w> seq <s> pending <pp>/<ps> got <x> want <y>
 * and exit(3) after a failed verification.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096UL
#define WORDS (PAGE / sizeof(uint64_t))

#define barrier() __asm__ __volatile__("" ::: "memory")

static volatile sig_atomic_t want_verify;
static volatile sig_atomic_t want_round;

/* State (in .data/.bss: checkpointed with the process). */
static uint64_t rng = 0x2545F4914F6CDD1DULL;
static uint64_t global_seq;
static struct {
    uint64_t page;
    uint64_t seq;
} pending = {UINT64_MAX, 0};

static uint64_t *data; /* N pages */
static uint64_t *seqlog; /* N entries, right after the data */
static uint64_t npages;
static uint64_t hot_pages; /* 0: all pages */

static inline uint64_t mix(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xBF58476D1CE4E5B9ULL;
    x ^= x >> 27;
    x *= 0x94D049BB133111EBULL;
    x ^= x >> 31;
    return x;
}

static inline uint64_t pattern(uint64_t page, uint64_t seq, uint64_t word)
{
    return mix(page * 0x9E3779B97F4A7C15ULL ^ mix(seq + 0x632BE59BD9B4E019ULL) ^ word) | 1;
}

static inline uint64_t xorshift(void)
{
    uint64_t x = rng;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    rng = x;
    return x;
}

static void write_one(void)
{
    uint64_t s = global_seq + 1;
    uint64_t p = hot_pages ? (s / 1000 + xorshift() % hot_pages) % npages : xorshift() % npages;
    global_seq = s;
    pending.page = p;
    pending.seq = s;
    barrier();
    uint64_t *pg = data + p * WORDS;
    for (uint64_t w = 0; w < WORDS; w++)
        pg[w] = pattern(p, s, w);
    barrier();
    seqlog[p] = s;
    barrier();
}

static int page_matches(uint64_t p, uint64_t s)
{
    const uint64_t *pg = data + p * WORDS;
    if (s == 0) {
        for (uint64_t w = 0; w < WORDS; w++)
            if (pg[w] != 0)
                return 0;
        return 1;
    }
    for (uint64_t w = 0; w < WORDS; w++)
        if (pg[w] != pattern(p, s, w))
            return 0;
    return 1;
}

static void verify(void)
{
    uint64_t written = 0;
    for (uint64_t p = 0; p < npages; p++) {
        uint64_t s = seqlog[p];
        if (s != 0)
            written++;
        if (s > global_seq) {
            printf("VERIFY FAILED page %llu seq %llu is beyond the global seq %llu\n",
                   (unsigned long long)p, (unsigned long long)s,
                   (unsigned long long)global_seq);
            fflush(stdout);
            exit(3);
        }
        if (page_matches(p, s))
            continue;
        if (pending.page == p && pending.seq != s && page_matches(p, pending.seq))
            continue;
        /* Report the first differing word against seq[p]. */
        const uint64_t *pg = data + p * WORDS;
        uint64_t w = 0;
        for (; w < WORDS; w++) {
            uint64_t want = s ? pattern(p, s, w) : 0;
            if (pg[w] != want)
                break;
        }
        if (w == WORDS)
            w = 0;
        /* Which seq does the page hold, if any recent one? */
        long long holds = -1;
        for (uint64_t t = global_seq; t > 0 && global_seq - t < 4096; t--) {
            if (pg[0] == pattern(p, t, 0) && page_matches(p, t)) {
                holds = (long long)t;
                break;
            }
        }
        printf("VERIFY FAILED page %llu word %llu seq %llu pending %lld/%llu got %016llx "
               "want %016llx page_holds_seq %lld global_seq %llu\n",
               (unsigned long long)p, (unsigned long long)w, (unsigned long long)s,
               pending.page == UINT64_MAX ? -1LL : (long long)pending.page,
               (unsigned long long)pending.seq, (unsigned long long)pg[w],
               (unsigned long long)(s ? pattern(p, s, w) : 0), holds,
               (unsigned long long)global_seq);
        fflush(stdout);
        exit(3);
    }
    printf("verify ok pages %llu written %llu seq %llu\n", (unsigned long long)npages,
           (unsigned long long)written, (unsigned long long)global_seq);
    fflush(stdout);
}

static void on_usr1(int sig)
{
    (void)sig;
    want_verify = 1;
}

static void on_usr2(int sig)
{
    (void)sig;
    want_round = 1;
}

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000ULL + (uint64_t)ts.tv_nsec / 1000000ULL;
}

static uint64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000ULL + (uint64_t)ts.tv_nsec / 1000ULL;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL); /* EINTR (a signal) just ends it early */
}

int main(int argc, char **argv)
{
    long mib = 1024;
    double percent = 10.0;
    long pause_ms = 50;
    int sig_rounds = 0;
    if (argc > 1) {
        char *end = NULL;
        mib = strtol(argv[1], &end, 10);
        if (end == argv[1] || *end != '\0' || mib <= 0) {
            fprintf(stderr, "usage: %s [MiB>0 [percent>=0 [pause_ms|sig]]]\n", argv[0]);
            return 2;
        }
    }
    if (argc > 2) {
        char *end = NULL;
        percent = strtod(argv[2], &end);
        if (end == argv[2] || *end != '\0' || percent < 0 || percent > 100) {
            fprintf(stderr, "%s: percent must be in 0..100, got %s\n", argv[0], argv[2]);
            return 2;
        }
    }
    if (argc > 3) {
        if (strcmp(argv[3], "sig") == 0) {
            sig_rounds = 1;
        } else {
            char *end = NULL;
            pause_ms = strtol(argv[3], &end, 10);
            if (end == argv[3] || *end != '\0' || pause_ms < 0) {
                fprintf(stderr, "%s: pause must be milliseconds or \"sig\", got %s\n", argv[0],
                        argv[3]);
                return 2;
            }
        }
    }
    setvbuf(stdout, NULL, _IOLBF, 0);

    npages = (uint64_t)mib * (1024 * 1024 / PAGE);
    size_t log_bytes = (npages * sizeof(uint64_t) + PAGE - 1) / PAGE * PAGE;
    size_t bytes = npages * PAGE + log_bytes;
    void *m = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) {
        perror("mmap");
        return 2;
    }
    data = m;
    seqlog = (uint64_t *)((char *)m + npages * PAGE);
    const char *hot = getenv("DIRTY_LOG_HOT");
    if (hot) {
        double h = strtod(hot, NULL);
        if (h > 0 && h < 100)
            hot_pages = (uint64_t)((double)npages * h / 100.0) + 1;
    }

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sa.sa_handler = on_usr1;
    sigaction(SIGUSR1, &sa, NULL);
    sa.sa_handler = on_usr2;
    sigaction(SIGUSR2, &sa, NULL);

    uint64_t per_round = (uint64_t)((double)npages * percent / 100.0 + 0.5);
    if (percent > 0 && per_round == 0)
        per_round = 1;
    printf("start pages %llu percent %g per_round %llu pid %d\n", (unsigned long long)npages,
           percent, (unsigned long long)per_round, (int)getpid());
    fflush(stdout);

    static uint64_t round_no; /* in memory, like the rest of the state */
    if (percent == 0) {
        uint64_t last = now_ms();
        uint64_t prev_us = now_us(), maxgap = 0;
        for (;;) {
            for (int i = 0; i < 64; i++) {
                write_one();
                if (want_verify)
                    break;
            }
            uint64_t t_us = now_us();
            if (t_us - prev_us > maxgap)
                maxgap = t_us - prev_us;
            prev_us = t_us;
            if (want_round) {
                want_round = 0;
                printf("maxgap_us %llu\n", (unsigned long long)maxgap);
                fflush(stdout);
                maxgap = 0;
                prev_us = now_us();
            }
            if (want_verify) {
                want_verify = 0;
                verify();
                prev_us = now_us();
            }
            uint64_t t = now_ms();
            if (t - last >= 200) {
                last = t;
                round_no++;
                printf("round %llu writes %llu ok\n", (unsigned long long)round_no,
                       (unsigned long long)global_seq);
                fflush(stdout);
            }
        }
    }
    for (;;) {
        if (sig_rounds) {
            while (!want_round && !want_verify)
                sleep_ms(2);
            if (want_verify) {
                want_verify = 0;
                verify();
                continue;
            }
            want_round = 0;
        }
        for (uint64_t i = 0; i < per_round; i++) {
            write_one();
            if (want_verify) {
                want_verify = 0;
                verify();
            }
        }
        round_no++;
        printf("round %llu writes %llu ok\n", (unsigned long long)round_no,
               (unsigned long long)global_seq);
        fflush(stdout);
        if (!sig_rounds) {
            sleep_ms(pause_ms);
            if (want_verify) {
                want_verify = 0;
                verify();
            }
        }
    }
}
