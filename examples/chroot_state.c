/*
 * chroot_state DIR: moves its root into DIR (as daemons do once started), with its working
 * directory at DIR's `sub`, and checks, when asked, that it still sees DIR as `/`: its
 * marker file `/marker` reads "inside", `/proc` is not there, getcwd says "/sub", and `..` of
 * the root is the root.
 * Prints "tick N" every 50 ms; on SIGUSR1 "state ok" or "INVARIANT <what>".
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t asked;
static void on_usr1(int s) { (void)s; asked = 1; }
static int bad;

static void invariant(const char *what, const char *got)
{
    printf("INVARIANT %s: got %s\n", what, got);
    bad = 1;
}

static void check(void)
{
    bad = 0;
    char buf[256] = {0};
    int fd = open("/marker", O_RDONLY);
    if (fd < 0 || read(fd, buf, sizeof buf - 1) < 6 || strncmp(buf, "inside", 6) != 0) invariant("/marker", buf);
    if (fd >= 0) close(fd);
    if (access("/proc/self", F_OK) == 0) invariant("/proc is outside the root", "present");
    char cwd[256] = {0};
    if (!getcwd(cwd, sizeof cwd) || strcmp(cwd, "/sub") != 0) invariant("getcwd", cwd);
    struct stat a, b;
    if (stat("/", &a) || stat("/..", &b) || a.st_ino != b.st_ino) invariant("/.. is /", "no");
    printf(bad ? "state bad\n" : "state ok\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: chroot_state DIR\n");
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    char p[4096];
    snprintf(p, sizeof p, "%s/marker", argv[1]);
    FILE *m = fopen(p, "w");
    if (!m || fputs("inside\n", m) < 0 || fclose(m)) return perror(p), 2;
    snprintf(p, sizeof p, "%s/sub", argv[1]);
    mkdir(p, 0755);
    if (chroot(argv[1]) || chdir("/sub")) return perror("chroot"), 2;
    signal(SIGUSR1, on_usr1);
    struct timespec ts = {0, 50000000L};
    for (unsigned long long n = 1;; n++) {
        if (asked) {
            asked = 0;
            check();
        }
        printf("tick %llu\n", n);
        nanosleep(&ts, NULL);
    }
}
