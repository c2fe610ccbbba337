/*
 * sock_state: holds sockets in the states issue 12 found changed after a restore, and checks,
 * when asked, that each is as it was set up:
 * - an ICMP echo ("ping") socket bound to 127.0.0.1 (its echo identifier chosen by the
 *   kernel), with IP_TTL 33: same family, protocol and identifier, and it still gets its
 *   replies from 127.0.0.1;
 * - a raw ICMP socket bound to 127.0.0.1 whose ICMP_FILTER passes echo replies only, with
 *   IP_TTL 44: same protocol, name and filter, and it sees the ping socket's reply;
 * - a UDP socket with a classic BPF filter that cuts every datagram to 3 bytes (11 with its
 *   UDP header, which the filter sees), locked
 *   (SO_LOCK_FILTER): the same program read back with SO_GET_FILTER, still locked (detaching
 *   fails with EPERM), and a 10-byte datagram to itself arrives as 3 bytes;
 * - TCP sockets not connected: one just made (TCP_NODELAY, SO_KEEPALIVE), one bound to
 *   127.0.0.1 on a port of the kernel's choice, one bound to 127.0.0.1 without a port
 *   (IP_BIND_ADDRESS_NO_PORT): same names, not connected, in state CLOSE;
 * - a half-closed local connection: the client sent "abc" then shut down its sending side
 *   (FIN_WAIT2), the server has "abc" unread then end of file (CLOSE_WAIT), a peek offset of
 *   1 (SO_PEEK_OFF: a peek shows "bc"), and had sent
 *   "xyz" the client has not read; the client cannot send any more (EPIPE);
 * - a connection whose one end shut down its receiving side (both ESTABLISHED), the other
 *   with SO_PEEK_OFF 0; the bound TCP socket with SO_MAX_PACING_RATE and SO_TXREHASH 0, the
 *   filtered UDP socket with SO_RCVMARK;
 * - a Unix datagram socketpair whose receiving end has a classic filter cutting datagrams to
 *   2 bytes, locked, a datagram "he" (sent as "hello") unread, and the socket-level options
 *   SO_PRIORITY 5, SO_KEEPALIVE, SO_TIMESTAMP, SO_RCVLOWAT 2, SO_LINGER on for 7 s;
 * - a route netlink socket bound by the kernel (its port id, the pid) to the multicast
 *   routing groups (quiet: no notification comes while the test runs), with NETLINK_EXT_ACK and NETLINK_GET_STRICT_CHK, and one never bound:
 *   same port ids, groups and flags, and the bound one still answers a request for `lo`;
 *   a generic netlink socket joined to group 63 (past the 32 of the bind bitmap, no family's) by
 *   NETLINK_ADD_MEMBERSHIP;
 * - a packet socket (SOCK_DGRAM, ETH_P_IP) bound to lo with PACKET_AUXDATA and
 *   PACKET_IGNORE_OUTGOING and a promiscuous membership on lo: same address and options, lo
 *   promiscuous, and it sees a datagram sent to 127.0.0.1.
 *
 * With the argument `ebpf` it also attaches an eBPF socket filter (SO_ATTACH_BPF) to a UDP
 * socket and prints "ebpf on fd N"; with `ended`, it also holds both ends of a connection
 * closed by both sides ("ended on fd N"); with `nlqueued`, a route netlink socket with a
 * reply unread ("nlqueued on fd N"); with `packetring`, a packet socket with a receive ring
 * ("packetring on fd N"): ckpt cannot bring these back, the checkpoint must be refused naming
 * it.
 *
 * Prints "tick N" every 50 ms. On SIGUSR1 it checks everything, prints "state ok" or
 * "INVARIANT <what>" lines then "state bad"; a check leaves every socket as it found it.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/bpf.h>
#include <linux/filter.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <net/if.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <netinet/in.h>
#include <netinet/ip_icmp.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* linux/icmp.h, which clashes with netinet/ip_icmp.h. */
#define ICMP_FILTER 1
struct icmp_filter {
    unsigned int data;
};

static volatile sig_atomic_t asked;
static void on_usr1(int s) { (void)s; asked = 1; }

static int ping4, rawicmp, filt, tfresh, tbound, tnoport, hc_srv, hc_cli, rd_a, rd_b, ux[2], nlr, nlu, nlg, pk;
static struct sockaddr_nl nlr_addr;
static struct sockaddr_in raw_addr, ping_addr, filt_addr, bound_addr, noport_addr;
static int bad;
static unsigned short seq;

static void invariant(const char *what, long long a, long long b)
{
    printf("INVARIANT %s: got %lld, want %lld\n", what, a, b);
    bad = 1;
}

static void die(const char *what)
{
    perror(what);
    exit(2);
}

static int geti(int fd, int level, int opt)
{
    int v = -1;
    socklen_t l = sizeof v;
    if (getsockopt(fd, level, opt, &v, &l)) return -errno;
    return v;
}

static int tcp_state(int fd)
{
    struct tcp_info ti;
    socklen_t l = sizeof ti;
    if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &l)) return -errno;
    return ti.tcpi_state;
}

static struct sockaddr_in lo(unsigned short port)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return a;
}

static struct sockaddr_in name_of(int fd)
{
    struct sockaddr_in a = {0};
    socklen_t l = sizeof a;
    if (getsockname(fd, (void *)&a, &l)) die("getsockname");
    return a;
}

static void same_name(const char *what, int fd, struct sockaddr_in want)
{
    struct sockaddr_in a = name_of(fd);
    if (a.sin_addr.s_addr != want.sin_addr.s_addr) invariant(what, ntohl(a.sin_addr.s_addr), ntohl(want.sin_addr.s_addr));
    if (a.sin_port != want.sin_port) invariant(what, ntohs(a.sin_port), ntohs(want.sin_port));
}

static int revents(int fd, short ev)
{
    struct pollfd p = {fd, ev, 0};
    return poll(&p, 1, 0) > 0 ? p.revents : 0;
}

static void pair(int *cli, int *srv)
{
    int l = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = lo(0);
    socklen_t al = sizeof a;
    if (l < 0 || bind(l, (void *)&a, sizeof a) || listen(l, 1) || getsockname(l, (void *)&a, &al)) die("listener");
    *cli = socket(AF_INET, SOCK_STREAM, 0);
    if (*cli < 0 || connect(*cli, (void *)&a, sizeof a)) die("connect");
    *srv = accept(l, NULL, NULL);
    if (*srv < 0) die("accept");
    close(l);
}

static void set_up(void)
{
    ping4 = socket(AF_INET, SOCK_DGRAM, IPPROTO_ICMP);
    if (ping4 < 0) die("ping socket (is the group in net.ipv4.ping_group_range?)");
    struct sockaddr_in a = lo(0);
    int ttl = 33;
    if (bind(ping4, (void *)&a, sizeof a) || setsockopt(ping4, IPPROTO_IP, IP_TTL, &ttl, sizeof ttl)) die("ping bind");
    ping_addr = name_of(ping4);

    rawicmp = socket(AF_INET, SOCK_RAW, IPPROTO_ICMP);
    struct icmp_filter only_replies = {~(1u << ICMP_ECHOREPLY)};
    int ttl44 = 44;
    if (rawicmp < 0 || bind(rawicmp, (void *)&a, sizeof a) ||
        setsockopt(rawicmp, SOL_RAW, ICMP_FILTER, &only_replies, sizeof only_replies) ||
        setsockopt(rawicmp, IPPROTO_IP, IP_TTL, &ttl44, sizeof ttl44))
        die("raw icmp");
    raw_addr = name_of(rawicmp);

    filt = socket(AF_INET, SOCK_DGRAM, 0);
    if (filt < 0 || bind(filt, (void *)&a, sizeof a)) die("udp");
    filt_addr = name_of(filt);
    struct sock_filter cut[] = {BPF_STMT(BPF_RET | BPF_K, 11)};
    struct sock_fprog f = {1, cut};
    int one = 1;
    if (setsockopt(filt, SOL_SOCKET, SO_ATTACH_FILTER, &f, sizeof f)) die("SO_ATTACH_FILTER");
    if (setsockopt(filt, SOL_SOCKET, SO_LOCK_FILTER, &one, sizeof one)) die("SO_LOCK_FILTER");

    tfresh = socket(AF_INET, SOCK_STREAM, 0);
    if (tfresh < 0 || setsockopt(tfresh, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) ||
        setsockopt(tfresh, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one))
        die("tcp fresh");
    tbound = socket(AF_INET, SOCK_STREAM, 0);
    int rate = 1000000, rehash = 0;
    if (tbound < 0 || bind(tbound, (void *)&a, sizeof a) ||
        setsockopt(tbound, SOL_SOCKET, SO_MAX_PACING_RATE, &rate, sizeof rate) ||
        setsockopt(tbound, SOL_SOCKET, SO_TXREHASH, &rehash, sizeof rehash))
        die("tcp bound");
    bound_addr = name_of(tbound);
    tnoport = socket(AF_INET, SOCK_STREAM, 0);
    if (tnoport < 0 || setsockopt(tnoport, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one) ||
        bind(tnoport, (void *)&a, sizeof a))
        die("tcp bound without port");
    noport_addr = name_of(tnoport);

    pair(&hc_cli, &hc_srv);
    if (write(hc_srv, "xyz", 3) != 3 || write(hc_cli, "abc", 3) != 3 || shutdown(hc_cli, SHUT_WR)) die("half close");
    int po1 = 1;
    if (setsockopt(hc_srv, SOL_SOCKET, SO_PEEK_OFF, &po1, sizeof po1)) die("SO_PEEK_OFF");
    pair(&rd_a, &rd_b);
    int peek_off = 0;
    if (shutdown(rd_a, SHUT_RD) || setsockopt(rd_b, SOL_SOCKET, SO_PEEK_OFF, &peek_off, sizeof peek_off) ||
        setsockopt(filt, SOL_SOCKET, SO_RCVMARK, &one, sizeof one))
        die("shutdown SHUT_RD, SO_PEEK_OFF, SO_RCVMARK");
    if (socketpair(AF_UNIX, SOCK_DGRAM, 0, ux)) die("socketpair");
    struct sock_filter two[] = {BPF_STMT(BPF_RET | BPF_K, 2)};
    struct sock_fprog f2 = {1, two};
    int prio = 5, lowat = 2;
    struct linger lg = {1, 7};
    if (setsockopt(ux[1], SOL_SOCKET, SO_ATTACH_FILTER, &f2, sizeof f2) ||
        setsockopt(ux[1], SOL_SOCKET, SO_LOCK_FILTER, &one, sizeof one) ||
        setsockopt(ux[1], SOL_SOCKET, SO_PRIORITY, &prio, sizeof prio) ||
        setsockopt(ux[1], SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one) ||
        setsockopt(ux[1], SOL_SOCKET, SO_TIMESTAMP, &one, sizeof one) ||
        setsockopt(ux[1], SOL_SOCKET, SO_RCVLOWAT, &lowat, sizeof lowat) ||
        setsockopt(ux[1], SOL_SOCKET, SO_LINGER, &lg, sizeof lg))
        die("unix options");
    if (send(ux[0], "hello", 5, 0) != 5) die("unix send");
    nlr = socket(AF_NETLINK, SOCK_RAW, NETLINK_ROUTE);
    struct sockaddr_nl na = {.nl_family = AF_NETLINK, .nl_groups = RTMGRP_IPV4_MROUTE | RTMGRP_IPV6_MROUTE};
    if (nlr < 0 || bind(nlr, (void *)&na, sizeof na)) die("netlink route");
    if (setsockopt(nlr, SOL_NETLINK, NETLINK_EXT_ACK, &one, sizeof one) ||
        setsockopt(nlr, SOL_NETLINK, NETLINK_GET_STRICT_CHK, &one, sizeof one))
        die("netlink flags");
    socklen_t nl = sizeof nlr_addr;
    if (getsockname(nlr, (void *)&nlr_addr, &nl)) die("netlink name");
    nlu = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_ROUTE);
    nlg = socket(AF_NETLINK, SOCK_RAW, NETLINK_GENERIC);
    int g63 = 63;
    if (nlu < 0 || nlg < 0 || setsockopt(nlg, SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, &g63, sizeof g63)) die("netlink others");
    pk = socket(AF_PACKET, SOCK_DGRAM, htons(ETH_P_IP));
    struct sockaddr_ll ll = {.sll_family = AF_PACKET, .sll_protocol = htons(ETH_P_IP), .sll_ifindex = if_nametoindex("lo")};
    struct packet_mreq pm = {.mr_ifindex = ll.sll_ifindex, .mr_type = PACKET_MR_PROMISC};
    if (pk < 0 || setsockopt(pk, SOL_PACKET, PACKET_AUXDATA, &one, sizeof one) ||
        setsockopt(pk, SOL_PACKET, PACKET_IGNORE_OUTGOING, &one, sizeof one) || bind(pk, (void *)&ll, sizeof ll) ||
        setsockopt(pk, SOL_PACKET, PACKET_ADD_MEMBERSHIP, &pm, sizeof pm))
        die("packet socket");
    /* The FIN is acknowledged at once on loopback. */
    for (int i = 0; i < 100 && (tcp_state(hc_cli) != TCP_FIN_WAIT2 || tcp_state(hc_srv) != TCP_CLOSE_WAIT); i++) usleep(1000);
}

static void check_ping(void)
{
    same_name("ping socket name", ping4, ping_addr);
    if (geti(ping4, SOL_SOCKET, SO_PROTOCOL) != IPPROTO_ICMP) invariant("ping protocol", geti(ping4, SOL_SOCKET, SO_PROTOCOL), IPPROTO_ICMP);
    if (geti(ping4, SOL_SOCKET, SO_TYPE) != SOCK_DGRAM) invariant("ping type", geti(ping4, SOL_SOCKET, SO_TYPE), SOCK_DGRAM);
    if (geti(ping4, IPPROTO_IP, IP_TTL) != 33) invariant("ping IP_TTL", geti(ping4, IPPROTO_IP, IP_TTL), 33);
    struct icmphdr req = {.type = ICMP_ECHO};
    req.un.echo.sequence = htons(++seq);
    struct sockaddr_in to = lo(0);
    if (sendto(ping4, &req, sizeof req, 0, (void *)&to, sizeof to) != sizeof req) {
        invariant("ping send (errno)", errno, 0);
        return;
    }
    struct pollfd p = {ping4, POLLIN, 0};
    if (poll(&p, 1, 2000) != 1) {
        invariant("ping reply within 2 s", 0, 1);
        return;
    }
    struct icmphdr rep;
    ssize_t n = recv(ping4, &rep, sizeof rep, 0);
    if (n != sizeof rep || rep.type != ICMP_ECHOREPLY) invariant("ping reply type", n == sizeof rep ? rep.type : -1, ICMP_ECHOREPLY);
    /* The kernel writes the socket's identifier (its port) into every request. */
    if (rep.un.echo.id != ping_addr.sin_port) invariant("ping reply identifier", ntohs(rep.un.echo.id), ntohs(ping_addr.sin_port));
    if (ntohs(rep.un.echo.sequence) != seq) invariant("ping reply sequence", ntohs(rep.un.echo.sequence), seq);

    same_name("raw ICMP socket name", rawicmp, raw_addr);
    if (geti(rawicmp, SOL_SOCKET, SO_PROTOCOL) != IPPROTO_ICMP) invariant("raw protocol", geti(rawicmp, SOL_SOCKET, SO_PROTOCOL), IPPROTO_ICMP);
    if (geti(rawicmp, SOL_SOCKET, SO_TYPE) != SOCK_RAW) invariant("raw type", geti(rawicmp, SOL_SOCKET, SO_TYPE), SOCK_RAW);
    if (geti(rawicmp, IPPROTO_IP, IP_TTL) != 44) invariant("raw IP_TTL", geti(rawicmp, IPPROTO_IP, IP_TTL), 44);
    struct icmp_filter f;
    socklen_t fl = sizeof f;
    if (getsockopt(rawicmp, SOL_RAW, ICMP_FILTER, &f, &fl) || f.data != ~(1u << ICMP_ECHOREPLY)) invariant("raw ICMP_FILTER", f.data, ~(1u << ICMP_ECHOREPLY));
    /* Its copy of the reply (with the IP header), among whatever else came. */
    int seen = 0;
    char pkt[2048];
    for (int i = 0; i < 50 && !seen; i++) {
        struct pollfd rp = {rawicmp, POLLIN, 0};
        if (poll(&rp, 1, 100) != 1) continue;
        ssize_t m = recv(rawicmp, pkt, sizeof pkt, MSG_DONTWAIT);
        if (m < 28) continue;
        struct icmphdr *h = (void *)(pkt + (pkt[0] & 0xf) * 4);
        if (h->type != ICMP_ECHOREPLY) invariant("raw ICMP_FILTER let through type", h->type, ICMP_ECHOREPLY);
        seen = h->un.echo.id == ping_addr.sin_port && ntohs(h->un.echo.sequence) == seq;
    }
    if (!seen) invariant("raw socket saw the echo reply", 0, 1);
}

static void check_filter(void)
{
    struct sock_filter got[4];
    socklen_t l = 4; /* in instructions */
    if (getsockopt(filt, SOL_SOCKET, SO_GET_FILTER, got, &l)) {
        invariant("SO_GET_FILTER (errno)", errno, 0);
    } else {
        if (l != 1) invariant("filter length", l, 1);
        if (got[0].code != (BPF_RET | BPF_K) || got[0].k != 11) invariant("filter instruction k", got[0].k, 11);
    }
    if (geti(filt, SOL_SOCKET, SO_LOCK_FILTER) != 1) invariant("SO_LOCK_FILTER", geti(filt, SOL_SOCKET, SO_LOCK_FILTER), 1);
    int z = 0;
    if (setsockopt(filt, SOL_SOCKET, SO_DETACH_FILTER, &z, sizeof z) != -1 || errno != EPERM) invariant("detaching a locked filter (errno)", errno, EPERM);
    same_name("filtered socket name", filt, filt_addr);
    if (sendto(filt, "0123456789", 10, 0, (void *)&filt_addr, sizeof filt_addr) != 10) invariant("send to itself (errno)", errno, 0);
    char b[32];
    struct pollfd p = {filt, POLLIN, 0};
    poll(&p, 1, 2000);
    ssize_t n = recv(filt, b, sizeof b, MSG_DONTWAIT);
    if (n != 3 || memcmp(b, "012", 3)) invariant("datagram cut by the filter (length)", n, 3);
}

static void check_unconnected(void)
{
    struct sockaddr_in any = {.sin_family = AF_INET};
    same_name("fresh TCP socket name", tfresh, any);
    same_name("bound TCP socket name", tbound, bound_addr);
    same_name("TCP socket bound without port", tnoport, noport_addr);
    if (ntohs(noport_addr.sin_port) != 0) invariant("IP_BIND_ADDRESS_NO_PORT port", ntohs(noport_addr.sin_port), 0);
    if (geti(tnoport, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT) != 1) invariant("IP_BIND_ADDRESS_NO_PORT", geti(tnoport, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT), 1);
    if (geti(tfresh, IPPROTO_TCP, TCP_NODELAY) != 1) invariant("TCP_NODELAY on fresh", geti(tfresh, IPPROTO_TCP, TCP_NODELAY), 1);
    if (geti(tfresh, SOL_SOCKET, SO_KEEPALIVE) != 1) invariant("SO_KEEPALIVE on fresh", geti(tfresh, SOL_SOCKET, SO_KEEPALIVE), 1);
    if (geti(tbound, SOL_SOCKET, SO_MAX_PACING_RATE) != 1000000) invariant("SO_MAX_PACING_RATE", geti(tbound, SOL_SOCKET, SO_MAX_PACING_RATE), 1000000);
    if (geti(tbound, SOL_SOCKET, SO_TXREHASH) != 0) invariant("SO_TXREHASH", geti(tbound, SOL_SOCKET, SO_TXREHASH), 0);
    if (geti(filt, SOL_SOCKET, SO_RCVMARK) != 1) invariant("SO_RCVMARK", geti(filt, SOL_SOCKET, SO_RCVMARK), 1);
    if (geti(rd_b, SOL_SOCKET, SO_PEEK_OFF) != 0) invariant("SO_PEEK_OFF on a connection", geti(rd_b, SOL_SOCKET, SO_PEEK_OFF), 0);
    int fds[3] = {tfresh, tbound, tnoport};
    for (int i = 0; i < 3; i++) {
        struct sockaddr_in p;
        socklen_t l = sizeof p;
        if (getpeername(fds[i], (void *)&p, &l) != -1 || errno != ENOTCONN) invariant("unconnected getpeername (errno)", errno, ENOTCONN);
        if (tcp_state(fds[i]) != TCP_CLOSE) invariant("unconnected TCP state", tcp_state(fds[i]), TCP_CLOSE);
    }
}

static void peek(const char *what, int fd, const char *want)
{
    char b[16];
    ssize_t n = recv(fd, b, sizeof b, MSG_PEEK | MSG_DONTWAIT);
    if (n != (ssize_t)strlen(want) || memcmp(b, want, n)) invariant(what, n, (long long)strlen(want));
}

static void connected_to_each_other(const char *what, int a, int b)
{
    struct sockaddr_in p;
    socklen_t l = sizeof p;
    if (getpeername(a, (void *)&p, &l)) {
        invariant(what, errno, 0);
        return;
    }
    struct sockaddr_in n = name_of(b);
    if (p.sin_port != n.sin_port) invariant(what, ntohs(p.sin_port), ntohs(n.sin_port));
}

static void check_half_closed(void)
{
    if (tcp_state(hc_cli) != TCP_FIN_WAIT2) invariant("half-closed client state", tcp_state(hc_cli), TCP_FIN_WAIT2);
    if (tcp_state(hc_srv) != TCP_CLOSE_WAIT) invariant("half-closed server state", tcp_state(hc_srv), TCP_CLOSE_WAIT);
    connected_to_each_other("half-closed client's peer", hc_cli, hc_srv);
    connected_to_each_other("half-closed server's peer", hc_srv, hc_cli);
    /* SO_PEEK_OFF 1: a peek starts after "a" and moves the offset; put it back after. */
    if (geti(hc_srv, SOL_SOCKET, SO_PEEK_OFF) != 1) invariant("server SO_PEEK_OFF", geti(hc_srv, SOL_SOCKET, SO_PEEK_OFF), 1);
    peek("server's unread bytes before EOF, from its peek offset", hc_srv, "bc");
    int po = 1;
    if (setsockopt(hc_srv, SOL_SOCKET, SO_PEEK_OFF, &po, sizeof po)) invariant("setting SO_PEEK_OFF back (errno)", errno, 0);
    po = 0;
    setsockopt(hc_srv, SOL_SOCKET, SO_PEEK_OFF, &po, sizeof po);
    peek("server's unread bytes before EOF", hc_srv, "abc");
    po = 1;
    setsockopt(hc_srv, SOL_SOCKET, SO_PEEK_OFF, &po, sizeof po);
    if (!(revents(hc_srv, POLLRDHUP) & POLLRDHUP)) invariant("server sees the client's FIN (POLLRDHUP)", 0, 1);
    peek("client's unread bytes", hc_cli, "xyz");
    if (revents(hc_cli, POLLRDHUP) & POLLRDHUP) invariant("client's receiving side open (POLLRDHUP)", 1, 0);
    if (send(hc_cli, "q", 1, MSG_NOSIGNAL | MSG_DONTWAIT) != -1 || errno != EPIPE) invariant("client send after SHUT_WR (errno)", errno, EPIPE);

    if (tcp_state(rd_a) != TCP_ESTABLISHED) invariant("SHUT_RD end state", tcp_state(rd_a), TCP_ESTABLISHED);
    if (tcp_state(rd_b) != TCP_ESTABLISHED) invariant("SHUT_RD peer state", tcp_state(rd_b), TCP_ESTABLISHED);
    connected_to_each_other("SHUT_RD end's peer", rd_a, rd_b);
    if (!(revents(rd_a, POLLRDHUP) & POLLRDHUP)) invariant("SHUT_RD end (POLLRDHUP)", 0, 1);
    if (revents(rd_b, POLLRDHUP) & POLLRDHUP) invariant("SHUT_RD peer (POLLRDHUP)", 1, 0);
    char c;
    if (recv(rd_a, &c, 1, MSG_DONTWAIT) != 0) invariant("recv on the SHUT_RD end (errno)", errno, 0);
}

static void check_unix(void)
{
    int fd = ux[1];
    struct sock_filter got[2];
    socklen_t l = 2;
    if (getsockopt(fd, SOL_SOCKET, SO_GET_FILTER, got, &l) || l != 1 || got[0].k != 2) invariant("unix filter read back (length)", l, 1);
    if (geti(fd, SOL_SOCKET, SO_LOCK_FILTER) != 1) invariant("unix SO_LOCK_FILTER", geti(fd, SOL_SOCKET, SO_LOCK_FILTER), 1);
    if (geti(fd, SOL_SOCKET, SO_PRIORITY) != 5) invariant("unix SO_PRIORITY", geti(fd, SOL_SOCKET, SO_PRIORITY), 5);
    if (geti(fd, SOL_SOCKET, SO_KEEPALIVE) != 1) invariant("unix SO_KEEPALIVE", geti(fd, SOL_SOCKET, SO_KEEPALIVE), 1);
    if (geti(fd, SOL_SOCKET, SO_TIMESTAMP) != 1) invariant("unix SO_TIMESTAMP", geti(fd, SOL_SOCKET, SO_TIMESTAMP), 1);
    if (geti(fd, SOL_SOCKET, SO_RCVLOWAT) != 2) invariant("unix SO_RCVLOWAT", geti(fd, SOL_SOCKET, SO_RCVLOWAT), 2);
    struct linger lg;
    socklen_t ll = sizeof lg;
    if (getsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, &ll) || !lg.l_onoff || lg.l_linger != 7) invariant("unix SO_LINGER seconds", lg.l_linger, 7);
    if (geti(ux[0], SOL_SOCKET, SO_PRIORITY) != 0) invariant("unix peer SO_PRIORITY", geti(ux[0], SOL_SOCKET, SO_PRIORITY), 0);
    /* The queued datagram first (already cut), then a new one cut by the filter. */
    if (send(ux[0], "world", 5, 0) != 5) invariant("unix send (errno)", errno, 0);
    char b[8];
    ssize_t n = recv(fd, b, sizeof b, MSG_DONTWAIT);
    if (n != 2 || memcmp(b, "he", 2)) invariant("unix queued datagram (length)", n, 2);
    n = recv(fd, b, sizeof b, MSG_DONTWAIT);
    if (n != 2 || memcmp(b, "wo", 2)) invariant("unix new datagram cut by the filter (length)", n, 2);
    if (send(ux[0], "hello", 5, 0) != 5) invariant("unix send again (errno)", errno, 0);
}

static unsigned int membership_word(int fd, int word)
{
    unsigned int bits[4] = {0};
    socklen_t l = sizeof bits;
    if (getsockopt(fd, SOL_NETLINK, NETLINK_LIST_MEMBERSHIPS, bits, &l)) return 0xdead;
    return bits[word];
}

static void check_netlink(void)
{
    struct sockaddr_nl a;
    socklen_t l = sizeof a;
    if (getsockname(nlr, (void *)&a, &l) || a.nl_pid != nlr_addr.nl_pid) invariant("route netlink port id", a.nl_pid, nlr_addr.nl_pid);
    if (a.nl_pid != (unsigned)getpid()) invariant("route netlink port id is the pid", a.nl_pid, getpid());
    if (a.nl_groups != (RTMGRP_IPV4_MROUTE | RTMGRP_IPV6_MROUTE)) invariant("route netlink groups", a.nl_groups, RTMGRP_IPV4_MROUTE | RTMGRP_IPV6_MROUTE);
    if (geti(nlr, SOL_NETLINK, NETLINK_EXT_ACK) != 1) invariant("NETLINK_EXT_ACK", geti(nlr, SOL_NETLINK, NETLINK_EXT_ACK), 1);
    if (geti(nlr, SOL_NETLINK, NETLINK_GET_STRICT_CHK) != 1) invariant("NETLINK_GET_STRICT_CHK", geti(nlr, SOL_NETLINK, NETLINK_GET_STRICT_CHK), 1);
    if (geti(nlr, SOL_SOCKET, SO_PROTOCOL) != NETLINK_ROUTE) invariant("route netlink protocol", geti(nlr, SOL_SOCKET, SO_PROTOCOL), NETLINK_ROUTE);
    l = sizeof a;
    if (getsockname(nlu, (void *)&a, &l) || a.nl_pid != 0) invariant("unbound netlink port id", a.nl_pid, 0);
    if (geti(nlu, SOL_SOCKET, SO_TYPE) != SOCK_DGRAM) invariant("unbound netlink type", geti(nlu, SOL_SOCKET, SO_TYPE), SOCK_DGRAM);
    if (membership_word(nlg, 1) != 1u << 30) invariant("generic netlink group 63", membership_word(nlg, 1), 1u << 30);
    if (geti(nlg, SOL_SOCKET, SO_PROTOCOL) != NETLINK_GENERIC) invariant("generic netlink protocol", geti(nlg, SOL_SOCKET, SO_PROTOCOL), NETLINK_GENERIC);
    /* RTM_GETLINK for lo (index 1): one RTM_NEWLINK back, addressed to our port id. */
    struct {
        struct nlmsghdr h;
        struct ifinfomsg i;
    } req = {{sizeof req, RTM_GETLINK, NLM_F_REQUEST, 7, 0}, {.ifi_family = AF_UNSPEC, .ifi_index = 1}};
    if (send(nlr, &req, sizeof req, 0) != sizeof req) invariant("netlink send (errno)", errno, 0);
    char buf[8192];
    struct pollfd p = {nlr, POLLIN, 0};
    poll(&p, 1, 2000);
    ssize_t n = recv(nlr, buf, sizeof buf, MSG_DONTWAIT);
    struct nlmsghdr *h = (void *)buf;
    if (n < (ssize_t)sizeof *h || h->nlmsg_type != RTM_NEWLINK || h->nlmsg_seq != 7)
        invariant("netlink answer type", n < (ssize_t)sizeof *h ? -1 : h->nlmsg_type, RTM_NEWLINK);
    else if (h->nlmsg_pid != nlr_addr.nl_pid)
        invariant("netlink answer port id", h->nlmsg_pid, nlr_addr.nl_pid);
}

static void check_packet(void)
{
    struct sockaddr_ll ll;
    socklen_t l = sizeof ll;
    if (getsockname(pk, (void *)&ll, &l) || ll.sll_ifindex != (int)if_nametoindex("lo")) invariant("packet socket interface", ll.sll_ifindex, if_nametoindex("lo"));
    if (ll.sll_protocol != htons(ETH_P_IP)) invariant("packet socket protocol", ntohs(ll.sll_protocol), ETH_P_IP);
    if (geti(pk, SOL_SOCKET, SO_TYPE) != SOCK_DGRAM) invariant("packet socket type", geti(pk, SOL_SOCKET, SO_TYPE), SOCK_DGRAM);
    if (geti(pk, SOL_PACKET, PACKET_AUXDATA) != 1) invariant("PACKET_AUXDATA", geti(pk, SOL_PACKET, PACKET_AUXDATA), 1);
    if (geti(pk, SOL_PACKET, PACKET_IGNORE_OUTGOING) != 1) invariant("PACKET_IGNORE_OUTGOING", geti(pk, SOL_PACKET, PACKET_IGNORE_OUTGOING), 1);
    /* The device's own flags (SIOCGIFFLAGS shows only the promiscuity asked by ioctl). */
    unsigned int flags = 0;
    FILE *ff = fopen("/sys/class/net/lo/flags", "r");
    if (!ff || fscanf(ff, "%x", &flags) != 1 || !(flags & IFF_PROMISC)) invariant("lo promiscuous (membership)", flags, IFF_PROMISC);
    if (ff) fclose(ff);
    /* A datagram with a marker to 127.0.0.1: the packet socket sees its IP packet. */
    char marker[32];
    snprintf(marker, sizeof marker, "sock_state %d %u", (int)getpid(), seq);
    int u = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in to = lo(9);
    sendto(u, marker, strlen(marker), 0, (void *)&to, sizeof to);
    close(u);
    int seen = 0;
    static char pkt[65536];
    for (int i = 0; i < 5000 && !seen; i++) {
        struct pollfd p = {pk, POLLIN, 0};
        if (poll(&p, 1, 100) != 1) break;
        ssize_t n = recv(pk, pkt, sizeof pkt, MSG_DONTWAIT);
        seen = n > 0 && memmem(pkt, n, marker, strlen(marker)) != NULL;
    }
    if (!seen) invariant("packet socket saw the datagram", 0, 1);
}

static void check(void)
{
    bad = 0;
    check_packet();
    check_netlink();
    check_unix();
    check_ping();
    check_filter();
    check_unconnected();
    check_half_closed();
    printf(bad ? "state bad\n" : "state ok\n");
}

static int attach_ebpf(int fd)
{
    struct bpf_insn prog[] = {
        {.code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = 0, .imm = 0xffff},
        {.code = BPF_JMP | BPF_EXIT},
    };
    union bpf_attr at;
    memset(&at, 0, sizeof at);
    at.prog_type = BPF_PROG_TYPE_SOCKET_FILTER;
    at.insns = (unsigned long)prog;
    at.insn_cnt = 2;
    at.license = (unsigned long)"GPL";
    int pfd = syscall(SYS_bpf, BPF_PROG_LOAD, &at, sizeof at);
    if (pfd < 0) die("BPF_PROG_LOAD");
    if (setsockopt(fd, SOL_SOCKET, SO_ATTACH_BPF, &pfd, sizeof pfd)) die("SO_ATTACH_BPF");
    close(pfd);
    return fd;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    signal(SIGUSR1, on_usr1);
    set_up();
    if (argc == 2 && !strcmp(argv[1], "ebpf")) {
        printf("ebpf on fd %d\n", attach_ebpf(socket(AF_INET, SOCK_DGRAM, 0)));
    } else if (argc == 2 && !strcmp(argv[1], "ended")) {
        int a, b;
        pair(&a, &b);
        if (shutdown(a, SHUT_WR) || shutdown(b, SHUT_WR)) die("shutdown both");
        usleep(20000);
        printf("ended on fd %d\n", a);
    } else if (argc == 2 && !strcmp(argv[1], "nlqueued")) {
        int q = socket(AF_NETLINK, SOCK_RAW, NETLINK_ROUTE);
        struct {
            struct nlmsghdr h;
            struct ifinfomsg i;
        } req = {{sizeof req, RTM_GETLINK, NLM_F_REQUEST, 1, 0}, {.ifi_family = AF_UNSPEC, .ifi_index = 1}};
        if (q < 0 || send(q, &req, sizeof req, 0) != sizeof req) die("netlink request");
        usleep(20000);
        printf("nlqueued on fd %d\n", q);
    } else if (argc == 2 && !strcmp(argv[1], "packetring")) {
        int r = socket(AF_PACKET, SOCK_RAW, htons(ETH_P_ALL));
        struct tpacket_req tr = {.tp_block_size = 4096, .tp_block_nr = 1, .tp_frame_size = 2048, .tp_frame_nr = 2};
        if (r < 0 || setsockopt(r, SOL_PACKET, PACKET_RX_RING, &tr, sizeof tr)) die("packet ring");
        printf("packetring on fd %d\n", r);
    } else if (argc != 1) {
        fprintf(stderr, "usage: sock_state [ebpf|ended|nlqueued|packetring]\n");
        return 2;
    }
    struct timespec d = {0, 50000000L};
    for (unsigned long long n = 1;; n++) {
        if (asked) {
            asked = 0;
            check();
        }
        printf("tick %llu\n", n);
        nanosleep(&d, NULL);
    }
}
