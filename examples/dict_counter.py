#!/usr/bin/python3
"""dict_counter: builds a dict of 1,000,000 entries with known values, then
loops: counter += 1, checks a few random entries and len(), prints
"tick <counter> ok" every ~0.2 s.  On a mismatch prints "MISMATCH ..." and
exits with status 3."""
import os
import random
import sys
import time

N = 1_000_000


def value(i):
    return (i * 2654435761 + 12345) % 4294967296


def main():
    d = {i: value(i) for i in range(N)}
    rng = random.Random(os.getpid())
    counter = 0
    while True:
        counter += 1
        if len(d) != N:
            print(f"MISMATCH len {len(d)} != {N}", flush=True)
            sys.exit(3)
        for _ in range(8):
            k = rng.randrange(N)
            if d.get(k) != value(k):
                print(f"MISMATCH key {k} value {d.get(k)} expected {value(k)}", flush=True)
                sys.exit(3)
        print(f"tick {counter} ok", flush=True)
        time.sleep(0.2)


if __name__ == "__main__":
    main()
