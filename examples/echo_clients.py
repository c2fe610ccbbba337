"""echo_clients PORT N: N asyncio clients of an echo server on 127.0.0.1:PORT, each sending its
own deterministic byte stream in chunks of varied size and checking that every byte comes back
in order. Prints "tick N bytes B" every 100 ms (B: bytes checked, all clients); a byte that
comes back wrong prints "INVARIANT ..." and exits 3."""
import asyncio
import sys

checked = 0


def stream(client, start, length):
    # Byte k of client c's stream: a function of both, so a mix-up between clients shows.
    return bytes(((start + k) * 7 + client * 13 + ((start + k) >> 8)) & 0xFF for k in range(length))


async def client(port, c):
    global checked
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    sent = 0
    got = 0
    size = 1 + c * 97
    while True:
        chunk = stream(c, sent, size)
        writer.write(chunk)
        await writer.drain()
        sent += len(chunk)
        while got < sent:
            data = await reader.read(sent - got)
            if not data:
                print(f"INVARIANT client {c}: connection closed after {got} of {sent} bytes", flush=True)
                sys.exit(3)
            want = stream(c, got, len(data))
            if data != want:
                print(f"INVARIANT client {c}: wrong bytes at offset {got}", flush=True)
                sys.exit(3)
            got += len(data)
            checked += len(data)
        size = size * 5 % 4093 + 1
        await asyncio.sleep(0.005)


async def main(port, n):
    tasks = [asyncio.create_task(client(port, c)) for c in range(n)]
    t = 0
    while True:
        t += 1
        print(f"tick {t} bytes {checked}", flush=True)
        await asyncio.sleep(0.1)
        for task in tasks:
            if task.done() and task.exception():
                raise task.exception()


asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))
