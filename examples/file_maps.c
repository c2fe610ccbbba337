/*
 * file_maps: maps files with every combination of protection, sharing and file access that
 * matters, and checks, when asked, that each mapping is as it was: content, protection, and
 * what the kernel lets the program do with it (the VmFlags mr/mw/me/ms of /proc/self/smaps: a
 * shared mapping of a file opened read-only may never be made writable, one of a file opened
 * read-write may).
 *
 *   priv      file opened O_RDONLY, MAP_PRIVATE PROT_READ, mprotect'ed read-write and written
 *             (page 1), its page 2 a PROT_NONE guard; the file itself unchanged
 *   shro      file opened O_RDONLY (mode 0644: root could write it), MAP_SHARED PROT_READ:
 *             mprotect(PROT_WRITE) fails with EACCES
 *   shmay     file opened O_RDWR, MAP_SHARED PROT_READ, fd closed: mprotect(PROT_WRITE) works,
 *             and a write through it reaches the file
 *   shrw      file opened O_RDWR, MAP_SHARED read-write, fd closed, written through the map;
 *             its page 1 a PROT_NONE guard
 *   twice     one file opened O_RDWR, mapped MAP_PRIVATE read-only below a MAP_SHARED
 *             read-write mapping of it (the restore used to open it once, read-only, for both)
 *   exec      a file mapped MAP_PRIVATE PROT_READ|PROT_EXEC
 *
 * Usage: file_maps DIR. Prints "tick N" every 50 ms; on SIGUSR1 checks everything, prints
 * "state ok" or "INVARIANT <what>" lines and "state bad".
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define PG 4096
#define NMAP 16

static volatile sig_atomic_t asked;
static void on_usr1(int s) { (void)s; asked = 1; }

static int bad;
static const char *dir;

struct region {
    const char *name;
    char *addr;
    size_t len;
    char perms[8];   /* from /proc/self/maps, per page */
    char flags[64];  /* mr mw me ms sh, of its first page */
};
static struct region regs[NMAP];
static int nregs;

static void invariant(const char *fmt, const char *a, const char *b)
{
    printf("INVARIANT ");
    printf(fmt, a, b);
    printf("\n");
    bad = 1;
}

/* The perms and the access VmFlags of the mapping holding addr, from /proc/self/smaps. */
static int describe(void *addr, char *perms, char *flags)
{
    FILE *f = fopen("/proc/self/smaps", "r");
    if (!f) return -1;
    char line[512];
    int in = 0, found = 0;
    uintptr_t a = (uintptr_t)addr;
    while (fgets(line, sizeof line, f)) {
        unsigned long s, e;
        char p[8];
        if (sscanf(line, "%lx-%lx %7s", &s, &e, p) == 3 && strchr(line, '-') < strchr(line, ' ')) {
            in = a >= s && a < e;
            if (in) {
                strcpy(perms, p);
                found = 1;
            }
            continue;
        }
        if (in && strncmp(line, "VmFlags:", 8) == 0) {
            flags[0] = 0;
            static const char *keep[] = {"mr", "mw", "me", "ms", "sh"};
            for (unsigned i = 0; i < sizeof keep / sizeof keep[0]; i++) {
                char want[8];
                snprintf(want, sizeof want, " %s", keep[i]);
                char *at = strstr(line + 8, want);
                if (at && (at[3] == ' ' || at[3] == '\n')) {
                    strcat(flags, keep[i]);
                    strcat(flags, " ");
                }
            }
            in = 0;
        }
    }
    fclose(f);
    return found ? 0 : -1;
}

static void note(const char *name, char *addr, size_t len)
{
    struct region *r = &regs[nregs++];
    r->name = name;
    r->addr = addr;
    r->len = len;
    if (describe(addr, r->perms, r->flags) != 0) {
        fprintf(stderr, "no mapping for %s\n", name);
        exit(2);
    }
}

static int make_file(const char *name, char fill, int pages, mode_t mode)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    unlink(path);
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
    char buf[PG];
    memset(buf, fill, PG);
    for (int i = 0; i < pages; i++)
        if (write(fd, buf, PG) != PG) {
            perror("write");
            exit(2);
        }
    fchmod(fd, mode);
    close(fd);
    return 0;
}

static int open_file(const char *name, int flags)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    int fd = open(path, flags);
    if (fd < 0) {
        perror(path);
        exit(2);
    }
    return fd;
}

/* The byte at off of the file, read through a new fd. */
static char file_byte(const char *name, off_t off)
{
    int fd = open_file(name, O_RDONLY);
    char c = 0;
    if (pread(fd, &c, 1, off) != 1) c = '?';
    close(fd);
    return c;
}

static void *must(void *p, const char *what)
{
    if (p == MAP_FAILED) {
        perror(what);
        exit(2);
    }
    return p;
}

static char *priv, *shro, *shmay, *shrw, *twice_p, *twice_s, *exe;

static void set_up(void)
{
    make_file("priv", 'P', 3, 0644);
    int fd = open_file("priv", O_RDONLY);
    priv = must(mmap(NULL, 3 * PG, PROT_READ, MAP_PRIVATE, fd, 0), "mmap priv");
    close(fd);
    mprotect(priv, 3 * PG, PROT_READ | PROT_WRITE);
    memset(priv + PG, 'p', PG);
    mprotect(priv + 2 * PG, PG, PROT_NONE);
    note("priv page 0", priv, PG);
    note("priv page 1", priv + PG, PG);
    note("priv guard", priv + 2 * PG, PG);

    make_file("shro", 'R', 1, 0644);
    fd = open_file("shro", O_RDONLY);
    shro = must(mmap(NULL, PG, PROT_READ, MAP_SHARED, fd, 0), "mmap shro");
    close(fd);
    note("shro", shro, PG);

    make_file("shmay", 'M', 1, 0644);
    fd = open_file("shmay", O_RDWR);
    shmay = must(mmap(NULL, PG, PROT_READ, MAP_SHARED, fd, 0), "mmap shmay");
    close(fd);
    note("shmay", shmay, PG);

    make_file("shrw", 'W', 2, 0644);
    fd = open_file("shrw", O_RDWR);
    shrw = must(mmap(NULL, 2 * PG, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), "mmap shrw");
    close(fd);
    shrw[10] = 'w';
    mprotect(shrw + PG, PG, PROT_NONE);
    note("shrw", shrw, PG);
    note("shrw guard", shrw + PG, PG);

    /* Two mappings of one file, the private one at the lower address. */
    make_file("twice", 'T', 2, 0644);
    char *area = must(mmap(NULL, 4 * PG, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), "reserve");
    munmap(area, 4 * PG);
    fd = open_file("twice", O_RDWR);
    twice_p = must(mmap(area, PG, PROT_READ, MAP_PRIVATE | MAP_FIXED_NOREPLACE, fd, 0), "mmap twice private");
    twice_s = must(mmap(area + 2 * PG, PG, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED_NOREPLACE, fd, PG),
                   "mmap twice shared");
    close(fd);
    twice_s[5] = 't';
    note("twice private", twice_p, PG);
    note("twice shared", twice_s, PG);

    make_file("exe", 'X', 1, 0755);
    fd = open_file("exe", O_RDONLY);
    exe = must(mmap(NULL, PG, PROT_READ | PROT_EXEC, MAP_PRIVATE, fd, 0), "mmap exe");
    close(fd);
    note("exe", exe, PG);
}

static void expect_byte(const char *what, char got, char want)
{
    if (got != want) {
        char g[2] = {got, 0}, w[2] = {want, 0};
        char fmt[128];
        snprintf(fmt, sizeof fmt, "%s: got '%%s', want '%%s'", what);
        invariant(fmt, g, w);
    }
}

static void check(void)
{
    bad = 0;
    for (int i = 0; i < nregs; i++) {
        struct region *r = &regs[i];
        char perms[8], flags[64];
        if (describe(r->addr, perms, flags) != 0) {
            invariant("%s: %s", r->name, "mapping gone");
            continue;
        }
        char fmt[128];
        snprintf(fmt, sizeof fmt, "%s perms: got %%s, want %%s", r->name);
        if (strcmp(perms, r->perms)) invariant(fmt, perms, r->perms);
        snprintf(fmt, sizeof fmt, "%s VmFlags: got [%%s], want [%%s]", r->name);
        if (strcmp(flags, r->flags)) invariant(fmt, flags, r->flags);
    }
    /* priv: the copy-on-write page, the file's pages, the file unchanged. */
    expect_byte("priv page 0", priv[0], 'P');
    expect_byte("priv page 1", priv[PG + 7], 'p');
    expect_byte("priv file page 1", file_byte("priv", PG + 7), 'P');
    if (mprotect(priv + 2 * PG, PG, PROT_READ) != 0) invariant("priv guard mprotect: %s%s", strerror(errno), "");
    expect_byte("priv page 2", priv[2 * PG], 'P');
    mprotect(priv + 2 * PG, PG, PROT_NONE);

    /* shro: never writable. */
    expect_byte("shro", shro[0], 'R');
    if (mprotect(shro, PG, PROT_READ | PROT_WRITE) == 0) {
        invariant("shro: mprotect(PROT_WRITE) %s%s", "succeeded on a file opened read-only", "");
        mprotect(shro, PG, PROT_READ);
    } else if (errno != EACCES) {
        invariant("shro: mprotect(PROT_WRITE) failed with %s, want %s", strerror(errno), strerror(EACCES));
    }

    /* shmay: may be made writable, and shares the file. */
    expect_byte("shmay", shmay[0], 'M');
    if (mprotect(shmay, PG, PROT_READ | PROT_WRITE) != 0) {
        invariant("shmay: mprotect(PROT_WRITE) failed: %s%s", strerror(errno), "");
    } else {
        shmay[1] = 'm';
        expect_byte("shmay write reaches the file", file_byte("shmay", 1), 'm');
        shmay[1] = 'M';
        mprotect(shmay, PG, PROT_READ);
    }

    /* shrw: written through the map, shared with the file. */
    expect_byte("shrw", shrw[10], 'w');
    expect_byte("shrw file", file_byte("shrw", 10), 'w');
    shrw[11] = 'v';
    expect_byte("shrw write reaches the file", file_byte("shrw", 11), 'v');
    shrw[11] = 'W';

    expect_byte("twice private", twice_p[5], 'T');
    expect_byte("twice shared", twice_s[5], 't');
    expect_byte("twice shared file", file_byte("twice", PG + 5), 't');
    twice_s[6] = 'u';
    expect_byte("twice shared write reaches the file", file_byte("twice", PG + 6), 'u');
    twice_s[6] = 'T';

    expect_byte("exe", exe[0], 'X');
    printf(bad ? "state bad\n" : "state ok\n");
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc < 2) {
        fprintf(stderr, "usage: file_maps DIR\n");
        return 2;
    }
    dir = argv[1];
    signal(SIGUSR1, on_usr1);
    set_up();
    printf("pid %d\n", (int)getpid());
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
