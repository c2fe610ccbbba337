#!/usr/bin/python3
"""sqlite_writer DB MODE TOTAL PER_TXN [DELAY_MS [PAUSE_MS]]: inserts rows with ids 1..TOTAL into
table t of DB (created if needed), PER_TXN rows per transaction, in journal mode MODE
(delete or wal), with a page cache of a few pages so that changed pages spill to the
database (or the WAL, copied back into the database every 50 pages) in the middle of a
transaction. Each row has a payload derived from its
id and a random key k (drawn anew each time the row is written, so a run restored from a
checkpoint writes rows that differ from those of the run it replaces), indexed, so that
pages all over the file are rewritten in place and stale rows or index entries show.

Sleeps DELAY_MS (default 2) after each row and PAUSE_MS (default 0) after each commit.
Prints "tick <id>" every 50 rows, "commit <id>" after each commit and "done <TOTAL>" at the
end, then exits. The next id is in memory: after a restore it goes on from the checkpoint.
"""
import os
import sqlite3
import sys
import time


def payload(i, k):
    return f"row {i:08d} k {k:08d} " * 20


def main():
    path, mode, total, per_txn = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    delay = (int(sys.argv[5]) if len(sys.argv) > 5 else 2) / 1000.0
    pause = (int(sys.argv[6]) if len(sys.argv) > 6 else 0) / 1000.0
    db = sqlite3.connect(path, isolation_level=None)
    db.execute(f"PRAGMA journal_mode={mode}")
    db.execute("PRAGMA cache_size=8")
    db.execute("PRAGMA synchronous=FULL")
    # WAL: the log is copied into the database and started over every 50 pages.
    db.execute("PRAGMA wal_autocheckpoint=50")
    db.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, k INTEGER, payload TEXT)")
    db.execute("CREATE INDEX IF NOT EXISTS t_k ON t(k, payload)")
    i = 1
    while i <= total:
        db.execute("BEGIN")
        end = min(total, i + per_txn - 1)
        while i <= end:
            k = int.from_bytes(os.urandom(4), "little") % 100_000_000
            db.execute("INSERT INTO t VALUES (?, ?, ?)", (i, k, payload(i, k)))
            if i % 50 == 0:
                print(f"tick {i}", flush=True)
            i += 1
            time.sleep(delay)
        db.execute("COMMIT")
        print(f"commit {i - 1}", flush=True)
        time.sleep(pause)
    db.close()
    print(f"done {total}", flush=True)


if __name__ == "__main__":
    main()
