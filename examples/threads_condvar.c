/*
 * threads_condvar: 8 pthreads pass a token round-robin under one mutex and
 * one condition variable.  The holder "works" ~1 ms with the token (mutex
 * released), then records its kernel tid, bumps its own counter and the
 * global counter and passes the token on.
 *
 * Every second main checks the invariants under the mutex
 *   - sum of the per-thread counters == global counter
 *   - at most one token holder
 *   - the token moved in the last few seconds (liveness)
 * and prints "tick <n> tids <t1,...,t8> ok"; the tids are re-read by every
 * thread with syscall(SYS_gettid) each time it passes the token, so after a
 * restore they show the real kernel tids.
 * On SIGUSR1 main stops the threads, joins all 8, prints "joined 8", exits 0.
 * On an invariant failure it prints "INVARIANT ..." and exits 3.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define NTHREADS 8

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int turn = 0;                 /* who holds the token */
static int holders = 0;              /* threads currently holding the token */
static int stop = 0;
static unsigned long long counters[NTHREADS];
static unsigned long long global_counter = 0;
static pid_t tids[NTHREADS];
static int started = 0;
static volatile sig_atomic_t got_usr1 = 0;

static void on_usr1(int sig)
{
    (void)sig;
    got_usr1 = 1;
}

static void fail(const char *what)
{
    printf("INVARIANT %s\n", what);
    fflush(stdout);
    exit(3);
}

static void *worker(void *arg)
{
    int me = (int)(long)arg;
    struct timespec work = {0, 1000000L};

    pthread_mutex_lock(&mu);
    tids[me] = (pid_t)syscall(SYS_gettid);
    started++;
    pthread_cond_broadcast(&cv);
    for (;;) {
        while (turn != me && !stop)
            pthread_cond_wait(&cv, &mu);
        if (stop)
            break;
        holders++;
        if (holders != 1) {
            char msg[96];
            snprintf(msg, sizeof msg, "holders=%d in thread %d", holders, me);
            fail(msg);
        }
        pthread_mutex_unlock(&mu);

        nanosleep(&work, NULL); /* "work" with the token, mutex released */

        pthread_mutex_lock(&mu);
        tids[me] = (pid_t)syscall(SYS_gettid);
        counters[me]++;
        global_counter++;
        holders--;
        turn = (me + 1) % NTHREADS;
        pthread_cond_broadcast(&cv);
    }
    pthread_mutex_unlock(&mu);
    return NULL;
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGUSR1, &sa, NULL);

    pthread_t th[NTHREADS];
    for (long i = 0; i < NTHREADS; i++) {
        int rc = pthread_create(&th[i], NULL, worker, (void *)i);
        if (rc != 0) {
            fprintf(stderr, "pthread_create: %s\n", strerror(rc));
            return 2;
        }
    }
    pthread_mutex_lock(&mu);
    while (started < NTHREADS)
        pthread_cond_wait(&cv, &mu);
    pthread_mutex_unlock(&mu);

    unsigned long long tick = 0, last_global = 0;
    int stalled_ticks = 0;
    struct timespec step = {0, 100000000L};
    for (;;) {
        for (int i = 0; i < 10 && !got_usr1; i++)
            nanosleep(&step, NULL);
        if (got_usr1)
            break;

        char line[512];
        pthread_mutex_lock(&mu);
        unsigned long long sum = 0;
        for (int i = 0; i < NTHREADS; i++)
            sum += counters[i];
        if (sum != global_counter) {
            snprintf(line, sizeof line, "sum %llu != global %llu", sum, global_counter);
            fail(line);
        }
        if (holders < 0 || holders > 1) {
            snprintf(line, sizeof line, "holders=%d", holders);
            fail(line);
        }
        if (global_counter == last_global) {
            if (++stalled_ticks >= 5) {
                snprintf(line, sizeof line, "token stalled at %llu", global_counter);
                fail(line);
            }
        } else {
            stalled_ticks = 0;
        }
        last_global = global_counter;
        tick++;
        int off = snprintf(line, sizeof line, "tick %llu tids ", tick);
        for (int i = 0; i < NTHREADS; i++)
            off += snprintf(line + off, sizeof line - off, "%s%d", i ? "," : "", (int)tids[i]);
        pthread_mutex_unlock(&mu);
        printf("%s ok\n", line);
        fflush(stdout);
    }

    pthread_mutex_lock(&mu);
    stop = 1;
    pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&mu);
    int joined = 0;
    for (int i = 0; i < NTHREADS; i++) {
        int rc = pthread_join(th[i], NULL);
        if (rc != 0) {
            printf("INVARIANT pthread_join(%d): %s\n", i, strerror(rc));
            fflush(stdout);
            return 3;
        }
        joined++;
    }
    printf("joined %d\n", joined);
    fflush(stdout);
    return 0;
}
