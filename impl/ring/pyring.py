"""The pure-Python ring path: the same operations as ring.h, for machines without a compiler.

Header words are read and written through a ``memoryview.cast('Q')`` of the
mapping: each element access is one aligned 8-byte load or store, so a peer
never sees half of a position.  (``struct.pack_into`` is NOT: it was seen
to expose a transient 0 to a concurrent reader.)  Payload bytes move through
memoryview slice assignment, which is one ``memcpy`` per contiguous piece.

Ordering.  CPython gives no memory-ordering guarantees of its own; this path
relies on the CPU: on x86-64 stores are seen in program order and loads are
not reordered with loads, so "copy, then store tail" and "load tail, then
copy" are ordered as the protocol needs.  The one reordering x86 does -- a
store passing a later load -- would break the sleeping-flag handshake (see
ring.h), so a full fence sits exactly there; Python has no fence statement,
so one comes from a locked instruction inside an uncontended lock.  On
weakly ordered CPUs (ARM) use the C path, whose atomics say what they mean.

``copy_in`` and ``copy_out`` are the wrap-around copies, exported for the
two-copy (RDMA-style) mode in ``credit.py``.
"""

from __future__ import annotations

import threading
import time

from impl.ring import _core, layout
from impl.ring._core import (
    ARM,
    ERR_CAPACITY,
    ERR_CLOSED,
    ERR_HEAD_AHEAD,
    ERR_MAGIC,
    ERR_PIPE,
    ERR_TAIL_BEYOND,
    PEEK,
)

__all__ = ["copy_in", "copy_out", "PyRingWriter", "PyRingReader"]

_MAGIC = layout.MAGIC
_DATA_OFF = layout.DATA_OFF
_W_MAGIC = layout.word(layout.OFF_MAGIC)
_W_CAPACITY = layout.word(layout.OFF_CAPACITY)
_W_TAIL = layout.word(layout.OFF_TAIL)
_W_WRITER_SLEEPING = layout.word(layout.OFF_WRITER_SLEEPING)
_W_CLOSED_WR = layout.word(layout.OFF_CLOSED_WR)
_W_HEAD = layout.word(layout.OFF_HEAD)
_W_READER_SLEEPING = layout.word(layout.OFF_READER_SLEEPING)
_W_CLOSED_RD = layout.word(layout.OFF_CLOSED_RD)


def _byte_view(data, *, writable: bool = False) -> memoryview:
    """Return a flat unsigned-byte memoryview of a contiguous buffer."""
    view = data if type(data) is memoryview else memoryview(data)
    if writable and view.readonly:
        raise TypeError(f"a writable buffer is required, not {type(data).__name__}")
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view


def _check_region(mem: memoryview, data_off: int, capacity: int, pos: int, n: int) -> None:
    if capacity < 1 or data_off < 0 or data_off + capacity > len(mem):
        raise ValueError(f"payload [{data_off}, {data_off}+{capacity}) does not fit "
                         f"a buffer of {len(mem)} bytes")
    if pos < 0:
        raise ValueError(f"stream position must be >= 0, got {pos}")
    if n > capacity:
        raise ValueError(f"a copy of {n} bytes exceeds the ring capacity "
                         f"({capacity}); allowed: 0..{capacity}")


def copy_in(mem, data_off: int, capacity: int, pos: int, data) -> None:
    """Copy *data* into the ring payload ``mem[data_off:data_off+capacity]``.

    The bytes go to stream positions ``pos, pos+1, ...``; position p lives in
    slot ``p % capacity``, so the copy wraps around the end of the payload.
    ``len(data)`` must not exceed *capacity* (ValueError otherwise).
    """
    mem = _byte_view(mem, writable=True)
    src = _byte_view(data)
    _check_region(mem, data_off, capacity, pos, len(src))
    _copy_in(mem, data_off, capacity, pos, src)


def copy_out(mem, data_off: int, capacity: int, pos: int, out) -> None:
    """Fill *out* from the ring payload, starting at stream position *pos*.

    The mirror image of copy_in: ``len(out)`` bytes from slots
    ``pos % capacity`` on, wrapping around; at most *capacity* bytes.
    """
    mem = _byte_view(mem)
    dst = _byte_view(out, writable=True)
    _check_region(mem, data_off, capacity, pos, len(dst))
    _copy_out(mem, data_off, capacity, pos, dst)


def _copy_in(mem: memoryview, data_off: int, cap: int, pos: int, src: memoryview) -> None:
    n = len(src)
    start = data_off + pos % cap
    first = data_off + cap - start   # room before the end of the payload
    if n <= first:
        mem[start:start + n] = src
    else:
        mem[start:start + first] = src[:first]
        mem[data_off:data_off + n - first] = src[first:]


def _copy_out(mem: memoryview, data_off: int, cap: int, pos: int, dst: memoryview) -> None:
    n = len(dst)
    start = data_off + pos % cap
    first = data_off + cap - start
    if n <= first:
        dst[:] = mem[start:start + n]
    else:
        dst[:first] = mem[start:start + first]
        dst[first:] = mem[data_off:data_off + n - first]


def _make_fence():
    """Return a function that executes a full memory fence.

    Acquiring and releasing an uncontended ``threading.Lock`` runs a locked
    read-modify-write instruction (a full barrier on x86), with no system
    call.  If the lock is found held -- only possible if a fork copied it
    mid-fence from another thread -- a fresh lock gives the same barrier.
    """
    lock = threading.Lock()
    acquire, release = lock.acquire, lock.release

    def fence() -> None:
        if acquire(False):
            release()
        else:
            threading.Lock().acquire(False)
    return fence


def _spin(q: memoryview, word: int, seen: int, closed_word: int, spin_ns: int) -> None:
    """Poll q[word] until it differs from *seen* or q[closed_word] is set, or time is up."""
    deadline = time.monotonic_ns() + spin_ns
    while True:
        for _ in range(32):
            if q[word] != seen or q[closed_word]:
                return
        if time.monotonic_ns() >= deadline:
            return


class _PyOps:
    """The _op primitive built from a _try attempt, shared by both sides."""

    _spin_word = 0
    _spin_closed = 0

    def _setup_py(self, ring) -> None:
        self._mem = ring._mem
        self._fence = _make_fence()

    def _check(self, q: memoryview, cap: int) -> int:
        if q[_W_MAGIC] != _MAGIC:
            return ERR_MAGIC
        if q[_W_CAPACITY] != cap:
            return ERR_CAPACITY
        return 0

    def _op(self, buf, off: int, n: int, flags: int, spin_ns: int) -> int:
        q = self._q
        if q is None:
            return ERR_CLOSED
        r = self._try(q, buf, off, n, flags)
        if r or n == 0:
            return r
        if spin_ns > 0:  # wait for the peer to move its position
            _spin(q, self._spin_word, q[self._spin_word], self._spin_closed, spin_ns)
            r = self._try(q, buf, off, n, flags)
            if r:
                return r
        if flags & ARM:
            flag = self._my_flag
            q[flag] = 1    # RingWakeup!Arm
            self._fence()  # RingWakeup!ReaderFence: publish the flag before re-checking
            r = self._try(q, buf, off, n, flags)  # RingWakeup!RecheckTail
            if r:
                q[flag] = 0
        return r

    def _store_flag(self, word: int, value: int) -> None:
        self._q[word] = value
        self._fence()


class PyRingWriter(_PyOps, _core.RingWriter):
    """RingWriter over the pure-Python path."""

    _spin_word = _W_HEAD
    _spin_closed = _W_CLOSED_RD

    def __init__(self, ring, *args, **kwargs) -> None:
        super().__init__(ring, *args, **kwargs)
        self._setup_py(ring)

    def _source(self, data):
        src = _byte_view(data)
        return src, len(src)

    def _try(self, q: memoryview, src: memoryview, off: int, n: int, flags: int) -> int:
        """One attempt at RingCredit!Write of min(n, free) bytes of src[off:]."""
        cap = self._cap
        err = self._check(q, cap)
        if err:
            return err
        if q[_W_CLOSED_RD]:
            return ERR_PIPE
        head = q[_W_HEAD]
        tail = q[_W_TAIL]
        if head > tail:
            return ERR_HEAD_AHEAD
        used = tail - head
        if used > cap:
            return ERR_TAIL_BEYOND
        k = cap - used
        if k > n:
            k = n
        if k == 0:
            return 0
        _copy_in(self._mem, _DATA_OFF, cap, tail, src[off:off + k])
        q[_W_TAIL] = tail + k      # after the bytes: x86 keeps stores in order
        self._fence()              # RingWakeup!WriterFence: tail store before flag load
        if q[_W_READER_SLEEPING]:  # RingWakeup!LoadFlag
            # RingWakeup!ClearFlag, as a plain store, not an exchange: at worst
            # one spurious wake-up (docs/formal.md), never a lost one.
            q[_W_READER_SLEEPING] = 0
            return (k << 1) | 1
        return k << 1


class PyRingReader(_PyOps, _core.RingReader):
    """RingReader over the pure-Python path."""

    _spin_word = _W_TAIL
    _spin_closed = _W_CLOSED_WR

    def __init__(self, ring, *args, **kwargs) -> None:
        super().__init__(ring, *args, **kwargs)
        self._setup_py(ring)

    def _target(self, buf):
        dst = _byte_view(buf, writable=True)
        return dst, len(dst)

    def _try(self, q: memoryview, dst: memoryview, off: int, n: int, flags: int) -> int:
        """One attempt at RingCredit!Recv of min(n, available) bytes into dst[off:]."""
        cap = self._cap
        err = self._check(q, cap)
        if err:
            return err
        head = q[_W_HEAD]
        tail = q[_W_TAIL]
        if head > tail:
            return ERR_HEAD_AHEAD
        if tail - head > cap:
            return ERR_TAIL_BEYOND
        if tail == head:
            if not q[_W_CLOSED_WR]:
                return 0
            tail = q[_W_TAIL]  # closed_wr follows the last tail: this one is final
            if head > tail:
                return ERR_HEAD_AHEAD
            if tail - head > cap:
                return ERR_TAIL_BEYOND
            if tail == head:
                return _core.EOF if n else 0
        k = tail - head
        if k > n:
            k = n
        if k == 0:
            return 0
        _copy_out(self._mem, _DATA_OFF, cap, head, dst[off:off + k])
        if flags & PEEK:
            return k << 2
        q[_W_HEAD] = head + k      # after the copy: x86 keeps loads before later stores
        self._fence()              # Dekker: the head store before the flag load
        if q[_W_WRITER_SLEEPING]:
            q[_W_WRITER_SLEEPING] = 0
            return (k << 2) | 1
        return k << 2
