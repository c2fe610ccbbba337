/*
 * file_pair DB LOG: a program with a data file it rewrites in place and a log it appends to.
 * DB is opened O_RDWR|O_CREAT: every ~10 ms record n (64 bytes naming n) is written at slot
 * n % 64 (slot i at offset i * 4096), then every slot written so far is read back and compared
 * with what this program last wrote there (kept in memory): "MISMATCH slot <i> ..." on a
 * difference. LOG is opened O_WRONLY|O_APPEND and gets "line <n>\n" each time. A region of
 * DB that never changes (1 MiB at offset 1 MiB, written once at the start) is checked at
 * every tick: "MISMATCH static byte <i>" on a difference.
 * Prints "tick <k> ok" after every 20 records (k = 1, 2, ...).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define SLOTS 64
#define REC 64

#define STATIC_AT (1 << 20)
#define STATIC_LEN (1 << 20)

static char expect[SLOTS][REC];
static int used[SLOTS];
static unsigned char region[STATIC_LEN], back[STATIC_LEN];

static void record(char *buf, unsigned long long n)
{
    memset(buf, 0, REC);
    snprintf(buf, REC, "record %llu of file_pair", n);
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s DB LOG\n", argv[0]);
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    int db = open(argv[1], O_RDWR | O_CREAT, 0644);
    int log = open(argv[2], O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (db < 0 || log < 0) {
        fprintf(stderr, "open: %s\n", strerror(errno));
        return 2;
    }
    for (int i = 0; i < STATIC_LEN; i++)
        region[i] = (unsigned char)(i * 31 + 7);
    if (pwrite(db, region, STATIC_LEN, STATIC_AT) != STATIC_LEN) {
        fprintf(stderr, "write: %s\n", strerror(errno));
        return 2;
    }
    struct timespec d = {0, 10000000L};
    char buf[REC], line[64];
    for (unsigned long long n = 1;; n++) {
        int slot = (int)(n % SLOTS);
        record(expect[slot], n);
        used[slot] = 1;
        if (pwrite(db, expect[slot], REC, (off_t)slot * 4096) != REC) {
            printf("WRITE_FAILED db record %llu: %s\n", n, strerror(errno));
            return 3;
        }
        int len = snprintf(line, sizeof line, "line %llu\n", n);
        if (write(log, line, (size_t)len) != len) {
            printf("WRITE_FAILED log line %llu: %s\n", n, strerror(errno));
            return 3;
        }
        for (int i = 0; i < SLOTS; i++) {
            if (!used[i])
                continue;
            if (pread(db, buf, REC, (off_t)i * 4096) != REC || memcmp(buf, expect[i], REC) != 0) {
                printf("MISMATCH slot %d: file has \"%.40s\", expected \"%.40s\"\n", i, buf, expect[i]);
                return 3;
            }
        }
        if (n % 20 == 0) {
            if (pread(db, back, STATIC_LEN, STATIC_AT) != STATIC_LEN) {
                printf("MISMATCH static region unreadable\n");
                return 3;
            }
            for (int i = 0; i < STATIC_LEN; i++) {
                if (back[i] != region[i]) {
                    printf("MISMATCH static byte %d: %d, expected %d\n", i, back[i], region[i]);
                    return 3;
                }
            }
            printf("tick %llu ok\n", n / 20);
        }
        nanosleep(&d, NULL);
    }
}
