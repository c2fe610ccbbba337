/*
 * pty_state: holds both ends of two pseudo-terminals with bytes waiting in each direction,
 * and checks, when asked (SIGUSR1), that each is as it was set up; then sets them up again.
 *
 *   pty_state pair        pty A: raw-ish termios with a custom speed (termios2, BOTHER 12345
 *                         baud), a window size, packet mode on, the slave exclusive
 *                         (TIOCEXCL) and mode 0620, the master also at a dup'ed fd; every byte
 *                         value typed into the master and not read from the slave, and output
 *                         written to the slave not read from the master.
 *                         pty B: canonical mode (echo off), two complete lines waiting (one
 *                         ended by EOF) and a line being typed, output waiting for the master,
 *                         the pair locked (TIOCSPTLCK) once the slave is open.
 *   pty_state outside P   opens terminal P (a pty whose master is outside ckpt) at fd 0 (dup'ed
 *                         at fd 10) and again at fd 9; the check wants fd 9 to be P again
 *                         (reopened by path) and fd 10 to be whatever fd 0 became.
 *
 * The check: same indexes and ttynames, termios2, window size, packet mode, lock, exclusive
 * mode, the slave's mode, the dup sharing its description, and the waiting bytes read back
 * exactly. Prints "tick N" every 50 ms; on SIGUSR1 prints "state ok" or INVARIANT lines and
 * "state bad".
 */
#define _GNU_SOURCE
#include <asm/ioctls.h>
#include <asm/termbits.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t asked;
static void on_usr1(int s) { (void)s; asked = 1; }
static int bad;

static void invariant(const char *what, long long a, long long b)
{
    printf("INVARIANT %s: got %lld, want %lld\n", what, a, b);
    bad = 1;
}

struct pty {
    int m, s, index;
    char name[64];
    struct termios2 t;
    struct winsize ws;
};

static struct pty a, b;
static int a_dup;
static const char b_lines[] = "first\nsecond";
static unsigned char a_in[256];
static const char a_out[] = "A says \r\n\x01\xff and more";
static const char b_out[] = "B says\n";

static void die(const char *what)
{
    perror(what);
    exit(2);
}

static void open_pty(struct pty *p)
{
    p->m = open("/dev/ptmx", O_RDWR | O_NOCTTY);
    if (p->m < 0) die("ptmx");
    int zero = 0;
    if (ioctl(p->m, TIOCSPTLCK, &zero) < 0 || ioctl(p->m, TIOCGPTN, &p->index) < 0) die("unlock");
    snprintf(p->name, sizeof p->name, "/dev/pts/%d", p->index);
    p->s = open(p->name, O_RDWR | O_NOCTTY | O_NONBLOCK);
    if (p->s < 0) die(p->name);
}

static void write_all(int fd, const void *buf, size_t n, const char *what)
{
    if (write(fd, buf, n) != (ssize_t)n) invariant(what, errno, 0);
}

static void set_up(void)
{
    write_all(a.m, a_in, sizeof a_in, "typing into A");
    write_all(a.s, a_out, sizeof a_out - 1, "writing to A's slave");
    /* Two lines (the second ended by EOF, ^D) and a line being typed. */
    write_all(b.m, b_lines, strlen(b_lines), "typing into B");
    write_all(b.m, "\x04part", 5, "typing into B");
    write_all(b.s, b_out, strlen(b_out), "writing to B's slave");
    /* Let the line disciplines take what was typed before anyone looks. */
    struct timespec d = {0, 50000000L};
    nanosleep(&d, NULL);
}

/* Reads exactly n bytes from fd (waiting up to a second for each part). */
static ssize_t read_n(int fd, unsigned char *buf, size_t n)
{
    size_t got = 0;
    while (got < n) {
        struct pollfd p = {fd, POLLIN, 0};
        if (poll(&p, 1, 1000) <= 0) break;
        ssize_t r = read(fd, buf + got, n - got);
        if (r <= 0) break;
        got += (size_t)r;
    }
    return (ssize_t)got;
}

static void same_pty(struct pty *p, const char *label)
{
    char what[128];
    int index = -1;
    ioctl(p->m, TIOCGPTN, &index);
    snprintf(what, sizeof what, "%s index", label);
    if (index != p->index) invariant(what, index, p->index);
    const char *name = ttyname(p->s);
    if (!name || strcmp(name, p->name)) {
        printf("INVARIANT %s ttyname: got %s, want %s\n", label, name ? name : "(none)", p->name);
        bad = 1;
    }
    struct termios2 t;
    memset(&t, 0, sizeof t);
    ioctl(p->s, TCGETS2, &t);
    snprintf(what, sizeof what, "%s termios2 (iflag/oflag/cflag/lflag/cc/speeds)", label);
    if (memcmp(&t, &p->t, sizeof t)) invariant(what, t.c_cflag, p->t.c_cflag);
    snprintf(what, sizeof what, "%s output speed", label);
    if (t.c_ospeed != p->t.c_ospeed) invariant(what, t.c_ospeed, p->t.c_ospeed);
    struct winsize ws;
    memset(&ws, 0, sizeof ws);
    ioctl(p->m, TIOCGWINSZ, &ws);
    snprintf(what, sizeof what, "%s window size (rows)", label);
    if (memcmp(&ws, &p->ws, sizeof ws)) invariant(what, ws.ws_row, p->ws.ws_row);
}

static void check_pair(void)
{
    unsigned char buf[1024];
    same_pty(&a, "A");
    same_pty(&b, "B");
    int v = -1;
    ioctl(a.m, TIOCGPKT, &v);
    if (v != 1) invariant("A packet mode", v, 1);
    v = -1;
    ioctl(a.s, TIOCGEXCL, &v);
    if (v != 1) invariant("A slave exclusive", v, 1);
    v = -1;
    ioctl(b.m, TIOCGPTLCK, &v);
    if (v != 1) invariant("B locked", v, 1);
    v = -1;
    ioctl(a.m, TIOCGPTLCK, &v);
    if (v != 0) invariant("A locked", v, 0);
    struct stat st;
    fstat(a.s, &st);
    if ((st.st_mode & 07777) != 0620) invariant("A slave mode", st.st_mode & 07777, 0620);
    /* The dup shares A's master description. */
    int fl = fcntl(a.m, F_GETFL);
    fcntl(a.m, F_SETFL, fl | O_NONBLOCK);
    if (!(fcntl(a_dup, F_GETFL) & O_NONBLOCK)) invariant("A master dup shares O_NONBLOCK", 0, 1);
    fcntl(a.m, F_SETFL, fl);
    /* A: every byte value for the slave; the output for the master, after the packet marker. */
    ssize_t n = read_n(a.s, buf, sizeof a_in);
    if (n != (ssize_t)sizeof a_in || memcmp(buf, a_in, sizeof a_in)) invariant("A bytes for the slave", n, sizeof a_in);
    n = read_n(a.m, buf, sizeof a_out);
    if (n != (ssize_t)sizeof a_out || buf[0] != 0 || memcmp(buf + 1, a_out, sizeof a_out - 1))
        invariant("A bytes for the master (packet marker, then data)", n, sizeof a_out);
    /* B: the output with its newline made \r\n; one line per read; the typed line not yet. */
    n = read_n(b.m, buf, strlen(b_out) + 1);
    if (n != (ssize_t)strlen(b_out) + 1 || memcmp(buf, "B says\r\n", (size_t)n)) invariant("B bytes for the master", n, strlen(b_out) + 1);
    n = read(b.s, buf, sizeof buf);
    if (n != 6 || memcmp(buf, "first\n", 6)) invariant("B first line", n, 6);
    n = read(b.s, buf, sizeof buf);
    if (n != 6 || memcmp(buf, "second", 6)) invariant("B second line (ended by EOF)", n, 6);
    n = read(b.s, buf, sizeof buf);
    if (n != -1 || errno != EAGAIN) invariant("B line being typed is not complete (errno)", n < 0 ? errno : n, EAGAIN);
    write_all(b.m, "\n", 1, "ending B's line");
    n = read_n(b.s, buf, 5);
    if (n != 5 || memcmp(buf, "part\n", 5)) invariant("B line typed, then ended", n, 5);
    printf(bad ? "state bad\n" : "state ok\n");
}

static void pair_mode(void)
{
    open_pty(&a);
    open_pty(&b);
    for (int i = 0; i < 256; i++) a_in[i] = (unsigned char)(255 - i);
    /* A: raw-ish, a custom speed, a window size, packet mode, exclusive, mode 0620. */
    ioctl(a.s, TCGETS2, &a.t);
    a.t.c_iflag &= ~(IGNBRK | BRKINT | PARMRK | ISTRIP | INLCR | IGNCR | ICRNL | IXON);
    a.t.c_oflag &= ~OPOST;
    a.t.c_lflag &= ~(ECHO | ECHONL | ICANON | ISIG | IEXTEN);
    a.t.c_cflag = (a.t.c_cflag & ~CBAUD) | BOTHER;
    a.t.c_ispeed = a.t.c_ospeed = 12345;
    a.t.c_cc[VMIN] = 1;
    a.t.c_cc[VTIME] = 0;
    if (ioctl(a.s, TCSETS2, &a.t) < 0) die("TCSETS2");
    ioctl(a.s, TCGETS2, &a.t); /* as the kernel keeps it */
    if (a.t.c_ospeed != 12345) die("custom speed not kept");
    a.ws = (struct winsize){33, 101, 707, 909};
    ioctl(a.m, TIOCSWINSZ, &a.ws);
    int one = 1;
    if (ioctl(a.m, TIOCPKT, &one) < 0) die("TIOCPKT");
    if (ioctl(a.s, TIOCEXCL) < 0) die("TIOCEXCL");
    if (fchmod(a.s, 0620) < 0) die("fchmod");
    a_dup = dup(a.m);
    /* B: canonical, no echo (so the master reads only what the slave writes). */
    ioctl(b.s, TCGETS2, &b.t);
    b.t.c_lflag &= ~(ECHO | ECHOE | ECHOK | ECHONL);
    ioctl(b.s, TCSETS2, &b.t);
    ioctl(b.s, TCGETS2, &b.t);
    b.ws = (struct winsize){24, 80, 0, 0};
    ioctl(b.m, TIOCSWINSZ, &b.ws);
    if (ioctl(b.m, TIOCSPTLCK, &one) < 0) die("lock");
    set_up();
    printf("ptys %s %s pid %d\n", a.name, b.name, (int)getpid());
}

static const char *outside;

static void check_outside(void)
{
    const char *name = ttyname(9);
    if (!name || strcmp(name, outside)) {
        printf("INVARIANT fd 9 ttyname: got %s, want %s\n", name ? name : "(none)", outside);
        bad = 1;
    }
    /* fd 10 shares fd 0's description: it follows fd 0, whatever that became. */
    struct stat s0, s10;
    if (fstat(0, &s0) < 0 || fstat(10, &s10) < 0 || s0.st_dev != s10.st_dev || s0.st_ino != s10.st_ino ||
        s0.st_rdev != s10.st_rdev)
        invariant("fd 10 is the same file as fd 0", (long long)s10.st_ino, (long long)s0.st_ino);
    printf(bad ? "state bad\n" : "state ok\n");
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc < 2) {
        fprintf(stderr, "usage: pty_state pair | outside PATH\n");
        return 2;
    }
    int pair = !strcmp(argv[1], "pair");
    if (pair) {
        pair_mode();
    } else if (!strcmp(argv[1], "outside") && argc > 2) {
        outside = argv[2];
        int fd = open(outside, O_RDWR | O_NOCTTY);
        int other = open(outside, O_RDWR | O_NOCTTY);
        if (fd < 0 || other < 0) die(outside);
        dup2(fd, 0);
        dup2(fd, 10);
        dup2(other, 9);
        close(fd);
        close(other);
        printf("outside %s\n", outside);
    } else {
        fprintf(stderr, "pty_state: unknown mode %s\n", argv[1]);
        return 2;
    }
    signal(SIGUSR1, on_usr1);
    struct timespec d = {0, 50000000L};
    for (unsigned long long n = 1;; n++) {
        if (asked) {
            asked = 0;
            bad = 0;
            if (pair) {
                check_pair();
                set_up();
            } else {
                check_outside();
            }
        }
        printf("tick %llu\n", n);
        nanosleep(&d, NULL);
    }
}
