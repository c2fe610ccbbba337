/*
 * shared_offset FILE: a parent and its forked child write numbered records through one open
 * file description (opened before fork, like a shell's redirection), each record at the offset
 * the other's last write left: "P000000001\n", "C000000001\n", ... A description that became
 * two (one offset each) makes one overwrite the other's records.
 *
 * Prints "tick N" every 50 ms. On SIGUSR1 the parent checks that the child still shares the
 * description (kcmp) and that the file holds every record of each writer, in order, none lost
 * or torn; prints "state ok" or "INVARIANT <what>".
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/kcmp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define REC 11

static volatile sig_atomic_t asked;
static void on_usr1(int s) { (void)s; asked = 1; }

static int bad;
static void invariant(const char *what, long long got, long long want)
{
    printf("INVARIANT %s: got %lld, want %lld\n", what, got, want);
    bad = 1;
}

static void put(int fd, char who, unsigned long long n)
{
    char r[REC + 1];
    snprintf(r, sizeof r, "%c%09llu\n", who, n);
    if (write(fd, r, REC) != REC) {
        perror("write");
        exit(2);
    }
}

static void check(const char *path, int fd, pid_t child)
{
    bad = 0;
    if (syscall(SYS_kcmp, getpid(), child, KCMP_FILE, fd, fd) != 0) invariant("the child shares the description", 1, 0);
    FILE *f = fopen(path, "r");
    if (!f) {
        invariant("open for checking", 1, 0);
        return;
    }
    char line[64];
    unsigned long long next[2] = {1, 1}, n;
    char who;
    long long records = 0;
    while (fgets(line, sizeof line, f)) {
        if (strlen(line) != REC || sscanf(line, "%c%9llu", &who, &n) != 2 || (who != 'P' && who != 'C')) {
            invariant("a torn record at", records, -1);
            break;
        }
        int w = who == 'C';
        if (n != next[w]) invariant(w ? "next child record" : "next parent record", (long long)n, (long long)next[w]);
        next[w] = n + 1;
        records++;
    }
    fclose(f);
    printf(bad ? "state bad\n" : "state ok\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: shared_offset FILE\n");
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    int fd = open(argv[1], O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) return perror(argv[1]), 2;
    struct timespec ts = {0, 20000000L};
    pid_t child = fork();
    if (child == 0) {
        for (unsigned long long n = 1;; n++) {
            put(fd, 'C', n);
            nanosleep(&ts, NULL);
        }
    }
    signal(SIGUSR1, on_usr1);
    printf("writers %d %d\n", (int)getpid(), (int)child);
    for (unsigned long long n = 1;; n++) {
        put(fd, 'P', n);
        if (asked) {
            asked = 0;
            check(argv[1], fd, child);
        }
        if (n % 3 == 0) printf("tick %llu\n", n / 3);
        nanosleep(&ts, NULL);
    }
}
