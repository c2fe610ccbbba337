/*
 * memfd_state: holds memfds through fds in every mode and checks, when asked, that each is as
 * it was set up: the name, size, sparse content (a hole stays a hole), offsets (a dup shares
 * one, a second description opened through /proc/self/fd has its own), the seals (grow/shrink,
 * write, future-write, the seal seal, a memfd made without MFD_ALLOW_SEALING, MFD_NOEXEC_SEAL
 * and its mode), and one memfd mapped shared by this process and held through an fd by a
 * forked child: a write by the child through its fd is seen in the parent's mapping, and a
 * write through the mapping is read through the fd.
 *
 * Prints "tick N" every 50 ms; on SIGUSR1 prints "state ok" or "INVARIANT <what>".
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#ifndef MFD_NOEXEC_SEAL
#define MFD_NOEXEC_SEAL 0x0008U
#endif
#ifndef F_SEAL_FUTURE_WRITE
#define F_SEAL_FUTURE_WRITE 0x0010
#endif
#ifndef F_SEAL_EXEC
#define F_SEAL_EXEC 0x0020
#endif

static volatile sig_atomic_t asked;
static void on_usr1(int s) { (void)s; asked = 1; }

static int bad;
static void invariant(const char *what, long a, long b)
{
    printf("INVARIANT %s: got %ld, want %ld\n", what, a, b);
    bad = 1;
}

#define MIB (1024L * 1024)
static int alpha, alpha_dup, alpha_other, beta, gamma_fd, delta, future, shared_fd;
static int to_kid[2], from_kid[2];
static char *map;

static void want_name(int fd, const char *name)
{
    char path[64], buf[256], want[256];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(path, buf, sizeof buf - 1);
    buf[n > 0 ? n : 0] = 0;
    snprintf(want, sizeof want, "/memfd:%s (deleted)", name);
    if (strcmp(buf, want)) {
        printf("INVARIANT name of fd %d: got %s, want %s\n", fd, buf, want);
        bad = 1;
    }
}

static void want_seals(const char *what, int fd, int want)
{
    int s = fcntl(fd, F_GET_SEALS);
    if (s != want) invariant(what, s, want);
}

static void want_bytes(const char *what, int fd, off_t at, const char *s)
{
    char buf[64] = {0};
    size_t n = strlen(s);
    if (pread(fd, buf, n, at) != (ssize_t)n || memcmp(buf, s, n)) {
        printf("INVARIANT %s: got \"%.*s\", want \"%s\"\n", what, (int)n, buf, s);
        bad = 1;
    }
}

static void set_up(void)
{
    lseek(alpha, 3, SEEK_SET);
    lseek(alpha_other, 7, SEEK_SET);
}

static void child(void)
{
    char c;
    for (;;) {
        if (read(to_kid[0], &c, 1) != 1) _exit(0);
        char r = pwrite(shared_fd, "kid", 3, 100) == 3 ? 'k' : 'n';
        if (write(from_kid[1], &r, 1) != 1) _exit(3);
    }
}

static void check(void)
{
    struct stat st;
    bad = 0;
    want_name(alpha, "alpha");
    want_name(beta, "beta");
    want_name(gamma_fd, "gamma");
    want_name(shared_fd, "shared");
    if (fstat(alpha, &st) || st.st_size != 2 * MIB) invariant("alpha size", st.st_size, 2 * MIB);
    want_bytes("alpha head", alpha, 0, "hello");
    want_bytes("alpha at 1 MiB", alpha, MIB, "tail");
    if (lseek(alpha_other, 0, SEEK_CUR) != 7) invariant("second description's offset", lseek(alpha_other, 0, SEEK_CUR), 7);
    if (lseek(alpha, 0, SEEK_CUR) != 3) invariant("alpha offset", lseek(alpha, 0, SEEK_CUR), 3);
    if (lseek(alpha_dup, 0, SEEK_CUR) != 3) invariant("dup shares the offset", lseek(alpha_dup, 0, SEEK_CUR), 3);
    if ((fcntl(alpha_other, F_GETFL) & O_ACCMODE) != O_RDONLY) invariant("second description read-only", fcntl(alpha_other, F_GETFL) & O_ACCMODE, O_RDONLY);
    if (lseek(alpha_other, 4096, SEEK_DATA) != MIB) invariant("alpha's hole", lseek(alpha_other, 4096, SEEK_DATA), MIB);
    lseek(alpha_other, 7, SEEK_SET);
    want_seals("alpha seals", alpha, F_SEAL_SHRINK | F_SEAL_GROW);
    if (ftruncate(alpha, MIB) != -1 || errno != EPERM) invariant("shrink sealed (errno)", errno, EPERM);
    want_seals("beta seals (no MFD_ALLOW_SEALING)", beta, F_SEAL_SEAL);
    if (fcntl(beta, F_ADD_SEALS, F_SEAL_GROW) != -1 || errno != EPERM) invariant("beta cannot be sealed (errno)", errno, EPERM);
    if (fstat(beta, &st) || (st.st_mode & 0777) != 0640) invariant("beta mode", st.st_mode & 0777, 0640);
    want_seals("gamma seals (MFD_NOEXEC_SEAL)", gamma_fd, F_SEAL_EXEC);
    if (fstat(gamma_fd, &st) || (st.st_mode & 0111)) invariant("gamma not executable", st.st_mode & 0777, 0666);
    want_seals("delta seals", delta, F_SEAL_WRITE | F_SEAL_SEAL);
    want_bytes("delta content", delta, 0, "frozen");
    if (pwrite(delta, "x", 1, 0) != -1 || errno != EPERM) invariant("delta write sealed (errno)", errno, EPERM);
    want_seals("future seals", future, F_SEAL_FUTURE_WRITE);
    if (pwrite(future, "x", 1, 0) != -1 || errno != EPERM) invariant("future write sealed (errno)", errno, EPERM);
    /* The mapping and the fds are one memfd. */
    memcpy(map + 50, "map", 3);
    want_bytes("written through the mapping, read through the fd", shared_fd, 50, "map");
    if (pwrite(shared_fd, "fdw", 3, 60) != 3 || memcmp(map + 60, "fdw", 3)) invariant("written through the fd, seen in the mapping", 0, 1);
    memset(map + 100, 0, 3);
    char r = 0;
    struct pollfd p = {from_kid[0], POLLIN, 0};
    if (write(to_kid[1], "?", 1) != 1 || poll(&p, 1, 5000) != 1 || read(from_kid[0], &r, 1) != 1 || r != 'k')
        invariant("child's write", r, 'k');
    if (memcmp(map + 100, "kid", 3)) invariant("the child's write through its fd seen in the mapping", map[100], 'k');
    printf(bad ? "state bad\n" : "state ok\n");
}

static int make(const char *name, unsigned flags)
{
    int fd = memfd_create(name, flags);
    if (fd < 0) {
        perror(name);
        exit(2);
    }
    return fd;
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    alpha = make("alpha", MFD_ALLOW_SEALING);
    if (ftruncate(alpha, 2 * MIB) || pwrite(alpha, "hello", 5, 0) != 5 || pwrite(alpha, "tail", 4, MIB) != 4 ||
        fcntl(alpha, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW)) {
        perror("alpha");
        return 2;
    }
    alpha_dup = dup(alpha);
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", alpha);
    alpha_other = open(path, O_RDONLY);
    beta = make("beta", MFD_CLOEXEC);
    fchmod(beta, 0640);
    gamma_fd = make("gamma", MFD_NOEXEC_SEAL);
    delta = make("delta", MFD_ALLOW_SEALING);
    if (write(delta, "frozen", 6) != 6 || fcntl(delta, F_ADD_SEALS, F_SEAL_WRITE | F_SEAL_SEAL)) {
        perror("delta");
        return 2;
    }
    future = make("future", MFD_ALLOW_SEALING);
    if (write(future, "later", 5) != 5 || fcntl(future, F_ADD_SEALS, F_SEAL_FUTURE_WRITE)) {
        perror("future");
        return 2;
    }
    shared_fd = make("shared", 0);
    if (ftruncate(shared_fd, 4096) || alpha_other < 0) {
        perror("shared");
        return 2;
    }
    map = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, shared_fd, 0);
    if (map == MAP_FAILED || pipe(to_kid) || pipe(from_kid)) {
        perror("mmap");
        return 2;
    }
    pid_t kid = fork();
    if (kid == 0) {
        munmap(map, 4096);
        child();
    }
    signal(SIGUSR1, on_usr1);
    set_up();
    printf("child %d pid %d\n", (int)kid, (int)getpid());
    struct timespec ts = {0, 50000000L};
    for (unsigned long long n = 1;; n++) {
        if (asked) {
            asked = 0;
            check();
            set_up();
        }
        printf("tick %llu\n", n);
        nanosleep(&ts, NULL);
    }
}
