"""An unmodified HTTP/1.1 load client on plain sockets: ping-pong latency, or requests/s.

Usage::

    http_load.py PORT [pingpong WARMUP COUNT BUDGET] [rate CONNECTIONS WARMUP SECONDS]

``pingpong``: one keep-alive connection; ``GET /hello``, read the whole
response, next request; WARMUP untimed, then up to COUNT timed (fewer if
BUDGET seconds run out).  Reports ``{"samples": [ns, ...], ...}``.

``rate``: CONNECTIONS keep-alive connections, each with one request
outstanding at a time, driven by selectors.DefaultSelector; WARMUP
seconds untimed, then SECONDS timed.  Reports ``{"requests": n, "ns": t, ...}``.

The runs go in the order given (one process for both saves a start-up);
the JSON report printed at the end maps each run's name to its report.

Every response must be ``200`` with the body ``Hello, world!\\n``, or the
client exits with status 1.  Like wrk, it does not parse more HTTP than it
needs: the head up to its blank line, Content-Length, the body.
"""

import json
import selectors
import socket
import sys
import time

REQUEST = b"GET /hello HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
HELLO = b"Hello, world!\n"
WAIT = 30.0


class BadResponse(Exception):
    pass


def parse(buf: bytearray) -> int:
    """Return the length of the first whole response in *buf*, or 0 if it is not all here."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return 0
    at = buf.find(b"Content-Length:", 0, end)
    if not buf.startswith(b"HTTP/1.1 200 ") or at < 0:
        raise BadResponse(bytes(buf[:end]).decode("latin-1"))
    length = int(buf[at + 15:buf.find(b"\r\n", at)])
    total = end + 4 + length
    if len(buf) < total:
        return 0
    if buf[end + 4:total] != HELLO:
        raise BadResponse(f"body {bytes(buf[end + 4:total])!r}")
    return total


def pingpong(port: int, warmup: int, count: int, budget: float) -> dict:
    sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    # Blocking without a timeout, as a load generator would: a timeout costs the
    # kernel's socket a poll() before every recv.  Whoever runs this bounds it.
    sock.settimeout(None)
    clock = time.perf_counter_ns
    samples = []
    buf = bytearray()
    stop_at = None
    for i in range(warmup + count):
        if i == warmup:
            stop_at = clock() + int(budget * 1e9)
        t0 = clock()
        sock.sendall(REQUEST)
        while not (n := parse(buf)):
            chunk = sock.recv(65536)
            if not chunk:
                raise BadResponse("the server closed the connection")
            buf += chunk
        t1 = clock()
        del buf[:n]
        if stop_at is not None:
            samples.append(t1 - t0)
            if t1 > stop_at:
                break
    transport = getattr(sock, "transport", "stdlib")
    sock.close()
    return {"samples": samples, "transport": transport}


def rate(port: int, conns: int, warmup: float, seconds: float) -> dict:
    sel = selectors.DefaultSelector()
    socks = []
    for _ in range(conns):
        sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        sel.register(sock, selectors.EVENT_READ, bytearray())
        socks.append(sock)
    for sock in socks:
        sock.sendall(REQUEST)
    done = 0
    clock = time.monotonic_ns
    start = clock()
    timed_from, timed_done = start + int(warmup * 1e9), None
    stop_at = timed_from + int(seconds * 1e9)
    now = start
    while now < stop_at:
        events = sel.select(WAIT)
        if not events:
            raise BadResponse(f"no response within {WAIT} s")
        for key, _ in events:
            buf = key.data
            chunk = key.fileobj.recv(65536)
            if not chunk:
                raise BadResponse("the server closed a connection")
            buf += chunk
            while n := parse(buf):
                del buf[:n]
                done += 1
                key.fileobj.send(REQUEST)     # 40 bytes: the socket buffer has room
        now = clock()
        if timed_done is None and now >= timed_from:
            timed_done, timed_from = done, now
    transports = sorted({getattr(s, "transport", "stdlib") for s in socks})
    for sock in socks:
        sel.unregister(sock)
        sock.close()
    sel.close()
    return {"requests": done - (timed_done or 0), "ns": now - timed_from,
            "transports": transports, "selector": type(sel).__name__}


def main() -> int:
    port, args = int(sys.argv[1]), sys.argv[2:]
    report = {}
    try:
        while args:
            mode, a, b, c, *args = args
            if mode == "pingpong":
                report[mode] = pingpong(port, int(a), int(b), float(c))
            elif mode == "rate":
                report[mode] = rate(port, int(a), float(b), float(c))
            else:
                raise SystemExit(f"http_load: unknown run {mode!r}")
    except BadResponse as exc:
        print(f"http_load: bad response: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
