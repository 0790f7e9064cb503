"""An unmodified asyncio HTTP/1.1 server: keep-alive, written on asyncio protocols.

Answers ``GET /hello`` with a small fixed body and anything else with 404;
keeps each connection open until the client closes it or asks for
``Connection: close``.  A minimal server of the kind frameworks build on
asyncio's protocols, stdlib only.

Prints ``{"port": N}`` once it listens; at end of file on stdin it closes
and prints a report: requests served and the transport of every connection.
"""

import asyncio

from aio_serve import serve_until_eof

HELLO = b"Hello, world!\n"
OK = (b"HTTP/1.1 200 OK\r\nServer: aio_http\r\nContent-Type: text/plain\r\n"
      b"Content-Length: %d\r\n\r\n" % len(HELLO)) + HELLO
NOT_FOUND = b"HTTP/1.1 404 Not Found\r\nServer: aio_http\r\nContent-Length: 0\r\n\r\n"
stats = {"requests": 0, "transports": []}


class HTTPProtocol(asyncio.Protocol):
    """One connection: parse the requests in what arrives, answer each in order."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.buf = b""
        sock = transport.get_extra_info("socket")
        stats["transports"].append(getattr(getattr(sock, "_sock", sock), "transport", "stdlib"))

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        out = []
        close = False
        while (end := buf.find(b"\r\n\r\n")) >= 0:
            head, rest = buf[:end], buf[end + 4:]
            request_line, _, headers = head.partition(b"\r\n")
            fields = {}
            for line in headers.split(b"\r\n") if headers else ():
                name, _, value = line.partition(b":")
                fields[name.strip().lower()] = value.strip()
            length = int(fields.get(b"content-length", b"0"))
            if len(rest) < length:
                break                       # the body is not all here yet
            buf = rest[length:]
            method, target, _ = request_line.split(b" ", 2)
            out.append(OK if (method, target) == (b"GET", b"/hello") else NOT_FOUND)
            stats["requests"] += 1
            if fields.get(b"connection", b"").lower() == b"close":
                close = True
                break
        self.buf = buf
        if out:
            self.transport.write(b"".join(out))
        if close:
            self.transport.close()


async def main() -> None:
    loop = asyncio.get_running_loop()
    await serve_until_eof(lambda: loop.create_server(HTTPProtocol, "127.0.0.1", 0), stats)


if __name__ == "__main__":
    asyncio.run(main())
