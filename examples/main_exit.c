/*
 * main_exit: main starts a thread that prints "tick N" every 100 ms, then calls pthread_exit:
 * the process lives on with its main thread a zombie.
 */
#include <pthread.h>
#include <stdio.h>
#include <time.h>

static void *ticker(void *arg)
{
    (void)arg;
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (unsigned long long n = 1;; n++) {
        struct timespec d = {0, 100 * 1000000L};
        nanosleep(&d, NULL);
        printf("tick %llu\n", n);
    }
    return NULL;
}

int main(void)
{
    pthread_t t;
    pthread_create(&t, NULL, ticker, NULL);
    pthread_exit(NULL);
}
