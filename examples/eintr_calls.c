/*
 * eintr_calls: one thread per blocking call that a signal handler can end with EINTR, each
 * looping on its call. A call that fails with EINTR, or ends before its timeout, prints
 * "INVARIANT <call>: ..." and the program exits with status 3: under ckpt, a checkpoint (taken,
 * refused or aborted) and a restore must be invisible to these calls.
 *
 * Calls: poll (with a timeout and without), ppoll, select, pselect, nanosleep, clock_nanosleep (relative and absolute),
 * usleep, read on a blocking pipe, recv and accept (blocked for good) on blocking TCP sockets, futex (through
 * syscall()), sem_wait, sem_timedwait, pthread_cond_timedwait, sigtimedwait, sigsuspend, pause,
 * waitpid, SysV semop/semtimedop, msgrcv/msgsnd. While "odd" mode is on (toggled by each SIGUSR1,
 * taken by a sigwaitinfo thread), a userfaultfd of its own (a kind ckpt refuses to checkpoint)
 * exists while threads are blocked in epoll_wait (with and without a timeout) and
 * mq_timedreceive.
 *
 * Usage: eintr_calls [PORT] (the loopback port of its TCP listener; any free one without).
 * Prints "tick N" every 100 ms, "odd on" / "odd off", and "sysv SEM MSG" (ids, for cleanup).
 * Every thread blocks SIGUSR1, SIGUSR2, SIGWINCH and SIGURG but where it waits for one.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <mqueue.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <spawn.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ipc.h>
#include <sys/msg.h>
#include <sys/select.h>
#include <sys/sem.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define TMO_MS 30
#define SLACK_NS 1000000L

extern char **environ;

static long long now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000LL + t.tv_nsec;
}

static void fail(const char *call, const char *what)
{
    printf("INVARIANT %s: %s\n", call, what);
    fflush(stdout);
    _exit(3);
}

/* A call that failed: EINTR is the bug looked for, anything else is unexpected too. */
static void check_err(const char *call, int err, int allowed)
{
    if (err == EINTR)
        fail(call, "interrupted (EINTR)");
    if (err != allowed) {
        char buf[128];
        snprintf(buf, sizeof buf, "failed: %s", strerror(err));
        fail(call, buf);
    }
}

/* A timed wait that timed out: not before its timeout. */
static void check_waited(const char *call, long long t0, long long ms)
{
    if (now_ns() - t0 < ms * 1000000LL - SLACK_NS)
        fail(call, "returned before its timeout");
}

static atomic_long counts[32];
static const char *names[32];
static int ncalls;

static int slot(const char *name)
{
    names[ncalls] = name;
    return ncalls++;
}

#define LOOP(name, ...)                                                                        \
    static void *name##_thread(void *arg)                                                      \
    {                                                                                          \
        int me = (int)(long)arg;                                                               \
        for (;;) {                                                                             \
            __VA_ARGS__;                                                                       \
            atomic_fetch_add(&counts[me], 1);                                                  \
        }                                                                                      \
        return NULL;                                                                           \
    }

static int never_r, never_w;         /* a pipe nobody writes */
static int feed_r, feed_w;           /* a pipe fed every 50 ms */
static int feed2_r, feed2_w;         /* another, for poll(-1) */
static int tcp_listen_fd, tcp_a, tcp_b;
static int semid, msgid;
static sem_t sem_posted, sem_never;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static atomic_int futex_word;
static atomic_int suspend_tid, pause_tid;
static atomic_long suspend_hits, pause_hits;

static void on_winch(int s) { (void)s; atomic_fetch_add(&suspend_hits, 1); }
static void on_urg(int s) { (void)s; atomic_fetch_add(&pause_hits, 1); }

LOOP(poll, {
    struct pollfd p = {never_r, POLLIN, 0};
    long long t0 = now_ns();
    int r = poll(&p, 1, TMO_MS);
    if (r < 0) check_err("poll", errno, 0);
    check_waited("poll", t0, TMO_MS);
})

LOOP(ppoll, {
    struct pollfd p = {never_r, POLLIN, 0};
    struct timespec ts = {0, TMO_MS * 1000000L};
    long long t0 = now_ns();
    int r = ppoll(&p, 1, &ts, NULL);
    if (r < 0) check_err("ppoll", errno, 0);
    check_waited("ppoll", t0, TMO_MS);
})

LOOP(select, {
    fd_set s;
    FD_ZERO(&s);
    FD_SET(never_r, &s);
    struct timeval tv = {0, TMO_MS * 1000};
    long long t0 = now_ns();
    int r = select(never_r + 1, &s, NULL, NULL, &tv);
    if (r < 0) check_err("select", errno, 0);
    check_waited("select", t0, TMO_MS);
})

LOOP(pselect, {
    fd_set s;
    FD_ZERO(&s);
    FD_SET(never_r, &s);
    struct timespec ts = {0, TMO_MS * 1000000L};
    long long t0 = now_ns();
    int r = pselect(never_r + 1, &s, NULL, NULL, &ts, NULL);
    if (r < 0) check_err("pselect", errno, 0);
    check_waited("pselect", t0, TMO_MS);
})

LOOP(nanosleep, {
    struct timespec ts = {0, TMO_MS * 1000000L}, rem;
    long long t0 = now_ns();
    if (nanosleep(&ts, &rem) < 0) check_err("nanosleep", errno, 0);
    check_waited("nanosleep", t0, TMO_MS);
})

LOOP(clock_nanosleep, {
    struct timespec ts = {0, TMO_MS * 1000000L};
    long long t0 = now_ns();
    int e = clock_nanosleep(CLOCK_MONOTONIC, 0, &ts, NULL);
    if (e) check_err("clock_nanosleep", e, 0);
    check_waited("clock_nanosleep", t0, TMO_MS);
    struct timespec abs;
    clock_gettime(CLOCK_MONOTONIC, &abs);
    abs.tv_nsec += TMO_MS * 1000000L;
    if (abs.tv_nsec >= 1000000000L) { abs.tv_sec++; abs.tv_nsec -= 1000000000L; }
    t0 = now_ns();
    e = clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &abs, NULL);
    if (e) check_err("clock_nanosleep(abs)", e, 0);
    check_waited("clock_nanosleep(abs)", t0, TMO_MS);
})

LOOP(usleep, {
    long long t0 = now_ns();
    if (usleep(TMO_MS * 1000) < 0) check_err("usleep", errno, 0);
    check_waited("usleep", t0, TMO_MS);
})

/* Without a timeout: until the feeder's byte arrives. */
LOOP(poll_forever, {
    struct pollfd p = {feed2_r, POLLIN, 0};
    int r = poll(&p, 1, -1);
    if (r < 0) check_err("poll(-1)", errno, 0);
    char c;
    if (read(feed2_r, &c, 1) != 1) fail("poll(-1)", "woke with nothing to read");
})

LOOP(read, {
    char c;
    ssize_t n = read(feed_r, &c, 1);
    if (n < 0) check_err("read", errno, 0);
    if (n == 0) fail("read", "end of file");
})

LOOP(recv, {
    char c;
    ssize_t n = recv(tcp_b, &c, 1, 0);
    if (n < 0) check_err("recv", errno, 0);
    if (n == 0) fail("recv", "connection closed");
})

/* Nobody connects: it stays blocked in accept for good (a connection opened and closed at any
 * moment would leave half-closed sockets for checkpoints to meet). */
LOOP(accept, {
    int c = accept(tcp_listen_fd, NULL, NULL);
    if (c < 0) check_err("accept", errno, 0);
    fail("accept", "returned a connection nobody made");
})

LOOP(futex, {
    struct timespec ts = {0, TMO_MS * 1000000L};
    long long t0 = now_ns();
    long r = syscall(SYS_futex, &futex_word, FUTEX_WAIT_PRIVATE, 0, &ts, NULL, 0);
    if (r < 0) check_err("futex", errno, ETIMEDOUT);
    check_waited("futex", t0, TMO_MS);
})

LOOP(sem_wait, {
    if (sem_wait(&sem_posted) < 0) check_err("sem_wait", errno, 0);
})

LOOP(sem_timedwait, {
    struct timespec abs;
    clock_gettime(CLOCK_REALTIME, &abs);
    abs.tv_nsec += TMO_MS * 1000000L;
    if (abs.tv_nsec >= 1000000000L) { abs.tv_sec++; abs.tv_nsec -= 1000000000L; }
    long long t0 = now_ns();
    if (sem_timedwait(&sem_never, &abs) < 0) check_err("sem_timedwait", errno, ETIMEDOUT);
    check_waited("sem_timedwait", t0, TMO_MS);
})

LOOP(cond_timedwait, {
    struct timespec abs;
    clock_gettime(CLOCK_REALTIME, &abs);
    abs.tv_nsec += TMO_MS * 1000000L;
    if (abs.tv_nsec >= 1000000000L) { abs.tv_sec++; abs.tv_nsec -= 1000000000L; }
    pthread_mutex_lock(&mu);
    int e = pthread_cond_timedwait(&cv, &mu, &abs);
    pthread_mutex_unlock(&mu);
    if (e) check_err("pthread_cond_timedwait", e, ETIMEDOUT);
})

LOOP(sigtimedwait, {
    sigset_t s;
    sigemptyset(&s);
    sigaddset(&s, SIGUSR2);
    struct timespec ts = {0, TMO_MS * 1000000L};
    long long t0 = now_ns();
    if (sigtimedwait(&s, NULL, &ts) < 0) check_err("sigtimedwait", errno, EAGAIN);
    check_waited("sigtimedwait", t0, TMO_MS);
})

/* sigsuspend and pause always end with EINTR: the check is that their handler ran. */
LOOP(sigsuspend, {
    atomic_store(&suspend_tid, (int)syscall(SYS_gettid));
    sigset_t m;
    pthread_sigmask(SIG_SETMASK, NULL, &m);
    sigdelset(&m, SIGWINCH);
    long before = atomic_load(&suspend_hits);
    sigsuspend(&m);
    if (errno != EINTR) check_err("sigsuspend", errno, EINTR);
    if (atomic_load(&suspend_hits) == before) fail("sigsuspend", "returned without its handler running");
})

LOOP(pause, {
    atomic_store(&pause_tid, (int)syscall(SYS_gettid));
    long before = atomic_load(&pause_hits);
    pause();
    if (atomic_load(&pause_hits) == before) fail("pause", "returned without its handler running");
})

static atomic_int waitpid_done;

LOOP(waitpid, {
    if (atomic_load(&waitpid_done)) {
        struct timespec ts = {1, 0};
        nanosleep(&ts, NULL);
    } else {
        /* A child under ckpt's control like its parent (one outside it refuses the checkpoint). */
        char *argv[] = {"sleep", "0.05", NULL};
        char **envp = environ;
        /* Nor any of our descriptors: a listener it held would outlive a kill of ours. */
        posix_spawn_file_actions_t fa;
        posix_spawn_file_actions_init(&fa);
        posix_spawn_file_actions_addclosefrom_np(&fa, 3);
        pid_t pid;
        int e = posix_spawn(&pid, "/bin/sleep", &fa, NULL, argv, envp);
        posix_spawn_file_actions_destroy(&fa);
        if (e) check_err("posix_spawn", e, 0);
        int st;
        if (waitpid(pid, &st, 0) < 0) {
            /* After a restore the child is not ours any more: stop here. */
            if (errno == ECHILD) {
                atomic_store(&waitpid_done, 1);
                printf("waitpid: child no longer ours\n");
                fflush(stdout);
            } else {
                check_err("waitpid", errno, 0);
            }
        }
    }
})

LOOP(semop, {
    struct sembuf op = {0, -1, 0};
    if (semop(semid, &op, 1) < 0) check_err("semop", errno, 0);
    struct sembuf never = {1, -1, 0};
    struct timespec ts = {0, TMO_MS * 1000000L};
    long long t0 = now_ns();
    if (semtimedop(semid, &never, 1, &ts) < 0) check_err("semtimedop", errno, EAGAIN);
    check_waited("semtimedop", t0, TMO_MS);
})

struct msg {
    long type;
    char text[8];
};

LOOP(msgrcv, {
    struct msg m;
    if (msgrcv(msgid, &m, sizeof m.text, 1, 0) < 0) check_err("msgrcv", errno, 0);
})

/* Feeds the blocking readers and waiters, and wakes the sigsuspend and pause threads. */
static void *feeder(void *arg)
{
    (void)arg;
    for (;;) {
        struct timespec ts = {0, 50 * 1000000L};
        nanosleep(&ts, NULL);
        char c = 'x';
        if (write(feed_w, &c, 1) != 1) fail("feeder", "pipe write failed");
        if (write(feed2_w, &c, 1) != 1) fail("feeder", "pipe write failed");
        if (send(tcp_a, &c, 1, 0) != 1) fail("feeder", "send failed");
        sem_post(&sem_posted);
        struct sembuf op = {0, 1, 0};
        if (semop(semid, &op, 1) < 0) check_err("feeder semop", errno, 0);
        struct msg m = {1, "hello"};
        if (msgsnd(msgid, &m, sizeof m.text, 0) < 0) check_err("msgsnd", errno, 0);
        int t = atomic_load(&suspend_tid);
        if (t) syscall(SYS_tgkill, getpid(), t, SIGWINCH);
        t = atomic_load(&pause_tid);
        if (t) syscall(SYS_tgkill, getpid(), t, SIGURG);
    }
    return NULL;
}

/* Odd mode: an fd of a kind a checkpoint refuses (a userfaultfd of the program's own), while
 * threads are blocked on an epoll fd and a POSIX message queue. */
static int odd_uffd = -1;
static int odd_epfd = -1;
static mqd_t odd_mq = (mqd_t)-1;
static atomic_int odd_on;
static char mq_name[64];

static int odd_wake_r = -1, odd_wake_w = -1;

/* epoll_wait without a timeout: woken by the controller when odd mode ends. */
static void *odd_epoll_forever(void *arg)
{
    (void)arg;
    while (atomic_load(&odd_on)) {
        struct epoll_event ev;
        int r = epoll_wait(odd_epfd, &ev, 1, -1);
        if (r < 0) check_err("epoll_wait(-1)", errno, 0);
    }
    return NULL;
}

static void *odd_epoll(void *arg)
{
    (void)arg;
    while (atomic_load(&odd_on)) {
        struct epoll_event ev;
        long long t0 = now_ns();
        int r = epoll_wait(odd_epfd, &ev, 1, TMO_MS);
        if (r < 0) check_err("epoll_wait", errno, 0);
        /* An event is the wake-up at the end of odd mode. */
        if (r == 0) check_waited("epoll_wait", t0, TMO_MS);
    }
    return NULL;
}

static void *odd_mq_recv(void *arg)
{
    (void)arg;
    while (atomic_load(&odd_on)) {
        char buf[64];
        struct timespec abs;
        clock_gettime(CLOCK_REALTIME, &abs);
        abs.tv_nsec += TMO_MS * 1000000L;
        if (abs.tv_nsec >= 1000000000L) { abs.tv_sec++; abs.tv_nsec -= 1000000000L; }
        long long t0 = now_ns();
        if (mq_timedreceive(odd_mq, buf, sizeof buf, NULL, &abs) < 0) check_err("mq_timedreceive", errno, ETIMEDOUT);
        check_waited("mq_timedreceive", t0, TMO_MS);
    }
    return NULL;
}

static void *controller(void *arg)
{
    (void)arg;
    sigset_t s;
    sigemptyset(&s);
    sigaddset(&s, SIGUSR1);
    pthread_t a, b, c;
    for (;;) {
        int sig = sigwaitinfo(&s, NULL);
        if (sig < 0) check_err("sigwaitinfo", errno, 0);
        if (!atomic_load(&odd_on)) {
            odd_epfd = epoll_create1(EPOLL_CLOEXEC);
            struct epoll_event ev = {.events = EPOLLIN, .data.fd = never_r};
            epoll_ctl(odd_epfd, EPOLL_CTL_ADD, never_r, &ev);
            int w[2];
            if (pipe(w) < 0) fail("odd mode", "pipe");
            odd_wake_r = w[0], odd_wake_w = w[1];
            struct epoll_event wev = {.events = EPOLLIN, .data.fd = odd_wake_r};
            epoll_ctl(odd_epfd, EPOLL_CTL_ADD, odd_wake_r, &wev);
            struct mq_attr at = {.mq_maxmsg = 4, .mq_msgsize = 64};
            snprintf(mq_name, sizeof mq_name, "/eintr_calls_%d", getpid());
            odd_mq = mq_open(mq_name, O_RDWR | O_CREAT, 0600, &at);
            odd_uffd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
            if (odd_epfd < 0 || odd_mq == (mqd_t)-1 || odd_uffd < 0) fail("odd mode", "cannot create its fds");
            atomic_store(&odd_on, 1);
            pthread_create(&a, NULL, odd_epoll, NULL);
            pthread_create(&b, NULL, odd_mq_recv, NULL);
            pthread_create(&c, NULL, odd_epoll_forever, NULL);
            printf("odd on\n");
        } else {
            atomic_store(&odd_on, 0);
            char x = 'x';
            if (write(odd_wake_w, &x, 1) != 1) fail("odd mode", "wake write");
            pthread_join(a, NULL);
            pthread_join(b, NULL);
            pthread_join(c, NULL);
            close(odd_wake_r);
            close(odd_wake_w);
            close(odd_epfd);
            close(odd_uffd);
            mq_close(odd_mq);
            mq_unlink(mq_name);
            printf("odd off\n");
        }
        fflush(stdout);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    /* Every thread inherits these blocked; each waits for its own with a mask of its own. */
    sigset_t block;
    sigemptyset(&block);
    sigaddset(&block, SIGUSR1);
    sigaddset(&block, SIGUSR2);
    sigaddset(&block, SIGWINCH);
    sigaddset(&block, SIGURG);
    pthread_sigmask(SIG_BLOCK, &block, NULL);
    struct sigaction sa = {0};
    sa.sa_handler = on_winch;
    sigaction(SIGWINCH, &sa, NULL);
    sa.sa_handler = on_urg;
    sigaction(SIGURG, &sa, NULL);

    int p[2];
    if (pipe(p) < 0) fail("setup", "pipe");
    never_r = p[0], never_w = p[1];
    if (pipe(p) < 0) fail("setup", "pipe");
    feed_r = p[0], feed_w = p[1];
    if (pipe(p) < 0) fail("setup", "pipe");
    feed2_r = p[0], feed2_w = p[1];
    tcp_listen_fd = socket(AF_INET, SOCK_STREAM, 0);
    /* As servers do: the address can be bound again while old connections linger. */
    int one = 1;
    setsockopt(tcp_listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    /* A port below the ephemeral range when given: one taken at random could be some other
     * program's by the time of a restore. */
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(argc > 1 ? atoi(argv[1]) : 0)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t al = sizeof a;
    if (bind(tcp_listen_fd, (struct sockaddr *)&a, sizeof a) < 0 || listen(tcp_listen_fd, 16) < 0)
        fail("setup", "listen");
    getsockname(tcp_listen_fd, (struct sockaddr *)&a, &al);
    tcp_a = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(tcp_a, (struct sockaddr *)&a, sizeof a) < 0) fail("setup", "connect");
    tcp_b = accept(tcp_listen_fd, NULL, NULL);
    sem_init(&sem_posted, 0, 0);
    sem_init(&sem_never, 0, 0);
    semid = semget(IPC_PRIVATE, 2, 0600);
    msgid = msgget(IPC_PRIVATE, 0600);
    if (semid < 0 || msgid < 0) fail("setup", "SysV IPC");
    printf("sysv %d %d\n", semid, msgid);

    struct {
        const char *name;
        void *(*fn)(void *);
    } loops[] = {
        {"poll", poll_thread},
        {"ppoll", ppoll_thread},
        {"select", select_thread},
        {"pselect", pselect_thread},
        {"nanosleep", nanosleep_thread},
        {"clock_nanosleep", clock_nanosleep_thread},
        {"usleep", usleep_thread},
        {"poll_forever", poll_forever_thread},
        {"read", read_thread},
        {"recv", recv_thread},
        {"accept", accept_thread},
        {"futex", futex_thread},
        {"sem_wait", sem_wait_thread},
        {"sem_timedwait", sem_timedwait_thread},
        {"cond_timedwait", cond_timedwait_thread},
        {"sigtimedwait", sigtimedwait_thread},
        {"sigsuspend", sigsuspend_thread},
        {"pause", pause_thread},
        {"waitpid", waitpid_thread},
        {"semop", semop_thread},
        {"msgrcv", msgrcv_thread},
    };
    pthread_t t;
    for (size_t i = 0; i < sizeof loops / sizeof loops[0]; i++) {
        int me = slot(loops[i].name);
        if (strcmp(loops[i].name, "pause") == 0) {
            /* Only this thread takes SIGURG. */
            sigset_t m;
            sigemptyset(&m);
            sigaddset(&m, SIGURG);
            pthread_sigmask(SIG_UNBLOCK, &m, NULL);
            pthread_create(&t, NULL, loops[i].fn, (void *)(long)me);
            pthread_sigmask(SIG_BLOCK, &m, NULL);
        } else {
            pthread_create(&t, NULL, loops[i].fn, (void *)(long)me);
        }
    }
    pthread_create(&t, NULL, feeder, NULL);
    pthread_create(&t, NULL, controller, NULL);

    for (unsigned long long n = 1;; n++) {
        struct timespec ts = {0, 100 * 1000000L};
        long long t0 = now_ns();
        if (nanosleep(&ts, NULL) < 0) check_err("nanosleep(main)", errno, 0);
        check_waited("nanosleep(main)", t0, 100);
        printf("tick %llu\n", n);
        if (n % 10 == 0) {
            printf("counts");
            for (int i = 0; i < ncalls; i++) printf(" %s=%ld", names[i], atomic_load(&counts[i]));
            printf("\n");
        }
    }
}
