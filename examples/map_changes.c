/*
 * map_changes: changes its address space one step at a time and keeps a
 * description of every region it made and of what each must hold, so that a
 * checkpoint (full or incremental) taken between two steps and restored
 * later can be verified.
 *
 *     map_changes [DIR [auto]]
 *
 * DIR (default /tmp): where the files for the file-backed mappings are
 * created (map_changes.<pid>.<n>; they must stay there for a restore, and
 * are removed by whoever removes DIR).  Steps run one per SIGUSR2; with
 * "auto", one every 300 ms.  SIGUSR1 verifies every region.
 *
 * Step k (k = 1, 2, ...) does, by (k - 1) % 7, in cycle c = (k - 1) / 7:
 *   0 mmap      mmap a new 8 MiB private anonymous region and fill it;
 *   1 munmap    munmap the first half of that region;
 *   2 mremap    map one page (a "blocker", filled) right after the
 *               remaining 4 MiB so that it cannot grow in place, then mremap
 *               it to 8 MiB with MREMAP_MAYMOVE and fill the new half;
 *   3 sbrk+     sbrk(+4 MiB) and fill the new part of the heap;
 *   4 sbrk-     sbrk(-2 MiB);
 *   5 dontneed  MADV_DONTNEED on 1 MiB + 3 pages in the middle of the
 *               mremapped region: that part must read back as zero; and on
 *               7 pages of the newest file mapping (from the cycle before),
 *               three of them modified: those must read back as the file;
 *   6 file      create a 2 MiB file, fill it, mmap it MAP_PRIVATE
 *               read-write, close the fd, modify every third page.
 * Every step also rewrites a 1 MiB "ticker" region (made at start) with a
 * pattern of the step number, so each step dirties pages of a mapping
 * that did not otherwise change.
 *
 * Expected content: word j of an anonymous region is pattern(seed, base + j)
 * (base moves when the first half is unmapped), except a zeroed range; the
 * heap holds pattern(heap seed, j) for every word from its start to the
 * break; a file mapping holds pattern(file seed, j) in unmodified pages and
 * pattern(modified seed, j) in every third page; the ticker holds
 * pattern(seed ^ step, j).  Ranges this program unmapped (the munmapped
 * halves, the old place of a moved region, the heap given back) are
 * "holes": mincore() must fail with ENOMEM on them, unless some mapping that
 * this program did not make (e.g. of a library) took the range, which is
 * checked (and the hole dropped) at every step, before a checkpoint can
 * see it.
 *
 * No malloc (stdout has a static buffer), so sbrk is this program's alone.
 *
 * Output (line buffered):
 *     ready regions <n> pid <pid>
 *     step <k> <what> ok
 *     verify ok regions <n> holes <h> step <k>
 *     VERIFY FAILED ...        (then exit 3; a SIGSEGV/SIGBUS also prints
 *                               VERIFY FAILED and exits 3)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096UL
#define MIB (1024UL * 1024UL)
#define MAX_REGIONS 512
#define MAX_HOLES 512

enum kind { K_ANON = 1, K_HEAP, K_FILE, K_TICKER, K_BLOCKER };

static const char *kind_name(int k)
{
    switch (k) {
    case K_ANON: return "anon";
    case K_HEAP: return "heap";
    case K_FILE: return "file";
    case K_TICKER: return "ticker";
    case K_BLOCKER: return "blocker";
    }
    return "?";
}

struct region {
    int kind;
    int live;
    char *addr;
    size_t len;     /* bytes */
    uint64_t seed;  /* anon/heap/ticker/blocker; file: seed of the file */
    uint64_t seed2; /* file: seed of the modified pages */
    uint64_t base;  /* word index of addr in the pattern */
    size_t zlo, zhi; /* byte range (relative to addr) that must be zero (file: the file's) */
};

struct hole {
    char *addr;
    size_t len;
    int live;
    char what[24];
};

static struct region regions[MAX_REGIONS];
static int nregions;
static struct hole holes[MAX_HOLES];
static int nholes;
static uint64_t step_no;
static int cur_anon = -1;    /* this cycle's 8 MiB region */
static int heap_idx = -1;
static int ticker_idx = -1;
static const char *dir = "/tmp";
static char outbuf[1 << 16];

static volatile sig_atomic_t want_verify;
static volatile sig_atomic_t want_step;

static inline uint64_t pattern(uint64_t seed, uint64_t j)
{
    uint64_t x = (j + 1) * 0x9E3779B97F4A7C15ULL ^ seed * 0xC2B2AE3D27D4EB4FULL;
    x ^= x >> 31;
    x *= 0xBF58476D1CE4E5B9ULL;
    x ^= x >> 29;
    x *= 0x94D049BB133111EBULL;
    x ^= x >> 32;
    return x | 1;
}

static void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("VERIFY FAILED ", stdout);
    vprintf(fmt, ap);
    va_end(ap);
    fputs("\n", stdout);
    fflush(stdout);
    exit(3);
}

static void die(const char *what)
{
    printf("STEP FAILED step %llu %s: %s\n", (unsigned long long)step_no, what, strerror(errno));
    fflush(stdout);
    exit(4);
}

/* Expected word j (relative to r->addr) of region r. */
static uint64_t expected(const struct region *r, size_t j)
{
    size_t off = j * 8;
    if (r->kind == K_FILE) {
        size_t page = off / PAGE;
        int reverted = off >= r->zlo && off < r->zhi;
        return pattern(page % 3 == 0 && !reverted ? r->seed2 : r->seed, j);
    }
    if (off >= r->zlo && off < r->zhi)
        return 0;
    return pattern(r->seed, r->base + j);
}

static void fill(struct region *r, size_t from, size_t to)
{
    uint64_t *w = (uint64_t *)r->addr;
    for (size_t j = from / 8; j < to / 8; j++)
        w[j] = expected(r, j);
}

static int add_region(int kind, char *addr, size_t len, uint64_t seed)
{
    if (nregions >= MAX_REGIONS) {
        errno = ENOSPC;
        die("too many regions");
    }
    struct region *r = &regions[nregions];
    memset(r, 0, sizeof *r);
    r->kind = kind;
    r->live = 1;
    r->addr = addr;
    r->len = len;
    r->seed = seed;
    return nregions++;
}

/* Is every page of [addr, addr+len) mapped?  mincore fails with ENOMEM
 * when any page of the range it is given is unmapped. */
static int mapped(char *addr, size_t len)
{
    unsigned char vec[64];
    for (size_t off = 0; off < len; off += 64 * PAGE) {
        size_t n = len - off < 64 * PAGE ? len - off : 64 * PAGE;
        if (mincore(addr + off, n, vec) != 0 && errno == ENOMEM)
            return 0;
    }
    return 1;
}

/* Is any page of [addr, addr+len) mapped? (mincore per page) */
static int any_mapped(char *addr, size_t len)
{
    unsigned char v;
    for (size_t off = 0; off < len; off += PAGE)
        if (mincore(addr + off, PAGE, &v) == 0 || errno != ENOMEM)
            return 1;
    return 0;
}

static void add_hole(char *addr, size_t len, const char *what)
{
    if (nholes >= MAX_HOLES)
        return;
    struct hole *h = &holes[nholes++];
    h->addr = addr;
    h->len = len;
    h->live = 1;
    snprintf(h->what, sizeof h->what, "%s", what);
}

/* Drops holes that overlap [addr, addr+len) (a new mapping of ours). */
static void holes_taken(char *addr, size_t len)
{
    for (int i = 0; i < nholes; i++) {
        struct hole *h = &holes[i];
        if (h->live && h->addr < addr + len && addr < h->addr + h->len)
            h->live = 0;
    }
}

/* Before a checkpoint can see the state: drop holes something else mapped. */
static void holes_recheck(void)
{
    for (int i = 0; i < nholes; i++) {
        struct hole *h = &holes[i];
        if (h->live && any_mapped(h->addr, h->len)) {
            printf("note hole %s %p+%zu was mapped by someone else; not checked any more\n",
                   h->what, (void *)h->addr, h->len);
            h->live = 0;
        }
    }
}

static void tick_ticker(void)
{
    struct region *r = &regions[ticker_idx];
    r->seed = 0x7157ULL ^ (step_no << 20);
    fill(r, 0, r->len);
}

static char *map_anon(size_t len)
{
    char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        die("mmap");
    holes_taken(p, len);
    return p;
}

static const char *do_step(void)
{
    uint64_t c = (step_no - 1) / 7;
    switch ((step_no - 1) % 7) {
    case 0: {
        char *p = map_anon(8 * MIB);
        cur_anon = add_region(K_ANON, p, 8 * MIB, 0xA000 + c);
        fill(&regions[cur_anon], 0, 8 * MIB);
        return "mmap";
    }
    case 1: {
        struct region *r = &regions[cur_anon];
        size_t half = r->len / 2;
        if (munmap(r->addr, half) != 0)
            die("munmap");
        add_hole(r->addr, half, "munmap");
        r->addr += half;
        r->len -= half;
        r->base += half / 8;
        return "munmap";
    }
    case 2: {
        struct region *r = &regions[cur_anon];
        char *want = r->addr + r->len;
        char *b = mmap(want, PAGE, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
        if (b != MAP_FAILED) {
            /* (a kernel without MAP_FIXED_NOREPLACE may place it elsewhere:
             * it is a region all the same) */
            holes_taken(b, PAGE);
            int bi = add_region(K_BLOCKER, b, PAGE, 0xB000 + c);
            fill(&regions[bi], 0, PAGE);
        }
        size_t old = r->len;
        char *n = mremap(r->addr, old, 2 * old, MREMAP_MAYMOVE);
        if (n == MAP_FAILED)
            die("mremap");
        printf("note mremap %p+%zu -> %p+%zu (%s)\n", (void *)r->addr, old, (void *)n, 2 * old,
               n == r->addr ? "grown in place" : "moved");
        if (n != r->addr)
            add_hole(r->addr, old, "mremap-old");
        holes_taken(n, 2 * old);
        r->addr = n;
        r->len = 2 * old;
        fill(r, old, 2 * old);
        return "mremap";
    }
    case 3: {
        struct region *h = &regions[heap_idx];
        char *p = sbrk(4 * MIB);
        if (p == (void *)-1)
            die("sbrk(+4MiB)");
        if (p != h->addr + h->len) {
            printf("VERIFY FAILED sbrk returned %p, expected the break at %p\n", (void *)p,
                   (void *)(h->addr + h->len));
            fflush(stdout);
            exit(3);
        }
        holes_taken(p, 4 * MIB);
        size_t old = h->len;
        h->len += 4 * MIB;
        fill(h, old, h->len);
        return "sbrk+";
    }
    case 4: {
        struct region *h = &regions[heap_idx];
        if (sbrk(-(intptr_t)(2 * MIB)) == (void *)-1)
            die("sbrk(-2MiB)");
        h->len -= 2 * MIB;
        add_hole(h->addr + h->len, 2 * MIB, "sbrk-");
        return "sbrk-";
    }
    case 5: {
        struct region *r = &regions[cur_anon];
        size_t lo = 1 * MIB + 5 * PAGE, hi = lo + 1 * MIB + 3 * PAGE;
        if (madvise(r->addr + lo, hi - lo, MADV_DONTNEED) != 0)
            die("madvise(MADV_DONTNEED)");
        r->zlo = lo;
        r->zhi = hi;
        /* A private file mapping's discarded pages go back to the file's contents. */
        for (int i = nregions - 1; i >= 0; i--) {
            struct region *f = &regions[i];
            if (f->kind != K_FILE || !f->live)
                continue;
            size_t flo = 30 * PAGE, fhi = 37 * PAGE;
            if (madvise(f->addr + flo, fhi - flo, MADV_DONTNEED) != 0)
                die("madvise(MADV_DONTNEED) on a file mapping");
            f->zlo = flo;
            f->zhi = fhi;
            break;
        }
        return "dontneed";
    }
    case 6: {
        char path[4096];
        snprintf(path, sizeof path, "%s/map_changes.%d.%llu", dir, (int)getpid(),
                 (unsigned long long)c);
        int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (fd < 0)
            die(path);
        size_t len = 2 * MIB;
        static uint64_t buf[PAGE / 8];
        for (size_t off = 0; off < len; off += PAGE) {
            for (size_t j = 0; j < PAGE / 8; j++)
                buf[j] = pattern(0xF000 + c, off / 8 + j);
            if (write(fd, buf, PAGE) != (ssize_t)PAGE)
                die("write");
        }
        if (fsync(fd) != 0)
            die("fsync");
        char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED)
            die("mmap file");
        close(fd);
        holes_taken(p, len);
        int fi = add_region(K_FILE, p, len, 0xF000 + c);
        regions[fi].seed2 = 0xF800 + c;
        /* Verify what came from the file, then modify every third page. */
        struct region *r = &regions[fi];
        uint64_t *w = (uint64_t *)p;
        for (size_t j = 0; j < len / 8; j++)
            if (w[j] != pattern(r->seed, j))
                fail("file %s word %zu read %016llx right after mmap", path, j,
                     (unsigned long long)w[j]);
        for (size_t off = 0; off < len; off += 3 * PAGE)
            fill(r, off, off + PAGE);
        return "file";
    }
    }
    return "?";
}

static void verify(void)
{
    int n = 0;
    for (int i = 0; i < nregions; i++) {
        struct region *r = &regions[i];
        if (!r->live)
            continue;
        n++;
        if (!mapped(r->addr, r->len))
            fail("region %d %s %p+%zu is not mapped (mincore ENOMEM)", i, kind_name(r->kind),
                 (void *)r->addr, r->len);
        const uint64_t *w = (const uint64_t *)r->addr;
        for (size_t j = 0; j < r->len / 8; j++) {
            uint64_t want = expected(r, j);
            if (w[j] != want)
                fail("region %d %s %p+%zu word %zu (byte %zu) got %016llx want %016llx "
                     "step %llu",
                     i, kind_name(r->kind), (void *)r->addr, r->len, j, j * 8,
                     (unsigned long long)w[j], (unsigned long long)want,
                     (unsigned long long)step_no);
        }
    }
    int nh = 0;
    for (int i = 0; i < nholes; i++) {
        struct hole *h = &holes[i];
        if (!h->live)
            continue;
        nh++;
        if (any_mapped(h->addr, h->len))
            fail("hole %s %p+%zu (unmapped by the program) is mapped", h->what,
                 (void *)h->addr, h->len);
    }
    char *brk_now = sbrk(0);
    struct region *hp = &regions[heap_idx];
    if (brk_now != hp->addr + hp->len)
        fail("program break is %p, expected %p", (void *)brk_now, (void *)(hp->addr + hp->len));
    printf("verify ok regions %d holes %d step %llu\n", n, nh, (unsigned long long)step_no);
    fflush(stdout);
}

static void on_usr1(int sig)
{
    (void)sig;
    want_verify = 1;
}

static void on_usr2(int sig)
{
    (void)sig;
    want_step = 1;
}

static void on_fault(int sig, siginfo_t *si, void *uc)
{
    (void)uc;
    char msg[160];
    int n = snprintf(msg, sizeof msg, "VERIFY FAILED signal %d at address %p (step %llu)\n", sig,
                     si->si_addr, (unsigned long long)step_no);
    fflush(stdout);
    if (n > 0 && write(1, msg, (size_t)n) < 0) {
        /* nothing to do */
    }
    _exit(3);
}

int main(int argc, char **argv)
{
    int autostep = 0;
    if (argc > 1)
        dir = argv[1];
    if (argc > 2) {
        if (strcmp(argv[2], "auto") != 0) {
            fprintf(stderr, "usage: %s [DIR [auto]]\n", argv[0]);
            return 2;
        }
        autostep = 1;
    }
    setvbuf(stdout, outbuf, _IOLBF, sizeof outbuf);

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    sa.sa_handler = on_usr1;
    sigaction(SIGUSR1, &sa, NULL);
    sa.sa_handler = on_usr2;
    sigaction(SIGUSR2, &sa, NULL);
    sa.sa_handler = NULL;
    sa.sa_sigaction = on_fault;
    sa.sa_flags = SA_SIGINFO | SA_RESETHAND;
    sigaction(SIGSEGV, &sa, NULL);
    sigaction(SIGBUS, &sa, NULL);

    /* The heap region starts at the current break, page aligned. */
    char *b0 = sbrk(0);
    uintptr_t up = ((uintptr_t)b0 + PAGE - 1) & ~(PAGE - 1);
    if ((uintptr_t)b0 != up && sbrk((intptr_t)(up - (uintptr_t)b0)) == (void *)-1)
        die("sbrk(align)");
    heap_idx = add_region(K_HEAP, (char *)up, 0, 0x4EA9);

    char *t = map_anon(1 * MIB);
    ticker_idx = add_region(K_TICKER, t, 1 * MIB, 0);
    tick_ticker();

    printf("ready regions %d pid %d\n", nregions, (int)getpid());
    fflush(stdout);

    struct timespec nap = {0, 5 * 1000000L};
    int waited = 0;
    for (;;) {
        nanosleep(&nap, NULL);
        if (autostep && ++waited >= 60) {
            waited = 0;
            want_step = 1;
        }
        if (want_step) {
            want_step = 0;
            step_no++;
            const char *what = do_step();
            tick_ticker();
            holes_recheck();
            printf("step %llu %s ok\n", (unsigned long long)step_no, what);
            fflush(stdout);
        }
        if (want_verify) {
            want_verify = 0;
            verify();
        }
    }
}
