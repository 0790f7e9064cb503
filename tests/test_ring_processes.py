"""The ring between two real processes (fork): no loss under back-pressure, no lost wake-ups.

Each test forks a child that owns one end of the ring and reports through a
pipe (and its exit status); the parent owns the other end.  Every wait is
bounded, children are always reaped (killed if they overrun), and the
parent's descriptor table must be the same after the test as before.
"""

from __future__ import annotations

import functools
import os
import random
import socket
import subprocess
import sys
import time
import zlib

import pytest

from impl.ring import Ring
from tests.gates import BACKENDS
from tests.proc_util import Child as _Child

STREAM_BYTES = 256 << 20          # the issue asks for at least 256 MiB per run
WAIT = 120.0                      # bound on any single wait; only a hang reaches it


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.fixture(autouse=True)
def no_fd_leaks():
    before = sorted(os.listdir("/proc/self/fd"))
    yield
    assert sorted(os.listdir("/proc/self/fd")) == before, "file descriptors leaked"


@pytest.fixture
def restore_affinity():
    cpus = os.sched_getaffinity(0)
    yield
    os.sched_setaffinity(0, cpus)


def one_cpu() -> set[int]:
    return {min(os.sched_getaffinity(0))}


# A forked child whose waits are bounded by WAIT.
Child = functools.partial(_Child, wait=WAIT)


def log_uniform(rng: random.Random, top: int) -> int:
    """A size from 1 to top, spread evenly over orders of magnitude."""
    return max(1, min(top, int(2 ** rng.uniform(0, top.bit_length()))))


def stream_through(backend: str, total: int, capacity: int, *, pin: bool,
                   max_chunk: int = 1 << 18, seed: int = 1) -> dict:
    """Send *total* random bytes parent -> child in random chunks; compare CRC-32s."""
    source = random.Random(seed).randbytes(4 << 20)
    src = memoryview(source)
    with Ring.create(capacity, backend=backend) as ring:

        def receive() -> dict:
            if pin:
                os.sched_setaffinity(0, one_cpu())
            r = ring.reader()       # created after pinning: it then skips the spin
            rng = random.Random(seed + 1)
            buf = bytearray(max_chunk)
            view = memoryview(buf)
            crc = got = 0
            while True:
                n = r.recv_into(view[:log_uniform(rng, max_chunk)], timeout=WAIT)
                if n == 0:
                    break
                crc = zlib.crc32(view[:n], crc)
                got += n
            assert r.eof
            return {"bytes": got, "crc": crc}

        child = Child(receive)
        try:
            if pin:
                os.sched_setaffinity(0, one_cpu())
            w = ring.writer()
            rng = random.Random(seed)
            crc = sent = 0
            while sent < total:
                n = min(log_uniform(rng, max_chunk), total - sent)
                off = rng.randrange(len(source) - n + 1)
                chunk = src[off:off + n]
                w.send_all(chunk, timeout=WAIT)
                crc = zlib.crc32(chunk, crc)
                sent += n
            w.close()
        except BaseException:
            child.kill()
            raise
        got = child.result()
    assert got["bytes"] == sent == total
    assert got["crc"] == crc, "the stream arrived altered"
    return got


def test_stream_256mib_two_cores(backend):
    stream_through(backend, STREAM_BYTES, 1 << 20, pin=False)


def test_stream_256mib_one_core(backend, restore_affinity):
    """Both processes on one CPU must still make progress (yield, then sleep)."""
    stream_through(backend, STREAM_BYTES, 1 << 20, pin=True)


def test_stream_small_ring_small_chunks(backend):
    """A ring smaller than most chunks: every send waits for space many times."""
    stream_through(backend, 4 << 20, 4093, pin=False, max_chunk=20000, seed=5)


ATTACH_CHILD = """
import os, socket, sys, zlib
from impl.ring import Ring, RingFds
sock = socket.socket(fileno=int(sys.argv[1]))
_, fds, _, _ = socket.recv_fds(sock, 16, 3)
with Ring.attach(RingFds(*fds), backend=sys.argv[2]) as ring:
    for fd in fds:
        os.close(fd)                     # attach made its own duplicates
    r = ring.reader()
    buf = bytearray(5000)
    crc = got = 0
    while n := r.recv_into(buf, timeout=float(sys.argv[3])):
        crc = zlib.crc32(buf[:n], crc)
        got += n
print(got, crc)
"""


def test_attach_in_a_process_that_got_the_fds_over_scm_rights(backend):
    """An unrelated process (no fork: it inherits nothing) receives the three
    descriptors over a Unix socket, attaches, and reads the stream to EOF."""
    data = random.Random(8).randbytes(3 << 20)
    parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with Ring.create(10007, backend=backend) as ring, parent_sock:
        with child_sock:
            proc = subprocess.Popen(
                [sys.executable, "-c", ATTACH_CHILD, str(child_sock.fileno()), backend,
                 str(WAIT)],
                pass_fds=[child_sock.fileno()], stdout=subprocess.PIPE, text=True,
                cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        try:
            socket.send_fds(parent_sock, [b"ring"], list(ring.fds()))
            w = ring.writer()
            w.send_all(data, timeout=WAIT)
            w.close()
            out, _ = proc.communicate(timeout=WAIT)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 0
        assert out.split() == [str(len(data)), str(zlib.crc32(data))]


def ping_pong(backend: str, rounds: int, *, pin: bool, spin_ns: int | None,
              yields: int | None, min_sleeps: int = 0) -> int:
    """Echo tiny messages; return how often the parent had to sleep.

    At least *rounds* messages, and more (up to ten times as many) until the
    parent has slept *min_sleeps* times: how often a round ends in a sleep
    depends on scheduling, so a fixed count of rounds cannot promise it.
    """
    up = Ring.create(64, backend=backend, spin_ns=spin_ns, yields=yields)
    down = Ring.create(64, backend=backend, spin_ns=spin_ns, yields=yields)
    try:
        def echo() -> int:
            if pin:
                os.sched_setaffinity(0, one_cpu())
            r, w = up.reader(), down.writer()
            buf = bytearray(16)
            n_msgs = 0
            while n := r.recv_into(buf, timeout=WAIT):
                w.send_all(buf[:n], timeout=WAIT)
                n_msgs += 1
            w.close()
            return n_msgs

        child = Child(echo)
        try:
            if pin:
                os.sched_setaffinity(0, one_cpu())
            w, r = up.writer(), down.reader()
            sleeps = _count_sleeps(r)
            rng = random.Random(11)
            buf = bytearray(16)
            i = 0
            while i < rounds or (sleeps() < min_sleeps and i < 10 * rounds):
                i += 1
                msg = rng.randbytes(rng.randint(1, 8))
                w.send_all(msg, timeout=WAIT)
                got = b""
                while len(got) < len(msg):  # a byte stream: it may come in pieces
                    n = r.recv_into(buf, timeout=WAIT)  # TimeoutError = lost wake-up
                    assert n > 0, f"EOF in round {i}"
                    got += buf[:n]
                assert got == msg, f"round {i}"
            w.close()
            assert r.recv_into(buf, timeout=WAIT) == 0     # the echo's EOF
        except BaseException:
            child.kill()
            raise
        assert child.result() >= 1
        return sleeps()
    finally:
        up.close()
        down.close()


def _count_sleeps(endpoint):
    """Count the endpoint's blocking waits by wrapping its poll object."""
    new_poller = endpoint._new_poller
    count = [0]

    class Counting:
        def __init__(self):
            self.real = new_poller()

        def poll(self, *args):
            count[0] += 1
            return self.real.poll(*args)

    endpoint._new_poller = Counting
    return lambda: count[0]


def test_lost_wakeup_stress(backend):
    """No spin and no yield: every wait publishes its flag and sleeps on the eventfd.

    A lost wake-up leaves one side asleep with the other waiting for it;
    the bounded recv_into then raises TimeoutError and the test fails.
    """
    rounds = 20_000
    sleeps = ping_pong(backend, rounds, pin=False, spin_ns=0, yields=0,
                       min_sleeps=rounds // 4)
    assert sleeps >= rounds // 4, "the sleeping path was hardly exercised"


def test_lost_wakeup_stress_one_core(backend, restore_affinity):
    rounds = 10_000
    sleeps = ping_pong(backend, rounds, pin=True, spin_ns=0, yields=0,
                       min_sleeps=rounds // 4)
    assert sleeps >= rounds // 4


def test_lost_wakeup_stress_racing_writes(backend):
    """Writes timed to land while the reader is on its way to sleep.

    The writer waits (busy, bounded) until the reader has consumed each
    byte, pauses a random few hundred nanoseconds, and writes the next:
    many writes then fall between the reader finding the ring empty and it
    blocking, the window a broken handshake loses.  A lost wake-up leaves
    the byte unread, and the bounded wait fails.
    """
    rounds = 30_000
    with Ring.create(16, backend=backend, spin_ns=0, yields=0) as ring:
        def receive() -> int:
            r = ring.reader()
            buf = bytearray(16)
            expect = 0
            while n := r.recv_into(buf, timeout=WAIT):
                for b in buf[:n]:
                    assert b == expect & 0xFF, f"byte {expect} is {b}"
                    expect += 1
            return expect

        child = Child(receive)
        try:
            w = ring.writer()
            rng = random.Random(9)
            pauses = [rng.randrange(40) for _ in range(rounds)]
            for i in range(rounds):
                for _ in range(pauses[i]):
                    pass
                assert w.write(bytes([i & 0xFF])) == 1
                deadline = time.monotonic() + WAIT
                while w.free != 16:
                    if time.monotonic() > deadline:
                        pytest.fail(f"byte {i} never read: the reader slept through it")
                    os.sched_yield()  # should the reader share our core
            w.close()
        except BaseException:
            child.kill()
            raise
        assert child.result() == rounds


def test_ping_pong_default_budgets_one_core(backend, restore_affinity):
    """With the default budgets (spin skipped when pinned, then yield) on one CPU."""
    ping_pong(backend, 5_000, pin=True, spin_ns=None, yields=None)


def test_writer_sleeps_on_a_full_ring(backend):
    """A 7-byte ring and no spin: the writer sleeps for space over and over."""
    stream_through_sleepy(backend)


def stream_through_sleepy(backend: str) -> None:
    """Stream random chunks through a 7-byte ring until the writer has slept often.

    How often the writer finds the ring full and sleeps depends on
    scheduling: from about 75 to several thousand times per 300 kB here.
    So the stream goes on, up to a bound, until it has slept MIN_SLEEPS
    times; the bound only catches a writer that never sleeps at all.
    """
    min_bytes, max_bytes, min_sleeps = 300_000, 20_000_000, 200
    with Ring.create(7, backend=backend, spin_ns=0, yields=0) as ring:
        def receive() -> dict:
            r = ring.reader()
            rng = random.Random(3)
            buf = bytearray(16)
            crc = got = 0
            while n := r.recv_into(memoryview(buf)[:rng.randint(1, 16)], timeout=WAIT):
                crc = zlib.crc32(buf[:n], crc)
                got += n
            return {"bytes": got, "crc": crc}

        child = Child(receive)
        try:
            w = ring.writer()
            sleeps = _count_sleeps(w)
            data = random.Random(4).randbytes(1 << 16)
            view = memoryview(data)
            rng = random.Random(5)
            sent = crc = 0
            while sent < min_bytes or (sleeps() < min_sleeps and sent < max_bytes):
                start = rng.randrange(len(data) - 40)
                chunk = view[start:start + rng.randint(1, 40)]
                w.send_all(chunk, timeout=WAIT)
                crc = zlib.crc32(chunk, crc)
                sent += len(chunk)
            w.close()
        except BaseException:
            child.kill()
            raise
        got = child.result()
    assert got == {"bytes": sent, "crc": crc}
    assert sleeps() >= min_sleeps, (
        f"the writer slept {sleeps()} times in {sent} bytes: the test tests nothing")


def test_fork_while_a_thread_sleeps_in_a_wait(backend):
    """A thread of the parent sleeps for space when fork() happens; later the child waits.

    The child's wait must be an ordinary one (here: a timeout), not an
    error inherited from the parent's sleeping thread: a poll object kept
    on the endpoint stays marked busy in the child for ever, and a sendall
    there failed half-way with "concurrent poll() invocation".
    """
    import select
    import threading

    from impl.ring import layout

    go_r, go_w = os.pipe()
    try:
        with Ring.create(64, backend=backend, spin_ns=0, yields=0) as ring:
            w, r = ring.writer(), ring.reader()
            w.send_all(b"x" * 64, timeout=WAIT)            # full
            sleeping = threading.Thread(target=w.send_all, args=(b"y" * 8,),
                                        kwargs={"timeout": WAIT}, daemon=True)
            sleeping.start()
            deadline = time.monotonic() + WAIT
            while not ring._q[layout.OFF_WRITER_SLEEPING // 8]:   # it sleeps in poll()
                assert time.monotonic() < deadline, "the writer never went to sleep"
                os.sched_yield()

            def child_waits() -> str:
                # Only once the parent's thread is done and the ring is full
                # again: one writer waits at a time, as tokens would ensure.
                assert select.select([go_r], [], [], WAIT)[0], "the parent never said go"
                try:
                    w.send_all(b"z", timeout=0.05)
                except TimeoutError:
                    return "timed out"
                return "sent"

            child = Child(child_waits)
            try:
                buf = bytearray(72)
                got = 0
                while got < 72:                            # the parent's thread finishes
                    got += r.recv_into(memoryview(buf)[got:], timeout=WAIT)
                sleeping.join(WAIT)
                assert not sleeping.is_alive()
                assert bytes(buf) == b"x" * 64 + b"y" * 8
                w.send_all(b"x" * 64, timeout=WAIT)        # full again
                os.write(go_w, b"g")
            except BaseException:
                child.kill()
                raise
            assert child.result() == "timed out"
    finally:
        os.close(go_r)
        os.close(go_w)
