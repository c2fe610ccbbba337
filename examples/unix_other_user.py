"""unix_other_user: starts as root, drops to uid/gid 65534 (nobody), then makes a Unix socketpair:
its ends' peer credentials (SO_PEERCRED) are nobody's, which root's ckptd could not give back.
Prints "tick N" every 100 ms."""
import os
import socket
import time

os.setgroups([])
os.setresgid(65534, 65534, 65534)
os.setresuid(65534, 65534, 65534)
a, b = socket.socketpair()
n = 0
while True:
    n += 1
    print(f"tick {n}", flush=True)
    time.sleep(0.1)
