"""The two measurements, each between a parent and a forked child.

* :func:`round_trips` - ping-pong of small messages; the parent times every
  round trip with ``time.perf_counter_ns``, so percentiles come from
  per-round-trip samples.
* :func:`stream` - the parent sends a run of equal messages as fast as it
  can and the child drains them; the parent times from the first send to
  the child's one-byte acknowledgement of the last byte.  The warm-up's
  pace sets how many messages are timed, so each run lasts about as long
  whatever the transport.

Every transport runs in the same process structure (fork, the same CPU
placement, the same loops), so the ratios between them are fair.  The
garbage collector is off in both processes while they measure, and the
child has an interval timer, so a stuck peer ends as an error, never a
hang.
"""

from __future__ import annotations

import errno
import gc
import mmap
import os
import select
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

from bench.transports import Endpoint, Transport

__all__ = ["Placement", "round_trips", "stream"]

T = TypeVar("T")

# The first byte of a ping tells the answering child whether to go on.
_PING = b"\x00pingpng"
_STOP = b"\x01stop!!!"
# The child drains a stream into a buffer this large (or one message, if larger).
_DRAIN_BUFFER = 256 * 1024
# The byte every streamed message is made of; the child checks it arrived.
_FILL = 0xA5
# The timed message count travels to the child in this many bytes.
_COUNT_BYTES = 8


@dataclass(frozen=True)
class Placement:
    """The CPUs the parent and the child are pinned to; None leaves one unpinned."""

    parent_cpu: int | None = None
    child_cpu: int | None = None


@contextmanager
def _gc_off() -> Iterator[None]:
    """Keep the cyclic garbage collector from pausing a measurement."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@contextmanager
def _deadline(seconds: float) -> Iterator[None]:
    """Raise TimeoutError in this process if the block runs longer than *seconds*.

    An interval timer (SIGALRM) interrupts a blocking system call, which a
    socket timeout would do only at the price of a poll() per call.  A timer
    that was already armed (pytest-timeout uses one) is put back afterwards
    with its remaining time.
    """

    def expire(signum: int, frame: object) -> None:
        raise TimeoutError(errno.ETIMEDOUT, f"measurement took longer than {seconds:g} s")

    try:
        previous = signal.signal(signal.SIGALRM, expire)
    except ValueError:  # not the main thread: the child's own timer still bounds the run
        yield
        return
    outer_delay, outer_interval = signal.setitimer(signal.ITIMER_REAL, seconds)
    started = time.monotonic()
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer_delay:
            left = max(outer_delay - (time.monotonic() - started), 0.001)
            signal.setitimer(signal.ITIMER_REAL, left, outer_interval)


def _pin(cpu: int | None) -> None:
    """Pin this process to *cpu*, if one is given."""
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})


def _child_main(transport: Transport, child_end: Callable[[], Endpoint],
                work: Callable[[Endpoint], None], cpu: int | None, seconds: float) -> None:
    """Run the child's side and leave with os._exit: 0 on success, 1 on any error."""
    code = 1
    try:
        _pin(cpu)
        endpoint = child_end()
        with _deadline(seconds), _gc_off():
            work(endpoint)
        code = 0
    except BaseException:  # noqa: BLE001 - the child reports everything, then exits
        print(f"bench child ({transport.key}):", file=sys.stderr)
        traceback.print_exc()
        sys.stderr.flush()
    finally:
        os._exit(code)


def _reap(pid: int, seconds: float) -> int:
    """Wait up to *seconds* for the child to exit, then kill it; return its exit code."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        pidfd = -1
    if pidfd >= 0:
        try:
            ready, _, _ = select.select([pidfd], [], [], seconds)
        finally:
            os.close(pidfd)
        if not ready:
            os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def _run_forked(transport: Transport, placement: Placement,
                parent_work: Callable[[Endpoint], T], child_work: Callable[[Endpoint], None],
                seconds: float) -> T:
    """Open *transport*, fork, run both sides pinned as *placement* says; return the parent's."""
    shared = placement.parent_cpu is not None and placement.parent_cpu == placement.child_cpu
    channel = transport.open(shared)
    saved_mask = os.sched_getaffinity(0)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        _child_main(transport, channel.child, child_work, placement.child_cpu, seconds)
    endpoint: Endpoint | None = None
    finished = False
    try:
        _pin(placement.parent_cpu)
        endpoint = channel.parent()
        # The parent's limit is a little longer, so a stuck child times out
        # first and the parent sees why (end of stream) instead of a bare timeout.
        with _deadline(seconds + 5), _gc_off():
            result = parent_work(endpoint)
        finished = True
    finally:
        os.sched_setaffinity(0, saved_mask)
        if not finished:
            os.kill(pid, signal.SIGKILL)
        code = _reap(pid, seconds)
        if endpoint is not None:
            endpoint.close()
    if code != 0:
        raise ChildProcessError(
            errno.ECHILD, f"{transport.key}: the benchmark child exited with status {code}")
    return result


def _recv_rest(recv_some: Callable[[memoryview], int], view: memoryview, got: int) -> None:
    """Finish receiving len(view) bytes of which *got* have arrived already."""
    size = len(view)
    while got < size:
        more = recv_some(view[got:])
        if more <= 0:
            raise EOFError(f"peer closed after {got} of {size} bytes")
        got += more


# -- ping-pong ----------------------------------------------------------------------------


def _answer(endpoint: Endpoint) -> None:
    """The child's side of ping-pong: answer every ping in kind until the stop message.

    The answer is a constant bytes object, as a program would send, rather
    than the receive buffer: sending a memoryview costs some transports a
    buffer export per call that has nothing to do with the transport.
    """
    send_all, recv_some = endpoint.send_all, endpoint.recv_some
    size = len(_PING)
    view = memoryview(bytearray(size))
    ping, stop = _PING, _STOP
    while True:
        got = recv_some(view)
        if got != size:
            _recv_rest(recv_some, view, got)
        if view[0]:
            send_all(stop)
            return
        send_all(ping)


def _pinger(endpoint: Endpoint, warmup: int, iterations: int, budget: float) -> list[int]:
    """The parent's side of ping-pong: return the timed round trips in ns, warm-up dropped."""
    send_all, recv_some = endpoint.send_all, endpoint.recv_some
    size = len(_PING)
    reply = bytearray(size)
    view = memoryview(reply)
    clock = time.perf_counter_ns
    samples: list[int] = []
    record = samples.append
    ping = _PING
    stop_at = clock() + int(budget * 1e9)
    for _ in range(warmup + iterations):
        t0 = clock()
        send_all(ping)
        got = recv_some(view)
        if got != size:
            _recv_rest(recv_some, view, got)
        t1 = clock()
        record(t1 - t0)
        if t1 > stop_at:
            break
    if reply != ping:
        raise ValueError(f"ping-pong reply {bytes(reply)!r} is not the ping {ping!r}")
    send_all(_STOP)
    got = recv_some(view)
    _recv_rest(recv_some, view, got)
    if reply != _STOP:
        raise ValueError(f"ping-pong stop answered with {bytes(reply)!r}")
    return samples[warmup:]


def round_trips(transport: Transport, placement: Placement, *, warmup: int, iterations: int,
                budget: float, seconds: float = 120.0) -> list[int]:
    """Measure ping-pong round trips of 8-byte messages; return one sample (ns) per round trip.

    After *warmup* untimed round trips, up to *iterations* are recorded, fewer
    if *budget* seconds run out first.  *seconds* bounds the whole run.
    """
    if warmup < 0 or iterations < 1:
        raise ValueError(f"need warmup >= 0 and iterations >= 1, got {warmup}, {iterations}")
    samples = _run_forked(
        transport, placement,
        lambda ep: _pinger(ep, warmup, iterations, budget), _answer, seconds)
    if not samples:
        raise ValueError(f"{transport.key}: the time budget ran out during warm-up")
    return samples


# -- streaming ----------------------------------------------------------------------------


def _drain(recv_some: Callable[[memoryview], int], view: memoryview, total: int) -> None:
    """Receive exactly *total* bytes into *view*, a buffer-full at a time."""
    room = len(view)
    left = total
    while left > 0:
        got = recv_some(view if left >= room else view[:left])
        if got <= 0:
            raise EOFError(f"peer closed with {left} of {total} bytes outstanding")
        left -= got


@contextmanager
def _page_buffer(size: int, fill: int = 0) -> Iterator[memoryview]:
    """Yield a writable buffer of *size* bytes that starts on a page boundary.

    glibc's memcpy is slow on this kind of machine when the destination is
    16 bytes past the source modulo 4 KiB.  Where a bytes or bytearray lands
    modulo 4 KiB depends on the allocator's history, so the trap would come
    and go from run to run; page-aligned buffers make every run see the same
    alignment.
    """
    block = mmap.mmap(-1, size)
    view = memoryview(block)
    try:
        if fill:
            view[:] = bytes([fill]) * size
        yield view
    finally:
        view.release()
        block.close()


# From this size on, glibc's memcpy alignment trap can strike (4 KiB and up).
_ALIGN_FROM = 4096


@contextmanager
def _message(size: int) -> Iterator[bytes | memoryview]:
    """Yield the message to stream: bytes when small, a page-aligned buffer when large.

    Small messages are bytes objects, as a program sends them, and there the
    per-call cost is what counts; from 4 KiB on the source's alignment
    matters (see _page_buffer) and the buffer protocol's cost is noise.
    """
    if size < _ALIGN_FROM:
        yield bytes([_FILL]) * size
    else:
        with _page_buffer(size, _FILL) as view:
            yield view


def _sink(endpoint: Endpoint, size: int, warmup: int) -> None:
    """The child's side of streaming: drain the warm-up, ack; read the count, drain, ack."""
    send_all, recv_some = endpoint.send_all, endpoint.recv_some
    header = memoryview(bytearray(_COUNT_BYTES))
    with _page_buffer(max(size, _DRAIN_BUFFER)) as view:
        count = warmup
        for phase in ("warm-up", "run"):
            _drain(recv_some, view, count * size)
            if count and view[0] != _FILL:
                raise ValueError(f"streamed byte arrived as {view[0]:#x}, sent {_FILL:#x}")
            send_all(b"!")
            if phase == "warm-up":
                _recv_rest(recv_some, header, 0)
                count = int.from_bytes(header, "little")


def _calibrated(warmup: int, warm_ns: int, target: float, lo: int, hi: int) -> int:
    """Return how many messages fill about *target* seconds at the warm-up's pace."""
    rate = warmup / max(warm_ns, 1) * 1e9
    return max(lo, min(hi, int(rate * target)))


def _source(endpoint: Endpoint, size: int, warmup: int, target: float,
            lo: int, hi: int) -> tuple[int, int]:
    """The parent's side of streaming: return (messages, ns from first send to last ack)."""
    send_all, recv_some = endpoint.send_all, endpoint.recv_some
    ack = memoryview(bytearray(1))
    clock = time.perf_counter_ns
    with _message(size) as message:
        t0 = clock()
        for _ in range(warmup):
            send_all(message)
        _recv_rest(recv_some, ack, 0)
        # The warm-up's pace sets the count, so every transport streams for
        # about the same time: slow ones do not stretch the run, fast ones
        # are not measured over a few milliseconds.
        count = _calibrated(warmup, clock() - t0, target, lo, hi)
        send_all(count.to_bytes(_COUNT_BYTES, "little"))
        t0 = clock()
        for _ in range(count):
            send_all(message)
        _recv_rest(recv_some, ack, 0)
        return count, clock() - t0


def stream(transport: Transport, placement: Placement, *, size: int, warmup: int,
           target: float, min_count: int, max_count: int,
           seconds: float = 120.0) -> tuple[int, int]:
    """Stream messages of *size* bytes; return (messages timed, elapsed ns).

    *warmup* untimed messages go first; their pace sets the number of timed
    ones to last about *target* seconds, within [*min_count*, *max_count*].
    """
    if size < 1 or warmup < 1 or not 1 <= min_count <= max_count or not target > 0:
        raise ValueError(
            "need size >= 1, warmup >= 1, 1 <= min_count <= max_count and target > 0, got "
            f"{size}, {warmup}, {min_count}, {max_count}, {target}")
    return _run_forked(
        transport, placement,
        lambda ep: _source(ep, size, warmup, target, min_count, max_count),
        lambda ep: _sink(ep, size, warmup), seconds)
