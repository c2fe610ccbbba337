"""asyncio_echo PORT: an asyncio TCP echo server on 127.0.0.1:PORT (epoll, and the event
loop's self-pipe socketpair). Prints "tick N clients C echoed B" every 100 ms."""
import asyncio
import sys

clients = 0
echoed = 0


async def serve(reader, writer):
    global clients, echoed
    clients += 1
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            writer.write(data)
            await writer.drain()
            echoed += len(data)
    except ConnectionError:
        pass
    finally:
        clients -= 1
        writer.close()


async def main(port):
    server = await asyncio.start_server(serve, "127.0.0.1", port)
    n = 0
    async with server:
        while True:
            n += 1
            print(f"tick {n} clients {clients} echoed {echoed}", flush=True)
            await asyncio.sleep(0.1)


asyncio.run(main(int(sys.argv[1])))
