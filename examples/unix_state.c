/*
 * unix_state: holds Unix domain sockets in many states with data queued unread, and checks,
 * when asked (SIGUSR1), that each is as it was set up; then sets everything up again.
 *
 *   unix_state all DIR   stream/datagram/seqpacket socketpairs with data queued both ways
 *                        (120 KiB on the stream), a listener bound to DIR/l.sock (backlog 7)
 *                        with an accepted connection and one waiting, a datagram socket with an
 *                        abstract name holding datagrams from an unnamed and a named sender,
 *                        an unnamed datagram socket connected to a named one,
 *                        a half-closed stream pair, SO_PASSCRED with credentials queued,
 *                        buffer sizes and timeouts.
 *   unix_state fork      a stream, a datagram and a seqpacket pair split between this process
 *                        and a forked child, data queued both ways; the child prints
 *                        "child ok" (or INVARIANT lines) when the parent checks.
 *   unix_state outside   a stream pair whose other end is held by a process outside ckpt
 *                        (sleep, started without the interposer, not our child), data queued; the check
 *                        wants the data then the peer closed (POLLHUP, EPIPE).
 *   unix_state inflight  a stream pair with an fd sent (SCM_RIGHTS) and never received.
 *
 * Prints "tick N" every 50 ms; on SIGUSR1 prints "state ok" or INVARIANT lines + "state bad".
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t asked;
static void on_usr1(int s) { (void)s; asked = 1; }
static int bad;
static const char *mode, *dir;
static pid_t child;

static void invariant(const char *what, long long a, long long b)
{
    printf("INVARIANT %s%s: got %lld, want %lld\n", child == 0 && !strcmp(mode, "fork") ? "child " : "", what, a, b);
    bad = 1;
}

static unsigned char pat(size_t i, int salt) { return (unsigned char)((i * 131 + salt * 7 + (i >> 9)) & 0xff); }

/* Writes n pattern bytes, non-blocking: everything must fit in the queue. */
static void put_stream(int fd, size_t n, int salt)
{
    unsigned char buf[4096];
    size_t done = 0;
    while (done < n) {
        size_t k = n - done < sizeof buf ? n - done : sizeof buf;
        for (size_t i = 0; i < k; i++) buf[i] = pat(done + i, salt);
        ssize_t w = send(fd, buf, k, MSG_DONTWAIT);
        if (w <= 0) { invariant("stream write (errno)", errno, 0); return; }
        done += (size_t)w;
    }
}

/* Reads exactly n pattern bytes and then finds nothing more. */
static void get_stream(int fd, size_t n, int salt, const char *what)
{
    unsigned char buf[4096];
    size_t done = 0;
    while (done < n) {
        size_t k = n - done < sizeof buf ? n - done : sizeof buf;
        ssize_t r = recv(fd, buf, k, MSG_DONTWAIT);
        if (r <= 0) { invariant(what, (long long)done, (long long)n); return; }
        for (ssize_t i = 0; i < r; i++)
            if (buf[i] != pat(done + i, salt)) { invariant(what, (long long)(done + i), -1); return; }
        done += (size_t)r;
    }
    if (recv(fd, buf, 1, MSG_DONTWAIT) != -1 || errno != EAGAIN) invariant(what, (long long)n + 1, (long long)n);
}

static size_t msg_len(int i, int salt) { return (size_t)((i * 37 + salt * 11) % 700 + 1); }

static void put_msgs(int fd, int count, int salt)
{
    unsigned char buf[1024];
    for (int m = 0; m < count; m++) {
        size_t n = msg_len(m, salt);
        for (size_t i = 0; i < n; i++) buf[i] = pat(i + (size_t)m, salt);
        if (send(fd, buf, n, MSG_DONTWAIT) != (ssize_t)n) invariant("message write (errno)", errno, 0);
    }
}

static void get_msgs(int fd, int count, int salt, const char *what)
{
    unsigned char buf[1024];
    for (int m = 0; m < count; m++) {
        ssize_t r = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
        if (r != (ssize_t)msg_len(m, salt)) { invariant(what, r, (long long)msg_len(m, salt)); return; }
        for (ssize_t i = 0; i < r; i++)
            if (buf[i] != pat((size_t)i + (size_t)m, salt)) { invariant(what, m, -1); return; }
    }
    if (recv(fd, buf, sizeof buf, MSG_DONTWAIT) != -1 || errno != EAGAIN) invariant(what, count + 1, count);
}

static socklen_t addr(struct sockaddr_un *sa, const char *name, int abstract)
{
    memset(sa, 0, sizeof *sa);
    sa->sun_family = AF_UNIX;
    size_t n = strlen(name);
    memcpy(sa->sun_path + (abstract ? 1 : 0), name, n);
    /* A path counts its NUL; an abstract name its leading NUL. */
    return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + 1);
}

static int same_name(int fd, int peer, const char *name, int abstract, const char *what)
{
    struct sockaddr_un want, got;
    socklen_t wl = addr(&want, name, abstract), gl = sizeof got;
    int r = peer ? getpeername(fd, (struct sockaddr *)&got, &gl) : getsockname(fd, (struct sockaddr *)&got, &gl);
    if (r != 0 || gl != wl || memcmp(&got, &want, wl) != 0) {
        invariant(what, (long long)gl, (long long)wl);
        return 0;
    }
    return 1;
}

/* ---- all ---- */
static int sp[2], dp[2], qp[2], hp[2], pc[2], lst, c1, s1, c2, ab, an2, dcl;
static char lpath[108], abname[64], an2name[64];
static int rcvbuf, sndbuf;

static void all_set_up(void)
{
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sp) || socketpair(AF_UNIX, SOCK_DGRAM, 0, dp) ||
        socketpair(AF_UNIX, SOCK_SEQPACKET, 0, qp) || socketpair(AF_UNIX, SOCK_STREAM, 0, hp) ||
        socketpair(AF_UNIX, SOCK_STREAM, 0, pc)) {
        perror("socketpair");
        exit(2);
    }
    int v = 100000;
    setsockopt(sp[0], SOL_SOCKET, SO_RCVBUF, &v, sizeof v);
    v = 300000;
    setsockopt(sp[1], SOL_SOCKET, SO_SNDBUF, &v, sizeof v);
    socklen_t l = sizeof rcvbuf;
    getsockopt(sp[0], SOL_SOCKET, SO_RCVBUF, &rcvbuf, &l);
    l = sizeof sndbuf;
    getsockopt(sp[1], SOL_SOCKET, SO_SNDBUF, &sndbuf, &l);
    struct timeval rt = {1, 500000}, st = {2, 500000};
    setsockopt(dp[1], SOL_SOCKET, SO_RCVTIMEO, &rt, sizeof rt);
    setsockopt(dp[1], SOL_SOCKET, SO_SNDTIMEO, &st, sizeof st);
    put_stream(sp[0], 120 * 1024, 1);
    put_stream(sp[1], 5000, 2);
    put_msgs(dp[0], 50, 3);
    put_msgs(dp[1], 3, 4);
    put_msgs(qp[0], 20, 5);
    put_msgs(qp[1], 4, 6);
    /* Half-closed: hp[0] sent "bye" and shut its sending side; hp[1] sent "still". */
    send(hp[0], "bye", 3, 0);
    shutdown(hp[0], SHUT_WR);
    send(hp[1], "still", 5, 0);
    int one = 1;
    setsockopt(pc[1], SOL_SOCKET, SO_PASSCRED, &one, sizeof one);
    send(pc[0], "cred", 4, 0);

    struct sockaddr_un sa;
    snprintf(lpath, sizeof lpath, "%s/l.sock", dir);
    unlink(lpath);
    lst = socket(AF_UNIX, SOCK_STREAM, 0);
    socklen_t sl = addr(&sa, lpath, 0);
    if (bind(lst, (struct sockaddr *)&sa, sl) || listen(lst, 7)) { perror("listener"); exit(2); }
    /* Who may connect is the socket file's mode and owner: kept. */
    if (chmod(lpath, 0604) || chown(lpath, 0, 12)) { perror("chmod listener file"); exit(2); }
    c1 = socket(AF_UNIX, SOCK_STREAM, 0);
    if (connect(c1, (struct sockaddr *)&sa, sl)) { perror("connect"); exit(2); }
    s1 = accept(lst, NULL, NULL);
    send(c1, "from-client", 11, 0);
    send(s1, "from-server", 11, 0);
    c2 = socket(AF_UNIX, SOCK_STREAM, 0);
    if (connect(c2, (struct sockaddr *)&sa, sl)) { perror("connect 2"); exit(2); }

    snprintf(abname, sizeof abname, "ckpt-unix-%d", (int)getpid());
    snprintf(an2name, sizeof an2name, "ckpt-unix-%d-s", (int)getpid());
    ab = socket(AF_UNIX, SOCK_DGRAM, 0);
    an2 = socket(AF_UNIX, SOCK_DGRAM, 0);
    struct sockaddr_un aa, a2;
    socklen_t al = addr(&aa, abname, 1), a2l = addr(&a2, an2name, 1);
    if (bind(ab, (struct sockaddr *)&aa, al) || bind(an2, (struct sockaddr *)&a2, a2l)) { perror("bind abstract"); exit(2); }
    int tmp = socket(AF_UNIX, SOCK_DGRAM, 0);
    for (int i = 0; i < 3; i++) sendto(tmp, "anon", 4, 0, (struct sockaddr *)&aa, al);
    close(tmp);
    for (int i = 0; i < 2; i++) sendto(an2, "named", 5, 0, (struct sockaddr *)&aa, al);
    /* An unnamed datagram socket connected to a named one, with a datagram queued there. */
    dcl = socket(AF_UNIX, SOCK_DGRAM, 0);
    if (connect(dcl, (struct sockaddr *)&a2, a2l)) { perror("connect dgram"); exit(2); }
    send(dcl, "hi", 2, 0);
}

static void all_check(void)
{
    get_stream(sp[1], 120 * 1024, 1, "stream bytes queued at sp[1]");
    get_stream(sp[0], 5000, 2, "stream bytes queued at sp[0]");
    get_msgs(dp[1], 50, 3, "datagrams queued at dp[1]");
    get_msgs(dp[0], 3, 4, "datagrams queued at dp[0]");
    get_msgs(qp[1], 20, 5, "records queued at qp[1]");
    get_msgs(qp[0], 4, 6, "records queued at qp[0]");
    int v = 0;
    socklen_t l = sizeof v;
    getsockopt(sp[0], SOL_SOCKET, SO_RCVBUF, &v, &l);
    if (v != rcvbuf) invariant("SO_RCVBUF", v, rcvbuf);
    l = sizeof v;
    getsockopt(sp[1], SOL_SOCKET, SO_SNDBUF, &v, &l);
    if (v != sndbuf) invariant("SO_SNDBUF", v, sndbuf);
    struct timeval tv;
    l = sizeof tv;
    getsockopt(dp[1], SOL_SOCKET, SO_RCVTIMEO, &tv, &l);
    if (tv.tv_sec != 1 || tv.tv_usec != 500000) invariant("SO_RCVTIMEO (us)", tv.tv_sec * 1000000LL + tv.tv_usec, 1500000);
    l = sizeof tv;
    getsockopt(dp[1], SOL_SOCKET, SO_SNDTIMEO, &tv, &l);
    if (tv.tv_sec != 2 || tv.tv_usec != 500000) invariant("SO_SNDTIMEO (us)", tv.tv_sec * 1000000LL + tv.tv_usec, 2500000);

    char buf[64];
    ssize_t r = recv(hp[1], buf, sizeof buf, MSG_DONTWAIT);
    if (r != 3 || memcmp(buf, "bye", 3)) invariant("half-closed data", r, 3);
    r = recv(hp[1], buf, sizeof buf, MSG_DONTWAIT);
    if (r != 0) invariant("EOF after shutdown (read gives)", r, 0);
    r = recv(hp[0], buf, sizeof buf, MSG_DONTWAIT);
    if (r != 5 || memcmp(buf, "still", 5)) invariant("data towards the half-closed end", r, 5);
    if (send(hp[0], "x", 1, MSG_DONTWAIT | MSG_NOSIGNAL) != -1 || errno != EPIPE) invariant("write after shutdown (errno)", errno, EPIPE);

    v = 0;
    l = sizeof v;
    getsockopt(pc[1], SOL_SOCKET, SO_PASSCRED, &v, &l);
    if (v != 1) invariant("SO_PASSCRED", v, 1);
    union { struct cmsghdr h; char b[CMSG_SPACE(sizeof(struct ucred))]; } cb;
    struct iovec iov = {buf, sizeof buf};
    struct msghdr mh = {0};
    mh.msg_iov = &iov, mh.msg_iovlen = 1, mh.msg_control = cb.b, mh.msg_controllen = sizeof cb.b;
    r = recvmsg(pc[1], &mh, MSG_DONTWAIT);
    struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
    if (r != 4 || !c || c->cmsg_type != SCM_CREDENTIALS) invariant("credentials with queued data", r, 4);
    else {
        struct ucred u;
        memcpy(&u, CMSG_DATA(c), sizeof u);
        if (u.uid != getuid() || u.gid != getgid()) invariant("credentials uid", u.uid, getuid());
    }

    same_name(lst, 0, lpath, 0, "listener name");
    struct stat lst_st;
    if (stat(lpath, &lst_st) != 0) invariant("listener file exists", errno, 0);
    else {
        if ((lst_st.st_mode & 07777) != 0604) invariant("listener file mode", lst_st.st_mode & 07777, 0604);
        if (lst_st.st_gid != 12) invariant("listener file group", lst_st.st_gid, 12);
    }
    same_name(s1, 0, lpath, 0, "accepted socket's name");
    same_name(c1, 1, lpath, 0, "client's peer name");
    r = recv(s1, buf, sizeof buf, MSG_DONTWAIT);
    if (r != 11 || memcmp(buf, "from-client", 11)) invariant("accepted socket's queue", r, 11);
    r = recv(c1, buf, sizeof buf, MSG_DONTWAIT);
    if (r != 11 || memcmp(buf, "from-server", 11)) invariant("client's queue", r, 11);
    /* The waiting connection is accepted now, and works. */
    int fl = fcntl(lst, F_GETFL);
    fcntl(lst, F_SETFL, fl | O_NONBLOCK);
    int a = accept(lst, NULL, NULL);
    if (a < 0) invariant("accept of the waiting connection (errno)", errno, 0);
    else {
        send(c2, "x", 1, 0);
        if (recv(a, buf, 1, MSG_DONTWAIT) != 1 || buf[0] != 'x') invariant("waiting connection carries data", 0, 1);
        close(a);
    }
    /* New clients connect: backlog 7 takes 8 waiting connections, the 9th fails. */
    struct sockaddr_un sa;
    socklen_t sl = addr(&sa, lpath, 0);
    int cl[12], n = 0;
    for (; n < 12; n++) {
        cl[n] = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0);
        if (connect(cl[n], (struct sockaddr *)&sa, sl) != 0) { close(cl[n]); break; }
    }
    if (n != 8) invariant("connections the backlog takes", n, 8);
    while ((a = accept(lst, NULL, NULL)) >= 0) close(a);
    for (int i = 0; i < n; i++) close(cl[i]);

    same_name(ab, 0, abname, 1, "abstract name");
    for (int i = 0; i < 5; i++) {
        struct sockaddr_un from;
        socklen_t fl2 = sizeof from;
        r = recvfrom(ab, buf, sizeof buf, MSG_DONTWAIT, (struct sockaddr *)&from, &fl2);
        const char *want = i < 3 ? "anon" : "named";
        if (r != (ssize_t)strlen(want) || memcmp(buf, want, r)) { invariant("abstract socket's datagram", i, r); break; }
        if (i >= 3) {
            struct sockaddr_un w;
            socklen_t wl = addr(&w, an2name, 1);
            if (fl2 != wl || memcmp(&from, &w, wl)) invariant("named sender's address (length)", fl2, wl);
        }
    }
    if (recv(ab, buf, sizeof buf, MSG_DONTWAIT) != -1) invariant("more datagrams at the abstract socket", 1, 0);
    same_name(dcl, 1, an2name, 1, "connected datagram socket's peer");
    r = recv(an2, buf, sizeof buf, MSG_DONTWAIT);
    if (r != 2 || memcmp(buf, "hi", 2)) invariant("datagram from the connected socket", r, 2);
    if (send(dcl, "again", 5, MSG_DONTWAIT) != 5) invariant("send on the connected datagram socket (errno)", errno, 0);
    r = recv(an2, buf, sizeof buf, MSG_DONTWAIT);
    if (r != 5) invariant("datagram sent after restore", r, 5);
}

static void all_tear_down(void)
{
    int *fds[] = {&sp[0], &sp[1], &dp[0], &dp[1], &qp[0], &qp[1], &hp[0], &hp[1], &pc[0], &pc[1], &lst, &c1, &s1, &c2, &ab, &an2, &dcl};
    for (size_t i = 0; i < sizeof fds / sizeof *fds; i++) close(*fds[i]);
}

/* ---- fork ---- */
static void fork_put(int side)
{
    put_stream(sp[side], side ? 70000 : 90000, 10 + side);
    put_msgs(dp[side], side ? 30 : 40, 20 + side);
    put_msgs(qp[side], side ? 9 : 12, 30 + side);
}

static void fork_get(int side)
{
    int o = !side;
    get_stream(sp[side], o ? 70000 : 90000, 10 + o, "stream bytes from the other process");
    get_msgs(dp[side], o ? 30 : 40, 20 + o, "datagrams from the other process");
    get_msgs(qp[side], o ? 9 : 12, 30 + o, "records from the other process");
}

static void fork_child(void)
{
    close(sp[0]), close(dp[0]), close(qp[0]);
    fork_put(1);
    struct timespec d = {0, 20000000L};
    for (;;) {
        if (asked) {
            asked = 0;
            bad = 0;
            fork_get(1);
            printf(bad ? "child bad\n" : "child ok\n");
            fork_put(1);
        }
        nanosleep(&d, NULL);
    }
}

static void fork_check(void)
{
    fork_get(0);
    kill(child, SIGUSR1);
    /* The child refills this side last with the seqpacket records. */
    struct pollfd p = {qp[0], POLLIN, 0};
    if (poll(&p, 1, 10000) != 1) invariant("the child answers", 0, 1);
    else {
        struct timespec d = {0, 100000000L};
        nanosleep(&d, NULL);
    }
}

/* ---- outside ---- */
static pid_t outside;
static void outside_set_up(void)
{
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sp)) { perror("socketpair"); exit(2); }
    put_stream(sp[1], 30000, 40);
    /* Not a child of ours either (a live child of a checkpointed process must be in the
     * checkpoint): a middle process forks it and exits, and it is reparented. */
    int pp[2];
    if (pipe(pp)) { perror("pipe"); exit(2); }
    pid_t mid = fork();
    if (mid == 0) {
        pid_t o = fork();
        if (o == 0) {
            /* Not under ckpt: no interposer in the program it becomes. */
            unsetenv("LD_PRELOAD");
            dup2(sp[1], 3);
            close(pp[0]);
            close(pp[1]);
            execl("/bin/sleep", "sleep", "1000", (char *)NULL);
            _exit(127);
        }
        if (write(pp[1], &o, sizeof o) != sizeof o) _exit(1);
        _exit(0);
    }
    waitpid(mid, NULL, 0);
    if (read(pp[0], &outside, sizeof outside) != sizeof outside) { perror("read"); exit(2); }
    close(pp[0]);
    close(pp[1]);
    close(sp[1]);
}

static void outside_check(void)
{
    struct pollfd p = {sp[0], POLLIN, 0};
    poll(&p, 1, 0);
    if (!(p.revents & POLLHUP)) invariant("peer outside the checkpoint is closed (POLLHUP)", p.revents, POLLHUP);
    static unsigned char buf[30000];
    ssize_t r = recv(sp[0], buf, sizeof buf, MSG_PEEK | MSG_DONTWAIT);
    if (r != 30000) invariant("bytes queued from the outside peer", r, 30000);
    for (ssize_t i = 0; i < r; i++)
        if (buf[i] != pat((size_t)i, 40)) { invariant("queued byte", i, -1); break; }
    if (send(sp[0], "x", 1, MSG_DONTWAIT | MSG_NOSIGNAL) != -1 || errno != EPIPE) invariant("write to the closed peer (errno)", errno, EPIPE);
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    mode = argc > 1 ? argv[1] : "all";
    dir = argc > 2 ? argv[2] : "/tmp";
    signal(SIGUSR1, on_usr1);
    signal(SIGPIPE, SIG_IGN);
    if (!strcmp(mode, "all")) {
        all_set_up();
    } else if (!strcmp(mode, "fork")) {
        if (socketpair(AF_UNIX, SOCK_STREAM, 0, sp) || socketpair(AF_UNIX, SOCK_DGRAM, 0, dp) ||
            socketpair(AF_UNIX, SOCK_SEQPACKET, 0, qp)) {
            perror("socketpair");
            return 2;
        }
        child = fork();
        if (child == 0) fork_child();
        close(sp[1]), close(dp[1]), close(qp[1]);
        fork_put(0);
        /* Ready once the child queued its side (the seqpacket records last). */
        struct pollfd p = {qp[0], POLLIN, 0};
        poll(&p, 1, 10000);
        struct timespec w = {0, 100000000L};
        nanosleep(&w, NULL);
        printf("child %d\n", (int)child);
    } else if (!strcmp(mode, "outside")) {
        outside_set_up();
        printf("outside %d\n", (int)outside);
    } else if (!strcmp(mode, "inflight")) {
        /* An fd sent and never received: checkpoints are refused while it is in flight. */
        int p[2];
        if (socketpair(AF_UNIX, SOCK_STREAM, 0, sp) || pipe(p)) { perror("socketpair"); return 2; }
        union { struct cmsghdr h; char b[CMSG_SPACE(sizeof(int))]; } cb;
        struct iovec iov = {"f", 1};
        struct msghdr mh = {0};
        mh.msg_iov = &iov, mh.msg_iovlen = 1, mh.msg_control = cb.b, mh.msg_controllen = sizeof cb.b;
        struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
        c->cmsg_level = SOL_SOCKET, c->cmsg_type = SCM_RIGHTS, c->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(c), &p[0], sizeof(int));
        if (sendmsg(sp[0], &mh, 0) != 1) { perror("sendmsg"); return 2; }
    } else {
        fprintf(stderr, "usage: unix_state all DIR | fork | outside | inflight\n");
        return 2;
    }
    printf("pid %d\n", (int)getpid());
    struct timespec d = {0, 50000000L};
    for (unsigned long long n = 1;; n++) {
        if (asked) {
            asked = 0;
            bad = 0;
            if (!strcmp(mode, "all")) {
                all_check();
                all_tear_down();
                all_set_up();
            } else if (!strcmp(mode, "fork")) {
                fork_check();
                fork_put(0);
            } else {
                outside_check();
            }
            printf(bad ? "state bad\n" : "state ok\n");
        }
        printf("tick %llu\n", n);
        nanosleep(&d, NULL);
    }
}
