/*
 * sigblock_fork: a program that blocks every signal in every thread, the way servers and
 * runtimes do, and forks children from a thread while its other threads run.
 *
 * - main blocks every signal with sigprocmask before it starts any thread (they inherit it);
 * - one thread blocks every signal again with a raw rt_sigprocmask system call (no libc);
 * - a POSIX timer with SIGEV_THREAD runs a callback every 10 ms (glibc's helper thread blocks
 *   every signal itself);
 * - three workers rewrite and check a 4 MiB buffer each ("MISMATCH" on a wrong byte);
 * - a forker thread forks a child every 20 ms; the child computes a value from its inherited
 *   memory, sends it through a pipe and exits; the parent checks it and reaps the child
 *   (after a restore a child may no longer be its own: ECHILD is counted, not fatal).
 * - a vforker thread vforks a child that waits 30 ms and execs /bin/true: it is inside vfork
 *   most of the time, where a thread cannot be parked until its child has exec'd.
 * Prints "tick N forks F vforks V timer T echild E" every 100 ms.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define BUF (4u << 20)

static atomic_ullong timer_hits, forks, echild;
static unsigned char *bufs[3];
static atomic_ullong rounds[3];

static void die(const char *what)
{
    printf("INVARIANT %s\n", what);
    fflush(stdout);
    _exit(3);
}

static void on_timer(union sigval v)
{
    (void)v;
    atomic_fetch_add(&timer_hits, 1);
}

static void *worker(void *arg)
{
    int me = (int)(long)arg;
    for (unsigned long long r = 1;; r++) {
        unsigned char v = (unsigned char)(r * 7 + (unsigned)me);
        memset(bufs[me], v, BUF);
        for (size_t i = 0; i < BUF; i += 4096)
            if (bufs[me][i] != v) {
                printf("MISMATCH worker %d round %llu at %zu\n", me, r, i);
                fflush(stdout);
                _exit(3);
            }
        atomic_store(&rounds[me], r);
        struct timespec d = {0, 2 * 1000000L};
        nanosleep(&d, NULL);
    }
    return NULL;
}

/* Blocks every signal without libc (glibc's wrappers and ckpt's see nothing of it). */
static void *raw_blocker(void *arg)
{
    (void)arg;
    uint64_t all = ~0ull;
    long ret;
    register long r10 __asm__("r10") = 8;
    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "0"(SYS_rt_sigprocmask), "D"(SIG_SETMASK), "S"(&all), "d"(0), "r"(r10)
                     : "rcx", "r11", "memory");
    if (ret != 0)
        die("raw rt_sigprocmask failed");
    for (;;) {
        struct timespec d = {0, 5 * 1000000L};
        nanosleep(&d, NULL);
    }
    return NULL;
}

/* vforks a child that waits 30 ms before it execs /bin/true: this thread spends most of its
 * time inside vfork, where no signal reaches it until the child has exec'd. */
static atomic_ullong vforks;

static void *vforker(void *arg)
{
    (void)arg;
    char *argv[] = {"true", NULL};
    char *envp[] = {"PATH=/usr/bin:/bin", NULL};
    for (;;) {
        pid_t c = vfork();
        if (c < 0)
            die("vfork failed");
        if (c == 0) {
            /* Only system calls here: the child runs on the parent's memory. */
            struct timespec d = {0, 30 * 1000000L};
            syscall(SYS_nanosleep, &d, NULL);
            execve("/bin/true", argv, envp);
            _exit(127);
        }
        int st;
        if (waitpid(c, &st, 0) < 0) {
            if (errno != ECHILD)
                die("waitpid (vfork) failed");
            atomic_fetch_add(&echild, 1);
        } else if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            die("vforked child failed");
        }
        atomic_fetch_add(&vforks, 1);
    }
    return NULL;
}

static void *forker(void *arg)
{
    (void)arg;
    for (;;) {
        int p[2];
        if (pipe(p) < 0)
            die("pipe failed");
        unsigned long long expect = atomic_load(&rounds[0]);
        pid_t c = fork();
        if (c < 0)
            die("fork failed");
        if (c == 0) {
            /* The child sees the memory of the moment of the fork. */
            unsigned long long v = expect * 3 + bufs[0][0];
            if (write(p[1], &v, sizeof v) != sizeof v)
                _exit(4);
            _exit(0);
        }
        close(p[1]);
        unsigned long long got = 0;
        ssize_t n = read(p[0], &got, sizeof got);
        close(p[0]);
        int st = 0;
        if (waitpid(c, &st, 0) < 0) {
            if (errno != ECHILD)
                die("waitpid failed");
            atomic_fetch_add(&echild, 1);
        } else if (n != sizeof got || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            die("child failed");
        }
        atomic_fetch_add(&forks, 1);
        struct timespec d = {0, 20 * 1000000L};
        nanosleep(&d, NULL);
    }
    return NULL;
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    sigset_t all;
    sigfillset(&all);
    sigprocmask(SIG_SETMASK, &all, NULL);
    for (int i = 0; i < 3; i++) {
        bufs[i] = malloc(BUF);
        if (!bufs[i])
            die("malloc failed");
        memset(bufs[i], 0, BUF);
    }
    struct sigevent ev = {0};
    ev.sigev_notify = SIGEV_THREAD;
    ev.sigev_notify_function = on_timer;
    timer_t tm;
    if (timer_create(CLOCK_MONOTONIC, &ev, &tm) < 0)
        die("timer_create failed");
    struct itimerspec its = {{0, 10 * 1000000L}, {0, 10 * 1000000L}};
    timer_settime(tm, 0, &its, NULL);
    pthread_t t;
    for (long i = 0; i < 3; i++)
        pthread_create(&t, NULL, worker, (void *)i);
    pthread_create(&t, NULL, raw_blocker, NULL);
    pthread_create(&t, NULL, forker, NULL);
    pthread_create(&t, NULL, vforker, NULL);
    for (unsigned long long n = 1;; n++) {
        struct timespec d = {0, 100 * 1000000L};
        nanosleep(&d, NULL);
        printf("tick %llu forks %llu vforks %llu timer %llu echild %llu\n", n,
               (unsigned long long)atomic_load(&forks), (unsigned long long)atomic_load(&vforks),
               (unsigned long long)atomic_load(&timer_hits), (unsigned long long)atomic_load(&echild));
    }
}
