"""The two-copy ring with batched credits: RingCredit's "rdma" transport.

The sender keeps its own copy of the ring and writes every message into the
receiver's copy through an in-order remote-write channel
(:mod:`impl.ring.remote`); the last write of a message carries the new tail
as its immediate value.  The receiver frees space by reading and returns it
to the sender as *credits*, written into the sender's credit word through a
second in-order channel, in batches of at least ``batch`` bytes.  A sender
whose next message does not fit sends a *credit request* behind its data;
a receiver that has seen one returns all it has freed regardless of the
batch.  Without the request, a batch larger than ``capacity - max_message + 1``
deadlocks (``spec/tla/MCRingCreditBad.cfg``).

Every method that changes protocol state is one action of
``spec/tla/RingCredit.tla`` and says which in a comment.

Immediate values (32 bits).  Bit 31 is :data:`IMM_REQUEST`; bits 0..30 hold
a stream position modulo 2**31.  A data message's imm is its new tail; a
credit request's imm is the tail it was sent at (the receiver checks that it
has seen exactly that much data); a credit return's imm is the returned head.
The 64-bit position is rebuilt from the last one known, which is unambiguous
because a position never moves by more than the capacity (at most 2**30)
between two immediates.

Refinement mapping (spec variable <- implementation), for the cross-check:

* ``tail``, ``shead``, ``asked``, ``want`` <- the :class:`CreditSender`
  properties of the same names; ``sbuf`` <- ``local_copy()``.
* ``rtail``, ``head``, ``credited``, ``creq`` <- the :class:`CreditReceiver`
  properties; ``buf`` <- ``ring_copy()``.
* ``wire`` <- :func:`wire_messages` of the data channel's pending writes:
  the writes up to and including one with a data imm form one message
  ``[kind |-> "data", pos |-> new tail - len, vals |-> their bytes]``; a
  write whose imm has the request bit is ``[kind |-> "ask"]``.
* ``cwire`` <- :func:`credit_messages` of the credit channel's pending
  writes: each carries one returned head.
* ``got`` is the application's history, kept by the caller.

The mapping is exact between actions as long as writes land only through
:meth:`CreditReceiver.deliver` and :meth:`CreditSender.get_credit`.  A test
that lands writes itself with ``deliver_one()`` may leave a message half
landed (bytes in ``ring_copy()`` beyond ``rtail``, or an imm waiting in the
completion queue); those bytes lie outside ``head..rtail``, so the spec's
safety properties still hold, but ``buf`` differs until ``deliver()`` runs.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
import time
from collections.abc import Callable, Iterable

from impl.ring import RingCorrupt
from impl.ring.layout import MAX_CAPACITY, check_capacity
from impl.ring.pyring import copy_in, copy_out
from impl.ring.remote import LocalChannel, RemoteTarget, RemoteWriter, SocketChannel

__all__ = [
    "CREDIT_REGION_SIZE",
    "CREDIT_WORD",
    "IMM_POS_MASK",
    "IMM_REQUEST",
    "MAX_BATCH",
    "CreditReceiver",
    "CreditSender",
    "credit_messages",
    "local_pair",
    "socket_receiver",
    "socket_sender",
    "wire_messages",
]

IMM_REQUEST = 1 << 31
IMM_POS_MASK = IMM_REQUEST - 1
# The sender's credit word: the last head the receiver returned, 64 bits.
CREDIT_WORD = struct.Struct("<Q")
CREDIT_REGION_SIZE = CREDIT_WORD.size
# A batch larger than the ring is allowed (the spec's checks use B > C: then
# credit moves only on request); the bound only keeps positions in 64 bits.
MAX_BATCH = 1 << 62

# Waiting: poll this many times, then sched_yield this many times, then block.
# Short, because a waiter that shares a core with its peer must let it run.
_SPIN_POLLS = 16
_YIELD_POLLS = 16

assert MAX_CAPACITY <= (IMM_POS_MASK + 1) // 2, "imm positions could not be rebuilt"


def _unwrap(base: int, low: int) -> int:
    """Rebuild a stream position from its low 31 bits and a position at or before it."""
    return base + ((low - base) & IMM_POS_MASK)


def _next_completion(target: RemoteTarget) -> int | None:
    """Land writes until one posts an imm; pop it.  None if the channel runs dry."""
    imm = target.poll_completion()
    while imm is None:
        if not target.deliver_one():
            return None
        imm = target.poll_completion()
    return imm


def _check_batch(batch: int) -> int:
    if type(batch) is not int or not 1 <= batch <= MAX_BATCH:
        raise ValueError(f"credit batch must be an int from 1 to {MAX_BATCH}, got {batch!r}")
    return batch


class _Waiter:
    """Spin, then yield, then block: one wait of a blocking call.

    *timeout* is as for sockets: None waits for ever, 0 makes the call
    non-blocking (BlockingIOError), a positive number bounds the whole call
    (TimeoutError).
    """

    def __init__(self, timeout: float | None) -> None:
        if timeout is not None and timeout < 0:
            raise ValueError(f"timeout must be None or >= 0, got {timeout}")
        self._timeout = timeout
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._polls = 0

    def reset(self) -> None:
        """Progress was made: the next wait starts spinning again."""
        self._polls = 0

    def wait(self, what: str, readable: object, writer: object,
             progress: Callable[[], object] | None) -> None:
        """Wait a little for *readable* to have input or *writer* to drain."""
        if self._timeout == 0:
            raise BlockingIOError(errno.EAGAIN, f"{what}: the call would block")
        remaining = None
        if self._deadline is not None:
            remaining = self._deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(errno.ETIMEDOUT, f"timed out {what}")
        self._polls += 1
        if progress is not None:
            # In-process: the peer runs only when we call it, so never block.
            progress()
            if self._polls > _SPIN_POLLS:
                os.sched_yield()
            return
        if self._polls <= _SPIN_POLLS:
            return
        read_fd = _fileno(readable)
        if self._polls <= _SPIN_POLLS + _YIELD_POLLS or read_fd is None:
            os.sched_yield()
            return
        wfds = [_fileno(writer)] if getattr(writer, "wants_write", False) else []
        select.select([read_fd], wfds, [], remaining)


def _fileno(obj: object) -> int | None:
    fileno = getattr(obj, "fileno", None)
    return None if fileno is None else fileno()


def _flush(channel: object) -> bool:
    """Push a channel's buffered writes on; True if nothing is left buffered."""
    flush = getattr(channel, "flush", None)
    return True if flush is None else flush()


class CreditSender:
    """The sending side: local ring copy, ``tail``, ``shead``, ``asked``.

    *channel* carries remote writes into the receiver's ring copy (a region
    of at least *capacity* bytes).  *credit_target* is this side's own small
    region, the credit word, with its completion queue; by default a
    :class:`LocalChannel` is made for it, which the receiver then writes
    through (``sender.credit_target``).

    *max_message* (1..capacity, default capacity) is the spec's MaxLen.
    *credit_request* mirrors the spec's CreditRequest; it exists only to
    demonstrate the credit deadlock and must stay True in real use.
    *batch*, if given, must be the receiver's credit batch (or more): then
    :meth:`send_all` asks for credit only when no batch can come back
    unasked (fewer than *batch* bytes are uncredited).  Asking earlier is
    correct but makes the receiver answer every small read with a credit.
    *progress*, for in-process use, is called while :meth:`send_all` waits,
    to run the peer (nothing else would); it is the public attribute
    ``progress`` and may be set after construction.
    """

    def __init__(self, capacity: int, channel: RemoteWriter, *,
                 credit_target: RemoteTarget | None = None,
                 max_message: int | None = None,
                 credit_request: bool = True,
                 batch: int | None = None,
                 progress: Callable[[], object] | None = None) -> None:
        self._capacity = check_capacity(capacity)
        self._batch = None if batch is None else _check_batch(batch)
        if max_message is None:
            max_message = capacity
        if type(max_message) is not int or not 1 <= max_message <= capacity:
            raise ValueError(
                f"max_message must be an int from 1 to the capacity {capacity}, "
                f"got {max_message!r}")
        remote_size = getattr(channel, "remote_size", capacity)
        if remote_size < capacity:
            raise ValueError(
                f"the channel's remote region has {remote_size} bytes, "
                f"fewer than the capacity {capacity}")
        if credit_target is None:
            credit_target = LocalChannel(CREDIT_REGION_SIZE)
        if len(credit_target.region) < CREDIT_REGION_SIZE:
            raise ValueError(f"the credit region must hold {CREDIT_REGION_SIZE} bytes")
        self._max_message = max_message
        self._channel = channel
        self._credit_target = credit_target
        self._credit_request = bool(credit_request)
        self.progress = progress
        self._mem = bytearray(capacity)     # the sender's copy of the ring (sbuf)
        self._tail = 0
        self._shead = 0
        self._asked = False
        self._want = 0

    # -- inspection -------------------------------------------------------

    @property
    def capacity(self) -> int:
        """Ring capacity C in bytes."""
        return self._capacity

    @property
    def max_message(self) -> int:
        """Largest message one write may carry (the spec's MaxLen)."""
        return self._max_message

    @property
    def tail(self) -> int:
        """Stream position written up to."""
        return self._tail

    @property
    def shead(self) -> int:
        """The sender's view of head: the last credit received."""
        return self._shead

    @property
    def asked(self) -> bool:
        """True while a credit request is outstanding."""
        return self._asked

    @property
    def want(self) -> int:
        """Length of the last message that did not fit and is not yet written; 0 if none."""
        return self._want

    @property
    def free(self) -> int:
        """Bytes the sender believes it may write: C - (tail - shead)."""
        return self._capacity - (self._tail - self._shead)

    @property
    def channel(self) -> RemoteWriter:
        """The data channel to the receiver."""
        return self._channel

    @property
    def credit_target(self) -> RemoteTarget:
        """The credit word's region and completion queue, for the receiver to write."""
        return self._credit_target

    def local_copy(self) -> bytes:
        """The sender's ring copy, in slot order (the spec's sbuf)."""
        return bytes(self._mem)

    # -- actions ----------------------------------------------------------

    def write(self, data: bytes) -> int:
        """Write one message if it fits; return len(data), or 0 if it does not.

        All or nothing: a message longer than the free space is not split.
        The message goes into the local copy and to the receiver as one
        remote write, or two if it wraps round the end of the ring; the last
        one carries the new tail.
        """
        view = memoryview(data).cast("B")
        n = len(view)
        if not 1 <= n <= self._max_message:
            raise ValueError(f"message size must be from 1 to {self._max_message} bytes, got {n}")
        if n > self.free:
            self._want = n
            return 0
        # RingCredit!Write
        cap = self._capacity
        copy_in(self._mem, 0, cap, self._tail, view)
        new_tail = self._tail + n
        slot = self._tail % cap
        first = min(n, cap - slot)
        imm = new_tail & IMM_POS_MASK
        if first < n:
            self._channel.write(slot, view[:first])
            self._channel.write(0, view[first:], imm)
        else:
            self._channel.write(slot, view, imm)
        self._tail = new_tail
        self._want = 0
        return n

    def ask_credit(self, nbytes: int | None = None) -> bool:
        """Ask the receiver for credit if a message of *nbytes* does not fit.

        *nbytes* defaults to :attr:`want`, the message that last did not fit.
        Returns False (and sends nothing) if requests are disabled, one is
        already outstanding, or the message fits.
        """
        n = self._want if nbytes is None else nbytes
        if not self._credit_request or self._asked or n <= self.free:
            return False
        # RingCredit!AskCredit: a zero-length write whose imm has the request
        # bit, behind all data on the same in-order channel.
        self._channel.write(0, b"", IMM_REQUEST | (self._tail & IMM_POS_MASK))
        self._asked = True
        return True

    def get_credit(self) -> bool:
        """Apply the oldest credit return, if one has arrived; True if one did."""
        imm = _next_completion(self._credit_target)
        if imm is None:
            return False
        # RingCredit!GetCredit
        if imm & IMM_REQUEST:
            raise RingCorrupt("credit with request bit", f"imm {imm:#x}")
        value = _unwrap(self._shead, imm)
        advance = value - self._shead
        if advance == 0:
            raise RingCorrupt("credit did not advance", f"head already {self._shead}")
        if advance > MAX_CAPACITY:
            raise RingCorrupt("credit went backwards", f"imm {imm:#x} after head {self._shead}")
        if value > self._tail:
            raise RingCorrupt("credit beyond tail", f"head {value} > tail {self._tail}")
        (word,) = CREDIT_WORD.unpack_from(self._credit_target.region)
        if word < value:
            raise RingCorrupt("credit word behind its imm", f"word {word} < {value}")
        self._shead = value
        self._asked = False
        return True

    # -- blocking ---------------------------------------------------------

    def send_all(self, data: bytes, timeout: float | None = None) -> None:
        """Send all of *data*, waiting for credit as needed, like ``socket.sendall``.

        *data* goes out in messages of at most :attr:`max_message` bytes.
        *timeout* bounds the whole call (TimeoutError; 0 raises
        BlockingIOError when it would wait); on either, :attr:`tail` tells
        how much went.  A peer that closed raises BrokenPipeError.
        """
        view = memoryview(data).cast("B")
        waiter = _Waiter(timeout)
        step = self._max_message
        for start in range(0, len(view), step):
            msg = view[start:start + step]
            while not self.write(msg):
                while self.get_credit():
                    pass
                if self.write(msg):
                    break
                if self._ask_now():
                    self.ask_credit()
                self._wait_for_credit(waiter)
            waiter.reset()
        while not _flush(self._channel):
            # Take credits meanwhile: unread, they would keep the wait's
            # select() returning at once.
            while self.get_credit():
                pass
            waiter.wait("flushing data to the receiver", self._credit_target,
                        self._channel, None)

    def _ask_now(self) -> bool:
        # With batch or more bytes uncredited, the receiver returns a batch
        # once it has read them, unasked: a request now would only make it
        # answer with the little it has freed so far.  Spec-wise AskCredit
        # stays enabled but is taken later, which its fairness allows:
        # each credit lowers tail - shead until either the message fits or
        # fewer than batch bytes are uncredited and we ask.
        return self._batch is None or self._tail - self._shead < self._batch

    def _wait_for_credit(self, waiter: _Waiter) -> None:
        # The data and the request may still sit in a socket channel's buffer:
        # push them on, or the receiver never sees what it must answer.
        _flush(self._channel)
        if getattr(self._credit_target, "eof", False):
            raise BrokenPipeError(errno.EPIPE, "the receiver closed while credit was awaited")
        waiter.wait(f"waiting for credit at tail {self._tail}", self._credit_target,
                    self._channel, self.progress)


class CreditReceiver:
    """The receiving side: ring copy, ``rtail``, ``head``, ``credited``, ``creq``.

    *channel* is the target of the sender's data writes; its region's first
    *capacity* bytes are the ring copy.  *credit_channel* writes into the
    sender's credit word.  Credit goes back once *batch* bytes (any positive
    number, larger than the capacity too) have been freed, or at once after
    a credit request.  *progress* (the attribute ``progress``), for
    in-process use, is called while :meth:`recv_into` waits, to run the peer.
    """

    def __init__(self, capacity: int, channel: RemoteTarget, credit_channel: RemoteWriter,
                 batch: int, *, progress: Callable[[], object] | None = None) -> None:
        self._capacity = check_capacity(capacity)
        self._batch = _check_batch(batch)
        if len(channel.region) < capacity:
            raise ValueError(
                f"the channel's region has {len(channel.region)} bytes, "
                f"fewer than the capacity {capacity}")
        remote_size = getattr(credit_channel, "remote_size", CREDIT_REGION_SIZE)
        if remote_size < CREDIT_REGION_SIZE:
            raise ValueError(f"the sender's credit region must hold {CREDIT_REGION_SIZE} bytes")
        self._channel = channel
        self._credit_channel = credit_channel
        self._ring = channel.region[:capacity]
        self.progress = progress
        self._rtail = 0
        self._head = 0
        self._credited = 0
        self._creq = False
        self.credits_returned = 0   # ReturnCredit steps taken, for tests and stats

    # -- inspection -------------------------------------------------------

    @property
    def capacity(self) -> int:
        """Ring capacity C in bytes."""
        return self._capacity

    @property
    def batch(self) -> int:
        """Bytes freed before credit is returned unasked (the spec's B)."""
        return self._batch

    @property
    def head(self) -> int:
        """Stream position consumed up to."""
        return self._head

    @property
    def rtail(self) -> int:
        """The receiver's view of tail: it may read up to here."""
        return self._rtail

    @property
    def credited(self) -> int:
        """The head last returned to the sender as credit."""
        return self._credited

    @property
    def creq(self) -> bool:
        """True while a credit request has been seen and not yet answered."""
        return self._creq

    @property
    def credit_due(self) -> bool:
        """True when :meth:`return_credit` is enabled."""
        freed = self._head - self._credited
        return freed > 0 and (freed >= self._batch or self._creq)

    @property
    def channel(self) -> RemoteTarget:
        """The data channel's target side."""
        return self._channel

    @property
    def credit_channel(self) -> RemoteWriter:
        """The channel that writes the sender's credit word."""
        return self._credit_channel

    def ring_copy(self) -> bytes:
        """The receiver's ring copy, in slot order (the spec's buf)."""
        return bytes(self._ring)

    # -- actions ----------------------------------------------------------

    def deliver(self) -> bool:
        """Land one spec message: the pending writes up to and including the
        next one with an imm.  True if a message was delivered."""
        imm = _next_completion(self._channel)
        if imm is None:
            return False
        # RingCredit!Deliver
        if imm & IMM_REQUEST:
            self._take_request(imm & IMM_POS_MASK)
        else:
            self._take_tail(imm)
        return True

    def _take_request(self, low: int) -> None:
        # The request travels behind the data it was sent after, so the tail
        # it names is exactly the one we have seen.
        if low != self._rtail & IMM_POS_MASK:
            raise RingCorrupt("credit request names another tail",
                              f"{low:#x} (mod 2**31), but the data so far ends at "
                              f"{self._rtail}")
        self._creq = True

    def _take_tail(self, low: int) -> None:
        new = _unwrap(self._rtail, low)
        advance = new - self._rtail
        if advance == 0:
            raise RingCorrupt("tail did not advance", f"imm {low:#x} at tail {self._rtail}")
        if advance > MAX_CAPACITY:
            raise RingCorrupt("tail went backwards", f"imm {low:#x} after tail {self._rtail}")
        if new - self._head > self._capacity:
            raise RingCorrupt("tail beyond head + capacity",
                              f"tail {new}, head {self._head}, capacity {self._capacity}")
        self._rtail = new

    def read_into(self, buf: bytearray | memoryview) -> int:
        """Take up to len(buf) delivered bytes into *buf*; return how many (0: none)."""
        view = memoryview(buf).cast("B")
        k = min(len(view), self._rtail - self._head)
        if k <= 0:
            return 0
        # RingCredit!Recv(k)
        copy_out(self._ring, 0, self._capacity, self._head, view[:k])
        self._head += k
        return k

    def return_credit(self) -> bool:
        """Return the freed space if a batch is full or credit was asked for."""
        if not self.credit_due:
            return False
        # RingCredit!ReturnCredit
        head = self._head
        self._credit_channel.write(0, CREDIT_WORD.pack(head), head & IMM_POS_MASK)
        self._credited = head
        self._creq = False
        self.credits_returned += 1
        return True

    # -- blocking ---------------------------------------------------------

    def recv_into(self, buf: bytearray | memoryview, timeout: float | None = None) -> int:
        """Receive up to len(buf) bytes into *buf*, like ``socket.recv_into``.

        Waits until at least one byte is there; returns 0 only for an empty
        *buf* or when the sender closed a socket channel and all was read.
        Returns credit whenever the protocol says so.  *timeout* as for
        :meth:`CreditSender.send_all`.
        """
        view = memoryview(buf).cast("B")
        if not len(view):
            return 0
        waiter = _Waiter(timeout)
        while True:
            while self.deliver():
                pass
            n = self.read_into(view)
            try:
                # Also answers a request that came after everything was read.
                self.return_credit()
                _flush(self._credit_channel)
            except (BrokenPipeError, ConnectionResetError):
                # The sender has gone: its credit no longer matters, but what
                # it sent before going is still to be read.
                pass
            if n:
                return n
            if getattr(self._channel, "eof", False):
                return 0
            waiter.wait(f"waiting for data at head {self._head}", self._channel,
                        self._credit_channel, self.progress)


# -- refinement-mapping helpers -------------------------------------------

def wire_messages(pending: Iterable[tuple[int, bytes, int | None]],
                  rtail: int) -> list[dict[str, object]]:
    """Map a data channel's pending writes to the spec's ``wire``.

    *pending* is ``LocalChannel.pending()``: (offset, data, imm), oldest
    first.  *rtail* is the receiver's tail, from which the positions in the
    immediates are rebuilt.  Returns records as in the spec:
    ``{"kind": "data", "pos": p, "vals": b"..."}`` or ``{"kind": "ask"}``.
    Raises ValueError for writes that no sequence of Write and AskCredit
    actions produces (a request behind part of a message, a message with no
    imm at the end).
    """
    messages: list[dict[str, object]] = []
    pieces: list[bytes] = []
    base = rtail
    for _offset, data, imm in pending:
        if imm is None:
            pieces.append(bytes(data))
            continue
        if imm & IMM_REQUEST:
            if pieces:
                raise ValueError("a credit request sits inside a data message")
            messages.append({"kind": "ask"})
            continue
        vals = b"".join(pieces) + bytes(data)
        pieces = []
        base = _unwrap(base, imm)
        messages.append({"kind": "data", "pos": base - len(vals), "vals": vals})
    if pieces:
        raise ValueError("pending writes end inside a data message")
    return messages


def credit_messages(pending: Iterable[tuple[int, bytes, int | None]]) -> list[int]:
    """Map a credit channel's pending writes to the spec's ``cwire`` (heads, in order)."""
    return [CREDIT_WORD.unpack_from(data)[0] for _offset, data, _imm in pending]


# -- construction ---------------------------------------------------------

def local_pair(capacity: int, batch: int, *, max_message: int | None = None,
               credit_request: bool = True) -> tuple[CreditSender, CreditReceiver]:
    """A sender and a receiver joined by two :class:`LocalChannel` objects.

    Nothing moves until the caller runs the actions, or sets each side's
    ``progress`` to run the other; ``sender.channel`` and
    ``receiver.credit_channel`` expose the queues.
    """
    data = LocalChannel(check_capacity(capacity))
    sender = CreditSender(capacity, data, max_message=max_message,
                          credit_request=credit_request, batch=batch)
    receiver = CreditReceiver(capacity, data, sender.credit_target, batch)
    return sender, receiver


def socket_sender(sock: socket.socket, capacity: int, *, batch: int | None = None,
                  max_message: int | None = None,
                  credit_request: bool = True) -> CreditSender:
    """The sending end over a connected stream socket (see :class:`SocketChannel`).

    *batch* should be the receiver's (see :class:`CreditSender`).
    """
    chan = SocketChannel(sock, local_size=CREDIT_REGION_SIZE,
                         remote_size=check_capacity(capacity))
    return CreditSender(capacity, chan, credit_target=chan, max_message=max_message,
                        credit_request=credit_request, batch=batch)


def socket_receiver(sock: socket.socket, capacity: int, batch: int) -> CreditReceiver:
    """The receiving end over a connected stream socket (see :class:`SocketChannel`)."""
    chan = SocketChannel(sock, local_size=check_capacity(capacity),
                         remote_size=CREDIT_REGION_SIZE)
    return CreditReceiver(capacity, chan, chan, batch)
