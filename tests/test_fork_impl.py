"""impl/fork and the monitor's side of fork (Fork.tla; issue 5, item 3).

What is checked, against real monitors and real forked processes:

* the protocol: HOLD, FORKED and ACCEPTED refuse malformed lists, wrong
  descriptor counts (EINVAL) and proofs that do not match (EPERM), each with
  a message that says which, and change nothing when they refuse; CLOSE's
  old ``shared`` flag is accepted and ignored;
* per-process resources are never the parent's in a child (ResourceOwned);
* the monitor counts holders through the hold pipe: a daemonizing parent
  (fork, ``_exit(0)`` at once) leaves the end to its child; a child of a
  child is a holder; a child killed with its FORKED in flight leaves nothing
  behind and the peer sees EOF once the last holder is gone;
* a pre-fork pool: the child that accepts holds the end (tokens, death);
  a child's copy of the listener -- closed, or its epoll set changed --
  never disturbs the parent's;
* a fork while another thread is inside a long sendall: the child sends
  too, the peer gets every message whole, nothing hangs;
* STATUS and ``impl.ctl status`` show holders and hold pipes; once every
  holder has exited the monitor has no connection, no process and no extra
  descriptor left.

Every wait is bounded (socket timeouts, pipes and pidfds through
tests.proc_util.Child, wait_until); children are killed and reaped whatever
happens.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import select
import signal
import socket as stdsocket

import pytest

import impl
import impl.fork
from impl import sdsocket
from impl.monitor import client
from impl.monitor import protocol as P
from impl.token import agent
from tests.monitor_util import running_monitor
from tests.proc_util import Child as _Child
from tests.test_token_threads import (
    FRAME_RING,
    WAIT,
    Op,
    _ring_pair,
    check_frame,
    make_frame,
    needs_c,
    send_token,
    wait_until,
)

pytestmark = [pytest.mark.timeout(300)]

Child = functools.partial(_Child, wait=WAIT)


def wait_line(fd: int) -> bytes:
    """One short message from a child on *fd*, bounded by WAIT."""
    ready, _, _ = select.select([fd], [], [], WAIT)
    assert ready, "the child did not report in time"
    return os.read(fd, 1000)


def reaped(c) -> int:
    """Wait (bounded) for child *c*, which exits without a report, and return its exit code.

    For a child that forks and _exit()s at once: its daemon keeps the report
    pipe open, so Child.result() cannot be used.
    """
    c.done = True
    try:
        ready, _, _ = select.select([c._pidfd], [], [], WAIT)
        if not ready:
            os.kill(c.pid, signal.SIGKILL)
        _, status = os.waitpid(c.pid, 0)
    finally:
        os.close(c._pidfd)
        os.close(c._rfd)
    assert ready, f"child {c.pid} still running after {WAIT} s: killed"
    return os.waitstatus_to_exitcode(status)


def conn_row(status: dict, cid: int) -> dict | None:
    return next((c for c in status["connections"] if c["id"] == cid), None)


def pids_of(status: dict) -> set[int]:
    return {p["pid"] for p in status["processes"]}


# -- the protocol, raw ----------------------------------------------------------------------
class Raw:
    """A ring connection with itself through a private monitor, by raw requests.

    The server end stays queued (no ACCEPTED) until a test says so;
    ``newconn`` is the listener's NEWCONN push with its six descriptors.
    """

    def __init__(self, mon) -> None:
        self.closers = []
        path = os.path.join(os.path.dirname(mon.path), f"l-{os.urandom(4).hex()}.sock")
        self.lsock = stdsocket.socket(stdsocket.AF_UNIX, stdsocket.SOCK_STREAM)
        self.closers.append(self.lsock.close)
        self.lsock.bind(path)
        self.lsock.listen(4)
        self.lchan = self._chan(mon, "listener")
        self.lchan.request(P.LISTEN, {"family": "unix", "backlog": 4, "rcvbuf": 0,
                                      "sndbuf": 0}, [self.lsock.fileno()])
        self.pchan = self._chan(mon, "test")
        with stdsocket.socket(stdsocket.AF_UNIX, stdsocket.SOCK_STREAM) as csock:
            reply = self.pchan.request(P.CONNECT, {"family": "unix", "address": [path],
                                                   "rcvbuf": 0, "sndbuf": 0}, [csock.fileno()])
        self.closers.append(reply.close_fds)
        assert reply.body["route"] == "ring"
        self.id = reply.body["id"]
        self.newconn = self.lchan.receive(WAIT)
        self.closers.append(self.newconn.close_fds)
        assert self.newconn.op == P.NEWCONN and self.newconn.body["id"] == self.id
        self.client_fds = reply.fds

    def _chan(self, mon, role: str) -> client.ControlChannel:
        chan = client.ControlChannel.connect(mon.path, role=role, timeout=WAIT)
        self.closers.append(chan.close)
        return chan

    def pipe(self) -> tuple[int, int]:
        r, w = os.pipe()
        self.closers += [functools.partial(os.close, r), functools.partial(os.close, w)]
        return r, w

    def close(self) -> None:
        for fn in reversed(self.closers):
            fn()


@pytest.fixture
def raw():
    with running_monitor() as mon:
        r = Raw(mon)
        try:
            yield mon, r
        finally:
            r.close()
        assert mon.status()["counters"]["internal_errors"] == 0


def refused(chan: client.ControlChannel, op: int, body: dict, fds=()) -> OSError:
    """The OSError a request is refused with (AssertionError if it is answered OK)."""
    with pytest.raises(OSError) as info:
        chan.request(op, body, fds)
    return info.value


def test_accepted_needs_the_memfd_of_the_ring_it_reads(raw):
    mon, r = raw
    fds = r.newconn.fds          # the server end writes sc (fds 0..2) and reads cs (3..5)
    for proof in ((), (fds[0],), (r.lsock.fileno(),)):
        r.pchan.notify(P.ACCEPTED, {"id": r.id}, proof, check=True)
        r.pchan.request(P.PING)
        row = conn_row(mon.status(), r.id)
        assert row["server_side"] == "queued" and row["holders"]["server"] == [], proof
    assert mon.status()["counters"]["accepted"] == 0
    assert "ACCEPTED of connection" in mon.log_text()
    r.pchan.notify(P.ACCEPTED, {"id": r.id}, [fds[3]], check=True)
    r.pchan.request(P.PING)
    st = mon.status()
    row = conn_row(st, r.id)
    assert (row["server_side"], row["holders"]["server"], row["server"]) == \
        ("open", [os.getpid()], os.getpid())
    assert st["counters"]["accepted"] == 1
    assert st["listeners"][0]["queued"] == 0


def test_hold_refuses_what_it_cannot_count(raw):
    mon, r = raw
    cid = r.id
    rd, wr = r.pipe()
    cases = [
        ({"ends": []}, [], errno.EINVAL, "empty"),
        ({"ends": [[cid, "both"]]}, [rd], errno.EINVAL, "must be [[id"),
        ({"ends": [[cid, "client"]]}, [], errno.EINVAL, "carries 0 descriptors"),
        ({"ends": [[cid, "client"]]}, [rd, rd], errno.EINVAL, "carries 2 descriptors"),
        ({"ends": [[cid, "client"]]}, [wr], errno.EINVAL, "not the read end of a pipe"),
        ({"ends": [[cid, "client"]]}, [r.lsock.fileno()], errno.EINVAL, "not the read end"),
        ({"ends": [[cid + 1, "client"]]}, [rd], errno.EPERM, "no open client end"),
        # Queued: nobody holds the server end until ACCEPTED.
        ({"ends": [[cid, "server"]]}, [rd], errno.EPERM, "no open server end"),
        ({"ends": [[cid, "client"], [cid, "server"]]}, [rd, rd], errno.EPERM, "server end"),
    ]
    for body, fds, code, words in cases:
        exc = refused(r.pchan, P.HOLD, body, fds)
        assert (exc.errno, words in exc.strerror) == (code, True), (body, exc)
    st = mon.status()
    assert st["counts"]["hold_pipes"] == 0
    assert conn_row(st, cid)["hold"] == {"client": "none", "server": "none"}
    # A process that does not hold the end may not give it a pipe.
    def stranger() -> int:
        chan = client.ControlChannel.connect(mon.path, role="stranger", timeout=WAIT)
        try:
            return refused(chan, P.HOLD, {"ends": [[cid, "client"]]}, [rd]).errno
        finally:
            chan.close()
    assert Child(stranger).result() == errno.EPERM
    # The holder may; a second pipe for the same end is not taken.
    assert r.pchan.request(P.HOLD, {"ends": [[cid, "client"]]}, [rd]).body == {"ends": 1}
    rd2, _ = r.pipe()
    assert r.pchan.request(P.HOLD, {"ends": [[cid, "client"]]}, [rd2]).body == {"ends": 0}
    st = mon.status()
    assert st["counts"]["hold_pipes"] == 1
    assert conn_row(st, cid)["hold"] == {"client": "watched", "server": "none"}


def test_forked_refuses_a_wrong_proof_and_close_ignores_shared(raw):
    mon, r = raw
    cid = r.id
    rd, wr = r.pipe()
    other_r, other_w = r.pipe()
    assert r.pchan.request(P.HOLD, {"ends": [[cid, "client"]]}, [rd]).body == {"ends": 1}
    for fds, code, words in (([rd], errno.EPERM, "not the write end"),
                             ([other_w], errno.EPERM, "not the write end"),
                             ([other_r], errno.EPERM, "not the write end"),
                             ([], errno.EINVAL, "names 1 ends but carries 0")):
        exc = refused(r.pchan, P.FORKED, {"ends": [[cid, "client"]]}, fds)
        assert (exc.errno, words in exc.strerror) == (code, True), exc
    exc = refused(r.pchan, P.FORKED, {"ends": [[cid, "server"]]}, [wr])
    assert exc.errno == errno.EPERM and "no open server end" in exc.strerror
    assert mon.status()["counters"]["forks"] == 0
    assert r.pchan.request(P.FORKED, {"ends": [[cid, "client"]]}, [wr]).body == {"ends": 1}
    # CLOSE "shared" (version 2) is ignored: with a copy of the write end still
    # open here, the end stays open; once it is closed, the end closes.
    r.pchan.notify(P.CLOSE, {"id": cid, "end": "client", "shared": False}, check=True)
    r.pchan.request(P.PING)
    row = conn_row(mon.status(), cid)
    assert (row["client_side"], row["holders"]["client"], row["hold"]["client"]) == \
        ("open", [], "watched")
    r.closers.remove(next(f for f in r.closers if getattr(f, "args", None) == (wr,)))
    os.close(wr)
    wait_until(lambda: conn_row(mon.status(), cid)["client_side"] == "closed",
               "the end closed when its hold pipe said nobody holds it")


def test_version_3_speaks_hold():
    assert P.VERSION == 4 and P.OP_NAMES[P.HOLD] == "HOLD"
    assert P.decode(P.encode(P.FORKED, {"ends": [[1, "client"]]})).body == \
        {"ends": [[1, "client"]]}
    with pytest.raises(P.ProtocolError):
        P.encode(P.FORKED, {"parent": 1, "ends": []})     # version 2's field is gone


# -- per-process resources ----------------------------------------------------------------
@needs_c
def test_a_childs_resources_are_never_its_parents(monitor):
    socks, cli, conn = _ring_pair(FRAME_RING)
    try:
        cli.sendall(b"x")
        agent.ensure()
        mine = impl.fork.resources()
        assert mine == {"control-channel": os.getpid(), "token-agent": os.getpid()}

        def child():
            first = impl.fork.resources()     # FORKED made the channel; no agent yet
            cli.sendall(b"y")                 # TAKE: the agent is made now
            return [first, impl.fork.resources(), os.getpid()]

        first, later, pid = Child(child).result()
        assert first == {"control-channel": pid, "token-agent": None}
        assert later == {"control-channel": pid, "token-agent": pid}
        conn.settimeout(WAIT)
        assert conn.recv(2, stdsocket.MSG_WAITALL) == b"xy"
        assert impl.fork.resources() == mine
    finally:
        for s in socks:
            s.close()


def test_per_process_resource_is_made_anew_in_a_child_and_never_closed_there():
    made, closed, orphaned = [], [], []

    def factory():
        made.append(os.getpid())
        return object()

    res = impl.fork.PerProcess(f"test-{os.urandom(4).hex()}", factory,
                               close=closed.append, orphan=orphaned.append)
    try:
        with pytest.raises(ValueError):
            impl.fork.PerProcess(res.name, factory)
        parents = res.get()
        assert res.get() is parents and res.owner == os.getpid()
        assert impl.fork.resources()[res.name] == os.getpid()

        def child():
            before = impl.fork.resources()[res.name]
            theirs = res.get()
            return [before, len(orphaned), theirs is not parents, res.owner == os.getpid(),
                    len(closed)]

        assert Child(child).result() == [None, 1, True, True, 0]
        assert orphaned == [] and closed == [] and res.get() is parents
        res.forget()
        assert closed == [parents] and res.owner is None
        assert res.get() is not parents and made == [os.getpid()] * 2
    finally:
        res.forget()
        del impl.fork._registry[res.name]


# -- the kernel's count of holders ----------------------------------------------------------
@needs_c
def test_holders_are_listed_per_end_and_the_hold_pipe_watched(monitor, capsys):
    socks, cli, conn = _ring_pair(FRAME_RING)
    r, w = os.pipe()
    go_r, go_w = os.pipe()
    try:
        cid = cli._conn.cid
        assert impl.fork.holders(cli) == [os.getpid()]
        assert conn_row(monitor.status(), cid)["hold"] == {"client": "none", "server": "none"}

        def child():
            os.write(w, b"r")
            wait_line(go_r)
            return True

        c = Child(child)
        try:
            assert wait_line(r) == b"r"
            assert impl.fork.holders(cli) == sorted([os.getpid(), c.pid])
            assert impl.fork.holders(conn) == sorted([os.getpid(), c.pid])
            st = monitor.status()
            assert conn_row(st, cid)["hold"] == {"client": "watched", "server": "watched"}
            from impl import ctl
            assert ctl.main(["status", "--socket", monitor.path]) == 0
            line = next(x for x in capsys.readouterr().out.splitlines()
                        if x.split()[:1] == [str(cid)])
            assert "watched/watched" in line.split()
            os.write(go_w, b"g")
            assert c.result() is True
        finally:
            if not c.done:
                c.kill()
        wait_until(lambda: impl.fork.holders(cli) == [os.getpid()], "the child left")
    finally:
        for fd in (r, w, go_r, go_w):
            os.close(fd)
        for s in socks:
            s.close()


@needs_c
def test_daemonizing_parent_leaves_the_end_to_its_child(monitor, monkeypatch):
    """fork, the parent _exit(0)s at once, the child goes on with the socket.

    Here the "parent" is a child A of the test, the daemon its child D; the
    test closes its own copy of the server end right away too.  D's FORKED
    is held back until the monitor has seen A die and our CLOSE: then no
    registered holder is left, and only the hold pipe (D's copy) says that
    the end is still held.  D's FORKED is taken although its parent is gone.
    """
    socks, cli, conn = _ring_pair(FRAME_RING)
    r, w = os.pipe()
    go_r, go_w = os.pipe()
    me = os.getpid()
    real = agent.register_child
    try:
        cid = cli._conn.cid

        def register_late(ends, proofs):       # in the fork hook of A, then of D
            if os.getppid() != me:             # D: once A is gone
                wait_line(go_r)
            real(ends, proofs)

        def daemonize():
            cli.close()
            if os.fork():
                os._exit(0)                    # at once, nothing closed
            try:                               # the daemon
                os.write(w, str(os.getpid()).encode())
                conn.settimeout(WAIT)          # a daemon must not outlive a failed test
                data = conn.recv(4, stdsocket.MSG_WAITALL)
                conn.sendall(data.upper())
            finally:
                os._exit(0)

        monkeypatch.setattr(agent, "register_child", register_late)
        a = Child(daemonize)
        monkeypatch.undo()
        conn.close()
        assert reaped(a) == 0
        client.request(P.PING)                 # our CLOSE is in
        wait_until(lambda: a.pid not in pids_of(monitor.status()), "the monitor saw A die")
        row = conn_row(monitor.status(), cid)
        assert (row["server_side"], row["holders"]["server"], row["hold"]["server"]) == \
            ("open", [], "watched")
        os.write(go_w, b"g")
        daemon = int(wait_line(r))
        assert impl.fork.holders(cli) == [me]  # the client end; the server end is D's:
        assert conn_row(monitor.status(), cid)["holders"]["server"] == [daemon]
        cli.settimeout(WAIT)
        cli.sendall(b"ping")
        assert cli.recv(4, stdsocket.MSG_WAITALL) == b"PING"
        assert cli.recv(1) == b""              # the daemon exited: EOF
        st = monitor.status()
        assert conn_row(st, cid)["server_side"] == "closed"
        assert not {a.pid, daemon} & pids_of(st)
    finally:
        for fd in (r, w, go_r, go_w):
            os.close(fd)
        for s in socks:
            s.close()


@needs_c
def test_a_child_of_a_child_holds_and_sends(monitor):
    socks, cli, conn = _ring_pair(FRAME_RING)
    r, w = os.pipe()
    go_r, go_w = os.pipe()
    try:
        def grandchild():
            cli.sendall(b"from the grandchild")
            os.write(w, str(os.getpid()).encode())
            wait_line(go_r)
            return True

        def child():
            return Child(grandchild).result()

        c = Child(child)
        g = int(wait_line(r))
        assert g != c.pid
        assert set(impl.fork.holders(cli)) == {os.getpid(), c.pid, g}
        conn.settimeout(WAIT)
        assert conn.recv(19, stdsocket.MSG_WAITALL) == b"from the grandchild"
        os.write(go_w, b"g")
        assert c.result() is True
        wait_until(lambda: impl.fork.holders(cli) == [os.getpid()], "both left")
    finally:
        for fd in (r, w, go_r, go_w):
            os.close(fd)
        for s in socks:
            s.close()


@needs_c
def test_child_killed_with_its_forked_in_flight_leaves_nothing(monitor, monkeypatch):
    """The child's FORKED is in the monitor's queue when it dies: Fork!Register of a dead one.

    The monitor is stopped (SIGSTOP) while the child sends FORKED and is
    killed, and while the parent closes its copy: when the monitor runs
    again it finds the FORKED (its descriptor keeps the hold pipe open),
    the death and the CLOSE in some order.  Whatever the order, the peer
    sees EOF and nothing of the child stays.
    """
    socks, cli, conn = _ring_pair(FRAME_RING)
    r, w = os.pipe()
    go_r, go_w = os.pipe()
    stopped = False
    try:
        cid = cli._conn.cid

        def register_later(ends, proofs):     # runs in the child's fork hook
            chan = client.channel()
            os.write(w, b"c")
            wait_line(go_r)
            P.send_msg(chan.sock, P.FORKED, {"ends": ends}, proofs)
            os.write(w, b"s")
            select.select([go_r], [], [], WAIT)   # killed here

        monkeypatch.setattr(agent, "register_child", register_later)
        c = Child(lambda: None)
        monkeypatch.undo()
        assert wait_line(r) == b"c"
        os.kill(monitor.pid, signal.SIGSTOP)
        stopped = True
        os.write(go_w, b"g")
        assert wait_line(r) == b"s"
        c.kill()
        conn.close()                          # our copy: the child was the other holder
        os.kill(monitor.pid, signal.SIGCONT)
        stopped = False
        cli.settimeout(WAIT)
        assert cli.recv(1) == b""             # no holder left: EOF
        st = monitor.status()
        assert conn_row(st, cid)["server_side"] == "closed"
        assert c.pid not in pids_of(st)
    finally:
        if stopped:
            os.kill(monitor.pid, signal.SIGCONT)
        for fd in (r, w, go_r, go_w):
            os.close(fd)
        for s in socks:
            s.close()


# -- listeners after fork -------------------------------------------------------------------
def _listener():
    srv = impl.socket(stdsocket.AF_INET, stdsocket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    assert srv.transport == "listener"
    return srv


@needs_c
def test_prefork_pool_child_that_accepts_holds_the_end(monitor):
    """Children accept on one inherited listener; each connection is its acceptor's.

    The parent closes its copy of the listener first: it stays registered
    (the children hold it).  Killing an acceptor closes its connection for
    the peer -- the monitor attributed the end to the acceptor, not to the
    listener's maker, which is alive.
    """
    srv = _listener()
    addr = srv.getsockname()
    r, w = os.pipe()
    go_r, go_w = os.pipe()
    kids, clients = [], []
    try:
        def worker():
            s, _ = srv.accept()
            s.settimeout(WAIT)
            os.write(w, json.dumps([os.getpid(), s._conn.cid]).encode() + b"\n")
            data = s.recv(4, stdsocket.MSG_WAITALL)
            s.sendall(data.upper())
            wait_line(go_r)

        srv.settimeout(WAIT)
        kids = [Child(worker) for _ in range(2)]
        srv.close()
        for _ in kids:
            c = impl.create_connection(addr, timeout=WAIT)
            clients.append(c)
            assert c.transport == "ring"
        reports = b""
        while reports.count(b"\n") < 2:
            reports += wait_line(r)
        acceptor = {cid: pid for pid, cid in map(json.loads, reports.splitlines())}
        assert set(acceptor.values()) == {k.pid for k in kids}
        st = monitor.status()
        for c in clients:
            row = conn_row(st, c._conn.cid)
            pid = acceptor[c._conn.cid]
            assert (row["server"], row["holders"]["server"], row["server_side"]) == \
                (pid, [pid], "open")
        for c in clients:
            c.sendall(b"ping")
            assert c.recv(4, stdsocket.MSG_WAITALL) == b"PING"
        victim = next(k for k in kids if k.pid == acceptor[clients[0]._conn.cid])
        victim.kill()
        assert clients[0].recv(1) == b""      # closed for it, by the monitor
        assert conn_row(monitor.status(), clients[1]._conn.cid)["server_side"] == "open"
        os.write(go_w, b"g")
        for k in kids:
            if not k.done:
                assert k.result() is None
    finally:
        for k in kids:
            if not k.done:
                k.kill()
        for c in clients:
            c.close()
        srv.close()
        for fd in (r, w, go_r, go_w):
            os.close(fd)


def test_a_childs_copy_of_the_listener_never_disturbs_the_parents(monitor):
    """A child closes its copy, or changes its epoll set as _lost would: the parent's works."""
    srv = _listener()
    try:
        def child():
            lst = srv._lst
            lst.epoll.unregister(lst.chan.sock.fileno())   # what _lost does first
            lst.epoll.unregister(lst.ksock.fileno())
            srv.close()
            return True

        assert Child(child).result() is True
        with impl.create_connection(srv.getsockname(), timeout=WAIT) as cli:
            assert cli.transport == "ring"
            ready, _, _ = select.select([srv], [], [], WAIT)   # the NEWCONN is there already
            assert ready == [srv], "the parent's listener is not readable"
            srv.settimeout(WAIT)
            s, _ = srv.accept()
            with s:
                assert s.transport == "ring"
                cli.sendall(b"hi")
                s.settimeout(WAIT)
                assert s.recv(2, stdsocket.MSG_WAITALL) == b"hi"
    finally:
        srv.close()


# -- fork while another thread sends ---------------------------------------------------------
@needs_c
def test_fork_while_a_thread_is_inside_sendall(monitor):
    """A thread sends frames three rings long; the main thread forks children meanwhile.

    Each fork lands while that thread is BUSY inside sendall (locks and
    token held); each child sends frames of its own and exits.  The peer
    gets every frame whole and in each sender's order; nothing hangs.
    """
    size, count, forks = 3 * FRAME_RING + 100, 12, 3
    socks, cli, conn = _ring_pair(FRAME_RING)
    try:
        st = send_token(cli)
        total = count * (1 + forks)

        def read() -> list[tuple[int, int]]:
            got = []
            while len(got) < total:
                got.append(check_frame(conn.recv(size, stdsocket.MSG_WAITALL), size,
                                       1 + forks, count))
            return got

        def send(sender: int) -> None:
            for seq in range(count):
                cli.sendall(make_frame(sender, seq, size))

        reader = Op(read)
        sender = Op(send, 0)
        kids = []
        try:
            for i in range(1, forks + 1):
                wait_until(lambda: st.word()[2] or sender.done.is_set(),
                           "the sending thread is BUSY")
                kids.append(Child(functools.partial(send, i)))
            sender.outcome()
            for k in kids:
                assert k.result() is None
            got = reader.outcome()
        finally:
            for k in kids:
                if not k.done:
                    k.kill()
        for s in range(1 + forks):
            assert [q for (who, q) in got if who == s] == list(range(count)), s
    finally:
        for s in socks:
            s.close()


# -- nothing left behind --------------------------------------------------------------------
def _monitor_fds(mon) -> tuple[int, int]:
    """The monitor's descriptors: as its STATUS counts them (after topping its ring pool
    up, with the asking channel open), and in /proc after it answered."""
    fds = mon.status()["monitor"]["fds"]
    return fds, len(os.listdir(f"/proc/{mon.pid}/fd"))


@needs_c
def test_no_monitor_state_left_once_every_holder_exits():
    """A process forks, daemonizes, has children killed and exits without closing anything.

    Afterwards the monitor has no connection and no process but the asker,
    and as many descriptors as before: hold pipes, rings, channels and
    pidfds all went.
    """
    with running_monitor() as mon:
        base_fds = _monitor_fds(mon)

        def scenario():
            srv = _listener()
            cli = impl.create_connection(srv.getsockname(), timeout=WAIT)
            srv.settimeout(WAIT)
            conn, _ = srv.accept()
            r, w = os.pipe()

            def sends():
                cli.sendall(b"1")

            def idles():
                os.write(w, b"i")
                select.select([], [], [], WAIT)

            def daemonizes():
                if os.fork():
                    os._exit(0)
                try:
                    cli.sendall(b"2")
                finally:
                    os._exit(0)

            assert Child(sends).result() is None
            killed = Child(idles)
            assert wait_line(r) == b"i"
            killed.kill()
            assert reaped(Child(daemonizes)) == 0
            conn.settimeout(WAIT)
            assert conn.recv(2, stdsocket.MSG_WAITALL) == b"12"
            return [cli._conn.cid]          # exits with every socket open

        cids = Child(scenario).result()
        me = os.getpid()

        def clean() -> bool:
            st = mon.status()
            others = [p for p in st["processes"] if p["pid"] != me]
            return (not st["connections"] and not st["listeners"] and not others
                    and st["counts"]["hold_pipes"] == 0)

        wait_until(clean, "the monitor forgot every connection and process")
        st = mon.status()
        assert st["counters"]["forks"] >= 3 and not any(conn_row(st, c) for c in cids)
        wait_until(lambda: _monitor_fds(mon) == base_fds,
                   "the monitor's descriptors are back to where they were")


def test_hooks_live_in_impl_fork():
    """sdsocket keeps the socket side; the at-fork hooks are impl.fork's."""
    assert not hasattr(sdsocket, "_before_fork") and not hasattr(sdsocket, "_after_fork_in_child")
    assert callable(sdsocket._prepare_fork) and callable(sdsocket._forked_child)
    assert {"control-channel", "token-agent"} <= set(impl.fork.resources())
