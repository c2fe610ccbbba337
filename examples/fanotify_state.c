/*
 * fanotify_state DIR: holds two fanotify groups with marks on files and directories of DIR
 * (an event mask on a file, a directory watching its children's opens, an ignore mask on one
 * child that survives modification, a FAN_REPORT_FID group with FAN_MARK_IGNORE and mount and
 * filesystem marks). When asked it
 * checks that the groups are as they were: their flags and every mark as /proc/self/fdinfo
 * shows them (the same inodes, masks and mark flags), no event queued that it did not cause,
 * and the events its own opens raise: opening DIR/a and writing it gives FAN_OPEN and
 * FAN_CLOSE_WRITE, DIR/c gives FAN_OPEN through its directory, DIR/b (ignored) none.
 *
 * Prints "tick N" every 50 ms; on SIGUSR1 prints "state ok" or "INVARIANT <what>".
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/fanotify.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t asked;
static void on_usr1(int s) { (void)s; asked = 1; }

static int bad;
static void invariant(const char *what, long a, long b)
{
    printf("INVARIANT %s: got %ld, want %ld\n", what, a, b);
    bad = 1;
}

static int g1, g2;
static char dir[400], pa[512], pb[512], pc[512];
static char before1[4096], before2[4096];

static int cmp(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* The fanotify lines of fd's fdinfo, sorted (mark order is the kernel's). */
static void marks_of(int fd, char *out, size_t n)
{
    char path[64], buf[4096];
    snprintf(path, sizeof path, "/proc/self/fdinfo/%d", fd);
    int f = open(path, O_RDONLY);
    ssize_t len = f < 0 ? -1 : read(f, buf, sizeof buf - 1);
    if (f >= 0) close(f);
    buf[len > 0 ? len : 0] = 0;
    char *lines[64];
    int k = 0;
    for (char *l = strtok(buf, "\n"); l && k < 64; l = strtok(NULL, "\n"))
        if (!strncmp(l, "fanotify", 8)) lines[k++] = l;
    qsort(lines, k, sizeof *lines, cmp);
    out[0] = 0;
    for (int i = 0; i < k; i++) {
        strncat(out, lines[i], n - strlen(out) - 2);
        strcat(out, "\n");
    }
}

static void touch(const char *p, int write_it)
{
    int fd = open(p, write_it ? O_WRONLY : O_RDONLY);
    if (fd < 0) { invariant("open", errno, 0); return; }
    if (write_it && write(fd, "x", 1) != 1) invariant("write", errno, 0);
    close(fd);
}

static void check(void)
{
    char now[4096];
    bad = 0;
    marks_of(g1, now, sizeof now);
    if (strcmp(now, before1)) printf("INVARIANT group 1 fdinfo:\n%sinstead of\n%s", now, before1), bad = 1;
    marks_of(g2, now, sizeof now);
    if (strcmp(now, before2)) printf("INVARIANT group 2 fdinfo:\n%sinstead of\n%s", now, before2), bad = 1;
    if (!(fcntl(g2, F_GETFL) & O_NONBLOCK)) invariant("group 2 non-blocking", 0, 1);
    int q = -1;
    if (ioctl(g1, FIONREAD, &q) || q != 0) invariant("group 1 events queued before any access", q, 0);
    touch(pa, 1);
    touch(pb, 0);
    touch(pc, 0);
    char buf[4096];
    int want_a_open = 1, want_a_close = 1, want_c = 1;
    struct timespec d = {0, 20000000L};
    nanosleep(&d, NULL);
    if (ioctl(g1, FIONREAD, &q) || q <= 0) invariant("group 1 events after the accesses", q, 1);
    ssize_t n = q > 0 ? read(g1, buf, sizeof buf) : 0;
    for (struct fanotify_event_metadata *m = (void *)buf; FAN_EVENT_OK(m, n); m = FAN_EVENT_NEXT(m, n)) {
        char link[64], name[600] = {0};
        snprintf(link, sizeof link, "/proc/self/fd/%d", m->fd);
        if (readlink(link, name, sizeof name - 1) < 0) invariant("event fd", errno, 0);
        if (m->pid != getpid()) invariant("event pid", m->pid, getpid());
        if (!strcmp(name, pa) && (m->mask & FAN_OPEN)) want_a_open = 0;
        if (!strcmp(name, pa) && (m->mask & FAN_CLOSE_WRITE)) want_a_close = 0;
        if (!strcmp(name, pc) && (m->mask & FAN_OPEN)) want_c = 0;
        if (!strcmp(name, pb)) printf("INVARIANT an event for the ignored %s: %llx\n", pb, (unsigned long long)m->mask), bad = 1;
        close(m->fd);
    }
    if (want_a_open || want_a_close || want_c) invariant("events for a (open, close-write) and c (open)", want_a_open * 100 + want_a_close * 10 + want_c, 0);
    /* Group 2 reports with file ids; drain what the accesses raised. */
    while (read(g2, buf, sizeof buf) > 0) {}
    printf(bad ? "state bad\n" : "state ok\n");
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc < 2) {
        fprintf(stderr, "usage: fanotify_state DIR\n");
        return 2;
    }
    snprintf(dir, sizeof dir, "%s", argv[1]);
    snprintf(pa, sizeof pa, "%s/a", dir);
    snprintf(pb, sizeof pb, "%s/b", dir);
    snprintf(pc, sizeof pc, "%s/c", dir);
    for (const char *p = pa; p; p = p == pa ? pb : p == pb ? pc : NULL) {
        int fd = open(p, O_CREAT | O_WRONLY, 0600);
        if (fd < 0) { perror(p); return 2; }
        close(fd);
    }
    g1 = fanotify_init(FAN_CLASS_NOTIF | FAN_CLOEXEC, O_RDONLY | O_LARGEFILE);
    g2 = fanotify_init(FAN_CLASS_NOTIF | FAN_NONBLOCK | FAN_REPORT_FID, O_RDONLY);
    if (g1 < 0 || g2 < 0 ||
        fanotify_mark(g1, FAN_MARK_ADD, FAN_OPEN | FAN_CLOSE_WRITE, AT_FDCWD, pa) ||
        fanotify_mark(g1, FAN_MARK_ADD, FAN_OPEN | FAN_EVENT_ON_CHILD, AT_FDCWD, dir) ||
        fanotify_mark(g1, FAN_MARK_ADD | FAN_MARK_IGNORED_MASK | FAN_MARK_IGNORED_SURV_MODIFY, FAN_OPEN, AT_FDCWD, pb) ||
        fanotify_mark(g2, FAN_MARK_ADD, FAN_CREATE | FAN_DELETE | FAN_ONDIR, AT_FDCWD, dir) ||
        fanotify_mark(g2, FAN_MARK_ADD | FAN_MARK_IGNORE, FAN_OPEN, AT_FDCWD, pc) ||
        /* Mount and filesystem marks that only ignore: they raise no events of their own. */
        fanotify_mark(g2, FAN_MARK_ADD | FAN_MARK_MOUNT | FAN_MARK_IGNORED_MASK | FAN_MARK_IGNORED_SURV_MODIFY, FAN_OPEN,
                      AT_FDCWD, dir) ||
        fanotify_mark(g2, FAN_MARK_ADD | FAN_MARK_FILESYSTEM | FAN_MARK_IGNORED_MASK | FAN_MARK_IGNORED_SURV_MODIFY,
                      FAN_CLOSE_NOWRITE, AT_FDCWD, dir)) {
        perror("fanotify");
        return 2;
    }
    marks_of(g1, before1, sizeof before1);
    marks_of(g2, before2, sizeof before2);
    signal(SIGUSR1, on_usr1);
    printf("pid %d\n", (int)getpid());
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
