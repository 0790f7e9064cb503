"""impl.selectors.RingSelector, and the eventfd handshakes it rests on (settle, settle_space).

Ring sockets come from impl.socketpair() (rings in this process, no monitor)
or through the session monitor; kernel ones from the stdlib.  Where a peer
in another process must act only once this side is about to sleep, the
child waits (bounded) until the sleeping flag appears in the ring header:
the synchronisation is the protocol's own state, never a sleep.  A child
that gives up closes its end, which wakes the parent, whose assertions then
fail: nothing can hang.
"""

from __future__ import annotations

import errno
import functools
import os
import select
import selectors
import socket
import threading
import time

import pytest

import impl
from impl.ring import Ring, layout
from impl.selectors import (
    EVENT_READ,
    EVENT_WRITE,
    DefaultSelector,
    RingSelector,
)
from tests.gates import BACKENDS
from tests.monitor_util import no_fd_leaks  # noqa: F401 - a fixture
from tests.proc_util import Child as _Child

RW = EVENT_READ | EVENT_WRITE
WAIT = 30.0   # bound on any wait; only a hang reaches it
_READER_SLEEPING = layout.word(layout.OFF_READER_SLEEPING)
_WRITER_SLEEPING = layout.word(layout.OFF_WRITER_SLEEPING)


# Every test here must close what it opens.
pytestmark = pytest.mark.usefixtures("no_fd_leaks")


@pytest.fixture
def sel():
    s = RingSelector()
    yield s
    s.close()


@pytest.fixture
def pair():
    a, b = impl.socketpair()
    assert a.transport == b.transport == "ring"
    yield a, b
    a.close()
    b.close()


def events_of(result) -> dict:
    """{key.data: events} of a select() result (each key at most once)."""
    out: dict = {}
    for key, ev in result:
        assert key.data not in out, f"key {key.data!r} reported twice"
        out[key.data] = ev
    return out


def readable(fd: int) -> bool:
    return bool(select.select([fd], [], [], 0)[0])


def fill(sock) -> int:
    """Write into *sock* until its ring is full; return the byte count."""
    sock.setblocking(False)
    n = 0
    try:
        while True:
            n += sock.send(b"f" * 65536)
    except BlockingIOError:
        pass
    return n


def wait_flag(sock, word: int, ring: str) -> bool:
    """Spin (bounded) until the header word of *sock*'s tx or rx ring is set."""
    conn = sock._conn
    q = (conn.writer if ring == "tx" else conn.reader)._q
    deadline = time.monotonic() + WAIT
    while not q[word]:
        if time.monotonic() > deadline:
            return False
        os.sched_yield()
    return True


# A forked child whose waits are bounded by WAIT.
Child = functools.partial(_Child, wait=WAIT)


# -- the BaseSelector contract ---------------------------------------------------------


def test_default_selector_is_ring_selector():
    assert DefaultSelector is RingSelector
    assert issubclass(RingSelector, selectors.BaseSelector)


@pytest.mark.parametrize("kw", [{"spin_ns": -1}, {"spin_ns": 10**6 + 1}, {"spin_ns": 1.5},
                                {"kernel_every": 0}, {"kernel_every": "8"}])
def test_constructor_rejects_bad_budgets(kw):
    with pytest.raises(ValueError, match="must be an int from"):
        RingSelector(**kw)


def test_register_errors(sel, pair):
    a, _ = pair
    for bad in (0, 4, RW | 8):
        with pytest.raises(ValueError, match="Invalid events"):
            sel.register(a, bad)
    with pytest.raises(ValueError):
        sel.register(-1, EVENT_READ)
    with pytest.raises(ValueError):
        sel.register(object(), EVENT_READ)
    sel.register(a, EVENT_READ)
    with pytest.raises(KeyError):
        sel.register(a, EVENT_WRITE)
    with pytest.raises(KeyError):  # the same descriptor, as a number
        sel.register(socket.socket.fileno(a), EVENT_WRITE)
    with pytest.raises(ValueError, match="Invalid events"):
        sel.modify(a, 0)
    for op in (sel.unregister, sel.get_key):
        with pytest.raises(KeyError):
            op(12345)
    with pytest.raises(KeyError):
        sel.modify(12345, EVENT_READ)


def test_kernel_refusal_surfaces_at_register(sel):
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    with pytest.raises(OSError) as info:
        sel.register(r, EVENT_READ)
    assert info.value.errno == errno.EBADF
    assert sel.get_map().get(r) is None  # nothing half-registered


def test_map_key_and_modify(sel, pair):
    a, b = pair
    ka = sel.register(a, EVENT_READ, "a")
    kb = sel.register(socket.socket.fileno(b), EVENT_WRITE, "b")
    m = sel.get_map()
    assert len(m) == 2
    assert set(m) == {ka.fd, kb.fd}
    assert m[a] is ka and m[ka.fd] is ka and a in m
    assert sel.get_key(kb.fd) is kb
    # data only: a new key, same events
    ka2 = sel.modify(a, EVENT_READ, "a2")
    assert ka2.data == "a2" and ka2.events == EVENT_READ and sel.get_key(a) is ka2
    # events: READ -> WRITE on a ring socket changes what select reports
    assert events_of(sel.select(0)) == {"b": EVENT_WRITE}
    ka3 = sel.modify(a, EVENT_WRITE, "a3")
    assert ka3.events == EVENT_WRITE
    assert events_of(sel.select(0)) == {"a3": EVENT_WRITE, "b": EVENT_WRITE}
    assert sel.unregister(a) is ka3
    assert a not in sel.get_map() and len(sel.get_map()) == 1


def test_modify_one_direction_of_a_ring_key(sel, pair):
    a, b = pair
    fill(a)
    sel.register(a, RW, "a")
    assert sel.select(0.01) == []        # armed both ways, in epoll
    key = sel.modify(a, EVENT_READ, "a")  # drop the write side only
    assert key.events == EVENT_READ
    b.recv(1000)                          # space now: the reader signals
    assert sel.select(0.02) == []         # ... but nobody watches it any more
    assert sel.modify(a, RW, "a").events == RW
    assert events_of(sel.select(0)) == {"a": EVENT_WRITE}
    b.sendall(b"x")
    assert events_of(sel.select(0)) == {"a": RW}
    sel.modify(a, EVENT_WRITE, "w")
    assert events_of(sel.select(0)) == {"w": EVENT_WRITE}


def test_modify_kernel_key(sel):
    rk, wk = socket.socketpair()
    try:
        sel.register(rk, EVENT_READ, "k")
        assert sel.select(0) == []
        assert sel.modify(rk, EVENT_WRITE, "k").events == EVENT_WRITE
        assert events_of(sel.select(0)) == {"k": EVENT_WRITE}
        wk.send(b"x")
        sel.modify(rk, RW, "k")
        assert events_of(sel.select(0)) == {"k": RW}
    finally:
        sel.unregister(rk)
        rk.close()
        wk.close()


def test_close_and_context_manager(pair):
    a, b = pair
    with RingSelector() as s:
        s.register(a, RW)
        rk, wk = socket.socketpair()
        s.register(rk, EVENT_READ)
    assert s.get_map() is None
    for call in (lambda: s.select(0), lambda: s.get_key(a), lambda: s.register(b, EVENT_READ),
                 lambda: s.unregister(a), lambda: s.modify(a, EVENT_READ)):
        with pytest.raises(RuntimeError, match="closed"):
            call()
    s.close()  # twice is harmless
    # The watched descriptors are the caller's and still work.
    a.sendall(b"x")
    assert b.recv(1) == b"x"
    wk.send(b"k")
    assert rk.recv(1) == b"k"
    rk.close()
    wk.close()


# -- readiness of ring sockets ---------------------------------------------------------


def _state_fresh(a, b):
    return {"a": EVENT_WRITE, "b": EVENT_WRITE}


def _state_data(a, b):
    a.sendall(b"hello")
    return {"a": EVENT_WRITE, "b": RW}


def _state_full(a, b):
    fill(a)
    return {"a": 0, "b": RW}


def _state_full_then_partly_drained(a, b):
    fill(a)
    b.recv(1000)
    return {"a": EVENT_WRITE, "b": RW}


def _state_peer_shut_wr(a, b):
    a.shutdown(socket.SHUT_WR)
    return {"a": EVENT_WRITE, "b": RW}  # b: EOF to read; a still writes


def _state_own_shut_rd(a, b):
    b.shutdown(socket.SHUT_RD)
    return {"a": EVENT_WRITE, "b": RW}  # b: recv returns b"" at once


def _state_own_shut_wr(a, b):
    fill(b)
    b.shutdown(socket.SHUT_WR)
    return {"a": RW, "b": EVENT_WRITE}  # b: send fails at once (EPIPE)


STATES = {f.__name__[7:]: f for f in (_state_fresh, _state_data, _state_full,
                                       _state_full_then_partly_drained, _state_peer_shut_wr,
                                       _state_own_shut_rd, _state_own_shut_wr)}


def _nonblocking_truth(sock, events: int) -> int:
    """Which of *events* a non-blocking call really does without EAGAIN."""
    got = 0
    if events & EVENT_READ:
        try:
            sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            got |= EVENT_READ
        except BlockingIOError:
            pass
        except OSError:
            got |= EVENT_READ
    if events & EVENT_WRITE:
        # A zero-length send does not touch the ring; probe the free space instead.
        conn = sock._conn
        if conn.shut_wr:
            got |= EVENT_WRITE
        else:
            try:
                if conn.writer.free > 0:
                    got |= EVENT_WRITE
            except OSError:
                got |= EVENT_WRITE
    return got


@pytest.mark.parametrize("registered", [EVENT_READ, EVENT_WRITE, RW], ids=["R", "W", "RW"])
@pytest.mark.parametrize("state", sorted(STATES))
@pytest.mark.parametrize("as_fd", [False, True], ids=["sock", "fd"])
def test_ring_event_combinations(sel, pair, state, registered, as_fd):
    a, b = pair
    expected = STATES[state](a, b)
    for name, sock in (("a", a), ("b", b)):
        obj = socket.socket.fileno(sock) if as_fd else sock
        sel.register(obj, registered, name)
    want = {n: ev & registered for n, ev in expected.items() if ev & registered}
    assert events_of(sel.select(0)) == want
    # ... and it is the truth: what non-blocking calls would do.
    for name, sock in (("a", a), ("b", b)):
        assert _nonblocking_truth(sock, registered) == want.get(name, 0), name
    # A blocking select with a timeout agrees (it arms, then finds the same).
    assert events_of(sel.select(0.01)) == want


def test_peer_closed_is_readable_eof_and_writable_epipe(sel, pair):
    a, b = pair
    fill(a)
    sel.register(a, RW, "a")
    assert events_of(sel.select(0)) == {}
    b.close()
    assert events_of(sel.select(0)) == {"a": RW}
    assert a.recv(10) == b""
    with pytest.raises(BrokenPipeError):
        a.send(b"x")


# -- timeouts ----------------------------------------------------------------------------


@pytest.mark.parametrize("timeout", [0, -1, 0.0])
def test_timeout_zero_returns_at_once(sel, pair, timeout):
    a, b = pair
    sel.register(b, EVENT_READ, "b")
    polls = []
    real = sel._poll
    sel._poll = lambda t: polls.append(t) or real(t)
    assert sel.select(timeout) == []
    assert polls == [], "ring-only select(0) made a system call"
    rk, wk = socket.socketpair()
    try:
        sel.register(rk, EVENT_READ, "k")
        assert sel.select(timeout) == []
        assert polls == [0], "select(0) must not wait in epoll"
    finally:
        sel.unregister(rk)
        rk.close()
        wk.close()


@pytest.mark.parametrize("timeout", [0.02, 0.1])
def test_timeout_expires_empty(sel, pair, timeout):
    a, b = pair
    fill(a)
    sel.register(a, EVENT_WRITE, "a")
    start = time.monotonic()
    assert sel.select(timeout) == []
    assert time.monotonic() - start >= timeout  # never early (epoll rounds up)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("timeout", [None, 60.0])
def test_blocks_until_peer_process_writes(sel, pair, timeout):
    a, b = pair
    sel.register(b, EVENT_READ, "b")
    waits = []
    real = sel._poll
    sel._poll = lambda t: waits.append(t) or real(t)

    def child():
        try:
            # The parent is about to sleep once its reader flag is published.
            assert wait_flag(a, _READER_SLEEPING, "tx"), "parent never armed its reader"
            a.sendall(b"ping")
        finally:
            a._conn.writer.close()  # EOF: wakes the parent even if we failed

    kid = Child(child)
    result = sel.select(timeout)
    kid.result()
    assert events_of(result) == {"b": EVENT_READ}
    assert waits and waits[0] != 0, "select() never slept in epoll"
    assert len(waits) <= 2, f"{len(waits)} epoll waits for one wake-up"
    assert b.recv(10) == b"ping"


# -- unregister and close while registered --------------------------------------------------


def test_unregister_after_ready_is_not_reported(sel, pair):
    a, b = pair
    c, d = impl.socketpair()
    try:
        sel.register(b, EVENT_READ, "b")
        sel.register(d, EVENT_READ, "d")
        a.sendall(b"1")
        c.sendall(b"2")
        assert events_of(sel.select(0)) == {"b": EVENT_READ, "d": EVENT_READ}
        sel.unregister(d)  # as a callback for b might
        assert events_of(sel.select(0)) == {"b": EVENT_READ}
        assert events_of(sel.select(0.01)) == {"b": EVENT_READ}
    finally:
        c.close()
        d.close()


@pytest.mark.timeout(120)
def test_unregister_from_another_thread_during_select(sel, pair):
    a, b = pair
    c, d = impl.socketpair()
    try:
        sel.register(b, EVENT_READ, "b")
        sel.register(d, EVENT_READ, "d")
        box = {}

        def other():
            try:
                # Both readers armed: the select thread is about to sleep.
                assert wait_flag(a, _READER_SLEEPING, "tx")
                assert wait_flag(c, _READER_SLEEPING, "tx")
                box["key"] = sel.unregister(b)
                a.sendall(b"gone")   # b's data must not be reported any more
                c.sendall(b"here")
            except BaseException as exc:
                box["error"] = exc
                c.shutdown(socket.SHUT_WR)  # wake the select thread in any case

        t = threading.Thread(target=other)
        t.start()
        got = events_of(sel.select(WAIT))
        t.join(WAIT)
        assert not t.is_alive()
        assert "error" not in box, box.get("error")
        assert box["key"].data == "b"
        assert got == {"d": EVENT_READ}
        assert events_of(sel.select(0)) == {"d": EVENT_READ}
    finally:
        c.close()
        d.close()


def test_closed_ring_socket_is_reported_then_unregistered(sel, pair):
    a, b = pair
    sel.register(b, EVENT_READ, "b")
    key_a = sel.register(a, RW, "a")
    fd_a = key_a.fd
    a.close()
    # As poll() reports POLLNVAL: whoever waits finds the error instead of hanging.
    got = events_of(sel.select(0))
    assert got["a"] == RW
    assert got["b"] == EVENT_READ  # the peer sees EOF
    assert events_of(sel.select(1.0))["a"] == RW  # not only without waiting
    with pytest.raises(OSError):
        a.recv(1)
    assert sel.unregister(a) is key_a  # found by identity: a.fileno() is -1 now
    assert fd_a not in sel.get_map()
    assert events_of(sel.select(0)) == {"b": EVENT_READ}


def test_closed_kernel_socket_can_be_unregistered(sel):
    rk, wk = socket.socketpair()
    key = sel.register(rk, EVENT_READ, "k")
    wk.close()
    assert events_of(sel.select(0)) == {"k": EVENT_READ}  # EOF
    rk.close()
    assert sel.unregister(rk) is key
    assert sel.select(0) == []


# -- ring, kernel and listener together ----------------------------------------------------


@pytest.mark.timeout(120)
def test_mixed_ring_kernel_listener(sel, pair, monitor):
    a, b = pair
    rk, wk = socket.socketpair()
    lst = impl.create_server(("127.0.0.1", 0))
    clients = []
    try:
        assert lst.transport == "listener"
        sel.register(b, EVENT_READ, "ring")
        sel.register(rk, EVENT_READ, "kernel")
        sel.register(lst, EVENT_READ, "listener")
        assert sel.select(0) == []
        wk.send(b"k")
        assert events_of(sel.select(0)) == {"kernel": EVENT_READ}
        assert events_of(sel.select(1.0)) == {"kernel": EVENT_READ}
        a.sendall(b"r")
        got = events_of(sel.select(0))
        # The ring answers without a system call; the kernel side may wait its turn.
        assert got["ring"] == EVENT_READ and got.get("kernel", EVENT_READ) == EVENT_READ
        assert rk.recv(1) == b"k" and b.recv(1) == b"r"
        assert sel.select(0) == []
        # A connection over rings, then one from a kernel client: both wake the listener.
        port = lst.getsockname()[1]
        for maker in (impl.create_connection, socket.create_connection):
            cli = maker(("127.0.0.1", port), timeout=WAIT)
            clients.append(cli)
            assert events_of(sel.select(WAIT)) == {"listener": EVENT_READ}
            conn, _ = lst.accept()
            clients.append(conn)
            assert conn.transport == ("ring" if maker is impl.create_connection else "kernel")
            assert sel.select(0) == []
        # The accepted ring connection joins the set; blocking select sees its data.
        ring_conn = clients[1]
        sel.register(ring_conn, EVENT_READ, "accepted")
        clients[0].sendall(b"over rings")
        assert events_of(sel.select(WAIT)) == {"accepted": EVENT_READ}
        assert ring_conn.recv(100) == b"over rings"
    finally:
        for s in clients:
            s.close()
        lst.close()
        rk.close()
        wk.close()


@pytest.mark.parametrize("every", [1, 4])
def test_busy_ring_does_not_starve_kernel(pair, every):
    a, b = pair
    rk, wk = socket.socketpair()
    with RingSelector(kernel_every=every) as s:
        s.register(b, EVENT_READ, "ring")
        s.register(rk, EVENT_READ, "kernel")
        a.sendall(b"always ready")
        wk.send(b"k")
        seen = [events_of(s.select(None)) for _ in range(every)]
        assert all(r.get("ring") == EVENT_READ for r in seen)
        assert [r.get("kernel") for r in seen].count(EVENT_READ) == 1
        assert seen[-1].get("kernel") == EVENT_READ
    rk.close()
    wk.close()


# -- writability: a full ring waits on the space eventfd -------------------------------------


@pytest.mark.timeout(120)
def test_full_writer_woken_when_reader_drains_in_another_process(sel, pair):
    a, b = pair
    total = fill(a)
    sel.register(a, EVENT_WRITE, "a")
    assert sel.select(0) == []
    waits = []
    real = sel._poll
    sel._poll = lambda t: waits.append(t) or real(t)

    def child():
        try:
            assert wait_flag(b, _WRITER_SLEEPING, "rx"), "parent never armed its writer"
            got = 0
            while got < total:
                got += len(b.recv(65536))
        finally:
            b._conn.reader.close()  # EPIPE: wakes the parent even if we failed

    kid = Child(child)
    result = sel.select(None)
    kid.result()
    assert events_of(result) == {"a": EVENT_WRITE}
    # One sleep, one wake-up: a selector that spun on an always-writable
    # descriptor would have polled over and over.
    assert len(waits) <= 2, f"{len(waits)} epoll waits for one wake-up"
    assert waits[0] == -1


def test_dup_sockets_share_the_space_eventfd(sel, pair):
    a, b = pair
    a2 = a.dup()
    try:
        fill(a)
        sel.register(a, EVENT_WRITE, "a")
        sel.register(a2, EVENT_WRITE, "a2")
        assert sel.select(0) == []
        assert sel.select(0.01) == []
        sel.unregister(a2)  # the shared eventfd stays watched for a
        assert sel.select(0.01) == []
        sel.register(a2, EVENT_WRITE, "a2")
        t = threading.Thread(target=lambda: wait_flag(b, _WRITER_SLEEPING, "rx")
                             and b.recv(1000))
        t.start()
        try:
            got = events_of(sel.select(WAIT))
        finally:
            t.join(WAIT)
        assert got == {"a": EVENT_WRITE, "a2": EVENT_WRITE}
    finally:
        a2.close()


def test_spurious_signal_is_drained_not_spun_on(sel, pair):
    a, b = pair
    fill(a)
    sel.register(a, EVENT_WRITE, "a")
    assert sel.select(0.01) == []  # armed: writer_sleeping published
    space_efd = a._conn.tx.fds().space_efd
    os.eventfd_write(space_efd, 1)  # a stale signal
    waits = []
    real = sel._poll
    sel._poll = lambda t: waits.append(t) or real(t)
    assert sel.select(0.2) == []
    # Woken once, drained, then slept till the deadline: not a poll per loop.
    assert len(waits) <= 3, waits
    assert not readable(space_efd)


def test_spin_budget_zero_still_blocks_and_wakes(pair):
    a, b = pair
    with RingSelector(spin_ns=0) as s:
        s.register(b, EVENT_READ, "b")
        assert s.select(0.01) == []
        t = threading.Thread(target=lambda: wait_flag(a, _READER_SLEEPING, "tx")
                             and a.sendall(b"x"))
        t.start()
        try:
            got = events_of(s.select(WAIT))
        finally:
            t.join(WAIT)
        assert got == {"b": EVENT_READ}


# -- the eventfd handshakes in impl.ring._core ---------------------------------------------


@pytest.fixture(params=BACKENDS)
def ring(request):
    r = Ring.create(64, backend=request.param)
    yield r
    r.close()


def test_settle_space_arms_and_the_reader_signals(ring):
    w, r = ring.writer(), ring.reader()
    efd = ring.fds().space_efd
    assert w.settle_space() is True and readable(efd)  # room: exact, and says so
    w.write(b"x" * 64)
    assert w.settle_space() is False  # full: stale signal drained, flag published
    assert not readable(efd)
    assert ring._q[_WRITER_SLEEPING] == 1
    assert w.settle_space() is False  # armed: nothing changes, no signal came
    assert r.read(1) == b"x"          # frees space: the reader signals
    assert readable(efd)
    assert ring._q[_WRITER_SLEEPING] == 0
    assert w.settle_space() is True


def test_settle_space_sees_reader_close(ring):
    w, r = ring.writer(), ring.reader()
    efd = ring.fds().space_efd
    w.write(b"y" * 64)
    assert w.settle_space() is False
    r.close()
    assert readable(efd)
    assert w.settle_space() is True
    with pytest.raises(BrokenPipeError):
        w.write(b"z")


def test_settle_space_drains_a_stale_signal(ring):
    w = ring.writer()
    efd = ring.fds().space_efd
    w.write(b"s" * 64)
    os.eventfd_write(efd, 5)
    assert w.settle_space() is False
    assert not readable(efd)


def test_settle_space_after_close_raises_ebadf(ring):
    w = ring.writer()
    w.close()
    with pytest.raises(OSError) as info:
        w.settle_space()
    assert info.value.errno == errno.EBADF


def test_settle_sets_eventfd_for_data_that_came_before_the_first_call(ring):
    w, r = ring.writer(), ring.reader()
    efd = ring.fds().data_efd
    w.write(b"early")  # nobody armed: no signal
    assert not readable(efd)
    assert r.settle() is True
    assert readable(efd), "readable ring, unreadable eventfd"


def test_settle_after_a_blocking_read_that_left_data(ring):
    w, r = ring.writer(), ring.reader()
    efd = ring.fds().data_efd
    # The reader sleeps in recv_into (its own flag); the writer writes once it
    # is published; the woken reader drains the eventfd and takes 2 of 6 bytes.
    t = threading.Thread(target=lambda: wait_flag_ring(ring) and w.write(b"abcdef"))
    t.start()
    buf = bytearray(2)
    try:
        assert r.recv_into(buf, timeout=WAIT) == 2
    finally:
        t.join(WAIT)
    assert r.settle() is True
    assert readable(efd), "4 bytes wait but the eventfd says nothing"


def wait_flag_ring(ring) -> bool:
    deadline = time.monotonic() + WAIT
    while not ring._q[_READER_SLEEPING]:
        if time.monotonic() > deadline:
            return False
        os.sched_yield()
    return True


# -- the adaptive spin ---------------------------------------------------------------------


def test_spin_budget_adapts_to_how_fast_events_come():
    with RingSelector(spin_ns=40_000) as s:
        assert 0 < s.spin_budget <= 40_000
        for _ in range(20):
            s._learn(10**9)  # an idle peer: events take long
        assert s.spin_budget == 0, "spinning for events that never come in time"
        for _ in range(40):
            s._learn(3_000)  # a quick peer again
        assert 0 < s.spin_budget <= 2 * 3_000 + 100
    with RingSelector(spin_ns=0) as s:
        s._learn(10)
        assert s.spin_budget == 0


def test_spin_learns_from_what_ends_each_wait(pair):
    a, b = pair
    rk, wk = socket.socketpair()
    with RingSelector(spin_ns=40_000) as s:
        s.register(b, EVENT_READ, "ring")
        s.register(rk, EVENT_READ, "kernel")
        a.sendall(b"r")
        before = s._wait_est
        assert events_of(s.select(WAIT)) == {"ring": EVENT_READ}
        assert s._wait_est == before  # found at once: no wait to learn from
        b.recv(1)
        wk.send(b"k")
        assert events_of(s.select(WAIT)) == {"kernel": EVENT_READ}
        assert s._wait_est > before   # a spin could only have delayed it
        rk.recv(1)
        for _ in range(10):
            assert s.select(0.001) == []
        assert s.spin_budget == 0     # nothing comes over the rings: stop spinning
    rk.close()
    wk.close()


def test_no_spin_without_ring_sockets():
    rk, wk = socket.socketpair()
    with RingSelector(spin_ns=1_000_000) as s:
        s.register(rk, EVENT_READ, "kernel")
        spins = []
        real = s._spin
        s._spin = lambda *args: spins.append(args) or real(*args)
        assert s.select(0.001) == []
        assert spins == []
    rk.close()
    wk.close()


def test_module_stands_in_for_selectors():
    import impl.selectors as mod
    public = [n for n in vars(selectors)
              if not n.startswith("_") and (n.isupper() or n.endswith(("Selector", "Key")))]
    assert "EpollSelector" in public and "SelectorKey" in public
    for name in public:
        assert getattr(mod, name) is not None, name
    assert mod.DefaultSelector is RingSelector
