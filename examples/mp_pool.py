"""mp_pool: a multiprocessing.Pool(4) with a Manager and shared ctypes memory.

Tasks 0..N-1 each compute a deterministic value (a few ms of work). Each result goes three
ways: into a Manager dict (another process, reached through a Unix socket), into a shared
Array at the task's index, and into a shared Value sum under its lock (a POSIX semaphore).
The parent prints "done K" as results come in (about every 50 tasks), and at the end
"result <sum> <dict sum> <array sum> <count>" and "pool closed" once the Pool has shut down.
The three sums must agree and equal the expected one: "INVARIANT" otherwise.
"""

import multiprocessing as mp
import sys

N = int(sys.argv[1]) if len(sys.argv) > 1 else 2000


def work(i):
    x = i
    for _ in range(20000):
        x = (x * 1103515245 + 12345) % 2147483648
    return x % 1000


def init(arr, total):
    global ARR, TOTAL
    ARR, TOTAL = arr, total


def task(args):
    i, d = args
    v = work(i)
    ARR[i] = v
    with TOTAL.get_lock():
        TOTAL.value += v
    d[i] = v
    return v


def main():
    mp.set_start_method("fork")
    expected = sum(work(i) for i in range(N)) if "--check" in sys.argv else None
    with mp.Manager() as m:
        d = m.dict()
        arr = mp.Array("i", N)
        total = mp.Value("q", 0)
        with mp.Pool(4, initializer=init, initargs=(arr, total)) as pool:
            got = 0
            for n, v in enumerate(pool.imap_unordered(task, ((i, d) for i in range(N)), chunksize=2), 1):
                got += v
                if n % 50 == 0:
                    print(f"done {n}", flush=True)
            pool.close()
            pool.join()
        print("pool closed", flush=True)
        dsum = sum(d.values())
        asum = sum(arr[:])
        print(f"result {got} {dsum} {asum} {len(d)} {total.value}", flush=True)
        if not (got == dsum == asum == total.value) or len(d) != N:
            print("INVARIANT the results disagree", flush=True)
        if expected is not None and got != expected:
            print(f"INVARIANT expected {expected}", flush=True)


if __name__ == "__main__":
    main()
