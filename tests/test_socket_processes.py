"""impl sockets between real processes: fork, big transfers, dying peers, monitor restarts.

A child is made with os.fork() (or multiprocessing's fork context) and
reports what it saw through a pipe; every wait is bounded (socket timeouts,
a pidfd with a deadline) and children are killed and reaped in finally
blocks, so a bug fails a test instead of hanging it.
"""

from __future__ import annotations

import contextlib
import functools
import multiprocessing
import os
import random
import select
import socket as stdsocket
import threading
import time
import zlib

import pytest

import impl
from impl import sdsocket
from tests.monitor_util import running_monitor, start_monitor
from tests.proc_util import Child as _Child

pytestmark = pytest.mark.timeout(300)

WAIT = 60.0      # bound on any one wait; only a hang reaches it


@pytest.fixture(autouse=True)
def _monitor(monitor):
    return monitor


# A forked child whose waits are bounded by WAIT.
Child = functools.partial(_Child, wait=WAIT)


def child_pipe():
    """A pipe for the child to say "ready" to the parent: (read end, write end)."""
    return os.pipe()


def wait_line(fd: int) -> bytes:
    """Read one short message from *fd*, bounded by WAIT."""
    ready, _, _ = select.select([fd], [], [], WAIT)
    assert ready, "the child did not report in time"
    return os.read(fd, 100)


def stream(sock, total: int, seed: int) -> None:
    """Send *total* pseudo-random bytes in random-sized send/sendall calls."""
    rng = random.Random(seed)
    data = random.Random(seed + 1000).randbytes(1 << 20)
    view = memoryview(data)
    sent = 0
    while sent < total:
        n = min(total - sent, max(1, int(2 ** rng.uniform(0, 18))))
        off = sent % len(data)
        n = min(n, len(data) - off)
        if rng.random() < 0.5:
            sock.sendall(view[off:off + n])
            sent += n
        else:
            sent += sock.send(view[off:off + n])


def expected_crc(total: int, seed: int) -> int:
    data = random.Random(seed + 1000).randbytes(1 << 20)
    crc, left = 0, total
    while left:
        k = min(left, len(data))
        crc = zlib.crc32(data[:k], crc)
        left -= k
    return crc


def drain(sock, seed: int) -> tuple[int, int]:
    """Receive until EOF in random-sized recv/recv_into calls; return (bytes, crc32)."""
    rng = random.Random(seed)
    buf = bytearray(1 << 18)
    got = crc = 0
    while True:
        n = max(1, int(2 ** rng.uniform(0, 18)))
        if rng.random() < 0.5:
            piece = sock.recv(n)
            k = len(piece)
            crc = zlib.crc32(piece, crc)
        else:
            k = sock.recv_into(buf, n)
            crc = zlib.crc32(memoryview(buf)[:k], crc)
        if k == 0:
            return got, crc
        got += k


# -- connecting across fork -----------------------------------------------------------------------
def test_forked_child_connects_to_parent_listener():
    srv = impl.create_server(("127.0.0.1", 0))
    addr = srv.getsockname()

    def child():
        with impl.create_connection(addr, timeout=WAIT) as c:
            c.sendall(b"hello parent")
            reply = c.recv(100, stdsocket.MSG_WAITALL)
            return [c.transport, c.getsockname()[1], reply.decode()]

    c = Child(child)
    try:
        srv.settimeout(WAIT)
        conn, peer = srv.accept()
        conn.settimeout(WAIT)
        assert conn.transport == "ring"
        assert conn.recv(12, stdsocket.MSG_WAITALL) == b"hello parent"
        conn.sendall(b"x" * 100)
        transport, port, reply = c.result()
        assert transport == "ring" and port == peer[1] and reply == "x" * 100
        assert conn.recv(1) == b""          # the child closed
        conn.close()
    finally:
        if not c.done:
            c.kill()
        srv.close()


def test_eight_mib_each_way_with_random_sizes():
    total = 8 << 20
    srv = impl.create_server(("127.0.0.1", 0))
    addr = srv.getsockname()

    def child():
        c = impl.create_connection(addr, timeout=WAIT)
        sender = threading.Thread(target=lambda: (stream(c, total, 1),
                                                  c.shutdown(stdsocket.SHUT_WR)))
        sender.start()
        got = drain(c, 2)
        sender.join(WAIT)
        assert not sender.is_alive()
        transport = c.transport
        c.close()
        return [transport, *got]

    c = Child(child)
    try:
        srv.settimeout(WAIT)
        conn, _ = srv.accept()
        conn.settimeout(WAIT)
        assert conn.transport == "ring"
        errors = []

        def send_back():
            try:
                stream(conn, total, 3)
                conn.shutdown(stdsocket.SHUT_WR)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        sender = threading.Thread(target=send_back)
        sender.start()
        got, crc = drain(conn, 4)
        sender.join(WAIT)
        assert not sender.is_alive() and not errors, errors
        transport, child_got, child_crc = c.result()
        assert transport == "ring"
        assert (got, crc) == (total, expected_crc(total, 1))
        assert (child_got, child_crc) == (total, expected_crc(total, 3))
        conn.close()
    finally:
        if not c.done:
            c.kill()
        srv.close()


def test_multiprocessing_fork_child_talks_over_rings():
    srv = impl.create_server(("127.0.0.1", 0))
    addr = srv.getsockname()
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()

    def target():
        with impl.create_connection(addr, timeout=WAIT) as c:
            c.sendall(b"mp")
            q.put((c.transport, c.recv(2, stdsocket.MSG_WAITALL)))

    proc = ctx.Process(target=target)
    proc.start()
    try:
        srv.settimeout(WAIT)
        conn, _ = srv.accept()
        conn.settimeout(WAIT)
        assert conn.recv(2, stdsocket.MSG_WAITALL) == b"mp"
        conn.sendall(b"ok")
        assert q.get(timeout=WAIT) == ("ring", b"ok")
        proc.join(WAIT)
        assert proc.exitcode == 0
        conn.close()
    finally:
        if proc.is_alive():
            proc.kill()
            proc.join(WAIT)
        q.close()
        srv.close()


# -- peers that die -------------------------------------------------------------------------------
@contextlib.contextmanager
def doomed_peer(then):
    """A forked child connected to us over rings, doing ``then(sock)`` until killed.

    Yields (our accepted ring socket, the Child); the child is killed and
    everything closed afterwards, whatever the test did.
    """
    srv = impl.create_server(("127.0.0.1", 0))
    addr = srv.getsockname()
    r, w = child_pipe()

    def child():
        os.close(r)
        c = impl.create_connection(addr, timeout=WAIT)
        os.write(w, c.transport.encode())
        then(c)
        c.close()

    c = Child(child)
    os.close(w)
    try:
        assert wait_line(r) == b"ring"
        srv.settimeout(WAIT)
        conn, _ = srv.accept()
        assert conn.transport == "ring"
        with conn:
            yield conn, c
    finally:
        os.close(r)
        if not c.done:
            c.kill()
        srv.close()


def test_peer_killed_mid_transfer_reader_sees_eof_or_reset():
    with doomed_peer(lambda c: stream(c, 1 << 40, 5)) as (conn, c):   # streams until killed
        conn.settimeout(WAIT)
        assert len(conn.recv(1 << 16, stdsocket.MSG_WAITALL)) == 1 << 16   # mid-transfer
        c.kill()
        ended = None
        while ended is None:
            try:
                if not conn.recv(1 << 16):
                    ended = "eof"
            except ConnectionResetError:
                ended = "reset"
        assert ended in ("eof", "reset")     # never TimeoutError: that would be a hang


def test_peer_killed_while_we_wait_for_space_gives_epipe():
    # The child never reads; it waits to be killed.
    with doomed_peer(lambda c: select.select([], [], [], WAIT)) as (conn, c):
        conn.setblocking(False)
        with pytest.raises(BlockingIOError):
            while True:
                conn.send(b"f" * 65536)           # fill the ring
        conn.settimeout(WAIT)
        outcome = {}

        def blocked_send():
            try:
                conn.sendall(b"more" * 100_000)
                outcome["sent"] = True
            except OSError as exc:
                outcome["error"] = type(exc)

        t = threading.Thread(target=blocked_send)
        t.start()
        c.kill()
        t.join(WAIT)
        assert not t.is_alive()
        assert outcome.get("error") in (BrokenPipeError, ConnectionResetError), outcome


def test_listener_closing_resets_queued_ring_connections():
    srv = impl.create_server(("127.0.0.1", 0))
    addr = srv.getsockname()
    r, w = child_pipe()

    def child():
        os.close(r)
        srv.close()    # the inherited copy: like a kernel listener, it would keep it open
        conns = [impl.create_connection(addr, timeout=WAIT) for _ in range(3)]
        os.write(w, ",".join(c.transport for c in conns).encode())
        seen = []
        for c in conns:
            try:
                seen.append("eof" if c.recv(1) == b"" else "data")
            except ConnectionResetError:
                seen.append("reset")
            try:
                c.sendall(b"x" * (1 << 20))
                seen.append("sent")
            except (BrokenPipeError, ConnectionResetError):
                seen.append("epipe")
            c.close()
        return seen

    c = Child(child)
    os.close(w)
    try:
        assert wait_line(r) == b"ring,ring,ring"
        srv.close()                 # never accepted
        seen = c.result()
        assert seen == ["eof", "epipe"] * 3 or all(s in ("eof", "reset", "epipe") for s in seen)
        assert "data" not in seen and "sent" not in seen
    finally:
        os.close(r)
        if not c.done:
            c.kill()
        srv.close()


# -- socketpair across fork -----------------------------------------------------------------------
def test_socketpair_across_fork_with_the_usual_closes():
    fds_before = len(os.listdir("/proc/self/fd"))
    a, b = impl.socketpair()
    assert a.transport == b.transport == "ring"

    def child():
        a.close()                      # the parent's end: must not close it for the parent
        b.settimeout(WAIT)
        msg = b.recv(5, stdsocket.MSG_WAITALL)
        b.sendall(msg.upper())
        b.close()
        return msg.decode()

    c = Child(child)
    try:
        b.close()                      # the child's end: must not close it for the child
        a.settimeout(WAIT)
        a.sendall(b"hello")
        assert a.recv(5, stdsocket.MSG_WAITALL) == b"HELLO"
        assert a.recv(1) == b""        # the child closed the last copy of its end
        assert c.result() == "hello"
        a.close()
        assert len(os.listdir("/proc/self/fd")) == fds_before   # the holder pipes too
    finally:
        if not c.done:
            c.kill()
        a.close()
        b.close()


def test_socketpair_end_closed_in_both_processes_gives_eof_once_both_closed():
    a, b = impl.socketpair()
    r, w = child_pipe()
    go_r, go_w = child_pipe()

    def child():
        os.close(r)
        os.close(go_w)
        a.close()
        os.write(w, b"closed a")
        wait_line(go_r)                # the parent checked that b is still open
        b.close()
        return True

    c = Child(child)
    os.close(w)
    os.close(go_r)
    try:
        assert wait_line(r) == b"closed a"
        b.close()      # the parent's copy of b; the child still holds b
        a.setblocking(False)
        with pytest.raises(BlockingIOError):
            a.recv(1)   # no EOF yet
        a.sendall(b"still there")
        os.write(go_w, b"go")
        a.settimeout(WAIT)
        assert a.recv(1) == b""        # the child closed the last copy: EOF
        assert c.result() is True
    finally:
        os.close(r)
        os.close(go_w)
        if not c.done:
            c.kill()
        a.close()
        b.close()


def test_connection_closed_in_child_stays_open_in_parent():
    """A forked child that closes its inherited copy leaves the parent's connection alone."""
    srv = impl.create_server(("127.0.0.1", 0))
    cli = impl.create_connection(srv.getsockname(), timeout=WAIT)
    conn, _ = srv.accept()

    def child():
        cli.close()
        conn.close()
        return True

    c = Child(child)
    try:
        assert c.result() is True
        cli.sendall(b"after the child")
        conn.settimeout(WAIT)
        assert conn.recv(15, stdsocket.MSG_WAITALL) == b"after the child"
    finally:
        if not c.done:
            c.kill()
        for s in (cli, conn, srv):
            s.close()


# -- the monitor restarts -------------------------------------------------------------------------
def test_listener_registers_again_after_a_monitor_restart(monkeypatch):
    monkeypatch.setattr(sdsocket._Listener, "RETRY", 0.0)   # every accept() may try
    with running_monitor() as mon:
        srv = impl.create_server(("127.0.0.1", 0))
        addr = srv.getsockname()
        srv.settimeout(WAIT)
        mon2 = None
        socks = [srv]
        try:
            c1 = impl.create_connection(addr, timeout=WAIT)
            s1, _ = srv.accept()
            socks += [c1, s1]
            assert c1.transport == s1.transport == "ring"
            mon.stop()
            # Established connections keep working without a monitor.
            c1.sendall(b"still here")
            assert s1.recv(10, stdsocket.MSG_WAITALL) == b"still here"
            # The listener's descriptor reports the dead channel ...
            assert select.select([srv], [], [], WAIT)[0] == [srv]
            # ... and accept() notices; with no monitor, clients use the kernel.
            srv.setblocking(False)
            with pytest.raises(BlockingIOError):
                srv.accept()
            srv.settimeout(WAIT)
            assert not select.select([srv], [], [], 0)[0]
            c2 = impl.create_connection(addr, timeout=WAIT)
            s2, _ = srv.accept()
            socks += [c2, s2]
            assert c2.transport == s2.transport == "kernel"
            mon2 = start_monitor(mon.path)
            # Once a monitor is back, new connections use rings again.
            transports = []
            for _ in range(3):
                c = impl.create_connection(addr, timeout=WAIT)
                s, _ = srv.accept()
                socks += [c, s]
                transports.append((c.transport, s.transport))
                if c.transport == "ring":
                    break
            assert transports[-1] == ("ring", "ring"), transports
            c.sendall(b"new monitor")
            assert s.recv(11, stdsocket.MSG_WAITALL) == b"new monitor"
            listeners = mon2.status()["listeners"]
            assert [tuple(x["address"]) for x in listeners] == [addr]
            # Closing old connections never tells the new monitor anything.
            c1.close()
            s1.close()
            c.close()
            s.close()
            conns = mon2.status()["connections"]
            assert conns == []
        finally:
            for sock in socks:
                sock.close()
            if mon2 is not None:
                mon2.stop()


def test_blocking_accept_rides_out_a_monitor_restart(monkeypatch):
    monkeypatch.setattr(sdsocket._Listener, "RETRY", 0.05)
    with running_monitor() as mon:
        srv = impl.create_server(("127.0.0.1", 0))
        addr = srv.getsockname()
        srv.settimeout(WAIT)
        mon2 = None
        got = []

        def acceptor():
            for _ in range(2):
                conn, _ = srv.accept()
                got.append(conn)

        t = threading.Thread(target=acceptor)
        t.start()
        clients = []
        try:
            mon.stop()
            mon2 = start_monitor(mon.path)
            clients.append(impl.create_connection(addr, timeout=WAIT))
            # The listener registers again within RETRY; connect until a ring comes.
            deadline = time.monotonic() + WAIT
            while not mon2.status()["listeners"] and time.monotonic() < deadline:
                select.select([], [], [], 0.05)
            assert mon2.status()["listeners"], "the listener never registered again"
            clients.append(impl.create_connection(addr, timeout=WAIT))
            t.join(WAIT)
            assert not t.is_alive()
            assert clients[-1].transport == got[-1].transport == "ring"
        finally:
            for s in clients + got:
                s.close()
            srv.close()
            t.join(WAIT)
            if mon2 is not None:
                mon2.stop()
