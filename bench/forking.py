"""Fork benchmarks (issue 5): what keeping sockets usable across fork() costs.

Two measurements, each side by side with kernel TCP loopback in the same run:

* **Forking server** (:func:`forking_server_rate`): a
  ``socketserver.ForkingTCPServer`` -- accept in the parent, one child per
  request, the parent closes its copy -- serves a client that connects,
  sends a 64-byte request, reads the 64-byte answer and closes, one request
  after another.  Requests per second over rings (``impl`` sockets on both
  sides) and over TCP.  The server forks once per request, so this is where
  the fork hooks (HOLD before the fork, FORKED in the child, the parent's
  CLOSE) show up against a whole request's cost.  Every answer is checked.
* **fork() itself** (:func:`fork_latency`): a process holding *n* open
  connections forks; the time until ``os.fork()`` returns in the parent
  and until the child, its fork hooks done, reports back over a pipe.  The
  first fork of a connection sends the monitor its hold pipe (HOLD); a
  second fork of the same connections finds them counted already.

:func:`run_forking` runs both and returns JSON-ready data.  The server runs
in a process of its own on the suite's child CPU, the client on the parent's.
"""

from __future__ import annotations

import errno
import functools
import os
import socket
import socketserver
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING

from bench.measure import Placement, _deadline, _pin, _reap
from bench.stats import summarise_latency

if TYPE_CHECKING:
    from bench.suite import Settings

__all__ = ["FORK_KEY", "FORK_SIZES", "fork_latency", "forking_server_rate", "ring_connections",
           "run_forking", "summary_lines"]

#: The --only key of the fork benchmarks.
FORK_KEY = "fork"
#: How many open connections the forking process holds in fork_latency.
FORK_SIZES = (1, 16)
_REQUEST = 64
_LOOPBACK = "127.0.0.1"
_KINDS = ("ring", "tcp")

Attempt = Callable[[str, str, Callable[[], object]], object]


def _socket_module(kind: str):
    """The module whose socket(), create_connection() and create_server() *kind* uses."""
    if kind == "ring":
        import impl
        return impl
    if kind == "tcp":
        return socket
    raise ValueError(f"kind must be 'ring' or 'tcp', got {kind!r}")


def _recv_exact(sock, n: int) -> bytes:
    """Read exactly *n* bytes; EOF before that is an error."""
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = sock.recv_into(view[got:])
        if k == 0:
            raise ConnectionError(errno.ECONNRESET, f"EOF after {got} of {n} bytes")
        got += k
    return bytes(buf)


def _answer(request: bytes) -> bytes:
    """The server's transformation of a request (the client checks it)."""
    return request[::-1]


class _Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.request.sendall(_answer(_recv_exact(self.request, _REQUEST)))


def _server_class(kind: str) -> type[socketserver.ForkingTCPServer]:
    """ForkingTCPServer whose listening socket is *kind*'s (impl's for rings)."""
    mod = _socket_module(kind)

    class Server(socketserver.ForkingTCPServer):
        allow_reuse_address = True

        def __init__(self, address, handler) -> None:
            # TCPServer makes a socket.socket; the only change is whose socket.
            super().__init__(address, handler, bind_and_activate=False)
            self.socket.close()
            self.socket = mod.socket(self.address_family, self.socket_type)
            self.server_bind()
            self.server_activate()

    return Server


def _serve(kind: str, cpu: int | None, port_w: int, stop_r: int) -> None:
    """The server process: serve until *stop_r* becomes readable, then exit."""
    code = 1
    try:
        _pin(cpu)
        server = _server_class(kind)((_LOOPBACK, 0), _Handler)
        if kind == "ring" and server.socket.transport != "listener":
            raise OSError(errno.ECONNREFUSED, "no monitor: the server's socket is a kernel one")
        os.write(port_w, server.server_address[1].to_bytes(2, "big"))

        def stop() -> None:
            os.read(stop_r, 1)
            server.shutdown()

        threading.Thread(target=stop, daemon=True).start()
        server.serve_forever(poll_interval=0.05)
        server.server_close()   # waits for the handler children (block_on_close)
        code = 0
    except BaseException:  # noqa: BLE001 - the server reports everything, then exits
        print(f"bench fork server ({kind}):", file=sys.stderr)
        traceback.print_exc()
    finally:
        sys.stderr.flush()
        os._exit(code)


def _requests(kind: str, port: int, seconds: float, warmup: int) -> list[int]:
    """Make requests one after another for about *seconds*; return each one's ns."""
    mod = _socket_module(kind)
    samples: list[int] = []
    end = None
    n = 0
    while end is None or time.monotonic() < end:
        if n == warmup:
            end = time.monotonic() + seconds
        request = n.to_bytes(8, "big") * (_REQUEST // 8)
        t0 = time.perf_counter_ns()
        with mod.create_connection((_LOOPBACK, port)) as sock:
            if kind == "ring" and sock.transport != "ring":
                raise OSError(errno.EPROTO, f"a {sock.transport} connection, not a ring one")
            sock.sendall(request)
            got = _recv_exact(sock, _REQUEST)
        t1 = time.perf_counter_ns()
        if got != _answer(request):
            raise AssertionError(f"request {n}: wrong answer {got[:16]!r}...")
        if n >= warmup:
            samples.append(t1 - t0)
        n += 1
    return samples


def forking_server_rate(kind: str, placement: Placement, *, seconds: float, warmup: int,
                        deadline: float) -> list[int]:
    """Per-request times (ns) against a ForkingTCPServer over *kind* ("ring" or "tcp")."""
    port_r, port_w = os.pipe()
    stop_r, stop_w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        os.close(port_r)
        os.close(stop_w)
        _serve(kind, placement.child_cpu, port_w, stop_r)
    os.close(port_w)
    os.close(stop_r)
    saved = os.sched_getaffinity(0)
    try:
        _pin(placement.parent_cpu)
        with _deadline(deadline):
            raw = os.read(port_r, 2)
            if len(raw) != 2:
                raise ChildProcessError(errno.ECHILD, f"{kind}: the server did not start")
            return _requests(kind, int.from_bytes(raw, "big"), seconds, warmup)
    finally:
        os.sched_setaffinity(0, saved)
        os.close(port_r)
        os.close(stop_w)   # EOF: the server's stop thread shuts it down
        code = _reap(pid, deadline)
        if code != 0 and sys.exc_info()[0] is None:
            raise ChildProcessError(errno.ECHILD, f"{kind}: the server exited with {code}")


def _connections(kind: str, n: int) -> tuple[list, object]:
    """*n* connected pairs (both ends in this process) and the listener they came from."""
    mod = _socket_module(kind)
    listener = mod.create_server((_LOOPBACK, 0))
    socks = []
    try:
        for _ in range(n):
            client = mod.create_connection(listener.getsockname())
            server, _ = listener.accept()
            socks += [client, server]
            if kind == "ring" and client.transport != "ring":
                raise OSError(errno.EPROTO, f"a {client.transport} connection, not a ring one")
    except BaseException:
        for s in socks:
            s.close()
        listener.close()
        raise
    return socks, listener


def _timed_fork(deadline: float) -> tuple[int, int]:
    """Fork a child that reports back and exits; (ns until fork returned, until the report)."""
    r, w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    t0 = time.perf_counter_ns()
    pid = os.fork()
    if pid == 0:
        # The fork hooks ran before os.fork() returned here.
        os.write(w, b"x")
        os._exit(0)
    t1 = time.perf_counter_ns()
    os.close(w)
    try:
        got = os.read(r, 1)
        t2 = time.perf_counter_ns()
    finally:
        os.close(r)
        code = _reap(pid, deadline)
    if got != b"x" or code != 0:
        raise ChildProcessError(errno.ECHILD, f"the forked child failed (status {code})")
    return t1 - t0, t2 - t0


def fork_latency(kind: str, n: int, *, iterations: int, deadline: float) -> dict[str, list[int]]:
    """fork() with *n* open *kind* connections: first and second fork of the same connections.

    Returns ns samples under "first-return", "first-ready", "again-return"
    and "again-ready" ("return": os.fork() returned in the parent;
    "ready": the child reported back, its fork hooks done).
    """
    out: dict[str, list[int]] = {k: [] for k in ("first-return", "first-ready",
                                                   "again-return", "again-ready")}
    with _deadline(deadline):
        for _ in range(iterations):
            socks, listener = _connections(kind, n)
            try:
                for which in ("first", "again"):
                    ret, ready = _timed_fork(deadline)
                    out[f"{which}-return"].append(ret)
                    out[f"{which}-ready"].append(ready)
            finally:
                for s in socks:
                    s.close()
                listener.close()
    return out


def _ratio(ring: float, tcp: float) -> float | None:
    return ring / tcp if tcp else None


def run_forking(s: Settings, two: Placement, attempt: Attempt,
                log: Callable[[str], None]) -> dict[str, object]:
    """Run the fork benchmarks; return them as JSON-ready data.

    *attempt(key, what, run)* runs one measurement and returns its value, or
    None after a failure; a monitor must be running for this process's
    library (bench.sockets.private_monitor).
    """
    started = time.monotonic()
    server_runs: dict[str, list[list[int]]] = {k: [] for k in _KINDS}
    fork_runs: dict[str, dict[str, list[list[int]]]] = {}
    for rep in range(1, s.repeats + 1):
        log(f"fork: repeat {rep}/{s.repeats}: ForkingTCPServer requests")
        # Alternate the order so that a drift of the shared machine cancels out.
        for kind in _KINDS if rep % 2 else _KINDS[::-1]:
            got = attempt(f"fork-server-{kind}", f"forking server {kind}",
                          functools.partial(forking_server_rate, kind, two,
                                            seconds=s.fork_server_seconds,
                                            warmup=s.fork_server_warmup, deadline=s.deadline))
            if got is not None:
                server_runs[kind].append(got)
        log(f"fork: repeat {rep}/{s.repeats}: fork() with open connections")
        for n in FORK_SIZES:
            for kind in _KINDS:
                got = attempt(f"fork-latency-{kind}-{n}", f"fork with {n} {kind}",
                              functools.partial(fork_latency, kind, n,
                                                iterations=s.fork_iterations,
                                                deadline=s.deadline))
                if got is None:
                    continue
                for which, samples in got.items():
                    fork_runs.setdefault(f"{kind}-{n}", {}).setdefault(which, []).append(
                        samples)
    server = {k: summarise_latency(v) for k, v in server_runs.items() if v}
    for summary in server.values():
        summary["per_s"] = 1e6 / summary["median_us"]
        summary["repeat_per_s"] = [1e6 / m for m in summary["repeat_median_us"]]
    ratio = None
    if "ring" in server and "tcp" in server:
        ratio = _ratio(server["ring"]["per_s"], server["tcp"]["per_s"])
    forks = {key: {which: summarise_latency(runs) for which, runs in v.items()}
             for key, v in fork_runs.items()}
    return {
        "server": {"request_bytes": _REQUEST, "rates": server, "ratio": ratio},
        "fork": {"sizes": list(FORK_SIZES), "latency": forks},
        "duration_s": round(time.monotonic() - started, 1),
    }


def summary_lines(fork: dict) -> list[str]:
    """Headline lines of the fork benchmarks for the command's summary."""
    if not fork:
        return []
    lines = []
    rates = fork["server"]["rates"]
    if rates:
        lines += ["", "fork: ForkingTCPServer, one fork per request (median):"]
        for kind in _KINDS:
            if kind in rates:
                lines.append(f"  {kind:<6} {rates[kind]['per_s']:10,.0f} requests/s "
                             f"({rates[kind]['median_us']:8.1f} µs each)")
        if fork["server"]["ratio"] is not None:
            lines.append(f"  rings / TCP: {fork['server']['ratio']:.2f}x")
    lat = fork["fork"]["latency"]
    if lat:
        lines += ["", "fork: fork() with open connections, until the child is ready (median):"]
        for key in sorted(lat):
            first, again = lat[key]["first-ready"], lat[key]["again-ready"]
            lines.append(f"  {key:<10} first {first['median_us']:9.1f} µs, "
                         f"again {again['median_us']:9.1f} µs")
    return lines


def ring_connections(fork: dict, s: Settings) -> int:
    """How many ring connections the fork benchmarks of *fork* (their results) opened."""
    server = fork["server"]["rates"].get("ring")
    requests = 0 if server is None else server["samples"] + s.repeats * s.fork_server_warmup
    forks = sum(s.repeats * s.fork_iterations * n for n in FORK_SIZES
                if f"ring-{n}" in fork["fork"]["latency"])
    return requests + forks
