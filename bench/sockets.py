"""Benchmarks through the socket API: ``impl.socket`` against the kernel's sockets.

The ring benchmarks (:mod:`bench.transports`) drive ``impl.ring`` directly;
these go through what a program touches: ``impl.socket`` connections that a
private monitor sets up over shared memory, compared in the same run with
kernel TCP loopback and Unix sockets.

* :func:`socket_transport` - an ``impl.socket`` connection, made through the
  monitor after the fork (the child connects, the parent accepts), for the
  round-trip and streaming loops of :mod:`bench.measure`.
* :func:`setup_rate` - connections set up and torn down per second: the
  client connects, the server accepts and closes, the client sees end of
  stream and closes; client and server are two processes.
* :func:`asyncio_round_trips` - an asyncio echo ping-pong, both sides on
  asyncio protocols, the loop being the ring-first selector of
  ``impl.selectors`` or the stock :class:`asyncio.SelectorEventLoop`.

:func:`private_monitor` starts the monitor these use in a temporary
directory and points this process's library at it meanwhile, so a run
never touches the user's own monitor.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import importlib
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.measure import Placement, _run_forked
from bench.transports import Channel, Endpoint, Transport

__all__ = [
    "ASYNCIO_RING_SELECTOR",
    "SOCKET_KEY",
    "AsyncioVariant",
    "MonitorHandle",
    "MonitorUnavailable",
    "SetupCase",
    "asyncio_round_trips",
    "asyncio_variants",
    "private_monitor",
    "ring_loop_factory",
    "setup_cases",
    "setup_rate",
    "socket_transport",
    "socket_transports",
]

#: The key of the impl.socket transport in the result tables.
SOCKET_KEY = "socket"
#: The key of the asyncio variant that the asyncio goal is judged on.
ASYNCIO_RING_SELECTOR = "asyncio-ring-selector"

# Bound on waits outside the measured loops: the monitor starting, the peer
# reporting its address, an accept of a peer that should be connecting now.
_SETUP_WAIT = 30.0
_PING = b"\x00pingpng"
_LOOPBACK = "127.0.0.1"
_COUNT_BYTES = 8


# -- the private monitor --------------------------------------------------------------------


class MonitorUnavailable(OSError):
    """The benchmark's own monitor could not be started."""


class MonitorHandle:
    """A monitor process this benchmark started, in a private directory."""

    def __init__(self, path: str, proc: subprocess.Popen, log: Path) -> None:
        self.path = path
        self.proc = proc
        self.log = log

    def status(self) -> dict:
        """Return the monitor's STATUS reply (a fresh channel, not the library's)."""
        from impl.monitor import client
        from impl.monitor import protocol as P

        chan = client.ControlChannel.connect(self.path, role="bench")
        try:
            return chan.request(P.STATUS).body
        finally:
            chan.close()

    def log_tail(self, limit: int = 2000) -> str:
        """Return the end of the monitor's log, for error messages."""
        try:
            return self.log.read_text(errors="replace")[-limit:]
        except OSError:
            return ""

    def stop(self) -> None:
        """Stop the monitor: SIGTERM, then SIGKILL if it does not exit in time."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=_SETUP_WAIT)
                return
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc.wait(timeout=_SETUP_WAIT)


def _read_line(fd: int, timeout: float) -> str:
    """Read one line from *fd*, waiting at most *timeout* seconds in all."""
    deadline = time.monotonic() + timeout
    data = b""
    while not data.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise TimeoutError(errno.ETIMEDOUT, f"no reply within {timeout:g} s")
        chunk = os.read(fd, 256)
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace").strip()


def _start_monitor(path: str, log: Path, log_level: str) -> MonitorHandle:
    """Run ``python -m impl.monitor`` on *path* and return once it listens."""
    r, w = os.pipe()
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ)
    env["PYTHONPATH"] = str(root) + (os.pathsep + env["PYTHONPATH"]
                                     if env.get("PYTHONPATH") else "")
    cmd = [sys.executable, "-m", "impl.monitor", "--socket", path, "--ready-fd", str(w),
           "--log-level", log_level]
    try:
        with open(log, "ab") as err:
            proc = subprocess.Popen(cmd, pass_fds=(w,), stdin=subprocess.DEVNULL,
                                    stdout=err, stderr=err, env=env, cwd=str(root))
    except BaseException:
        os.close(r)
        raise
    finally:
        os.close(w)
    handle = MonitorHandle(path, proc, log)
    try:
        line = _read_line(r, _SETUP_WAIT)
    except BaseException:
        handle.stop()
        raise
    finally:
        os.close(r)
    if line != "ready":
        handle.stop()
        raise OSError(errno.ECONNREFUSED,
                      f"the monitor did not start ({line!r}): {handle.log_tail()}")
    return handle


@contextlib.contextmanager
def private_monitor(log_level: str = "warning") -> Iterator[MonitorHandle]:
    """Start a monitor in a temporary directory; this process's library uses it meanwhile.

    ``SOCKSDIRECT_MONITOR`` points at it and ``SOCKSDIRECT_AUTOSTART=0``, so
    forked children reach the same monitor and no other is started; both
    variables are put back afterwards.  The log level defaults to warning,
    so that the monitor does not write a line per connection while the
    set-up rate is measured.
    """
    from impl.monitor import client
    from impl.monitor.paths import ENV_AUTOSTART, ENV_SOCKET

    directory = tempfile.mkdtemp(prefix="sdbench-")
    os.chmod(directory, 0o700)  # the monitor refuses a directory others can enter
    saved = {name: os.environ.get(name) for name in (ENV_SOCKET, ENV_AUTOSTART)}
    handle = None
    try:
        try:
            handle = _start_monitor(os.path.join(directory, "monitor.sock"),
                                    Path(directory, "monitor.log"), log_level)
        except OSError as exc:
            raise MonitorUnavailable(exc.errno, f"no monitor for the socket API: {exc}") \
                from exc
        os.environ[ENV_SOCKET] = handle.path
        os.environ[ENV_AUTOSTART] = "0"
        client.reset()
        yield handle
    finally:
        client.reset()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if handle is not None:
            handle.stop()
        shutil.rmtree(directory, ignore_errors=True)


# -- connected pairs -------------------------------------------------------------------------


def _accept_ring(listener) -> object:
    """Accept one connection on an impl listener and check that it runs over rings."""
    conn, _ = listener.accept()
    if conn.transport != "ring":
        conn.close()
        raise OSError(errno.EPROTO, f"accepted a {conn.transport} connection, not a ring one")
    conn.settimeout(None)
    return conn


def _connect_ring(address: tuple[str, int]) -> object:
    """Connect an impl.socket to *address* and check that it runs over rings."""
    import impl

    sock = impl.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.settimeout(_SETUP_WAIT)
        sock.connect(address)
        if sock.transport != "ring":
            raise OSError(errno.EPROTO, f"connect gave a {sock.transport} connection, "
                          "not a ring one: is the monitor running?")
        sock.settimeout(None)
    except BaseException:
        sock.close()
        raise
    return sock


def _ring_listener():
    """Return an impl listener on 127.0.0.1 registered with the monitor."""
    import impl

    listener = impl.create_server((_LOOPBACK, 0))
    if listener.transport != "listener":
        listener.close()
        raise OSError(errno.ECONNREFUSED, "impl.create_server gave a kernel socket: "
                      "no monitor answers")
    listener.settimeout(_SETUP_WAIT)
    return listener


@dataclass
class _Held:
    """One side's connected socket; ``close`` also drops what came with it."""

    sock: object
    extra: tuple = ()

    def close(self) -> None:
        """Close the socket and whatever else this side holds."""
        for thing in (self.sock, *self.extra):
            thing.close()


def _open_ring_pair() -> tuple[Callable[[], _Held], Callable[[], _Held]]:
    """Return (parent, child) openers: the child connects after the fork, the parent accepts.

    The connection is made after the fork so that each end belongs to the
    process that uses it, as it would between two programs: the monitor
    knows both by their SO_PEERCRED and cleans up after either.
    """
    listener = _ring_listener()
    address = listener.getsockname()

    def parent() -> _Held:
        try:
            return _Held(_accept_ring(listener), (listener,))
        except BaseException:
            listener.close()
            raise

    def child() -> _Held:
        # The listener's descriptors are inherited; leave them to os._exit.
        return _Held(_connect_ring(address))

    return parent, child


def _open_kernel_pair(kind: str) -> tuple[Callable[[], _Held], Callable[[], _Held]]:
    """Return (parent, child) openers of a kernel TCP (NODELAY) or Unix connection."""
    if kind == "tcp":
        with socket.create_server((_LOOPBACK, 0)) as listener:
            ours = socket.create_connection(listener.getsockname(), timeout=_SETUP_WAIT)
            theirs, _ = listener.accept()
        ours.settimeout(None)
        for sock in (ours, theirs):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    elif kind == "unix":
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    else:
        raise ValueError(f"connection kind must be 'ring', 'tcp' or 'unix', got {kind!r}")

    def parent() -> _Held:
        theirs.close()
        return _Held(ours)

    def child() -> _Held:
        ours.close()
        return _Held(theirs)

    return parent, child


def _open_pair(kind: str) -> tuple[Callable[[], _Held], Callable[[], _Held]]:
    return _open_ring_pair() if kind == "ring" else _open_kernel_pair(kind)


# -- the impl.socket transport for round trips and streaming -------------------------------


def _endpoint(held: _Held) -> Endpoint:
    """The bound methods a program would call: sendall and recv_into."""
    sock = held.sock
    return Endpoint(send_all=sock.sendall, recv_some=sock.recv_into, close=held.close)


def _open_socket(same_cpu: bool = False) -> Channel:
    """Open an impl.socket connection for bench.measure (the ring picks its own spin)."""
    parent, child = _open_ring_pair()
    return Channel(parent=lambda: _endpoint(parent()), child=lambda: _endpoint(child()))


def socket_transport() -> Transport:
    """Return the impl.socket transport: sendall / recv_into on a ring connection.

    A monitor must be running for this process's library (see
    :func:`private_monitor`); without one, opening it raises OSError.
    """
    return Transport(SOCKET_KEY, "impl.socket (rings)", False, _open_socket)


def socket_transports() -> tuple[list[Transport], dict[str, str]]:
    """Return [the impl.socket transport] if impl.socket imports, else [] and the reason."""
    try:
        importlib.import_module("impl.sdsocket")
    except ImportError as exc:
        return [], {SOCKET_KEY: f"impl.socket does not import: {exc}"}
    return [socket_transport()], {}


# -- connection set-up rate -----------------------------------------------------------------


@dataclass(frozen=True)
class SetupCase:
    """A kind of connection whose set-up rate is measured."""

    key: str
    label: str
    kind: str  # "ring", "tcp" or "unix"


def setup_cases() -> list[SetupCase]:
    """Return the set-up cases: impl.socket over rings, kernel TCP, kernel Unix."""
    return [
        SetupCase("setup-ring", "impl.socket (rings)", "ring"),
        SetupCase("setup-tcp", "TCP loopback", "tcp"),
        SetupCase("setup-unix", "Unix socket", "unix"),
    ]


def _listen(kind: str, where: str) -> tuple[object, object]:
    """Return (listener, address) for *kind*; a Unix listener binds in directory *where*."""
    if kind == "ring":
        listener = _ring_listener()
        listener.settimeout(None)  # the measurement's interval timer bounds the accepts
        return listener, listener.getsockname()
    if kind == "tcp":
        listener = socket.create_server((_LOOPBACK, 0), backlog=128)
        return listener, listener.getsockname()
    path = os.path.join(where, "setup.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(128)
    return listener, path


class _SetupServer:
    """The child's side: a listener, and the pipe the timed count arrives on."""

    def __init__(self, kind: str, listener, count_fd: int) -> None:
        self.kind = kind
        self.listener = listener
        self.count_fd = count_fd

    def serve(self, warmup: int) -> None:
        """Accept and close *warmup* connections, then as many as the client says."""
        self._accept_close(warmup)
        header = b""
        while len(header) < _COUNT_BYTES:
            chunk = os.read(self.count_fd, _COUNT_BYTES - len(header))
            if not chunk:
                raise EOFError("the client went away before sending the count")
            header += chunk
        self._accept_close(int.from_bytes(header, "little"))

    def _accept_close(self, count: int) -> None:
        accept = self.listener.accept
        ring = self.kind == "ring"
        for _ in range(count):
            conn, _ = accept()
            if ring and conn.transport != "ring":
                conn.close()
                raise OSError(errno.EPROTO, f"accepted a {conn.transport} connection")
            conn.close()

    def close(self) -> None:
        """Close the listener and the pipe."""
        self.listener.close()
        os.close(self.count_fd)


class _SetupClient:
    """The parent's side: where to connect, and the pipe the timed count goes on."""

    def __init__(self, kind: str, address, count_fd: int, where: str) -> None:
        self.kind = kind
        self.address = address
        self.count_fd = count_fd
        self.where = where

    def _factory(self) -> Callable[[], socket.socket]:
        """Return what creates one client socket (not yet connected)."""
        if self.kind == "ring":
            import impl

            return lambda: impl.socket(socket.AF_INET, socket.SOCK_STREAM)
        family = socket.AF_INET if self.kind == "tcp" else socket.AF_UNIX
        return lambda: socket.socket(family, socket.SOCK_STREAM)

    def cycles(self, count: int) -> None:
        """Run *count* connect, wait for the server's close, close cycles."""
        new, address = self._factory(), self.address
        buf = bytearray(1)
        ring = self.kind == "ring"
        for i in range(count):
            sock = new()
            try:
                sock.connect(address)
                if ring and sock.transport != "ring":
                    raise OSError(errno.EPROTO, f"connection {i} fell back to the kernel")
                # End of stream means the server accepted and closed: the
                # cycle is complete, and the client never outruns the backlog.
                if sock.recv_into(buf) != 0:
                    raise ValueError("the server sent data; it should only close")
            finally:
                sock.close()

    def run(self, warmup: int, target: float, lo: int, hi: int) -> tuple[int, int]:
        """Warm up, choose a count lasting about *target* s, time it; return (count, ns)."""
        clock = time.perf_counter_ns
        t0 = clock()
        self.cycles(warmup)
        rate = warmup / max(clock() - t0, 1) * 1e9
        count = max(lo, min(hi, int(rate * target)))
        os.write(self.count_fd, count.to_bytes(_COUNT_BYTES, "little"))
        t0 = clock()
        self.cycles(count)
        return count, clock() - t0

    def close(self) -> None:
        """Close the pipe and remove the Unix socket's directory."""
        os.close(self.count_fd)
        shutil.rmtree(self.where, ignore_errors=True)


def _open_setup(kind: str) -> Channel:
    """Open the pipes of a set-up run; the child listens and reports its address."""
    where = tempfile.mkdtemp(prefix="sdbench-setup-")
    addr_r, addr_w = os.pipe()  # child -> parent: the listening address
    count_r, count_w = os.pipe()  # parent -> child: the timed count

    def child() -> _SetupServer:
        os.close(addr_r)
        os.close(count_w)
        listener, address = _listen(kind, where)
        os.write(addr_w, (json.dumps(address) + "\n").encode())
        os.close(addr_w)
        return _SetupServer(kind, listener, count_r)

    def parent() -> _SetupClient:
        os.close(addr_w)
        os.close(count_r)
        try:
            line = _read_line(addr_r, _SETUP_WAIT)
            if not line:
                raise EOFError("the server exited before it listened")
        except BaseException:
            os.close(count_w)
            # No client will own the directory: remove it here (nothing
            # else would, and each failed run left one behind in /tmp).
            shutil.rmtree(where, ignore_errors=True)
            raise
        finally:
            os.close(addr_r)
        address = json.loads(line)
        return _SetupClient(kind, tuple(address) if kind != "unix" else address,
                            count_w, where)

    return Channel(parent=parent, child=child)  # type: ignore[arg-type]


def setup_rate(case: SetupCase, placement: Placement, *, warmup: int, target: float,
               min_count: int, max_count: int, seconds: float = 120.0) -> tuple[int, int]:
    """Measure connection set-up; return (connections timed, elapsed ns).

    The parent is the client and times the run, the child is the server
    and listens on a socket of its own.  *warmup* untimed cycles go first;
    their pace sets how many are timed, to last about *target* seconds
    within [*min_count*, *max_count*].
    """
    if warmup < 1 or not 1 <= min_count <= max_count or not target > 0:
        raise ValueError("need warmup >= 1, 1 <= min_count <= max_count and target > 0, got "
                         f"{warmup}, {min_count}, {max_count}, {target}")
    transport = Transport(case.key, case.label, case.kind != "ring",
                          lambda same_cpu: _open_setup(case.kind))
    return _run_forked(
        transport, placement,
        lambda client: client.run(warmup, target, min_count, max_count),
        lambda server: server.serve(warmup), seconds)


# -- asyncio echo ping-pong -----------------------------------------------------------------


LoopFactory = Callable[[], asyncio.AbstractEventLoop]


def ring_loop_factory() -> tuple[LoopFactory | None, str]:
    """Return (factory of the ring-first asyncio loop, how it is made), or (None, why not).

    ``impl.selectors.new_event_loop()`` when the module offers it, else
    ``SelectorEventLoop(RingSelector())`` from the same module.
    """
    # importlib, not "from impl import selectors": impl re-exports the socket
    # module's names, and the stdlib selectors module is one of them.
    try:
        ring_selectors = importlib.import_module("impl.selectors")
    except ImportError as exc:
        return None, f"impl.selectors does not import: {exc}"
    make = getattr(ring_selectors, "new_event_loop", None)
    if callable(make):
        return make, "impl.selectors.new_event_loop()"
    selector = getattr(ring_selectors, "RingSelector", None)
    if selector is None:
        return None, "impl.selectors has neither new_event_loop nor RingSelector"
    loop_cls = getattr(ring_selectors, "SelectorEventLoop", asyncio.SelectorEventLoop)
    return (lambda: loop_cls(selector())), "SelectorEventLoop(impl.selectors.RingSelector())"


@dataclass(frozen=True)
class AsyncioVariant:
    """An event loop and a kind of connection for the asyncio echo ping-pong."""

    key: str
    label: str
    kind: str  # "ring", "tcp" or "unix"
    loop: LoopFactory


def asyncio_variants() -> tuple[list[AsyncioVariant], dict[str, str]]:
    """Return the asyncio variants that can run here and, for the others, why not.

    The ring-first selector over rings is what the goal judges; the stock
    loop over rings shows what the selector adds; the stock loop over TCP
    and over a Unix socket are the kernel's.
    """
    stock = asyncio.SelectorEventLoop
    found = []
    skipped: dict[str, str] = {}
    ring_loop, how = ring_loop_factory()
    if ring_loop is None:
        skipped[ASYNCIO_RING_SELECTOR] = how
    else:
        found.append(AsyncioVariant(ASYNCIO_RING_SELECTOR, "ring-first selector, rings",
                                    "ring", ring_loop))
    found += [
        AsyncioVariant("asyncio-ring-stock", "stock loop, rings", "ring", stock),
        AsyncioVariant("asyncio-tcp", "stock loop, TCP loopback", "tcp", stock),
        AsyncioVariant("asyncio-unix", "stock loop, Unix socketpair", "unix", stock),
    ]
    return found, skipped


class _Echo(asyncio.Protocol):
    """The server: write back whatever arrives; ``done`` resolves when the client leaves."""

    def __init__(self, done: asyncio.Future) -> None:
        self.done = done
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


class _Pinger(asyncio.Protocol):
    """The client: collect the echo of one ping and resolve ``waiter`` with it."""

    def __init__(self, closed: asyncio.Future) -> None:
        self.closed = closed
        self.waiter: asyncio.Future | None = None
        self.got = bytearray()

    def data_received(self, data: bytes) -> None:
        self.got += data
        if len(self.got) >= len(_PING) and self.waiter is not None:
            waiter, self.waiter = self.waiter, None
            if self.got == _PING:
                waiter.set_result(None)
            else:
                waiter.set_exception(ValueError(f"echo {bytes(self.got)!r} is not the ping"))
            self.got.clear()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(EOFError("the echo server closed the connection"))
        if not self.closed.done():
            self.closed.set_result(None)


async def _echo_server(sock) -> None:
    """Serve echo on *sock* until the client closes it."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    sock.setblocking(False)
    await loop.connect_accepted_socket(lambda: _Echo(done), sock=sock)
    await done


async def _ping_client(sock, warmup: int, iterations: int, budget: float) -> list[int]:
    """Ping through *sock*; return the timed round trips in ns (warm-up dropped)."""
    loop = asyncio.get_running_loop()
    closed = loop.create_future()
    sock.setblocking(False)
    transport, proto = await loop.create_connection(lambda: _Pinger(closed), sock=sock)
    clock = time.perf_counter_ns
    samples: list[int] = []
    record = samples.append
    write, new_future = transport.write, loop.create_future
    stop_at = clock() + int(budget * 1e9)
    try:
        for _ in range(warmup + iterations):
            waiter = proto.waiter = new_future()
            t0 = clock()
            write(_PING)
            await waiter
            t1 = clock()
            record(t1 - t0)
            if t1 > stop_at:
                break
    finally:
        transport.close()
        await closed
    return samples[warmup:]


def _run_loop(factory: LoopFactory, main, seconds: float):
    """Run the coroutine *main* on a new loop from *factory*, bounded by *seconds*."""
    loop = factory()
    try:
        return loop.run_until_complete(asyncio.wait_for(main, seconds))
    except TimeoutError:
        raise TimeoutError(errno.ETIMEDOUT, "the asyncio ping-pong took longer than "
                           f"{seconds:g} s") from None
    finally:
        loop.close()


def asyncio_round_trips(variant: AsyncioVariant, placement: Placement, *, warmup: int,
                        iterations: int, budget: float, seconds: float = 120.0) -> list[int]:
    """Measure an asyncio echo ping-pong of 8-byte messages; return one sample (ns) each.

    Both processes run a loop from *variant*: the child an echo server
    protocol, the parent a client protocol that awaits each echo before
    the next ping.  After *warmup* untimed round trips up to *iterations*
    are recorded, fewer if *budget* seconds run out first.
    """
    if warmup < 0 or iterations < 1:
        raise ValueError(f"need warmup >= 0 and iterations >= 1, got {warmup}, {iterations}")

    def open_pair(same_cpu: bool) -> Channel:
        parent, child = _open_pair(variant.kind)
        return Channel(parent=parent, child=child)  # type: ignore[arg-type]

    transport = Transport(variant.key, variant.label, variant.kind != "ring", open_pair)
    samples = _run_forked(
        transport, placement,
        lambda held: _run_loop(variant.loop,
                               _ping_client(held.sock, warmup, iterations, budget), seconds),
        lambda held: _run_loop(variant.loop, _echo_server(held.sock), seconds), seconds)
    if not samples:
        raise ValueError(f"{variant.key}: the time budget ran out during warm-up")
    return samples
