/* A compute thread and a sender thread, to watch what a checkpoint's phase 1 holds back.
 *   compute_sender file PATH          the sender appends a 64-byte record to PATH every 10 ms
 *   compute_sender tcp HOST PORT      the sender writes a 64-byte record to a TCP connection
 *                                     every 10 ms (the peer must read, e.g. tcp_echo server)
 * The compute thread increments a counter as fast as it can (sleeping 1 ms every million
 * iterations); the sender counts the writes it completed (plain write(2) calls). Every 50 ms the
 * main thread prints "tick <n> compute <counter> sends <writes>" (through stdio). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static volatile uint64_t compute, sends;
static int fd = -1;

static void *computer(void *arg) {
    (void)arg;
    for (;;) {
        uint64_t c = compute + 1;
        compute = c;
        if (c % 1000000 == 0) usleep(1000);
    }
    return NULL;
}

static void *sender(void *arg) {
    (void)arg;
    char rec[64];
    for (;;) {
        memset(rec, 'a' + (int)(sends % 26), sizeof rec);
        rec[sizeof rec - 1] = '\n';
        for (size_t off = 0; off < sizeof rec;) {
            ssize_t w = write(fd, rec + off, sizeof rec - off);
            if (w <= 0) { printf("WRITE_FAILED\n"); exit(4); }
            off += (size_t)w;
        }
        sends++;
        usleep(10000);
    }
    return NULL;
}

/* Reads and drops whatever a TCP peer sends back (an echo server). */
static void *drainer(void *arg) {
    (void)arg;
    char buf[4096];
    while (read(fd, buf, sizeof buf) > 0) {}
    return NULL;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    int tcp = 0;
    if (argc == 3 && !strcmp(argv[1], "file")) {
        fd = open(argv[2], O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd < 0) { perror(argv[2]); return 2; }
    } else if (argc == 4 && !strcmp(argv[1], "tcp")) {
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[3]))};
        a.sin_addr.s_addr = inet_addr(argv[2]);
        fd = socket(AF_INET, SOCK_STREAM, 0);
        for (int i = 0; connect(fd, (void *)&a, sizeof a) != 0; i++) {
            if (i > 200) { perror("connect"); return 2; }
            usleep(50000);
            close(fd);
            fd = socket(AF_INET, SOCK_STREAM, 0);
        }
        tcp = 1;
    } else {
        fprintf(stderr, "usage: compute_sender file PATH | tcp HOST PORT\n");
        return 2;
    }
    pthread_t t1, t2, t3;
    pthread_create(&t1, NULL, computer, NULL);
    pthread_create(&t2, NULL, sender, NULL);
    if (tcp) pthread_create(&t3, NULL, drainer, NULL);
    for (uint64_t tick = 1;; tick++) {
        usleep(50000);
        printf("tick %llu compute %llu sends %llu\n", (unsigned long long)tick, (unsigned long long)compute,
               (unsigned long long)sends);
    }
}
