"""An unmodified asyncio streams server: each line comes back upper-cased.

Prints ``{"port": N}`` once it listens; at end of file on stdin it closes
and prints a report: connections handled, the most open at once, lines
echoed, and the transport of every connection.
"""

import asyncio
import json
import sys
import threading

stats = {"connections": 0, "open": 0, "most_open": 0, "lines": 0, "transports": []}


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    # asyncio hands out a TransportSocket wrapper; the socket itself is its _sock.
    stats["transports"].append(getattr(getattr(sock, "_sock", sock), "transport", "stdlib"))
    stats["connections"] += 1
    stats["open"] += 1
    stats["most_open"] = max(stats["most_open"], stats["open"])
    try:
        while line := await reader.readline():
            stats["lines"] += 1
            writer.write(line.upper())
            await writer.drain()
    finally:
        stats["open"] -= 1
        writer.close()


async def main() -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), loop.call_soon_threadsafe(stop.set)),
                     daemon=True).start()
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    print(json.dumps({"port": server.sockets[0].getsockname()[1],
                      "selector": type(loop._selector).__name__}), flush=True)
    async with server:
        await stop.wait()
    print(json.dumps(stats), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
