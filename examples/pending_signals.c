/*
 * pending_signals: keeps signals pending, each with its siginfo, and checks them when asked.
 *
 * Every signal below is blocked; queued are, for the process: SIGRTMIN three times with values
 * 1, 2, 3 (sigqueue), SIGRTMIN+1 with 42, SIGUSR2 from kill; for the main thread: SIGRTMIN+5
 * with 7 then 8 (pthread_sigqueue); for the worker thread: SIGRTMIN+3 with 10, 11, 12
 * (pthread_sigqueue), SIGRTMIN+4 (pthread_kill) and SIGWINCH (tgkill).
 *
 * Prints "tick N" every 50 ms. On SIGUSR1 each thread unblocks its signals, and every siginfo
 * is checked: number, si_code, value, sender pid and uid, the thread that took it, and the
 * order of each signal's entries. Then they are all queued again (so that the next checkpoint
 * holds them too) and it prints "state ok" or "INVARIANT <what>" lines and "state bad".
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

struct got {
    int signo, code, value, pid, uid, tid;
};

#define MAX_GOT 64
static struct got got[MAX_GOT];
static atomic_int ngot;

static void on_signal(int s, siginfo_t *si, void *uc)
{
    (void)uc;
    int i = atomic_fetch_add(&ngot, 1);
    if (i < MAX_GOT) {
        got[i] = (struct got){s, si->si_code, si->si_value.sival_int, si->si_pid, (int)si->si_uid,
                              (int)syscall(SYS_gettid)};
    }
}

static volatile sig_atomic_t asked;
static void on_usr1(int s) { (void)s; asked = 1; }

static sigset_t process_set, main_set, worker_set;
static pthread_t main_thread, worker_thread;
static atomic_int worker_tid;
static sem_t go, done;
static int bad;

static void *worker(void *arg)
{
    (void)arg;
    atomic_store(&worker_tid, (int)syscall(SYS_gettid));
    for (;;) {
        while (sem_wait(&go) != 0) {}
        pthread_sigmask(SIG_UNBLOCK, &worker_set, NULL);
        pthread_sigmask(SIG_BLOCK, &worker_set, NULL);
        sem_post(&done);
    }
    return NULL;
}

static void queue_all(void)
{
    union sigval v;
    for (int i = 1; i <= 3; i++) {
        v.sival_int = i;
        if (sigqueue(getpid(), SIGRTMIN, v) != 0) perror("sigqueue"), exit(2);
    }
    v.sival_int = 42;
    if (sigqueue(getpid(), SIGRTMIN + 1, v) != 0) perror("sigqueue"), exit(2);
    kill(getpid(), SIGUSR2);
    for (int i = 7; i <= 8; i++) {
        v.sival_int = i;
        if (pthread_sigqueue(main_thread, SIGRTMIN + 5, v) != 0) perror("pthread_sigqueue"), exit(2);
    }
    for (int i = 10; i <= 12; i++) {
        v.sival_int = i;
        if (pthread_sigqueue(worker_thread, SIGRTMIN + 3, v) != 0) perror("pthread_sigqueue"), exit(2);
    }
    pthread_kill(worker_thread, SIGRTMIN + 4);
    syscall(SYS_tgkill, getpid(), atomic_load(&worker_tid), SIGWINCH);
}

static void invariant(const char *what, long long got_, long long want)
{
    printf("INVARIANT %s: got %lld, want %lld\n", what, got_, want);
    bad = 1;
}

/* The entries of signal `sig` must be exactly `n` with these values, in order, each with this
 * si_code, taken by thread `tid`, sent by this process and user (values: SI_QUEUE ones). */
static void expect(const char *name, int sig, int code, int tid, int n, const int *values)
{
    char what[128];
    int seen = 0;
    for (int i = 0; i < atomic_load(&ngot) && i < MAX_GOT; i++) {
        struct got *g = &got[i];
        if (g->signo != sig) continue;
        if (seen < n && code == SI_QUEUE && g->value != values[seen]) {
            snprintf(what, sizeof what, "%s entry %d value (order)", name, seen);
            invariant(what, g->value, values[seen]);
        }
        snprintf(what, sizeof what, "%s entry %d si_code", name, seen);
        if (g->code != code) invariant(what, g->code, code);
        snprintf(what, sizeof what, "%s entry %d si_pid", name, seen);
        if (g->pid != getpid()) invariant(what, g->pid, getpid());
        snprintf(what, sizeof what, "%s entry %d si_uid", name, seen);
        if (g->uid != (int)getuid()) invariant(what, g->uid, getuid());
        snprintf(what, sizeof what, "%s entry %d taken by thread", name, seen);
        if (g->tid != tid) invariant(what, g->tid, tid);
        seen++;
    }
    snprintf(what, sizeof what, "%s entries", name);
    if (seen != n) invariant(what, seen, n);
}

static void check(void)
{
    bad = 0;
    atomic_store(&ngot, 0);
    pthread_sigmask(SIG_UNBLOCK, &process_set, NULL);
    pthread_sigmask(SIG_UNBLOCK, &main_set, NULL);
    pthread_sigmask(SIG_BLOCK, &process_set, NULL);
    pthread_sigmask(SIG_BLOCK, &main_set, NULL);
    sem_post(&go);
    while (sem_wait(&done) != 0) {}
    int me = (int)syscall(SYS_gettid), w = atomic_load(&worker_tid);
    static const int rtmin[] = {1, 2, 3}, rtmin1[] = {42}, rtmin5[] = {7, 8}, rtmin3[] = {10, 11, 12};
    expect("process SIGRTMIN", SIGRTMIN, SI_QUEUE, me, 3, rtmin);
    expect("process SIGRTMIN+1", SIGRTMIN + 1, SI_QUEUE, me, 1, rtmin1);
    expect("process SIGUSR2", SIGUSR2, SI_USER, me, 1, NULL);
    expect("main thread SIGRTMIN+5", SIGRTMIN + 5, SI_QUEUE, me, 2, rtmin5);
    expect("worker SIGRTMIN+3", SIGRTMIN + 3, SI_QUEUE, w, 3, rtmin3);
    expect("worker SIGRTMIN+4", SIGRTMIN + 4, SI_TKILL, w, 1, NULL);
    expect("worker SIGWINCH", SIGWINCH, SI_TKILL, w, 1, NULL);
    if (atomic_load(&ngot) != 12) invariant("signals taken in all", atomic_load(&ngot), 12);
    queue_all();
    printf(bad ? "state bad\n" : "state ok\n");
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    sigemptyset(&process_set);
    sigaddset(&process_set, SIGRTMIN);
    sigaddset(&process_set, SIGRTMIN + 1);
    sigaddset(&process_set, SIGUSR2);
    sigemptyset(&main_set);
    sigaddset(&main_set, SIGRTMIN + 5);
    sigemptyset(&worker_set);
    sigaddset(&worker_set, SIGRTMIN + 3);
    sigaddset(&worker_set, SIGRTMIN + 4);
    sigaddset(&worker_set, SIGWINCH);

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sa.sa_sigaction = on_signal;
    /* One handler at a time: entries are logged in the order the kernel hands them out. */
    sigfillset(&sa.sa_mask);
    int sigs[] = {SIGRTMIN, SIGRTMIN + 1, SIGUSR2, SIGRTMIN + 5, SIGRTMIN + 3, SIGRTMIN + 4, SIGWINCH};
    for (unsigned i = 0; i < sizeof sigs / sizeof sigs[0]; i++) sigaction(sigs[i], &sa, NULL);
    signal(SIGUSR1, on_usr1);

    /* Every thread blocks all of them; each unblocks its own only while checking. */
    sigset_t all;
    sigemptyset(&all);
    for (unsigned i = 0; i < sizeof sigs / sizeof sigs[0]; i++) sigaddset(&all, sigs[i]);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    sem_init(&go, 0, 0);
    sem_init(&done, 0, 0);
    main_thread = pthread_self();
    pthread_create(&worker_thread, NULL, worker, NULL);
    while (!atomic_load(&worker_tid)) usleep(1000);
    queue_all();
    printf("signals queued pid %d\n", (int)getpid());
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
