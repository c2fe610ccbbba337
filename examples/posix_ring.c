/*
 * posix_ring TAG: a producer/consumer pair over POSIX shared memory. The parent makes
 * /dev/shm/TAG (shm_open, 256 KiB, mapped shared) holding a ring of 64 slots, a pattern and an
 * unnamed process-shared semaphore (sem_init(…, 1, 1)) used as a lock around a counter, and
 * two named semaphores (sem_open "/TAG-free" = 64 and "/TAG-full" = 0). Then it forks: the
 * child produces (sequence number n and 56 bytes derived from n into slot n % 64, and adds n
 * to the locked counter), the parent consumes and checks every slot is the next number with
 * its bytes. Neither waits for the other process (no wait, no getppid).
 *
 * Prints "child PID", then "tick N" (N = slots consumed) every 50 ms. On SIGUSR1 it checks:
 * every slot consumed so far was right; consuming goes on; the locked counter equals the sum
 * of the numbers produced, as far as the consumer can tell (between the sum of those it
 * consumed and that plus the ring's worth); the pattern; the named semaphores count every slot.
 * Prints "state ok", or "INVARIANT <what>" lines and "state bad".
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <semaphore.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define SIZE (256 << 10)
#define RING 64

struct slot {
    uint64_t seq;
    unsigned char bytes[56];
};

struct shared {
    sem_t lock;
    uint64_t sum, produced;
    struct slot slots[RING];
};

static volatile sig_atomic_t asked;
static void on_usr1(int s) { (void)s; asked = 1; }

static int bad;
#define CHECK(cond, ...)                      \
    do {                                      \
        if (!(cond)) {                        \
            printf("INVARIANT " __VA_ARGS__); \
            printf("\n");                     \
            bad = 1;                          \
        }                                     \
    } while (0)

static unsigned char pattern(size_t i) { return (unsigned char)(i * 13 + 5 + (i >> 12)); }

static void wait_sem(sem_t *s)
{
    while (sem_wait(s) != 0)
        if (errno != EINTR) {
            perror("sem_wait");
            exit(2);
        }
}

static void produce(struct shared *sh, sem_t *free_slots, sem_t *full)
{
    for (uint64_t n = 0;; n++) {
        wait_sem(free_slots);
        struct slot *s = &sh->slots[n % RING];
        for (int i = 0; i < 56; i++) s->bytes[i] = (unsigned char)(n * 5 + i);
        __atomic_store_n(&s->seq, n, __ATOMIC_RELEASE);
        wait_sem(&sh->lock);
        sh->sum += n;
        sh->produced = n + 1;
        sem_post(&sh->lock);
        sem_post(full);
        if (n % 16 == 0) usleep(1000);
    }
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc != 2) {
        fprintf(stderr, "usage: posix_ring TAG\n");
        return 2;
    }
    char name[256], free_name[256], full_name[256];
    snprintf(name, sizeof name, "/%s", argv[1]);
    snprintf(free_name, sizeof free_name, "/%s-free", argv[1]);
    snprintf(full_name, sizeof full_name, "/%s-full", argv[1]);
    int fd = shm_open(name, O_RDWR | O_CREAT | O_EXCL, 0600);
    if (fd < 0 || ftruncate(fd, SIZE) != 0) {
        perror("shm_open");
        return 2;
    }
    unsigned char *base = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    sem_t *free_slots = sem_open(free_name, O_CREAT | O_EXCL, 0600, RING);
    sem_t *full = sem_open(full_name, O_CREAT | O_EXCL, 0600, 0);
    if (base == MAP_FAILED || free_slots == SEM_FAILED || full == SEM_FAILED) {
        perror("setup");
        return 2;
    }
    struct shared *sh = (struct shared *)base;
    if (sem_init(&sh->lock, 1, 1) != 0) return 2;
    for (size_t i = sizeof *sh; i < SIZE; i++) base[i] = pattern(i);

    pid_t child = fork();
    if (child < 0) return 2;
    if (child == 0) produce(sh, free_slots, full);
    printf("child %d\n", (int)child);
    signal(SIGUSR1, on_usr1);

    uint64_t next = 0, consumed_sum = 0;
    int wrong = 0;
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        if (sem_trywait(full) == 0) {
            struct slot *s = &sh->slots[next % RING];
            uint64_t got = __atomic_load_n(&s->seq, __ATOMIC_ACQUIRE);
            int ok = got == next;
            for (int i = 0; i < 56 && ok; i++) ok = s->bytes[i] == (unsigned char)(next * 5 + i);
            if (!ok && !wrong) {
                wrong = 1;
                printf("INVARIANT slot %llu holds sequence %llu\n", (unsigned long long)next, (unsigned long long)got);
            }
            consumed_sum += next;
            next++;
            sem_post(free_slots);
        } else if (errno == EAGAIN) {
            usleep(500);
        } else if (errno != EINTR) {
            perror("sem_trywait");
            return 2;
        }
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        if ((now.tv_sec - t0.tv_sec) * 1000 + (now.tv_nsec - t0.tv_nsec) / 1000000 >= 50) {
            t0 = now;
            printf("tick %llu\n", (unsigned long long)next);
        }
        if (!asked) continue;
        asked = 0;
        bad = wrong;
        if (wrong) printf("INVARIANT a slot was wrong earlier\n");
        uint64_t from = next;
        for (int i = 0; i < 4000 && next < from + 32; i++) {
            if (sem_trywait(full) != 0) {
                usleep(500);
                continue;
            }
            CHECK(__atomic_load_n(&sh->slots[next % RING].seq, __ATOMIC_ACQUIRE) == next, "slot %llu wrong while checking",
                  (unsigned long long)next);
            consumed_sum += next;
            next++;
            sem_post(free_slots);
        }
        CHECK(next >= from + 32, "the producer stalled (consumed %llu since the check began)", (unsigned long long)(next - from));
        wait_sem(&sh->lock);
        uint64_t sum = sh->sum, produced = sh->produced;
        sem_post(&sh->lock);
        /* The producer is ahead by at most the ring: its sum is ours plus those numbers. */
        uint64_t expect = consumed_sum;
        for (uint64_t n = next; n < produced; n++) expect += n;
        CHECK(produced >= next && produced <= next + RING && sum == expect,
              "locked counter %llu for %llu produced, expected %llu (consumed %llu)", (unsigned long long)sum,
              (unsigned long long)produced, (unsigned long long)expect, (unsigned long long)next);
        size_t badbyte = 0;
        for (size_t i = sizeof *sh; i < SIZE && !badbyte; i++)
            if (base[i] != pattern(i)) badbyte = i;
        CHECK(!badbyte, "byte %zu changed", badbyte);
        int f = -1, u = -1;
        sem_getvalue(free_slots, &f);
        sem_getvalue(full, &u);
        CHECK(f >= 0 && u >= 0 && f + u <= RING && f + u >= RING - 1, "semaphores count %d free and %d full of %d", f, u, RING);
        printf(bad ? "state bad\n" : "state ok\n");
    }
}
