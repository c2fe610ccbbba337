/*
 * shared_map PATH: like the JVM's hsperfdata, a file (created, 32 KiB) mapped MAP_SHARED and
 * written through memory. Every ~10 ms counter n is stored in word (n * 7) % WORDS of the
 * mapping and in a private copy; then the whole mapping is compared with the copy:
 * "MISMATCH word <i> ..." on a difference. Prints "tick <k> ok" after every 20
 * updates (k = 1, 2, ...).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define SIZE (32 * 1024)
#define WORDS (SIZE / 8)

static uint64_t copy[WORDS];

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s PATH\n", argv[0]);
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    int fd = open(argv[1], O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (fd < 0 || ftruncate(fd, SIZE) != 0) {
        fprintf(stderr, "%s: %s\n", argv[1], strerror(errno));
        return 2;
    }
    uint64_t *map = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (map == MAP_FAILED) {
        fprintf(stderr, "mmap: %s\n", strerror(errno));
        return 2;
    }
    close(fd);
    struct timespec d = {0, 10000000L};
    for (uint64_t n = 1;; n++) {
        uint64_t w = (n * 7) % WORDS;
        map[w] = n;
        copy[w] = n;
        for (uint64_t i = 0; i < WORDS; i++) {
            if (map[i] != copy[i]) {
                printf("MISMATCH word %llu: mapping has %llu, expected %llu\n", (unsigned long long)i,
                       (unsigned long long)map[i], (unsigned long long)copy[i]);
                return 3;
            }
        }
        if (n % 20 == 0)
            printf("tick %llu ok\n", (unsigned long long)(n / 20));
        nanosleep(&d, NULL);
    }
}
