"""An unmodified asyncio streams server: each line comes back upper-cased.

Prints ``{"port": N}`` once it listens; at end of file on stdin it closes
and prints a report: connections handled, the most open at once, lines
echoed, and the transport of every connection.
"""

import asyncio

from aio_serve import serve_until_eof

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
    await serve_until_eof(lambda: asyncio.start_server(handle, "127.0.0.1", 0), stats)


if __name__ == "__main__":
    asyncio.run(main())
