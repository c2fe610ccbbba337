/*
 * mqueue_state [busy]: holds POSIX message queues and checks, when asked, that each is as it
 * was set up:
 *   - /ckpt-mq-PID-a: 7 messages of up to 100 bytes, mode 0640, five messages of priorities
 *     1, 5, 1, 5, 0 (received highest priority first, in order within a priority), opened
 *     twice (read-write blocking, write-only non-blocking);
 *   - /ckpt-mq-PID-n: empty, with an mq_notify registration (SIGEV_SIGNAL, SIGUSR2) made by
 *     this process: a message sent to it raises SIGUSR2;
 *   - /ckpt-mq-PID-u: unlinked while open, holding two messages of priority 2.
 * With "busy", a message waits in -n while the registration is in place (a checkpoint must
 * then be refused, and every queue left as it was).
 *
 * Prints "tick N" every 50 ms. On SIGUSR1 it checks everything (receiving the messages),
 * prints "state ok" or "INVARIANT <what>" lines then "state bad", and sets them up again.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <mqueue.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t asked, notified;
static void on_usr1(int s) { (void)s; asked = 1; }
static void on_usr2(int s) { (void)s; notified = 1; }

static mqd_t qa, qa_w, qn, qn_w, qu;
static char name_a[64], name_n[64], name_u[64];
static int busy, bad;

static const struct {
    const char *text;
    unsigned prio;
} sent_a[] = {{"low1", 1}, {"high1", 5}, {"low2", 1}, {"high2", 5}, {"zero", 0}};
static const char *order_a[] = {"high1", "high2", "low1", "low2", "zero"};

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

static void expect_msg(mqd_t q, const char *want, unsigned want_prio, const char *what)
{
    static char buf[8192];
    unsigned prio = 0;
    memset(buf, 0, sizeof buf);
    ssize_t n = mq_receive(q, buf, sizeof buf, &prio);
    if (n != (ssize_t)strlen(want) || memcmp(buf, want, n) != 0 || prio != want_prio) {
        printf("INVARIANT %s: received %zd \"%s\" prio %u, want \"%s\" prio %u\n", what, n, n > 0 ? buf : "", prio,
               want, want_prio);
        bad = 1;
    }
}

static void expect_attr(mqd_t q, long maxmsg, long msgsize, long curmsgs, int nonblock, const char *what)
{
    struct mq_attr a;
    if (mq_getattr(q, &a) != 0) die("mq_getattr");
    if (a.mq_maxmsg != maxmsg) invariant(what, a.mq_maxmsg, maxmsg);
    if (a.mq_msgsize != msgsize) invariant(what, a.mq_msgsize, msgsize);
    if (a.mq_curmsgs != curmsgs) invariant(what, a.mq_curmsgs, curmsgs);
    if (!!(a.mq_flags & O_NONBLOCK) != nonblock) invariant(what, !!(a.mq_flags & O_NONBLOCK), nonblock);
}

/* The registered process, as the queue's own text says (NOTIFY_PID). */
static int notify_pid(mqd_t q)
{
    char buf[256] = {0};
    if (pread(q, buf, sizeof buf - 1, 0) <= 0) return -1;
    char *p = strstr(buf, "NOTIFY_PID:");
    return p ? atoi(p + 11) : -1;
}

static void send(mqd_t q, const char *s, unsigned prio)
{
    if (mq_send(q, s, strlen(s), prio) != 0) die("mq_send");
}

static void notify_me(void)
{
    struct sigevent ev;
    memset(&ev, 0, sizeof ev);
    ev.sigev_notify = SIGEV_SIGNAL;
    ev.sigev_signo = SIGUSR2;
    if (mq_notify(qn, &ev) != 0) die("mq_notify");
}

static void wait_notified(const char *what)
{
    struct timespec d = {0, 10000000L};
    for (int i = 0; i < 200 && !notified; i++) nanosleep(&d, NULL);
    if (!notified) invariant(what, 0, 1);
    notified = 0;
}

static void set_up(void)
{
    for (unsigned i = 0; i < sizeof sent_a / sizeof sent_a[0]; i++) send(qa_w, sent_a[i].text, sent_a[i].prio);
    send(qu, "gone1", 2);
    send(qu, "gone2", 2);
    notify_me();
    if (busy) {
        send(qn_w, "waiting", 0);
        wait_notified("busy: the first message notifies");
        notify_me();
    }
}

static void check(void)
{
    bad = 0;
    expect_attr(qa, 7, 100, 5, 0, "queue a attributes");
    expect_attr(qa_w, 7, 100, 5, 1, "queue a (write-only) attributes");
    struct stat st;
    if (fstat(qa, &st) != 0 || (st.st_mode & 0777) != 0640) invariant("queue a mode", st.st_mode & 0777, 0640);
    for (unsigned i = 0; i < 5; i++) {
        unsigned prio = strncmp(order_a[i], "high", 4) == 0 ? 5 : strncmp(order_a[i], "low", 3) == 0 ? 1 : 0;
        expect_msg(qa, order_a[i], prio, "queue a message in order");
    }
    if (notify_pid(qn) != getpid()) invariant("queue n registered to this process", notify_pid(qn), getpid());
    if (busy) {
        expect_attr(qn, 10, 8192, 1, 1, "queue n attributes (busy)");
        expect_msg(qn, "waiting", 0, "queue n waiting message (busy)");
    } else {
        expect_attr(qn, 10, 8192, 0, 1, "queue n attributes");
    }
    /* The registration raises SIGUSR2 when a message comes to the empty queue. */
    send(qn_w, "ping", 0);
    wait_notified("queue n notification (SIGUSR2)");
    expect_msg(qn, "ping", 0, "queue n ping");
    expect_msg(qu, "gone1", 2, "unlinked queue first message");
    expect_msg(qu, "gone2", 2, "unlinked queue second message");
    mqd_t again = mq_open(name_u, O_RDONLY);
    if (again != (mqd_t)-1 || errno != ENOENT) invariant("unlinked queue stays unlinked (errno)", errno, ENOENT);
    printf(bad ? "state bad\n" : "state ok\n");
}

static mqd_t open_new(const char *name, long maxmsg, long msgsize, int flags)
{
    struct mq_attr a = {0, maxmsg, msgsize, 0};
    mq_unlink(name);
    mqd_t q = mq_open(name, O_CREAT | O_EXCL | flags, 0640, &a);
    if (q == (mqd_t)-1) die(name);
    return q;
}

int main(int argc, char **argv)
{
    busy = argc > 1 && strcmp(argv[1], "busy") == 0;
    setvbuf(stdout, NULL, _IOLBF, 0);
    snprintf(name_a, sizeof name_a, "/ckpt-mq-%d-a", (int)getpid());
    snprintf(name_n, sizeof name_n, "/ckpt-mq-%d-n", (int)getpid());
    snprintf(name_u, sizeof name_u, "/ckpt-mq-%d-u", (int)getpid());
    qa = open_new(name_a, 7, 100, O_RDWR);
    qa_w = mq_open(name_a, O_WRONLY | O_NONBLOCK);
    qn = open_new(name_n, 10, 8192, O_RDONLY | O_NONBLOCK);
    qn_w = mq_open(name_n, O_WRONLY);
    qu = open_new(name_u, 4, 16, O_RDWR);
    if (qa_w == (mqd_t)-1 || qn_w == (mqd_t)-1) die("mq_open");
    if (mq_unlink(name_u) != 0) die("mq_unlink");
    signal(SIGUSR1, on_usr1);
    signal(SIGUSR2, on_usr2);
    set_up();
    printf("queues %s %s %s pid %d\n", name_a, name_n, name_u, (int)getpid());
    struct timespec d = {0, 50000000L};
    for (unsigned long long n = 1;; n++) {
        if (asked) {
            asked = 0;
            check();
            set_up();
        }
        printf("tick %llu\n", n);
        nanosleep(&d, NULL);
    }
}
