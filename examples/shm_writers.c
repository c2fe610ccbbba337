/* A parent and forked children writing the same shared memory: shared anonymous memory (MIB
 * MiB), a memfd (4 MiB, its fd closed) and a SysV segment (2 MiB, removed once attached), for
 * the dirty tracking of shared memory. Every write takes a process-shared mutex (in the
 * anonymous memory's first page), rewrites one whole page of one of the three at random with
 * a new generation G (word 0 = G, every other word derived from G and the page), and adds
 * the change of the page's generation to a sum kept beside the mutex. So the sum of every
 * page's generation equals that sum, and each page checks itself: a page missing from an
 * incremental checkpoint (an older copy restored) breaks the first, a torn one the second.
 *
 *   shm_writers NKIDS MIB [held]
 *   "ready gen G pids P..." once set up; "gen G" every 50 ms.
 *   SIGUSR1 (to the parent): under the mutex, checks everything and prints
 *            "check gen G ok" or "check gen G BAD <what>".
 *   SIGUSR2 (to the parent): toggles hold (no process writes while held) and prints
 *            "hold gen G" or "release gen G".
 *   SIGHUP (to the parent): forks a child that makes 200 writes and exits; once it is
 *            reaped, prints "spawned gen G" (send it while not held: the child waits).
 * With "held" it starts held. Each process writes one page, then sleeps 1 ms. */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/shm.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096
#define WORDS (PAGE / 8)

struct header {
    pthread_mutex_t lock;
    uint64_t gen, sum;
    uint32_t hold;
};

static struct header *hdr;
static uint64_t *region[3];
static size_t pages[3];
/* Region 0's first page is the header. */
static const size_t first[3] = {1, 0, 0};

static uint64_t mix(uint64_t x) {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static uint64_t word(uint64_t g, int r, size_t p, int i) {
    return mix(g * 0x100000001b3ull ^ ((uint64_t)r << 56) ^ ((uint64_t)p << 16) ^ (uint64_t)i);
}

static void fill(int r, size_t p, uint64_t g) {
    uint64_t *w = region[r] + p * WORDS;
    for (int i = 1; i < WORDS; i++) w[i] = word(g, r, p, i);
    w[0] = g;
}

static volatile sig_atomic_t want_check, want_toggle, want_spawn;
static void on_hup(int s) { (void)s; want_spawn = 1; }
static void on_usr1(int s) { (void)s; want_check = 1; }
static void on_usr2(int s) { (void)s; want_toggle = 1; }

static void check(void) {
    pthread_mutex_lock(&hdr->lock);
    uint64_t sum = 0, max = 0;
    char bad[200] = "";
    for (int r = 0; r < 3 && !bad[0]; r++)
        for (size_t p = first[r]; p < pages[r]; p++) {
            uint64_t *w = region[r] + p * WORDS;
            sum += w[0];
            if (w[0] > max) max = w[0];
            for (int i = 1; i < WORDS; i++)
                if (w[i] != word(w[0], r, p, i)) {
                    snprintf(bad, sizeof bad, "region %d page %zu word %d torn (page gen %llu)", r, p, i,
                             (unsigned long long)w[0]);
                    break;
                }
            if (bad[0]) break;
        }
    if (!bad[0] && sum != hdr->sum)
        snprintf(bad, sizeof bad, "sum of page generations %llu, recorded %llu", (unsigned long long)sum,
                 (unsigned long long)hdr->sum);
    if (!bad[0] && max > hdr->gen)
        snprintf(bad, sizeof bad, "a page has generation %llu, past the last %llu", (unsigned long long)max,
                 (unsigned long long)hdr->gen);
    printf("check gen %llu %s%s\n", (unsigned long long)hdr->gen, bad[0] ? "BAD " : "ok", bad);
    pthread_mutex_unlock(&hdr->lock);
}

static void writer(uint64_t seed, int parent, long limit);

/* A child that writes a little and is gone before the next checkpoint: its page tables,
 * where its writes were tracked, go with it. */
static void spawn(void) {
    pid_t c = fork();
    if (c < 0) { perror("fork"); return; }
    if (c == 0) { writer(mix((uint64_t)getpid() * 3), 0, 200); _exit(0); }
    while (waitpid(c, NULL, 0) < 0) {}
    printf("spawned gen %llu\n", (unsigned long long)__atomic_load_n(&hdr->gen, __ATOMIC_RELAXED));
}

static void writer(uint64_t seed, int parent, long limit) {
    uint64_t rng = seed | 1;
    long done = 0;
    struct timespec nap = {0, 1000000};
    int since_print = 0;
    while (limit < 0 || done < limit) {
        if (parent) {
            if (want_check) { want_check = 0; check(); }
            if (want_spawn) { want_spawn = 0; spawn(); }
            if (want_toggle) {
                want_toggle = 0;
                pthread_mutex_lock(&hdr->lock);
                hdr->hold = !hdr->hold;
                printf("%s gen %llu\n", hdr->hold ? "hold" : "release", (unsigned long long)hdr->gen);
                pthread_mutex_unlock(&hdr->lock);
            }
            if (++since_print >= 50) {
                since_print = 0;
                printf("gen %llu\n", (unsigned long long)__atomic_load_n(&hdr->gen, __ATOMIC_RELAXED));
            }
        }
        rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
        int pick = (int)(rng % 100);
        int r = pick < 60 ? 0 : pick < 85 ? 1 : 2;
        size_t p = first[r] + (size_t)((rng >> 20) % (pages[r] - first[r]));
        pthread_mutex_lock(&hdr->lock);
        if (!hdr->hold) {
            uint64_t g = ++hdr->gen, old = region[r][p * WORDS];
            fill(r, p, g);
            hdr->sum += g - old;
            done++;
        }
        pthread_mutex_unlock(&hdr->lock);
        nanosleep(&nap, NULL);
    }
}

int main(int argc, char **argv) {
    int nkids = argc > 1 ? atoi(argv[1]) : 2;
    size_t mib = argc > 2 ? strtoul(argv[2], NULL, 10) : 64;
    int held = argc > 3 && strcmp(argv[3], "held") == 0;
    if (nkids < 0 || nkids > 64 || mib < 1) { fprintf(stderr, "usage: shm_writers NKIDS MIB [held]\n"); return 2; }
    setvbuf(stdout, NULL, _IOLBF, 0);
    pages[0] = mib * 256;
    pages[1] = 1024;
    pages[2] = 512;
    region[0] = mmap(NULL, pages[0] * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    int fd = memfd_create("shm_writers", 0);
    if (fd < 0 || ftruncate(fd, pages[1] * PAGE) != 0) { perror("memfd"); return 2; }
    region[1] = mmap(NULL, pages[1] * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    int id = shmget(IPC_PRIVATE, pages[2] * PAGE, IPC_CREAT | 0600);
    if (id < 0) { perror("shmget"); return 2; }
    region[2] = shmat(id, NULL, 0);
    if (region[0] == MAP_FAILED || region[1] == MAP_FAILED || region[2] == (void *)-1) { perror("map"); return 2; }
    /* Gone with its last attachment. */
    shmctl(id, IPC_RMID, NULL);
    hdr = (struct header *)region[0];
    pthread_mutexattr_t a;
    pthread_mutexattr_init(&a);
    pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
    pthread_mutex_init(&hdr->lock, &a);
    hdr->hold = held;
    for (int r = 0; r < 3; r++)
        for (size_t p = first[r]; p < pages[r]; p++) fill(r, p, 0);
    signal(SIGUSR1, on_usr1);
    signal(SIGUSR2, on_usr2);
    signal(SIGHUP, on_hup);
    char pids[64 * 12] = "";
    for (int i = 0; i < nkids; i++) {
        pid_t c = fork();
        if (c < 0) { perror("fork"); return 2; }
        if (c == 0) writer(mix((uint64_t)getpid()), 0, -1);
        snprintf(pids + strlen(pids), sizeof pids - strlen(pids), " %d", (int)c);
    }
    printf("ready gen %llu pids %d%s\n", (unsigned long long)hdr->gen, (int)getpid(), pids);
    writer(mix((uint64_t)getpid() * 7), 1, -1);
    return 0;
}
