"""dev_shm_map PATH: maps PATH (a /dev/shm file) MAP_SHARED (closing its fd) and checks, when asked (SIGUSR1),
that the mapping and the file are one: its start is intact and what it writes through the
mapping is read through the file. Prints "tick N", and "state ok" or "INVARIANT ..." + "state bad"."""
import mmap, os, time, signal, sys
path = sys.argv[1]
fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
os.ftruncate(fd, 8192)
m = mmap.mmap(fd, 8192, mmap.MAP_SHARED)
os.close(fd)
m[0:5] = b"hello"
asked = False
def h(s, f):
    global asked
    asked = True
signal.signal(signal.SIGUSR1, h)
n = 0
while True:
    n += 1
    if asked:
        asked = False
        with open(path, "rb") as f:
            disk = f.read(5)
        m[5:10] = b"world"
        with open(path, "rb") as f:
            disk2 = f.read(10)
        ok = m[0:5] == b"hello" and disk == b"hello" and disk2 == b"helloworld"
        print("state ok" if ok else f"INVARIANT mapping {bytes(m[0:10])} file {disk2}", flush=True)
        if not ok: print("state bad", flush=True)
        m[5:10] = b"\0" * 5
    print(f"tick {n}", flush=True)
    time.sleep(0.05)
