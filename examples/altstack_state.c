/*
 * altstack_state: the main thread has no alternate signal stack and a SIGUSR1 handler with
 * SA_ONSTACK (as every Python handler has): the handler must run on its normal stack. A worker
 * thread has an alternate stack of its own: its SIGUSR2 handler (SA_ONSTACK) must run there.
 * On SIGUSR1 the main thread checks both (signalling the worker) and prints "state ok" or
 * "INVARIANT <what>" + "state bad". Prints "tick N" every 50 ms.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define ALT_SIZE (64 * 1024)
static volatile sig_atomic_t asked;
static char *worker_alt;
static atomic_int worker_on_alt = -1;
static atomic_int worker_ready;
static pthread_t worker;

static void on_usr1(int s) { (void)s; asked = 1; }

static void on_usr2(int s)
{
    (void)s;
    char here;
    uintptr_t a = (uintptr_t)&here, lo = (uintptr_t)worker_alt;
    atomic_store(&worker_on_alt, a >= lo && a < lo + ALT_SIZE);
}

static void *work(void *arg)
{
    (void)arg;
    stack_t s = {.ss_sp = worker_alt, .ss_size = ALT_SIZE, .ss_flags = 0};
    if (sigaltstack(&s, NULL) != 0) {
        perror("sigaltstack");
        exit(2);
    }
    atomic_store(&worker_ready, 1);
    for (;;) pause();
    return NULL;
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    worker_alt = malloc(ALT_SIZE);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_flags = SA_ONSTACK | SA_RESTART;
    sa.sa_handler = on_usr1;
    sigaction(SIGUSR1, &sa, NULL);
    sa.sa_handler = on_usr2;
    sigaction(SIGUSR2, &sa, NULL);
    pthread_create(&worker, NULL, work, NULL);
    /* Checked only once the worker has its alternate stack (the first tick may be asked at
     * once, before a busy machine ran the worker). */
    while (!atomic_load(&worker_ready)) usleep(1000);
    struct timespec d = {0, 50000000L};
    for (unsigned long long n = 1;; n++) {
        if (asked) {
            asked = 0;
            int bad = 0;
            stack_t cur;
            sigaltstack(NULL, &cur);
            if (!(cur.ss_flags & SS_DISABLE)) printf("INVARIANT main thread has an alternate stack at %p\n", cur.ss_sp), bad = 1;
            atomic_store(&worker_on_alt, -1);
            pthread_kill(worker, SIGUSR2);
            for (int i = 0; i < 100 && atomic_load(&worker_on_alt) < 0; i++) usleep(1000);
            if (atomic_load(&worker_on_alt) != 1) printf("INVARIANT worker handler on its alternate stack: %d\n", atomic_load(&worker_on_alt)), bad = 1;
            printf(bad ? "state bad\n" : "state ok\n");
        }
        printf("tick %llu\n", n);
        nanosleep(&d, NULL);
    }
}
