/* A ring of N processes over TCP passing K numbered tokens.
 *   token_ring INDEX K ADDR0 ADDR1 ... ADDR(N-1)        (ADDR = ip:port, N >= 2)
 * Process INDEX listens on the port of its own ADDR (any address), connects to ADDR(INDEX+1 mod N)
 * (retrying until it is up) and accepts one connection from its predecessor. Process 0 injects
 * K tokens. A token is (id, hop). A process forwards every token it receives with hop + 1 after
 * about 5 ms. Each process checks that a token it receives has hop = (the hop it saw last for
 * that id) + N (the first time: hop = INDEX), so a duplicated, reordered or skipped token is seen
 * at once: "MISMATCH id <id> hop <h> want <w>" and exit 3. A lost token shows in the tick line
 * (live < K) and, after 10 s, as "STALLED <id>" (printed once; time during which the process
 * itself did not run, e.g. between a checkpoint and its restore, is not counted).
 * Once a second: "tick <n> seen <tokens received> held <tokens waiting here> ids <distinct ids
 * seen> live <ids seen within the last second> ok". The peer closing prints "peer closed" and
 * exits 5. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAXTOK 1024
#define DELAY 0.005
#define STALL 10.0

struct token { uint32_t id, hop; };

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int parse_addr(const char *s, struct sockaddr_in *a) {
    char ip[64];
    const char *colon = strrchr(s, ':');
    if (!colon || colon - s >= (long)sizeof ip) return -1;
    memcpy(ip, s, colon - s);
    ip[colon - s] = 0;
    memset(a, 0, sizeof *a);
    a->sin_family = AF_INET;
    a->sin_port = htons(atoi(colon + 1));
    return inet_pton(AF_INET, ip, &a->sin_addr) == 1 ? 0 : -1;
}

static void write_all(int fd, const void *p, size_t n) {
    const char *c = p;
    while (n > 0) {
        ssize_t w = write(fd, c, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) { perror("write"); exit(4); }
        c += w;
        n -= (size_t)w;
    }
}

/* Tokens waiting to be forwarded, in arrival order. */
static struct token queue[MAXTOK];
static double due[MAXTOK];
static int qhead, qlen;

static int64_t last_hop[MAXTOK];
static double last_seen[MAXTOK];
static int seen_once[MAXTOK], stalled[MAXTOK];

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc < 5) {
        fprintf(stderr, "usage: token_ring INDEX K ADDR0 ADDR1 ... (ADDR = ip:port, at least 2)\n");
        return 2;
    }
    int me = atoi(argv[1]), k = atoi(argv[2]), n = argc - 3;
    if (me < 0 || me >= n || k < 1 || k > MAXTOK) { fprintf(stderr, "bad INDEX or K\n"); return 2; }
    struct sockaddr_in mine, next;
    if (parse_addr(argv[3 + me], &mine) || parse_addr(argv[3 + (me + 1) % n], &next)) {
        fprintf(stderr, "bad address\n");
        return 2;
    }

    int l = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in any = {.sin_family = AF_INET, .sin_port = mine.sin_port, .sin_addr.s_addr = htonl(INADDR_ANY)};
    if (bind(l, (void *)&any, sizeof any) || listen(l, 1)) { perror("bind/listen"); return 2; }
    printf("listening %d\n", ntohs(mine.sin_port));

    int out = -1;
    for (int i = 0;; i++) {
        out = socket(AF_INET, SOCK_STREAM, 0);
        if (connect(out, (void *)&next, sizeof next) == 0) break;
        close(out);
        if (i > 1200) { perror("connect"); return 2; } /* 60 s */
        usleep(50000);
    }
    setsockopt(out, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    printf("connected to %s\n", argv[3 + (me + 1) % n]);

    for (int id = 0; id < k; id++) last_hop[id] = (int64_t)me - n;
    double t = now();
    if (me == 0) {
        for (int id = 0; id < k; id++) {
            last_hop[id] = 0;
            seen_once[id] = 1;
            last_seen[id] = t;
            struct token tok = {(uint32_t)id, 1};
            write_all(out, &tok, sizeof tok);
        }
        printf("injected %d\n", k);
    }

    int in = accept(l, NULL, NULL);
    if (in < 0) { perror("accept"); return 2; }
    close(l);
    printf("accepted\n");

    unsigned char buf[8 * 256];
    size_t have = 0;
    uint64_t seen = 0, ticks = 0;
    double last_tick = now(), last_iter = now();
    for (;;) {
        double tnow = now();
        /* Time the process did not run at all does not count towards a stall. */
        if (tnow - last_iter > 1.0)
            for (int id = 0; id < k; id++) last_seen[id] += tnow - last_iter;
        last_iter = tnow;

        int wait_ms = 100;
        if (qlen > 0) {
            double d = due[qhead] - tnow;
            wait_ms = d <= 0 ? 0 : (int)(d * 1000) + 1;
            if (wait_ms > 100) wait_ms = 100;
        }
        struct pollfd p = {.fd = in, .events = POLLIN};
        int r = poll(&p, 1, wait_ms);
        if (r < 0 && errno != EINTR) { perror("poll"); return 4; }
        if (r > 0) {
            ssize_t got = read(in, buf + have, sizeof buf - have);
            if (got < 0 && errno == EINTR) got = -2;
            if (got == 0 || got == -1) { printf("peer closed (%zd)\n", got); return 5; }
            if (got > 0) have += (size_t)got;
            size_t off = 0;
            tnow = now();
            for (; have - off >= sizeof(struct token); off += sizeof(struct token)) {
                struct token tok;
                memcpy(&tok, buf + off, sizeof tok);
                if (tok.id >= (uint32_t)k) { printf("MISMATCH bad id %u hop %u\n", tok.id, tok.hop); return 3; }
                int64_t want = last_hop[tok.id] + n;
                if ((int64_t)tok.hop != want) {
                    printf("MISMATCH id %u hop %u want %lld\n", tok.id, tok.hop, (long long)want);
                    return 3;
                }
                if (qlen >= MAXTOK) { printf("MISMATCH queue overflow\n"); return 3; }
                last_hop[tok.id] = tok.hop;
                last_seen[tok.id] = tnow;
                seen_once[tok.id] = 1;
                stalled[tok.id] = 0;
                seen++;
                int slot = (qhead + qlen) % MAXTOK;
                queue[slot] = (struct token){tok.id, tok.hop + 1};
                due[slot] = tnow + DELAY;
                qlen++;
            }
            memmove(buf, buf + off, have - off);
            have -= off;
        }
        tnow = now();
        while (qlen > 0 && due[qhead] <= tnow) {
            write_all(out, &queue[qhead], sizeof queue[qhead]);
            qhead = (qhead + 1) % MAXTOK;
            qlen--;
        }
        tnow = now();
        if (tnow - last_tick >= 1.0) {
            last_tick = tnow;
            int ids = 0, live = 0;
            for (int id = 0; id < k; id++) {
                ids += seen_once[id];
                live += seen_once[id] && tnow - last_seen[id] <= 1.0;
                if (seen_once[id] && !stalled[id] && tnow - last_seen[id] > STALL) {
                    stalled[id] = 1;
                    printf("STALLED %d (not seen for %.1f s)\n", id, tnow - last_seen[id]);
                }
            }
            printf("tick %llu seen %llu held %d ids %d live %d ok\n", (unsigned long long)++ticks,
                   (unsigned long long)seen, qlen, ids, live);
        }
    }
}
