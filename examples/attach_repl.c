/* attach_repl: reads lines from stdin and prints each uppercased; "exit N" exits with N, end of
 * input with 0. On SIGINT it prints "got SIGINT" and goes on; on SIGWINCH "winch COLSxROWS",
 * the size of the terminal on stdin. Prints "ready" first. (C rather than Python: Python's
 * handlers use SA_ONSTACK, which a restored process does not survive yet.) */
#define _GNU_SOURCE
#include <ctype.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

static volatile sig_atomic_t got_int, got_winch;

static void on_int(int sig) { (void)sig; got_int = 1; }
static void on_winch(int sig) { (void)sig; got_winch = 1; }

static void line(char *l)
{
    int code;
    if (sscanf(l, "exit %d", &code) == 1)
        exit(code);
    for (char *p = l; *p; p++)
        *p = (char)toupper((unsigned char)*p);
    printf("%s\n", l);
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_int; /* no SA_RESTART: a read ends with EINTR, the flag is seen at once */
    sigaction(SIGINT, &sa, NULL);
    sa.sa_handler = on_winch;
    sigaction(SIGWINCH, &sa, NULL);
    printf("ready\n");
    fflush(stdout);
    char buf[4096];
    size_t have = 0;
    for (;;) {
        if (got_int) {
            got_int = 0;
            printf("got SIGINT\n");
        }
        if (got_winch) {
            got_winch = 0;
            struct winsize ws;
            if (ioctl(0, TIOCGWINSZ, &ws) == 0)
                printf("winch %ux%u\n", ws.ws_col, ws.ws_row);
            else
                printf("winch ? (%s)\n", strerror(errno));
        }
        fflush(stdout);
        ssize_t n = read(0, buf + have, sizeof buf - 1 - have);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            exit(0);
        have += (size_t)n;
        buf[have] = 0;
        char *nl;
        while ((nl = memchr(buf, '\n', have)) != NULL) {
            *nl = 0;
            line(buf);
            size_t used = (size_t)(nl + 1 - buf);
            memmove(buf, nl + 1, have - used);
            have -= used;
            buf[have] = 0;
        }
        if (have == sizeof buf - 1)
            have = 0; /* an over-long line is dropped */
    }
}
