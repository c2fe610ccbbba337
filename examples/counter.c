/* counter: prints "tick <n>" (n = 1, 2, ...) every 100 ms forever. */
#define _GNU_SOURCE
#include <stdio.h>
#include <time.h>

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    unsigned long long n = 0;
    struct timespec d = {0, 100000000L};
    for (;;) {
        n++;
        printf("tick %llu\n", n);
        fflush(stdout);
        nanosleep(&d, NULL);
    }
}
