/*
 * sysv_ipc KEY: a producer/consumer pair over SysV IPC. The parent makes, with key KEY (and
 * KEY+1 for the queue): a 1 MiB shared memory segment holding a ring of 64 slots and a pattern,
 * a set of two semaphores (free slots, full slots) and a message queue holding four messages
 * of three types, plus a private segment it fills with a pattern and removes (IPC_RMID) while
 * attached. Then it forks: the child produces (sequence number n and 56 bytes derived from n
 * into slot n % 64), the parent consumes and checks every slot is the next number with its
 * bytes. Neither waits for the other process (no wait, no getppid).
 *
 * Prints "child PID", "ids SHM SEM MSG DEST", then "tick N" (N = slots consumed) every 50 ms.
 * On SIGUSR1 it checks: every slot consumed so far was right; consuming goes on (the child
 * and the semaphores work); the ids it got at start still name its objects, with their keys
 * (shmget/semget/msgget of the key give the same ids); the segment has its pattern and five
 * attachments (the parent's, the child's, and a read-only view in the parent whose first page
 * is unmapped and third page inaccessible: three mappings, which the kernel counts as three);
 * the view cannot be made writable and shows the segment's bytes; the removed segment is still attached (SHM_DEST, two attachments, pattern);
 * the queue holds the same four messages in order (read with MSG_COPY, not taken); the
 * semaphores count every slot (free + full + the one each side may hold = 64). Prints
 * "state ok", or "INVARIANT <what>" lines and "state bad".
 *
 * sysv_ipc attach SHMID: attaches segment SHMID, prints "attached", and sleeps (a process
 * outside the checkpoint using it).
 *
 * sysv_ipc undo KEY: makes a set of one semaphore with key KEY, takes it with SEM_UNDO (the
 * kernel will give it back when the process exits), then prints "tick N" every 50 ms.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/msg.h>
#include <sys/sem.h>
#include <sys/mman.h>
#include <sys/shm.h>
#include <time.h>
#include <unistd.h>

#ifndef MSG_COPY
#define MSG_COPY 040000
#endif

#define SEG (1 << 20)
#define RING 64
#define DEST_SIZE (3 * 4096 + 100)

struct slot {
    uint64_t seq;
    unsigned char bytes[56];
};

struct ring {
    struct slot slots[RING];
};

static volatile sig_atomic_t asked;
static void on_usr1(int s) { (void)s; asked = 1; }

static int bad;
#define CHECK(cond, ...)                    \
    do {                                    \
        if (!(cond)) {                      \
            printf("INVARIANT " __VA_ARGS__); \
            printf("\n");                   \
            bad = 1;                        \
        }                                   \
    } while (0)

static unsigned char pattern(size_t i, int salt) { return (unsigned char)(i * 31 + salt + (i >> 12)); }

struct qmsg {
    long type;
    char text[32];
};
static const long MTYPES[4] = {3, 1, 7, 3};
static const char *MTEXT[4] = {"first of 3", "one", "seven", "second of 3"};

static void sem_change(int sem, int num, int by)
{
    struct sembuf op = {.sem_num = (unsigned short)num, .sem_op = (short)by, .sem_flg = 0};
    while (semop(sem, &op, 1) != 0) {
        if (errno != EINTR) {
            perror("semop");
            exit(2);
        }
    }
}

static void produce(struct ring *r, int sem)
{
    for (uint64_t n = 0;; n++) {
        sem_change(sem, 0, -1);
        struct slot *s = &r->slots[n % RING];
        for (int i = 0; i < 56; i++) s->bytes[i] = (unsigned char)(n * 7 + i);
        __atomic_store_n(&s->seq, n, __ATOMIC_RELEASE);
        sem_change(sem, 1, 1);
        if (n % 16 == 0) usleep(1000);
    }
}

static int attach_only(int id)
{
    if (shmat(id, NULL, SHM_RDONLY) == (void *)-1) {
        perror("shmat");
        return 2;
    }
    printf("attached\n");
    for (;;) pause();
}

static int with_undo(key_t key)
{
    int sem = semget(key, 1, IPC_CREAT | IPC_EXCL | 0600);
    unsigned short one[1] = {1};
    struct sembuf take = {.sem_num = 0, .sem_op = -1, .sem_flg = SEM_UNDO};
    if (sem < 0 || semctl(sem, 0, SETALL, one) != 0 || semop(sem, &take, 1) != 0) {
        perror("semaphore with SEM_UNDO");
        return 2;
    }
    for (unsigned long n = 0;; n++) {
        printf("tick %lu\n", n);
        usleep(50000);
    }
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc == 3 && strcmp(argv[1], "attach") == 0) return attach_only(atoi(argv[2]));
    if (argc == 3 && strcmp(argv[1], "undo") == 0) return with_undo((key_t)strtol(argv[2], NULL, 0));
    if (argc != 2) {
        fprintf(stderr, "usage: sysv_ipc KEY | sysv_ipc attach SHMID | sysv_ipc undo KEY\n");
        return 2;
    }
    key_t key = (key_t)strtol(argv[1], NULL, 0);
    int shm = shmget(key, SEG, IPC_CREAT | IPC_EXCL | 0640);
    int sem = semget(key, 2, IPC_CREAT | IPC_EXCL | 0600);
    int msg = msgget(key + 1, IPC_CREAT | IPC_EXCL | 0620);
    int dest = shmget(IPC_PRIVATE, DEST_SIZE, IPC_CREAT | 0600);
    if (shm < 0 || sem < 0 || msg < 0 || dest < 0) {
        perror("making the objects");
        return 2;
    }
    unsigned short init[2] = {RING, 0};
    if (semctl(sem, 0, SETALL, init) != 0) return 2;
    for (int i = 0; i < 4; i++) {
        struct qmsg m = {.type = MTYPES[i]};
        snprintf(m.text, sizeof m.text, "%s", MTEXT[i]);
        if (msgsnd(msg, &m, strlen(m.text) + 1, 0) != 0) return 2;
    }
    unsigned char *base = shmat(shm, NULL, 0);
    unsigned char *gone = shmat(dest, NULL, 0);
    if (base == (void *)-1 || gone == (void *)-1) return 2;
    for (size_t i = sizeof(struct ring); i < SEG; i++) base[i] = pattern(i, 1);
    for (size_t i = 0; i < DEST_SIZE; i++) gone[i] = pattern(i, 2);
    if (shmctl(dest, IPC_RMID, NULL) != 0) return 2;
    struct ring *r = (struct ring *)base;

    pid_t child = fork();
    if (child < 0) return 2;
    if (child == 0) produce(r, sem);
    /* A read-only second view of the segment, in the parent alone, whose first page is
     * unmapped and whose third page is inaccessible: three mappings, each an attachment. */
    unsigned char *view = shmat(shm, NULL, SHM_RDONLY);
    if (view == (void *)-1 || munmap(view, 4096) != 0 || mprotect(view + 2 * 4096, 4096, PROT_NONE) != 0) {
        perror("read-only view");
        return 2;
    }
    printf("child %d\n", (int)child);
    printf("ids %d %d %d %d\n", shm, sem, msg, dest);
    signal(SIGUSR1, on_usr1);

    uint64_t next = 0;
    int wrong = 0;
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        struct sembuf op = {.sem_num = 1, .sem_op = -1, .sem_flg = IPC_NOWAIT};
        if (semop(sem, &op, 1) == 0) {
            struct slot *s = &r->slots[next % RING];
            uint64_t got = __atomic_load_n(&s->seq, __ATOMIC_ACQUIRE);
            int ok = got == next;
            for (int i = 0; i < 56 && ok; i++) ok = s->bytes[i] == (unsigned char)(next * 7 + i);
            if (!ok && !wrong) {
                wrong = 1;
                printf("INVARIANT slot %llu holds sequence %llu\n", (unsigned long long)next, (unsigned long long)got);
            }
            next++;
            sem_change(sem, 0, 1);
        } else if (errno == EAGAIN) {
            usleep(500);
        } else if (errno != EINTR) {
            perror("semop");
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
        /* Consuming goes on: wait for 32 more slots. */
        uint64_t from = next;
        for (int i = 0; i < 4000 && next < from + 32; i++) {
            struct sembuf w = {.sem_num = 1, .sem_op = -1, .sem_flg = IPC_NOWAIT};
            if (semop(sem, &w, 1) != 0) {
                usleep(500);
                continue;
            }
            struct slot *s = &r->slots[next % RING];
            CHECK(__atomic_load_n(&s->seq, __ATOMIC_ACQUIRE) == next, "slot %llu wrong while checking", (unsigned long long)next);
            next++;
            sem_change(sem, 0, 1);
        }
        CHECK(next >= from + 32, "the producer stalled (consumed %llu since the check began)", (unsigned long long)(next - from));
        CHECK(shmget(key, 0, 0) == shm, "shmget of the key gives %d, not %d", shmget(key, 0, 0), shm);
        CHECK(semget(key, 0, 0) == sem, "semget of the key gives %d, not %d", semget(key, 0, 0), sem);
        CHECK(msgget(key + 1, 0) == msg, "msgget of the key gives %d, not %d", msgget(key + 1, 0), msg);
        struct shmid_ds ds;
        if (shmctl(shm, IPC_STAT, &ds) != 0) {
            CHECK(0, "IPC_STAT of segment %d: %s", shm, strerror(errno));
        } else {
            CHECK(ds.shm_perm.__key == key, "segment key %#x", (unsigned)ds.shm_perm.__key);
            /* The parent's, the child's and the view's three mappings. */
            CHECK(ds.shm_nattch == 5, "segment has %lu attachments", (unsigned long)ds.shm_nattch);
            CHECK((ds.shm_perm.mode & 0777) == 0640, "segment mode %o", ds.shm_perm.mode);
            CHECK(ds.shm_segsz == SEG, "segment size %zu", (size_t)ds.shm_segsz);
        }
        size_t badbyte = 0;
        for (size_t i = sizeof(struct ring); i < SEG && !badbyte; i++)
            if (base[i] != pattern(i, 1)) badbyte = i;
        CHECK(!badbyte, "segment byte %zu changed", badbyte);
        unsigned char vec;
        CHECK(mincore(view, 4096, &vec) != 0 && errno == ENOMEM, "the view's first page is mapped");
        CHECK(mprotect(view + 4096, 4096, PROT_READ | PROT_WRITE) != 0 && errno == EACCES, "the read-only view can be made writable");
        CHECK(memcmp(view + 4096, base + 4096, 4096) == 0 && memcmp(view + 3 * 4096, base + 3 * 4096, SEG - 3 * 4096) == 0,
              "the view shows other bytes than the segment");
        CHECK(mprotect(view + 2 * 4096, 4096, PROT_NONE) == 0, "the view's third page");
        if (shmctl(dest, IPC_STAT, &ds) != 0) {
            CHECK(0, "IPC_STAT of removed segment %d: %s", dest, strerror(errno));
        } else {
            CHECK(ds.shm_perm.mode & SHM_DEST, "removed segment not pending removal (mode %o)", ds.shm_perm.mode);
            CHECK(ds.shm_nattch == 2, "removed segment has %lu attachments", (unsigned long)ds.shm_nattch);
            CHECK(ds.shm_segsz == DEST_SIZE, "removed segment size %zu", (size_t)ds.shm_segsz);
        }
        badbyte = 0;
        for (size_t i = 0; i < DEST_SIZE && !badbyte; i++)
            if (gone[i] != pattern(i, 2)) badbyte = i + 1;
        CHECK(!badbyte, "removed segment byte %zu changed", badbyte - 1);
        struct msqid_ds q;
        if (msgctl(msg, IPC_STAT, &q) != 0) {
            CHECK(0, "IPC_STAT of queue %d: %s", msg, strerror(errno));
        } else {
            CHECK(q.msg_qnum == 4, "queue holds %lu messages", (unsigned long)q.msg_qnum);
            CHECK((q.msg_perm.mode & 0777) == 0620, "queue mode %o", q.msg_perm.mode);
        }
        for (int i = 0; i < 4; i++) {
            struct qmsg m;
            memset(&m, 0, sizeof m);
            ssize_t n = msgrcv(msg, &m, sizeof m.text, i, MSG_COPY | IPC_NOWAIT);
            CHECK(n == (ssize_t)strlen(MTEXT[i]) + 1 && m.type == MTYPES[i] && strcmp(m.text, MTEXT[i]) == 0,
                  "message %d is type %ld \"%s\" (%zd bytes)", i, m.type, m.text, n);
        }
        /* Each side holds at most one slot between its two operations. */
        int free_slots = semctl(sem, 0, GETVAL), full = semctl(sem, 1, GETVAL);
        CHECK(free_slots >= 0 && full >= 0 && free_slots + full <= RING && free_slots + full >= RING - 2,
              "semaphores count %d free and %d full slots of %d", free_slots, full, RING);
        struct semid_ds sd;
        CHECK(semctl(sem, 0, IPC_STAT, &sd) == 0 && (sd.sem_perm.mode & 0777) == 0600 && sd.sem_nsems == 2,
              "semaphore set mode or size");
        printf(bad ? "state bad\n" : "state ok\n");
    }
}
