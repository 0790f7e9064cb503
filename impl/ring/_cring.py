"""The C ring path: endpoints whose operations are single calls into ring.h.

The wrapper is deliberately thin: the C function, the endpoint's
``struct sd_ring`` and the flags are bound once in ``__init__``, so a
``write`` or ``read_into`` costs one attribute load per thing it touches and
one cffi call.  cffi passes a ``bytes`` object to ``const char *`` without a
copy; any other buffer goes through ``ffi.from_buffer`` (which also pins a
bytearray against resizing for the duration of the call).
"""

from __future__ import annotations

import time

from impl.ring import _core, layout
from impl.ring._ring_c import ffi, lib

__all__ = ["CRingWriter", "CRingReader", "check_build", "ffi", "lib"]


def check_build() -> str | None:
    """Return why the compiled module does not match this source tree, or None.

    A stale ``_ring_c`` built from an older layout.py would index the header
    wrongly; refusing it is cheaper than debugging that.
    """
    expected = {f"SD_{name}": getattr(layout, name) for name in layout.__all__
                if name.startswith("OFF_")}
    expected.update(SD_DATA_OFF=layout.DATA_OFF, SD_MAGIC=layout.MAGIC,
                    SD_PEEK=_core.PEEK, SD_ARM=_core.ARM,
                    SD_ERR_CLOSED=_core.ERR_CLOSED, SD_ERR_PIPE=_core.ERR_PIPE,
                    SD_ERR_MAGIC=_core.ERR_MAGIC, SD_ERR_CAPACITY=_core.ERR_CAPACITY,
                    SD_ERR_HEAD_AHEAD=_core.ERR_HEAD_AHEAD,
                    SD_ERR_TAIL_BEYOND=_core.ERR_TAIL_BEYOND,
                    SD_NOTOK=_core.NOTOK, SD_WAITALL=_core.WAITALL,
                    SD_ERR_TOKEN=_core.ERR_TOKEN,
                    SD_TOK_BUSY=layout.TOKEN_BUSY, SD_TOK_WANT=layout.TOKEN_WANT,
                    SD_TOK_SHIFT=layout.TOKEN_SHIFT)
    for name, value in expected.items():
        got = getattr(lib, name, None)
        if got != value:
            return f"{name} is {got!r} in the compiled module, {value!r} in layout.py"
    return None


# Bound once; and called with positional arguments only: cffi parses a
# keyword argument (require_writable=True) at a cost of ~200 ns a call here.
_from_buffer = ffi.from_buffer


def _not_writable(buf) -> TypeError:
    # What socket.recv_into raises for a read-only buffer.
    return TypeError(f"a writable buffer is required, not {type(buf).__name__}")


_ERR_TOKEN = _core.ERR_TOKEN
_WAITALL = _core.WAITALL
_PEND_WAKE = lib.SD_PEND_WAKE
_token_pending = lib.sd_token_pending


class _COps:
    """Binding of an endpoint to its ``struct sd_ring``."""

    _tok_off = 0    # the header offset of this side's token word

    def enable_token(self, token) -> None:
        """Make every operation check *token* (an impl.token.Token) in C.

        From now on a call succeeds only in the thread that holds the token
        (TokenSharing!Enter); any other gets the slow path, *token*.acquire().
        """
        self.token = token
        self._p.tok_off = self._tok_off

    def _as_holder(self, timeout: float | None, fn, *args, **kwargs):
        """The slow path: wait for the token (TokenSharing!Queue .. Take), then run *fn*.

        *fn* is the operation that found the token elsewhere; it runs again
        as the continuation of the BUSY operation that acquire() started.
        """
        self.token.acquire(timeout)
        try:
            return fn(*args, **kwargs)
        finally:
            self.token.exit()

    def _wanted(self, r: int) -> bool:
        """After an odd result: hand the token on if a waiter wanted it; True if the
        odd bit was only the token's (no wake-up owed to the peer)."""
        pend = _token_pending()
        if not pend:
            return False
        self.token.wanted()
        return r >= 0 and not pend & _PEND_WAKE

    def _setup_c(self, ring) -> None:
        # One struct per endpoint: closing the endpoint NULLs its base, and
        # every C call on it then returns SD_ERR_CLOSED instead of touching
        # memory that may be unmapped.
        self._p = ffi.new("struct sd_ring *")
        self._p.base = ring._cbuf
        self._p.capacity = ring.capacity

    def _store_flag(self, word: int, value: int) -> None:
        lib.sd_ring_store(self._p, word * 8, value)

    def _detach(self) -> None:
        self._p.base = ffi.NULL
        super()._detach()


class CRingWriter(_COps, _core.RingWriter):
    """RingWriter over the C path."""

    _tok_off = layout.OFF_WTOKEN

    def __init__(self, ring, *args, **kwargs) -> None:
        super().__init__(ring, *args, **kwargs)
        self._setup_c(ring)
        self._cw = lib.sd_ring_write

    def _source(self, data):
        if type(data) is bytes:
            return data, len(data)
        src = _from_buffer(data)
        return src, len(src)

    def _op(self, buf, off: int, n: int, flags: int, spin_ns: int) -> int:
        return self._cw(self._p, buf, off, n, flags, spin_ns)

    def _finish(self, r: int) -> int:
        if self.token is not None and r & 1 and self._wanted(r):
            return r >> 1
        return super()._finish(r)

    def write(self, data) -> int:  # the hot path: see RingWriter.write
        """Copy as much of *data* as fits; return the count (0 if full). Never blocks."""
        if type(data) is bytes:
            src, total = data, len(data)
        else:
            src = _from_buffer(data)
            total = len(src)
        r = self._cw(self._p, src, 0, total, 0, 0)  # RingCredit!Write
        if r == _ERR_TOKEN:
            return self._as_holder(0.0, self.write, data)
        n = self._finish(r) if r & 1 else r >> 1
        if n != total and self.token is not None:
            self._tok_exit()  # a partial write is the whole operation here
        return n

    def send_all(self, data, timeout: float | None = None) -> None:  # the hot path
        """Write all of *data*, waiting for space; see RingWriter.send_all."""
        if timeout is not None:
            _core.check_timeout(timeout)
        if type(data) is bytes:
            src, total = data, len(data)
        else:
            src = _from_buffer(data)
            total = len(src)
        r = self._cw(self._p, src, 0, total, 0, 0)  # RingCredit!Write
        if r == total << 1 and total:
            return  # all of it in one go, and no reader to wake
        if r == _ERR_TOKEN:
            return self._as_holder(timeout, self.send_all, data, timeout)
        off = self._finish(r) if r & 1 else r >> 1
        if off < total or total == 0:
            self._send_from(src, off, total, timeout)


class CRingReader(_COps, _core.RingReader):
    """RingReader over the C path."""

    _tok_off = layout.OFF_RTOKEN

    def __init__(self, ring, *args, **kwargs) -> None:
        super().__init__(ring, *args, **kwargs)
        self._setup_c(ring)
        self._cr = lib.sd_ring_read

    def _target(self, buf):
        # require_writable: cffi would otherwise let C write into a bytes.
        try:
            dst = _from_buffer("char[]", buf, True)
        except BufferError:
            raise _not_writable(buf) from None
        return dst, len(dst)

    def _op(self, buf, off: int, n: int, flags: int, spin_ns: int) -> int:
        return self._cr(self._p, buf, off, n, flags, spin_ns)

    def _finish(self, r: int) -> int:
        if self.token is not None and r & 1 and self._wanted(r):
            return r >> 2
        return super()._finish(r)

    def read_into(self, buf, *, peek: bool = False) -> int:  # the hot path
        """Copy up to ``len(buf)`` available bytes into *buf*; never blocks."""
        try:
            dst = _from_buffer("char[]", buf, True)
        except BufferError:
            raise _not_writable(buf) from None
        r = self._cr(self._p, dst, 0, len(dst), 1 if peek else 0, 0)  # RingCredit!Recv
        if r == _ERR_TOKEN:
            return self._as_holder(0.0, self.read_into, buf, peek=peek)
        if r & 1:
            return self._finish(r)
        if r == 0 and self.token is not None:
            self._tok_exit()  # nothing to read: the operation ends empty-handed
        return r >> 2

    def recv_into(self, buf, timeout: float | None = None, *,
                  peek: bool = False, waitall: bool = False) -> int:  # the hot path
        """Wait for at least one byte, then read; see RingReader.recv_into."""
        if timeout is not None:
            _core.check_timeout(timeout)
        try:
            dst = _from_buffer("char[]", buf, True)
        except BufferError:
            raise _not_writable(buf) from None
        n = len(dst)
        # Spin (if at all) inside this first call: a reply that is on its
        # way is then seen without another trip through Python.
        spin = self._spin_ns if timeout is None else self._first_spin(timeout)
        flags = (1 if peek else 0) | (_WAITALL if waitall else 0)  # SD_PEEK, SD_WAITALL
        r = self._cr(self._p, dst, 0, n, flags, spin)  # RingCredit!Recv
        if r and not r & 1 and (not waitall or r >> 2 == n):
            return r >> 2
        if r == _ERR_TOKEN:
            return self._as_holder(timeout, self.recv_into, buf, timeout, peek=peek,
                                   waitall=waitall)
        deadline = None if timeout is None else time.monotonic() + timeout
        return self._recv_from(r, dst, n, deadline, spin > 0, flags)
