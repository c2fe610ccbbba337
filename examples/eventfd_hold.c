/*
 * eventfd_hold: opens an eventfd (an fd kind the checkpointer refuses) and
 * keeps it open while printing "tick <n>" every 100 ms forever.
 * The first line is "eventfd fd <fd> pid <pid>".
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    int fd = eventfd(0, 0);
    if (fd < 0) {
        perror("eventfd");
        return 2;
    }
    printf("eventfd fd %d pid %d\n", fd, (int)getpid());
    fflush(stdout);
    unsigned long long n = 0;
    struct timespec d = {0, 100000000L};
    for (;;) {
        n++;
        printf("tick %llu\n", n);
        fflush(stdout);
        nanosleep(&d, NULL);
    }
}
