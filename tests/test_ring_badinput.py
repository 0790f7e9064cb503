"""Bad input: corrupt headers, bad sizes, use after close.

The header lives in memory a peer can write, so every fault is planted the
way a buggy or hostile peer would plant it: through a mapping of the memfd
of our own, never through the library.  Each must raise RingCorrupt naming
the fault, on attach and on every operation, without touching the payload or
the caller's buffer.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os

import pytest

from impl.ring import Ring, RingCorrupt, RingFds, copy_in, copy_out, layout
from tests.gates import BACKENDS

CAP = 13


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


class Peer:
    """A mapping of a ring's memfd made without the library: the 'peer' that corrupts."""

    def __init__(self, ring: Ring) -> None:
        fd = ring.fds().memfd
        self.mm = mmap.mmap(fd, os.fstat(fd).st_size)
        self.q = memoryview(self.mm)[:layout.HEADER_SIZE].cast("Q")

    def __setitem__(self, name: str, value: int) -> None:
        self.q[layout.FIELDS[name] // 8] = value

    def __getitem__(self, name: str) -> int:
        return self.q[layout.FIELDS[name] // 8]

    def payload(self) -> bytes:
        return bytes(self.mm[layout.DATA_OFF:layout.DATA_OFF + CAP])

    def close(self) -> None:
        self.q.release()
        self.mm.close()


@pytest.fixture
def ring(backend):
    r = Ring.create(CAP, backend=backend)
    r.writer().write(b"0123456789")
    r.reader().read(4)                     # head 4, tail 10
    yield r
    r.close()


@pytest.fixture
def peer(ring):
    p = Peer(ring)
    yield p
    p.close()


# (field, bad value, the fault the error must name)
ATTACH_FAULTS = [
    ("magic", 0, "bad magic"),
    ("magic", layout.MAGIC ^ 1, "bad magic"),
    ("version", layout.VERSION + 1, "bad version"),
    ("data_off", 0, "bad data offset"),
    ("capacity", CAP + 1, "capacity mismatch"),
    ("capacity", 0, "capacity mismatch"),
    ("capacity", 1 << 40, "capacity mismatch"),
    ("tail", 10 + CAP, "tail beyond head + capacity"),   # head 4: 23 > 4 + 13
    ("tail", 2**64 - 1, "tail beyond head + capacity"),
    ("head", 11, "head ahead of tail"),
    ("head", 2**64 - 1, "head ahead of tail"),
]


@pytest.mark.parametrize("field,value,fault", ATTACH_FAULTS)
def test_attach_rejects_a_corrupt_header(ring, peer, backend, field, value, fault):
    peer[field] = value
    before = os.listdir("/proc/self/fd")
    with pytest.raises(RingCorrupt) as exc:
        Ring.attach(ring.fds(), backend=backend)
    assert exc.value.fault == fault
    assert fault in str(exc.value)
    assert exc.value.errno == errno.EBADMSG
    assert isinstance(exc.value, OSError)
    assert os.listdir("/proc/self/fd") == before   # the duplicates were closed again


# Faults that every operation must notice (version and data_off are fixed at
# attach; the operations check the words they depend on).
OP_FAULTS = [f for f in ATTACH_FAULTS if f[0] not in ("version", "data_off")]


@pytest.mark.parametrize("field,value,fault", OP_FAULTS)
def test_operations_reject_a_corrupt_header(ring, peer, field, value, fault):
    w, r = ring.writer(), ring.reader()
    peer[field] = value
    payload = peer.payload()
    buf = bytearray(b"\xaa" * 32)
    ops = {
        "write": lambda: w.write(b"xyz"),
        "send_all": lambda: w.send_all(b"xyz", timeout=1),
        "read_into": lambda: r.read_into(buf),
        "peek": lambda: r.read_into(buf, peek=True),
        "recv_into": lambda: r.recv_into(buf, timeout=1),
        "read": lambda: r.read(5),
        "free": lambda: w.free,
        "tail": lambda: w.tail,
        "available": lambda: r.available,
        "head": lambda: r.head,
        "eof": lambda: r.eof,
    }
    for name, op in ops.items():
        with pytest.raises(RingCorrupt) as exc:
            op()
        assert exc.value.fault == fault, name
    # Nothing moved, nothing was copied either way.
    assert peer.payload() == payload
    assert buf == b"\xaa" * 32
    positions = {"head": 4, "tail": 10, field: value}
    assert (peer["head"], peer["tail"]) == (positions["head"], positions["tail"])


def test_operations_recover_when_the_header_is_repaired(ring, peer):
    w, r = ring.writer(), ring.reader()
    peer["head"] = 99
    with pytest.raises(RingCorrupt):
        r.read(1)
    peer["head"] = 4
    assert r.read(100) == b"456789"
    assert w.write(b"ab") == 2


def test_attach_rejects_an_unsealed_memfd(ring, backend):
    fd = os.memfd_create("not-a-ring", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, layout.map_size(CAP))
        with pytest.raises(RingCorrupt) as exc:
            Ring.attach(RingFds(fd, *ring.fds()[1:]), backend=backend)
        assert exc.value.fault == "memfd not sealed"
    finally:
        os.close(fd)


def test_attach_rejects_a_sealed_memfd_of_the_wrong_size(backend):
    """A plausible header on a mapping smaller than its capacity claims."""
    with Ring.create(1 << 16, backend=backend) as big:
        fd = os.memfd_create("short", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            size = layout.map_size(CAP)
            os.ftruncate(fd, size)
            header = os.pread(big.fds().memfd, layout.HEADER_SIZE, 0)
            os.pwrite(fd, header, 0)    # says capacity 65536
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
            with pytest.raises(RingCorrupt) as exc:
                Ring.attach(RingFds(fd, *big.fds()[1:]), backend=backend)
            assert exc.value.fault == "capacity mismatch"
            assert str(size) in str(exc.value)
        finally:
            os.close(fd)


def test_attach_rejects_a_tiny_memfd(ring, backend):
    fd = os.memfd_create("tiny", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(fd, layout.DATA_OFF)   # room for a header, no payload
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
        with pytest.raises(RingCorrupt) as exc:
            Ring.attach(RingFds(fd, *ring.fds()[1:]), backend=backend)
        assert exc.value.fault == "mapping size"
    finally:
        os.close(fd)


def test_attach_with_a_closed_descriptor(ring, backend):
    closed = 4000
    with pytest.raises(OSError):
        os.fstat(closed)                    # (make sure it is not open)
    with pytest.raises(OSError) as exc:
        Ring.attach(RingFds(ring.fds().memfd, closed, closed), backend=backend)
    assert exc.value.errno == errno.EBADF


def test_attach_with_a_non_eventfd(ring, backend):
    before = os.listdir("/proc/self/fd")
    fds = ring.fds()
    with pytest.raises(OSError) as exc:
        Ring.attach(RingFds(fds.memfd, fds.data_efd, fds.memfd), backend=backend)
    assert exc.value.errno == errno.EINVAL and "space_efd" in str(exc.value)
    assert os.listdir("/proc/self/fd") == before


# -- sizes and arguments -----------------------------------------------------------

@pytest.mark.parametrize("capacity", [0, -1, layout.MAX_CAPACITY + 1, 2**64, 1.5, "16", True, None])
def test_bad_capacity(backend, capacity):
    with pytest.raises(ValueError) as exc:
        Ring.create(capacity, backend=backend)
    assert f"{layout.MIN_CAPACITY} to {layout.MAX_CAPACITY}" in str(exc.value)


@pytest.mark.parametrize("capacity", [layout.MIN_CAPACITY, 2, 4096 - layout.DATA_OFF + 1])
def test_small_capacity_edges(backend, capacity):
    with Ring.create(capacity, backend=backend) as r:
        assert os.fstat(r.fds().memfd).st_size == layout.DATA_OFF + capacity
        for _ in range(3):  # fill and drain, three laps
            assert r.writer().write(b"\x01" * (capacity + 1)) == capacity
            assert r.reader().read(capacity + 1) == b"\x01" * capacity


def test_largest_capacity(backend):
    # The memfd is sparse: only the pages touched here are ever allocated.
    with Ring.create(layout.MAX_CAPACITY, backend=backend) as r:
        assert r.writer().free == layout.MAX_CAPACITY
        assert r.writer().write(b"big") == 3
        assert r.reader().read(10) == b"big"
        with Ring.attach(r.fds(), backend=backend) as twin:
            assert twin.capacity == layout.MAX_CAPACITY


def test_bad_arguments(backend):
    with pytest.raises(ValueError, match="backend must be one of"):
        Ring.create(16, backend="rust")
    with pytest.raises(ValueError, match="spin_ns"):
        Ring.create(16, backend=backend, spin_ns=-1)
    with pytest.raises(ValueError, match="yields"):
        Ring.create(16, backend=backend, yields=-1)
    with Ring.create(16, backend=backend) as r:
        with pytest.raises(ValueError, match=">= 0"):
            r.reader().read(-1)
        with pytest.raises(ValueError, match="timeout"):
            r.reader().recv_into(bytearray(1), timeout=-1)
        with pytest.raises(ValueError, match="timeout"):
            r.writer().send_all(b"x", timeout=float("nan"))


def test_copy_helpers_refuse_out_of_bounds():
    mem = bytearray(20)
    with pytest.raises(ValueError, match="exceeds the ring capacity"):
        copy_in(mem, 4, 8, 0, b"123456789")
    with pytest.raises(ValueError, match="does not fit"):
        copy_in(mem, 16, 8, 0, b"1")
    with pytest.raises(ValueError, match="does not fit"):
        copy_out(mem, 0, 0, 0, bytearray(1))
    with pytest.raises(ValueError, match="position"):
        copy_out(mem, 0, 8, -1, bytearray(1))
    with pytest.raises(TypeError):
        copy_out(mem, 0, 8, 0, b"read-only")
    assert mem == bytearray(20)


def test_copy_helpers_wrap():
    mem = bytearray(b"." * 12)
    copy_in(mem, 2, 7, 5, b"abcde")                  # slots 5, 6, then 0, 1, 2
    assert mem == b"..cde..ab..."
    out = bytearray(5)
    copy_out(memoryview(mem), 2, 7, 12, out)         # 12 % 7 = 5
    assert out == b"abcde"
    copy_out(mem, 2, 7, 0, out[:0])                  # zero bytes is fine
