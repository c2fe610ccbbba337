/*
 * refused_hold: holds two fds of kinds ckpt refuses to checkpoint (a userfaultfd of its own and
 * an io_uring instance) and prints "tick <n>" every 100 ms forever.
 * The first line is "refused fds <uffd> <uring> pid <pid>".
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/io_uring.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    int uffd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
    struct io_uring_params p;
    memset(&p, 0, sizeof p);
    int ring = (int)syscall(SYS_io_uring_setup, 4, &p);
    if (uffd < 0 || ring < 0) {
        perror("userfaultfd or io_uring_setup");
        return 2;
    }
    printf("refused fds %d %d pid %d\n", uffd, ring, (int)getpid());
    unsigned long long n = 0;
    struct timespec d = {0, 100000000L};
    for (;;) {
        n++;
        printf("tick %llu\n", n);
        nanosleep(&d, NULL);
    }
}
