/*
 * epoll_state: an epoll instance with every kind of watch, checked on request.
 *
 * The watches (each with a data word that has its high bits set):
 *   LT      a pipe with unread bytes, level-triggered: reported at every wait
 *   ETOLD   a pipe with unread bytes, edge-triggered, whose edge was already taken: after a
 *           restore it may be reported once more (never lost), its bytes are still there
 *   ETNEW   a pipe written after the last wait, edge-triggered: its edge must be reported
 *   ONCE    a one-shot watch of an empty eventfd, not fired: reported once after a write
 *   FIRED   a one-shot watch of a readable eventfd that already fired: silent until re-armed,
 *           its mask is only EPOLLONESHOT (as the kernel keeps it)
 *   EXCL    EPOLLEXCLUSIVE on an empty eventfd: EPOLL_CTL_MOD refuses it (EINVAL)
 *   NEST    another epoll instance holding a readable eventfd (level-triggered)
 *   GONE    a pipe with unread bytes watched under a number the program then closed (the
 *           file stays open through a dup): still reported, the number still free
 *   REUSED  the same under a number now held by an eventfd that is not watched
 *   TCPIN   a loopback TCP connection's end with 5 unread bytes
 *   TCPOUT  its other end, EPOLLOUT|EPOLLET, edge taken (may be reported again after restore)
 *   ALL     an eventfd with a counter of 1 whose data word is all ones
 * and a thread that stays blocked in epoll_wait (no timeout) on an edge-triggered watch of
 * a pipe of its own: each check writes a byte and expects the thread to see it.
 *
 * With the argument "shared" (no TCP watches then: a connection held by two processes is not
 * something ckpt brings back) it forks once everything is set up; the child holds every fd and
 * only sleeps, and the parent also checks, with kcmp, that the child still holds the very same
 * epoll instance. It prints "child PID" after each fork; each check ends the child, sets
 * everything up anew and forks a new one.
 *
 * With the argument "orphan" it only watches a pipe under a number it then closes, the pipe
 * being held by a child alone (not at any other fd of the program): the checkpoint must be
 * refused. It prints "orphan epoll E tfd T child C".
 *
 * Prints "tick N" every 50 ms. On SIGUSR1 it checks everything (consuming events), prints
 * "state ok" or "INVARIANT <what>" lines then "state bad", and sets everything up again.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t asked;
static void on_usr1(int s) { (void)s; asked = 1; }

enum { LT, ETOLD, ETNEW, ONCE, FIRED, EXCL, NEST, GONE, REUSED, TCPIN, TCPOUT, ALL, N };
static const char *names[N] = {"LT", "ETOLD", "ETNEW", "ONCE", "FIRED", "EXCL",
                               "NEST", "GONE", "REUSED", "TCPIN", "TCPOUT", "ALL"};

static uint64_t data_of(int w) { return w == ALL ? ~0ULL : 0xF00D000000000000ULL | ((uint64_t)w << 40) | 0xab; }

static int ep, inner, inner_efd;
static int fd_of[N];   /* the number each watch is registered under */
static int keep_of[N]; /* for GONE/REUSED: where the file lives on */
static uint32_t mask_of[N];
static int pipes[N][2];
static int bad;
static pid_t child;
static int tcp = 1, shared;
static int wait_ep, wait_pipe[2];
static volatile int waiter_seen;

/* Blocks in epoll_wait until an edge, then reads everything (as an edge-triggered program
 * must) and counts the edge. */
static void *waiter(void *arg)
{
    (void)arg;
    for (;;) {
        struct epoll_event ev;
        int n = epoll_wait(wait_ep, &ev, 1, -1);
        if (n < 0 && errno == EINTR) continue;
        if (n != 1) {
            printf("INVARIANT waiter epoll_wait: got %d (errno %d), want 1\n", n, errno);
            continue;
        }
        char b[64];
        while (read(wait_pipe[0], b, sizeof b) > 0) {}
        __atomic_add_fetch(&waiter_seen, 1, __ATOMIC_SEQ_CST);
    }
    return NULL;
}

static void invariant(const char *what, const char *w, long long got, long long want)
{
    printf("INVARIANT %s %s: got %lld, want %lld\n", w, what, got, want);
    bad = 1;
}

static void die(const char *what)
{
    perror(what);
    exit(2);
}

static void add(int w, int fd, uint32_t events)
{
    struct epoll_event ev = {.events = events, .data.u64 = data_of(w)};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) die("epoll_ctl add");
    fd_of[w] = fd;
    mask_of[w] = events | EPOLLERR | EPOLLHUP;
}

static void must_write(int fd, const void *b, size_t n)
{
    if (write(fd, b, n) != (ssize_t)n) die("write");
}

static int wait_set(int timeout, uint64_t *got, int max)
{
    struct epoll_event ev[32];
    int n = epoll_wait(ep, ev, 32, timeout);
    if (n < 0) die("epoll_wait");
    for (int i = 0; i < n && i < max; i++) got[i] = ev[i].data.u64;
    return n;
}

static int has(const uint64_t *got, int n, int w)
{
    for (int i = 0; i < n; i++)
        if (got[i] == data_of(w)) return 1;
    return 0;
}

static void tcp_pair(int *a, int *b)
{
    int l = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof sa;
    if (l < 0 || bind(l, (void *)&sa, sizeof sa) < 0 || listen(l, 1) < 0 || getsockname(l, (void *)&sa, &len) < 0)
        die("listen");
    *a = socket(AF_INET, SOCK_STREAM, 0);
    if (*a < 0 || connect(*a, (void *)&sa, sizeof sa) < 0) die("connect");
    *b = accept(l, NULL, NULL);
    if (*b < 0) die("accept");
    close(l);
}

static void set_up(void)
{
    ep = epoll_create1(0);
    inner = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0 || inner < 0) die("epoll_create1");
    for (int w = LT; w <= ETNEW; w++)
        if (pipe(pipes[w]) < 0) die("pipe");
    must_write(pipes[LT][1], "abc", 3);
    add(LT, pipes[LT][0], EPOLLIN);
    must_write(pipes[ETOLD][1], "x", 1);
    add(ETOLD, pipes[ETOLD][0], EPOLLIN | EPOLLET);
    add(ETNEW, pipes[ETNEW][0], EPOLLIN | EPOLLET);
    add(ONCE, eventfd(0, EFD_NONBLOCK), EPOLLIN | EPOLLONESHOT);
    add(FIRED, eventfd(1, 0), EPOLLIN | EPOLLONESHOT);
    add(EXCL, eventfd(0, 0), EPOLLIN | EPOLLEXCLUSIVE);
    inner_efd = eventfd(2, 0);
    struct epoll_event iev = {.events = EPOLLIN, .data.u64 = 0xFFEE000000000001ULL};
    if (epoll_ctl(inner, EPOLL_CTL_ADD, inner_efd, &iev) < 0) die("inner add");
    add(NEST, inner, EPOLLIN);
    /* GONE and REUSED: watched under a number then closed, the file kept at another
     * (REUSED's number then taken by an unwatched eventfd). */
    for (int w = GONE; w <= REUSED; w++) {
        int p[2];
        if (pipe(p) < 0) die("pipe");
        must_write(p[1], "zz", 2);
        int q = fcntl(p[0], F_DUPFD, 50 + 10 * w);
        add(w, q, EPOLLIN);
        keep_of[w] = p[0];
        pipes[w][1] = p[1];
        close(q);
        if (w == REUSED) {
            int e = eventfd(0, 0);
            if (e < 0 || dup2(e, q) != q) die("reusing a number");
            close(e);
        }
    }
    if (tcp) {
        int a, b;
        tcp_pair(&a, &b);
        must_write(a, "hello", 5);
        add(TCPIN, b, EPOLLIN);
        add(TCPOUT, a, EPOLLOUT | EPOLLET);
    } else {
        fd_of[TCPIN] = fd_of[TCPOUT] = -2;
    }
    add(ALL, eventfd(1, 0), EPOLLIN);
    for (int w = 0; w < N; w++)
        if (fd_of[w] == -1) die("a watch's fd");
    /* Take the first events: ETOLD's and TCPOUT's edges go, FIRED fires. */
    usleep(20000);
    uint64_t got[32];
    wait_set(0, got, 32);
    mask_of[FIRED] = EPOLLONESHOT;
    must_write(pipes[ETNEW][1], "y", 1);
}

static void tear_down(void)
{
    for (int w = 0; w < N; w++) {
        if (w == GONE || w == REUSED) {
            close(keep_of[w]);
            close(pipes[w][1]);
            if (w == REUSED) close(fd_of[w]);
        } else if (w != NEST && fd_of[w] >= 0) {
            close(fd_of[w]);
        }
        if (w <= ETNEW) close(pipes[w][1]);
    }
    close(inner_efd);
    close(inner);
    close(ep);
}

/* Every watch listed in fdinfo, under its number, with its exact mask and data word. */
static void check_fdinfo(void)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/self/fdinfo/%d", ep);
    FILE *f = fopen(path, "r");
    if (!f) die("fdinfo");
    int seen[N] = {0}, lines = 0;
    while (fgets(line, sizeof line, f)) {
        int tfd;
        unsigned events;
        unsigned long long data;
        if (sscanf(line, "tfd: %d events: %x data: %llx", &tfd, &events, &data) != 3) continue;
        lines++;
        int w = 0;
        while (w < N && data_of(w) != data) w++;
        if (w == N) {
            invariant("unknown data word in fdinfo", "", (long long)data, 0);
            continue;
        }
        seen[w]++;
        if (tfd != fd_of[w]) invariant("watched fd number", names[w], tfd, fd_of[w]);
        if (events != mask_of[w]) invariant("events mask", names[w], events, mask_of[w]);
    }
    fclose(f);
    for (int w = 0; w < N; w++)
        if (seen[w] != (fd_of[w] != -2)) invariant("listed in fdinfo", names[w], seen[w], fd_of[w] != -2);
    if (lines != (tcp ? N : N - 2)) invariant("watches in fdinfo", "", lines, tcp ? N : N - 2);
}

static long long unread(int fd)
{
    int n = -1;
    if (ioctl(fd, FIONREAD, &n) < 0) return -errno;
    return n;
}

static void check(void)
{
    bad = 0;
    check_fdinfo();
    uint64_t got[32];
    int n = wait_set(0, got, 32);
    static const int ready[] = {LT, ETNEW, NEST, GONE, REUSED, TCPIN, ALL};
    for (size_t i = 0; i < sizeof ready / sizeof ready[0]; i++)
        if (fd_of[ready[i]] != -2 && !has(got, n, ready[i])) invariant("reported by the first wait", names[ready[i]], 0, 1);
    static const int silent[] = {ONCE, FIRED, EXCL};
    for (size_t i = 0; i < sizeof silent / sizeof silent[0]; i++)
        if (has(got, n, silent[i])) invariant("reported by the first wait", names[silent[i]], 1, 0);
    /* ETOLD and TCPOUT may be reported once more after a restore; never at the second wait. */
    n = wait_set(0, got, 32);
    static const int again[] = {LT, NEST, GONE, REUSED, TCPIN, ALL};
    for (size_t i = 0; i < sizeof again / sizeof again[0]; i++)
        if (fd_of[again[i]] != -2 && !has(got, n, again[i])) invariant("reported by the second wait", names[again[i]], 0, 1);
    static const int edge[] = {ETOLD, ETNEW, TCPOUT, ONCE, FIRED, EXCL};
    for (size_t i = 0; i < sizeof edge / sizeof edge[0]; i++)
        if (has(got, n, edge[i])) invariant("reported by the second wait", names[edge[i]], 1, 0);
    /* Nothing was lost from the watched files. */
    if (unread(pipes[LT][0]) != 3) invariant("unread bytes", "LT", unread(pipes[LT][0]), 3);
    if (unread(pipes[ETOLD][0]) != 1) invariant("unread bytes", "ETOLD", unread(pipes[ETOLD][0]), 1);
    if (unread(pipes[ETNEW][0]) != 1) invariant("unread bytes", "ETNEW", unread(pipes[ETNEW][0]), 1);
    if (unread(keep_of[GONE]) != 2) invariant("unread bytes", "GONE", unread(keep_of[GONE]), 2);
    if (tcp && unread(fd_of[TCPIN]) != 5) invariant("unread bytes", "TCPIN", unread(fd_of[TCPIN]), 5);
    /* The inner instance reports its eventfd. */
    struct epoll_event iev;
    if (epoll_wait(inner, &iev, 1, 0) != 1 || iev.data.u64 != 0xFFEE000000000001ULL)
        invariant("inner epoll reports its eventfd", "NEST", 0, 1);
    /* ONCE fires once after a write, then is silent. */
    uint64_t one = 1;
    must_write(fd_of[ONCE], &one, 8);
    n = wait_set(0, got, 32);
    if (!has(got, n, ONCE)) invariant("one-shot reported after a write", "ONCE", 0, 1);
    n = wait_set(0, got, 32);
    if (has(got, n, ONCE)) invariant("one-shot reported twice", "ONCE", 1, 0);
    /* FIRED fires again once re-armed: proves its number. */
    struct epoll_event ev = {.events = EPOLLIN | EPOLLONESHOT, .data.u64 = data_of(FIRED)};
    if (epoll_ctl(ep, EPOLL_CTL_MOD, fd_of[FIRED], &ev) < 0) invariant("re-arming (errno)", "FIRED", errno, 0);
    n = wait_set(0, got, 32);
    if (!has(got, n, FIRED)) invariant("reported once re-armed", "FIRED", 0, 1);
    /* EPOLLEXCLUSIVE refuses MOD; every other open number takes MOD then DEL. */
    ev.events = EPOLLIN;
    ev.data.u64 = data_of(EXCL);
    if (epoll_ctl(ep, EPOLL_CTL_MOD, fd_of[EXCL], &ev) != -1 || errno != EINVAL)
        invariant("EPOLL_CTL_MOD refused (errno)", "EXCL", errno, EINVAL);
    for (int w = 0; w < N; w++) {
        if (w == GONE || w == REUSED || fd_of[w] == -2) continue;
        ev.events = mask_of[w] & ~(EPOLLERR | EPOLLHUP);
        if (w == FIRED || w == ONCE) ev.events = EPOLLIN | EPOLLONESHOT;
        ev.data.u64 = data_of(w);
        if (w != EXCL && epoll_ctl(ep, EPOLL_CTL_MOD, fd_of[w], &ev) < 0) invariant("EPOLL_CTL_MOD (errno)", names[w], errno, 0);
        if (epoll_ctl(ep, EPOLL_CTL_DEL, fd_of[w], NULL) < 0) invariant("EPOLL_CTL_DEL (errno)", names[w], errno, 0);
    }
    /* GONE's number is free again; REUSED's holds /dev/null, which is not what is watched. */
    if (fcntl(fd_of[GONE], F_GETFD) != -1 || errno != EBADF) invariant("closed number stays closed", "GONE", errno, EBADF);
    if (epoll_ctl(ep, EPOLL_CTL_DEL, fd_of[REUSED], NULL) != -1 || errno != ENOENT)
        invariant("DEL of the reused number (errno)", "REUSED", errno, ENOENT);
    char link[64], path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd_of[REUSED]);
    ssize_t l = readlink(path, link, sizeof link - 1);
    if (l != 20 || memcmp(link, "anon_inode:[eventfd]", 20) != 0)
        invariant("the reused number holds an eventfd", "REUSED", l, 20);
    if (fcntl(fd_of[REUSED], F_GETFD) != 0) invariant("the reused number's FD_CLOEXEC", "REUSED", 1, 0);
    /* The thread blocked in epoll_wait sees a new edge. */
    int seen = __atomic_load_n(&waiter_seen, __ATOMIC_SEQ_CST);
    must_write(wait_pipe[1], "w", 1);
    for (int i = 0; i < 200 && __atomic_load_n(&waiter_seen, __ATOMIC_SEQ_CST) == seen; i++) usleep(10000);
    if (__atomic_load_n(&waiter_seen, __ATOMIC_SEQ_CST) != seen + 1)
        invariant("edges seen by the blocked waiter", "WAITER", __atomic_load_n(&waiter_seen, __ATOMIC_SEQ_CST), seen + 1);
    if (child > 0 && syscall(SYS_kcmp, getpid(), child, 0 /* KCMP_FILE */, ep, ep) != 0)
        invariant("the child holds the same epoll (kcmp)", "", 1, 0);
    printf(bad ? "state bad\n" : "state ok\n");
}

static void fork_child(void)
{
    if (!shared) return;
    child = fork();
    if (child < 0) die("fork");
    if (child == 0) {
        struct timespec d = {0, 50000000L};
        for (;;) nanosleep(&d, NULL);
    }
    printf("child %d\n", (int)child);
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    signal(SIGPIPE, SIG_IGN);
    if (argc > 1 && strcmp(argv[1], "orphan") == 0) {
        int p[2];
        if (pipe(p) < 0) die("pipe");
        child = fork();
        if (child < 0) die("fork");
        if (child == 0)
            for (;;) pause();
        ep = epoll_create1(0);
        struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 1};
        if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, p[0], &ev) < 0) die("orphan watch");
        close(p[0]);
        close(p[1]);
        printf("orphan epoll %d tfd %d child %d\n", ep, p[0], (int)child);
        struct timespec d = {0, 50000000L};
        for (unsigned long long n = 1;; n++) {
            printf("tick %llu\n", n);
            nanosleep(&d, NULL);
        }
    }
    shared = argc > 1 && strcmp(argv[1], "shared") == 0;
    tcp = !shared;
    wait_ep = epoll_create1(0);
    if (wait_ep < 0 || pipe2(wait_pipe, O_NONBLOCK) < 0) die("waiter's epoll");
    struct epoll_event wev = {.events = EPOLLIN | EPOLLET, .data.u64 = 0x8000000000000077ULL};
    if (epoll_ctl(wait_ep, EPOLL_CTL_ADD, wait_pipe[0], &wev) < 0) die("waiter's watch");
    pthread_t t;
    if (pthread_create(&t, NULL, waiter, NULL) != 0) die("pthread_create");
    set_up();
    fork_child();
    signal(SIGUSR1, on_usr1);
    printf("epoll %d pid %d\n", ep, (int)getpid());
    struct timespec d = {0, 50000000L};
    for (unsigned long long n = 1;; n++) {
        if (asked) {
            asked = 0;
            check();
            if (child > 0) {
                kill(child, SIGKILL);
                waitpid(child, NULL, 0);
            }
            tear_down();
            set_up();
            fork_child();
        }
        printf("tick %llu\n", n);
        nanosleep(&d, NULL);
    }
}
