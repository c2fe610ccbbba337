/*
 * signal_edges: the hardest cases of pending signals and POSIX timers, checked when asked.
 *
 * Every signal below is blocked in both threads. Pending:
 *   - SIGRTMIN+2 queued 5 times for the process (values 101..105), 5 times for the main thread
 *     (301..305) and 5 times for the worker thread (201..205);
 *   - SIGUSR2 pending for the process (kill: SI_USER) and for the worker thread (tgkill:
 *     SI_TKILL) at once;
 *   - the signal of a periodic timer (CLOCK_MONOTONIC, 20 ms, SIGRTMIN+6, value 66): pending
 *     while the timer runs on, exactly one queued.
 * Timers: one disarmed SIGEV_NONE timer on each of CLOCK_MONOTONIC, CLOCK_REALTIME,
 * CLOCK_BOOTTIME and CLOCK_TAI, armed on each check with TIMER_ABSTIME (now + 10 s on its own
 * clock) and read back; a timer created then deleted, and on each check one created, armed
 * and deleted.
 *
 * With the argument "behind", a signal of the timer's number is queued before the timer fires
 * (the checkpoint refuses that order).
 *
 * Prints "tick N" every 50 ms. On SIGUSR1 it takes every pending signal (sigtimedwait) and
 * checks number, si_code, value, sender, order and count, then queues them all again; prints
 * "state ok" or "INVARIANT <what>" lines and "state bad".
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#ifndef CLOCK_TAI
#define CLOCK_TAI 11
#endif

static volatile sig_atomic_t asked;
static void on_usr1(int s) { (void)s; asked = 1; }

static int bad;
static pthread_t worker;
static pid_t worker_tid;
static sem_t go, done;
static sigset_t blocked;
static int tkill_code = 1;
static timer_t periodic, absolute[4];
static const clockid_t clocks[4] = {CLOCK_MONOTONIC, CLOCK_REALTIME, CLOCK_BOOTTIME, CLOCK_TAI};
static const char *clock_names[4] = {"MONOTONIC", "REALTIME", "BOOTTIME", "TAI"};

static void invariant(const char *what, long a, long b)
{
    printf("INVARIANT %s: got %ld, want %ld\n", what, a, b);
    bad = 1;
}

static int sig_rt(int n) { return SIGRTMIN + n; }

/* Takes one pending `sig` at once: its siginfo, or signo 0 when none is pending. */
static siginfo_t take(int sig)
{
    sigset_t s;
    sigemptyset(&s);
    sigaddset(&s, sig);
    struct timespec zero = {0, 0};
    siginfo_t si;
    memset(&si, 0, sizeof si);
    if (sigtimedwait(&s, &si, &zero) < 0) si.si_signo = 0;
    return si;
}

static void expect_queue(const char *who, int first)
{
    char what[128];
    for (int i = 0; i < 5; i++) {
        siginfo_t si = take(sig_rt(2));
        snprintf(what, sizeof what, "%s SIGRTMIN+2 #%d signo", who, i);
        if (si.si_signo != sig_rt(2)) {
            invariant(what, si.si_signo, sig_rt(2));
            return;
        }
        snprintf(what, sizeof what, "%s SIGRTMIN+2 #%d value", who, i);
        if (si.si_value.sival_int != first + i) invariant(what, si.si_value.sival_int, first + i);
        snprintf(what, sizeof what, "%s SIGRTMIN+2 #%d si_code", who, i);
        if (si.si_code != SI_QUEUE) invariant(what, si.si_code, SI_QUEUE);
        snprintf(what, sizeof what, "%s SIGRTMIN+2 #%d si_pid", who, i);
        if (si.si_pid != getpid()) invariant(what, si.si_pid, getpid());
    }
}

static void queue_thread(pthread_t t, int first)
{
    for (int i = 0; i < 5; i++) pthread_sigqueue(t, sig_rt(2), (union sigval){.sival_int = first + i});
}

static void *work(void *arg)
{
    (void)arg;
    worker_tid = (pid_t)syscall(SYS_gettid);
    sem_post(&done);
    for (;;) {
        while (sem_wait(&go) != 0) {}
        /* Only its own: the process's were taken by the main thread. */
        expect_queue("worker", 201);
        siginfo_t si = take(sig_rt(2));
        if (si.si_signo) invariant("worker: a sixth SIGRTMIN+2", si.si_value.sival_int, 0);
        si = take(SIGUSR2);
        if (si.si_signo != SIGUSR2) invariant("worker SIGUSR2 pending", si.si_signo, SIGUSR2);
        else {
            /* What tgkill gives (SI_TKILL, or SI_USER on some kernels): as on the first check. */
            if (tkill_code == 1) tkill_code = si.si_code;
            if (si.si_code != tkill_code) invariant("worker SIGUSR2 si_code", si.si_code, tkill_code);
            if (si.si_pid != getpid()) invariant("worker SIGUSR2 si_pid", si.si_pid, getpid());
        }
        si = take(SIGUSR2);
        if (si.si_signo) invariant("worker: a second SIGUSR2", si.si_code, 0);
        sem_post(&done);
    }
    return NULL;
}

static void queue_all(void)
{
    for (int i = 0; i < 5; i++) sigqueue(getpid(), sig_rt(2), (union sigval){.sival_int = 101 + i});
    queue_thread(pthread_self(), 301);
    queue_thread(worker, 201);
    kill(getpid(), SIGUSR2);
    syscall(SYS_tgkill, getpid(), worker_tid, SIGUSR2);
}

static long long ns_of(struct timespec t) { return t.tv_sec * 1000000000LL + t.tv_nsec; }

static void check_timers(void)
{
    char what[128];
    for (int i = 0; i < 4; i++) {
        struct timespec now;
        clock_gettime(clocks[i], &now);
        struct itimerspec its = {{0, 0}, {now.tv_sec + 10, now.tv_nsec}}, got;
        snprintf(what, sizeof what, "timer_settime TIMER_ABSTIME on CLOCK_%s (errno)", clock_names[i]);
        if (timer_settime(absolute[i], TIMER_ABSTIME, &its, NULL) != 0) {
            invariant(what, errno, 0);
            continue;
        }
        timer_gettime(absolute[i], &got);
        long long left = ns_of(got.it_value);
        snprintf(what, sizeof what, "CLOCK_%s absolute timer: ms left", clock_names[i]);
        if (left < 9000000000LL || left > 10000000000LL) invariant(what, (long)(left / 1000000), 10000);
        struct itimerspec off = {{0, 0}, {0, 0}};
        timer_settime(absolute[i], 0, &off, NULL);
    }
    /* A new timer: the next id, and it works. */
    struct sigevent none = {.sigev_notify = SIGEV_NONE};
    timer_t t;
    if (timer_create(CLOCK_MONOTONIC, &none, &t) != 0) {
        invariant("timer_create (errno)", errno, 0);
        return;
    }
    /* Not one of the live timers' ids. (Which id the kernel gives next is not kept: see
     * the README's kinds table.) */
    for (int i = 0; i < 4; i++)
        if (t == absolute[i]) invariant("a new timer has a live timer's id", (long)(intptr_t)t, -1);
    if (t == periodic) invariant("a new timer has a live timer's id", (long)(intptr_t)t, -1);
    struct itimerspec its = {{0, 0}, {5, 0}};
    if (timer_settime(t, 0, &its, NULL) != 0) invariant("timer_settime of a new timer (errno)", errno, 0);
    if (timer_delete(t) != 0) invariant("timer_delete of a new timer (errno)", errno, 0);
    /* The periodic timer can be set again. */
    struct itimerspec per = {{0, 20000000}, {0, 1000000}};
    if (timer_settime(periodic, 0, &per, NULL) != 0) invariant("timer_settime of the periodic timer (errno)", errno, 0);
}

static void check(void)
{
    bad = 0;
    /* The timer's signal: exactly one, from the timer. */
    siginfo_t si = take(sig_rt(6));
    if (si.si_signo != sig_rt(6)) {
        invariant("periodic timer signal pending", si.si_signo, sig_rt(6));
    } else {
        if (si.si_code != SI_TIMER) invariant("timer signal si_code", si.si_code, SI_TIMER);
        if (si.si_value.sival_int != 66) invariant("timer signal value", si.si_value.sival_int, 66);
        if (si.si_timerid != (int)(intptr_t)periodic) invariant("timer signal si_timerid", si.si_timerid, (long)(intptr_t)periodic);
        siginfo_t again = take(sig_rt(6));
        if (again.si_signo) invariant("a second timer signal queued at once", again.si_code, 0);
    }
    /* The main thread's own queue first, then the process's. */
    expect_queue("main thread", 301);
    expect_queue("process", 101);
    si = take(sig_rt(2));
    if (si.si_signo) invariant("main: an extra SIGRTMIN+2", si.si_value.sival_int, 0);
    si = take(SIGUSR2);
    if (si.si_signo != SIGUSR2) invariant("process SIGUSR2 pending", si.si_signo, SIGUSR2);
    else if (si.si_code != SI_USER) invariant("process SIGUSR2 si_code", si.si_code, SI_USER);
    sem_post(&go);
    while (sem_wait(&done) != 0) {}
    check_timers();
    queue_all();
    /* Let the periodic timer fire again: its signal pending for the next checkpoint. */
    struct timespec d = {0, 30000000L};
    nanosleep(&d, NULL);
    printf(bad ? "state bad\n" : "state ok\n");
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    sigemptyset(&blocked);
    sigaddset(&blocked, sig_rt(2));
    sigaddset(&blocked, sig_rt(6));
    sigaddset(&blocked, SIGUSR2);
    pthread_sigmask(SIG_BLOCK, &blocked, NULL);
    signal(SIGUSR1, on_usr1);
    sem_init(&go, 0, 0);
    sem_init(&done, 0, 0);
    pthread_create(&worker, NULL, work, NULL);
    while (sem_wait(&done) != 0) {}

    struct sigevent sev = {.sigev_notify = SIGEV_SIGNAL, .sigev_signo = sig_rt(6), .sigev_value.sival_int = 66};
    if (timer_create(CLOCK_MONOTONIC, &sev, &periodic) != 0) {
        perror("timer_create");
        return 2;
    }
    struct sigevent none = {.sigev_notify = SIGEV_NONE};
    for (int i = 0; i < 4; i++)
        if (timer_create(clocks[i], &none, &absolute[i]) != 0) {
            perror("timer_create");
            return 2;
        }
    timer_t gone;
    timer_create(CLOCK_MONOTONIC, &none, &gone);
    timer_delete(gone);
    /* "behind": the timer's signal pending behind a sigqueue'd one of the same number, which
     * the checkpoint refuses. */
    if (argc > 1 && strcmp(argv[1], "behind") == 0) sigqueue(getpid(), sig_rt(6), (union sigval){.sival_int = 1});
    struct itimerspec per = {{0, 20000000}, {0, 1000000}};
    timer_settime(periodic, 0, &per, NULL);
    queue_all();
    struct timespec d = {0, 30000000L};
    nanosleep(&d, NULL);
    printf("pid %d worker %d\n", (int)getpid(), (int)worker_tid);
    d.tv_nsec = 50000000L;
    for (unsigned long long n = 1;; n++) {
        if (asked) {
            asked = 0;
            check();
        }
        printf("tick %llu\n", n);
        nanosleep(&d, NULL);
    }
}
