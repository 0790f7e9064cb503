"""The transports the benchmark compares, behind one tiny interface.

Every transport is opened in the parent *before* ``fork`` and gives each
side an :class:`Endpoint`: a blocking ``send_all`` and a blocking
``recv_some`` that returns at least one byte (0 only at end of stream).
The measurement loops in :mod:`bench.measure` call nothing else, so each
transport pays the same Python overhead and the comparison is fair.

Nothing is given a timeout: CPython implements a socket timeout with a
``poll`` before every call, an extra system call that would be charged to
the kernel transports only.  Bounded waiting comes instead from an interval
timer around each measurement in both processes (see :mod:`bench.measure`),
whose signal interrupts a blocked socket call and the ring's wait alike.
"""

from __future__ import annotations

import functools
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = [
    "RING_CAPACITY",
    "Channel",
    "Endpoint",
    "Transport",
    "available_transports",
    "kernel_transports",
    "ring_settings",
    "ring_transports",
]

# One ring per direction.  1 MiB holds four of the largest (256 KiB)
# messages, so the streaming runs measure copying, not waiting for space.
RING_CAPACITY = 1 << 20


@dataclass
class Endpoint:
    """One side of an open transport: blocking send of all bytes, blocking receive."""

    send_all: Callable[[bytes | memoryview], object]
    recv_some: Callable[[memoryview], int]
    close: Callable[[], None] = field(default=lambda: None)


@dataclass
class Channel:
    """An opened transport: the parent's and the child's end.

    ``parent()`` and ``child()`` are called after ``fork`` in the process
    named; each drops what belongs to the other side, so a dead peer shows
    up as end of stream on the kernel transports.
    """

    parent: Callable[[], Endpoint]
    child: Callable[[], Endpoint]


@dataclass(frozen=True)
class Transport:
    """A transport under test: a short key, a label for tables, how to open it.

    ``open(same_cpu)`` is told whether both processes will share one CPU,
    so a transport that waits by spinning can be set up not to spin there.
    """

    key: str
    label: str
    kernel: bool
    open: Callable[[bool], Channel]


# -- kernel transports ------------------------------------------------------------------


def _socket_endpoint(sock: socket.socket) -> Endpoint:
    """Wrap a connected, blocking stream socket."""
    return Endpoint(send_all=sock.sendall, recv_some=sock.recv_into, close=sock.close)


def _socket_channel(ours: socket.socket, theirs: socket.socket) -> Channel:
    """Give the parent *ours* and the child *theirs*, each closing the other."""

    def parent() -> Endpoint:
        theirs.close()
        return _socket_endpoint(ours)

    def child() -> Endpoint:
        ours.close()
        return _socket_endpoint(theirs)

    return Channel(parent=parent, child=child)


def _open_tcp(same_cpu: bool = False) -> Channel:
    """Connect two TCP sockets over loopback, Nagle off on both (TCP_NODELAY)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    for sock in (client, server):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return _socket_channel(client, server)


def _open_unix(same_cpu: bool = False) -> Channel:
    """Create a connected Unix stream socketpair."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    return _socket_channel(ours, theirs)


def _pipe_endpoint(rfd: int, wfd: int) -> Endpoint:
    """Wrap a read end and a write end of two pipes."""
    write, readv = os.write, os.readv

    def send_all(data: bytes | memoryview) -> None:
        # A blocking pipe write returns short only if a signal interrupts it.
        sent = write(wfd, data)
        if sent < len(data):
            view = memoryview(data)
            while sent < len(view):
                sent += write(wfd, view[sent:])

    def recv_some(view: memoryview) -> int:
        return readv(rfd, [view])

    def close() -> None:
        os.close(rfd)
        os.close(wfd)

    return Endpoint(send_all=send_all, recv_some=recv_some, close=close)


def _open_pipe(same_cpu: bool = False) -> Channel:
    """Create two pipes, one per direction."""
    down_r, down_w = os.pipe()  # parent -> child
    up_r, up_w = os.pipe()  # child -> parent

    def parent() -> Endpoint:
        os.close(down_r)
        os.close(up_w)
        return _pipe_endpoint(up_r, down_w)

    def child() -> Endpoint:
        os.close(down_w)
        os.close(up_r)
        return _pipe_endpoint(down_r, up_w)

    return Channel(parent=parent, child=child)


def kernel_transports() -> list[Transport]:
    """Return the kernel baselines: TCP loopback, Unix socketpair, a pair of pipes."""
    return [
        Transport("tcp", "TCP loopback (NODELAY)", True, _open_tcp),
        Transport("unix", "Unix socketpair", True, _open_unix),
        Transport("pipe", "os.pipe pair", True, _open_pipe),
    ]


# -- our ring -----------------------------------------------------------------------------


def _close_rings(*rings: object) -> None:
    """Close rings that have a close method (unmap, close the fds)."""
    for ring in rings:
        close = getattr(ring, "close", None)
        if close is not None:
            close()


def _ring_endpoint(writer: object, reader: object,
                   close: Callable[[], None] = lambda: None) -> Endpoint:
    """Wrap a ring writer (one direction) and a ring reader (the other).

    The bound methods are used as they are, without a timeout, as the kernel
    transports' are: the interval timer of bench.measure bounds the run, and
    its signal interrupts the ring's wait (spin, yield, poll) just the same.
    """
    return Endpoint(
        send_all=writer.send_all,  # type: ignore[attr-defined]
        recv_some=reader.recv_into,  # type: ignore[attr-defined]
        close=close,
    )


def _ring_opener(ring_cls: type, backend: str, spin_ns: int) -> Callable[[bool], Channel]:
    """Return an opener for two rings of *backend*, one per direction."""

    def open_rings(same_cpu: bool = False) -> Channel:
        # The spin budget is explicit so that every run starts with it; the
        # ring's automatic choice settles on the same values, but only after
        # both ends have published their CPUs and waited once.
        spin = 0 if same_cpu else spin_ns
        down = ring_cls.create(RING_CAPACITY, backend=backend, spin_ns=spin)
        up = ring_cls.create(RING_CAPACITY, backend=backend, spin_ns=spin)

        # fork inherits the mappings and the eventfds, so each side keeps
        # using the parent's Ring objects, taking the writer of one ring and
        # the reader of the other.
        def parent() -> Endpoint:
            return _ring_endpoint(down.writer(), up.reader(),
                                  functools.partial(_close_rings, down, up))

        def child() -> Endpoint:
            return _ring_endpoint(up.writer(), down.reader())

        return Channel(parent=parent, child=child)

    return open_rings


def ring_transports() -> tuple[list[Transport], dict[str, str]]:
    """Return the ring transports that work here and, for the others, why not.

    Each backend is tried once with a small ring, so a missing C extension
    shows up as a reason in the report instead of a crash in the middle.
    """
    labels = {"c": "ring (C path)", "python": "ring (pure Python)"}
    skipped: dict[str, str] = {}
    try:
        from impl.ring import SPIN_NS, Ring
    except ImportError as exc:
        reason = f"impl.ring does not import: {exc}"
        return [], {f"ring-{backend}": reason for backend in labels}
    found: list[Transport] = []
    for backend, label in labels.items():
        key = f"ring-{backend}"
        try:
            probe = Ring.create(4096, backend=backend)
        except (OSError, ValueError, ImportError, RuntimeError) as exc:
            skipped[key] = f"Ring.create(backend={backend!r}) failed: {exc}"
            continue
        _close_rings(probe)
        found.append(Transport(key, label, False, _ring_opener(Ring, backend, SPIN_NS)))
    return found, skipped


def ring_settings() -> dict[str, object]:
    """Return the ring's waiting budgets and the capacity the benchmark uses ({} if no ring)."""
    try:
        from impl.ring import SPIN_NS, YIELDS
    except ImportError:
        return {}
    return {"capacity": RING_CAPACITY, "spin_ns": SPIN_NS, "spin_ns_one_core": 0,
            "yields": YIELDS}


def available_transports() -> tuple[list[Transport], dict[str, str]]:
    """Return every transport that can run here (rings first) and the skipped ones' reasons."""
    rings, skipped = ring_transports()
    return rings + kernel_transports(), skipped
