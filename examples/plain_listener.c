/*
 * plain_listener PORT: a TCP echo server on 127.0.0.1:PORT that does NOT set SO_REUSEADDR (as
 * many programs don't). Serves each client line by line with poll, up to 64 clients, and
 * prints "tick N" every 100 ms.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc < 2) {
        fprintf(stderr, "usage: plain_listener PORT\n");
        return 2;
    }
    int l = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((unsigned short)atoi(argv[1]))};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof a) < 0 || listen(l, 16) < 0) {
        perror("listen");
        return 2;
    }
    struct pollfd p[65];
    int n = 1;
    p[0].fd = l;
    p[0].events = POLLIN;
    struct timespec last;
    clock_gettime(CLOCK_MONOTONIC, &last);
    for (unsigned long long tick = 1;;) {
        poll(p, n, 20);
        if ((p[0].revents & POLLIN) && n < 65) {
            int c = accept(l, NULL, NULL);
            if (c >= 0) {
                p[n].fd = c;
                p[n].events = POLLIN;
                p[n].revents = 0;
                n++;
            }
        }
        for (int i = 1; i < n; i++) {
            if (!(p[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
            char buf[4096];
            ssize_t r = read(p[i].fd, buf, sizeof buf);
            if (r <= 0 || write(p[i].fd, buf, (size_t)r) != r) {
                close(p[i].fd);
                p[i] = p[--n];
                i--;
            }
        }
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        if ((now.tv_sec - last.tv_sec) * 1000000000L + (now.tv_nsec - last.tv_nsec) >= 100000000L) {
            last = now;
            printf("tick %llu\n", tick++);
        }
    }
}
