/*
 * prefork MIB CHILDREN PCT: a pre-fork server's memory. The parent fills MIB MiB of anonymous
 * memory, then forks CHILDREN workers; each rewrites its own PCT % of the pages (a different
 * slice each) and prints "ready", then all of them idle. The parent prints "tick N" every
 * 100 ms. Pages no worker rewrote stay shared copy-on-write by the whole tree.
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: prefork MIB CHILDREN PCT\n");
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    long pages = atol(argv[1]) * 256, children = atol(argv[2]), pct = atol(argv[3]);
    unsigned char *mem = mmap(NULL, pages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    for (long i = 0; i < pages; i++)
        memset(mem + i * PAGE, (int)(i % 251) + 1, PAGE);
    long slice = pages * pct / 100;
    for (long c = 0; c < children; c++) {
        if (fork() == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            long from = (c * slice) % (pages - slice + 1);
            for (long i = from; i < from + slice; i++)
                memset(mem + i * PAGE, (int)c + 7, PAGE);
            printf("ready %ld\n", c);
            for (;;)
                pause();
        }
    }
    for (long tick = 0;; tick++) {
        printf("tick %ld\n", tick);
        struct timespec ts = { 0, 100 * 1000 * 1000 };
        nanosleep(&ts, NULL);
    }
}
