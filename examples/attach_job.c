/* attach_job: prints "tick <n>" every 100 ms. On SIGTERM it exits with code 7; on SIGINT it
 * prints "got SIGINT" and exits 0; other signals keep their default action (SIGHUP kills it).
 * Shows what an attached `ckptctl restore` passes on and reports. */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static volatile sig_atomic_t got_term, got_int;

static void on_term(int sig) { (void)sig; got_term = 1; }
static void on_int(int sig) { (void)sig; got_int = 1; }

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_term;
    sigaction(SIGTERM, &sa, NULL);
    sa.sa_handler = on_int;
    sigaction(SIGINT, &sa, NULL);
    unsigned long long n = 0;
    struct timespec d = {0, 100000000L};
    for (;;) {
        if (got_term)
            exit(7);
        if (got_int) {
            printf("got SIGINT\n");
            fflush(stdout);
            exit(0);
        }
        n++;
        printf("tick %llu\n", n);
        fflush(stdout);
        nanosleep(&d, NULL);
    }
}
