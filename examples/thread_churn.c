/*
 * thread_churn [WORKERS]: creates and joins short-lived threads as fast as it can, WORKERS
 * (default 4) creator threads at a time; each short-lived thread writes a pattern into a
 * buffer of its own on its stack and into a slot of a shared table, and checks it before it
 * exits; it also fills and frees a heap block (thread arenas grow and shrink, stacks are
 * unmapped and reused while a checkpoint runs). The main thread checks the table and prints "tick N" (N = threads joined / 100)
 * about every 100 ms, "MISMATCH …" on a wrong byte.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define SLOTS 64
static unsigned long long table[SLOTS][512];
static atomic_ullong joined;

struct job {
    int slot;
    unsigned long long seq;
};

static void *shortlived(void *arg)
{
    struct job *j = arg;
    unsigned char buf[16384];
    memset(buf, (int)(j->seq & 0xff), sizeof buf);
    for (int i = 0; i < 512; i++)
        table[j->slot][i] = j->seq * 1000 + (unsigned long long)i;
    size_t big = (size_t)(256 + (j->seq % 4) * 256) << 10;
    unsigned char *heap = malloc(big);
    if (!heap) {
        printf("INVARIANT malloc failed\n");
        fflush(stdout);
        exit(3);
    }
    memset(heap, (int)(j->seq & 0xff), big);
    for (size_t i = 0; i < big; i += 4093)
        if (heap[i] != (unsigned char)(j->seq & 0xff)) {
            printf("MISMATCH heap of thread %llu\n", j->seq);
            fflush(stdout);
            exit(3);
        }
    free(heap);
    for (size_t i = 0; i < sizeof buf; i += 997)
        if (buf[i] != (unsigned char)(j->seq & 0xff)) {
            printf("MISMATCH stack of thread %llu\n", j->seq);
            fflush(stdout);
            exit(3);
        }
    for (int i = 0; i < 512; i++)
        if (table[j->slot][i] != j->seq * 1000 + (unsigned long long)i) {
            printf("MISMATCH slot %d of thread %llu\n", j->slot, j->seq);
            fflush(stdout);
            exit(3);
        }
    return NULL;
}

static void *creator(void *arg)
{
    int base = (int)(long)arg * (SLOTS / 8);
    unsigned long long seq = (unsigned long long)(long)arg << 40;
    for (;;) {
        pthread_t t[SLOTS / 8];
        struct job jobs[SLOTS / 8];
        for (int i = 0; i < SLOTS / 8; i++) {
            jobs[i].slot = base + i;
            jobs[i].seq = ++seq;
            if (pthread_create(&t[i], NULL, shortlived, &jobs[i])) {
                printf("INVARIANT pthread_create failed\n");
                fflush(stdout);
                exit(3);
            }
        }
        for (int i = 0; i < SLOTS / 8; i++)
            pthread_join(t[i], NULL);
        atomic_fetch_add(&joined, SLOTS / 8);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    int workers = argc > 1 ? atoi(argv[1]) : 4;
    if (workers < 1 || workers > 8)
        workers = 4;
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (long i = 0; i < workers; i++) {
        pthread_t t;
        pthread_create(&t, NULL, creator, (void *)i);
    }
    for (unsigned long long n = 1;; n++) {
        struct timespec d = {0, 100 * 1000000L};
        nanosleep(&d, NULL);
        printf("tick %llu joined %llu\n", n, (unsigned long long)atomic_load(&joined));
    }
}
