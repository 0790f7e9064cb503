"""Unmodified asyncio clients: CLIENTS connections at once, each sending LINES lines.

Usage: aio_echo_clients.py PORT CLIENTS LINES

Every client connects first; once all are connected, all exchange their
lines at the same time, one line and its echo after another.  Prints a
JSON report: the echoes each client got, and each connection's transport.
"""

import asyncio
import json
import sys

WAIT = 30.0


async def client(port: int, c: int, lines: int, connected: asyncio.Barrier) -> dict:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await connected.wait()        # all connections open before any line goes
    got = []
    for k in range(lines):
        writer.write(f"client {c} line {k} {'x' * (k * 37 % 500)}\n".encode())
        await writer.drain()
        got.append((await reader.readline()).decode())
    sock = writer.get_extra_info("socket")
    transport = getattr(getattr(sock, "_sock", sock), "transport", "stdlib")
    writer.close()
    await writer.wait_closed()
    return {"echoes": got, "transport": transport}


async def main(port: int, clients: int, lines: int) -> list:
    connected = asyncio.Barrier(clients)
    return await asyncio.gather(*(client(port, c, lines, connected) for c in range(clients)))


if __name__ == "__main__":
    port, clients, lines = (int(a) for a in sys.argv[1:4])
    report = asyncio.run(asyncio.wait_for(main(port, clients, lines), WAIT))
    print(json.dumps({"clients": report,
                      "policy": type(asyncio.get_event_loop_policy()).__module__}), flush=True)
