/*
 * posix_timers: holds POSIX timers of every kind and checks, when asked, that each is as it
 * was set up: same ids (one deleted in between, so ids have a gap), clocks, intervals,
 * notification (process signal with its value, a signal to one chosen thread, none), an armed
 * one-shot with its remaining time, a disarmed one.
 *
 * Prints "tick N" every 50 ms. On SIGUSR1 it checks everything, prints "state ok" or
 * "INVARIANT <what>".
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t asked;
static void on_usr1(int s) { (void)s; asked = 1; }

static atomic_long periodic_hits, periodic_bad, thread_hits, thread_wrong;
static atomic_int worker_tid;

static void on_periodic(int s, siginfo_t *si, void *uc)
{
    (void)s, (void)uc;
    if (si->si_code != SI_TIMER || si->si_value.sival_ptr != (void *)0x1234) atomic_fetch_add(&periodic_bad, 1);
    atomic_fetch_add(&periodic_hits, 1);
}

static void on_thread(int s, siginfo_t *si, void *uc)
{
    (void)s, (void)si, (void)uc;
    if ((int)syscall(SYS_gettid) != atomic_load(&worker_tid)) atomic_fetch_add(&thread_wrong, 1);
    atomic_fetch_add(&thread_hits, 1);
}

static void *worker(void *arg)
{
    (void)arg;
    atomic_store(&worker_tid, (int)syscall(SYS_gettid));
    for (;;) pause();
    return NULL;
}

static timer_t periodic, gone, realtime_once, to_thread, none, disarmed, cpu_once;
static int bad;

static void invariant(const char *what, long long got, long long want)
{
    printf("INVARIANT %s: got %lld, want %lld\n", what, got, want);
    bad = 1;
}

static void expect_interval(const char *what, timer_t t, long long want_ns)
{
    struct itimerspec its;
    if (timer_gettime(t, &its) != 0) {
        invariant(what, errno, 0);
        return;
    }
    long long iv = its.it_interval.tv_sec * 1000000000LL + its.it_interval.tv_nsec;
    if (iv != want_ns) invariant(what, iv, want_ns);
}

static void make(timer_t *t, clockid_t clock, int notify, int sig, void *val, int tid)
{
    struct sigevent ev;
    memset(&ev, 0, sizeof ev);
    ev.sigev_notify = notify;
    ev.sigev_signo = sig;
    ev.sigev_value.sival_ptr = val;
    if (notify == SIGEV_THREAD_ID) ev._sigev_un._tid = tid;
    if (timer_create(clock, &ev, t) != 0) {
        perror("timer_create");
        exit(2);
    }
}

static void arm(timer_t t, long long value_ns, long long interval_ns)
{
    struct itimerspec its = {
        .it_interval = {interval_ns / 1000000000LL, interval_ns % 1000000000LL},
        .it_value = {value_ns / 1000000000LL, value_ns % 1000000000LL},
    };
    if (timer_settime(t, 0, &its, NULL) != 0) {
        perror("timer_settime");
        exit(2);
    }
}

static void check(void)
{
    bad = 0;
    expect_interval("periodic interval", periodic, 20000000LL);
    expect_interval("thread timer interval", to_thread, 30000000LL);
    expect_interval("SIGEV_NONE interval", none, 1000000000LL);
    struct itimerspec its;
    if (timer_gettime(realtime_once, &its) != 0) invariant("realtime one-shot exists", errno, 0);
    else if (its.it_value.tv_sec < 500 || its.it_value.tv_sec > 1000) invariant("realtime one-shot remaining s", its.it_value.tv_sec, 1000);
    if (timer_gettime(cpu_once, &its) != 0) invariant("cpu-time one-shot exists", errno, 0);
    else if (its.it_value.tv_sec < 9000) invariant("cpu-time one-shot remaining s", its.it_value.tv_sec, 10000);
    if (timer_gettime(disarmed, &its) != 0) invariant("disarmed exists", errno, 0);
    else if (its.it_value.tv_sec || its.it_value.tv_nsec) invariant("disarmed stays disarmed", its.it_value.tv_sec, 0);
    /* The deleted timer's id is still free: a timer_gettime on it fails. */
    if (timer_gettime(gone, &its) == 0) invariant("deleted timer id is free", 0, -1);
    long p0 = atomic_load(&periodic_hits), t0 = atomic_load(&thread_hits);
    struct timespec d = {0, 300000000L};
    while (nanosleep(&d, &d) != 0) {}
    long p1 = atomic_load(&periodic_hits), t1 = atomic_load(&thread_hits);
    if (p1 - p0 < 5) invariant("periodic signals in 300 ms", p1 - p0, 15);
    if (t1 - t0 < 4) invariant("thread-directed signals in 300 ms", t1 - t0, 10);
    if (atomic_load(&periodic_bad)) invariant("periodic signal with wrong siginfo", atomic_load(&periodic_bad), 0);
    if (atomic_load(&thread_wrong)) invariant("thread-directed signal on another thread", atomic_load(&thread_wrong), 0);
    printf(bad ? "state bad\n" : "state ok\n");
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sa.sa_sigaction = on_periodic;
    sigaction(SIGRTMIN, &sa, NULL);
    sa.sa_sigaction = on_thread;
    sigaction(SIGRTMIN + 2, &sa, NULL);
    signal(SIGUSR1, on_usr1);
    /* Only the worker takes the thread-directed signal's number... it is sent to it anyway;
     * the main thread blocks it so that a misdirected one would wait, and show. */
    pthread_t w;
    pthread_create(&w, NULL, worker, NULL);
    while (!atomic_load(&worker_tid)) usleep(1000);
    sigset_t s;
    sigemptyset(&s);
    sigaddset(&s, SIGRTMIN + 2);
    pthread_sigmask(SIG_BLOCK, &s, NULL);

    make(&periodic, CLOCK_MONOTONIC, SIGEV_SIGNAL, SIGRTMIN, (void *)0x1234, 0);
    make(&gone, CLOCK_MONOTONIC, SIGEV_SIGNAL, SIGALRM, NULL, 0);
    make(&realtime_once, CLOCK_REALTIME, SIGEV_SIGNAL, SIGRTMIN + 1, NULL, 0);
    make(&to_thread, CLOCK_BOOTTIME, SIGEV_THREAD_ID, SIGRTMIN + 2, (void *)0x77, atomic_load(&worker_tid));
    make(&none, CLOCK_MONOTONIC, SIGEV_NONE, 0, NULL, 0);
    make(&disarmed, CLOCK_MONOTONIC, SIGEV_SIGNAL, SIGALRM, NULL, 0);
    make(&cpu_once, CLOCK_PROCESS_CPUTIME_ID, SIGEV_SIGNAL, SIGALRM, NULL, 0);
    timer_delete(gone);
    arm(periodic, 20000000LL, 20000000LL);
    arm(realtime_once, 1000000000000LL, 0);
    arm(to_thread, 30000000LL, 30000000LL);
    arm(none, 500000000000LL, 1000000000LL);
    arm(cpu_once, 10000000000000LL, 0);
    printf("timers ready pid %d\n", (int)getpid());
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
