/*
 * removed_dirs DIR: works in DIR/work and holds an fd on DIR/held, then removes both (rmdir):
 * its working directory and an open directory fd are removed directories, and a second fd is
 * opened on the working directory. When asked it checks that each is still a removed
 * directory (no name, no links, nothing can be made in it, the mode it had), that the second
 * fd and the working directory are one directory, that /proc says the same names, and that
 * DIR holds nothing (no scratch directory left behind).
 *
 * With a second argument "nofd", no fd is opened on the working directory (the restorer then
 * makes it alone).
 *
 * Prints "tick N" every 50 ms; on SIGUSR1 prints "state ok" or "INVARIANT <what>".
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

static volatile sig_atomic_t asked;
static void on_usr1(int s) { (void)s; asked = 1; }

static int bad;
static void invariant(const char *what, long a, long b)
{
    printf("INVARIANT %s: got %ld, want %ld\n", what, a, b);
    bad = 1;
}

static const char *top;
static int held, work2 = -1;
static char work_path[512], held_path[512];

static void want_link(const char *link, const char *path)
{
    char buf[600], want[600];
    ssize_t n = readlink(link, buf, sizeof buf - 1);
    buf[n > 0 ? n : 0] = 0;
    snprintf(want, sizeof want, "%s (deleted)", path);
    if (strcmp(buf, want)) {
        printf("INVARIANT %s: got %s, want %s\n", link, buf, want);
        bad = 1;
    }
}

static void check(void)
{
    struct stat st, cwd;
    bad = 0;
    char buf[600];
    if (getcwd(buf, sizeof buf) || errno != ENOENT) invariant("getcwd of a removed directory (errno)", errno, ENOENT);
    if (stat(".", &cwd) || cwd.st_nlink != 0) invariant("working directory links", cwd.st_nlink, 0);
    if ((cwd.st_mode & 07777) != 0710) invariant("working directory mode", cwd.st_mode & 07777, 0710);
    if (open("x", O_CREAT | O_WRONLY, 0600) != -1 || errno != ENOENT) invariant("create in the working directory (errno)", errno, ENOENT);
    if (fstat(held, &st) || st.st_nlink != 0 || !S_ISDIR(st.st_mode)) invariant("held fd links", st.st_nlink, 0);
    if ((st.st_mode & 07777) != 0750) invariant("held fd mode", st.st_mode & 07777, 0750);
    if (openat(held, "y", O_CREAT | O_WRONLY, 0600) != -1 || errno != ENOENT) invariant("create in the held directory (errno)", errno, ENOENT);
    if (work2 >= 0 && (fstat(work2, &st) || st.st_ino != cwd.st_ino || st.st_dev != cwd.st_dev))
        invariant("fd on the working directory is it", (long)st.st_ino, (long)cwd.st_ino);
    want_link("/proc/self/cwd", work_path);
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", held);
    want_link(link, held_path);
    DIR *d = opendir(top);
    int n = 0;
    struct dirent *e;
    while (d && (e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
            printf("INVARIANT %s holds %s\n", top, e->d_name);
            n++;
        }
    if (d) closedir(d);
    if (n) bad = 1;
    printf(bad ? "state bad\n" : "state ok\n");
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc < 2) {
        fprintf(stderr, "usage: removed_dirs DIR\n");
        return 2;
    }
    top = argv[1];
    snprintf(work_path, sizeof work_path, "%s/work", top);
    snprintf(held_path, sizeof held_path, "%s/held", top);
    if (mkdir(work_path, 0710) || mkdir(held_path, 0750) || chmod(work_path, 0710) || chmod(held_path, 0750) ||
        chdir(work_path)) {
        perror("mkdir");
        return 2;
    }
    held = open(held_path, O_RDONLY | O_DIRECTORY);
    if (!(argc > 2 && !strcmp(argv[2], "nofd"))) work2 = open(".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (held < 0 || (argc <= 2 && work2 < 0) || rmdir(work_path) || rmdir(held_path)) {
        perror("rmdir");
        return 2;
    }
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
