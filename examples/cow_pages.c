/*
 * cow_pages DIR: a parent and the child it forked share their private pages copy-on-write,
 * and check that each page neither of them wrote since the fork is still one physical page.
 *
 * Before forking, the parent fills 16 MiB of anonymous memory, 2 MiB of its brk heap and a
 * 4 MiB private mapping of a file it makes in DIR (whose own content stays other) with a
 * pattern. After the fork, the child rewrites every 4th page of both and the parent every 7th.
 * Prints "tick N" every 100 ms. On SIGUSR1 the parent checks, page by page, through
 * /proc/self/pagemap and the child's /proc/PID/pagemap:
 * - a page neither wrote is present in both at the same page frame (when frames are shown:
 *   root) and mapped by more than one process (the "exclusively mapped" bit is clear);
 * - a page either wrote is a page of its own in each (different frames);
 * and asks the child to check its own content while it checks its own; then prints "state ok",
 * or INVARIANT lines and "state bad".
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096
#define ANON_PAGES 4096 /* 16 MiB */
#define HEAP_PAGES 512  /* 2 MiB */
#define FILE_PAGES 1024 /* 4 MiB */

static volatile sig_atomic_t asked;

static void on_usr1(int s)
{
    (void)s;
    asked = 1;
}

/* The word page `i` of area `a` holds everywhere: who wrote it last (0 the parent before the
 * fork, 1 the child, 2 the parent after it). */
static uint64_t word(int a, long i, int who)
{
    return ((uint64_t)a << 56) ^ ((uint64_t)who << 48) ^ ((uint64_t)i * 2654435761u) ^ 0x5a5a;
}

static int child_writes(long i)
{
    return i % 4 == 0;
}

static int parent_writes(long i)
{
    return i % 7 == 0;
}

static void fill(char *base, long pages, int a, int who, int (*pick)(long))
{
    for (long i = 0; i < pages; i++) {
        if (pick && !pick(i))
            continue;
        uint64_t w = word(a, i, who);
        uint64_t *p = (uint64_t *)(base + i * PAGE);
        for (int k = 0; k < PAGE / 8; k++)
            p[k] = w + k;
    }
}

/* Number of pages whose content is not what it should be for process `me`, which wrote the
 * pages `mine` picks. */
static long check_content(char *base, long pages, int a, int (*mine)(long), int me)
{
    long bad = 0;
    for (long i = 0; i < pages; i++) {
        uint64_t w = word(a, i, mine(i) ? me : 0);
        uint64_t *p = (uint64_t *)(base + i * PAGE);
        for (int k = 0; k < PAGE / 8; k++)
            if (p[k] != w + k) {
                bad++;
                break;
            }
    }
    return bad;
}

static int read_map(int fd, char *base, long pages, uint64_t *out)
{
    off_t off = ((uintptr_t)base / PAGE) * 8;
    size_t n = pages * 8, got = 0;
    while (got < n) {
        ssize_t r = pread(fd, (char *)out + got, n - got, off + got);
        if (r <= 0)
            return -1;
        got += r;
    }
    return 0;
}

#define PRESENT (1ULL << 63)
#define EXCLUSIVE (1ULL << 56)
#define PFN(e) ((e) & ((1ULL << 55) - 1))

static int bad_lines;

static void invariant(const char *fmt, long a, long b, long c)
{
    if (bad_lines++ < 8) {
        printf("INVARIANT ");
        printf(fmt, a, b, c);
        printf("\n");
    }
}

/* Compares the frames of an area in the parent and the child. */
static void check_sharing(int self, int other, char *base, long pages, int a)
{
    static uint64_t mine[ANON_PAGES], theirs[ANON_PAGES];
    if (read_map(self, base, pages, mine) || read_map(other, base, pages, theirs)) {
        invariant("area %ld: pagemap unreadable (%ld %ld)", a, errno, 0);
        return;
    }
    long shared = 0, expected = 0;
    for (long i = 0; i < pages; i++) {
        uint64_t m = mine[i], t = theirs[i];
        int both_present = (m & PRESENT) && (t & PRESENT);
        if (!child_writes(i) && !parent_writes(i)) {
            expected++;
            int same = both_present && !(m & EXCLUSIVE) && !(t & EXCLUSIVE) &&
                       (PFN(m) == 0 || PFN(m) == PFN(t));
            if (same)
                shared++;
            else
                invariant("area %ld page %ld not shared (%ld)", a, i, (long)(both_present ? 1 : 0));
        } else if (both_present && PFN(m) != 0 && PFN(m) == PFN(t)) {
            invariant("area %ld page %ld written since the fork yet shared", a, i, 0);
        } else if (both_present && (!(m & EXCLUSIVE) || !(t & EXCLUSIVE))) {
            invariant("area %ld page %ld written since the fork yet not exclusive", a, i, 0);
        }
    }
    printf("area %d: %ld of %ld pages shared\n", a, shared, expected);
}

static char *anon, *heap, *mapped;

static int child_part(long i)
{
    return child_writes(i);
}

static int parent_part(long i)
{
    return parent_writes(i);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: cow_pages DIR\n");
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    /* The heap block comes from brk, not from a mapping of its own. */
    mallopt(M_MMAP_THRESHOLD, 64 << 20);
    char *h = malloc((HEAP_PAGES + 1) * PAGE);
    heap = (char *)(((uintptr_t)h + PAGE - 1) & ~(uintptr_t)(PAGE - 1));
    anon = mmap(NULL, ANON_PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    char path[4096];
    snprintf(path, sizeof path, "%s/cow-file", argv[1]);
    int file = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (file < 0 || ftruncate(file, FILE_PAGES * PAGE)) {
        perror(path);
        return 1;
    }
    mapped = mmap(NULL, FILE_PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE, file, 0);
    close(file);
    if (!h || anon == MAP_FAILED || mapped == MAP_FAILED) {
        perror("memory");
        return 1;
    }
    /* Whole pages of their own, never merged into a huge page. */
    madvise(anon, ANON_PAGES * PAGE, MADV_NOHUGEPAGE);
    madvise(heap, HEAP_PAGES * PAGE, MADV_NOHUGEPAGE);
    fill(anon, ANON_PAGES, 1, 0, NULL);
    fill(heap, HEAP_PAGES, 2, 0, NULL);
    fill(mapped, FILE_PAGES, 3, 0, NULL);

    int ask[2], answer[2];
    if (pipe(ask) || pipe(answer)) {
        perror("pipe");
        return 1;
    }
    pid_t child = fork();
    if (child == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        close(ask[1]);
        close(answer[0]);
        fill(anon, ANON_PAGES, 1, 1, child_writes);
        fill(heap, HEAP_PAGES, 2, 1, child_writes);
        fill(mapped, FILE_PAGES, 3, 1, child_writes);
        for (;;) {
            char c;
            ssize_t n = read(ask[0], &c, 1);
            if (n < 0 && errno == EINTR)
                continue;
            if (n != 1)
                return 0;
            long bad = check_content(anon, ANON_PAGES, 1, child_part, 1) +
                       check_content(heap, HEAP_PAGES, 2, child_part, 1) +
                       check_content(mapped, FILE_PAGES, 3, child_part, 1);
            if (write(answer[1], &bad, sizeof bad) != sizeof bad)
                return 1;
        }
    }
    close(ask[0]);
    close(answer[1]);
    fill(anon, ANON_PAGES, 1, 2, parent_writes);
    fill(heap, HEAP_PAGES, 2, 2, parent_writes);
    fill(mapped, FILE_PAGES, 3, 2, parent_writes);
    signal(SIGUSR1, on_usr1);

    for (long tick = 0;; tick++) {
        printf("tick %ld\n", tick);
        struct timespec ts = { 0, 100 * 1000 * 1000 };
        while (nanosleep(&ts, &ts) && errno == EINTR)
            ;
        if (!asked)
            continue;
        asked = 0;
        bad_lines = 0;
        if (write(ask[1], "?", 1) != 1)
            invariant("the child is gone (%ld)", errno, 0, 0);
        long mine = check_content(anon, ANON_PAGES, 1, parent_part, 2) +
                    check_content(heap, HEAP_PAGES, 2, parent_part, 2) +
                    check_content(mapped, FILE_PAGES, 3, parent_part, 2);
        if (mine)
            invariant("%ld pages of the parent hold the wrong content", mine, 0, 0);
        long theirs = -1;
        ssize_t r;
        while ((r = read(answer[0], &theirs, sizeof theirs)) < 0 && errno == EINTR)
            ;
        if (r != sizeof theirs || theirs)
            invariant("%ld pages of the child hold the wrong content", theirs, 0, 0);
        char map[64];
        snprintf(map, sizeof map, "/proc/%d/pagemap", (int)child);
        int self = open("/proc/self/pagemap", O_RDONLY), other = open(map, O_RDONLY);
        if (self < 0 || other < 0) {
            invariant("cannot open the pagemaps (%ld)", errno, 0, 0);
        } else {
            check_sharing(self, other, anon, ANON_PAGES, 1);
            check_sharing(self, other, heap, HEAP_PAGES, 2);
            check_sharing(self, other, mapped, FILE_PAGES, 3);
        }
        if (self >= 0)
            close(self);
        if (other >= 0)
            close(other);
        printf(bad_lines ? "state bad\n" : "state ok\n");
    }
}
