"""The automatic spin budget: spin while the peer may run on another CPU, not when
both ends are pinned to the same one.

Each endpoint publishes the CPU it is pinned to (if any) in the ring header;
a waiter drops its spin when the peer's word names its own CPU.  A process
pinned alone to its own CPU (the usual low-latency set-up) must keep
spinning: an earlier version decided from this process's affinity alone and
did not.
"""

from __future__ import annotations

import os

import pytest

from impl.ring import SPIN_NS, Ring, layout
from tests.gates import BACKENDS

TWO_CPUS = len(os.sched_getaffinity(0)) >= 2
needs_two_cpus = pytest.mark.skipif(not TWO_CPUS, reason="needs 2 CPUs in this process's affinity")


@pytest.fixture
def restore_affinity():
    cpus = os.sched_getaffinity(0)
    yield sorted(cpus)
    os.sched_setaffinity(0, cpus)


def _cpu_word(ring: Ring, field: str) -> int:
    """Read a header word through the memfd, as another process would see it."""
    raw = os.pread(ring.fds().memfd, 8, layout.FIELDS[field])
    return int.from_bytes(raw, "little")


@needs_two_cpus
@pytest.mark.parametrize("backend", BACKENDS)
def test_unpinned_ends_spin(backend):
    with Ring.create(64, backend=backend) as ring:
        w, r = ring.writer(), ring.reader()
        assert (w.spin_ns, r.spin_ns) == (SPIN_NS, SPIN_NS)
        assert _cpu_word(ring, "writer_cpu") == 0 and _cpu_word(ring, "reader_cpu") == 0


@needs_two_cpus
@pytest.mark.parametrize("backend", BACKENDS)
def test_both_ends_on_one_cpu_do_not_spin(backend, restore_affinity):
    cpu = restore_affinity[0]
    os.sched_setaffinity(0, {cpu})
    with Ring.create(64, backend=backend) as ring:
        w = ring.writer()
        # The reader does not exist yet: the writer cannot know, and spins.
        assert w.spin_ns == SPIN_NS
        r = ring.reader()
        assert _cpu_word(ring, "writer_cpu") == cpu + 1
        assert _cpu_word(ring, "reader_cpu") == cpu + 1
        assert r.spin_ns == 0
        # The writer notices on its next slow-path wait: fill the ring, then
        # time out at once (timeout 0 goes through the waiting path).
        w.write(b"x" * 64)
        with pytest.raises(TimeoutError):
            w.send_all(b"y", timeout=0)
        assert w.spin_ns == 0


@needs_two_cpus
@pytest.mark.parametrize("backend", BACKENDS)
def test_ends_pinned_to_different_cpus_spin(backend, restore_affinity):
    """The case the affinity-only rule got wrong: each end alone on its own CPU."""
    cpu_w, cpu_r = restore_affinity[0], restore_affinity[1]
    with Ring.create(64, backend=backend) as ring:
        rfd, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: the reader, pinned to another CPU
            code = 1
            try:
                os.sched_setaffinity(0, {cpu_r})
                ring.reader()
                code = 0
            finally:
                os.write(wfd, bytes([code]))
                os._exit(code)
        os.close(wfd)
        try:
            assert os.read(rfd, 1) == b"\x00"
        finally:
            os.close(rfd)
            os.waitpid(pid, 0)
        os.sched_setaffinity(0, {cpu_w})
        w = ring.writer()
        assert _cpu_word(ring, "reader_cpu") == cpu_r + 1
        assert _cpu_word(ring, "writer_cpu") == cpu_w + 1
        assert w.spin_ns == SPIN_NS


@pytest.mark.parametrize("backend", BACKENDS)
def test_explicit_budget_is_kept(backend, restore_affinity):
    os.sched_setaffinity(0, {restore_affinity[0]})
    with Ring.create(64, backend=backend, spin_ns=1234) as ring:
        w, r = ring.writer(), ring.reader()
        assert (w.spin_ns, r.spin_ns) == (1234, 1234)
        # An explicit budget publishes nothing: the words stay "not pinned".
        assert _cpu_word(ring, "writer_cpu") == 0
