/*
 * dir_changes DIR: a program that changes its directory after a checkpoint, and checks, when
 * asked, that the directory is as it was when it set it up (a restore of a checkpoint taken
 * then undoes what it did since).
 *
 * Set up once: DIR/kept ("kept\n"), DIR/old ("old\n"), DIR/doomed ("doomed\n"), DIR/sub/inner
 * ("inner\n"); no file is held open. Prints "ready", then "tick N" every 50 ms.
 *
 * On SIGUSR2 it changes DIR, as a build does, and prints "changed":
 *   - creates DIR/new1 and DIR/sub/added;
 *   - writes DIR/final.tmp and renames it to DIR/final (`mv f.o.tmp f.o`);
 *   - creates DIR/scratch and removes it again;
 *   - renames DIR/old to DIR/renamed;
 *   - removes DIR/doomed;
 *   - makes DIR/newdir with DIR/newdir/f in it.
 *
 * On SIGUSR1 it lists DIR and DIR/sub, ignoring names that contain ".ckpt-aside-" (what a
 * restore set aside) or begin with "outside" (another program's files), and checks that they
 * hold exactly the entries set up, with their content (DIR/old its own inode, by its inode
 * number noted at setup). DIR/doomed cannot come back once removed: its absence is reported
 * as "lost doomed" and is not an error. Prints "state ok", or "INVARIANT <what>" lines and
 * "state bad".
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t asked, change;
static void on_usr1(int s) { (void)s; asked = 1; }
static void on_usr2(int s) { (void)s; change = 1; }

static const char *dir;
static ino_t old_ino;
static int bad;

static void path_of(char *out, size_t n, const char *name) { snprintf(out, n, "%s/%s", dir, name); }

static void put(const char *name, const char *content)
{
    char p[4096];
    path_of(p, sizeof p, name);
    int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0 || write(fd, content, strlen(content)) != (ssize_t)strlen(content) || close(fd) != 0) {
        perror(p);
        exit(2);
    }
}

static void set_up(void)
{
    char p[4096];
    put("kept", "kept\n");
    put("old", "old\n");
    put("doomed", "doomed\n");
    path_of(p, sizeof p, "sub");
    if (mkdir(p, 0755) != 0 && errno != EEXIST) {
        perror(p);
        exit(2);
    }
    put("sub/inner", "inner\n");
    struct stat st;
    path_of(p, sizeof p, "old");
    if (stat(p, &st) != 0) {
        perror(p);
        exit(2);
    }
    old_ino = st.st_ino;
}

/* Errors are ignored: a second round of changes finds some already made (or undone). */
static void change_dir(void)
{
    char a[4096], b[4096];
    put("new1", "new\n");
    put("sub/added", "added\n");
    put("final.tmp", "final\n");
    path_of(a, sizeof a, "final.tmp");
    path_of(b, sizeof b, "final");
    (void)rename(a, b);
    put("scratch", "scratch\n");
    path_of(a, sizeof a, "scratch");
    (void)unlink(a);
    path_of(a, sizeof a, "old");
    path_of(b, sizeof b, "renamed");
    (void)rename(a, b);
    path_of(a, sizeof a, "doomed");
    (void)unlink(a);
    path_of(a, sizeof a, "newdir");
    (void)mkdir(a, 0755);
    put("newdir/f", "f\n");
}

static void expect_content(const char *name, const char *want)
{
    char p[4096], buf[256] = {0};
    path_of(p, sizeof p, name);
    int fd = open(p, O_RDONLY);
    ssize_t n = fd < 0 ? -1 : read(fd, buf, sizeof buf - 1);
    if (fd >= 0) close(fd);
    if (n < 0 || strcmp(buf, want) != 0) {
        printf("INVARIANT %s: holds \"%s\", want \"%s\"\n", name, n < 0 ? "(unreadable)" : buf, want);
        bad = 1;
    }
}

/* Every entry of DIR/SUB (SUB "" for DIR itself) must be one of `want`, and every one of `want`
 * there (but "doomed", reported). */
static void expect_entries(const char *sub, const char *const *want, int nwant)
{
    char p[4096];
    int seen[16] = {0};
    path_of(p, sizeof p, sub);
    DIR *d = opendir(p);
    if (!d) {
        printf("INVARIANT %s: cannot list it (%s)\n", p, strerror(errno));
        bad = 1;
        return;
    }
    struct dirent *e;
    while ((e = readdir(d))) {
        const char *n = e->d_name;
        if (!strcmp(n, ".") || !strcmp(n, "..") || strstr(n, ".ckpt-aside-") || !strncmp(n, "outside", 7))
            continue;
        int found = 0;
        for (int i = 0; i < nwant; i++)
            if (!strcmp(n, want[i])) seen[i] = found = 1;
        if (!found) {
            printf("INVARIANT %s/%s: an entry that was not there at setup\n", sub, n);
            bad = 1;
        }
    }
    closedir(d);
    for (int i = 0; i < nwant; i++) {
        if (seen[i]) continue;
        if (!strcmp(want[i], "doomed")) {
            printf("lost doomed\n");
            continue;
        }
        printf("INVARIANT %s/%s: missing\n", sub, want[i]);
        bad = 1;
    }
}

static void check(void)
{
    static const char *const top[] = {"kept", "old", "doomed", "sub"};
    static const char *const sub[] = {"inner"};
    bad = 0;
    expect_entries("", top, 4);
    expect_entries("sub", sub, 1);
    expect_content("kept", "kept\n");
    expect_content("old", "old\n");
    expect_content("sub/inner", "inner\n");
    char p[4096];
    struct stat st;
    path_of(p, sizeof p, "old");
    if (stat(p, &st) == 0 && st.st_ino != old_ino) {
        printf("INVARIANT old: inode %llu, want %llu (its own file)\n", (unsigned long long)st.st_ino,
               (unsigned long long)old_ino);
        bad = 1;
    }
    printf(bad ? "state bad\n" : "state ok\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: dir_changes DIR\n");
        return 2;
    }
    dir = argv[1];
    setvbuf(stdout, NULL, _IOLBF, 0);
    signal(SIGUSR1, on_usr1);
    signal(SIGUSR2, on_usr2);
    set_up();
    printf("ready\n");
    for (long tick = 1;; tick++) {
        struct timespec ts = {0, 50 * 1000 * 1000};
        nanosleep(&ts, NULL);
        if (change) {
            change = 0;
            change_dir();
            printf("changed\n");
        }
        if (asked) {
            asked = 0;
            check();
        }
        printf("tick %ld\n", tick);
    }
}
