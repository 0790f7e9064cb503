"""The per-socket shared-memory byte ring (RingCredit.tla, transport "shm").

A :class:`Ring` is one memfd holding a header and a payload (see
:mod:`impl.ring.layout`), plus two eventfds: ``data_efd`` on which a reader
with nothing to read sleeps, and ``space_efd`` on which a writer with no
room sleeps.  One :class:`RingWriter` and one :class:`RingReader` share it,
normally in two processes: after ``fork`` both keep the same mapping, or the
three descriptors of :meth:`Ring.fds` travel over ``SCM_RIGHTS`` and the
receiver calls :meth:`Ring.attach`.

Two backends do the same thing: ``"c"``, helpers compiled with cffi
(``impl.ring._ring_c``, built from ``ring.h`` by ``_build.py``), and
``"python"``, pure Python (``pyring.py``).  ``HAVE_C`` says whether the
compiled module is present and matches ``layout.py``; ``backend="auto"``
picks C when it is.

Errors follow the kernel: writing to a ring whose reader closed raises
BrokenPipeError (EPIPE); any use of an endpoint or ring closed in this
process raises OSError(EBADF), as a closed socket does; an inconsistent
header raises :class:`RingCorrupt` (EBADMSG); a bad size or timeout raises
ValueError naming the allowed range; waiting too long raises TimeoutError.

Waiting (``send_all``, ``recv_into``): spin for ``spin_ns`` nanoseconds
(default :data:`SPIN_NS`), then call ``os.sched_yield()`` up to ``yields``
times (default :data:`YIELDS`), then publish the sleeping flag and block on
the eventfd.  The peer writes the eventfd only when it sees that flag, so a
busy stream makes no system calls.  Without an explicit budget, a waiter
skips the spin while both ends are pinned to the same CPU (each end publishes
its CPU in the header): the peer cannot run while we spin.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import warnings

from impl.ring import _core, layout
from impl.ring._core import (
    SPIN_NS,
    YIELDS,
    RingCorrupt,
    RingFds,
    RingReader,
    RingSnapshot,
    RingWriter,
)
from impl.ring.pyring import PyRingReader, PyRingWriter, copy_in, copy_out

__all__ = [
    "HAVE_C", "SPIN_NS", "YIELDS", "BACKENDS", "Ring", "RingWriter", "RingReader",
    "RingFds", "RingSnapshot", "RingCorrupt", "copy_in", "copy_out",
]

try:
    from impl.ring import _cring
except ImportError:  # not compiled: the pure-Python path still works
    _cring = None
else:
    _stale = _cring.check_build()
    if _stale is not None:
        warnings.warn(f"ignoring the stale compiled ring module: {_stale}; "
                      "rebuild with: python impl/ring/_build.py", RuntimeWarning, stacklevel=2)
        _cring = None

#: True when the cffi extension is built and matches layout.py.
HAVE_C = _cring is not None
#: The backend names accepted by Ring.create and Ring.attach.
BACKENDS = ("auto", "c", "python")

_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW
_W = layout.word

for _cls in (RingCorrupt, RingFds, RingSnapshot, RingWriter, RingReader):
    _cls.__module__ = __name__


def _resolve_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "c" if HAVE_C else "python"
    if backend == "c" and not HAVE_C:
        raise ImportError("backend 'c' needs the cffi extension impl.ring._ring_c, which "
                          "is not built; run: python impl/ring/_build.py")
    return backend


def _check_budgets(spin_ns: int | None, yields: int | None) -> tuple[int | None, int]:
    if spin_ns is not None and not (isinstance(spin_ns, int) and 0 <= spin_ns <= 10**9):
        raise ValueError(f"spin_ns must be an int from 0 to 10**9 (1 s), got {spin_ns!r}")
    if yields is None:
        yields = YIELDS
    elif not (isinstance(yields, int) and 0 <= yields <= 10**6):
        raise ValueError(f"yields must be an int from 0 to 10**6, got {yields!r}")
    return spin_ns, yields


def _check_eventfd(name: str, fd: int) -> None:
    """Raise OSError(EINVAL) unless *fd* is an eventfd (when /proc can tell)."""
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return  # no /proc here: nothing to check against
    if target != "anon_inode:[eventfd]":
        raise OSError(errno.EINVAL, f"{name} (fd {fd}) is not an eventfd: {target}")


def _close_all(fds) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


class Ring:
    """One shared-memory byte ring: a memfd mapping plus two eventfds.

    Make one with :meth:`create`, or map an existing one with :meth:`attach`.
    Get the endpoints with :meth:`writer` and :meth:`reader` (one of each per
    Ring object; the same object on every call).  :meth:`close` unmaps and
    closes this process's descriptors only; it does not tell the peer
    anything -- close the endpoints for that (EOF / EPIPE).
    """

    capacity: int   #: payload size in bytes (RingCredit's C)
    backend: str    #: "c" or "python"

    def __init__(self, mm: mmap.mmap, fds: RingFds, capacity: int, backend: str,
                 spin_ns: int | None, yields: int) -> None:
        """Wrap a validated mapping; use create() or attach() instead."""
        self._mm = mm
        self._fds = fds
        self.capacity = capacity
        self.backend = backend
        self._spin_ns = spin_ns
        self._yields = yields
        self._mem = memoryview(mm)
        self._q = self._mem[:layout.HEADER_SIZE].cast("Q")
        self._cbuf = _cring.ffi.from_buffer(mm) if backend == "c" else None
        self._writer: RingWriter | None = None
        self._reader: RingReader | None = None
        self._closed = False

    # -- construction ---------------------------------------------------------
    @classmethod
    def create(cls, capacity: int, *, backend: str = "auto",
               spin_ns: int | None = None, yields: int | None = None) -> Ring:
        """Create a new, empty ring of *capacity* bytes (1 B .. 1 GiB).

        *backend* is "c", "python" or "auto".  *spin_ns* and *yields* set the
        waiting budgets (see the module docstring).  The memfd is sealed
        against resizing, so a peer cannot make the mapping fault.
        """
        backend = _resolve_backend(backend)
        size = layout.map_size(capacity)
        spin_ns, yields = _check_budgets(spin_ns, yields)
        fds: list[int] = []
        try:
            memfd = os.memfd_create("socksdirect-ring", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
            fds.append(memfd)
            os.ftruncate(memfd, size)
            fcntl.fcntl(memfd, fcntl.F_ADD_SEALS, _SEALS | fcntl.F_SEAL_SEAL)
            # Non-blocking: a waiter drains its eventfd after poll() and a
            # spurious wake-up must find it empty, not block.
            for _ in range(2):
                fds.append(os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK))
            mm = mmap.mmap(memfd, size)
        except BaseException:
            _close_all(fds)
            raise
        q = memoryview(mm)[:layout.HEADER_SIZE].cast("Q")
        q[_W(layout.OFF_VERSION)] = layout.VERSION
        q[_W(layout.OFF_CAPACITY)] = capacity
        q[_W(layout.OFF_DATA_OFF)] = layout.DATA_OFF
        q[_W(layout.OFF_MAGIC)] = layout.MAGIC
        q.release()
        return cls(mm, RingFds(*fds), capacity, backend, spin_ns, yields)

    @classmethod
    def attach(cls, fds: RingFds, *, backend: str = "auto",
               spin_ns: int | None = None, yields: int | None = None,
               adopt: bool = False) -> Ring:
        """Map an existing ring from its descriptors (e.g. received over SCM_RIGHTS).

        The descriptors are duplicated: the caller keeps and closes its own.
        With *adopt*, the Ring takes the caller's descriptors instead (they
        are the Ring's from the call on, closed by it even if attach fails),
        and the eventfds are not checked: for descriptors fresh from a
        trusted creator (the monitor), this saves three dup() and close()
        calls and two readlink()s.  The memfd and the header are validated
        either way; RingCorrupt names any inconsistency.
        """
        memfd, data_efd, space_efd = fds
        own: list[int] = [memfd, data_efd, space_efd] if adopt else []
        try:
            backend = _resolve_backend(backend)
            spin_ns, yields = _check_budgets(spin_ns, yields)
            if not adopt:
                for fd in (memfd, data_efd, space_efd):
                    own.append(os.dup(fd))
                for name, fd in (("data_efd", own[1]), ("space_efd", own[2])):
                    _check_eventfd(name, fd)
            mm, capacity = cls._map_checked(own[0])
        except BaseException:
            _close_all(own)
            raise
        return cls(mm, RingFds(*own), capacity, backend, spin_ns, yields)

    @staticmethod
    def _map_checked(memfd: int) -> tuple[mmap.mmap, int]:
        """Map *memfd* after checking that it is a sealed, consistent ring."""
        try:
            seals = fcntl.fcntl(memfd, fcntl.F_GET_SEALS)
        except OSError:
            seals = 0
        if seals & _SEALS != _SEALS:
            raise RingCorrupt("memfd not sealed", "the ring's memory could be resized under us")
        size = os.fstat(memfd).st_size
        if not layout.map_size(layout.MIN_CAPACITY) <= size <= layout.map_size(
                layout.MAX_CAPACITY):
            raise RingCorrupt("mapping size", f"{size} bytes is no ring's size")
        mm = mmap.mmap(memfd, size)
        try:
            with memoryview(mm) as mem, mem[:layout.HEADER_SIZE] as head, \
                    head.cast("Q") as q:
                capacity = _check_header(q, size)
        except BaseException:
            mm.close()
            raise
        return mm, capacity

    # -- endpoints --------------------------------------------------------------
    def _endpoint_args(self, wait_efd: int, signal_efd: int) -> tuple:
        # No explicit budget: SPIN_NS, dropped while both ends share one CPU
        # (see _Endpoint._choose_spin).
        spin = self._spin_ns
        return (wait_efd, signal_efd, SPIN_NS if spin is None else spin, self._yields)

    def writer(self) -> RingWriter:
        """Return this ring's writing endpoint (created on the first call)."""
        self._check_open()
        if self._writer is None:
            cls = _cring.CRingWriter if self.backend == "c" else PyRingWriter
            self._writer = cls(self, *self._endpoint_args(self._fds.space_efd,
                                                          self._fds.data_efd),
                               auto_spin=self._spin_ns is None)
        return self._writer

    def reader(self) -> RingReader:
        """Return this ring's reading endpoint (created on the first call)."""
        self._check_open()
        if self._reader is None:
            cls = _cring.CRingReader if self.backend == "c" else PyRingReader
            self._reader = cls(self, *self._endpoint_args(self._fds.data_efd,
                                                          self._fds.space_efd),
                               auto_spin=self._spin_ns is None)
        return self._reader

    # -- inspection --------------------------------------------------------------
    def fds(self) -> RingFds:
        """Return the ring's descriptors (still owned by this Ring)."""
        self._check_open()
        return self._fds

    def snapshot(self) -> RingSnapshot:
        """Return (head, tail, payload bytes in slot order), for the spec cross-check.

        Reads without locking: take it while neither side is mid-operation.
        """
        self._check_open()
        q = self._q
        head, tail = q[_W(layout.OFF_HEAD)], q[_W(layout.OFF_TAIL)]
        data = bytes(self._mem[layout.DATA_OFF:layout.DATA_OFF + self.capacity])
        return RingSnapshot(head, tail, data)

    _TOKEN_OFF = {"writer": layout.OFF_WTOKEN, "reader": layout.OFF_RTOKEN}

    def _token_index(self, side: str) -> int:
        try:
            return _W(self._TOKEN_OFF[side])
        except KeyError:
            raise ValueError(f"side must be 'writer' or 'reader', got {side!r}") from None

    def token_word(self, side: str) -> int:
        """The token word of *side* ("writer" or "reader"): owner_tid << 2 | WANT | BUSY."""
        self._check_open()
        return self._q[self._token_index(side)]

    def set_token_word(self, side: str, value: int) -> None:
        """Store the token word of *side*, fenced (the monitor's TokenSharing!Reclaim).

        Only for a party that knows no thread can be using the token: the
        monitor after the holder died, or the creator before handing the
        ring out.
        """
        self._check_open()
        i = self._token_index(side)
        if not 0 <= value < 1 << 64:
            raise ValueError(f"a token word is an unsigned 64-bit value, got {value!r}")
        if self._cbuf is not None:  # a seq_cst store, as for the close flags
            view = _cring.ffi.new("struct sd_ring *",
                                  {"base": self._cbuf, "capacity": self.capacity})
            _cring.lib.sd_ring_store(view, i * 8, value)
        else:
            self._q[i] = value

    # -- closing -----------------------------------------------------------------
    @property
    def closed(self) -> bool:
        """True once close() was called."""
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise _core.closed_error("ring")

    def close(self) -> None:
        """Unmap the ring and close this process's descriptors.

        The peer is not told (use the endpoints' close() for EOF/EPIPE), just
        as closing one copy of a socket descriptor does not shut it down.
        Endpoints of this Ring raise OSError(EBADF) afterwards.  Do not call
        it while another thread is inside an operation on this ring.
        """
        if self._closed:
            return
        self._closed = True
        for ep in (self._writer, self._reader):
            if ep is not None:
                ep._detach()
        if self._cbuf is not None:
            _cring.ffi.release(self._cbuf)
            self._cbuf = None
        self._q.release()
        self._mem.release()
        self._mm.close()
        _close_all(self._fds)

    def __del__(self) -> None:
        # Like a socket: an unclosed ring closes its descriptors when collected.
        if not getattr(self, "_closed", True):
            msg = f"unclosed {self!r}"
            self.close()
            warnings.warn(msg, ResourceWarning, source=self, stacklevel=2)

    def __enter__(self) -> Ring:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"memfd={self._fds.memfd}"
        return f"<Ring capacity={self.capacity} backend={self.backend!r} {state}>"


def _check_header(q: memoryview, size: int) -> int:
    """Validate a mapped header of *size* bytes; return its capacity."""
    magic = q[_W(layout.OFF_MAGIC)]
    if magic != layout.MAGIC:
        raise RingCorrupt("bad magic", f"{magic:#x}, expected {layout.MAGIC:#x}")
    version = q[_W(layout.OFF_VERSION)]
    if version != layout.VERSION:
        raise RingCorrupt("bad version", f"{version}, this library speaks {layout.VERSION}")
    data_off = q[_W(layout.OFF_DATA_OFF)]
    if data_off != layout.DATA_OFF:
        raise RingCorrupt("bad data offset", f"{data_off}, expected {layout.DATA_OFF}")
    capacity = q[_W(layout.OFF_CAPACITY)]
    if (not layout.MIN_CAPACITY <= capacity <= layout.MAX_CAPACITY
            or layout.map_size(capacity) != size):
        raise RingCorrupt("capacity mismatch",
                          f"capacity {capacity} does not fit a mapping of {size} bytes")
    fault = _core.position_fault(q[_W(layout.OFF_HEAD)], q[_W(layout.OFF_TAIL)], capacity)
    if fault is not None:
        raise fault
    return capacity


del _cls
