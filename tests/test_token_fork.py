"""Token sharing between processes after fork (TokenSharing.tla, process level; issue 4).

A ring socket inherited by fork() is held by both processes; its tokens
stay with the parent until the child asks.  The child's first operation
sends TAKE to the monitor, which RECALLs the parent; the parent's agent
thread releases once no thread of it is BUSY (Release), and the monitor
GRANTs the child (MonRelease, Grant).  A holder killed with the token is
reclaimed by the monitor (Reclaim), once.

What is checked: the child's first send succeeds and the word then names
the child's thread (and the parent can take it back the same way); N
senders spread over two processes and M readers in a third move whole
frames, in each sender's order, none lost or duplicated; a holder killed
BUSY or idle loses its token to the next process exactly once (the
monitor's counters and token table); and nothing is left behind --
neither descriptors here nor state in the monitor -- once the children
are gone.

Every wait is bounded (socket timeouts, the children's pipes and pidfds
through tests.proc_util.Child); a child is killed and reaped whatever
happens.
"""

from __future__ import annotations

import functools
import json
import os
import select
import socket as stdsocket
import threading

import pytest

import impl
from impl import sdsocket
from impl.monitor import client
from impl.monitor import protocol as P
from impl.token import agent
from tests.monitor_util import open_fds
from tests.proc_util import Child as _Child
from tests.test_token_threads import (
    FRAME_RING,
    WAIT,
    Op,
    _ring_pair,
    check_delivery,
    frame_readers,
    frame_senders,
    needs_c,
    recv_token,
    send_token,
    wait_until,
)

pytestmark = [pytest.mark.timeout(300), needs_c]

Child = functools.partial(_Child, wait=WAIT)


@pytest.fixture(autouse=True)
def _monitor(monitor):
    return monitor


@pytest.fixture
def ring_pair():
    """A monitor connection (client -> server ring of FRAME_RING bytes): (client, server).

    Both ends are this thread's; the sockets are closed afterwards.
    """
    socks, cli, conn = _ring_pair(FRAME_RING)
    try:
        if send_token(cli) is None:
            pytest.skip("this socket checks no tokens (the pure-Python ring backend)")
        yield cli, conn
    finally:
        for s in socks:
            s.close()


def wait_line(fd: int) -> bytes:
    """One short message from a child on *fd*, bounded by WAIT."""
    ready, _, _ = select.select([fd], [], [], WAIT)
    assert ready, "the child did not report in time"
    return os.read(fd, 1000)


def counters(monitor) -> dict:
    return monitor.status()["counters"]


def delta(before: dict, after: dict, *names: str) -> dict:
    """How much each of *names* grew between two STATUS counters."""
    return {name: after[name] - before[name] for name in names}


def token_rows(monitor, cid: int) -> dict[tuple[str, str], dict]:
    """The monitor's token table rows of connection *cid*, by (end, dir)."""
    return {(t["end"], t["dir"]): t for t in monitor.status()["tokens"] if t["id"] == cid}


def recv_until(sock, suffix: bytes) -> bytes:
    """Read from *sock* (timeout WAIT per call) until what came ends with *suffix*."""
    buf = b""
    while not buf.endswith(suffix):
        piece = sock.recv(1 << 16)
        assert piece, f"EOF after {buf[-40:]!r}, before {suffix!r}"
        buf += piece
    return buf


# -- the child's first send ---------------------------------------------------------------
ROUNDS = 20         # token moves back and forth in the ping-pong test
FREED_ROUNDS = 30   # children that exit holding the token, each taken back by the parent


def test_child_first_send_takes_the_token_through_the_monitor(monitor, ring_pair):
    cli, conn = ring_pair
    conn.settimeout(WAIT)
    st = send_token(cli)
    cid = cli._conn.cid
    me = threading.get_native_id()
    assert st.word() == (me, False, False) and st.held
    before = counters(monitor)
    r, w = os.pipe()
    go_r, go_w = os.pipe()

    def child():
        os.close(r)
        os.close(go_w)
        cli.sendall(b"from the child")
        # The main thread of the child: a tid cached from the parent would show here.
        os.write(w, json.dumps([threading.get_native_id(), send_token(cli).word()]).encode())
        wait_line(go_r)           # alive and idle while the parent takes the token back
        return send_token(cli).held

    c = Child(child)
    os.close(w)
    os.close(go_r)
    try:
        assert conn.recv(14, stdsocket.MSG_WAITALL) == b"from the child"
        tid, word = json.loads(wait_line(r))
        assert tid != me
        assert word == [tid, False, False]
        assert st.word() == (tid, False, False)     # the same word, seen from here
        assert not st.held, "the parent still thinks it holds the token it released"
        row = token_rows(monitor, cid)[("client", "send")]
        assert (row["holder"], row["queue"], row["recalled"]) == (c.pid, [], False)
        assert delta(before, counters(monitor), "forks", "takes", "recalls", "grants",
                     "reclaims") == {"forks": 1, "takes": 1, "recalls": 1, "grants": 1,
                                     "reclaims": 0}
        # And back the same way: the child's agent releases while it sits idle.
        cli.sendall(b"and the parent")
        assert st.word() == (me, False, False) and st.held
        assert conn.recv(14, stdsocket.MSG_WAITALL) == b"and the parent"
        assert token_rows(monitor, cid)[("client", "send")]["holder"] == os.getpid()
        # The receive token never moved: nobody else asked for it.
        assert recv_token(cli).word() == (me, False, False)
        os.write(go_w, b"go")
        assert c.result() is False      # the child released it
    finally:
        os.close(r)
        os.close(go_w)
        if not c.done:
            c.kill()


def test_token_moves_back_and_forth_between_blocking_senders(monitor, ring_pair):
    """Parent and child take turns on a blocking socket: every send asks, every one is granted.

    Blocking sends, so that a wake-up lost between a GRANT and the waiter's
    sleep hangs the sender (and fails the bounded join) instead of ending
    a timeout later.
    """
    cli, conn = ring_pair
    cid = cli._conn.cid
    before = counters(monitor)
    r, w = os.pipe()
    go_r, go_w = os.pipe()

    def child():
        os.close(r)
        os.close(go_w)
        for i in range(ROUNDS):
            assert wait_line(go_r) == b"g"
            cli.sendall(b"c%03d" % i)
            os.write(w, b"k")
        return True

    c = Child(child)
    os.close(w)
    os.close(go_r)
    try:
        for i in range(ROUNDS):
            Op(cli.sendall, b"p%03d" % i).outcome()     # a new thread each time, blocking
            os.write(go_w, b"g")
            assert wait_line(r) == b"k"
        assert c.result() is True
        expected = b"".join(b"p%03dc%03d" % (i, i) for i in range(ROUNDS))
        conn.settimeout(WAIT)
        assert conn.recv(len(expected), stdsocket.MSG_WAITALL) == expected
        wait_until(lambda: counters(monitor)["reclaims"] > before["reclaims"],
                   "the monitor reclaimed the token of the exited child")
        got = delta(before, counters(monitor), "takes", "grants", "reclaims")
        # Every send but the first asked the monitor; the child died holding the token.
        assert got == {"takes": 2 * ROUNDS - 1, "grants": 2 * ROUNDS - 1, "reclaims": 1}
        assert token_rows(monitor, cid)[("client", "send")]["holder"] is None
    finally:
        os.close(r)
        os.close(go_w)
        if not c.done:
            c.kill()


def test_parent_takes_back_tokens_freed_by_exited_children(monitor, ring_pair):
    """Each round a child takes the send token and exits with it; the parent's next send asks.

    The token is free at the monitor by then (reclaimed), so the GRANT
    comes back at once -- the moment a waiter is most likely to miss its
    wake-up if it sleeps in a state it did not re-check.  Blocking sends.
    """
    cli, conn = ring_pair
    cid = cli._conn.cid
    before = counters(monitor)
    expected = b""
    for i in range(FREED_ROUNDS):
        c = Child(functools.partial(cli.sendall, b"c%02d" % i))
        assert c.result() is None
        wait_until(lambda: token_rows(monitor, cid)[("client", "send")]["holder"] is None,
                   "the monitor reclaimed the token of the exited child")
        Op(cli.sendall, b"p%02d" % i).outcome()     # blocking: a lost GRANT hangs it
        expected += b"c%02dp%02d" % (i, i)
    conn.settimeout(WAIT)
    assert conn.recv(len(expected), stdsocket.MSG_WAITALL) == expected
    assert delta(before, counters(monitor), "reclaims", "takes", "grants") == \
        {"reclaims": FREED_ROUNDS, "takes": 2 * FREED_ROUNDS, "grants": 2 * FREED_ROUNDS}


def test_child_thread_recv_takes_the_token_and_the_parent_gets_it_back(monitor, ring_pair):
    cli, conn = ring_pair
    rt = recv_token(conn)
    r, w = os.pipe()

    def child():
        os.close(r)
        reader = Op(conn.recv, 5, stdsocket.MSG_WAITALL)    # blocking
        got = reader.outcome()
        os.write(w, str(reader.tid).encode())
        return [got.decode(), rt.word()[0] == reader.tid]

    c = Child(child)
    os.close(w)
    try:
        cli.sendall(b"hello")
        tid = int(wait_line(r))
        assert c.result() == ["hello", True]
        # The child exited holding it: reclaimed, and the parent's next recv asks.
        cli.sendall(b"again")
        reader = Op(conn.recv, 5, stdsocket.MSG_WAITALL)    # blocking: a lost GRANT hangs
        assert reader.outcome() == b"again"
        assert rt.word() == (reader.tid, False, False) and rt.held
        assert tid != reader.tid
    finally:
        os.close(r)
        if not c.done:
            c.kill()


def test_child_keeps_an_end_its_parent_closes_right_after_fork(monitor):
    """socketserver.ForkingMixIn: fork a child per connection, close the parent's copy at once.

    The child must become a holder of the end even though its parent's
    CLOSE may reach the monitor before the child's FORKED; else its TAKE is
    ignored and its first recv waits for ever.  Three times: it is a race.
    """
    for _ in range(3):
        _serve_in_forked_child(monitor)


def _serve_in_forked_child(monitor) -> None:
    socks, cli, conn = _ring_pair(FRAME_RING)
    cid = cli._conn.cid
    r, w = os.pipe()

    def child():
        os.close(r)
        os.write(w, b"r")                             # FORKED is done: the at-fork hook ran
        data = conn.recv(4, stdsocket.MSG_WAITALL)    # blocking: Child.result bounds it
        conn.sendall(data.upper())
        return data.decode()

    c = Child(child)
    conn.close()                                      # at once, as ForkingMixIn does
    os.close(w)
    try:
        assert wait_line(r) == b"r"
        # Both messages are in: the child's FORKED was answered, and a PING
        # behind our CLOSE on our channel is answered after it.
        client.request(P.PING)
        rows = [x["holders"] for x in monitor.status()["connections"] if x["id"] == cid]
        assert rows and rows[0]["server"] == [c.pid], \
            f"the child does not hold the server end: {rows}"
        cli.settimeout(WAIT)
        cli.sendall(b"ping")
        assert cli.recv(4, stdsocket.MSG_WAITALL) == b"PING"
        assert c.result() == "ping"
    finally:
        os.close(r)
        if not c.done:
            c.kill()
        for s in socks:
            s.close()


# -- a RECALL racing the owner's own Enter -----------------------------------------------
class _EnterAfterFirstLook:
    """impl.token's C library, where the owner's Enter lands right after the first look.

    The agent's first load of the word sees it idle; before its next step
    the owner thread (this one) makes it BUSY, as its lock-free fast path
    may at any moment.  Only the first load does this.
    """

    def __init__(self, lib, owner_word: int) -> None:
        self._lib = lib
        self._owner = owner_word
        self.fired = False

    def __getattr__(self, name: str):
        return getattr(self._lib, name)

    def sd_token_load(self, p) -> int:
        w = self._lib.sd_token_load(p)
        if not self.fired:
            self.fired = True
            assert self._lib.sd_token_cas(p, self._owner, self._owner | 1) == 1  # Enter
        return w


def test_recall_racing_the_owners_enter_is_released_at_its_exit(monkeypatch, ring_pair):
    """Was a lost wake-up (CI hung in test_processes_send_and_read_whole_frames):
    the agent saw the word idle, so it set no WANT; the owner then entered,
    so the release was left to its Exit -- which, without WANT, never calls
    wanted().  The process kept the token and the other one's senders waited
    for ever.  The agent must flag a BUSY owner with the same CAS it checks by."""
    from impl import token as tokmod
    cli, _conn = ring_pair
    tok = send_token(cli)
    me = tokmod.self_tid()
    assert tok.word() == (me, False, False) and tok.held   # this thread's, idle
    released = []
    monkeypatch.setattr(agent, "send_release", lambda key: released.append(key) or True)
    racing = _EnterAfterFirstLook(tokmod._lib, me << tokmod._SHIFT)
    monkeypatch.setattr(tokmod, "_lib", racing)
    tok.recall()                                        # TokenSharing!Recall
    assert racing.fired and tok.word() == (me, True, True), \
        f"the owner is BUSY now, and must have been flagged: {tok!r}"
    assert released == [] and tok.held
    tok.exit()                                          # the owner's Exit
    assert released == [tok.key], f"its Exit did not run the release: {tok!r}"
    assert not tok.held and not tok.queue and tok.word() == (0, False, False)


# -- real programs over processes ---------------------------------------------------------
@pytest.mark.parametrize("size,frame,count", [("small", 300, 200),
                                              ("large", 2 * FRAME_RING + 100, 40)])
@pytest.mark.parametrize("per_process,m", [(1, 1), (2, 4), (4, 8)])
def test_processes_send_and_read_whole_frames(monitor, ring_pair, per_process, m, size, frame,
                                              count):
    """Senders: *per_process* threads here and as many in a child; *m* readers in another."""
    cli, conn = ring_pair
    before = counters(monitor)
    n = 2 * per_process
    r, w = os.pipe()

    def readers():
        os.close(r)
        cli.close()                      # the reader process holds only the server end
        os.write(w, b"r")
        return [op.outcome() for op in frame_readers(conn, m, frame, n, count)]

    def senders():
        for op in frame_senders(cli, range(per_process, n), frame, count):
            op.outcome()
        cli.close()
        return True

    reading = Child(readers)
    os.close(w)
    try:
        # Close our copy only once the reader process is a holder (its FORKED
        # answered): that race is test_child_keeps_an_end_...'s subject.
        assert wait_line(r) == b"r"
    finally:
        os.close(r)
    conn.close()                         # the server end is the reader process's now
    sending = Child(senders)
    try:
        for op in frame_senders(cli, range(per_process), frame, count):
            op.outcome()
        assert sending.result() is True
        cli.close()                      # the last holder: the readers see EOF
        got = reading.result()
        check_delivery([[tuple(f) for f in mine] for mine in got], n, count)
        # The tokens did go through the monitor: to the sending child, to the readers.
        assert delta(before, counters(monitor), "grants")["grants"] >= 2
    finally:
        for c in (reading, sending):
            if not c.done:
                c.kill()


def test_processes_share_a_socketpair_with_whole_frames():
    # No monitor: both processes keep the tokens and take the word from each other.
    # Frames larger than the ring: each sendall waits for room while it is BUSY.
    a, b = impl.socketpair()
    frame, count, per_process, m = sdsocket.DEFAULT_BUF + 40_000, 4, 2, 2
    n = 2 * per_process

    def readers():
        a.close()
        return [op.outcome() for op in frame_readers(b, m, frame, n, count)]

    def senders():
        for op in frame_senders(a, range(per_process, n), frame, count):
            op.outcome()
        a.close()
        return True

    reading = Child(readers)
    b.close()
    sending = Child(senders)
    try:
        for op in frame_senders(a, range(per_process), frame, count):
            op.outcome()
        assert sending.result() is True
        a.close()
        got = reading.result()
        check_delivery([[tuple(f) for f in mine] for mine in got], n, count)
    finally:
        for c in (reading, sending):
            if not c.done:
                c.kill()
        a.close()
        b.close()


# -- a holder killed ------------------------------------------------------------------------
@pytest.mark.parametrize("state", ["busy", "idle"])
def test_killed_holder_token_is_reclaimed_once(monitor, ring_pair, state):
    cli, conn = ring_pair
    conn.settimeout(WAIT)
    st = send_token(cli)
    cid = cli._conn.cid
    cut = b"k" * (4 * FRAME_RING)        # the call the kill cuts short: never all in the ring
    r, w = os.pipe()

    def child():
        os.close(r)
        cli.sendall(b"child:")
        os.write(w, str(threading.get_native_id()).encode())
        if state == "busy":
            cli.sendall(cut)             # nobody reads yet: BUSY until killed
        select.select([], [], [], WAIT)  # the idle holder waits to be killed

    c = Child(child)
    os.close(w)
    try:
        tid = int(wait_line(r))
        busy = state == "busy"
        wait_until(lambda: st.word() == (tid, False, busy), f"the child holds the token, {state}")
        before = counters(monitor)
        c.kill()
        sender = Op(cli.sendall, b":parent")
        got = recv_until(conn, b":parent")
        sender.outcome()
        # The child's bytes, then a prefix of the call it was killed in, then ours.
        assert got.startswith(b"child:")
        middle = got[len(b"child:"):-len(b":parent")]
        assert middle == cut[:len(middle)]
        if not busy:
            assert middle == b""
        assert st.word() == (sender.tid, False, False) and st.held
        after = counters(monitor)
        assert delta(before, after, "reclaims", "deaths") == {"reclaims": 1, "deaths": 1}
        row = token_rows(monitor, cid)[("client", "send")]
        assert (row["holder"], row["queue"]) == (os.getpid(), [])
        # Exactly once: later takeovers here are direct, and nothing is reclaimed again.
        again = Op(cli.sendall, b"again")
        again.outcome()
        cli.sendall(b"!")
        assert conn.recv(6, stdsocket.MSG_WAITALL) == b"again!"
        assert delta(after, counters(monitor), "reclaims", "takes", "grants") == \
            {"reclaims": 0, "takes": 0, "grants": 0}
    finally:
        os.close(r)
        if not c.done:
            c.kill()


def test_waiting_process_gets_the_token_of_a_holder_killed_while_it_waits(monitor, ring_pair):
    """The parent's TAKE is queued behind a BUSY child; the child dies: reclaim, then GRANT."""
    cli, conn = ring_pair
    conn.settimeout(WAIT)
    st = send_token(cli)
    cid = cli._conn.cid
    r, w = os.pipe()

    def child():
        os.close(r)
        cli.sendall(b"c")
        os.write(w, str(threading.get_native_id()).encode())
        cli.sendall(b"k" * (4 * FRAME_RING))
        select.select([], [], [], WAIT)

    c = Child(child)
    os.close(w)
    try:
        tid = int(wait_line(r))
        wait_until(lambda: st.word() == (tid, False, True), "the child is BUSY")
        before = counters(monitor)
        sender = Op(cli.sendall, b":parent")
        # The parent's request is in the monitor's queue behind the child ...
        wait_until(lambda: token_rows(monitor, cid)[("client", "send")]["queue"]
                   == [os.getpid()], "the parent queued at the monitor")
        assert not sender.done.is_set()
        c.kill()                         # ... and the child dies holding the token
        got = recv_until(conn, b":parent")
        sender.outcome()
        assert got[:1] == b"c" and set(got[1:-len(b":parent")]) <= {ord("k")}
        assert delta(before, counters(monitor), "reclaims", "grants") == \
            {"reclaims": 1, "grants": 1}
        row = token_rows(monitor, cid)[("client", "send")]
        assert (row["holder"], row["queue"], row["recalled"]) == (os.getpid(), [], False)
    finally:
        os.close(r)
        if not c.done:
            c.kill()


# -- nothing left behind --------------------------------------------------------------------
def _fds_besides_agent() -> set[str]:
    """This process's descriptors, less the library's channels that live for the process."""
    fds = open_fds()
    running = agent.ensure()      # opened once, on the first fork with ring sockets, and kept
    if running is not None:
        fds.discard(str(running.chan.sock.fileno()))
    return fds


def test_nothing_left_after_children_exit(monitor):
    agent.ensure()                # so that it is not counted as a leak below
    fds = _fds_besides_agent()
    socks, cli, conn = _ring_pair(FRAME_RING)
    cid = cli._conn.cid
    pids = []
    try:
        conn.settimeout(WAIT)

        def sends_and_exits():
            cli.sendall(b"1")

        def closes_then_exits():
            cli.sendall(b"2")
            cli.close()
            conn.close()

        def killed_while_busy():
            cli.sendall(b"3")
            cli.sendall(b"k" * (4 * FRAME_RING))

        for fn in (sends_and_exits, closes_then_exits):
            c = Child(fn)
            pids.append(c.pid)
            assert c.result() is None
        assert conn.recv(2, stdsocket.MSG_WAITALL) == b"12"
        c = Child(killed_while_busy)
        pids.append(c.pid)
        st = send_token(cli)
        wait_until(lambda: st.word()[2] and st.word()[0] != threading.get_native_id(),
                   "the last child is BUSY")
        c.kill()
        sender = Op(cli.sendall, b"end")     # the ring is full: read while it sends
        assert recv_until(conn, b"end").startswith(b"3")
        sender.outcome()
    finally:
        for s in socks:
            s.close()
    # The monitor forgets the connection, its tokens and the dead children.
    wait_until(lambda: not any(x["id"] == cid for x in monitor.status()["connections"]),
               "the monitor dropped the connection")
    wait_until(lambda: not {p["pid"] for p in monitor.status()["processes"]} & set(pids),
               "the monitor forgot the dead children")
    status = monitor.status()
    assert [t for t in status["tokens"] if t["id"] == cid] == []
    me = {p["pid"]: p for p in status["processes"]}.get(os.getpid())
    assert me is None or me["pending"] == 0
    assert _fds_besides_agent() == fds, "file descriptors leaked"
