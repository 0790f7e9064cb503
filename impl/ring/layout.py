"""The memory layout of a shared-memory ring: the one place that defines it.

A ring is one memfd mapping: a header, then the payload.  Every header field
is a little-endian unsigned 64-bit word at an 8-byte aligned offset, so both
the C helpers (``ring.h``, which receives these offsets as macros from
``_build.py``) and the pure-Python path (``memoryview.cast('Q')`` element
loads and stores) read and write each field with one single-copy-atomic
access.  Nothing else in the package hard-codes an offset.

::

    offset  0  +-----------------------------------------------+
               | magic | version | capacity | data_off         |  line 0: constant
          128  +-----------------------------------------------+
               | tail | writer_sleeping | closed_wr            |  written by the writer
          256  +-----------------------------------------------+
               | head | reader_sleeping | closed_rd            |  written by the reader
          384  +-----------------------------------------------+
               | wtoken: the writer side's token word          |  the writing end's send token
          512  +-----------------------------------------------+
               | rtoken: the reader side's token word          |  the reading end's recv token
          640  +-----------------------------------------------+
               | records: descriptor records queued (writer)   |  see "records" below
          768  +-----------------------------------------------+
               | (unused)                                      |
         2048  +-----------------------------------------------+
               | payload: capacity bytes; stream position p    |
               | lives in slot p % capacity                    |
               +-----------------------------------------------+  rounded up to a page

Each side writes only its own line, so the only cache-line transfers are the
ones the protocol needs (the peer reading a position or a flag).  The lines
are 128 bytes apart rather than 64 because x86 cores prefetch cache lines in
adjacent pairs; one pair per writer keeps false sharing away.

A token word (``spec/tla/TokenSharing.tla``, ``impl/token``) says which
thread may use that side of the ring: ``owner_tid << 2 | WANT << 1 | BUSY``.
It has lines of its own because threads of other processes CAS it when they
take the token over, and that traffic must not slow the positions down.

``records`` counts the descriptor records (``SCM_RIGHTS``) that the
writing end of an AF_UNIX connection has queued on the connection's side
channel (``impl.sdsocket``; docs/socket.md).  The writer stores it after
queueing a record and before publishing the record's bytes (``tail``), so a
reader that sees the bytes sees the count too and knows to look at the side
channel; while the count stays what the reader last saw, a read costs no
system call.  It has a line pair of its own: it changes only when
descriptors travel, and must not disturb the positions' lines.

``closed_rd`` is 1 when the reader closed and 2 (``impl.ring._core.RESET``)
when the monitor reset the reading end; both mean closed to every path.

Positions (``head``, ``tail``) are stream offsets that only grow, as in
``spec/tla/RingCredit.tla``; ``tail - head`` is the number of unread bytes
and never exceeds the capacity.
"""

from __future__ import annotations

__all__ = [
    "MAGIC", "VERSION", "MIN_CAPACITY", "MAX_CAPACITY",
    "OFF_MAGIC", "OFF_VERSION", "OFF_CAPACITY", "OFF_DATA_OFF",
    "OFF_TAIL", "OFF_WRITER_SLEEPING", "OFF_CLOSED_WR", "OFF_WRITER_CPU",
    "OFF_HEAD", "OFF_READER_SLEEPING", "OFF_CLOSED_RD", "OFF_READER_CPU",
    "OFF_WTOKEN", "OFF_RTOKEN", "OFF_RECORDS", "TOKEN_BUSY", "TOKEN_WANT", "TOKEN_SHIFT",
    "HEADER_SIZE", "DATA_OFF", "FIELDS",
    "check_capacity", "map_size", "word",
]

#: "sdring\\0\\1" read as a little-endian word: marks a mapping as a ring.
MAGIC = int.from_bytes(b"sdring\x00\x01", "little")
#: Bumped on any change to this file's offsets or the meaning of a field.
VERSION = 4

# Capacity bounds.  One byte is allowed on purpose: the spec's model checks
# use rings of 4 to 8 bytes and the implementation must run those too.  The
# upper bound keeps a mapping well inside what one memfd should hold.
MIN_CAPACITY = 1
MAX_CAPACITY = 1 << 30

# Line 0: written once by the creator, then only read.
OFF_MAGIC = 0
OFF_VERSION = 8
OFF_CAPACITY = 16
OFF_DATA_OFF = 24

# The writer's line.
OFF_TAIL = 128              # stream position the writer has published up to
OFF_WRITER_SLEEPING = 136   # 1: the writer waits on space_efd for space
OFF_CLOSED_WR = 144         # 1: the writer closed; the reader sees EOF once drained
OFF_WRITER_CPU = 152        # 1 + the one CPU the writer may run on; 0: not pinned to one

# The reader's line.
OFF_HEAD = 256              # stream position the reader has consumed up to
OFF_READER_SLEEPING = 264   # 1: the reader waits on data_efd for data
OFF_CLOSED_RD = 272         # 1: the reader closed; writes fail with EPIPE
OFF_READER_CPU = 280        # 1 + the one CPU the reader may run on; 0: not pinned to one

# The token words: each on a line pair of its own.
OFF_WTOKEN = 384            # the token of the side that writes this ring (its end's send token)
OFF_RTOKEN = 512            # the token of the side that reads this ring (its end's recv token)

# Written by the writer (its send token held), read by the reader.
OFF_RECORDS = 640           # descriptor records queued on the side channel so far

# Token word bits: owner_tid << TOKEN_SHIFT | WANT | BUSY; owner 0 = no thread.
TOKEN_BUSY = 1              # the owner is inside an operation
TOKEN_WANT = 2              # a thread waits for the token: hand it over at exit
TOKEN_SHIFT = 2

HEADER_SIZE = 768

# The payload starts half a page into the mapping.  glibc's memcpy on the
# AMD machines this runs on slows down 5-10x when the destination lies 16
# bytes past the source modulo 4 KiB (see the project's notes on IPC costs).
# Large Python buffers are malloc'd or mmap'd and so sit at small offsets
# modulo 4 KiB (bytearray data at +16, bytes data at +48, mmap/numpy at 0).
# A payload at offset 0 of a page would make "read slot 0 into a fresh
# bytearray" exactly that bad case.  Half a page away, copies of chunks at
# page-multiple stream positions (the common case for large transfers) have
# source and destination about 2 KiB apart modulo 4 KiB, as far from 16 as
# they can be; only the rare odd position can still alias.
DATA_OFF = 2048

#: Field name -> byte offset, for diagnostics and tests.
FIELDS = {
    "magic": OFF_MAGIC, "version": OFF_VERSION, "capacity": OFF_CAPACITY,
    "data_off": OFF_DATA_OFF,
    "tail": OFF_TAIL, "writer_sleeping": OFF_WRITER_SLEEPING, "closed_wr": OFF_CLOSED_WR,
    "writer_cpu": OFF_WRITER_CPU,
    "head": OFF_HEAD, "reader_sleeping": OFF_READER_SLEEPING, "closed_rd": OFF_CLOSED_RD,
    "reader_cpu": OFF_READER_CPU,
    "wtoken": OFF_WTOKEN, "rtoken": OFF_RTOKEN, "records": OFF_RECORDS,
}

assert HEADER_SIZE <= DATA_OFF and DATA_OFF % 64 == 0
assert all(off % 8 == 0 and off < HEADER_SIZE for off in FIELDS.values())


def word(offset: int) -> int:
    """Return the index of the header field at byte *offset* in a ``cast('Q')`` view."""
    return offset // 8


def check_capacity(capacity: int) -> int:
    """Return *capacity* if it is an allowed ring size, else raise ValueError."""
    if (not isinstance(capacity, int) or isinstance(capacity, bool)  # True is no size
            or not MIN_CAPACITY <= capacity <= MAX_CAPACITY):
        raise ValueError(
            f"ring capacity must be an int from {MIN_CAPACITY} to {MAX_CAPACITY} "
            f"bytes (1 GiB), got {capacity!r}")
    return capacity


def map_size(capacity: int) -> int:
    """Return the size of the memfd (and its mapping) for a ring of *capacity* bytes.

    Exactly ``DATA_OFF + capacity``, not rounded to a page: the kernel maps
    whole pages anyway, and an exact size lets an attaching process check
    the header's capacity against a value the peer cannot change (the memfd
    is sealed against resizing).
    """
    return DATA_OFF + check_capacity(capacity)
