/* TCP echo pair that checks every byte of its stream.
 *   tcp_echo server PORT [BIND_IP]      accept one connection, echo everything back
 *   tcp_echo client HOST PORT           a sender thread streams a known byte pattern; the main
 *                                       thread reads the echo and checks every byte
 * Both print one line per second: "tick <n> sent <bytes> recv <bytes> ok".
 * A wrong byte prints "MISMATCH at <offset>" and exits 3. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static volatile uint64_t sent_bytes, recv_bytes;
static int sock;

static unsigned char pattern(uint64_t i) { return (unsigned char)((i * 2654435761u) >> 13); }

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void *sender(void *arg) {
    (void)arg;
    unsigned char buf[4096];
    for (;;) {
        for (size_t k = 0; k < sizeof buf; k++) buf[k] = pattern(sent_bytes + k);
        ssize_t n = write(sock, buf, sizeof buf);
        if (n <= 0) { perror("write"); exit(4); }
        sent_bytes += (uint64_t)n;
        usleep(2000);
    }
    return NULL;
}

static int run_server(int port, const char *ip) {
    int l = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = ip ? inet_addr(ip) : htonl(INADDR_ANY);
    if (bind(l, (void *)&a, sizeof a) || listen(l, 1)) { perror("bind/listen"); return 2; }
    printf("listening %d\n", port);
    fflush(stdout);
    sock = accept(l, NULL, NULL);
    if (sock < 0) { perror("accept"); return 2; }
    unsigned char buf[8192];
    double last = now();
    uint64_t ticks = 0;
    for (;;) {
        ssize_t n = read(sock, buf, sizeof buf);
        if (n <= 0) { printf("peer closed (%zd)\n", n); fflush(stdout); return 5; }
        for (ssize_t off = 0; off < n;) {
            ssize_t w = write(sock, buf + off, n - off);
            if (w <= 0) { perror("write"); return 4; }
            off += w;
        }
        recv_bytes += n;
        if (now() - last >= 1.0) {
            last = now();
            printf("tick %llu echoed %llu ok\n", (unsigned long long)++ticks, (unsigned long long)recv_bytes);
            fflush(stdout);
        }
    }
}

static int run_client(const char *host, int port) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = inet_addr(host);
    sock = socket(AF_INET, SOCK_STREAM, 0);
    for (int i = 0; connect(sock, (void *)&a, sizeof a) != 0; i++) {
        if (i > 100) { perror("connect"); return 2; }
        usleep(50000);
        close(sock);
        sock = socket(AF_INET, SOCK_STREAM, 0);
    }
    pthread_t t;
    pthread_create(&t, NULL, sender, NULL);
    unsigned char buf[8192];
    double last = now();
    uint64_t ticks = 0;
    for (;;) {
        ssize_t n = read(sock, buf, sizeof buf);
        if (n <= 0) { printf("peer closed (%zd)\n", n); fflush(stdout); return 5; }
        for (ssize_t k = 0; k < n; k++)
            if (buf[k] != pattern(recv_bytes + k)) {
                printf("MISMATCH at %llu\n", (unsigned long long)(recv_bytes + k));
                fflush(stdout);
                exit(3);
            }
        recv_bytes += n;
        if (now() - last >= 1.0) {
            last = now();
            printf("tick %llu sent %llu recv %llu ok\n", (unsigned long long)++ticks, (unsigned long long)sent_bytes,
                   (unsigned long long)recv_bytes);
            fflush(stdout);
        }
    }
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc >= 3 && !strcmp(argv[1], "server")) return run_server(atoi(argv[2]), argc > 3 ? argv[3] : NULL);
    if (argc >= 4 && !strcmp(argv[1], "client")) return run_client(argv[2], atoi(argv[3]));
    fprintf(stderr, "usage: tcp_echo server PORT [IP] | client HOST PORT\n");
    return 2;
}
