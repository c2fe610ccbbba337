/*
 * file_locks DIR [fork]: holds every kind of file lock in DIR and checks, when asked, that each
 * is held exactly as it was taken, no more and no less:
 *   DIR/posix  a POSIX write lock on bytes 10-29 and a POSIX read lock from byte 50 to the end;
 *   DIR/ofd    an open file description write lock on bytes 0-4;
 *   DIR/flock  a shared flock lock;
 *   DIR        an exclusive flock lock on the directory itself;
 *   DIR/lease  a read lease.
 * With "fork", a child that inherited the flock description sleeps beside it (the description,
 * and its lock, are then shared by two processes).
 *
 * Locks are seen from outside: on SIGUSR1 a child opens each file itself and tests what it
 * could take (F_GETLK, F_OFD_GETLK, flock with LOCK_NB); the lease is asked with F_GETLEASE.
 * Prints "tick N" every 50 ms, and "state ok" or "INVARIANT <what>" when asked.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t asked;
static void on_usr1(int s) { (void)s; asked = 1; }

static const char *dir;
static int bad;
static int held[5];

static void invariant(const char *what, long long got, long long want)
{
    printf("INVARIANT %s: got %lld, want %lld\n", what, got, want);
    bad = 1;
}

static int open_in(const char *name, int flags)
{
    char p[4096];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    int fd = open(p, flags | O_CREAT, 0644);
    if (fd < 0) {
        perror(p);
        exit(2);
    }
    return fd;
}

static void lock(int fd, int cmd, short type, off_t start, off_t len, const char *what)
{
    struct flock l = {.l_type = type, .l_whence = SEEK_SET, .l_start = start, .l_len = len};
    if (fcntl(fd, cmd, &l) < 0) {
        perror(what);
        exit(2);
    }
}

/* What a lock of `type` on [start, start+len) through `fd` would meet (F_GETLK or F_OFD_GETLK). */
static struct flock meets(int fd, int cmd, short type, off_t start, off_t len)
{
    struct flock l = {.l_type = type, .l_whence = SEEK_SET, .l_start = start, .l_len = len};
    if (fcntl(fd, cmd, &l) < 0) l.l_type = -1;
    return l;
}

/* Runs in a child: another process, with descriptions of its own. */
static void check_from_outside(pid_t holder)
{
    /* Not a holder of the parent's descriptions (nor of their locks) while it checks. */
    for (int i = 0; i < 5; i++) close(held[i]);
    int p = open_in("posix", O_RDWR);
    struct flock l = meets(p, F_GETLK, F_WRLCK, 10, 20);
    if (l.l_type != F_WRLCK || l.l_pid != holder) invariant("posix write lock on 10-29 (type)", l.l_type, F_WRLCK);
    if (l.l_start != 10 || l.l_len != 20) invariant("posix write lock range start", l.l_start, 10);
    if (meets(p, F_GETLK, F_WRLCK, 0, 10).l_type != F_UNLCK) invariant("bytes 0-9 unlocked", 1, 0);
    if (meets(p, F_GETLK, F_WRLCK, 30, 20).l_type != F_UNLCK) invariant("bytes 30-49 unlocked", 1, 0);
    l = meets(p, F_GETLK, F_WRLCK, 1000, 1);
    if (l.l_type != F_RDLCK || l.l_len != 0) invariant("posix read lock from 50 to the end (type)", l.l_type, F_RDLCK);
    if (meets(p, F_GETLK, F_RDLCK, 1000, 1).l_type != F_UNLCK) invariant("a read lock beside the read lock", 1, 0);

    int o = open_in("ofd", O_RDWR);
    l = meets(o, F_OFD_GETLK, F_RDLCK, 0, 5);
    if (l.l_type != F_WRLCK || l.l_pid != -1) invariant("ofd write lock on 0-4 (type)", l.l_type, F_WRLCK);
    if (meets(o, F_OFD_GETLK, F_WRLCK, 5, 1).l_type != F_UNLCK) invariant("ofd byte 5 unlocked", 1, 0);

    int f = open_in("flock", O_RDWR);
    if (flock(f, LOCK_SH | LOCK_NB) < 0) invariant("flock shared beside a shared one (errno)", errno, 0);
    flock(f, LOCK_UN);
    if (flock(f, LOCK_EX | LOCK_NB) == 0 || errno != EWOULDBLOCK) invariant("flock exclusive refused (errno)", errno, EWOULDBLOCK);

    int d = open(dir, O_RDONLY | O_DIRECTORY);
    if (flock(d, LOCK_SH | LOCK_NB) == 0 || errno != EWOULDBLOCK) invariant("directory flock held exclusive (errno)", errno, EWOULDBLOCK);
    fflush(stdout);
    _exit(bad);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: file_locks DIR [fork]\n");
        return 2;
    }
    dir = argv[1];
    setvbuf(stdout, NULL, _IOLBF, 0);
    int p = open_in("posix", O_RDWR);
    if (ftruncate(p, 100) < 0) return 2;
    lock(p, F_SETLK, F_WRLCK, 10, 20, "posix write");
    lock(p, F_SETLK, F_RDLCK, 50, 0, "posix read");
    int o = open_in("ofd", O_RDWR);
    lock(o, F_OFD_SETLK, F_WRLCK, 0, 5, "ofd");
    int f = open_in("flock", O_RDWR);
    if (flock(f, LOCK_SH | LOCK_NB) < 0) return perror("flock"), 2;
    int d = open(dir, O_RDONLY | O_DIRECTORY);
    if (d < 0 || flock(d, LOCK_EX | LOCK_NB) < 0) return perror("flock dir"), 2;
    int l = open_in("lease", O_RDONLY);
    if (fcntl(l, F_SETLEASE, F_RDLCK) < 0) return perror("lease"), 2;
    held[0] = p, held[1] = o, held[2] = f, held[3] = d, held[4] = l;
    if (argc > 2 && strcmp(argv[2], "fork") == 0 && fork() == 0) {
        for (;;) pause();
    }
    signal(SIGUSR1, on_usr1);
    printf("locks held pid %d\n", (int)getpid());
    struct timespec ts = {0, 50000000L};
    for (unsigned long long n = 1;; n++) {
        if (asked) {
            asked = 0;
            bad = 0;
            pid_t me = getpid(), c = fork();
            if (c == 0) check_from_outside(me);
            int st = 0;
            if (c < 0 || waitpid(c, &st, 0) != c || !WIFEXITED(st)) invariant("checking child", st, 0);
            else if (WEXITSTATUS(st)) bad = 1;
            int lease = fcntl(l, F_GETLEASE);
            if (lease != F_RDLCK) invariant("read lease", lease, F_RDLCK);
            printf(bad ? "state bad\n" : "state ok\n");
        }
        printf("tick %llu\n", n);
        nanosleep(&ts, NULL);
    }
}
