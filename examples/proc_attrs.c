/*
 * proc_attrs: sets, as root, the attributes the scheduler, the memory manager and prctl keep
 * for a process and its threads, and checks, when asked, that each is as it was set:
 *   main thread  nice 7, no_new_privs, timer slack 77777 ns;
 *   worker "fifo" SCHED_FIFO priority 5 with SCHED_FLAG_RESET_ON_FORK, bound to CPU 0, I/O
 *                 priority best-effort 3;
 *   worker "idle" SCHED_IDLE, I/O priority idle, timer slack 123456 ns, no no_new_privs;
 *   process      oom_score_adj 345, audit loginuid 4321, THP disabled, child subreaper, not
 *                dumpable, supplementary groups 5 6 7, a 64 KiB region mlock'ed, a 64 KiB
 *                region mlock2(MLOCK_ONFAULT)'ed, mlockall(MCL_FUTURE) (a new mapping is
 *                locked), membarrier registered for private expedited barriers.
 * With "seccomp", the main thread then runs under an allow-everything seccomp filter, which
 * it checks too (Seccomp_filters of its own status).
 * Prints "tick N" every 50 ms; on SIGUSR1 "state ok" or "INVARIANT <what>" lines.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/filter.h>
#include <linux/membarrier.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define IOPRIO(class, data) (((class) << 13) | (data))
#ifndef SCHED_FLAG_RESET_ON_FORK
#define SCHED_FLAG_RESET_ON_FORK 0x01
#endif

struct sched_attr_v1 {
    uint32_t size, policy;
    uint64_t flags;
    int32_t nice;
    uint32_t priority;
    uint64_t runtime, deadline, period;
    uint32_t util_min, util_max;
};

static volatile sig_atomic_t asked;
static void on_usr1(int s) { (void)s; asked = 1; }

static int bad;
static void invariant(const char *what, long long got, long long want)
{
    printf("INVARIANT %s: got %lld, want %lld\n", what, got, want);
    bad = 1;
}

static volatile pid_t fifo_tid, idle_tid;
/* The idle worker reports its own timer slack (only a thread can ask for its own; a real-time
 * thread has none) when the main thread bumps `round_asked`. */
static volatile int round_asked, round_done;
static volatile long idle_slack;
static char *locked, *onfault;
static int filters;

static void die(const char *what)
{
    perror(what);
    exit(2);
}

static void *fifo_worker(void *arg)
{
    (void)arg;
    struct sched_attr_v1 a = {.size = sizeof a, .policy = SCHED_FIFO, .priority = 5, .flags = SCHED_FLAG_RESET_ON_FORK};
    if (syscall(SYS_sched_setattr, 0, &a, 0)) die("sched_setattr fifo");
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(0, &set);
    if (sched_setaffinity(0, sizeof set, &set)) die("affinity");
    if (syscall(SYS_ioprio_set, 1, 0, IOPRIO(2, 3))) die("ioprio be");
    fifo_tid = gettid();
    for (;;) pause();
}

static void *idle_worker(void *arg)
{
    (void)arg;
    struct sched_attr_v1 a = {.size = sizeof a, .policy = SCHED_IDLE};
    if (syscall(SYS_sched_setattr, 0, &a, 0)) die("sched_setattr idle");
    if (syscall(SYS_ioprio_set, 1, 0, IOPRIO(3, 0))) die("ioprio idle");
    if (prctl(PR_SET_TIMERSLACK, 123456)) die("timerslack");
    idle_tid = gettid();
    struct timespec ts = {0, 5000000L};
    for (;;) {
        if (round_done != round_asked) {
            idle_slack = prctl(PR_GET_TIMERSLACK, 0, 0, 0, 0);
            __atomic_store_n(&round_done, round_asked, __ATOMIC_SEQ_CST);
        }
        nanosleep(&ts, NULL);
    }
}

static long long read_num(const char *path)
{
    FILE *f = fopen(path, "r");
    long long v = -1;
    if (!f || fscanf(f, "%lld", &v) != 1) v = -99999;
    if (f) fclose(f);
    return v;
}

/* The VmFlags line of the mapping at `addr` in /proc/self/smaps has `flag`. */
static int vm_flag(void *addr, const char *flag)
{
    FILE *f = fopen("/proc/self/smaps", "r");
    char line[512];
    int in = 0, found = 0;
    unsigned long want = (unsigned long)addr, s, e;
    while (f && fgets(line, sizeof line, f)) {
        if (sscanf(line, "%lx-%lx ", &s, &e) == 2) in = want >= s && want < e;
        else if (in && strncmp(line, "VmFlags:", 8) == 0) {
            char pat[8];
            snprintf(pat, sizeof pat, " %s", flag);
            found = strstr(line, pat) != NULL;
            break;
        }
    }
    if (f) fclose(f);
    return found;
}

static int task_status_field(pid_t tid, const char *key)
{
    char p[64], line[256];
    snprintf(p, sizeof p, "/proc/self/task/%d/status", (int)tid);
    FILE *f = fopen(p, "r");
    int v = -1;
    while (f && fgets(line, sizeof line, f))
        if (strncmp(line, key, strlen(key)) == 0) v = atoi(line + strlen(key) + 1);
    if (f) fclose(f);
    return v;
}

static void check(void)
{
    bad = 0;
    struct sched_attr_v1 a;
    if (getpriority(PRIO_PROCESS, 0) != 7) invariant("main thread nice", getpriority(PRIO_PROCESS, 0), 7);
    memset(&a, 0, sizeof a);
    if (syscall(SYS_sched_getattr, fifo_tid, &a, sizeof a, 0)) invariant("sched_getattr fifo", errno, 0);
    if (a.policy != SCHED_FIFO || a.priority != 5) invariant("fifo policy*100+priority", a.policy * 100 + a.priority, SCHED_FIFO * 100 + 5);
    if (!(a.flags & SCHED_FLAG_RESET_ON_FORK)) invariant("fifo reset-on-fork", (long long)a.flags, SCHED_FLAG_RESET_ON_FORK);
    memset(&a, 0, sizeof a);
    if (syscall(SYS_sched_getattr, idle_tid, &a, sizeof a, 0)) invariant("sched_getattr idle", errno, 0);
    if (a.policy != SCHED_IDLE) invariant("idle policy", a.policy, SCHED_IDLE);
    cpu_set_t set;
    if (sched_getaffinity(fifo_tid, sizeof set, &set) || CPU_COUNT(&set) != 1 || !CPU_ISSET(0, &set)) invariant("fifo bound to CPU 0 (count)", CPU_COUNT(&set), 1);
    if (syscall(SYS_ioprio_get, 1, fifo_tid) != IOPRIO(2, 3)) invariant("fifo ioprio", syscall(SYS_ioprio_get, 1, fifo_tid), IOPRIO(2, 3));
    if (syscall(SYS_ioprio_get, 1, idle_tid) != IOPRIO(3, 0)) invariant("idle ioprio", syscall(SYS_ioprio_get, 1, idle_tid), IOPRIO(3, 0));
    __atomic_add_fetch(&round_asked, 1, __ATOMIC_SEQ_CST);
    for (int i = 0; i < 2000 && round_done != round_asked; i++) usleep(1000);
    if (round_done != round_asked) invariant("the idle worker answers", round_done, round_asked);
    else if (idle_slack != 123456) invariant("idle worker timer slack", idle_slack, 123456);
    if (prctl(PR_GET_TIMERSLACK, 0, 0, 0, 0) != 77777) invariant("main timer slack", prctl(PR_GET_TIMERSLACK, 0, 0, 0, 0), 77777);
    if (prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) != 1) invariant("main no_new_privs", prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0), 1);
    if (task_status_field(idle_tid, "NoNewPrivs") != 0) invariant("idle worker no_new_privs", task_status_field(idle_tid, "NoNewPrivs"), 0);
    if (read_num("/proc/self/oom_score_adj") != 345) invariant("oom_score_adj", read_num("/proc/self/oom_score_adj"), 345);
    if (read_num("/proc/self/loginuid") != 4321) invariant("loginuid", read_num("/proc/self/loginuid"), 4321);
    if (prctl(PR_GET_THP_DISABLE, 0, 0, 0, 0) != 1) invariant("THP disabled", prctl(PR_GET_THP_DISABLE, 0, 0, 0, 0), 1);
    int sub = 0;
    prctl(PR_GET_CHILD_SUBREAPER, &sub);
    if (sub != 1) invariant("child subreaper", sub, 1);
    if (prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) != 0) invariant("dumpable", prctl(PR_GET_DUMPABLE, 0, 0, 0, 0), 0);
    gid_t g[16];
    int n = getgroups(16, g);
    if (n != 3 || g[0] != 5 || g[1] != 6 || g[2] != 7) invariant("supplementary groups (count)", n, 3);
    if (!vm_flag(locked, "lo") || vm_flag(locked, "lf")) invariant("mlock'ed region locked", vm_flag(locked, "lo"), 1);
    if (!vm_flag(onfault, "lo") || !vm_flag(onfault, "lf")) invariant("region locked on fault", vm_flag(onfault, "lf"), 1);
    char *fresh = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (fresh == MAP_FAILED || !vm_flag(fresh, "lo")) invariant("a new mapping is locked (mlockall MCL_FUTURE)", 0, 1);
    if (fresh != MAP_FAILED) munmap(fresh, 4096);
    if (syscall(SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0)) invariant("membarrier private expedited (errno)", errno, 0);
    if (task_status_field(gettid(), "Seccomp_filters") != filters)
        invariant("main thread seccomp filters", task_status_field(gettid(), "Seccomp_filters"), filters);
    printf(bad ? "state bad\n" : "state ok\n");
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    gid_t groups[] = {5, 6, 7};
    if (setgroups(3, groups)) die("setgroups");
    pthread_t t1, t2;
    if (pthread_create(&t1, NULL, fifo_worker, NULL) || pthread_create(&t2, NULL, idle_worker, NULL)) die("pthread_create");
    while (!fifo_tid || !idle_tid) usleep(1000);
    if (setpriority(PRIO_PROCESS, 0, 7)) die("nice");
    if (prctl(PR_SET_TIMERSLACK, 77777)) die("timerslack main");
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)) die("no_new_privs");
    FILE *f = fopen("/proc/self/oom_score_adj", "w");
    if (!f || fprintf(f, "345") < 0 || fclose(f)) die("oom_score_adj");
    f = fopen("/proc/self/loginuid", "w");
    if (!f || fprintf(f, "4321") < 0 || fclose(f)) die("loginuid");
    if (prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0)) die("thp");
    if (prctl(PR_SET_CHILD_SUBREAPER, 1)) die("subreaper");
    if (prctl(PR_SET_DUMPABLE, 0)) die("dumpable");
    locked = mmap(NULL, 65536, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    onfault = mmap(NULL, 65536, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (locked == MAP_FAILED || onfault == MAP_FAILED) die("mmap");
    memset(locked, 7, 65536);
    if (mlock(locked, 65536)) die("mlock");
    if (mlock2(onfault, 65536, MLOCK_ONFAULT)) die("mlock2");
    if (mlockall(MCL_FUTURE)) die("mlockall");
    if (syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0)) die("membarrier register");
    if (argc > 1 && strcmp(argv[1], "seccomp") == 0) {
        /* An allow-everything filter: nothing changes but the thread runs under seccomp. */
        struct sock_filter allow = BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
        struct sock_fprog prog = {.len = 1, .filter = &allow};
        if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog)) die("seccomp");
        filters = 1;
    }
    signal(SIGUSR1, on_usr1);
    printf("attributes set pid %d\n", (int)getpid());
    struct timespec ts = {0, 50000000L};
    for (unsigned long long i = 1;; i++) {
        if (asked) {
            asked = 0;
            check();
        }
        printf("tick %llu\n", i);
        nanosleep(&ts, NULL);
    }
}
