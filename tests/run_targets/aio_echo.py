"""An unmodified asyncio streams echo server and client; prints a JSON report."""

import asyncio
import json
import sys


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()
    await writer.wait_closed()


def transport_of(writer: asyncio.StreamWriter) -> str:
    sock = writer.get_extra_info("socket")
    return getattr(getattr(sock, "_sock", sock), "transport", "stdlib")


async def main() -> dict:
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    msg = b"asyncio echo " * 10000
    writer.write(msg)
    await writer.drain()
    writer.write_eof()
    got = await reader.read()
    report = {"echo_ok": got == msg, "client_transport": transport_of(writer),
              "selector": type(asyncio.get_running_loop()._selector).__name__}
    writer.close()
    await writer.wait_closed()
    server.close()
    await server.wait_closed()
    return report


if __name__ == "__main__":
    print(json.dumps(asyncio.run(asyncio.wait_for(main(), 60))), flush=True)
    sys.exit(0)
