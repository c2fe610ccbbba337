/*
 * sweep DIR: one root program that sets as many kinds of state at once as it can, and checks,
 * when asked, that each is exactly as it was (issue 12, acceptance 2):
 *   process   capability sets narrowed (CAP_SYS_BOOT out of the bounding set; CAP_SYS_BOOT,
 *             CAP_SYS_MODULE, CAP_MKNOD out of permitted and effective; CAP_NET_BIND_SERVICE
 *             inheritable and ambient), SCHED_BATCH with nice 5, oom_score_adj 123,
 *             supplementary groups 11 12, THP disabled, timer slack 55555 ns, umask 027,
 *             RLIMIT_NOFILE 1000/2000, the working directory DIR, securebits KEEP_CAPS and
 *             NO_SETUID_FIXUP, machine-check kill policy early, speculative store bypass
 *             disabled, personality ADDR_NO_RANDOMIZE|UNAME26, its name;
 *   locks     a POSIX write lock on DIR/posix bytes 10-29, an OFD write lock on DIR/ofd bytes
 *             0-4, a shared flock on DIR/flock (checked from a child with F_GETLK,
 *             F_OFD_GETLK and flock(LOCK_NB));
 *   timers    a POSIX timer (CLOCK_BOOTTIME, no signal) armed 1000 s with a 7 s interval;
 *   signals   SIGRTMIN+3 queued 3 times for the process (values 1, 2, 3) and SIGUSR2 for the
 *             main thread, all blocked;
 *   pipe      a non-blocking pipe (O_NONBLOCK on both ends, the read end close-on-exec) of
 *             128 KiB holding 1000 known bytes;
 *   sockets   a Unix stream pair with SO_RCVBUF, SO_SNDBUF, SO_PASSCRED, SO_RCVTIMEO,
 *             SO_SNDTIMEO, SO_PEEK_OFF set and 300 bytes queued; a TCP listener on 127.0.0.1
 *             with SO_REUSEADDR, SO_KEEPALIVE, SO_RCVBUF, SO_MARK, SO_PRIORITY, TCP_NODELAY.
 * Everything readable is taken as a fingerprint (key=value lines) once set up and compared
 * line by line on each check; then the locks, the queued signals and the queued bytes are
 * checked by using them (and put back).
 *
 * With "nosetpcap" after DIR, CAP_SETPCAP is dropped too (the securebits could then not be set
 * again: the checkpoint refuses).
 *
 * Prints "tick N" every 50 ms; on SIGUSR1 "state ok" or "INVARIANT <what>" lines and
 * "state bad".
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/capability.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/personality.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef SO_PEEK_OFF
#define SO_PEEK_OFF 42
#endif

static volatile sig_atomic_t asked;
static void on_usr1(int s) { (void)s; asked = 1; }

static int bad;
static int lk_posix, lk_ofd, lk_flock, pipe_r, pipe_w, unix_a, unix_b, listener;
static timer_t timer;
static char want[16384];

static void die(const char *what)
{
    perror(what);
    exit(2);
}

static void invariant(const char *what, long long got, long long wantv)
{
    printf("INVARIANT %s: got %lld, want %lld\n", what, got, wantv);
    bad = 1;
}

struct sched_attr_v1 {
    uint32_t size, policy;
    uint64_t flags;
    int32_t nice;
    uint32_t priority;
    uint64_t runtime, deadline, period;
    uint32_t util_min, util_max;
};

static void add(char *out, const char *key, long long v)
{
    char line[128];
    snprintf(line, sizeof line, "%s=%lld\n", key, v);
    strcat(out, line);
}

static void add_status(char *out, const char *key)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[512];
    while (f && fgets(line, sizeof line, f))
        if (strncmp(line, key, strlen(key)) == 0 && line[strlen(key)] == ':') strcat(out, line);
    if (f) fclose(f);
}

static long long opt(int fd, int level, int name)
{
    int v = -1;
    socklen_t l = sizeof v;
    if (getsockopt(fd, level, name, &v, &l)) return -errno;
    return v;
}

static long long opt_tv(int fd, int name)
{
    struct timeval tv = {0, 0};
    socklen_t l = sizeof tv;
    if (getsockopt(fd, SOL_SOCKET, name, &tv, &l)) return -errno;
    return tv.tv_sec * 1000000LL + tv.tv_usec;
}

static long long queued(int fd)
{
    int n = -1;
    if (ioctl(fd, FIONREAD, &n)) return -errno;
    return n;
}

/* Everything readable without changing it, as key=value lines. */
static void fingerprint(char *out)
{
    out[0] = 0;
    static const char *status[] = {"CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "Groups", "NoNewPrivs",
                                   "Seccomp", "SigBlk", "SigIgn", "SigCgt", "ShdPnd", "SigPnd", "THP_enabled",
                                   "Umask", "Uid", "Gid", "Cpus_allowed_list", "Mems_allowed_list",
                                   "Speculation_Store_Bypass", "SpeculationIndirectBranch", "untag_mask"};
    for (unsigned i = 0; i < sizeof status / sizeof status[0]; i++) add_status(out, status[i]);
    struct sched_attr_v1 a;
    memset(&a, 0, sizeof a);
    syscall(SYS_sched_getattr, 0, &a, sizeof a, 0);
    add(out, "sched.policy", a.policy);
    add(out, "sched.nice", a.nice);
    add(out, "sched.flags", (long long)a.flags);
    add(out, "getpriority", getpriority(PRIO_PROCESS, 0));
    add(out, "keepcaps", prctl(PR_GET_KEEPCAPS, 0, 0, 0, 0));
    add(out, "securebits", prctl(PR_GET_SECUREBITS, 0, 0, 0, 0));
    add(out, "io_flusher", prctl(PR_GET_IO_FLUSHER, 0, 0, 0, 0));
    add(out, "mce_kill", prctl(PR_MCE_KILL_GET, 0, 0, 0, 0));
    add(out, "spec_store_bypass", prctl(PR_GET_SPECULATION_CTRL, PR_SPEC_STORE_BYPASS, 0, 0, 0));
    add(out, "spec_indirect_branch", prctl(PR_GET_SPECULATION_CTRL, PR_SPEC_INDIRECT_BRANCH, 0, 0, 0));
    add(out, "personality", personality(0xffffffff));
    char comm[32] = "";
    prctl(PR_GET_NAME, comm, 0, 0, 0);
    strcat(out, "comm=");
    strcat(out, comm);
    strcat(out, "\n");
    add(out, "timerslack", prctl(PR_GET_TIMERSLACK, 0, 0, 0, 0));
    add(out, "thp_disable", prctl(PR_GET_THP_DISABLE, 0, 0, 0, 0));
    add(out, "dumpable", prctl(PR_GET_DUMPABLE, 0, 0, 0, 0));
    FILE *f = fopen("/proc/self/oom_score_adj", "r");
    long long oom = -99999;
    if (f && fscanf(f, "%lld", &oom) != 1) oom = -99998;
    if (f) fclose(f);
    add(out, "oom_score_adj", oom);
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    add(out, "nofile.cur", (long long)rl.rlim_cur);
    add(out, "nofile.max", (long long)rl.rlim_max);
    char cwd[1024] = "";
    if (!getcwd(cwd, sizeof cwd)) strcpy(cwd, "?");
    strcat(out, "cwd=");
    strcat(out, cwd);
    strcat(out, "\n");

    add(out, "pipe.size", fcntl(pipe_r, F_GETPIPE_SZ));
    add(out, "pipe.r.fl", fcntl(pipe_r, F_GETFL));
    add(out, "pipe.w.fl", fcntl(pipe_w, F_GETFL));
    add(out, "pipe.r.fd", fcntl(pipe_r, F_GETFD));
    add(out, "pipe.w.fd", fcntl(pipe_w, F_GETFD));
    add(out, "pipe.queued", queued(pipe_r));

    static const struct { const char *name; int opt; } uopts[] = {
        {"rcvbuf", SO_RCVBUF}, {"sndbuf", SO_SNDBUF}, {"passcred", SO_PASSCRED}, {"peek_off", SO_PEEK_OFF}};
    char key[64];
    for (int s = 0; s < 2; s++) {
        int fd = s ? unix_b : unix_a;
        for (unsigned i = 0; i < sizeof uopts / sizeof uopts[0]; i++) {
            snprintf(key, sizeof key, "unix%d.%s", s, uopts[i].name);
            add(out, key, opt(fd, SOL_SOCKET, uopts[i].opt));
        }
        snprintf(key, sizeof key, "unix%d.rcvtimeo", s);
        add(out, key, opt_tv(fd, SO_RCVTIMEO));
        snprintf(key, sizeof key, "unix%d.sndtimeo", s);
        add(out, key, opt_tv(fd, SO_SNDTIMEO));
        snprintf(key, sizeof key, "unix%d.queued", s);
        add(out, key, queued(fd));
        snprintf(key, sizeof key, "unix%d.fl", s);
        add(out, key, fcntl(fd, F_GETFL));
    }
    add(out, "tcp.reuseaddr", opt(listener, SOL_SOCKET, SO_REUSEADDR));
    add(out, "tcp.keepalive", opt(listener, SOL_SOCKET, SO_KEEPALIVE));
    add(out, "tcp.rcvbuf", opt(listener, SOL_SOCKET, SO_RCVBUF));
    add(out, "tcp.mark", opt(listener, SOL_SOCKET, SO_MARK));
    add(out, "tcp.priority", opt(listener, SOL_SOCKET, SO_PRIORITY));
    add(out, "tcp.nodelay", opt(listener, IPPROTO_TCP, TCP_NODELAY));
    add(out, "tcp.accepting", opt(listener, SOL_SOCKET, SO_ACCEPTCONN));
    struct sockaddr_in sa;
    socklen_t sl = sizeof sa;
    getsockname(listener, (void *)&sa, &sl);
    add(out, "tcp.port", ntohs(sa.sin_port));
    add(out, "tcp.addr", ntohl(sa.sin_addr.s_addr));

    struct itimerspec its;
    timer_gettime(timer, &its);
    add(out, "timer.interval_ns", its.it_interval.tv_sec * 1000000000LL + its.it_interval.tv_nsec);
    add(out, "timer.armed", its.it_value.tv_sec > 0 || its.it_value.tv_nsec > 0);
}

/* Differences between two fingerprints, as INVARIANT lines. */
static void compare(const char *was, const char *now)
{
    char a[16384], b[16384];
    strcpy(a, was);
    strcpy(b, now);
    char *sa, *sb;
    char *la = strtok_r(a, "\n", &sa), *lb = strtok_r(b, "\n", &sb);
    while (la || lb) {
        if (!la || !lb || strcmp(la, lb)) {
            printf("INVARIANT was [%s], now [%s]\n", la ? la : "", lb ? lb : "");
            bad = 1;
        }
        la = la ? strtok_r(NULL, "\n", &sa) : NULL;
        lb = lb ? strtok_r(NULL, "\n", &sb) : NULL;
    }
}

static int open_here(const char *name)
{
    int fd = open(name, O_RDWR | O_CREAT, 0644);
    if (fd < 0) die(name);
    return fd;
}

static void set_lock(int fd, int cmd, off_t start, off_t len)
{
    struct flock l = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = start, .l_len = len};
    if (fcntl(fd, cmd, &l)) die("lock");
}

static struct flock meets(int fd, int cmd, short type, off_t start, off_t len)
{
    struct flock l = {.l_type = type, .l_whence = SEEK_SET, .l_start = start, .l_len = len};
    if (fcntl(fd, cmd, &l) < 0) l.l_type = -1;
    return l;
}

/* In a child: tests the locks as another process sees them; exit status 1 when one differs. */
static void locks_from_outside(pid_t holder)
{
    int p = open_here("posix");
    struct flock l = meets(p, F_GETLK, F_WRLCK, 0, 100);
    if (l.l_type != F_WRLCK || l.l_pid != holder || l.l_start != 10 || l.l_len != 20)
        invariant("POSIX write lock on 10-29 (start)", l.l_start, 10);
    int o = open_here("ofd");
    l = meets(o, F_OFD_GETLK, F_RDLCK, 0, 100);
    if (l.l_type != F_WRLCK || l.l_start != 0 || l.l_len != 5) invariant("OFD write lock on 0-4 (len)", l.l_len, 5);
    int f = open_here("flock");
    if (flock(f, LOCK_SH | LOCK_NB)) invariant("a shared flock beside the shared one (errno)", errno, 0);
    flock(f, LOCK_UN);
    if (flock(f, LOCK_EX | LOCK_NB) == 0 || errno != EWOULDBLOCK) invariant("an exclusive flock refused (errno)", errno, EWOULDBLOCK);
    fflush(stdout);
    _exit(bad);
}

static char pipe_bytes[1000], unix_bytes[300];

static void fill_queues(void)
{
    for (int i = 0; i < 3; i++) sigqueue(getpid(), SIGRTMIN + 3, (union sigval){.sival_int = i + 1});
    syscall(SYS_tgkill, getpid(), (pid_t)syscall(SYS_gettid), SIGUSR2);
    if (write(pipe_w, pipe_bytes, sizeof pipe_bytes) != sizeof pipe_bytes) die("pipe write");
    if (write(unix_b, unix_bytes, sizeof unix_bytes) != sizeof unix_bytes) die("unix write");
}

static void check(void)
{
    bad = 0;
    char now[16384];
    fingerprint(now);
    compare(want, now);

    pid_t me = getpid(), c = fork();
    if (c == 0) locks_from_outside(me);
    int st = 0;
    if (c < 0 || waitpid(c, &st, 0) != c || !WIFEXITED(st)) invariant("lock checking child", st, 0);
    else if (WEXITSTATUS(st)) bad = 1;

    sigset_t s;
    sigemptyset(&s);
    sigaddset(&s, SIGRTMIN + 3);
    struct timespec zero = {0, 0};
    siginfo_t si;
    for (int i = 0; i < 3; i++) {
        if (sigtimedwait(&s, &si, &zero) != SIGRTMIN + 3) invariant("SIGRTMIN+3 pending (copy)", i, 3);
        else if (si.si_value.sival_int != i + 1 || si.si_code != SI_QUEUE) invariant("SIGRTMIN+3 value", si.si_value.sival_int, i + 1);
    }
    if (sigtimedwait(&s, &si, &zero) >= 0) invariant("a fourth SIGRTMIN+3", si.si_value.sival_int, 0);
    sigemptyset(&s);
    sigaddset(&s, SIGUSR2);
    if (sigtimedwait(&s, &si, &zero) != SIGUSR2) invariant("SIGUSR2 pending on the main thread", 0, 1);

    char buf[1000];
    if (read(pipe_r, buf, sizeof buf) != sizeof buf || memcmp(buf, pipe_bytes, sizeof buf)) invariant("the pipe's bytes", 0, 1);
    if (read(pipe_r, buf, 1) != -1 || errno != EAGAIN) invariant("the pipe then empty (errno)", errno, EAGAIN);
    if (read(unix_a, buf, sizeof unix_bytes) != sizeof unix_bytes || memcmp(buf, unix_bytes, sizeof unix_bytes))
        invariant("the socket's bytes", 0, 1);

    struct itimerspec its;
    timer_gettime(timer, &its);
    if (its.it_value.tv_sec < 900 || its.it_value.tv_sec > 1000) invariant("timer seconds left", its.it_value.tv_sec, 1000);
    fill_queues();
    printf(bad ? "state bad\n" : "state ok\n");
}

static void narrow_caps(int keep_setpcap)
{
    if (prctl(PR_CAPBSET_DROP, CAP_SYS_BOOT, 0, 0, 0)) die("PR_CAPBSET_DROP");
    struct __user_cap_header_struct h = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct d[2];
    if (syscall(SYS_capget, &h, d)) die("capget");
    uint32_t drop = (1u << CAP_SYS_BOOT) | (1u << CAP_SYS_MODULE) | (1u << CAP_MKNOD);
    if (!keep_setpcap) drop |= 1u << CAP_SETPCAP;
    d[0].permitted &= ~drop;
    d[0].effective &= ~drop;
    d[0].inheritable = 1u << CAP_NET_BIND_SERVICE;
    d[1].inheritable = 0;
    if (syscall(SYS_capset, &h, d)) die("capset");
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_NET_BIND_SERVICE, 0, 0)) die("ambient");
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc < 2) {
        fprintf(stderr, "usage: sweep DIR\n");
        return 2;
    }
    if (chdir(argv[1])) die("chdir");
    for (unsigned i = 0; i < sizeof pipe_bytes; i++) pipe_bytes[i] = (char)(i * 7 + 1);
    for (unsigned i = 0; i < sizeof unix_bytes; i++) unix_bytes[i] = (char)(i * 13 + 5);

    gid_t groups[] = {11, 12};
    if (setgroups(2, groups)) die("setgroups");
    struct sched_param sp = {0};
    if (sched_setscheduler(0, SCHED_BATCH, &sp)) die("SCHED_BATCH");
    if (setpriority(PRIO_PROCESS, 0, 5)) die("nice");
    FILE *f = fopen("/proc/self/oom_score_adj", "w");
    if (!f || fprintf(f, "123") < 0 || fclose(f)) die("oom_score_adj");
    if (prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0)) die("thp");
    if (prctl(PR_SET_TIMERSLACK, 55555)) die("timerslack");
    umask(027);
    /* SECBIT_KEEP_CAPS | SECBIT_NO_SETUID_FIXUP */
    if (prctl(PR_SET_SECUREBITS, (1 << 4) | (1 << 2), 0, 0, 0)) die("securebits");
    if (prctl(PR_MCE_KILL, PR_MCE_KILL_SET, PR_MCE_KILL_EARLY, 0, 0)) die("mce_kill");
    prctl(PR_SET_SPECULATION_CTRL, PR_SPEC_STORE_BYPASS, PR_SPEC_DISABLE, 0, 0);
    if (personality(ADDR_NO_RANDOMIZE | UNAME26) < 0) die("personality");
    if (prctl(PR_SET_NAME, "sweeper", 0, 0, 0)) die("comm");
    struct rlimit rl = {1000, 2000};
    if (setrlimit(RLIMIT_NOFILE, &rl)) die("RLIMIT_NOFILE");

    lk_posix = open_here("posix");
    if (ftruncate(lk_posix, 100)) die("ftruncate");
    set_lock(lk_posix, F_SETLK, 10, 20);
    lk_ofd = open_here("ofd");
    set_lock(lk_ofd, F_OFD_SETLK, 0, 5);
    lk_flock = open_here("flock");
    if (flock(lk_flock, LOCK_SH | LOCK_NB)) die("flock");

    struct sigevent none = {.sigev_notify = SIGEV_NONE};
    if (timer_create(CLOCK_BOOTTIME, &none, &timer)) die("timer_create");
    struct itimerspec its = {{7, 0}, {1000, 0}};
    if (timer_settime(timer, 0, &its, NULL)) die("timer_settime");

    sigset_t blocked;
    sigemptyset(&blocked);
    sigaddset(&blocked, SIGRTMIN + 3);
    sigaddset(&blocked, SIGUSR2);
    sigprocmask(SIG_BLOCK, &blocked, NULL);

    int p[2];
    if (pipe2(p, O_NONBLOCK)) die("pipe2");
    pipe_r = p[0], pipe_w = p[1];
    if (fcntl(pipe_r, F_SETFD, FD_CLOEXEC)) die("FD_CLOEXEC");
    if (fcntl(pipe_w, F_SETPIPE_SZ, 128 * 1024) < 0) die("F_SETPIPE_SZ");

    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv)) die("socketpair");
    unix_a = sv[0], unix_b = sv[1];
    int v = 50000;
    setsockopt(unix_a, SOL_SOCKET, SO_RCVBUF, &v, sizeof v);
    v = 70000;
    setsockopt(unix_b, SOL_SOCKET, SO_SNDBUF, &v, sizeof v);
    v = 1;
    setsockopt(unix_a, SOL_SOCKET, SO_PASSCRED, &v, sizeof v);
    v = 0;
    if (setsockopt(unix_a, SOL_SOCKET, SO_PEEK_OFF, &v, sizeof v)) die("SO_PEEK_OFF");
    struct timeval tv = {2, 250000};
    setsockopt(unix_a, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    tv.tv_sec = 4;
    setsockopt(unix_b, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);

    listener = socket(AF_INET, SOCK_STREAM, 0);
    v = 1;
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &v, sizeof v);
    setsockopt(listener, SOL_SOCKET, SO_KEEPALIVE, &v, sizeof v);
    setsockopt(listener, IPPROTO_TCP, TCP_NODELAY, &v, sizeof v);
    v = 60000;
    setsockopt(listener, SOL_SOCKET, SO_RCVBUF, &v, sizeof v);
    v = 17;
    setsockopt(listener, SOL_SOCKET, SO_MARK, &v, sizeof v);
    v = 4;
    setsockopt(listener, SOL_SOCKET, SO_PRIORITY, &v, sizeof v);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (bind(listener, (void *)&a, sizeof a) || listen(listener, 8)) die("listener");

    fill_queues();
    narrow_caps(!(argc > 2 && strcmp(argv[2], "nosetpcap") == 0));
    signal(SIGUSR1, on_usr1);
    fingerprint(want);
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
