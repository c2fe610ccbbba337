/*
 * deleted_state DIR: holds open files whose name is gone, and checks, when asked, that each is
 * as it was set up:
 *   - scratch: a sparse unlinked file (data at 0 and at 3 MiB, a hole between, size 4 MiB+17),
 *     read-write at offset 1234, mode 0640, opened a second time read-only (two descriptions
 *     of one inode: a write through one is read through the other) at offset 7;
 *   - tmpf: a tmpfile() with a line written through stdio (offset at its end);
 *   - otmp: an O_TMPFILE file with 2 MiB of patterned data, offset 100, O_APPEND, and a dup
 *     sharing its offset;
 *   - mapped: an unlinked file mapped MAP_SHARED, written through the mapping, its fd closed
 *     (the mapping alone holds the file); with "keep-fd" as second argument the fd stays open
 *     too, and a write through one must be seen through the other (one file, not two).
 * Every one must still be unlinked (st_nlink 0).
 *
 * Prints "tick N" every 50 ms. On SIGUSR1 it checks everything, prints "state ok" or
 * "INVARIANT <what>" lines then "state bad".
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MIB (1024 * 1024)

static volatile sig_atomic_t asked;
static void on_usr1(int s) { (void)s; asked = 1; }

static int scratch, scratch_ro, tmpf_fd, otmp, otmp_dup, mapped;
static FILE *tmpf;
static char *map;
static int bad;

static void invariant(const char *what, long long a, long long b)
{
    printf("INVARIANT %s: got %lld, want %lld\n", what, a, b);
    bad = 1;
}

static unsigned char pattern(long i) { return (unsigned char)(i * 7 + i / 4096); }

static void die(const char *what)
{
    perror(what);
    exit(2);
}

static void expect_at(int fd, long off, const char *want, const char *what)
{
    char buf[64] = {0};
    size_t n = strlen(want);
    if (pread(fd, buf, n, off) != (ssize_t)n || memcmp(buf, want, n) != 0) {
        printf("INVARIANT %s: read \"%s\", want \"%s\"\n", what, buf, want);
        bad = 1;
    }
}

static void expect_pos(int fd, long want, const char *what)
{
    long pos = lseek(fd, 0, SEEK_CUR);
    if (pos != want) invariant(what, pos, want);
}

static void expect_deleted(int fd, const char *what)
{
    struct stat st;
    if (fstat(fd, &st) != 0 || st.st_nlink != 0) invariant(what, (long long)st.st_nlink, 0);
}

/* The fd's link names the file's directory (and its old name when it had one). */
static void expect_link(int fd, const char *prefix, const char *suffix, const char *what)
{
    char p[64], link[4096] = {0};
    snprintf(p, sizeof p, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(p, link, sizeof link - 1);
    size_t lp = strlen(prefix), ls = strlen(suffix);
    if (n < (ssize_t)(lp + ls) || strncmp(link, prefix, lp) != 0 || strcmp(link + n - ls, suffix) != 0) {
        printf("INVARIANT %s: link \"%s\", want \"%s...%s\"\n", what, link, prefix, suffix);
        bad = 1;
    }
}

static const char *dir;

static void check(void)
{
    struct stat st;
    bad = 0;
    /* scratch: content, holes, size, mode, offsets of both descriptions. */
    expect_at(scratch, 0, "scratch head", "scratch head");
    expect_at(scratch, 3 * MIB, "scratch tail", "scratch tail");
    char zeros[4096], got[4096];
    memset(zeros, 0, sizeof zeros);
    if (pread(scratch, got, sizeof got, MIB) != (ssize_t)sizeof got || memcmp(got, zeros, sizeof got) != 0)
        invariant("scratch hole reads zeros", 1, 0);
    if (fstat(scratch, &st) != 0 || st.st_size != 4 * MIB + 17) invariant("scratch size", (long long)st.st_size, 4 * MIB + 17);
    if ((st.st_mode & 07777) != 0640) invariant("scratch mode", st.st_mode & 07777, 0640);
    /* Holes stay holes: far less than 4 MiB allocated. */
    if ((long long)st.st_blocks * 512 > 2 * MIB) invariant("scratch allocated bytes", (long long)st.st_blocks * 512, 2 * MIB);
    expect_pos(scratch, 1234, "scratch offset");
    expect_pos(scratch_ro, 7, "scratch read-only offset");
    if ((fcntl(scratch_ro, F_GETFL) & O_ACCMODE) != O_RDONLY) invariant("scratch_ro access", fcntl(scratch_ro, F_GETFL) & O_ACCMODE, O_RDONLY);
    if (pwrite(scratch, "XY", 2, 20) != 2) invariant("scratch pwrite", errno, 0);
    expect_at(scratch_ro, 20, "XY", "a write through one description read through the other");
    if (pwrite(scratch, "\0\0", 2, 20) != 2) invariant("scratch pwrite back", errno, 0);
    expect_deleted(scratch, "scratch nlink");
    expect_deleted(scratch_ro, "scratch_ro nlink");
    char want[4096];
    snprintf(want, sizeof want, "%s/scratch", dir);
    expect_link(scratch, want, " (deleted)", "scratch link");

    /* tmpfile(): content and offset at its end. */
    expect_at(tmpf_fd, 0, "a line in a tmpfile\n", "tmpfile content");
    expect_pos(tmpf_fd, 20, "tmpfile offset");
    expect_deleted(tmpf_fd, "tmpfile nlink");

    /* O_TMPFILE: 2 MiB of pattern, offset 100 shared with the dup, O_APPEND. */
    static unsigned char big[2 * MIB];
    if (pread(otmp, big, sizeof big, 0) != (ssize_t)sizeof big) invariant("otmp read", errno, 0);
    for (long i = 0; i < 2 * MIB; i++)
        if (big[i] != pattern(i)) {
            invariant("otmp byte", i, -1);
            break;
        }
    expect_pos(otmp, 100, "otmp offset");
    if (lseek(otmp_dup, 50, SEEK_SET) != 50) invariant("otmp_dup seek", errno, 0);
    expect_pos(otmp, 50, "otmp offset moved through its dup");
    if (lseek(otmp, 100, SEEK_SET) != 100) invariant("otmp seek back", errno, 0);
    if (!(fcntl(otmp, F_GETFL) & O_APPEND)) invariant("otmp O_APPEND", 0, 1);
    expect_deleted(otmp, "otmp nlink");
    snprintf(want, sizeof want, "%s/#", dir);
    expect_link(otmp, want, " (deleted)", "O_TMPFILE link");

    /* mapped: the mapping still holds what was written, through the file and through itself. */
    if (memcmp(map + 4096, "written through the mapping", 27) != 0) invariant("mapped content (mapping)", 0, 1);
    if (memcmp(map, "mapped head", 11) != 0) invariant("mapped head (mapping)", 0, 1);
    if (mapped >= 0) {
        expect_deleted(mapped, "mapped nlink");
        /* The fd and the mapping are one file: a write through one is seen through the other. */
        char got[16] = { 0 };
        if (pread(mapped, got, 11, 0) != 11 || memcmp(got, "mapped head", 11) != 0)
            invariant("mapped head (fd)", 0, 1);
        if (pwrite(mapped, "via fd", 6, 200) != 6 || memcmp(map + 200, "via fd", 6) != 0)
            invariant("a write through the fd seen in the mapping", 0, 1);
        memcpy(map + 300, "via map", 7);
        if (pread(mapped, got, 7, 300) != 7 || memcmp(got, "via map", 7) != 0)
            invariant("a write through the mapping seen through the fd", 0, 1);
    }

    printf(bad ? "state bad\n" : "state ok\n");
}

static int make(const char *dir, const char *name, int flags)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    int fd = open(path, flags | O_CREAT | O_TRUNC, 0600);
    if (fd < 0) die(path);
    return fd;
}

static void gone(const char *dir, const char *name)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    if (unlink(path) != 0) die("unlink");
}

int main(int argc, char **argv)
{
    if (argc != 2 && argc != 3) {
        fprintf(stderr, "usage: deleted_state DIR [keep-fd]\n");
        return 2;
    }
    dir = argv[1];
    setvbuf(stdout, NULL, _IOLBF, 0);

    scratch = make(dir, "scratch", O_RDWR);
    if (pwrite(scratch, "scratch head", 12, 0) != 12 || pwrite(scratch, "scratch tail", 12, 3 * MIB) != 12) die("write");
    if (ftruncate(scratch, 4 * MIB + 17) != 0 || fchmod(scratch, 0640) != 0) die("ftruncate");
    char path[4096];
    snprintf(path, sizeof path, "%s/scratch", dir);
    scratch_ro = open(path, O_RDONLY);
    if (scratch_ro < 0) die("open ro");
    gone(dir, "scratch");
    lseek(scratch, 1234, SEEK_SET);
    lseek(scratch_ro, 7, SEEK_SET);

    tmpf = tmpfile();
    if (!tmpf) die("tmpfile");
    fputs("a line in a tmpfile\n", tmpf);
    fflush(tmpf);
    tmpf_fd = fileno(tmpf);

    otmp = open(dir, O_TMPFILE | O_RDWR, 0600);
    if (otmp < 0) die("O_TMPFILE");
    static unsigned char big[2 * MIB];
    for (long i = 0; i < 2 * MIB; i++) big[i] = pattern(i);
    if (write(otmp, big, sizeof big) != (ssize_t)sizeof big) die("write otmp");
    lseek(otmp, 100, SEEK_SET);
    fcntl(otmp, F_SETFL, O_APPEND);
    otmp_dup = dup(otmp);

    mapped = make(dir, "mapped", O_RDWR);
    if (ftruncate(mapped, 8192) != 0 || pwrite(mapped, "mapped head", 11, 0) != 11) die("mapped");
    map = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_SHARED, mapped, 0);
    if (map == MAP_FAILED) die("mmap");
    gone(dir, "mapped");
    memcpy(map + 4096, "written through the mapping", 27);
    if (argc < 3 || strcmp(argv[2], "keep-fd") != 0) {
        close(mapped);
        mapped = -1;
    }

    signal(SIGUSR1, on_usr1);
    printf("fds %d %d %d %d %d %d pid %d\n", scratch, scratch_ro, tmpf_fd, otmp, otmp_dup, mapped, (int)getpid());
    struct timespec d = {0, 50000000L};
    for (unsigned long long n = 1;; n++) {
        if (asked) {
            asked = 0;
            check();
        }
        printf("tick %llu\n", n);
        nanosleep(&d, NULL);
    }
}
