"""Remote writes: the interface the two-copy ring uses to reach its peer.

The RDMA transport of SocksDirect keeps a copy of the ring on each side and
moves bytes with one-sided writes over a reliable-connected queue pair:
RDMA WRITE puts bytes into the peer's registered memory region, and
WRITE_WITH_IMM does the same and then posts a 32-bit immediate value to the
peer's completion queue.  On an RC queue pair every write lands in the order
it was issued, and an immediate is delivered only after its data (and all
earlier data) has landed.  This module captures exactly that contract, so
:mod:`impl.ring.credit` can run over an in-process queue (:class:`LocalChannel`),
over a socket between processes (:class:`SocketChannel`), and later over
pyverbs without changing.

Two roles:

* the *writer* (:class:`RemoteWriter`) issues ``write(offset, data, imm)``;
* the *target* (:class:`RemoteTarget`) owns the memory region and the
  completion queue; ``deliver_one()`` lands the oldest pending write, which
  is what the NIC does on its own.  It is a method so that tests (and the
  receiver's ``Deliver`` action) control exactly when bytes land.

Frame format of :class:`SocketChannel` (all little-endian), one per write::

    u32 length   number of data bytes that follow the header
    u64 offset   where they go in the peer's region
    u8  flags    FLAG_IMM if an immediate value follows the data; no other bit
    u32 imm      the immediate value; must be 0 when FLAG_IMM is clear
    length bytes of data

A frame that breaks any rule (unknown flag bits, an immediate without its
flag, a length above :data:`MAX_FRAME_DATA`, bytes outside the region, a
stream that ends inside a frame) raises :class:`FrameError` before anything
is written to the region.  Writes the writer itself gets wrong (outside the
peer's region, an imm that is not 32 bits) raise ValueError at once.
"""

from __future__ import annotations

import collections
import socket
import struct
from typing import Protocol, runtime_checkable

from impl.ring._core import RingCorrupt

__all__ = [
    "FLAG_IMM",
    "FRAME_HEADER",
    "IMM_MAX",
    "MAX_FRAME_DATA",
    "FrameError",
    "LocalChannel",
    "RemoteTarget",
    "RemoteWriter",
    "SocketChannel",
]

# The frame header, in one place: length, offset, flags, imm.
FRAME_HEADER = struct.Struct("<IQBI")
FLAG_IMM = 0x01
# Largest data part of one frame.  A ring never needs more than its
# capacity in one write; the bound stops a corrupt length from making the
# receiver buffer gigabytes before it can reject the frame.
MAX_FRAME_DATA = 1 << 30
IMM_MAX = (1 << 32) - 1

# Bytes asked from the kernel per recv() on the target side.
_RECV_CHUNK = 1 << 18


class FrameError(RingCorrupt):
    """A frame from the peer that breaks the channel's rules.

    A :class:`~impl.ring.RingCorrupt` (OSError, errno EBADMSG) with the fault
    ``"malformed frame"``: the peer's data can no longer be trusted.  Nothing
    of the frame was written to the region.
    """

    def __init__(self, detail: str) -> None:
        super().__init__("malformed frame", detail)


@runtime_checkable
class RemoteWriter(Protocol):
    """The sending side of an in-order remote-write channel (an RC queue pair)."""

    def write(self, offset: int, data: bytes, imm: int | None = None) -> None:
        """Write *data* at *offset* of the peer's region, in order with every
        earlier write; if *imm* (0..2**32-1) is given, post it to the peer's
        completion queue once the data has landed."""
        ...


@runtime_checkable
class RemoteTarget(Protocol):
    """The receiving side: a memory region and a completion queue of imm values."""

    @property
    def region(self) -> memoryview:
        """The registered memory region that remote writes land in."""
        ...

    def deliver_one(self) -> bool:
        """Land the oldest pending write; False if none is pending."""
        ...

    def poll_completion(self) -> int | None:
        """Pop the oldest immediate value from the completion queue, or None."""
        ...


def _check_write(offset: int, data: bytes, imm: int | None, size: int) -> None:
    """Reject a write the peer's region or the imm field cannot hold."""
    if imm is not None and not 0 <= imm <= IMM_MAX:
        raise ValueError(f"imm must be in 0..{IMM_MAX}, got {imm}")
    if offset < 0 or offset + len(data) > size:
        raise ValueError(
            f"write of {len(data)} bytes at offset {offset} does not fit the "
            f"{size}-byte remote region (offset + length must be in 0..{size})")


class LocalChannel:
    """An in-process remote-write channel: writer and target in one object.

    Writes queue up in order and land only when :meth:`deliver_one` is
    called, so a test decides every interleaving.  The region is a
    ``bytearray`` of *size* bytes, zeroed like fresh registered memory.
    Appending and popping a deque is atomic in CPython, so one thread may
    write while another delivers.
    """

    def __init__(self, size: int) -> None:
        if not 0 < size <= MAX_FRAME_DATA:
            raise ValueError(f"region size must be in 1..{MAX_FRAME_DATA}, got {size}")
        self._buf = bytearray(size)
        self._region = memoryview(self._buf)
        self._ops: collections.deque[tuple[int, bytes, int | None]] = collections.deque()
        self._cq: collections.deque[int] = collections.deque()
        self.writes_issued = 0   # every write() so far: tests count credit returns

    # -- writer side ------------------------------------------------------

    @property
    def remote_size(self) -> int:
        """Size of the region the writer may write into."""
        return len(self._buf)

    def write(self, offset: int, data: bytes, imm: int | None = None) -> None:
        """Queue a remote write of *data* at *offset* (see :class:`RemoteWriter`)."""
        _check_write(offset, data, imm, len(self._buf))
        # bytes(): the caller may reuse its buffer; RDMA would read it later too,
        # but a queued snapshot keeps this model free of that hazard.
        self._ops.append((offset, bytes(data), imm))
        self.writes_issued += 1

    def flush(self) -> bool:
        """Nothing is buffered on the writer side; always True."""
        return True

    # -- target side ------------------------------------------------------

    @property
    def region(self) -> memoryview:
        """The target's memory region."""
        return self._region

    @property
    def eof(self) -> bool:
        """An in-process channel never closes."""
        return False

    def deliver_one(self) -> bool:
        """Land the oldest pending write (and post its imm); False if none."""
        try:
            offset, data, imm = self._ops.popleft()
        except IndexError:
            return False
        self._region[offset:offset + len(data)] = data
        if imm is not None:
            self._cq.append(imm)
        return True

    def poll_completion(self) -> int | None:
        """Pop the oldest immediate value, or None if the queue is empty."""
        try:
            return self._cq.popleft()
        except IndexError:
            return None

    # -- inspection -------------------------------------------------------

    def pending(self) -> list[tuple[int, bytes, int | None]]:
        """The writes not yet landed, oldest first, as (offset, data, imm)."""
        return list(self._ops)

    def completions(self) -> list[int]:
        """The immediate values landed but not yet polled, oldest first."""
        return list(self._cq)


class SocketChannel:
    """One end of an in-order remote-write channel between two processes.

    *sock* is a connected stream socket (one end of ``socket.socketpair()``,
    inherited across ``fork``).  A stream socket is two-way, so one object is
    both a writer into the peer's region (*remote_size* bytes) and the target
    for the peer's writes into this end's own region (*local_size* bytes):
    the ring's sender writes data and receives credits over one socket.

    The socket is made non-blocking.  ``write`` never blocks: frames that the
    kernel does not take at once wait in an outgoing buffer, which
    :meth:`flush` drains.  This matters because both ends write: if either
    could block in a send while the other blocked in its own, neither would
    read, and the pair would deadlock.  The ring's credits bound what is ever
    buffered (at most the ring's capacity of data in flight).
    """

    def __init__(self, sock: socket.socket, *, local_size: int, remote_size: int) -> None:
        for name, size in (("local_size", local_size), ("remote_size", remote_size)):
            if not 0 < size <= MAX_FRAME_DATA:
                raise ValueError(f"{name} must be in 1..{MAX_FRAME_DATA}, got {size}")
        self._sock = sock
        sock.setblocking(False)
        self._remote_size = remote_size
        self._buf = bytearray(local_size)
        self._region = memoryview(self._buf)
        self._cq: collections.deque[int] = collections.deque()
        self._out = bytearray()     # frames the kernel has not taken yet
        self._in = bytearray()      # bytes received; frames start at _pos
        self._pos = 0               # consumed prefix of _in, dropped on the next fill
        self._eof = False
        self.reset_by_peer = False  # the peer's end of stream came as ECONNRESET
        self.writes_issued = 0

    def fileno(self) -> int:
        """The socket's fd: readable when a frame may be deliverable."""
        return self._sock.fileno()

    def close(self) -> None:
        """Close the socket; frames still buffered for sending are dropped."""
        self._sock.close()

    # -- writer side ------------------------------------------------------

    @property
    def remote_size(self) -> int:
        """Size of the peer's region."""
        return self._remote_size

    def write(self, offset: int, data: bytes, imm: int | None = None) -> None:
        """Send one frame: *data* for *offset* of the peer's region, then *imm*.

        Raises BrokenPipeError (or ConnectionResetError) once the peer has
        gone, as a socket's send would.
        """
        _check_write(offset, data, imm, self._remote_size)
        flags = FLAG_IMM if imm is not None else 0
        self._out += FRAME_HEADER.pack(len(data), offset, flags, imm or 0)
        self._out += data
        self.writes_issued += 1
        self.flush()

    @property
    def wants_write(self) -> bool:
        """True while frames wait in the outgoing buffer."""
        return bool(self._out)

    def flush(self) -> bool:
        """Hand buffered frames to the kernel without blocking; True when all went."""
        while self._out:
            try:
                sent = self._sock.send(self._out)
            except (BlockingIOError, InterruptedError):
                return False
            except OSError:
                # The peer is gone: nothing buffered can ever arrive.  Drop it
                # so that a later flush does not report the same loss again
                # as progress, and let the caller see the error.
                self._out.clear()
                raise
            del self._out[:sent]
        return True

    # -- target side ------------------------------------------------------

    @property
    def region(self) -> memoryview:
        """This end's memory region, which the peer's frames write into."""
        return self._region

    @property
    def eof(self) -> bool:
        """True once the peer has closed and every whole frame was delivered."""
        return self._eof and self._pos == len(self._in)

    def _fill(self) -> None:
        """Take whatever the kernel has, without blocking."""
        if self._eof:
            return
        try:
            chunk = self._sock.recv(_RECV_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except ConnectionResetError:
            # The peer closed with some of our frames unread (typically the
            # ring's last credits, which it no longer needed).  Everything it
            # sent before closing was already received, so this is its end of
            # stream; a frame cut short still raises in deliver_one().
            self.reset_by_peer = True
            chunk = b""
        if not chunk:
            self._eof = True
        # Drop consumed frames here, once per recv, rather than once per frame:
        # deleting a prefix moves everything after it.
        del self._in[:self._pos]
        self._pos = 0
        self._in += chunk

    def _parse(self) -> tuple[int, int, int | None] | None:
        """Validate the next frame in the input buffer: (offset, length, imm).

        Returns None if the frame is not complete yet.  Checks everything the
        header claims before the data is looked at, so a corrupt header is
        reported as such rather than as a short read of a huge frame.
        """
        if len(self._in) - self._pos < FRAME_HEADER.size:
            return None
        length, offset, flags, imm = FRAME_HEADER.unpack_from(self._in, self._pos)
        if flags & ~FLAG_IMM:
            raise FrameError(f"frame has unknown flag bits {flags:#04x}")
        if not flags & FLAG_IMM and imm != 0:
            raise FrameError(f"frame without FLAG_IMM carries imm {imm:#x}")
        if length > MAX_FRAME_DATA:
            raise FrameError(f"frame length {length} exceeds {MAX_FRAME_DATA}")
        if offset + length > len(self._buf):
            raise FrameError(
                f"frame writes bytes {offset}..{offset + length - 1} outside the "
                f"{len(self._buf)}-byte region")
        if len(self._in) - self._pos < FRAME_HEADER.size + length:
            return None
        return offset, length, imm if flags & FLAG_IMM else None

    def deliver_one(self) -> bool:
        """Land the oldest complete frame, reading the socket if needed.

        Returns False if no whole frame has arrived.  Raises
        :class:`FrameError` for a malformed frame, or for a peer that closed
        in the middle of one.
        """
        frame = self._parse()
        if frame is None:
            self._fill()
            frame = self._parse()
        if frame is None:
            left = len(self._in) - self._pos
            if self._eof and left:
                raise FrameError(f"peer closed inside a frame ({left} bytes of it arrived)")
            return False
        offset, length, imm = frame
        start = self._pos + FRAME_HEADER.size
        with memoryview(self._in) as view:
            self._region[offset:offset + length] = view[start:start + length]
        self._pos = start + length
        if imm is not None:
            self._cq.append(imm)
        return True

    def poll_completion(self) -> int | None:
        """Pop the oldest immediate value, or None if the queue is empty."""
        try:
            return self._cq.popleft()
        except IndexError:
            return None

    def completions(self) -> list[int]:
        """The immediate values landed but not yet polled, oldest first."""
        return list(self._cq)

