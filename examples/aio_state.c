/*
 * aio_state DIR: holds kernel AIO contexts (io_setup, io_submit, io_getevents through libc's
 * syscall(); no libaio) and checks, when asked, that each is as it was set up:
 *   - context A, io_setup(4), and B, io_setup(300): rings of different sizes; a third one made
 *     between them and destroyed leaves index 1 of the process's table free (A is 0, B is 2);
 *   - each ring moved on by requests completed and reaped (its head and tail wrap around),
 *     then requests completed and left unreaped: reads of a file in DIR, and an fsync on B;
 *   - the ring headers (id, size, head, tail, magic) are as recorded;
 *   - io_getevents returns exactly the unreaped events, in order, with their data, obj, res
 *     and res2, and the buffers hold the bytes read;
 *   - a new read submitted and reaped works;
 *   - polls of a pipe nobody writes fill A until io_submit fails with EAGAIN, after at least
 *     the 4 io_setup asked for and fewer than the ring's size; a byte written completes them all;
 *   - a new context takes the free index 1;
 *   - a child forked before any context was made has no ring mapped and no context
 *     (io_submit on A's id fails with EINVAL there);
 *   - a thread waiting in io_getevents (an hour's timeout) on an idle context W, which parks
 *     interrupt, gets the read submitted to W and nothing else (no EINTR);
 *   - a poll of a timerfd due 400 ms after the set-up, through context T, completes with
 *     POLLIN: a checkpoint taken meanwhile finds it in flight and waits for it.
 * Then it sets the state up again (new unreaped events).
 *
 * aio_state DIR busy: also a thread that reads through a fourth context all the time, one
 * request submitted then reaped after the other, checking each event and byte (the park
 * catches it inside io_submit and io_getevents); when asked, it must have gone on and found
 * nothing wrong.
 *
 * Prints "tick N" every 50 ms; on SIGUSR1 prints "state ok" or "INVARIANT <what>" lines and
 * "state bad".
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/aio_abi.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/timerfd.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

struct ring {
    unsigned id, nr, head, tail, magic, compat, incompat, header_length;
};

#define AIO_RING_MAGIC 0xa10a10a1u
#define MAX_UNREAPED 8
#define FILE_LEN 65536

struct ctx {
    const char *name;
    unsigned asked, advance, unreaped;
    int fsync_last; /* the last unreaped request is an fsync */
    aio_context_t id;
    unsigned index, nr, head, tail;
    struct iocb cbs[MAX_UNREAPED];
    char bufs[MAX_UNREAPED][16];
};

static struct ctx A = {"A", 4, 200, 3, 0}, B = {"B", 300, 50, 5, 1};
static int data_fd, never[2], to_kid[2], from_kid[2];
static pid_t kid;
static aio_context_t busy_ctx, wait_ctx, timer_ctx;
static int timer_fd;
static struct iocb timer_cb;
static volatile unsigned long waited;
static volatile long waiter_bad;
static volatile unsigned long busy_rounds, busy_seen;
static volatile int busy_bad;
static char busy_what[160];

static volatile sig_atomic_t asked;
static void on_usr1(int s) { (void)s; asked = 1; }

static int bad;
static void invariant(const char *ctx, const char *what, long long a, long long b)
{
    printf("INVARIANT %s %s: got %lld, want %lld\n", ctx, what, a, b);
    bad = 1;
}

static long io_setup_(unsigned nr, aio_context_t *c) { return syscall(SYS_io_setup, nr, c); }
static long io_destroy_(aio_context_t c) { return syscall(SYS_io_destroy, c); }
static long io_submit_(aio_context_t c, long n, struct iocb **cbs) { return syscall(SYS_io_submit, c, n, cbs); }
static long io_getevents_(aio_context_t c, long min, long n, struct io_event *ev, struct timespec *t)
{
    return syscall(SYS_io_getevents, c, min, n, ev, t);
}

static unsigned char file_byte(long off) { return (unsigned char)(off * 7 + 3); }

static void prep_read(struct iocb *cb, char *buf, long off, uint64_t data)
{
    memset(cb, 0, sizeof *cb);
    cb->aio_lio_opcode = IOCB_CMD_PREAD;
    cb->aio_fildes = data_fd;
    cb->aio_buf = (uint64_t)(uintptr_t)buf;
    cb->aio_nbytes = 16;
    cb->aio_offset = off;
    cb->aio_data = data;
}

/* Requests completed and reaped, to move the ring's head and tail on. */
static void advance(struct ctx *c, unsigned n)
{
    char buf[16];
    struct iocb cb;
    struct iocb *p = &cb;
    struct io_event ev;
    for (unsigned i = 0; i < n; i++) {
        prep_read(&cb, buf, i % 1000, 0xdead);
        if (io_submit_(c->id, 1, &p) != 1) invariant(c->name, "advancing submit", errno, 0);
        if (io_getevents_(c->id, 1, 1, &ev, NULL) != 1) invariant(c->name, "advancing reap", errno, 0);
    }
}

static void set_up_ctx(struct ctx *c)
{
    volatile struct ring *r = (struct ring *)(uintptr_t)c->id;
    advance(c, c->advance);
    for (unsigned k = 0; k < c->unreaped; k++) {
        struct iocb *cb = &c->cbs[k];
        if (c->fsync_last && k == c->unreaped - 1) {
            memset(cb, 0, sizeof *cb);
            cb->aio_lio_opcode = IOCB_CMD_FSYNC;
            cb->aio_fildes = data_fd;
            cb->aio_data = 0xf5000 + k;
        } else {
            memset(c->bufs[k], 0, 16);
            prep_read(cb, c->bufs[k], 100 * k + 5 + c->advance, 0xa000 + k + (c == &B ? 0x100 : 0));
        }
        if (io_submit_(c->id, 1, &cb) != 1) invariant(c->name, "submit", errno, 0);
    }
    /* An fsync completes from a worker: wait for every event to be in the ring. */
    for (int i = 0; i < 5000 && (r->tail + c->nr - r->head) % c->nr != c->unreaped; i++) usleep(1000);
    c->head = r->head;
    c->tail = r->tail;
    if ((c->tail + c->nr - c->head) % c->nr != c->unreaped)
        invariant(c->name, "events in the ring after set-up", (c->tail + c->nr - c->head) % c->nr, c->unreaped);
}

static void check_header(struct ctx *c)
{
    volatile struct ring *r = (struct ring *)(uintptr_t)c->id;
    if (r->magic != AIO_RING_MAGIC) invariant(c->name, "ring magic", r->magic, AIO_RING_MAGIC);
    if (r->id != c->index) invariant(c->name, "ring index", r->id, c->index);
    if (r->nr != c->nr) invariant(c->name, "ring size", r->nr, c->nr);
    if (r->head != c->head) invariant(c->name, "ring head", r->head, c->head);
    if (r->tail != c->tail) invariant(c->name, "ring tail", r->tail, c->tail);
    if (r->header_length != sizeof(struct ring)) invariant(c->name, "header length", r->header_length, 32);
}

static void check_events(struct ctx *c)
{
    struct io_event ev[MAX_UNREAPED + 4];
    struct timespec none = {0, 0};
    long n = io_getevents_(c->id, 0, MAX_UNREAPED + 4, ev, &none);
    if (n != (long)c->unreaped) invariant(c->name, "unreaped events", n, c->unreaped);
    for (long k = 0; k < n && k < (long)c->unreaped; k++) {
        struct iocb *cb = &c->cbs[k];
        if (ev[k].data != cb->aio_data) invariant(c->name, "event data", (long long)ev[k].data, (long long)cb->aio_data);
        if (ev[k].obj != (uint64_t)(uintptr_t)cb) invariant(c->name, "event obj", (long long)ev[k].obj, (long long)(uintptr_t)cb);
        long long want = cb->aio_lio_opcode == IOCB_CMD_FSYNC ? 0 : 16;
        if (ev[k].res != want) invariant(c->name, "event res", ev[k].res, want);
        if (ev[k].res2 != 0) invariant(c->name, "event res2", ev[k].res2, 0);
        if (cb->aio_lio_opcode == IOCB_CMD_PREAD)
            for (int i = 0; i < 16; i++)
                if ((unsigned char)c->bufs[k][i] != file_byte(cb->aio_offset + i)) {
                    invariant(c->name, "byte read", (unsigned char)c->bufs[k][i], file_byte(cb->aio_offset + i));
                    break;
                }
    }
    volatile struct ring *r = (struct ring *)(uintptr_t)c->id;
    if (r->head != r->tail) invariant(c->name, "head after reaping all", r->head, r->tail);
}

static void check_new_request(struct ctx *c)
{
    char buf[16] = {0};
    struct iocb cb;
    struct iocb *p = &cb;
    struct io_event ev;
    prep_read(&cb, buf, 4242, 0x4242);
    if (io_submit_(c->id, 1, &p) != 1) invariant(c->name, "new submit", errno, 0);
    struct timespec five = {5, 0};
    if (io_getevents_(c->id, 1, 1, &ev, &five) != 1) invariant(c->name, "new reap", errno, 0);
    else if (ev.data != 0x4242 || ev.res != 16 || (unsigned char)buf[3] != file_byte(4245))
        invariant(c->name, "new request's event", (long long)ev.data, 0x4242);
}

/* Polls of a pipe nobody writes until the context is full. */
static void check_capacity(struct ctx *c)
{
    static struct iocb cbs[4096];
    long n = 0;
    int err = 0;
    for (; n < (long)c->nr + 8; n++) {
        struct iocb *cb = &cbs[n];
        memset(cb, 0, sizeof *cb);
        cb->aio_lio_opcode = IOCB_CMD_POLL;
        cb->aio_fildes = never[0];
        cb->aio_buf = POLLIN;
        cb->aio_data = 0x9000 + n;
        if (io_submit_(c->id, 1, &cb) != 1) {
            err = errno;
            break;
        }
    }
    if (err != EAGAIN) invariant(c->name, "io_submit beyond capacity (errno)", err, EAGAIN);
    if (n < (long)c->asked || n >= (long)c->nr) invariant(c->name, "requests taken before EAGAIN", n, c->asked);
    char b = 'x';
    if (write(never[1], &b, 1) != 1) invariant(c->name, "pipe write", errno, 0);
    static struct io_event ev[4096];
    long got = 0;
    struct timespec five = {5, 0};
    while (got < n) {
        long r = io_getevents_(c->id, n - got, n - got, ev, &five);
        if (r <= 0) {
            invariant(c->name, "polls completed", got, n);
            break;
        }
        got += r;
    }
    if (read(never[0], &b, 1) != 1) invariant(c->name, "pipe read", errno, 0);
}

static void check_free_index(void)
{
    aio_context_t t = 0;
    if (io_setup_(1, &t) != 0) {
        invariant("new", "io_setup", errno, 0);
        return;
    }
    if (((struct ring *)(uintptr_t)t)->id != 1) invariant("new", "context index", ((struct ring *)(uintptr_t)t)->id, 1);
    io_destroy_(t);
}

/* Reads through busy_ctx without a pause, each event and byte checked. */
static void *busy(void *arg)
{
    (void)arg;
    sigset_t usr1;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &usr1, NULL);
    for (uint64_t seq = 1;; seq++) {
        char buf[16] = {0};
        struct iocb cb;
        struct iocb *p = &cb;
        struct io_event ev;
        long off = (long)(seq % 60000);
        prep_read(&cb, buf, off, seq);
        long r = io_submit_(busy_ctx, 1, &p);
        long n = r == 1 ? io_getevents_(busy_ctx, 1, 1, &ev, NULL) : 0;
        if (!busy_bad && (r != 1 || n != 1 || ev.data != seq || ev.obj != (uint64_t)(uintptr_t)&cb || ev.res != 16 ||
                          (unsigned char)buf[5] != file_byte(off + 5))) {
            snprintf(busy_what, sizeof busy_what, "busy request %llu: submit %ld, reap %ld (errno %d), data %llu, res %lld",
                     (unsigned long long)seq, r, n, errno, (unsigned long long)ev.data, (long long)ev.res);
            busy_bad = 1;
        }
        busy_rounds++;
    }
    return NULL;
}

/* A poll of a timerfd due in 400 ms, in flight until then. */
static void arm_timer_poll(void)
{
    uint64_t expirations;
    while (read(timer_fd, &expirations, 8) == 8) {
    }
    struct itimerspec its = {{0, 0}, {0, 400000000L}};
    if (timerfd_settime(timer_fd, 0, &its, NULL)) invariant("T", "timerfd_settime", errno, 0);
    struct iocb *p = &timer_cb;
    memset(&timer_cb, 0, sizeof timer_cb);
    timer_cb.aio_lio_opcode = IOCB_CMD_POLL;
    timer_cb.aio_fildes = timer_fd;
    timer_cb.aio_buf = POLLIN;
    timer_cb.aio_data = 0x7100;
    if (io_submit_(timer_ctx, 1, &p) != 1) invariant("T", "poll submit", errno, 0);
}

static void check_timer_poll(void)
{
    struct io_event ev;
    struct timespec two = {2, 0};
    long n = io_getevents_(timer_ctx, 1, 1, &ev, &two);
    if (n != 1) invariant("T", "poll events", n, 1);
    else if (ev.data != 0x7100 || ev.obj != (uint64_t)(uintptr_t)&timer_cb || !(ev.res & POLLIN))
        invariant("T", "poll event (res)", ev.res, POLLIN);
}

/* Waits on the idle context W for one read at a time. */
static void *waiter(void *arg)
{
    (void)arg;
    sigset_t usr1;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &usr1, NULL);
    for (;;) {
        struct io_event ev;
        struct timespec hour = {3600, 0};
        long n = io_getevents_(wait_ctx, 1, 1, &ev, &hour);
        if (n != 1)
            waiter_bad = n < 0 ? -errno : 1000 + n;
        else if (ev.data != 0x7700 + waited || ev.res != 16)
            waiter_bad = 2000;
        waited++;
    }
    return NULL;
}

static void check_waiter(void)
{
    static char buf[16];
    static struct iocb cb;
    struct iocb *p = &cb;
    unsigned long before = waited;
    prep_read(&cb, buf, 77, 0x7700 + before);
    if (io_submit_(wait_ctx, 1, &p) != 1) invariant("W", "submit", errno, 0);
    for (int i = 0; i < 1000 && waited == before; i++) usleep(1000);
    if (waited != before + 1) invariant("W", "events the waiter got", (long long)(waited - before), 1);
    if (waiter_bad) invariant("W", "io_getevents in the waiter (-errno, or what it got)", waiter_bad, 0);
}

static void check_busy(void)
{
    if (!busy_ctx) return;
    for (int i = 0; i < 1000 && busy_rounds == busy_seen; i++) usleep(1000);
    if (busy_rounds == busy_seen) invariant("busy", "requests since the last check", 0, 1);
    busy_seen = busy_rounds;
    if (busy_bad) {
        printf("INVARIANT %s\n", busy_what);
        bad = 1;
    }
}

/* The child: on each request (A's id), answers whether it has no ring and no context. */
static void child(void)
{
    aio_context_t id;
    while (read(to_kid[0], &id, sizeof id) == sizeof id) {
        char ok = 1;
        FILE *m = fopen("/proc/self/maps", "r");
        char line[512];
        while (m && fgets(line, sizeof line, m))
            if (strstr(line, "[aio]")) ok = 0;
        if (m) fclose(m);
        if (io_submit_(id, 0, NULL) != -1 || errno != EINVAL) ok = 0;
        if (write(from_kid[1], &ok, 1) != 1) _exit(1);
    }
    _exit(0);
}

static void check_child(void)
{
    char ok = 0;
    if (write(to_kid[1], &A.id, sizeof A.id) != sizeof A.id || read(from_kid[0], &ok, 1) != 1)
        invariant("child", "answer", errno, 0);
    else if (!ok)
        invariant("child", "has no ring and no context", 0, 1);
}

static void check(void)
{
    bad = 0;
    struct ctx *all[] = {&A, &B};
    for (int i = 0; i < 2; i++) {
        check_header(all[i]);
        check_events(all[i]);
        check_new_request(all[i]);
    }
    check_capacity(&A);
    check_free_index();
    check_child();
    check_waiter();
    check_busy();
    check_timer_poll();
    for (int i = 0; i < 2; i++) set_up_ctx(all[i]);
    arm_timer_poll();
    printf(bad ? "state bad\n" : "state ok\n");
}

static void make(struct ctx *c, unsigned index)
{
    if (io_setup_(c->asked, &c->id) != 0) {
        perror("io_setup");
        exit(2);
    }
    c->index = index;
    c->nr = ((struct ring *)(uintptr_t)c->id)->nr;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc < 2) {
        fprintf(stderr, "usage: aio_state DIR [busy]\n");
        return 2;
    }
    if (pipe(to_kid) || pipe(from_kid) || pipe(never)) {
        perror("pipe");
        return 2;
    }
    kid = fork();
    if (kid == 0) {
        close(to_kid[1]);
        close(from_kid[0]);
        child();
    }
    close(to_kid[0]);
    close(from_kid[1]);
    char path[4096];
    snprintf(path, sizeof path, "%s/aio-data", argv[1]);
    data_fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    static unsigned char content[FILE_LEN];
    for (long i = 0; i < FILE_LEN; i++) content[i] = file_byte(i);
    if (data_fd < 0 || write(data_fd, content, FILE_LEN) != FILE_LEN) {
        perror(path);
        return 2;
    }
    aio_context_t gone = 0;
    make(&A, 0);
    if (io_setup_(16, &gone) != 0) {
        perror("io_setup");
        return 2;
    }
    make(&B, 2);
    int busy_mode = argc > 2 && !strcmp(argv[2], "busy");
    timer_fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
    if (timer_fd < 0 || io_setup_(1, &wait_ctx) != 0 || io_setup_(1, &timer_ctx) != 0 ||
        (busy_mode && io_setup_(8, &busy_ctx) != 0)) {
        perror("io_setup");
        return 2;
    }
    io_destroy_(gone);
    set_up_ctx(&A);
    set_up_ctx(&B);
    arm_timer_poll();
    signal(SIGUSR1, on_usr1);
    pthread_t w;
    if (pthread_create(&w, NULL, waiter, NULL) != 0) {
        perror("waiter");
        return 2;
    }
    if (busy_mode) {
        pthread_t t;
        if (pthread_create(&t, NULL, busy, NULL) != 0) {
            perror("busy");
            return 2;
        }
    }
    printf("contexts %llx (%u events) %llx (%u events), child %d\n", (unsigned long long)A.id, A.nr,
           (unsigned long long)B.id, B.nr, (int)kid);
    struct timespec ts = {0, 50000000L};
    for (unsigned long long n = 1;; n++) {
        if (asked) {
            asked = 0;
            check();
        }
        printf("tick %llu\n", n);
        nanosleep(&ts, NULL);
    }
}
