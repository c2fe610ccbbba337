/*
 * sockopt_state PORT DUAL_PORT V6ONLY_PORT UDP_PORT: holds TCP listeners, a TCP connection to
 * itself and UDP sockets with every socket option a program can set on them that changes what
 * it sees, and checks, when asked, that each is still as it set it up:
 *
 * - two listeners on 127.0.0.1:PORT sharing the port with SO_REUSEPORT, with SO_REUSEADDR,
 *   keepalive and its timers, SO_LINGER, a receive buffer it set (the send buffer left to the
 *   kernel), SO_RCVTIMEO, SO_PRIORITY, SO_MARK, SO_RCVLOWAT, TCP_NODELAY, TCP_USER_TIMEOUT,
 *   TCP_CONGESTION, TCP_DEFER_ACCEPT, TCP_FASTOPEN, TCP_MAXSEG, IP_TTL, IP_TOS, IP_FREEBIND and
 *   a listen backlog of 37;
 * - a connection from a client socket (TCP_CORK-free, send buffer set, IP_TTL) to that
 *   listener, accepted (options inherited, plus TCP_CORK, SO_SNDTIMEO; its priority starts at 0);
 * - [::]:DUAL_PORT with IPV6_V6ONLY=0 (takes IPv4 clients too), and [::]:V6ONLY_PORT with
 *   IPV6_V6ONLY=1 next to 0.0.0.0:V6ONLY_PORT: each accepts and prints `accept NAME FAMILY`;
 * - two UDP sockets on 0.0.0.0:UDP_PORT (SO_REUSEADDR), one joined to 239.7.7.7 on lo and to
 *   232.1.1.1 from 127.0.0.1 only (source-specific), with SO_BROADCAST, IP_MULTICAST_TTL/
 *   LOOP/IF, IP_PKTINFO; the other with IP_MULTICAST_ALL=0; a UDP socket connected and shut
 *   down for writing; an IPv6 UDP socket joined to ff15::77 on lo with its hop limits and
 *   traffic class.
 *
 * Prints "tick N" every 50 ms. On SIGUSR1 it checks everything (and that a datagram sent to
 * each group arrives, and the connection carries bytes both ways), prints "state ok" or
 * "INVARIANT <what>".
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef SO_BUF_LOCK
#define SO_BUF_LOCK 72
#endif

static volatile sig_atomic_t asked;
static void on_usr1(int s) { (void)s; asked = 1; }

static int bad;
static void invariant(const char *what, long got, long want)
{
    printf("INVARIANT %s: got %ld, want %ld\n", what, got, want);
    bad = 1;
}

static void die(const char *what)
{
    printf("setup failed: %s: %s\n", what, strerror(errno));
    fflush(stdout);
    exit(1);
}

static void seti(int fd, int level, int opt, int v, const char *what)
{
    if (setsockopt(fd, level, opt, &v, sizeof v) != 0) die(what);
}

static int geti(int fd, int level, int opt)
{
    int v = -12345;
    socklen_t l = sizeof v;
    if (getsockopt(fd, level, opt, &v, &l) != 0) return -errno;
    return v;
}

static void want(int fd, int level, int opt, int v, const char *sock, const char *name)
{
    int got = geti(fd, level, opt);
    if (got != v) {
        char what[128];
        snprintf(what, sizeof what, "%s %s", sock, name);
        invariant(what, got, v);
    }
}
#define WANT(fd, level, opt, v, sock) want(fd, level, opt, v, sock, #opt)

static struct sockaddr_in v4(const char *a, int port)
{
    struct sockaddr_in s = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, a, &s.sin_addr);
    return s;
}

static struct sockaddr_in6 v6any(int port)
{
    struct sockaddr_in6 s = {.sin6_family = AF_INET6, .sin6_port = htons(port), .sin6_addr = in6addr_any};
    return s;
}

static int port_main, port_dual, port_v6only, port_udp;
static int l1, l2, cli, acc, dual, only6, only4, u1, u2, ushut, u6, sender;
static unsigned lo_index;

static void tcp_listener_opts(int fd)
{
    seti(fd, SOL_SOCKET, SO_REUSEADDR, 1, "SO_REUSEADDR");
    seti(fd, SOL_SOCKET, SO_REUSEPORT, 1, "SO_REUSEPORT");
    seti(fd, SOL_SOCKET, SO_KEEPALIVE, 1, "SO_KEEPALIVE");
    seti(fd, IPPROTO_TCP, TCP_KEEPIDLE, 77, "TCP_KEEPIDLE");
    seti(fd, IPPROTO_TCP, TCP_KEEPINTVL, 11, "TCP_KEEPINTVL");
    seti(fd, IPPROTO_TCP, TCP_KEEPCNT, 4, "TCP_KEEPCNT");
    struct linger lg = {1, 7};
    if (setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg)) die("SO_LINGER");
    seti(fd, SOL_SOCKET, SO_RCVBUF, 65536, "SO_RCVBUF");
    struct timeval tv = {3, 500000};
    if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv)) die("SO_RCVTIMEO");
    seti(fd, SOL_SOCKET, SO_MARK, 42, "SO_MARK");
    seti(fd, SOL_SOCKET, SO_RCVLOWAT, 3, "SO_RCVLOWAT");
    seti(fd, IPPROTO_TCP, TCP_NODELAY, 1, "TCP_NODELAY");
    seti(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, 12345, "TCP_USER_TIMEOUT");
    if (setsockopt(fd, IPPROTO_TCP, TCP_CONGESTION, "reno", 4)) die("TCP_CONGESTION");
    seti(fd, IPPROTO_TCP, TCP_DEFER_ACCEPT, 5, "TCP_DEFER_ACCEPT");
    seti(fd, IPPROTO_TCP, TCP_FASTOPEN, 17, "TCP_FASTOPEN");
    seti(fd, IPPROTO_TCP, TCP_MAXSEG, 1200, "TCP_MAXSEG");
    seti(fd, IPPROTO_IP, IP_TTL, 33, "IP_TTL");
    seti(fd, IPPROTO_IP, IP_TOS, 0x10, "IP_TOS");
    /* After IP_TOS, which sets the priority from the TOS. */
    seti(fd, SOL_SOCKET, SO_PRIORITY, 5, "SO_PRIORITY");
    seti(fd, IPPROTO_IP, IP_FREEBIND, 1, "IP_FREEBIND");
}

static void check_tcp_common(int fd, const char *n)
{
    WANT(fd, SOL_SOCKET, SO_KEEPALIVE, 1, n);
    WANT(fd, IPPROTO_TCP, TCP_KEEPIDLE, 77, n);
    WANT(fd, IPPROTO_TCP, TCP_KEEPINTVL, 11, n);
    WANT(fd, IPPROTO_TCP, TCP_KEEPCNT, 4, n);
    WANT(fd, SOL_SOCKET, SO_RCVBUF, 2 * 65536, n);
    WANT(fd, SOL_SOCKET, SO_MARK, 42, n);
    WANT(fd, SOL_SOCKET, SO_RCVLOWAT, 3, n);
    WANT(fd, IPPROTO_TCP, TCP_NODELAY, 1, n);
    WANT(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, 12345, n);
    WANT(fd, IPPROTO_IP, IP_TOS, 0x10, n);
    WANT(fd, IPPROTO_IP, IP_FREEBIND, 1, n);
    struct linger lg = {0, 0};
    socklen_t l = sizeof lg;
    getsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, &l);
    if (lg.l_onoff != 1 || lg.l_linger != 7) invariant(n, lg.l_linger, 7);
    struct timeval tv = {0, 0};
    l = sizeof tv;
    getsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, &l);
    if (tv.tv_sec != 3 || tv.tv_usec != 500000) invariant("SO_RCVTIMEO usec", tv.tv_sec * 1000000 + tv.tv_usec, 3500000);
    char cc[16] = {0};
    l = sizeof cc;
    getsockopt(fd, IPPROTO_TCP, TCP_CONGESTION, cc, &l);
    if (strcmp(cc, "reno")) {
        printf("INVARIANT %s TCP_CONGESTION is %s\n", n, cc);
        bad = 1;
    }
}

static void setup(void)
{
    struct sockaddr_in a = v4("127.0.0.1", port_main);
    l1 = socket(AF_INET, SOCK_STREAM, 0);
    l2 = socket(AF_INET, SOCK_STREAM, 0);
    tcp_listener_opts(l1);
    tcp_listener_opts(l2);
    if (bind(l1, (void *)&a, sizeof a) || listen(l1, 37)) die("listener 1");
    if (bind(l2, (void *)&a, sizeof a) || listen(l2, 5)) die("listener 2 (SO_REUSEPORT)");

    cli = socket(AF_INET, SOCK_STREAM, 0);
    seti(cli, SOL_SOCKET, SO_SNDBUF, 96 * 1024, "client SO_SNDBUF");
    seti(cli, IPPROTO_IP, IP_TTL, 44, "client IP_TTL");
    seti(cli, IPPROTO_TCP, TCP_NODELAY, 1, "client TCP_NODELAY");
    if (connect(cli, (void *)&a, sizeof a)) die("connect");
    /* TCP_DEFER_ACCEPT: the connection is accepted once data arrives. */
    if (write(cli, "abc", 3) != 3) die("write");
    struct pollfd p[2] = {{l1, POLLIN, 0}, {l2, POLLIN, 0}};
    if (poll(p, 2, 10000) <= 0) die("poll accept");
    acc = accept(p[0].revents ? l1 : l2, NULL, NULL);
    if (acc < 0) die("accept");
    char b[3];
    if (read(acc, b, 3) != 3) die("read");
    seti(acc, IPPROTO_TCP, TCP_CORK, 1, "TCP_CORK");
    struct timeval tv = {2, 500000};
    if (setsockopt(acc, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv)) die("SO_SNDTIMEO");

    struct sockaddr_in6 d = v6any(port_dual);
    dual = socket(AF_INET6, SOCK_STREAM, 0);
    seti(dual, IPPROTO_IPV6, IPV6_V6ONLY, 0, "IPV6_V6ONLY=0");
    if (bind(dual, (void *)&d, sizeof d) || listen(dual, 8)) die("[::] dual-stack listener");
    struct sockaddr_in6 o6 = v6any(port_v6only);
    only6 = socket(AF_INET6, SOCK_STREAM, 0);
    seti(only6, IPPROTO_IPV6, IPV6_V6ONLY, 1, "IPV6_V6ONLY=1");
    seti(only6, IPPROTO_IPV6, IPV6_UNICAST_HOPS, 9, "IPV6_UNICAST_HOPS");
    if (bind(only6, (void *)&o6, sizeof o6) || listen(only6, 8)) die("[::] v6-only listener");
    struct sockaddr_in o4 = v4("0.0.0.0", port_v6only);
    only4 = socket(AF_INET, SOCK_STREAM, 0);
    if (bind(only4, (void *)&o4, sizeof o4) || listen(only4, 8)) die("0.0.0.0 listener beside the v6-only one");

    struct sockaddr_in ua = v4("0.0.0.0", port_udp);
    u1 = socket(AF_INET, SOCK_DGRAM, 0);
    u2 = socket(AF_INET, SOCK_DGRAM, 0);
    seti(u1, SOL_SOCKET, SO_REUSEADDR, 1, "udp SO_REUSEADDR");
    seti(u2, SOL_SOCKET, SO_REUSEADDR, 1, "udp2 SO_REUSEADDR");
    seti(u1, SOL_SOCKET, SO_BROADCAST, 1, "SO_BROADCAST");
    seti(u1, IPPROTO_IP, IP_MULTICAST_TTL, 5, "IP_MULTICAST_TTL");
    seti(u1, IPPROTO_IP, IP_MULTICAST_LOOP, 0, "IP_MULTICAST_LOOP");
    struct in_addr lo = {htonl(INADDR_LOOPBACK)};
    if (setsockopt(u1, IPPROTO_IP, IP_MULTICAST_IF, &lo, sizeof lo)) die("IP_MULTICAST_IF");
    seti(u1, IPPROTO_IP, IP_PKTINFO, 1, "IP_PKTINFO");
    seti(u1, SOL_SOCKET, SO_RCVBUF, 50000, "udp SO_RCVBUF");
    seti(u2, IPPROTO_IP, IP_MULTICAST_ALL, 0, "IP_MULTICAST_ALL");
    if (bind(u1, (void *)&ua, sizeof ua)) die("udp bind");
    if (bind(u2, (void *)&ua, sizeof ua)) die("udp2 bind (SO_REUSEADDR)");
    struct ip_mreqn m = {.imr_ifindex = (int)lo_index};
    inet_pton(AF_INET, "239.7.7.7", &m.imr_multiaddr);
    if (setsockopt(u1, IPPROTO_IP, IP_ADD_MEMBERSHIP, &m, sizeof m)) die("IP_ADD_MEMBERSHIP");
    struct ip_mreq_source ms;
    inet_pton(AF_INET, "232.1.1.1", &ms.imr_multiaddr);
    ms.imr_interface = lo;
    inet_pton(AF_INET, "127.0.0.1", &ms.imr_sourceaddr);
    if (setsockopt(u1, IPPROTO_IP, IP_ADD_SOURCE_MEMBERSHIP, &ms, sizeof ms)) die("IP_ADD_SOURCE_MEMBERSHIP");

    ushut = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in to = v4("127.0.0.1", port_udp);
    if (connect(ushut, (void *)&to, sizeof to) || shutdown(ushut, SHUT_WR)) die("udp shutdown");

    u6 = socket(AF_INET6, SOCK_DGRAM, 0);
    seti(u6, IPPROTO_IPV6, IPV6_V6ONLY, 1, "udp6 IPV6_V6ONLY");
    seti(u6, IPPROTO_IPV6, IPV6_MULTICAST_HOPS, 7, "IPV6_MULTICAST_HOPS");
    seti(u6, IPPROTO_IPV6, IPV6_UNICAST_HOPS, 19, "udp6 IPV6_UNICAST_HOPS");
    seti(u6, IPPROTO_IPV6, IPV6_TCLASS, 0x20, "IPV6_TCLASS");
    struct sockaddr_in6 ua6 = v6any(port_udp);
    if (bind(u6, (void *)&ua6, sizeof ua6)) die("udp6 bind");
    struct ipv6_mreq m6 = {.ipv6mr_interface = lo_index};
    inet_pton(AF_INET6, "ff15::77", &m6.ipv6mr_multiaddr);
    if (setsockopt(u6, IPPROTO_IPV6, IPV6_JOIN_GROUP, &m6, sizeof m6)) die("IPV6_JOIN_GROUP");

    sender = socket(AF_INET, SOCK_DGRAM, 0);
    if (setsockopt(sender, IPPROTO_IP, IP_MULTICAST_IF, &lo, sizeof lo)) die("sender IP_MULTICAST_IF");
}

/* A datagram sent to GROUP:port_udp from 127.0.0.1 reaches u1. */
static void check_group(const char *group)
{
    char msg[64], got[64];
    snprintf(msg, sizeof msg, "to %s %ld", group, (long)time(NULL));
    struct sockaddr_in g = v4(group, port_udp);
    for (int tries = 0; tries < 3; tries++) {
        if (sendto(sender, msg, strlen(msg), 0, (void *)&g, sizeof g) < 0) {
            printf("INVARIANT sendto %s: %s\n", group, strerror(errno));
            bad = 1;
            return;
        }
        struct pollfd p = {u1, POLLIN, 0};
        while (poll(&p, 1, 500) > 0) {
            ssize_t n = recv(u1, got, sizeof got - 1, 0);
            if (n < 0) break;
            got[n] = 0;
            if (!strcmp(got, msg)) return;
        }
    }
    printf("INVARIANT no datagram to %s arrived (membership lost)\n", group);
    bad = 1;
}

static int joined6(int fd, const char *group)
{
    struct group_filter *gf = calloc(1, GROUP_FILTER_SIZE(4));
    gf->gf_interface = lo_index;
    struct sockaddr_in6 *g = (void *)&gf->gf_group;
    g->sin6_family = AF_INET6;
    inet_pton(AF_INET6, group, &g->sin6_addr);
    gf->gf_numsrc = 4;
    socklen_t l = GROUP_FILTER_SIZE(4);
    int r = getsockopt(fd, IPPROTO_IPV6, MCAST_MSFILTER, gf, &l);
    free(gf);
    return r == 0;
}

static void check(void)
{
    bad = 0;
    check_tcp_common(l1, "listener");
    /* An accepted socket starts with priority 0, whatever its listener's. */
    WANT(l1, SOL_SOCKET, SO_PRIORITY, 5, "listener");
    WANT(l2, SOL_SOCKET, SO_PRIORITY, 5, "listener2");
    check_tcp_common(l2, "listener2");
    check_tcp_common(acc, "accepted");
    WANT(l1, SOL_SOCKET, SO_REUSEADDR, 1, "listener");
    WANT(l1, SOL_SOCKET, SO_REUSEPORT, 1, "listener");
    WANT(l1, SOL_SOCKET, SO_BUF_LOCK, 2, "listener");
    /* The kernel keeps a number of retransmissions: 5 s reads back as 7. */
    WANT(l1, IPPROTO_TCP, TCP_DEFER_ACCEPT, 7, "listener");
    WANT(l1, IPPROTO_TCP, TCP_FASTOPEN, 17, "listener");
    WANT(l1, IPPROTO_TCP, TCP_MAXSEG, 1200, "listener");
    WANT(l1, IPPROTO_IP, IP_TTL, 33, "listener");
    WANT(acc, IPPROTO_TCP, TCP_CORK, 1, "accepted");
    WANT(acc, SOL_SOCKET, SO_BUF_LOCK, 2, "accepted");
    struct timeval tv = {0, 0};
    socklen_t l = sizeof tv;
    getsockopt(acc, SOL_SOCKET, SO_SNDTIMEO, &tv, &l);
    if (tv.tv_sec != 2 || tv.tv_usec != 500000) invariant("accepted SO_SNDTIMEO usec", tv.tv_sec * 1000000 + tv.tv_usec, 2500000);
    WANT(cli, SOL_SOCKET, SO_SNDBUF, 2 * 96 * 1024, "client");
    WANT(cli, SOL_SOCKET, SO_BUF_LOCK, 1, "client");
    WANT(cli, IPPROTO_IP, IP_TTL, 44, "client");
    WANT(cli, IPPROTO_TCP, TCP_NODELAY, 1, "client");
    WANT(cli, SOL_SOCKET, SO_KEEPALIVE, 0, "client");

    WANT(dual, IPPROTO_IPV6, IPV6_V6ONLY, 0, "dual");
    WANT(only6, IPPROTO_IPV6, IPV6_V6ONLY, 1, "v6only");
    WANT(only6, IPPROTO_IPV6, IPV6_UNICAST_HOPS, 9, "v6only");
    WANT(only4, SOL_SOCKET, SO_BUF_LOCK, 0, "plain listener");

    WANT(u1, SOL_SOCKET, SO_REUSEADDR, 1, "udp");
    WANT(u1, SOL_SOCKET, SO_BROADCAST, 1, "udp");
    WANT(u1, IPPROTO_IP, IP_MULTICAST_TTL, 5, "udp");
    WANT(u1, IPPROTO_IP, IP_MULTICAST_LOOP, 0, "udp");
    WANT(u1, IPPROTO_IP, IP_PKTINFO, 1, "udp");
    WANT(u1, SOL_SOCKET, SO_RCVBUF, 100000, "udp");
    WANT(u1, SOL_SOCKET, SO_BUF_LOCK, 2, "udp");
    WANT(u2, IPPROTO_IP, IP_MULTICAST_ALL, 0, "udp2");
    WANT(u2, SOL_SOCKET, SO_BROADCAST, 0, "udp2");
    struct in_addr mif = {0};
    l = sizeof mif;
    getsockopt(u1, IPPROTO_IP, IP_MULTICAST_IF, &mif, &l);
    if (mif.s_addr != htonl(INADDR_LOOPBACK)) invariant("udp IP_MULTICAST_IF", (long)ntohl(mif.s_addr), INADDR_LOOPBACK);
    WANT(u6, IPPROTO_IPV6, IPV6_V6ONLY, 1, "udp6");
    WANT(u6, IPPROTO_IPV6, IPV6_MULTICAST_HOPS, 7, "udp6");
    WANT(u6, IPPROTO_IPV6, IPV6_UNICAST_HOPS, 19, "udp6");
    WANT(u6, IPPROTO_IPV6, IPV6_TCLASS, 0x20, "udp6");
    if (!joined6(u6, "ff15::77")) invariant("udp6 not joined to ff15::77 on lo", 0, 1);

    errno = 0;
    if (send(ushut, "x", 1, MSG_NOSIGNAL) >= 0 || errno != EPIPE) invariant("send on the UDP socket shut down for writing (errno)", errno, EPIPE);

    check_group("239.7.7.7");
    check_group("232.1.1.1");

    /* The connection carries bytes both ways (the accepted end is corked: the kernel sends
     * within 200 ms anyway). */
    char b[4];
    if (write(cli, "ping", 4) != 4) invariant("write ping", errno, 0);
    else if (recv(acc, b, 4, MSG_WAITALL) != 4 || memcmp(b, "ping", 4)) invariant("read ping", errno, 0);
    if (write(acc, "pong", 4) != 4) invariant("write pong", errno, 0);
    struct pollfd p = {cli, POLLIN, 0};
    if (poll(&p, 1, 3000) <= 0 || recv(cli, b, 4, MSG_WAITALL) != 4 || memcmp(b, "pong", 4)) invariant("read pong", errno, 0);

    printf(bad ? "state bad\n" : "state ok\n");
}

static void accept_some(void)
{
    struct pollfd p[3] = {{dual, POLLIN, 0}, {only6, POLLIN, 0}, {only4, POLLIN, 0}};
    const char *names[3] = {"dual", "v6only", "v4"};
    if (poll(p, 3, 50) <= 0) return;
    for (int i = 0; i < 3; i++) {
        if (!(p[i].revents & POLLIN)) continue;
        struct sockaddr_storage ss;
        socklen_t l = sizeof ss;
        int c = accept(p[i].fd, (void *)&ss, &l);
        if (c < 0) continue;
        const char *fam = "v4";
        if (ss.ss_family == AF_INET6) {
            struct sockaddr_in6 *s6 = (void *)&ss;
            fam = IN6_IS_ADDR_V4MAPPED(&s6->sin6_addr) ? "v4mapped" : "v6";
        }
        printf("accept %s %s\n", names[i], fam);
        /* The client closes first, so that the TIME_WAIT stays on its side: this listener has
         * no SO_REUSEADDR, and neither it nor its restore could bind over one. */
        struct pollfd e = {c, POLLIN, 0};
        char b[16];
        if (poll(&e, 1, 2000) > 0) (void)!read(c, b, sizeof b);
        close(c);
    }
}

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: sockopt_state PORT DUAL_PORT V6ONLY_PORT UDP_PORT\n");
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    port_main = atoi(argv[1]);
    port_dual = atoi(argv[2]);
    port_v6only = atoi(argv[3]);
    port_udp = atoi(argv[4]);
    lo_index = if_nametoindex("lo");
    signal(SIGUSR1, on_usr1);
    signal(SIGPIPE, SIG_IGN);
    setup();
    printf("ready\n");
    for (unsigned long long n = 1;; n++) {
        if (asked) {
            asked = 0;
            check();
        }
        accept_some();
        printf("tick %llu\n", n);
    }
}
