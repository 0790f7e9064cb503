"""The monitor's side of token sharing (TokenSharing.tla across processes; issue 4).

Real processes against a private monitor, speaking the raw protocol: this
process (P0) sets up one ring connection with itself through the monitor
(raw LISTEN and CONNECT, so that no library socket -- and no library fork
hook -- is involved), gives the monitor the read end of the client end's
hold pipe (HOLD), and forked children take its client end over with
FORKED (their copy of the pipe's write end the proof), open agent channels
and send TAKE / RELEASE.  Closing a copy of the end closes the closer's
copy of the write end too, as the library does, so that the monitor's
count (the pipe's POLLHUP) is the processes that hold the end.  Each command a child
runs ends with a PING on its agent channel, so when it answers, the monitor
has handled everything it sent, and the pushes it reports (RECALL, GRANT)
are all that were sent to it so far: "nothing pushed" is an exact,
race-free observation, not a timeout.

Every wait is bounded (channel timeouts, the children's pipes and pidfds).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import select
import socket
from collections.abc import Iterator

import pytest

from impl.monitor import client
from impl.monitor import protocol as P
from impl.ring import Ring, RingFds, layout
from tests.monitor_util import MonitorProc, running_monitor
from tests.test_monitor import TIMEOUT, ChildPipe, Forked

SEND = "send"
RECV = "recv"


# -- the connection, made raw in this process ----------------------------------------------
class RawConn:
    """One ring connection whose two ends are this process's, set up by raw requests."""

    def __init__(self, mon: MonitorProc) -> None:
        self.mon = mon
        self._stack = contextlib.ExitStack()
        try:
            self._set_up(mon)
        except BaseException:
            self._stack.close()
            raise

    def _set_up(self, mon: MonitorProc) -> None:
        path = os.path.join(os.path.dirname(mon.path), f"lst-{os.urandom(4).hex()}.sock")
        lsock = self._stack.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
        lsock.bind(path)
        lsock.listen(4)
        self.lchan = self._channel("listener")
        self.lchan.request(P.LISTEN, {"family": "unix", "backlog": 4, "rcvbuf": 0,
                                      "sndbuf": 0}, [lsock.fileno()])
        self.pchan = self._channel("test")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as csock:
            reply = self.pchan.request(P.CONNECT, {"family": "unix", "address": [path],
                                                   "rcvbuf": 0, "sndbuf": 0},
                                       [csock.fileno()])
        assert reply.body["route"] == "ring", reply.body
        self.id: int = reply.body["id"]
        fds = reply.fds
        for fd in fds[6:]:
            os.close(fd)    # the side channel for descriptors (protocol 4): not used here
        self.cs = Ring.attach(RingFds(*fds[:3]), adopt=True)   # client -> server
        self.sc = Ring.attach(RingFds(*fds[3:6]), adopt=True)
        self._stack.callback(self.cs.close)
        self._stack.callback(self.sc.close)
        push = self.lchan.receive(TIMEOUT)
        assert push is not None and push.op == P.NEWCONN and push.body["id"] == self.id
        try:
            # On the process channel, the memfd of the ring the server reads the proof.
            self.pchan.notify(P.ACCEPTED, {"id": self.id}, [push.fds[3]], check=True)
        finally:
            push.close_fds()
        self.pchan.request(P.PING)     # the ACCEPTED is in: both ends "open"
        # The client end's hold pipe: every child forked from now on holds a copy.
        self.hold = os.pipe()
        self._stack.callback(self._close_hold)
        assert self.pchan.request(P.HOLD, {"ends": [[self.id, "client"]]},
                                  [self.hold[0]]).body == {"ends": 1}

    def _close_hold(self) -> None:
        for fd in self.hold:
            if fd >= 0:
                os.close(fd)
        self.hold = (-1, -1)

    def drop_hold(self, end: str) -> None:
        """This process no longer holds *end*: its copy of the hold pipe's write end goes."""
        if end == "client" and self.hold[1] >= 0:
            os.close(self.hold[1])
            self.hold = (self.hold[0], -1)

    def _channel(self, role: str) -> client.ControlChannel:
        chan = client.ControlChannel.connect(self.mon.path, role=role, timeout=TIMEOUT)
        self._stack.callback(chan.close)
        return chan

    def token_word(self, end: str, d: str) -> int:
        """The token word of (end, d) as the ring holds it."""
        ring, side = {("client", SEND): (self.cs, "writer"), ("client", RECV): (self.sc, "reader"),
                      ("server", SEND): (self.sc, "writer"),
                      ("server", RECV): (self.cs, "reader")}[(end, d)]
        return ring.token_word(side)

    def close_end(self, end: str) -> None:
        """CLOSE this process's copy of *end*; returns once the monitor has it."""
        self.drop_hold(end)
        self.pchan.notify(P.CLOSE, {"id": self.id, "end": end}, check=True)
        self.pchan.request(P.PING)

    def agent(self) -> Agent:
        """An agent channel of this process's own."""
        chan = self._channel("agent")
        return Agent(chan)

    def close(self) -> None:
        self._stack.close()


class Agent:
    """An agent channel: one-way sends, then a PING that collects what was pushed."""

    def __init__(self, chan: client.ControlChannel) -> None:
        self.chan = chan

    def send(self, op: int, body: dict) -> list[list]:
        """Send *op*; return [op name, body] of every push received up to the PING's OK."""
        self.chan.notify(op, body, check=True)
        return self.drain()

    def drain(self) -> list[list]:
        """Pushes received so far: PING, then read up to its OK (ERRORs reported too)."""
        P.send_msg(self.chan.sock, P.PING)
        got = []
        while True:
            msg = self.chan.receive(TIMEOUT)
            assert msg is not None, f"the monitor closed the agent channel after {got}"
            if msg.op == P.OK:
                return got
            got.append([msg.name, msg.body])


def tok(cid: int, end: str, d: str, **extra) -> dict:
    return {"id": cid, "end": end, "dir": d, **extra}


def grant(cid: int, end: str, d: str, reclaimed: bool = False) -> list:
    return ["GRANT", tok(cid, end, d, reclaimed=reclaimed)]


def recall(cid: int, end: str, d: str) -> list:
    return ["RECALL", tok(cid, end, d)]


# -- the children --------------------------------------------------------------------------
def _child(pipe: ChildPipe, path: str, conn: RawConn) -> None:
    """Run the parent's commands: FORKED, an agent channel, sends, CLOSE, a fork, a word."""
    pchan = client.ControlChannel.connect(path, role="child", timeout=TIMEOUT)
    agent: Agent | None = None
    while True:
        cmd = pipe.recv()
        try:
            do = cmd["do"]
            if do == "forked":
                with _proofs(conn, cmd["proofs"]) as fds:
                    out = pchan.request(P.FORKED, {"ends": cmd["ends"]}, fds).body
            elif do == "agent":
                agent = Agent(client.ControlChannel.connect(path, role="agent",
                                                            timeout=TIMEOUT))
                out = agent.drain()
            elif do == "send":
                out = agent.send(getattr(P, cmd["op"]), cmd["body"])
            elif do == "raw":
                # A packet the codec would refuse to build, sent as is.
                agent.chan.sock.send(bytes.fromhex(cmd["packet"]))
                out = agent.drain()
            elif do == "drain":
                out = agent.drain()
            elif do == "close":
                conn.drop_hold(cmd["end"])
                pchan.notify(P.CLOSE, {"id": cmd["id"], "end": cmd["end"]}, check=True)
                out = pchan.request(P.PING).body
            elif do == "set_word":
                # What an owner thread of this process would leave behind mid-operation.
                ring = conn.cs if cmd["ring"] == "cs" else conn.sc
                ring.set_token_word(cmd["side"], cmd["value"])
                out = None
            elif do == "grandchild_forked":
                out = _grandchild_forked(path, conn, cmd["ends"])
            else:
                raise ValueError(f"unknown command {do!r}")
            pipe.send({"ok": out})
        except OSError as exc:
            pipe.send({"errno": exc.errno, "message": str(exc)})


@contextlib.contextmanager
def _proofs(conn: RawConn, kinds: list[str]) -> Iterator[list[int]]:
    """Descriptors to send with FORKED: "w" our copy of the hold pipe's write end, "r" its
    read end, "other" the write end of a pipe of no connection."""
    other = os.pipe()
    try:
        yield [{"w": conn.hold[1], "r": conn.hold[0], "other": other[1]}[k] for k in kinds]
    finally:
        for fd in other:
            os.close(fd)


def _grandchild_forked(path: str, conn: RawConn, ends: list) -> dict:
    """Fork once more; the grandchild asks FORKED with its copy of the hold pipe."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the grandchild
        code = 1
        try:
            chan = client.ControlChannel.connect(path, role="grandchild", timeout=TIMEOUT)
            try:
                chan.request(P.FORKED, {"ends": ends}, [conn.hold[1]] * len(ends))
                got = {"ok": True}
            except OSError as exc:
                got = {"errno": exc.errno}
            os.write(w, json.dumps(got).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    try:
        ready, _, _ = select.select([r], [], [], TIMEOUT)
        data = os.read(r, 4096) if ready else b""
    finally:
        os.close(r)
        if not data:
            os.kill(pid, 9)
        os.waitpid(pid, 0)
    assert data, "the grandchild said nothing"
    return json.loads(data)


class Child:
    """A forked child of this process that runs :func:`_child`."""

    def __init__(self, mon: MonitorProc, conn: RawConn) -> None:
        self.proc = Forked(_child, mon.path, conn)
        self.pid = self.proc.pid
        self.conn = conn

    def call(self, **cmd):
        """Run one command; return its result, or raise OSError with the child's errno."""
        self.proc.send(cmd)
        reply = self.proc.recv(TIMEOUT)
        if "errno" in reply:
            raise OSError(reply["errno"], reply["message"])
        return reply["ok"]

    def forked(self, ends: list | None = None, proofs: list[str] | None = None) -> dict:
        """FORKED for the connection's client end (by default) from this process.

        *proofs*: what to send for each end ("w", "r" or "other", see _proofs);
        by default its copy of the hold pipe's write end for each.
        """
        ends = [[self.conn.id, "client"]] if ends is None else ends
        return self.call(do="forked", ends=ends,
                         proofs=["w"] * len(ends) if proofs is None else proofs)

    def agent(self) -> list:
        return self.call(do="agent")

    def send(self, op: str, end: str = "client", d: str = SEND, cid: int | None = None) -> list:
        body = tok(self.conn.id if cid is None else cid, end, d)
        return self.call(do="send", op=op, body=body)

    def take(self, end: str = "client", d: str = SEND) -> list:
        return self.send("TAKE", end, d)

    def release(self, end: str = "client", d: str = SEND) -> list:
        return self.send("RELEASE", end, d)

    def drain(self) -> list:
        return self.call(do="drain")

    def kill(self) -> None:
        """SIGKILL, and wait until it has exited (the monitor's pidfd says so too)."""
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def mon() -> Iterator[MonitorProc]:
    with running_monitor() as m:
        yield m
        assert m.proc.poll() is None, "the monitor died"
        assert m.status()["counters"]["internal_errors"] == 0


@pytest.fixture
def conn(mon) -> Iterator[RawConn]:
    c = RawConn(mon)
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def children(mon, conn) -> Iterator[list[Child]]:
    """Three children, each holding the client end (FORKED) with its agent channel open."""
    kids: list[Child] = []
    try:
        for _ in range(3):
            kid = Child(mon, conn)
            kids.append(kid)
            assert kid.forked() == {"ends": 1}
            assert kid.agent() == []
        yield kids
    finally:
        for kid in kids:
            kid.proc.close()


def row(status: dict, cid: int, end: str = "client", d: str = SEND) -> dict | None:
    """The token table's row for (cid, end, d), without its key; None if there is none."""
    for t in status["tokens"]:
        if (t["id"], t["end"], t["dir"]) == (cid, end, d):
            return {k: t[k] for k in ("holder", "queue", "recalled")}
    return None


def conn_row(status: dict, cid: int) -> dict | None:
    return next((c for c in status["connections"] if c["id"] == cid), None)


def counters(status: dict) -> dict:
    return {k: status["counters"][k] for k in ("takes", "grants", "recalls", "reclaims",
                                               "forks")}


# -- FORKED and holders --------------------------------------------------------------------
def test_forked_children_become_holders(mon, conn, children):
    st = mon.status()
    me = os.getpid()
    assert conn_row(st, conn.id)["holders"] == {
        "client": sorted([me, *(k.pid for k in children)]), "server": [me]}
    assert st["tokens"] == []                  # no TAKE yet: no rows
    assert st["counters"]["forks"] == 3
    agents = {p["pid"]: p["agent"] for p in st["processes"]}
    assert all(agents[k.pid] for k in children) and not agents[me]


def test_forked_without_a_proof_is_refused(mon, conn, children):
    """The proof is the hold pipe's write end of each end named; nothing changes otherwise."""
    b = children[1]
    newcomer = Child(mon, conn)
    try:
        before = mon.status()
        cid = conn.id
        for ends, proofs, code in (
                ([[cid, "client"]], ["r"], errno.EPERM),              # the read end
                ([[cid, "client"]], ["other"], errno.EPERM),          # another pipe
                ([[cid, "server"]], ["w"], errno.EPERM),              # no hold pipe there
                ([[cid + 1, "client"]], ["w"], errno.EPERM),          # no such connection
                ([[cid, "client"], [cid, "server"]], ["w", "w"], errno.EPERM),
                ([[cid, "client"]], [], errno.EINVAL),                # no descriptor
                ([[cid, "client"]], ["w", "w"], errno.EINVAL),        # one too many
                ([], [], errno.EINVAL),
                ([[cid, "both"]], ["w"], errno.EINVAL),
                ([[cid]], ["w"], errno.EINVAL),
                ([[True, "client"]], ["w"], errno.EINVAL),
                ([cid, "client"], ["w", "w"], errno.EINVAL)):
            with pytest.raises(OSError) as info:
                newcomer.forked(ends=ends, proofs=proofs)
            assert info.value.errno == code, (ends, proofs)
        after = mon.status()
        assert conn_row(after, cid)["holders"] == conn_row(before, cid)["holders"]
        assert after["counters"]["forks"] == before["counters"]["forks"]
        # All or nothing above; with the proof it is a holder, as is a grandchild,
        # whose parent need not be a holder: the kernel's word, not the family tree.
        assert newcomer.forked() == {"ends": 1}
        assert b.call(do="grandchild_forked", ends=[[cid, "client"]]) == {"ok": True}
        assert mon.status()["counters"]["forks"] == before["counters"]["forks"] + 2
        assert newcomer.pid in conn_row(mon.status(), cid)["holders"]["client"]
    finally:
        newcomer.proc.close()


# -- MonTake / MonRelease ------------------------------------------------------------------
def test_take_of_a_free_token_is_granted_at_once(mon, conn, children):
    a = children[0]
    conn.close_end("client")                   # the token's first holder leaves: it is free
    before = mon.status()
    assert conn_row(before, conn.id)["client_side"] == "open"
    assert a.take(d=RECV) == [grant(conn.id, "client", RECV)]
    after = mon.status()
    assert row(after, conn.id, d=RECV) == {"holder": a.pid, "queue": [], "recalled": False}
    delta = {k: v - counters(before)[k] for k, v in counters(after).items()}
    assert delta == {"takes": 1, "grants": 1, "recalls": 0, "reclaims": 0, "forks": 0}
    assert all(k.drain() == [] for k in children)


def test_take_of_a_held_token_recalls_the_holder_then_grants(mon, conn, children):
    """The origin (this process) holds its tokens from the start; its RECALL waits for its agent."""
    a = children[0]
    assert a.take() == []                      # held by this process: recalled, not granted
    st = mon.status()
    me = os.getpid()
    assert row(st, conn.id) == {"holder": me, "queue": [a.pid], "recalled": True}
    assert {p["pid"]: p["pending"] for p in st["processes"]}[me] == 1   # no agent yet
    mine = conn.agent()
    assert mine.drain() == [recall(conn.id, "client", SEND)]           # kept for it
    assert a.take() == []                      # asked twice: queued once, recalled once
    assert row(mon.status(), conn.id)["queue"] == [a.pid]
    assert mine.send(P.RELEASE, tok(conn.id, "client", SEND)) == []
    assert a.drain() == [grant(conn.id, "client", SEND)]
    assert row(mon.status(), conn.id) == {"holder": a.pid, "queue": [], "recalled": False}
    # The other token of the end, and the other end's, never moved.
    assert row(mon.status(), conn.id, d=RECV) is None
    assert a.take(d=RECV) == []
    assert mine.drain() == [recall(conn.id, "client", RECV)]


def test_a_second_agent_channel_replaces_the_first(mon, conn, children):
    first = conn.agent()
    second = conn.agent()
    assert children[0].take() == []
    assert second.drain() == [recall(conn.id, "client", SEND)]
    assert first.drain() == []


def test_fifo_among_three_requesters_with_one_recall_each(mon, conn, children):
    mine = conn.agent()
    for kid in children:
        assert kid.take() == []
    st = mon.status()
    pids = [k.pid for k in children]
    assert row(st, conn.id) == {"holder": os.getpid(), "queue": pids, "recalled": True}
    assert mine.drain() == [recall(conn.id, "client", SEND)]    # one RECALL for all three
    before = counters(st)
    assert mine.send(P.RELEASE, tok(conn.id, "client", SEND)) == []
    for i, kid in enumerate(children):
        last = i == len(children) - 1
        # The new holder is recalled at once while others still queue behind it.
        want = [grant(conn.id, "client", SEND)] + ([] if last else [recall(conn.id, "client",
                                                                           SEND)])
        assert kid.drain() == want, i
        assert all(other.drain() == [] for other in children if other is not kid)
        assert row(mon.status(), conn.id) == {"holder": kid.pid, "queue": pids[i + 1:],
                                               "recalled": not last}
        assert kid.release() == []
    st = mon.status()
    assert row(st, conn.id) == {"holder": None, "queue": [], "recalled": False}
    delta = {k: v - before[k] for k, v in counters(st).items()}
    assert delta == {"takes": 0, "grants": 3, "recalls": 2, "reclaims": 0, "forks": 0}


def test_release_from_a_non_holder_is_ignored(mon, conn, children):
    a, b, c = children
    conn.close_end("client")
    assert a.take() == [grant(conn.id, "client", SEND)]
    assert b.take() == []
    before = mon.status()
    assert b.release() == []                   # queued, not the holder
    assert c.release() == []                   # neither
    assert c.release(d=RECV) == []             # a token nobody took
    outsider = Child(mon, conn)                # never said FORKED: holds nothing
    try:
        outsider.agent()
        assert outsider.release() == [] and outsider.take() == []
    finally:
        outsider.proc.close()
    after = mon.status()
    assert row(after, conn.id) == row(before, conn.id) == {
        "holder": a.pid, "queue": [b.pid], "recalled": True}
    assert counters(after) == counters(before)
    assert a.drain() == [recall(conn.id, "client", SEND)]   # the one from b's TAKE, no more
    assert b.drain() == [] and c.drain() == []


def test_pushes_to_an_agent_that_does_not_read_are_kept_in_order(mon, conn):
    """More pushes than the agent's socket holds: none dropped, none reordered.

    A TAKE from the holder itself is answered with GRANT again, so this
    process, holding its tokens from the start, can make as many pushes
    as it likes: more than a SOCK_SEQPACKET queue of the default size takes.
    """
    mine = conn.agent()
    n = 2000
    for i in range(n):
        d = (SEND, RECV)[i % 2]
        conn.pchan.notify(P.TAKE, tok(conn.id, "client", d), check=True)
    conn.pchan.request(P.PING)                 # all handled; the agent read none of it
    st = mon.status()
    pending = {p["pid"]: p["pending"] for p in st["processes"]}[os.getpid()]
    assert 0 < pending < n                     # its socket filled up: the rest waits
    got = [mine.chan.receive(TIMEOUT) for _ in range(n)]
    assert [(m.name, m.body["dir"], m.body["reclaimed"]) for m in got] == [
        ("GRANT", (SEND, RECV)[i % 2], False) for i in range(n)]
    assert mine.drain() == []
    st = mon.status()
    assert {p["pid"]: p["pending"] for p in st["processes"]}[os.getpid()] == 0
    assert row(st, conn.id) == {"holder": os.getpid(), "queue": [], "recalled": False}


# -- Reclaim -------------------------------------------------------------------------------
def test_killed_holder_is_reclaimed_once_and_the_next_is_granted(mon, conn, children):
    a, b, c = children
    conn.close_end("client")
    assert a.take() == [grant(conn.id, "client", SEND)]
    busy = a.pid << layout.TOKEN_SHIFT | layout.TOKEN_BUSY   # as if a thread of a were sending
    a.call(do="set_word", ring="cs", side="writer", value=busy)
    assert conn.token_word("client", SEND) == busy
    assert b.take() == []
    assert c.take() == []
    assert a.drain() == [recall(conn.id, "client", SEND)]
    before = mon.status()
    a.kill()                                   # mid-"send", the RECALL unanswered
    after = mon.status()                       # handles the death first
    assert conn.token_word("client", SEND) == 0
    assert row(after, conn.id) == {"holder": b.pid, "queue": [c.pid], "recalled": True}
    delta = {k: v - counters(before)[k] for k, v in counters(after).items()}
    assert delta == {"takes": 0, "grants": 1, "recalls": 1, "reclaims": 1, "forks": 0}
    assert b.drain() == [grant(conn.id, "client", SEND, reclaimed=True),
                         recall(conn.id, "client", SEND)]
    assert c.drain() == []
    cr = conn_row(after, conn.id)
    assert cr["holders"]["client"] == sorted([b.pid, c.pid])
    assert cr["client_side"] == "open"          # others still hold the end
    assert not conn.cs.reader().eof
    assert counters(mon.status()) == counters(after)          # once, not again


def test_killed_queued_requester_is_never_granted(mon, conn, children):
    a, b, c = children
    conn.close_end("client")
    assert a.take() == [grant(conn.id, "client", SEND)]
    assert b.take() == []
    assert c.take() == []
    b.kill()
    st = mon.status()
    assert row(st, conn.id) == {"holder": a.pid, "queue": [c.pid], "recalled": True}
    before = counters(st)
    assert a.drain() == [recall(conn.id, "client", SEND)]
    assert a.release() == []
    assert c.drain() == [grant(conn.id, "client", SEND)]     # not reclaimed, no RECALL
    st = mon.status()
    assert row(st, conn.id) == {"holder": c.pid, "queue": [], "recalled": False}
    delta = {k: v - before[k] for k, v in counters(st).items()}
    assert delta == {"takes": 0, "grants": 1, "recalls": 0, "reclaims": 0, "forks": 0}


def test_closing_holder_is_reclaimed_and_its_releases_ignored(mon, conn, children):
    a, b, _ = children
    conn.close_end("client")
    assert a.take() == [grant(conn.id, "client", SEND)]
    assert b.take() == []
    assert a.call(do="close", id=conn.id, end="client") == {}
    assert b.drain() == [grant(conn.id, "client", SEND, reclaimed=True)]
    st = mon.status()
    assert row(st, conn.id) == {"holder": b.pid, "queue": [], "recalled": False}
    before = counters(st)
    assert a.drain() == [recall(conn.id, "client", SEND)]
    assert a.release() == [] and a.take() == []   # it holds no copy of the end any more
    st = mon.status()
    assert row(st, conn.id)["holder"] == b.pid
    assert counters(st) == before


def test_origin_leaving_a_shared_end_frees_its_tokens(mon, conn, children):
    """This process held the tokens implicitly (no row); its CLOSE reclaims them."""
    conn.sc.set_token_word("reader", os.getpid() << layout.TOKEN_SHIFT)   # an idle owner
    before = mon.status()
    conn.close_end("client")
    st = mon.status()
    assert row(st, conn.id, d=SEND) == row(st, conn.id, d=RECV) == {
        "holder": None, "queue": [], "recalled": False}
    assert st["counters"]["reclaims"] == before["counters"]["reclaims"] + 2
    assert conn.token_word("client", RECV) == 0


# -- CLOSE and death with several holders --------------------------------------------------
def test_close_by_one_holder_keeps_the_end_open_until_the_last(mon, conn, children):
    a, b, c = children
    conn.close_end("client")
    for kid in (a, b):
        assert kid.call(do="close", id=conn.id, end="client") == {}
        st = mon.status()
        assert conn_row(st, conn.id)["client_side"] == "open", kid.pid
    assert conn_row(st, conn.id)["holders"]["client"] == [c.pid]
    closed = st["counters"]["closed"]
    assert c.call(do="close", id=conn.id, end="client") == {}
    st = mon.status()
    cr = conn_row(st, conn.id)
    assert (cr["client_side"], cr["server_side"]) == ("closed", "open")
    assert cr["holders"] == {"client": [], "server": [os.getpid()]}
    assert [t for t in st["tokens"] if t["id"] == conn.id and t["end"] == "client"] == []
    conn.close_end("server")
    st = mon.status()
    assert conn_row(st, conn.id) is None
    assert st["counters"]["closed"] == closed + 1
    assert all(p["pid"] not in (a.pid, b.pid, c.pid) or p["connections"] == 0
               for p in st["processes"])


def test_death_of_the_last_holder_closes_the_end_for_it(mon, conn, children):
    conn.close_end("client")
    for kid in children[:2]:
        kid.kill()
        assert conn_row(mon.status(), conn.id)["client_side"] == "open"
        assert not conn.cs.reader().eof
    children[2].kill()
    st = mon.status()
    assert conn_row(st, conn.id)["client_side"] == "closed"
    assert conn.cs.reader().eof              # the peer sees EOF: closed on its behalf
    assert all(p["pid"] not in [k.pid for k in children] for p in st["processes"])


# -- malformed token messages --------------------------------------------------------------
BAD_BODIES = {
    "dir outside its choices": (P.TAKE, {"id": 1, "end": "client", "dir": "both"}),
    "end outside its choices": (P.RELEASE, {"id": 1, "end": "middle", "dir": "send"}),
    "missing dir": (P.TAKE, {"id": 1, "end": "client"}),
    "extra field": (P.TAKE, {"id": 1, "end": "client", "dir": "send", "pid": 1}),
    "string id": (P.RELEASE, {"id": "1", "end": "client", "dir": "send"}),
    "bool id": (P.TAKE, {"id": True, "end": "client", "dir": "send"}),
    "FORKED without ends": (P.FORKED, {}),
    "FORKED with a parent": (P.FORKED, {"parent": 1, "ends": []}),
    "FORKED ends not a list": (P.FORKED, {"ends": {"1": "client"}}),
    "GRANT reclaimed an int": (P.GRANT, {"id": 1, "end": "client", "dir": "send",
                                         "reclaimed": 1}),
}


def _raw(op: int, body: dict) -> bytes:
    data = json.dumps(body).encode()
    return P.HEADER.pack(P.MAGIC, P.VERSION, op, len(data)) + data


@pytest.mark.parametrize("op,body", BAD_BODIES.values(), ids=BAD_BODIES.keys())
def test_codec_refuses_malformed_token_messages(op, body):
    with pytest.raises(P.ProtocolError) as info:
        P.decode(_raw(op, body))
    assert not info.value.fatal
    with pytest.raises(P.ProtocolError):
        P.encode(op, body)


def test_malformed_token_messages_get_an_error_and_change_nothing(mon, conn, children):
    a = children[0]
    conn.close_end("client")
    assert a.take() == [grant(conn.id, "client", SEND)]
    before = mon.status()
    for name, (op, body) in BAD_BODIES.items():
        got = a.call(do="raw", packet=_raw(op, body).hex())
        assert len(got) == 1 and got[0][0] == "ERROR", name
        assert got[0][1]["errno"] == errno.EPROTO, name
    # Well-formed, but only the monitor sends these.
    for op, body in ((P.RECALL, tok(conn.id, "client", SEND)),
                     (P.GRANT, tok(conn.id, "client", RECV, reclaimed=False))):
        got = a.call(do="raw", packet=P.encode(op, body).hex())
        assert [g[0] for g in got] == ["ERROR"] and got[0][1]["errno"] == errno.EPROTO
    after = mon.status()
    n = len(BAD_BODIES) + 2
    assert after["counters"]["protocol_errors"] == before["counters"]["protocol_errors"] + n
    assert after["tokens"] == before["tokens"]
    assert counters(after) == counters(before)
    assert conn_row(after, conn.id)["holders"] == conn_row(before, conn.id)["holders"]


# -- what the operator sees ----------------------------------------------------------------
def test_ctl_status_shows_tokens_and_holders(mon, conn, children, capsys):
    from impl import ctl
    a, b, _ = children
    conn.close_end("client")
    assert a.take() == [grant(conn.id, "client", SEND)]
    assert b.take() == []
    assert ctl.main(["status", "--socket", mon.path]) == 0
    out = capsys.readouterr().out
    assert "TOKENS (2)" in out                 # our CLOSE made both rows of the end
    rows = {tuple(x.split()[:3]): x.split()[3:] for x in out.splitlines()}
    assert rows[(str(conn.id), "client", "send")] == [str(a.pid), str(b.pid), "yes"]
    assert rows[(str(conn.id), "client", "recv")] == ["-", "-", "no"]
    shared = "/".join([",".join(str(k.pid) for k in sorted(children, key=lambda k: k.pid)),
                       str(os.getpid())])
    assert any(x.split()[0] == str(conn.id) and x.split()[-1] == shared
               for x in out.splitlines() if x.strip())
    assert "tokens granted" in out and "tokens recalled from a holder" in out
    assert ctl.main(["status", "--json", "--socket", mon.path]) == 0
    st = json.loads(capsys.readouterr().out)
    assert row(st, conn.id) == {"holder": a.pid, "queue": [b.pid], "recalled": True}
    assert st["counts"]["tokens"] == 2
