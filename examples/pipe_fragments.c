/*
 * pipe_fragments: keeps 4050 bytes in a pipe in two kernel pipe buffers (a partly read first
 * one, then a write that does not fit it: fewer bytes than one page, more buffers than one), and
 * checks, when asked (SIGUSR1), that its capacity is still the 128 KiB it set and that reading
 * the pipe gives exactly those bytes, then fills it the same way again. Prints "tick N" every 50 ms and
 * "state ok" or "INVARIANT <what>" + "state bad".
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t asked;
static void on_usr1(int s) { (void)s; asked = 1; }

static int p[2];
static unsigned char want[60000];
static size_t want_len;

static void put(const unsigned char *b, size_t n)
{
    if (write(p[1], b, n) != (ssize_t)n) {
        perror("write");
        _exit(2);
    }
}

/* Writes and partial reads that leave the bytes in many buffers; `want` is what stays. */
static void fill(void)
{
    unsigned char b[4000];
    unsigned char seq = 1;
    want_len = 0;
    for (size_t i = 0; i < sizeof b; i++) b[i] = seq++;
    put(b, 100);
    unsigned char skip[50];
    if (read(p[0], skip, 50) != 50) _exit(2);
    memcpy(want + want_len, b + 50, 50), want_len += 50;
    for (size_t i = 0; i < sizeof b; i++) b[i] = seq++;
    put(b, 4000);
    memcpy(want + want_len, b, 4000), want_len += 4000;
}

static void check(void)
{
    static unsigned char got[60000];
    size_t n = 0;
    int bad = 0;
    while (n < want_len) {
        ssize_t r = read(p[0], got + n, want_len - n);
        if (r <= 0) break;
        n += (size_t)r;
    }
    if (n != want_len) printf("INVARIANT pipe bytes: got %zu, want %zu\n", n, want_len), bad = 1;
    else if (memcmp(got, want, want_len) != 0) printf("INVARIANT pipe content differs\n"), bad = 1;
    unsigned char extra;
    if (read(p[0], &extra, 1) != -1) printf("INVARIANT pipe has more bytes than written\n"), bad = 1;
    int cap = fcntl(p[1], F_GETPIPE_SZ);
    if (cap != 128 * 1024) printf("INVARIANT pipe capacity: got %d, want %d\n", cap, 128 * 1024), bad = 1;
    printf(bad ? "state bad\n" : "state ok\n");
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (pipe2(p, O_NONBLOCK) != 0) {
        perror("pipe2");
        return 2;
    }
    if (fcntl(p[1], F_SETPIPE_SZ, 128 * 1024) < 0) {
        perror("F_SETPIPE_SZ");
        return 2;
    }
    signal(SIGUSR1, on_usr1);
    fill();
    struct timespec d = {0, 50000000L};
    for (unsigned long long t = 1;; t++) {
        if (asked) {
            asked = 0;
            check();
            fill();
        }
        printf("tick %llu\n", t);
        nanosleep(&d, NULL);
    }
}
