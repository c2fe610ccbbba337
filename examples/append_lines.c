/*
 * append_lines PATH: opens PATH with O_WRONLY|O_CREAT|O_APPEND and appends
 * "line <n>\n" (n = 1, 2, ...; counter in memory) every ~10 ms with write(2).
 * Prints "tick <n>" on stdout every 100 lines.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s PATH\n", argv[0]);
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    int fd = open(argv[1], O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd < 0) {
        fprintf(stderr, "open %s: %s\n", argv[1], strerror(errno));
        return 2;
    }
    unsigned long long n = 0;
    struct timespec d = {0, 10000000L};
    char buf[64];
    for (;;) {
        n++;
        int len = snprintf(buf, sizeof buf, "line %llu\n", n);
        ssize_t w;
        do {
            w = write(fd, buf, (size_t)len);
        } while (w < 0 && errno == EINTR);
        if (w != len) {
            printf("WRITE_FAILED line %llu: %s\n", n, w < 0 ? strerror(errno) : "short write");
            fflush(stdout);
            return 3;
        }
        if (n % 100 == 0) {
            printf("tick %llu\n", n);
            fflush(stdout);
        }
        nanosleep(&d, NULL);
    }
}
