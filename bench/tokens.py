"""Token benchmarks (issue 4): what the send and receive tokens cost, and what sharing gains.

Three measurements, each side by side with its baseline in the same run:

* **Single owner** (:func:`single_owner_cost`): the plain round trip and
  stream of :mod:`bench.measure` over an ``impl.socket`` connection with the
  token checks on (the default) and with them switched off on the same kind
  of connection (:func:`tokens_off`, a private switch for this measurement
  only).  The variants alternate pair after pair -- on, off, then off, on --
  and each pair gives one ratio, so a slow drift of the shared machine
  cancels out; the goal judges the median ratio.
* **Shared socket** (:func:`shared_rate`): four threads of one process
  ``sendall`` framed messages on one socket to a reader in another process,
  and one writer in another process feeds four threads that each receive
  whole frames with ``recv_into(buf, n, MSG_WAITALL)``.  Frames per second
  over rings (through the monitor) and over kernel TCP loopback, shared in
  exactly the same way.  Every frame is checked: whole, and in order per
  sender (or per reader).  A bad frame over rings is an error; the kernel's
  are counted and reported, since Linux does not promise whole frames to
  threads sharing a TCP socket.
* **Takeover** (:func:`takeover_latency`): how long a ``sendall`` takes on a
  socket that another thread (same process) or another process (after
  fork: TAKE, RECALL, RELEASE and GRANT through the monitor) used last and
  left idle, against the fast path of a thread that used it last itself.
  Kernel TCP shared the same way shows what a plain send costs there.

:func:`run_tokens` runs all three and returns JSON-ready data; the goals are
judged by :func:`evaluate_token_goals`.  The connection placement is the
suite's: the process with the sharing threads on one CPU, its peer on the
other, so threads of one process share their process's core.
"""

from __future__ import annotations

import errno
import functools
import itertools
import json
import os
import socket
import statistics
import struct
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from bench import sockets
from bench.measure import (
    Placement,
    _calibrated,
    _deadline,
    _reap,
    _recv_rest,
    _run_forked,
    round_trips,
    stream,
)
from bench.stats import summarise_latency
from bench.transports import Channel, Transport

if TYPE_CHECKING:
    from bench.suite import Settings

__all__ = [
    "SHARED_SIZES",
    "SINGLE_CASES",
    "TAKEOVER_CASES",
    "THREADS",
    "TOKEN_GOALS",
    "SharedCase",
    "TakeoverCase",
    "evaluate_token_goals",
    "ring_connections",
    "run_tokens",
    "shared_cases",
    "shared_rate",
    "single_owner_cost",
    "single_owner_transport",
    "takeover_latency",
    "tokens_off",
]

#: Threads sharing one socket in the shared-socket runs.
THREADS = 4
#: Frame sizes of the shared-socket runs.
SHARED_SIZES = (64, 4096)

#: Single-owner cases: key, label.  The value of each run is nanoseconds per
#: operation (a round trip's median, or elapsed time per streamed message).
SINGLE_CASES = (
    ("rtt", "round trip, 8 B (median)"),
    ("stream-64", "streaming 64 B (time per message)"),
    ("stream-16384", "streaming 16 KiB (time per message)"),
)

# Bound on a wait outside the measured loops (a thread's turn, a barrier).
_WAIT = 60.0
# The byte every frame's middle and every streamed message is made of.
_FILL = 0x5A
# A sender's frames repeat after this many (their sequence numbers count modulo it),
# so frames are built once and the senders only send.
_CYCLE = 256
# The reader of four senders drains into a buffer of about this size.
_CHUNK = 64 * 1024
# Sender id and sequence number, at both ends of a frame (send direction).
_SENDER_SEQ = struct.Struct("<II")
# Sequence number, at both ends of a frame (receive direction).
_SEQ = struct.Struct("<Q")
# The 8-byte counts that travel over pipes and acknowledgements.
_COUNT = struct.Struct("<Q")
# Takeover runs send these 8-byte messages; the stop message ends the drain.
_DATA = b"\x00takeovr"
_STOP = b"\x01stop!!!"


# -- the token switch ----------------------------------------------------------------------


def _ring_endpoints(sock: object) -> tuple:
    """(writer, reader) of an impl.socket ring connection; OSError for anything else."""
    conn = getattr(sock, "_conn", None)
    if conn is None:
        raise OSError(errno.EPROTO, "not an impl.socket ring connection")
    return conn.writer, conn.reader


def _check_tokens_on(sock: object) -> None:
    """Raise ValueError unless both endpoints of *sock* check their token in C."""
    for ep in _ring_endpoints(sock):
        ring_call = getattr(ep, "_p", None)
        if getattr(ep, "token", None) is None or ring_call is None or not ring_call.tok_off:
            raise ValueError("the impl.socket connection has no token checks (needs the C "
                             "ring backend and impl.token): nothing to compare")


def tokens_off(sock: object) -> None:
    """Switch the token checks off on both endpoints of the impl.socket *sock*.

    A private switch for the single-owner comparison only: with ``tok_off``
    0 the C ring calls skip Enter and Exit, and with no ``token`` the
    library never takes the slow path.  A socket switched off must not be
    shared.
    """
    for ep in _ring_endpoints(sock):
        ep._p.tok_off = 0
        ep.token = None


# -- single owner: token checks on against off ---------------------------------------------


def _open_single(tokens: bool, same_cpu: bool = False) -> Channel:
    """An impl.socket connection for bench.measure, with the token checks on or off."""
    parent, child = sockets._open_ring_pair()

    def side(make: Callable[[], sockets._Held]) -> Callable[[], object]:
        def opened() -> object:
            held = make()
            try:
                _check_tokens_on(held.sock)
                if not tokens:
                    tokens_off(held.sock)
            except BaseException:
                held.close()
                raise
            return sockets._endpoint(held)

        return opened

    return Channel(parent=side(parent), child=side(child))  # type: ignore[arg-type]


def single_owner_transport(tokens: bool) -> Transport:
    """The impl.socket transport with its token checks on (*tokens*) or off."""
    key = "socket-tokens-on" if tokens else "socket-tokens-off"
    label = "impl.socket, token checks " + ("on" if tokens else "off")
    return Transport(key, label, False, functools.partial(_open_single, tokens))


def single_owner_cost(case: str, tokens: bool, placement: Placement, s: Settings) -> float:
    """Run single-owner case *case* once; return nanoseconds per operation.

    "rtt": the median of the 8-byte round trips; "stream-N": elapsed time
    per streamed message of N bytes.  The loops are bench.measure's, so the
    numbers match the suite's own impl.socket rows.
    """
    transport = single_owner_transport(tokens)
    if case == "rtt":
        samples = round_trips(transport, placement, warmup=s.rtt_warmup,
                              iterations=s.token_rtt_iterations, budget=s.token_rtt_budget,
                              seconds=s.deadline)
        return float(statistics.median(samples))
    if case.startswith("stream-"):
        size = int(case.removeprefix("stream-"))
        count, ns = stream(transport, placement, size=size, warmup=s.stream_warmup(size),
                           target=s.token_stream_seconds, min_count=s.stream_min_count,
                           max_count=s.stream_max_count, seconds=s.deadline)
        return ns / count
    raise ValueError(f"single-owner case must be one of {[k for k, _ in SINGLE_CASES]}, "
                     f"got {case!r}")


def _summarise_single(on: list[float], off: list[float]) -> dict[str, object]:
    """Pairs of (on, off) costs -> the median ratio on/off and the medians of each."""
    ratios = [a / b for a, b in zip(on, off, strict=True)]
    return {
        "pairs": len(ratios),
        "on_ns": on,
        "off_ns": off,
        "ratios": ratios,
        "ratio": statistics.median(ratios),
        "on_median_ns": statistics.median(on),
        "off_median_ns": statistics.median(off),
    }


# -- shared socket: four threads on one socket -----------------------------------------------


@dataclass(frozen=True)
class SharedCase:
    """Four threads sending on one socket ("send") or receiving from one ("recv")."""

    key: str
    label: str
    direction: str  # "send": THREADS writers, one reader; "recv": one writer, THREADS readers
    size: int


def shared_cases() -> list[SharedCase]:
    """The shared-socket cases: both directions, each frame size."""
    cases = []
    for direction in ("send", "recv"):
        for size in SHARED_SIZES:
            name = f"{size // 1024} KiB" if size >= 1024 else f"{size} B"
            what = (f"{THREADS} threads sendall {name} frames, one reader"
                    if direction == "send" else
                    f"one writer, {THREADS} threads recv {name} frames (MSG_WAITALL)")
            cases.append(SharedCase(f"{direction}-{size}", what, direction, size))
    return cases


class _Side:
    """One process's connected socket, a pipe end, and the threads using the socket."""

    def __init__(self, held: sockets._Held, fd: int) -> None:
        self.held = held
        self.sock = held.sock
        self.fd = fd
        self.threads: list[threading.Thread] = []

    def close(self) -> None:
        """Close the pipe end, and the socket unless a thread may still be inside it."""
        os.close(self.fd)
        # A thread stuck in a ring call after an error must not find its
        # mapping gone: then the socket is left to the process's exit.
        if not any(t.is_alive() for t in self.threads):
            self.held.close()


def _open_with_pipe(kind: str, to_child: bool) -> Channel:
    """A connection of *kind* ("ring" or "tcp") and a pipe between the two processes.

    *to_child*: the pipe carries the timed count from the parent to the
    child; otherwise results from the child to the parent.
    """
    parent, child = sockets._open_pair(kind)
    r, w = os.pipe()
    ours, theirs = (w, r) if to_child else (r, w)

    def parent_side() -> _Side:
        os.close(theirs)
        try:
            return _Side(parent(), ours)
        except BaseException:
            os.close(ours)
            raise

    def child_side() -> _Side:
        os.close(ours)
        return _Side(child(), theirs)

    return Channel(parent=parent_side, child=child_side)  # type: ignore[arg-type]


def _read_exact(fd: int, n: int) -> bytes:
    """Read exactly *n* bytes from the pipe *fd* (EOFError if it closes first)."""
    data = b""
    while len(data) < n:
        chunk = os.read(fd, n - len(data))
        if not chunk:
            raise EOFError(f"pipe closed after {len(data)} of {n} bytes")
        data += chunk
    return data


def _read_all(fd: int) -> bytes:
    """Read the pipe *fd* to its end."""
    parts = []
    while chunk := os.read(fd, 1 << 16):
        parts.append(chunk)
    return b"".join(parts)


def _recv_exact(sock: object, view: memoryview) -> None:
    """Fill *view* from *sock* with MSG_WAITALL, going on after a short return."""
    got = sock.recv_into(view, len(view), socket.MSG_WAITALL)
    while got < len(view):
        more = sock.recv_into(view[got:], len(view) - got, socket.MSG_WAITALL)
        if more <= 0:
            raise EOFError(f"peer closed after {got} of {len(view)} bytes")
        got += more


def _sender_frames(sender: int, size: int) -> list[bytes]:
    """The frames sender *sender* cycles through: id and sequence number at both ends."""
    middle = bytes([_FILL]) * (size - 2 * _SENDER_SEQ.size)
    return [_SENDER_SEQ.pack(sender, i) + middle + _SENDER_SEQ.pack(sender, i)
            for i in range(_CYCLE)]


def _check_sent_frames(data: memoryview, size: int, following: list[int]) -> int:
    """Check frames of the senders; return how many are torn or out of order.

    *following* holds each sender's next expected sequence number (modulo
    the cycle) and is updated; after a bad frame it follows what came.
    """
    layout = struct.Struct(f"<II{size - 2 * _SENDER_SEQ.size}xII")
    bad = 0
    senders = len(following)
    for sender, seq, sender2, seq2 in layout.iter_unpack(data):
        if sender != sender2 or seq != seq2 or sender >= senders:
            bad += 1
            continue
        if seq != following[sender]:
            bad += 1
        following[sender] = (seq + 1) % _CYCLE
    return bad


class _Threads:
    """THREADS worker threads that meet at a barrier with the main thread.

    Any thread's exception aborts the barrier, so nobody waits for a party
    that is gone; :meth:`join` re-raises the first one in the main thread.
    """

    def __init__(self, side: _Side, work: Callable[[int, _Threads], object]) -> None:
        self.barrier = threading.Barrier(THREADS + 1)
        self.errors: list[BaseException] = []
        self.results: list[object] = [None] * THREADS
        self.count = 0  # the timed count per thread, set by the main thread
        self.side = side

        def run(k: int) -> None:
            try:
                self.results[k] = work(k, self)
            except BaseException as exc:  # noqa: BLE001 - handed to the main thread
                self.errors.append(exc)
                self.barrier.abort()

        side.threads = [threading.Thread(target=run, args=(k,), daemon=True,
                                         name=f"bench-token-{k}") for k in range(THREADS)]
        for t in side.threads:
            t.start()

    def meet(self) -> None:
        """The main thread's barrier wait; a worker's error surfaces here."""
        try:
            self.barrier.wait(_WAIT)
        except threading.BrokenBarrierError:
            self._raise()
            raise

    def join(self) -> None:
        """Wait for every worker (the measurement's interval timer bounds it)."""
        for t in self.side.threads:
            t.join()
        self._raise()

    def _raise(self) -> None:
        if self.errors:
            raise self.errors[0]


def _senders(side: _Side, size: int, warmup: int, target: float,
             lo: int, hi: int) -> tuple[int, int, int]:
    """The parent of a "send" run: THREADS threads sendall frames; return (frames, ns, bad)."""
    sock = side.sock
    frames = [_sender_frames(k, size) for k in range(THREADS)]

    def sender(k: int, crew: _Threads) -> None:
        send = sock.sendall
        mine = itertools.cycle(frames[k])
        crew.barrier.wait(_WAIT)
        for frame in itertools.islice(mine, warmup):
            send(frame)
        crew.barrier.wait(_WAIT)
        crew.barrier.wait(_WAIT)  # the timed count is set
        for frame in itertools.islice(mine, crew.count):
            send(frame)

    ack = memoryview(bytearray(_COUNT.size))
    clock = time.perf_counter_ns
    crew = _Threads(side, sender)
    crew.meet()
    t0 = clock()
    crew.meet()
    _recv_exact(sock, ack)  # the reader has every warm-up frame
    bad = _COUNT.unpack(ack)[0]
    crew.count = _calibrated(warmup, clock() - t0, target, lo, hi)  # per thread
    os.write(side.fd, _COUNT.pack(crew.count))
    crew.meet()
    t0 = clock()
    crew.join()
    _recv_exact(sock, ack)
    elapsed = clock() - t0
    return THREADS * crew.count, elapsed, bad + _COUNT.unpack(ack)[0]


def _frame_reader(side: _Side, size: int, warmup: int) -> None:
    """The child of a "send" run: read and check every frame; acknowledge each phase."""
    sock = side.sock
    per_chunk = max(1, _CHUNK // size)
    view = memoryview(bytearray(per_chunk * size))
    following = [0] * THREADS
    count = warmup
    for phase in ("warm-up", "run"):
        left = THREADS * count
        bad = 0
        while left:
            k = min(left, per_chunk)
            chunk = view[:k * size]
            _recv_exact(sock, chunk)
            bad += _check_sent_frames(chunk, size, following)
            left -= k
        sock.sendall(_COUNT.pack(bad))
        if phase == "warm-up":
            count = _COUNT.unpack(_read_exact(side.fd, _COUNT.size))[0]


def _frame_writer(side: _Side, size: int, warmup: int) -> None:
    """The child of a "recv" run: write numbered frames; wait for the readers' end."""
    sock = side.sock
    send, pack = sock.sendall, _SEQ.pack_into
    frame = bytearray([_FILL]) * size
    tail = size - _SEQ.size
    first = 0
    for phase in ("warm-up", "run"):
        count = THREADS * (warmup if phase == "warm-up" else
                           _COUNT.unpack(_read_exact(side.fd, _COUNT.size))[0])
        for seq in range(first, first + count):
            pack(frame, 0, seq)
            pack(frame, tail, seq)
            send(frame)
        first += count
    # The readers say when they have everything: leaving earlier would
    # close the connection under them.
    _recv_exact(sock, memoryview(bytearray(1)))


def _readers(side: _Side, size: int, warmup: int, target: float,
             lo: int, hi: int) -> tuple[int, int, int]:
    """The parent of a "recv" run: THREADS threads recv whole frames; return (frames, ns, bad).

    Each reader checks its frames are whole and in increasing order; the
    sum of all sequence numbers shows none was lost or read twice.
    """
    sock = side.sock

    def reader(k: int, crew: _Threads) -> tuple[int, int, int]:
        buf = bytearray(size)
        view = memoryview(buf)
        recv, waitall, unpack, tail = sock.recv_into, socket.MSG_WAITALL, _SEQ.unpack_from, \
            size - _SEQ.size
        last, total, bad, frames = -1, 0, 0, 0
        crew.barrier.wait(_WAIT)
        for phase in (0, 1):
            if phase:
                crew.barrier.wait(_WAIT)
                crew.barrier.wait(_WAIT)  # the timed count is set
            for _ in range(warmup if phase == 0 else crew.count):
                got = recv(buf, size, waitall)
                if got != size:
                    _recv_exact(sock, view[got:])
                seq = unpack(buf)[0]
                if seq != unpack(buf, tail)[0] or seq <= last:
                    bad += 1
                last = seq
                total += seq
                frames += 1
        return bad, total, frames

    clock = time.perf_counter_ns
    crew = _Threads(side, reader)
    crew.meet()
    t0 = clock()
    crew.meet()  # every reader has its warm-up frames
    crew.count = _calibrated(warmup, clock() - t0, target, lo, hi)  # per thread
    os.write(side.fd, _COUNT.pack(crew.count))
    crew.meet()
    t0 = clock()
    crew.join()
    elapsed = clock() - t0
    sock.sendall(b"!")
    bad = sum(r[0] for r in crew.results)
    frames = sum(r[2] for r in crew.results)
    if sum(r[1] for r in crew.results) != frames * (frames - 1) // 2:
        bad += 1  # a frame lost or read twice (the kernel may tear them among readers)
    return THREADS * crew.count, elapsed, bad


def shared_rate(case: SharedCase, kind: str, placement: Placement, *, warmup: int,
                target: float, min_count: int, max_count: int,
                seconds: float = 120.0) -> tuple[int, int, int]:
    """Measure one shared-socket case over *kind* ("ring" or "tcp").

    Returns (frames timed, elapsed ns, bad frames).  *warmup* untimed frames
    per thread go first; their pace sets the timed count per thread, to
    last about *target* seconds within [*min_count*, *max_count*].  Over
    rings a bad frame (torn, lost, out of order) is an error.
    """
    if kind not in ("ring", "tcp"):
        raise ValueError(f"kind must be 'ring' or 'tcp', got {kind!r}")
    if case.size < 2 * _SENDER_SEQ.size or warmup < 1 or not 1 <= min_count <= max_count \
            or not target > 0:
        raise ValueError("need size >= 16, warmup >= 1, 1 <= min_count <= max_count and "
                         f"target > 0, got {case.size}, {warmup}, {min_count}, {max_count}, "
                         f"{target}")
    transport = Transport(f"{case.key}-{kind}", case.label, kind != "ring",
                          lambda same_cpu: _open_with_pipe(kind, to_child=True))
    if case.direction == "send":
        parent = functools.partial(_senders, size=case.size, warmup=warmup, target=target,
                                   lo=min_count, hi=max_count)
        child = functools.partial(_frame_reader, size=case.size, warmup=warmup)
    else:
        parent = functools.partial(_readers, size=case.size, warmup=warmup, target=target,
                                   lo=min_count, hi=max_count)
        child = functools.partial(_frame_writer, size=case.size, warmup=warmup)
    frames, ns, bad = _run_forked(transport, placement, parent, child, seconds)
    if bad and kind == "ring":
        raise ValueError(f"{case.key}: {bad} frames arrived torn, lost or out of order "
                         "over a shared ring socket")
    return frames, ns, bad


def _summarise_shared(runs: list[tuple[int, int, int]]) -> dict[str, object]:
    """(frames, ns, bad) of the repeats -> frames/s, the median of the repeats."""
    rates = [frames / ns * 1e9 for frames, ns, _ in runs]
    return {
        "counts": [frames for frames, _, _ in runs],
        "msgs_per_s": statistics.median(rates),
        "repeat_msgs_per_s": rates,
        "bad_frames": sum(bad for _, _, bad in runs),
    }


# -- takeover latency ------------------------------------------------------------------------


@dataclass(frozen=True)
class TakeoverCase:
    """A way of sending on a socket: who used it last, over which kind of connection."""

    key: str
    label: str
    kind: str  # "ring" or "tcp"
    across: str  # "fast" (the same thread), "thread" or "process"


#: The takeover cases: the fast path, thread to thread, process to process.
TAKEOVER_CASES = tuple(
    TakeoverCase(f"{across}-{kind}", f"{what}, {name}", kind, across)
    for kind, name in (("ring", "impl.socket (rings)"), ("tcp", "TCP loopback"))
    for across, what in (("fast", "same thread again (fast path)"),
                         ("thread", "another thread (same process)"),
                         ("process", "another process (after fork)")))


def _timed_sends(send: Callable[[bytes], object], n: int) -> list[int]:
    """*n* sends of one message, each timed (ns)."""
    clock = time.perf_counter_ns
    samples = []
    record = samples.append
    for _ in range(n):
        t0 = clock()
        send(_DATA)
        record(clock() - t0)
    return samples


def _share_threads(side: _Side, fast: int, turns: int, warmup: int) -> None:
    """The child of a thread run: the fast path, then two threads taking turns to send.

    The main thread sends *fast* messages in a row (after *warmup*), then
    threads A and B alternate, each timing its send on the socket the
    other used last.  The samples go to the parent as JSON with the count
    of messages sent, then the stop message ends the parent's drain.
    """
    sock = side.sock
    send = sock.sendall
    fast_samples = _timed_sends(send, warmup + fast)[warmup:]
    # Each thread waits on its own lock; the other thread releases it.
    locks = [threading.Lock(), threading.Lock()]
    for lock in locks:
        lock.acquire()
    samples: list[list[int]] = [[], []]
    errors: list[BaseException] = []
    clock = time.perf_counter_ns

    def player(k: int) -> None:
        mine, other, record = locks[k], locks[1 - k], samples[k].append
        try:
            for _ in range(warmup + turns):
                if not mine.acquire(timeout=_WAIT):
                    raise TimeoutError(errno.ETIMEDOUT, "the other thread did not pass the turn")
                t0 = clock()
                send(_DATA)  # the socket's last user was the other thread
                record(clock() - t0)
                other.release()
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            errors.append(exc)
            other.release()

    side.threads = [threading.Thread(target=player, args=(k,), daemon=True) for k in (0, 1)]
    for t in side.threads:
        t.start()
    locks[0].release()
    for t in side.threads:
        t.join()
    if errors:
        raise errors[0]
    sent = warmup + fast + 2 * (warmup + turns)
    _report(side, sent, {"fast": fast_samples,
                         "thread": samples[0][warmup:] + samples[1][warmup:]})


def _alternate(send: Callable[[bytes], object], wait_fd: int, pass_fd: int, n: int,
               last: bool) -> list[int]:
    """Take *n* turns: wait for the go on *wait_fd*, time one send, pass the turn on.

    *last*: this side has the last turn, so it passes no turn after it (the
    other side has gone by then).
    """
    clock = time.perf_counter_ns
    samples = []
    for i in range(n):
        if os.read(wait_fd, 1) != b"g":
            raise EOFError("the other process stopped taking turns")
        t0 = clock()
        send(_DATA)
        samples.append(clock() - t0)
        if not (last and i == n - 1):
            os.write(pass_fd, b"g")
    return samples


def _forked_player(side: _Side, pipes: dict[str, int], n: int, seconds: float) -> None:
    """The fork child of a process run: take turns, report the samples, exit."""
    code = 1
    try:
        for name in ("go_w", "back_r", "res_r"):
            os.close(pipes[name])
        os.close(side.fd)
        with _deadline(seconds):
            samples = _alternate(side.sock.sendall, pipes["go_r"], pipes["back_w"], n,
                                 last=False)
            _write_all(pipes["res_w"], json.dumps(samples).encode())
            os.close(pipes["res_w"])
        code = 0
    except BaseException:  # noqa: BLE001 - the child reports everything, then exits
        print("bench token child (process takeover):", file=sys.stderr)
        traceback.print_exc()
        sys.stderr.flush()
    finally:
        os._exit(code)


def _share_processes(side: _Side, turns: int, warmup: int, seconds: float) -> None:
    """The child of a process run: fork, and take turns with the fork child to send.

    Before the fork this process sends once, so it is the socket's last
    user; then the fork child's every send takes the socket over from this
    process and each of this process's sends takes it back.  The last send
    is this process's, so the child ends idle and without the token.
    """
    send = side.sock.sendall
    send(_DATA)
    names = ("go_r", "go_w", "back_r", "back_w", "res_r", "res_w")
    pipes = dict(zip(names, itertools.chain(os.pipe(), os.pipe(), os.pipe()), strict=True))
    n = warmup + turns
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        _forked_player(side, pipes, n, seconds)
    finished = False
    try:
        for name in ("go_r", "back_w", "res_w"):
            os.close(pipes[name])
        os.write(pipes["go_w"], b"g")
        ours = _alternate(send, pipes["back_r"], pipes["go_w"], n, last=True)
        theirs = json.loads(_read_all(pipes["res_r"]))
        finished = True
    finally:
        # After an error the child is killed at once rather than left waiting.
        code = _reap(pid, _WAIT if finished else 0.0)
        for name in ("go_w", "back_r", "res_r"):
            os.close(pipes[name])
    if code != 0:
        raise ChildProcessError(errno.ECHILD, f"the fork child exited with status {code}")
    _report(side, 1 + 2 * n, {"process": ours[warmup:] + theirs[warmup:]})


def _report(side: _Side, sent: int, samples: dict[str, list[int]]) -> None:
    """Send the stop message, then the samples and the message count to the parent."""
    side.sock.sendall(_STOP)
    _write_all(side.fd, json.dumps({"sent": sent, "samples": samples}).encode())


def _write_all(fd: int, data: bytes) -> None:
    """Write all of *data* to the pipe *fd*."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _drain_and_collect(side: _Side) -> dict[str, list[int]]:
    """The parent of a takeover run: drain the messages up to the stop; return the samples."""
    sock = side.sock
    buf = bytearray(len(_DATA))
    view = memoryview(buf)
    received = 0
    while True:
        got = sock.recv_into(buf)
        if got != len(buf):
            _recv_rest(sock.recv_into, view, got)
        if buf == _STOP:
            break
        if buf != _DATA:
            raise ValueError(f"takeover message arrived as {bytes(buf)!r}")
        received += 1
    report = json.loads(_read_all(side.fd))
    if report["sent"] != received:
        raise ValueError(f"the sharers sent {report['sent']} messages, {received} arrived")
    return report["samples"]


def takeover_latency(kind: str, across: str, placement: Placement, *, turns: int, fast: int,
                     warmup: int, seconds: float = 120.0) -> dict[str, list[int]]:
    """Time sends on a socket that another thread or process used last.

    *across* "thread": one process sends *fast* messages from one thread
    (the fast path), then two threads take *turns* turns each; returns
    {"fast": [...], "thread": [...]} in ns.  *across* "process": a process
    and its fork child take *turns* turns each; returns {"process": [...]}.
    The first *warmup* sends of each sender are dropped.  The sharers run
    in the child on the child's CPU; the parent drains the connection.
    """
    if kind not in ("ring", "tcp"):
        raise ValueError(f"kind must be 'ring' or 'tcp', got {kind!r}")
    if turns < 1 or fast < 1 or warmup < 0:
        raise ValueError(f"need turns >= 1, fast >= 1 and warmup >= 0, got {turns}, {fast}, "
                         f"{warmup}")
    if across == "thread":
        share = functools.partial(_share_threads, fast=fast, turns=turns, warmup=warmup)
    elif across == "process":
        share = functools.partial(_share_processes, turns=turns, warmup=warmup,
                                  seconds=seconds)
    else:
        raise ValueError(f"across must be 'thread' or 'process', got {across!r}")
    transport = Transport(f"takeover-{across}-{kind}", f"takeover {across} {kind}",
                          kind != "ring", lambda same_cpu: _open_with_pipe(kind, to_child=False))
    return _run_forked(transport, placement, _drain_and_collect, share, seconds)


# -- goals --------------------------------------------------------------------------------------


# name, what, target, bound, whether lower values are better.
TOKEN_GOALS = (
    ("tok_single_rtt", "Single owner: round trip with token checks ÷ without",
     "≤ 1.05 (within 5%)", 1.05, True),
    ("tok_single_64", "Single owner: streaming 64 B, time per message with token checks ÷ "
     "without", "≤ 1.05 (within 5%)", 1.05, True),
    ("tok_single_16k", "Single owner: streaming 16 KiB, time per message with token checks ÷ "
     "without", "≤ 1.05 (within 5%)", 1.05, True),
    ("tok_send_64_vs_tcp", f"{THREADS} threads sendall 64 B frames on one socket: frames/s "
     "against TCP shared alike", "≥ 3× TCP", 3.0, False),
    ("tok_send_4k_vs_tcp", f"{THREADS} threads sendall 4 KiB frames on one socket: frames/s "
     "against TCP shared alike", "≥ 3× TCP", 3.0, False),
    ("tok_recv_64_vs_tcp", f"{THREADS} threads recv 64 B frames (MSG_WAITALL) from one socket: "
     "frames/s against TCP shared alike", "≥ 3× TCP", 3.0, False),
    ("tok_recv_4k_vs_tcp", f"{THREADS} threads recv 4 KiB frames (MSG_WAITALL) from one "
     "socket: frames/s against TCP shared alike", "≥ 3× TCP", 3.0, False),
)

# The case each goal is judged on: a single-owner case or a shared-socket case.
_SINGLE_GOAL_CASE = {"tok_single_rtt": "rtt", "tok_single_64": "stream-64",
                     "tok_single_16k": "stream-16384"}
_SHARED_GOAL_CASE = {"tok_send_64_vs_tcp": "send-64", "tok_send_4k_vs_tcp": "send-4096",
                     "tok_recv_64_vs_tcp": "recv-64", "tok_recv_4k_vs_tcp": "recv-4096"}


def _token_goal_value(goal: str, tokens: dict) -> float | None:
    """The measured value of *goal*, or None if an input was not measured."""
    try:
        if goal in _SINGLE_GOAL_CASE:
            return tokens["single"]["cases"][_SINGLE_GOAL_CASE[goal]]["ratio"]
        rates = tokens["shared"]["rates"][_SHARED_GOAL_CASE[goal]]
        return rates["ring"]["msgs_per_s"] / rates["tcp"]["msgs_per_s"]
    except (KeyError, ZeroDivisionError, TypeError):
        return None


def evaluate_token_goals(tokens: dict) -> list[dict[str, object]]:
    """Judge every token goal on *tokens* (the "tokens" part of the results).

    Each verdict has the value and pass (True), fail (False) or not
    measured (None).  Single-owner ratios pass at or below their bound,
    the shared-socket ratios at or above it.
    """
    verdicts = []
    for name, what, target, bound, lower in TOKEN_GOALS:
        value = _token_goal_value(name, tokens)
        passed = None if value is None else value <= bound if lower else value >= bound
        verdicts.append({"goal": name, "what": what, "target": target, "bound": bound,
                         "lower_is_better": lower, "value": value, "passed": passed})
    return verdicts


# -- the whole token part of a run ---------------------------------------------------------------


Attempt = Callable[[str, str, Callable[[], object]], object]


def ring_connections(s: Settings) -> int:
    """How many ring connections :func:`run_tokens` makes through the monitor with *s*."""
    single = s.token_pairs * 2 * len(SINGLE_CASES)
    shared = s.repeats * len(shared_cases())
    takeover = s.repeats * 2  # a thread run and a process run over rings
    return single + shared + takeover


@dataclass
class _Collected:
    """Raw results of the token part, kept per case until they are summarised."""

    single: dict[str, dict[bool, list[float]]] = field(default_factory=dict)
    shared: dict[str, dict[str, list]] = field(default_factory=dict)
    takeover: dict[str, list[list[int]]] = field(default_factory=dict)
    # Cases that failed once: reported as failed, not with the repeats that worked.
    failed: set[str] = field(default_factory=set)


def _pair_orders(pairs: int) -> Iterator[tuple[bool, bool]]:
    """(on, off), (off, on), (on, off), ...: each pair in the other order than the last."""
    for i in range(pairs):
        yield (True, False) if i % 2 == 0 else (False, True)


def _run_single(s: Settings, two: Placement, attempt: Attempt, log: Callable[[str], None],
                got: _Collected) -> None:
    for key, _ in SINGLE_CASES:
        got.single[key] = {True: [], False: []}
    for i, order in enumerate(_pair_orders(s.token_pairs), 1):
        log(f"tokens: single owner, pair {i}/{s.token_pairs} "
            f"({'on, off' if order[0] else 'off, on'})")
        for key, _ in SINGLE_CASES:
            pair = {}
            for tokens in order:
                what = f"{key}, token checks {'on' if tokens else 'off'}"
                cost = attempt("tokens-single", what, functools.partial(
                    single_owner_cost, key, tokens, two, s))
                if cost is None:
                    got.failed.update(k for k, _ in SINGLE_CASES)
                    return
                pair[tokens] = cost
            for tokens, cost in pair.items():
                got.single[key][tokens].append(cost)


def _run_shared(rep: int, s: Settings, two: Placement, attempt: Attempt,
                log: Callable[[str], None], got: _Collected) -> None:
    log(f"tokens: repeat {rep}/{s.repeats}: {THREADS} threads sharing one socket")
    for case in shared_cases():
        runs = got.shared.setdefault(case.key, {"ring": [], "tcp": []})
        for kind in ("ring", "tcp"):
            value = attempt(f"tokens-{case.key}-{kind}", f"shared {case.key} over {kind}",
                            functools.partial(
                                shared_rate, case, kind, two, warmup=s.shared_warmup,
                                target=s.shared_seconds, min_count=s.shared_min_count,
                                max_count=s.shared_max_count, seconds=s.deadline))
            if value is None:
                got.failed.add(case.key)
            else:
                runs[kind].append(value)


# The takeover cases that a thread run and a process run produce samples for.
_SAMPLED_BY = {"thread": ("fast", "thread"), "process": ("process",)}


def _run_takeover(rep: int, s: Settings, two: Placement, attempt: Attempt,
                  log: Callable[[str], None], got: _Collected) -> None:
    log(f"tokens: repeat {rep}/{s.repeats}: takeover latency")
    for kind in ("ring", "tcp"):
        for across, turns in (("thread", s.takeover_thread), ("process", s.takeover_process)):
            value = attempt(f"tokens-takeover-{across}-{kind}", f"takeover {across} {kind}",
                            functools.partial(takeover_latency, kind, across, two, turns=turns,
                                              fast=s.takeover_fast, warmup=s.takeover_warmup,
                                              seconds=s.deadline))
            if value is None:
                got.failed.update(f"{which}-{kind}" for which in _SAMPLED_BY[across])
                continue
            for which, samples in value.items():
                got.takeover.setdefault(f"{which}-{kind}", []).append(samples)


def run_tokens(s: Settings, two: Placement, attempt: Attempt,
               log: Callable[[str], None]) -> dict[str, object]:
    """Run the token benchmarks; return them as JSON-ready data with the goals judged.

    *attempt(key, what, run)* runs one measurement and returns its value,
    or None after a failure (then the key's later runs are skipped too);
    the suite's runner provides it.  A monitor must be running for this
    process's library (bench.sockets.private_monitor).
    """
    got = _Collected()
    started = time.monotonic()
    _run_single(s, two, attempt, log, got)
    for rep in range(1, s.repeats + 1):
        _run_shared(rep, s, two, attempt, log, got)
        _run_takeover(rep, s, two, attempt, log, got)
    single = {key: _summarise_single(v[True], v[False]) for key, v in got.single.items()
              if v[True] and key not in got.failed}
    shared = {}
    for key, runs in got.shared.items():
        if runs["ring"] and runs["tcp"] and key not in got.failed:
            ring, tcp = _summarise_shared(runs["ring"]), _summarise_shared(runs["tcp"])
            shared[key] = {"ring": ring, "tcp": tcp,
                           "ratio": ring["msgs_per_s"] / tcp["msgs_per_s"]}
    takeover = {c.key: summarise_latency(got.takeover[c.key]) for c in TAKEOVER_CASES
                if got.takeover.get(c.key) and c.key not in got.failed}
    results: dict[str, object] = {
        "threads": THREADS,
        "single": {"pairs": s.token_pairs,
                   "cases": single,
                   "labels": dict(SINGLE_CASES)},
        "shared": {"cases": [{"key": c.key, "label": c.label, "direction": c.direction,
                              "size": c.size} for c in shared_cases()],
                   "rates": shared},
        "takeover": {"cases": [{"key": c.key, "label": c.label, "kind": c.kind,
                                "across": c.across} for c in TAKEOVER_CASES],
                     "latency": takeover},
        "duration_s": round(time.monotonic() - started, 1),
    }
    results["goals"] = evaluate_token_goals(results)
    return results
