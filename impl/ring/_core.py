"""What both ring backends share: result codes, errors, and the endpoint logic.

A backend supplies one primitive per endpoint, ``_op(buf, off, n, flags,
spin_ns) -> int``, that does one whole ring operation (RingCredit!Write for
the writer, RingCredit!Recv for the reader) and returns an encoded result;
the C helpers in ``ring.h`` and the Python ones in ``pyring.py`` return the
same codes for the same ring state.  Everything around it - blocking,
timeouts, waking the peer, closing, errors - is written once, here.
"""

from __future__ import annotations

import errno
import math
import os
import select
import time
from typing import TYPE_CHECKING, NamedTuple

from impl.ring import layout

if TYPE_CHECKING:
    from impl.ring import Ring

# Flags for _op (the same values as SD_PEEK / SD_ARM in ring.h).
PEEK = 1   # read: copy out without consuming
ARM = 2    # publish the sleeping flag (and re-check) if nothing can be done
NOTOK = 4  # leave the token alone: a readiness probe, not an operation
WAITALL = 8  # read: the operation (and its token) lasts until the buffer is full

# A close flag's value when the monitor reset an end that its process never
# took (a connection still queued when its listener closed): the kernel
# answers such a connection with RST, so the writer's next send must fail at
# once.  Any nonzero value means "closed" to the C and Python paths alike.
RESET = 2

# Result encoding (see ring.h): writes return n << 1 | wake, reads
# n << 2 | eof << 1 | wake; errors are odd negative numbers, so that one
# test of bit 0 sends both a needed wake-up and an error to the slow path.
WAKE = 1
EOF = 2
ERR_CLOSED = -1
ERR_PIPE = -3
ERR_MAGIC = -5
ERR_CAPACITY = -7
ERR_HEAD_AHEAD = -9
ERR_TAIL_BEYOND = -11
ERR_TOKEN = -15    # this thread does not hold the endpoint's token (impl/token takes over)

#: Default spin budget in nanoseconds before a waiter starts yielding.  A
#: round trip through the C path takes 3-4 us here, so a peer that answers at
#: once is caught spinning; a longer spin only costs when the peer shares our
#: core (it cannot run while we spin): 20 us doubled the round trip then.
SPIN_NS = 5_000
#: Default number of ``os.sched_yield()`` rounds before a waiter blocks on
#: its eventfd.  A yield costs about 1 us when no one else wants the CPU and
#: hands the CPU to the peer when both share one core.
YIELDS = 32

_W_MAGIC = layout.word(layout.OFF_MAGIC)
_W_CAPACITY = layout.word(layout.OFF_CAPACITY)
_W_TAIL = layout.word(layout.OFF_TAIL)
_W_HEAD = layout.word(layout.OFF_HEAD)
_W_CLOSED_RD = layout.word(layout.OFF_CLOSED_RD)


class RingCorrupt(OSError):
    """Shared ring state is inconsistent; the ring cannot be used safely.

    ``errno`` is ``EBADMSG``; ``fault`` names what was found wrong, e.g.
    ``"bad magic"`` or ``"head ahead of tail"``, and the message starts with
    it.  Nothing was read from or written to the payload, or to the caller's
    buffer, when this is raised.  The two-copy mode (``credit.py``) raises it
    too, for inconsistent positions arriving over its channels.
    """

    def __init__(self, fault: str, detail: str = "") -> None:
        msg = f"ring corrupt: {fault}" + (f" ({detail})" if detail else "")
        super().__init__(errno.EBADMSG, msg)
        self.fault = fault


class RingFds(NamedTuple):
    """The descriptors that make up a ring: pass all three to share it."""

    memfd: int       #: the shared memory (header and payload)
    data_efd: int    #: eventfd the reader blocks on; the writer signals it
    space_efd: int   #: eventfd the writer blocks on; the reader signals it


class RingSnapshot(NamedTuple):
    """A read-only copy of a ring's state, for checking it against the spec."""

    head: int     #: RingCredit's ``head``
    tail: int     #: RingCredit's ``tail`` (and ``rtail``: shm makes them equal)
    data: bytes   #: the payload, slot 0 first: RingCredit's ``buf``


def position_fault(head: int, tail: int, capacity: int) -> RingCorrupt | None:
    """Return the RingCorrupt for positions breaking RingCredit!Bounds, or None."""
    if head > tail:
        return RingCorrupt("head ahead of tail", f"head={head}, tail={tail}")
    if tail - head > capacity:
        return RingCorrupt("tail beyond head + capacity",
                           f"head={head}, tail={tail}, capacity={capacity}")
    return None


def closed_error(what: str) -> OSError:
    """Return the error for using an endpoint or ring after it was closed.

    EBADF, as for a closed socket: the descriptor-like object is gone.
    """
    return OSError(errno.EBADF, f"{what} is closed")


# The machine has one CPU: a spinning waiter can only ever delay its peer.
_ONE_CPU = (os.cpu_count() or 1) == 1


def pinned_cpu() -> int:
    """Return 1 + the only CPU this process may run on, or 0 if it may run on several."""
    cpus = os.sched_getaffinity(0)
    return min(cpus) + 1 if len(cpus) == 1 else 0


def check_timeout(timeout: float | None) -> None:
    """Raise ValueError unless *timeout* is None (wait forever) or >= 0 seconds."""
    if timeout is not None and not timeout >= 0:  # "not >=" also rejects NaN
        raise ValueError(f"timeout must be None or >= 0 seconds, got {timeout!r}")


class _Endpoint:
    """Shared machinery of RingWriter and RingReader."""

    #: The impl.token.Token that guards this endpoint (a socket's; the C
    #: backend only), or None: a bare ring checks no token.
    token = None
    #: True while an enclosing frame (Token.hold) keeps the token BUSY over
    #: several operations and will end it itself.
    _outer = False

    _kind = "ring endpoint"
    _my_flag = 0        # header word of this side's sleeping flag
    _closed_flag = 0    # header word this side sets on close
    _my_cpu = 0         # header word where this side says which CPU it is pinned to
    _peer_cpu = 0       # the same word of the other side

    def __init__(self, ring: Ring, wait_efd: int, signal_efd: int,
                 spin_ns: int, yields: int, *, auto_spin: bool = False) -> None:
        self._ring = ring
        self._cap = ring.capacity
        self._q = ring._q           # header words; None once closed
        self._wait_efd = wait_efd
        self._signal_efd = signal_efd
        self._spin_default = spin_ns
        self._auto_spin = auto_spin
        self._yields = yields
        if auto_spin:  # a plain store: the word is advice, read only by _choose_spin
            self._q[self._my_cpu] = pinned_cpu()
        self._spin_ns = self._choose_spin()
        self._closed = False

    def _new_poller(self):
        """A poll object on the wait eventfd, for one blocking wait.

        One per wait, not per endpoint: a poll object is marked busy while a
        thread sleeps in it, and a fork() child inherits that mark -- its
        first wait then raised "concurrent poll() invocation" in the middle
        of a sendall, leaving half a message in the stream.  Making one costs
        less than a getpid() would, and the caller is about to sleep.
        """
        poller = select.poll()
        poller.register(self._wait_efd, select.POLLIN)
        return poller

    # -- backend hooks ------------------------------------------------------
    def _op(self, buf, off: int, n: int, flags: int, spin_ns: int) -> int:
        raise NotImplementedError

    def _store_flag(self, word: int, value: int) -> None:
        """Store a header flag of this side (the C backend uses an atomic)."""
        self._q[word] = value

    def _detach(self) -> None:
        """Forget the mapping: every later operation fails with EBADF."""
        self._closed = True
        self._q = None

    def _tok_exit(self) -> None:
        """TokenSharing!Exit for an operation that took more than one call.

        The C call that entered leaves by itself when it completes the
        operation; one that could not (a wait, a partial write, a timeout)
        leaves the token BUSY for the loop around it, which ends here --
        unless an enclosing Token.hold() spans several operations.
        """
        if self.token is not None and not self._outer:
            self.token.exit()

    # -- shared logic -------------------------------------------------------
    def _words(self):
        q = self._q
        if q is None:
            raise closed_error(self._kind)
        return q

    def _positions(self) -> tuple[int, int]:
        """Return (head, tail) after the same checks every operation makes."""
        q = self._words()
        if q[_W_MAGIC] != layout.MAGIC:
            raise RingCorrupt("bad magic", f"{q[_W_MAGIC]:#x}")
        if q[_W_CAPACITY] != self._cap:
            raise RingCorrupt("capacity mismatch",
                              f"header says {q[_W_CAPACITY]}, mapping holds {self._cap}")
        head, tail = q[_W_HEAD], q[_W_TAIL]
        fault = position_fault(head, tail, self._cap)
        if fault is not None:
            raise fault
        return head, tail

    def _error(self, r: int) -> OSError:
        """Map a negative result code to the exception to raise."""
        if r == ERR_CLOSED:
            return closed_error(self._kind)
        if r == ERR_TOKEN:
            # Only a continuation gets here (a first call takes the slow
            # path): something took the token from under a running operation.
            return OSError(errno.EBADFD, f"the {self._kind}'s token was taken away during "
                           "an operation")
        if r == ERR_PIPE:
            return BrokenPipeError(errno.EPIPE, "the ring's reader has closed")
        if r == ERR_MAGIC or r == ERR_CAPACITY:
            try:
                self._positions()
            except RingCorrupt as exc:
                return exc
            return RingCorrupt("bad magic" if r == ERR_MAGIC else "capacity mismatch")
        q = self._q
        head, tail = (q[_W_HEAD], q[_W_TAIL]) if q is not None else (-1, -1)
        name = "head ahead of tail" if r == ERR_HEAD_AHEAD else "tail beyond head + capacity"
        return position_fault(head, tail, self._cap) or RingCorrupt(name)

    def _signal(self) -> None:
        """Wake the peer: it published its sleeping flag and we cleared it."""
        os.eventfd_write(self._signal_efd, 1)  # RingWakeup!Signal

    def _disarm(self) -> None:
        q = self._q
        if q is not None:
            self._store_flag(self._my_flag, 0)

    def _choose_spin(self) -> int:
        """The spin budget for the next wait.

        Spinning pays only while the peer runs on another CPU; on the same
        CPU it just delays the peer, which needs our CPU to answer.  So an
        automatic budget is dropped when both ends are pinned to one and the
        same CPU (each end publishes its CPU in the header when created) or
        the machine has one CPU.  A process pinned alone to its own CPU, the
        usual set-up for low latency, keeps spinning.  Only header loads: it
        is re-evaluated on every slow-path wait, so a peer created or pinned
        later is noticed.
        """
        if not self._auto_spin:
            return self._spin_default
        q = self._q
        mine = q[self._my_cpu] if q is not None else 0
        if _ONE_CPU or (mine and q[self._peer_cpu] == mine):
            return 0
        return self._spin_default

    @property
    def spin_ns(self) -> int:
        """The spin budget, in nanoseconds, that this endpoint's next wait starts with."""
        return self._spin_ns

    def _first_spin(self, timeout: float | None) -> int:
        """Spin budget for a blocking call's first attempt (0 if the timeout is shorter)."""
        spin = self._spin_ns
        return spin if timeout is None or timeout * 1e9 >= spin else 0

    def _block(self, buf, off: int, n: int, deadline: float | None,
               spun: bool = False, flags: int = 0) -> int:
        """Repeat the operation until it does something: spin, yield, then sleep.

        Returns the first non-zero result (bytes moved, EOF or an error code).
        *spun*: the caller's attempt already spun.  The sleep is safe against
        lost wake-ups because _op(ARM) publishes this side's sleeping flag and
        re-checks after a full fence (ring.h).
        """
        op = self._op
        if self._auto_spin:
            self._spin_ns = self._choose_spin()
        if not spun:
            spin = self._spin_ns
            if deadline is not None:
                spin = min(spin, max(0, int((deadline - time.monotonic()) * 1e9)))
            r = op(buf, off, n, flags, spin)
            if r:
                return r
        for _ in range(self._yields):
            if deadline is not None and time.monotonic() >= deadline:
                break
            os.sched_yield()
            r = op(buf, off, n, flags, 0)
            if r:
                return r
        poll = self._new_poller().poll
        while True:
            r = op(buf, off, n, flags | ARM, 0)
            if r:
                return r
            if deadline is None:
                ready = poll()
            else:
                left = deadline - time.monotonic()
                ready = poll(max(0, math.ceil(left * 1000))) if left > 0 else []
                if not ready and time.monotonic() >= deadline:
                    self._disarm()
                    r = op(buf, off, n, flags, 0)  # a last look: it may have come just now
                    if r:
                        return r
                    raise TimeoutError(errno.ETIMEDOUT, f"{self._kind} timed out")
            if ready:  # RingWakeup!Wake: drain the eventfd, then retry
                try:  # non-blocking: a spurious wake-up finds it empty
                    os.eventfd_read(self._wait_efd)
                except BlockingIOError:
                    pass

    def _set_closed(self, value: int = 1) -> None:
        """Publish this side's close flag (*value*: 1, or RESET), wake the peer, and detach."""
        if self._closed:
            return
        if self._q is not None:
            self._store_flag(self._closed_flag, value)
            # Signal unconditionally: close is rare, and a peer about to
            # sleep then finds the eventfd set whatever its flag said.
            self._signal()
        self._detach()

    @property
    def closed(self) -> bool:
        """True once this endpoint (or its ring) was closed in this process."""
        return self._closed

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close this endpoint; see the subclasses."""
        self._set_closed()


class RingWriter(_Endpoint):
    """The sending end of a ring: RingCredit's sender under transport "shm".

    One writer per ring at a time (the token system arbitrates between
    threads and processes).  ``write`` never blocks; ``send_all`` does.
    """

    _kind = "ring writer"
    _my_flag = layout.word(layout.OFF_WRITER_SLEEPING)
    _closed_flag = layout.word(layout.OFF_CLOSED_WR)
    _my_cpu = layout.word(layout.OFF_WRITER_CPU)
    _peer_cpu = layout.word(layout.OFF_READER_CPU)

    def _source(self, data):
        """Return (buffer for _op, its length in bytes)."""
        raise NotImplementedError

    def _finish(self, r: int) -> int:
        """Slow path of a write result: raise an error or wake the reader."""
        if r < 0:
            raise self._error(r)
        self._signal()
        return r >> 1

    def write(self, data) -> int:
        """Copy as much of *data* as fits; return the count (0 if full). Never blocks.

        RingCredit!Write for ``min(len(data), free)`` bytes.  Raises
        BrokenPipeError if the reader has closed, OSError(EBADF) after close,
        RingCorrupt if the header is inconsistent.
        """
        src, n = self._source(data)
        r = self._op(src, 0, n, 0, 0)
        if r & 1:
            return self._finish(r)
        return r >> 1

    def send_all(self, data, timeout: float | None = None) -> None:
        """Write all of *data*, waiting for space: spin, then yield, then block.

        Raises TimeoutError if *timeout* seconds pass first (some bytes may
        have been written), BrokenPipeError if the reader closes.
        """
        check_timeout(timeout)
        src, total = self._source(data)
        self._send_from(src, 0, total, timeout)

    def _send_from(self, src, off: int, total: int, timeout: float | None) -> None:
        """The send_all loop from offset *off* on (the deadline starts now)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        op = self._op
        try:
            while True:
                r = op(src, off, total - off, 0, 0)  # RingCredit!Write
                if r == 0 and off < total:
                    r = self._block(src, off, total - off, deadline)
                off += self._finish(r) if r & 1 else r >> 1
                if off >= total:
                    return
        finally:
            self._tok_exit()

    def close(self) -> None:
        """Half-close: the reader gets EOF once it has read all that was written.

        Wakes a sleeping reader.  Later writes raise OSError(EBADF).
        Closing twice is harmless.
        """
        self._set_closed()

    def settle_space(self) -> bool:
        """Make ``space_efd`` readable exactly when a write would not block; return which.

        The mirror image of :meth:`RingReader.settle`, for a selector that
        waits for writability: a write would not block when the ring has
        free space or the reader has closed (the write then raises
        BrokenPipeError).  If so, the eventfd is set and True returned;
        otherwise a stale signal is drained, this side's ``writer_sleeping``
        flag is published, and the reader's next read that frees space (or
        its close) sets the eventfd.  No system call while the flag is
        still published.  A wake-up may be spurious, never missing: it is
        the RingWakeup handshake with the roles swapped.
        """
        q = self._words()
        if q[self._my_flag]:
            # Still armed: the reader has not taken it down since.  Its close
            # signals without taking it down, so that case is writable.
            return bool(q[_W_CLOSED_RD])
        if self._can_write(q):
            os.eventfd_write(self._wait_efd, 1)
            return True
        try:
            os.eventfd_read(self._wait_efd)  # RingWakeup!Wake: drop a stale signal
        except BlockingIOError:
            pass
        # RingWakeup!Arm and the fence after it (the store is fenced in both
        # backends), then RingWakeup!RecheckTail with head in tail's place.
        self._store_flag(self._my_flag, 1)
        if self._can_write(q):
            # Space or a close came in between: take the flag down again and
            # set the eventfd ourselves (the reader may signal too; harmless).
            self._store_flag(self._my_flag, 0)
            os.eventfd_write(self._wait_efd, 1)
            return True
        return False

    @property
    def peer_reset(self) -> bool:
        """True if the reader's end was reset (:data:`RESET`), not just closed."""
        q = self._words()
        return q[_W_CLOSED_RD] == RESET

    def _can_write(self, q) -> bool:
        """Would a write not block: free space, or the reader closed?"""
        return bool(q[_W_CLOSED_RD]) or q[_W_TAIL] - q[_W_HEAD] < self._cap

    @property
    def free(self) -> int:
        """Bytes that can be written now: C - (tail - head)."""
        head, tail = self._positions()
        return self._cap - (tail - head)

    @property
    def tail(self) -> int:
        """Stream position written up to (RingCredit's ``tail``)."""
        return self._positions()[1]


class RingReader(_Endpoint):
    """The receiving end of a ring: RingCredit's receiver under transport "shm"."""

    _kind = "ring reader"
    _my_flag = layout.word(layout.OFF_READER_SLEEPING)
    _closed_flag = layout.word(layout.OFF_CLOSED_RD)
    _my_cpu = layout.word(layout.OFF_READER_CPU)
    _peer_cpu = layout.word(layout.OFF_WRITER_CPU)

    def _target(self, buf):
        """Return (writable buffer for _op, its length in bytes)."""
        raise NotImplementedError

    def _finish(self, r: int) -> int:
        """Slow path of a read result: raise an error or wake the writer."""
        if r < 0:
            raise self._error(r)
        self._signal()
        return r >> 2

    def read_into(self, buf, *, peek: bool = False) -> int:
        """Copy up to ``len(buf)`` available bytes into *buf*; return the count.

        Never blocks: returns 0 when the ring is empty (check ``eof``).
        RingCredit!Recv; with *peek* the bytes stay in the ring.
        """
        dst, n = self._target(buf)
        r = self._op(dst, 0, n, PEEK if peek else 0, 0)
        if r & 1:
            return self._finish(r)
        return r >> 2

    def recv_into(self, buf, timeout: float | None = None, *, peek: bool = False,
                  waitall: bool = False) -> int:
        """Wait until at least one byte is available, then read like read_into.

        Returns 0 only at EOF (the writer closed and everything was read) or
        for an empty *buf*.  Raises TimeoutError after *timeout* seconds.
        With *peek* the bytes stay in the ring.  With *waitall*, go on until
        *buf* is full, EOF, or the timeout (then return what was read, as
        recv(MSG_WAITALL) does); a guarded endpoint keeps its token for the
        whole call, so no other reader's bytes land inside it.
        """
        check_timeout(timeout)
        dst, n = self._target(buf)
        spin = self._first_spin(timeout)
        flags = (PEEK if peek else 0) | (WAITALL if waitall else 0)
        deadline = None if timeout is None else time.monotonic() + timeout
        r = self._op(dst, 0, n, flags, spin)  # RingCredit!Recv; spins in the same call
        return self._recv_from(r, dst, n, deadline, spin > 0, flags)

    def _recv_from(self, r: int, dst, n: int, deadline: float | None, spun: bool,
                   flags: int) -> int:
        """The rest of recv_into after its first call returned *r*: wait for data,
        and for a waitall read the rest; then end the operation (its token)."""
        try:
            if r == 0 and n:
                r = self._block(dst, 0, n, deadline, spun=spun, flags=flags)
            got = self._finish(r) if r & 1 else r >> 2
            if flags & WAITALL and not flags & PEEK and 0 < got < n:
                got = self._read_rest(dst, got, n, deadline, flags)
            return got
        finally:
            self._tok_exit()

    def _read_rest(self, dst, got: int, n: int, deadline: float | None, flags: int) -> int:
        """The rest of a waitall read, from *got* on: continuations of one operation."""
        op = self._op
        while got < n:
            r = op(dst, got, n - got, flags, 0)  # RingCredit!Recv
            if r == 0:
                try:
                    r = self._block(dst, got, n - got, deadline, flags=flags)
                except TimeoutError:
                    break           # what came so far, as recv(MSG_WAITALL) on a timeout
            k = self._finish(r) if r & 1 else r >> 2
            if k == 0:
                break               # EOF
            got += k
        return got

    def read(self, n: int) -> bytes:
        """Return up to *n* available bytes without blocking (b"" if none)."""
        if n < 0:
            raise ValueError(f"read size must be >= 0, got {n}")
        buf = bytearray(min(n, self._cap))
        k = self.read_into(buf)
        return bytes(buf[:k])

    def close(self, *, reset: bool = False) -> None:
        """Stop reading: the writer's next write raises BrokenPipeError (EPIPE).

        Wakes a writer waiting for space.  Unread bytes are discarded.
        Later reads raise OSError(EBADF).  Closing twice is harmless.
        *reset*: the end is reset, not closed (see :data:`RESET`).
        """
        self._set_closed(RESET if reset else 1)

    @property
    def available(self) -> int:
        """Bytes that can be read now: tail - head."""
        head, tail = self._positions()
        return tail - head

    @property
    def head(self) -> int:
        """Stream position consumed up to (RingCredit's ``head``)."""
        return self._positions()[0]

    def settle(self) -> bool:
        """Make ``data_efd`` readable exactly when a read would not block; return which.

        For a descriptor that others poll (a socket's ``fileno()``): after
        this, the eventfd is set if bytes or EOF wait, and otherwise the
        sleeping flag is published so that the writer's next write sets it.
        It is the sleep handshake of RingWakeup without the sleep, so the
        same fence argument rules out a lost signal.  Costs nothing while the
        flag is still published (no write came since the last call); else one
        eventfd read, and one write if data came meanwhile.  A wake-up may be
        spurious (a write seen before its signal lands), never missing.
        """
        q = self._words()
        if q[self._my_flag]:
            return False  # still armed: the writer has not signalled since
        if q[_W_TAIL] != q[_W_HEAD] or q[self._closed_flag_peer]:
            # Readable.  The writer's signal set the eventfd only if it took
            # an armed flag down; the flag may have come down otherwise
            # (never armed before the first call, withdrawn by a blocking
            # recv's own re-check, a timed-out wait) and then nobody set
            # it.  Setting it again is harmless: the counter only grows.
            os.eventfd_write(self._wait_efd, 1)
            return True
        try:
            os.eventfd_read(self._wait_efd)  # RingWakeup!Wake
        except BlockingIOError:
            pass
        r = self._op(self._one, 0, 1, ARM | PEEK | NOTOK, 0)  # RingWakeup!Arm .. RecheckTail
        if r:
            # Data or EOF came in between: the flag was withdrawn, so nobody
            # else will set the eventfd.  Set it ourselves.
            os.eventfd_write(self._wait_efd, 1)
            return True
        return False

    @property
    def _one(self):
        buf = self.__dict__.get("_one_buf")
        if buf is None:
            buf = self._one_buf = self._target(bytearray(1))[0]
        return buf

    @property
    def eof(self) -> bool:
        """True when the writer closed and every byte it wrote has been read."""
        q = self._words()
        # closed_wr first: it is stored after the last tail, so a tail read
        # after seeing it is final.
        closed = q[self._closed_flag_peer]
        head, tail = self._positions()
        return bool(closed) and head == tail

    _closed_flag_peer = layout.word(layout.OFF_CLOSED_WR)
