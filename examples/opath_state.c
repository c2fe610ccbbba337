/*
 * opath_state DIR: holds O_PATH descriptors of a regular file, a directory and a symbolic link
 * (O_PATH|O_NOFOLLOW: the link itself) in DIR, and checks when asked that each still names the
 * same object: O_PATH in its flags, the same inode, the link read through the fd, the
 * directory usable with fchdir and *at() calls, the file openable again through /proc/self/fd.
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

static int file, dir, link_fd, cx;
static struct stat sf, sd, sl;

static void same(const char *what, int fd, const struct stat *want)
{
    struct stat st;
    if (fstat(fd, &st) < 0) { invariant(what, errno, 0); return; }
    if (st.st_ino != want->st_ino || st.st_dev != want->st_dev) invariant(what, (long)st.st_ino, (long)want->st_ino);
    if ((st.st_mode & S_IFMT) != (want->st_mode & S_IFMT)) invariant(what, st.st_mode, want->st_mode);
}

static void check(void)
{
    bad = 0;
    int want = O_PATH;
    if ((fcntl(file, F_GETFL) & (O_PATH | O_ACCMODE)) != want) invariant("file flags", fcntl(file, F_GETFL), want);
    if ((fcntl(dir, F_GETFL) & (O_PATH | O_DIRECTORY)) != (O_PATH | O_DIRECTORY))
        invariant("dir flags", fcntl(dir, F_GETFL), O_PATH | O_DIRECTORY);
    if (!(fcntl(link_fd, F_GETFL) & O_PATH)) invariant("link flags", fcntl(link_fd, F_GETFL), O_PATH);
    if (!(fcntl(cx, F_GETFD) & FD_CLOEXEC)) invariant("FD_CLOEXEC", 0, 1);
    same("file inode", file, &sf);
    same("dir inode", dir, &sd);
    same("link inode (the link itself)", link_fd, &sl);
    char buf[256];
    ssize_t n = readlinkat(link_fd, "", buf, sizeof buf);
    if (n != 6 || memcmp(buf, "target", 6)) invariant("readlinkat through the link fd", n, 6);
    struct stat st;
    if (fstatat(dir, "target", &st, 0) < 0 || st.st_ino != sf.st_ino) invariant("fstatat in dir", errno, 0);
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", file);
    int rd = open(path, O_RDONLY);
    n = rd < 0 ? -1 : read(rd, buf, sizeof buf);
    if (n != 5 || memcmp(buf, "hello", 5)) invariant("reopen the file through its O_PATH fd", n, 5);
    if (rd >= 0) close(rd);
    /* I/O through an O_PATH fd fails with EBADF, as before. */
    if (read(file, buf, 1) != -1 || errno != EBADF) invariant("read on O_PATH (errno)", errno, EBADF);
    if (fchdir(dir) < 0) invariant("fchdir", errno, 0);
    if (stat("target", &st) < 0 || st.st_ino != sf.st_ino) invariant("stat after fchdir", errno, 0);
    printf(bad ? "state bad\n" : "state ok\n");
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc < 2 || chdir(argv[1]) < 0) {
        fprintf(stderr, "usage: opath_state DIR\n");
        return 2;
    }
    FILE *f = fopen("target", "w");
    if (!f || fputs("hello", f) < 0 || fclose(f)) { perror("target"); return 2; }
    unlink("link");
    if (symlink("target", "link") < 0) { perror("symlink"); return 2; }
    file = open("target", O_PATH);
    dir = open(".", O_PATH | O_DIRECTORY);
    link_fd = open("link", O_PATH | O_NOFOLLOW);
    cx = open("target", O_PATH | O_CLOEXEC);
    if (file < 0 || dir < 0 || link_fd < 0 || cx < 0) { perror("open O_PATH"); return 2; }
    if (stat("target", &sf) || stat(".", &sd) || lstat("link", &sl)) { perror("stat"); return 2; }
    chdir("/");
    signal(SIGUSR1, on_usr1);
    printf("pid %d\n", (int)getpid());
    struct timespec ts = {0, 50000000L};
    for (unsigned long long n = 1;; n++) {
        if (asked) {
            asked = 0;
            check();
            chdir("/");
        }
        printf("tick %llu\n", n);
        nanosleep(&ts, NULL);
    }
}
