/*
 * inotify_state DIR [EXTRA]: makes DIR/a, DIR/b (directories), DIR/f (a file) and DIR/link (a symbolic
 * link to a), watches them with two inotify instances and checks, when asked, that every watch
 * is there under its number and delivers its events:
 *   ino (blocking)   a     IN_CREATE|IN_DELETE|IN_EXCL_UNLINK
 *                    f     IN_MODIFY|IN_CLOSE_WRITE (numbers in between were added and removed)
 *                    link  IN_ATTRIB|IN_DONT_FOLLOW (the link itself)
 *                    b     IN_MOVED_TO|IN_ONESHOT (added again after each check: a new number)
 *   ino2 (O_NONBLOCK, FD_CLOEXEC)
 *                    DIR   IN_CREATE|IN_DELETE (number 2: 1 was added and removed)
 * EXTRA, if given, is watched too (by ino2, IN_ATTRIB) and not checked: a file ckpt cannot find
 * by path (in /proc) makes the checkpoint refuse.
 * After setting up it modifies f and leaves the events unread (a restore drops them: the check
 * reads away whatever is queued first).
 *
 * Prints "tick N" every 50 ms. On SIGUSR1 it checks everything, prints "state ok" or
 * "state bad" after "INVARIANT <what>" lines, and sets up again.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t asked;
static void on_usr1(int s) { (void)s; asked = 1; }

static const char *dir;
static int ino, ino2;
static int wd_a, wd_f, wd_link, wd_b, wd_d;
static int round_no;
static int bad;

#define A_MASK (IN_CREATE | IN_DELETE | IN_EXCL_UNLINK)
#define F_MASK (IN_MODIFY | IN_CLOSE_WRITE)
#define LINK_MASK (IN_ATTRIB | IN_DONT_FOLLOW)
#define B_MASK (IN_MOVED_TO | IN_ONESHOT)
#define D_MASK (IN_CREATE | IN_DELETE)

static void invariant(const char *what, long long a, long long b)
{
    printf("INVARIANT %s: got %lld, want %lld\n", what, a, b);
    bad = 1;
}

static char *at(const char *name)
{
    static char buf[4][PATH_MAX];
    static int k;
    char *p = buf[k++ % 4];
    snprintf(p, PATH_MAX, "%s/%s", dir, name);
    return p;
}

static int add(int fd, const char *path, unsigned mask)
{
    int wd = inotify_add_watch(fd, path, mask);
    if (wd < 0) {
        printf("INVARIANT inotify_add_watch %s: errno %d\n", path, errno);
        bad = 1;
    }
    return wd;
}

static void touch_file(const char *path)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd < 0 || write(fd, "x", 1) != 1) invariant("write", errno, 0);
    close(fd);
}

/* Reads whatever is queued, without waiting. */
static void drain(int fd)
{
    char buf[4096];
    struct pollfd p = {fd, POLLIN, 0};
    while (poll(&p, 1, 0) == 1 && read(fd, buf, sizeof buf) > 0)
        ;
}

struct ev {
    int wd;
    unsigned mask;
    char name[64];
};

/* Reads `n` events, waiting up to a second for each; returns how many came. */
static int read_events(int fd, struct ev *out, int n)
{
    static char buf[8192] __attribute__((aligned(8)));
    static int len, off;
    int got = 0;
    while (got < n) {
        if (off >= len) {
            struct pollfd p = {fd, POLLIN, 0};
            if (poll(&p, 1, 1000) != 1) break;
            len = read(fd, buf, sizeof buf);
            off = 0;
            if (len <= 0) break;
        }
        struct inotify_event *e = (struct inotify_event *)(buf + off);
        out[got].wd = e->wd;
        out[got].mask = e->mask;
        snprintf(out[got].name, sizeof out[got].name, "%s", e->len ? e->name : "");
        got++;
        off += sizeof *e + e->len;
    }
    return got;
}

static void expect(const char *inst, struct ev *got, int wd, unsigned mask, const char *name)
{
    if (got->wd != wd || got->mask != mask || strcmp(got->name, name) != 0) {
        printf("INVARIANT %s: event wd %d mask %#x name '%s', want wd %d mask %#x name '%s'\n", inst, got->wd,
               got->mask, got->name, wd, mask, name);
        bad = 1;
    }
}

static void set_up(void)
{
    wd_b = add(ino, at("b"), B_MASK);
    touch_file(at("f"));
}

static void check(void)
{
    bad = 0;
    round_no++;
    drain(ino);
    drain(ino2);
    /* Every watch is there, under its number: adding it again returns that number. */
    int w;
    if ((w = add(ino, at("a"), A_MASK)) != wd_a) invariant("a: watch number", w, wd_a);
    if ((w = add(ino, at("f"), F_MASK)) != wd_f) invariant("f: watch number", w, wd_f);
    if ((w = add(ino, at("link"), LINK_MASK)) != wd_link) invariant("link: watch number", w, wd_link);
    if ((w = add(ino, at("b"), B_MASK)) != wd_b) invariant("b: watch number", w, wd_b);
    if ((w = add(ino2, dir, D_MASK)) != wd_d) invariant("DIR: watch number", w, wd_d);

    char new_name[32], moved[64], top[32];
    snprintf(new_name, sizeof new_name, "new_%d", round_no);
    snprintf(moved, sizeof moved, "b/moved_%d", round_no);
    snprintf(top, sizeof top, "top_%d", round_no);
    char a_new[64];
    snprintf(a_new, sizeof a_new, "a/%s", new_name);
    touch_file(at(a_new));
    touch_file(at("f"));
    if (utimensat(AT_FDCWD, at("link"), NULL, AT_SYMLINK_NOFOLLOW) < 0) invariant("utimensat link", errno, 0);
    if (rename(at(a_new), at(moved)) < 0) invariant("rename", errno, 0);
    unlink(at(moved));
    touch_file(at(top));
    unlink(at(top));

    /* a reports new_N's creation, not its leaving (IN_MOVED_FROM is not asked for). */
    struct ev ev[8];
    int n = read_events(ino, ev, 6);
    if (n != 6) invariant("ino: events", n, 6);
    else {
        expect("ino", &ev[0], wd_a, IN_CREATE, new_name);
        expect("ino", &ev[1], wd_f, IN_MODIFY, "");
        expect("ino", &ev[2], wd_f, IN_CLOSE_WRITE, "");
        expect("ino", &ev[3], wd_link, IN_ATTRIB, "");
        expect("ino", &ev[4], wd_b, IN_MOVED_TO, moved + 2);
        /* The one-shot watch is gone once it fired. */
        expect("ino", &ev[5], wd_b, IN_IGNORED, "");
    }
    n = read_events(ino2, ev, 2);
    if (n != 2) invariant("ino2: events", n, 2);
    else {
        expect("ino2", &ev[0], wd_d, IN_CREATE, top);
        expect("ino2", &ev[1], wd_d, IN_DELETE, top);
    }
    if (!(fcntl(ino2, F_GETFL) & O_NONBLOCK)) invariant("ino2: O_NONBLOCK", 0, 1);
    if (!(fcntl(ino2, F_GETFD) & FD_CLOEXEC)) invariant("ino2: FD_CLOEXEC", 0, 1);
    if (fcntl(ino, F_GETFL) & O_NONBLOCK) invariant("ino: O_NONBLOCK", 1, 0);
    printf(bad ? "state bad\n" : "state ok\n");
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc != 2 && argc != 3) {
        fprintf(stderr, "usage: inotify_state DIR [EXTRA]\n");
        return 2;
    }
    dir = argv[1];
    if (mkdir(at("a"), 0755) < 0 || mkdir(at("b"), 0755) < 0 || symlink("a", at("link")) < 0) {
        perror("setting up DIR");
        return 2;
    }
    touch_file(at("f"));
    ino = inotify_init();
    ino2 = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (ino < 0 || ino2 < 0) {
        perror("inotify_init");
        return 2;
    }
    wd_a = add(ino, at("a"), A_MASK);
    inotify_rm_watch(ino, add(ino, at("b"), IN_ALL_EVENTS));
    wd_f = add(ino, at("f"), F_MASK);
    for (int k = 0; k < 3; k++)
        inotify_rm_watch(ino, add(ino, at("b"), IN_ALL_EVENTS));
    wd_link = add(ino, at("link"), LINK_MASK);
    inotify_rm_watch(ino2, add(ino2, at("a"), IN_ALL_EVENTS));
    wd_d = add(ino2, dir, D_MASK);
    if (argc == 3) add(ino2, argv[2], IN_ATTRIB);
    drain(ino);
    drain(ino2);
    if (bad) return 2;
    signal(SIGUSR1, on_usr1);
    set_up();
    printf("wds a %d f %d link %d b %d dir %d pid %d\n", wd_a, wd_f, wd_link, wd_b, wd_d, (int)getpid());
    struct timespec d = {0, 50000000L};
    for (unsigned long long n = 1;; n++) {
        if (asked) {
            asked = 0;
            check();
            set_up();
        }
        printf("tick %llu\n", n);
        nanosleep(&d, NULL);
    }
}
