/*
 * seccomp_state: threads and processes under seccomp filters, as root, and checks, when asked,
 * that each runs under exactly the filters it installed or inherited:
 *   main thread  F1 (getpriority(PRIO_USER, 4242) fails with EPERM), installed without
 *                no_new_privs (root's CAP_SYS_ADMIN allows it), before the worker starts;
 *                then F3 (sched_get_priority_max(777) fails with ENOTSUP), its own only.
 *   worker       inherits F1; sets no_new_privs and adds F2 (getpgid(-4242) fails with
 *                EACCES) with SECCOMP_FILTER_FLAG_LOG.
 *   child        forked after F1 and F3 (inherits both, so does its interposer thread); sets
 *                no_new_privs, adds F4 (getsid(-4242) fails with EXDEV) to all its threads
 *                with SECCOMP_FILTER_FLAG_TSYNC, then drops to uid/gid 65534 (no capability
 *                left: only no_new_privs lets a filter be installed).
 *   inspector    a child forked before any filter (PTRACE_SECCOMP_GET_FILTER wants a reader
 *                without seccomp): reads the filters of a thread with ptrace, programs and
 *                flags, for the main process to compare with what it installed.
 * Each thread checks the calls' errno (and that the other threads' filters are not its own),
 * `Seccomp:`, `Seccomp_filters:` and `NoNewPrivs:` of every thread, and the filter programs
 * and flags byte for byte through the inspector.
 * Prints "tick N" every 50 ms; on SIGUSR1 "state ok" or "INVARIANT <what>" lines.
 *
 * With "shared", the main thread instead installs F1 for every thread at once
 * (SECCOMP_FILTER_FLAG_TSYNC), after the worker started, and each check installs one more
 * (allow-everything) filter the same way, which the kernel takes only while the threads still
 * share their filters, the same kernel objects: restored copies would make it fail.
 *
 * Refused modes (the checkpoint must name the thread): "strict" (a thread in
 * SECCOMP_MODE_STRICT, blocked in read), "notify" (a filter returning SECCOMP_RET_USER_NOTIF,
 * installed with a listener), "unprivileged" (a filter, then uid 65534 without
 * no_new_privs). Each prints "refused thread TID" once set up.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <grp.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef PTRACE_SECCOMP_GET_FILTER
#define PTRACE_SECCOMP_GET_FILTER 0x420c
#endif
#ifndef PTRACE_SECCOMP_GET_METADATA
#define PTRACE_SECCOMP_GET_METADATA 0x420d
#endif

#define NR_OFF offsetof(struct seccomp_data, nr)
#define ARCH_OFF offsetof(struct seccomp_data, arch)
#define ARG0_OFF offsetof(struct seccomp_data, args[0])
#define ARG1_OFF offsetof(struct seccomp_data, args[1])
#define LD(off) BPF_STMT(BPF_LD | BPF_W | BPF_ABS, (off))
#define JEQ(k, jt, jf) BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (k), (jt), (jf))
#define RET(k) BPF_STMT(BPF_RET | BPF_K, (k))
#define MINUS_4242 ((uint32_t)-4242)

/* getpriority(PRIO_USER, 4242) -> EPERM, on x86-64 only. */
static struct sock_filter f1[] = {
    LD(ARCH_OFF), JEQ(AUDIT_ARCH_X86_64, 0, 7), LD(NR_OFF), JEQ(SYS_getpriority, 0, 5), LD(ARG0_OFF),
    JEQ(PRIO_USER, 0, 3), LD(ARG1_OFF), JEQ(4242, 0, 1), RET(SECCOMP_RET_ERRNO | EPERM), RET(SECCOMP_RET_ALLOW),
};
/* getpgid(-4242) -> EACCES. */
static struct sock_filter f2[] = {
    LD(NR_OFF), JEQ(SYS_getpgid, 0, 3), LD(ARG0_OFF), JEQ(MINUS_4242, 0, 1), RET(SECCOMP_RET_ERRNO | EACCES),
    RET(SECCOMP_RET_ALLOW),
};
/* sched_get_priority_max(777) -> ENOTSUP. */
static struct sock_filter f3[] = {
    LD(NR_OFF), JEQ(SYS_sched_get_priority_max, 0, 3), LD(ARG0_OFF), JEQ(777, 0, 1),
    RET(SECCOMP_RET_ERRNO | ENOTSUP), RET(SECCOMP_RET_ALLOW),
};
/* getsid(-4242) -> EXDEV. */
static struct sock_filter f4[] = {
    LD(NR_OFF), JEQ(SYS_getsid, 0, 3), LD(ARG0_OFF), JEQ(MINUS_4242, 0, 1), RET(SECCOMP_RET_ERRNO | EXDEV),
    RET(SECCOMP_RET_ALLOW),
};
/* getsid(-4242) -> a supervisor (refused mode "notify"). */
static struct sock_filter fnotify[] = {
    LD(NR_OFF), JEQ(SYS_getsid, 0, 1), RET(SECCOMP_RET_USER_NOTIF), RET(SECCOMP_RET_ALLOW),
};

#define N(f) (sizeof(f) / sizeof((f)[0]))

struct want {
    struct sock_filter *prog;
    unsigned len;
    unsigned flags;
};

static volatile sig_atomic_t asked;
static void on_usr1(int s) { (void)s; asked = 1; }

static int bad;
static void invariant(const char *what, long long got, long long want)
{
    printf("INVARIANT %s: got %lld, want %lld\n", what, got, want);
    bad = 1;
}

static void die(const char *what)
{
    perror(what);
    exit(2);
}

static void install(struct sock_filter *prog, unsigned len, unsigned flags)
{
    struct sock_fprog p = {.len = len, .filter = prog};
    if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, flags, &p)) die("seccomp");
}

/* The errno of a raw system call that must fail (0 when it succeeds). */
static int err_of(long r) { return r < 0 ? errno : 0; }
static int e_getpriority(void) { return err_of(syscall(SYS_getpriority, PRIO_USER, 4242)); }
static int e_getpgid(void) { return err_of(syscall(SYS_getpgid, -4242)); }
static int e_prio_max(void) { return err_of(syscall(SYS_sched_get_priority_max, 777)); }
static int e_getsid(void) { return err_of(syscall(SYS_getsid, -4242)); }

/* `key` of /proc/PID/task/TID/status, -1 when unreadable. */
static long status_field(pid_t pid, pid_t tid, const char *key)
{
    char p[96], line[256];
    snprintf(p, sizeof p, "/proc/%d/task/%d/status", (int)pid, (int)tid);
    FILE *f = fopen(p, "r");
    long v = -1;
    size_t n = strlen(key);
    while (f && fgets(line, sizeof line, f))
        if (strncmp(line, key, n) == 0 && line[n] == ':') v = atol(line + n + 1);
    if (f) fclose(f);
    return v;
}

/* Every thread of `pid` but `skip`, at most `max`; how many. */
static int other_threads(pid_t pid, pid_t skip, pid_t *out, int max)
{
    char p[64];
    snprintf(p, sizeof p, "/proc/%d/task", (int)pid);
    DIR *d = opendir(p);
    int n = 0;
    struct dirent *e;
    while (d && (e = readdir(d)) && n < max) {
        pid_t t = atoi(e->d_name);
        if (t > 0 && t != skip) out[n++] = t;
    }
    if (d) closedir(d);
    return n;
}

static void check_thread(const char *who, pid_t pid, pid_t tid, long mode, long filters, long nnp)
{
    char what[128];
    snprintf(what, sizeof what, "%s Seccomp", who);
    if (status_field(pid, tid, "Seccomp") != mode) invariant(what, status_field(pid, tid, "Seccomp"), mode);
    snprintf(what, sizeof what, "%s Seccomp_filters", who);
    if (status_field(pid, tid, "Seccomp_filters") != filters)
        invariant(what, status_field(pid, tid, "Seccomp_filters"), filters);
    snprintf(what, sizeof what, "%s NoNewPrivs", who);
    if (status_field(pid, tid, "NoNewPrivs") != nnp) invariant(what, status_field(pid, tid, "NoNewPrivs"), nnp);
}

static void check_errno(const char *what, int got, int want)
{
    if (got != want) invariant(what, got, want);
}

/* ---- inspector: reads a thread's filters with ptrace ---- */

static int insp_req[2], insp_ans[2];

static int read_full(int fd, void *buf, size_t len)
{
    char *b = buf;
    while (len) {
        ssize_t n = read(fd, b, len);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return -1;
        b += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Answers, per tid asked: the number of filters (or -errno), then per filter its flags, its
 * length and its instructions. */
static void inspector(void)
{
    static struct sock_filter buf[BPF_MAXINSNS];
    pid_t tid;
    while (read_full(insp_req[0], &tid, sizeof tid) == 0) {
        int count = 0;
        static char out[1 << 16];
        size_t used = sizeof count;
        if (ptrace(PTRACE_SEIZE, tid, 0, 0) || ptrace(PTRACE_INTERRUPT, tid, 0, 0)) {
            count = -errno;
        } else {
            int st;
            waitpid(tid, &st, __WALL);
            for (;; count++) {
                long n = ptrace(PTRACE_SECCOMP_GET_FILTER, tid, count, buf);
                if (n < 0) {
                    if (errno != ENOENT) count = -errno;
                    break;
                }
                struct { uint64_t off, flags; } md = {(uint64_t)count, 0};
                if (ptrace(PTRACE_SECCOMP_GET_METADATA, tid, sizeof md, &md) < 0) {
                    count = -errno;
                    break;
                }
                unsigned flags = (unsigned)md.flags, len = (unsigned)n;
                if (used + 8 + len * sizeof buf[0] > sizeof out) break;
                memcpy(out + used, &flags, 4);
                memcpy(out + used + 4, &len, 4);
                memcpy(out + used + 8, buf, len * sizeof buf[0]);
                used += 8 + len * sizeof buf[0];
            }
            ptrace(PTRACE_DETACH, tid, 0, 0);
        }
        memcpy(out, &count, sizeof count);
        if (write(insp_ans[1], out, used) != (ssize_t)used) _exit(3);
    }
    _exit(0);
}

/* Compares what the inspector reads of `tid` with `want` (oldest first). */
static void check_filters(const char *who, pid_t tid, const struct want *want, int n)
{
    static struct sock_filter got[BPF_MAXINSNS];
    char what[128];
    int count;
    if (write(insp_req[1], &tid, sizeof tid) != sizeof tid || read_full(insp_ans[0], &count, sizeof count)) {
        snprintf(what, sizeof what, "%s: the inspector answers", who);
        invariant(what, 0, 1);
        return;
    }
    snprintf(what, sizeof what, "%s filters read with ptrace (or -errno)", who);
    if (count != n) invariant(what, count, n);
    for (int i = 0; i < count; i++) {
        unsigned hdr[2];
        if (read_full(insp_ans[0], hdr, sizeof hdr) || hdr[1] > BPF_MAXINSNS ||
            read_full(insp_ans[0], got, hdr[1] * sizeof got[0])) {
            snprintf(what, sizeof what, "%s: the inspector's answer", who);
            invariant(what, 0, 1);
            return;
        }
        if (i >= n) continue;
        snprintf(what, sizeof what, "%s filter %d flags", who, i);
        if (hdr[0] != want[i].flags) invariant(what, hdr[0], want[i].flags);
        snprintf(what, sizeof what, "%s filter %d program (length, then same bytes)", who, i);
        if (hdr[1] != want[i].len) invariant(what, hdr[1], want[i].len);
        else if (memcmp(got, want[i].prog, hdr[1] * sizeof got[0])) invariant(what, 0, 1);
    }
}

/* ---- the worker thread ---- */

static volatile pid_t worker_tid;
static volatile int round_asked, round_done;
static volatile int w_prio, w_pgid, w_max, w_sid;

static void *worker(void *arg)
{
    (void)arg;
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)) die("no_new_privs worker");
    install(f2, N(f2), SECCOMP_FILTER_FLAG_LOG);
    worker_tid = gettid();
    struct timespec ts = {0, 5000000L};
    for (;;) {
        if (round_done != round_asked) {
            w_prio = e_getpriority();
            w_pgid = e_getpgid();
            w_max = e_prio_max();
            w_sid = e_getsid();
            __atomic_store_n(&round_done, round_asked, __ATOMIC_SEQ_CST);
        }
        nanosleep(&ts, NULL);
    }
    return NULL;
}

/* ---- the child that inherited F1 and F3 ---- */

static int child_req[2], child_ans[2];
static pid_t child_pid;

static void child(void)
{
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)) die("no_new_privs child");
    install(f4, N(f4), SECCOMP_FILTER_FLAG_TSYNC);
    if (setgroups(0, NULL) || setresgid(65534, 65534, 65534) || setresuid(65534, 65534, 65534)) die("drop to 65534");
    char c;
    while (read_full(child_req[0], &c, 1) == 0) {
        bad = 0;
        check_errno("child getpriority(PRIO_USER, 4242) errno (F1)", e_getpriority(), EPERM);
        check_errno("child sched_get_priority_max(777) errno (F3)", e_prio_max(), ENOTSUP);
        check_errno("child getsid(-4242) errno (F4)", e_getsid(), EXDEV);
        check_errno("child getpgid(-4242) errno (no F2)", e_getpgid(), ESRCH);
        if (getuid() != 65534 || geteuid() != 65534) invariant("child uid", getuid(), 65534);
        pid_t me = getpid(), others[16];
        check_thread("child main thread", me, me, 2, 3, 1);
        int n = other_threads(me, me, others, 16);
        for (int i = 0; i < n; i++) check_thread("child's other thread", me, others[i], 2, 3, 1);
        fflush(stdout);
        char verdict = bad ? 'b' : 'o';
        if (write(child_ans[1], &verdict, 1) != 1) _exit(3);
    }
    _exit(0);
}

static void check(void)
{
    bad = 0;
    pid_t me = getpid();
    check_errno("main getpriority(PRIO_USER, 4242) errno (F1)", e_getpriority(), EPERM);
    check_errno("main sched_get_priority_max(777) errno (F3)", e_prio_max(), ENOTSUP);
    check_errno("main getpgid(-4242) errno (no F2)", e_getpgid(), ESRCH);
    check_errno("main getsid(-4242) errno (no F4)", e_getsid(), ESRCH);
    __atomic_add_fetch(&round_asked, 1, __ATOMIC_SEQ_CST);
    for (int i = 0; i < 2000 && round_done != round_asked; i++) usleep(1000);
    if (round_done != round_asked) invariant("the worker answers", round_done, round_asked);
    check_errno("worker getpriority(PRIO_USER, 4242) errno (F1, inherited)", w_prio, EPERM);
    check_errno("worker getpgid(-4242) errno (F2)", w_pgid, EACCES);
    check_errno("worker sched_get_priority_max(777) errno (no F3)", w_max, EINVAL);
    check_errno("worker getsid(-4242) errno (no F4)", w_sid, ESRCH);

    check_thread("main thread", me, me, 2, 2, 0);
    check_thread("worker", me, worker_tid, 2, 2, 1);
    pid_t others[16];
    int n = other_threads(me, me, others, 16);
    for (int i = 0; i < n; i++)
        if (others[i] != worker_tid) check_thread("the interposer's thread", me, others[i], 0, 0, 0);

    struct want main_w[] = {{f1, N(f1), 0}, {f3, N(f3), 0}};
    struct want worker_w[] = {{f1, N(f1), 0}, {f2, N(f2), SECCOMP_FILTER_FLAG_LOG}};
    struct want child_w[] = {{f1, N(f1), 0}, {f3, N(f3), 0}, {f4, N(f4), 0}};
    check_filters("main thread", me, main_w, 2);
    check_filters("worker", worker_tid, worker_w, 2);
    check_filters("child", child_pid, child_w, 3);
    n = other_threads(child_pid, child_pid, others, 16);
    for (int i = 0; i < n; i++) check_filters("child's other thread", others[i], child_w, 3);

    char verdict = 0;
    if (write(child_req[1], "c", 1) != 1 || read_full(child_ans[0], &verdict, 1)) invariant("the child answers", 0, 1);
    else if (verdict != 'o') bad = 1;
    printf(bad ? "state bad\n" : "state ok\n");
}

/* ---- shared: every thread under the same filters, synchronized ---- */

static int synced;
static struct sock_filter allow[] = {RET(SECCOMP_RET_ALLOW)};

static void *idle_worker(void *arg)
{
    (void)arg;
    worker_tid = gettid();
    struct timespec ts = {0, 5000000L};
    for (;;) {
        if (round_done != round_asked) {
            w_prio = e_getpriority();
            __atomic_store_n(&round_done, round_asked, __ATOMIC_SEQ_CST);
        }
        nanosleep(&ts, NULL);
    }
    return NULL;
}

static void set_up_shared(void)
{
    pthread_t t;
    if (pthread_create(&t, NULL, idle_worker, NULL)) die("pthread_create");
    while (!worker_tid) usleep(1000);
    install(f1, N(f1), SECCOMP_FILTER_FLAG_TSYNC);
    synced = 1;
}

static void check_shared(void)
{
    bad = 0;
    pid_t me = getpid(), all[16];
    struct sock_fprog p = {.len = N(allow), .filter = allow};
    long r = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, &p);
    if (r != 0) invariant("a filter synchronized to every thread (the tid that could not take it)", r < 0 ? -errno : r, 0);
    else synced++;
    check_errno("main getpriority(PRIO_USER, 4242) errno (F1)", e_getpriority(), EPERM);
    __atomic_add_fetch(&round_asked, 1, __ATOMIC_SEQ_CST);
    for (int i = 0; i < 2000 && round_done != round_asked; i++) usleep(1000);
    if (round_done != round_asked) invariant("the worker answers", round_done, round_asked);
    check_errno("worker getpriority(PRIO_USER, 4242) errno (F1)", w_prio, EPERM);
    int n = other_threads(me, 0, all, 16);
    if (n < 3) invariant("threads (main, worker, the interposer's)", n, 3);
    for (int i = 0; i < n; i++) check_thread("a thread", me, all[i], 2, synced, 0);
    printf(bad ? "state bad\n" : "state ok\n");
}

/* ---- refused modes ---- */

static int strict_pipe[2];
static volatile pid_t strict_tid;

static void *strict_thread(void *arg)
{
    (void)arg;
    strict_tid = gettid();
    if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_STRICT)) die("strict");
    char c;
    /* Raw calls only: in strict mode anything but read, write and exit kills the process. */
    syscall(SYS_read, strict_pipe[0], &c, 1);
    syscall(SYS_exit, 0);
    return NULL;
}

static void refused_mode(const char *mode)
{
    pid_t tid = gettid();
    if (strcmp(mode, "strict") == 0) {
        pthread_t t;
        if (pipe(strict_pipe) || pthread_create(&t, NULL, strict_thread, NULL)) die("strict thread");
        while (!strict_tid || status_field(getpid(), strict_tid, "Seccomp") != 1) usleep(1000);
        tid = strict_tid;
    } else if (strcmp(mode, "notify") == 0) {
        if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)) die("no_new_privs");
        struct sock_fprog p = {.len = N(fnotify), .filter = fnotify};
        int listener = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER, &p);
        if (listener < 0) die("seccomp with a listener");
        /* Whoever holds the listener is outside: here, nobody any more. */
        close(listener);
    } else if (strcmp(mode, "unprivileged") == 0) {
        install(f1, N(f1), 0);
        if (setgroups(0, NULL) || setresgid(65534, 65534, 65534) || setresuid(65534, 65534, 65534)) die("drop");
    } else {
        fprintf(stderr, "unknown mode %s\n", mode);
        exit(2);
    }
    printf("refused thread %d\n", (int)tid);
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    int shared = argc > 1 && strcmp(argv[1], "shared") == 0;
    if (shared) {
        set_up_shared();
    } else if (argc > 1) {
        refused_mode(argv[1]);
    } else {
        if (pipe(insp_req) || pipe(insp_ans) || pipe(child_req) || pipe(child_ans)) die("pipe");
        pid_t insp = fork();
        if (insp < 0) die("fork inspector");
        if (insp == 0) inspector();
        install(f1, N(f1), 0);
        pthread_t t;
        if (pthread_create(&t, NULL, worker, NULL)) die("pthread_create");
        while (!worker_tid) usleep(1000);
        install(f3, N(f3), 0);
        child_pid = fork();
        if (child_pid < 0) die("fork child");
        if (child_pid == 0) child();
        /* The child is set up once it answers. */
        char c;
        if (write(child_req[1], "c", 1) != 1 || read_full(child_ans[0], &c, 1)) die("child");
    }
    signal(SIGUSR1, on_usr1);
    printf("filters set pid %d\n", (int)getpid());
    struct timespec ts = {0, 50000000L};
    for (unsigned long long i = 1;; i++) {
        if (asked) {
            asked = 0;
            if (shared) check_shared();
            else if (argc > 1) printf("state ok\n");
            else check();
        }
        printf("tick %llu\n", i);
        nanosleep(&ts, NULL);
    }
}
