/*
 * numa_policy MODE: holds a NUMA memory policy, which ckpt refuses to checkpoint rather than
 * bring back without, and prints "tick N" every 50 ms:
 *   task     the main thread's policy (set_mempolicy MPOL_BIND to node 0, as numactl does)
 *   thread   a second thread's own policy (MPOL_PREFERRED, node 0)
 *   range    a mapping's policy (mbind MPOL_INTERLEAVE, node 0) under a default task policy
 * Raw system calls: libnuma is not needed.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define MPOL_PREFERRED 1
#define MPOL_BIND 2
#define MPOL_INTERLEAVE 3

static unsigned long node0 = 1;

static void *holder(void *arg)
{
    (void)arg;
    if (syscall(SYS_set_mempolicy, MPOL_PREFERRED, &node0, 64))
        perror("set_mempolicy");
    for (;;)
        pause();
    return NULL;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    const char *mode = argc > 1 ? argv[1] : "";
    int ok = -1;
    if (!strcmp(mode, "task")) {
        ok = (int)syscall(SYS_set_mempolicy, MPOL_BIND, &node0, 64);
    } else if (!strcmp(mode, "thread")) {
        pthread_t t;
        ok = pthread_create(&t, NULL, holder, NULL);
    } else if (!strcmp(mode, "range")) {
        size_t len = 1 << 20;
        char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        ok = p == MAP_FAILED ? -1 : (int)syscall(SYS_mbind, p, len, MPOL_INTERLEAVE, &node0, 64, 0);
        if (!ok)
            memset(p, 1, len);
    } else {
        fprintf(stderr, "usage: numa_policy task|thread|range\n");
        return 2;
    }
    if (ok) {
        perror(mode);
        return 1;
    }
    for (long tick = 0;; tick++) {
        printf("tick %ld\n", tick);
        struct timespec ts = { 0, 50 * 1000 * 1000 };
        nanosleep(&ts, NULL);
    }
}
