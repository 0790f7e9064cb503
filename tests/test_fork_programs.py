"""Real forking programs on impl sockets (issue 5, item 5; spec/tla/Fork.tla).

Unmodified servers fork: socketserver.ForkingTCPServer (accept in the
parent, handle in a child, the parent closes its copy), pre-fork pools
(N children accept on one inherited listener), multiprocessing with the
fork start method (a connected socket handed to a Process), daemons (the
parent exits at once).  Each test runs such a program against a private
monitor and checks what Fork.tla promises:

* every byte arrives, in order, over rings (``transport_of`` is "ring");
* the peer sees EOF only when the last holder closed or died
  (PeerClosedOnlyWhenUnheld), and then within a bounded wait (UnheldCloses);
* the monitor lists the process that holds an end (MonitorKnowsHolders),
  including a pool child that accepted it (the contract's ACCEPTED);
* nothing is left once the program is gone: no connection or process in
  the monitor's STATUS, the monitor's descriptor count back to what it was,
  no new /dev/shm entries (DeadReaped, UnheldCloses).

Why each program runs in a forked *driver* process (tests.proc_util.Child)
rather than in pytest's own: the test process then never holds a channel,
agent or ring of the private monitor, so "back to the baseline" is exact --
the monitor's descriptor count before the driver started and after it
exited must be equal, whatever the library keeps per process.

Every wait is bounded (socket timeouts, select on pipes and pidfds, the
drivers' Child.wait); no sleep stands in for synchronisation.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import select
import signal
import socket as stdsocket
import socketserver
import threading
import time

import pytest

import impl
from impl.monitor import client
from impl.monitor import protocol as P
from tests.monitor_util import running_monitor
from tests.proc_util import Child as _Child

pytestmark = [pytest.mark.timeout(400)]

#: Bound on any one wait; only a hang reaches it.
WAIT = 60.0
#: Bound on the wait for EOF after a holder was killed (a hang shows as a failure sooner).
EOF_WAIT = 20.0

Child = functools.partial(_Child, wait=WAIT * 3)


# -- helpers -------------------------------------------------------------------------------
def wait_until(pred, what: str, timeout: float = WAIT):
    """Poll *pred()* until it returns a true value (bounded); return that value."""
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"still not so after {timeout} s: {what}")
        time.sleep(0.01)


def wait_readable(fd: int, what: str, timeout: float = WAIT) -> None:
    """Wait (bounded) until *fd* is readable."""
    ready, _, _ = select.select([fd], [], [], timeout)
    if not ready:
        raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def recv_line(sock, limit: int = 1 << 16) -> bytes:
    """Read one b"\\n"-terminated line from *sock* (its timeout bounds each call)."""
    buf = b""
    while not buf.endswith(b"\n"):
        piece = sock.recv(1)
        if not piece:
            raise EOFError(f"EOF after {buf!r}")
        buf += piece
        if len(buf) > limit:
            raise AssertionError("line too long")
    return buf


def recv_eof(sock, timeout: float) -> bytes:
    """Read until EOF or ECONNRESET within *timeout*; return the bytes that came first."""
    sock.settimeout(timeout)
    got = b""
    while True:
        try:
            piece = sock.recv(1 << 16)
        except ConnectionResetError:
            return got
        if not piece:
            return got
        got += piece


def shm_entries() -> set[str]:
    """Names in /dev/shm (the rings are memfds and must never appear there)."""
    try:
        return set(os.listdir("/dev/shm"))
    except FileNotFoundError:
        return set()


def holders(mon, cid: int) -> dict[str, list[int]] | None:
    """The monitor's holders of connection *cid* by end, None if it has no such connection."""
    for row in mon.status()["connections"]:
        if row["id"] == cid:
            return row["holders"]
    return None


def others(st: dict) -> set[int]:
    """The pids STATUS lists, less the asker (its STATUS channel makes it a process)."""
    return {p["pid"] for p in st["processes"]} - {os.getpid()}


class Clean:
    """The monitor's state before a program: compare with it after (bounded polling)."""

    def __init__(self, mon) -> None:
        self.mon = mon
        st = mon.status()
        assert st["counts"]["connections"] == 0 and not others(st), st
        self.fds = st["monitor"]["fds"]
        self.shm = shm_entries()

    def check(self) -> None:
        """Wait (bounded) until the monitor is back to where it was; fail saying what differs."""
        last = {}

        def settled() -> bool:
            st = self.mon.status()
            last["st"] = st
            return (st["counts"]["connections"] == 0 and not others(st)
                    and st["counts"]["listeners"] == 0 and st["counts"]["tokens"] == 0
                    and st["monitor"]["fds"] == self.fds)

        try:
            wait_until(settled, "the monitor back to its state before the program")
        except AssertionError:
            st = last["st"]
            pytest.fail(f"monitor not clean: fds {st['monitor']['fds']} (was {self.fds}), "
                        f"counts {st['counts']}, connections {st['connections']}, "
                        f"processes {st['processes']}")
        assert shm_entries() == self.shm, "new /dev/shm entries"


@pytest.fixture
def mon():
    """A private monitor for the test (this process's library points at it meanwhile)."""
    with running_monitor() as m:
        yield m


@pytest.fixture
def clean(mon):
    """The monitor's state now; checked after the test's program ran."""
    c = Clean(mon)
    yield c


def listen_impl(backlog: int = 128):
    """An impl listener on 127.0.0.1 (ephemeral port); returns (socket, address)."""
    srv = impl.socket(stdsocket.AF_INET, stdsocket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(backlog)
    assert impl.transport_of(srv) == "listener"
    return srv, srv.getsockname()


def connect_impl(addr):
    """An impl client connected to *addr* over rings (asserted)."""
    sock = impl.create_connection(addr, timeout=WAIT)
    assert impl.transport_of(sock) == "ring", sock
    return sock


# -- 1. socketserver.ForkingTCPServer -------------------------------------------------------
class ImplForkingTCPServer(socketserver.ForkingTCPServer):
    """ForkingTCPServer whose listening socket is an impl socket.

    The least hacky way in: TCPServer.__init__ with bind_and_activate=False
    only makes a socket.socket; we replace it by an impl.socket of the same
    family and type and then bind and activate as TCPServer would.  No
    module attribute is patched; everything else (accept, fork, the parent's
    close_request, the child's shutdown_request, collect_children) is
    socketserver's own code.
    """

    allow_reuse_address = True
    # TCPServer's default of 5 is below the clients' concurrency: connections
    # beyond the backlog the monitor routes to the kernel (by design, like a
    # full accept queue), and this test wants every one on rings.
    request_queue_size = 64

    def __init__(self, address, handler) -> None:
        super().__init__(address, handler, bind_and_activate=False)
        self.socket.close()
        self.socket = impl.socket(self.address_family, self.socket_type)
        try:
            self.server_bind()
            self.server_activate()
        except BaseException:
            self.server_close()
            raise


class EchoHandler(socketserver.StreamRequestHandler):
    """One line in, one line out: "<pid> <transport> <line reversed>"."""

    def handle(self) -> None:
        self.request.settimeout(WAIT)
        line = self.rfile.readline().rstrip(b"\n")
        out = b"%d %s %s\n" % (os.getpid(), impl.transport_of(self.request).encode(),
                              line[::-1])
        self.wfile.write(out)


def _forking_server(port_w: int, stop_r: int, stop_w: int,
                    cls: type = ImplForkingTCPServer) -> dict:
    """Serve until *stop_r* is readable; report what happened (in a child).

    Our inherited copy of *stop_w* is closed first: then the driver's exit
    (a failed assertion) also stops us, at once, not after the stopper's bound.
    """
    os.close(stop_w)
    srv = cls(("127.0.0.1", 0), EchoHandler)
    assert impl.transport_of(srv.socket) == "listener"
    os.write(port_w, b"%d\n" % srv.server_address[1])

    def stopper() -> None:
        select.select([stop_r], [], [], WAIT * 3)
        srv.shutdown()

    t = threading.Thread(target=stopper, daemon=True)
    t.start()
    srv.serve_forever(poll_interval=0.05)
    srv.server_close()          # block_on_close: waits for every child
    t.join(WAIT)
    return {"active": sorted(srv.active_children or ())}


class ForkingServerRun:
    """A forking server child of the driver: start, address, stop."""

    def __init__(self, cls: type = ImplForkingTCPServer) -> None:
        port_r, port_w = os.pipe()
        stop_r, self.stop_w = os.pipe()
        self.child = Child(functools.partial(_forking_server, port_w, stop_r, self.stop_w, cls))
        os.close(port_w)
        os.close(stop_r)
        try:
            wait_readable(port_r, "the server's port")
            self.addr = ("127.0.0.1", int(os.read(port_r, 100)))
        finally:
            os.close(port_r)

    @property
    def pid(self) -> int:
        return self.child.pid

    def wait_handlers_gone(self, mon) -> None:
        """Every handler child gone from the monitor; only the server (and we) left."""
        me = os.getpid()

        def only_server() -> bool:
            st = mon.status()
            procs = {p["pid"] for p in st["processes"]}
            return (st["counts"]["connections"] == 0 and procs <= {self.pid, me}
                    and self.pid in procs and st["counts"]["listeners"] == 1)

        wait_until(only_server, "no connections and no handler process in STATUS")

    def stop(self) -> dict:
        """Stop the server; return its report (children left unreaped)."""
        os.write(self.stop_w, b"x")
        os.close(self.stop_w)
        return self.child.result()


REQUESTS = 200
CLIENT_THREADS = 8


def test_forking_tcp_server_serves_200_concurrent_requests(mon, clean):
    def driver() -> int:
        server = ForkingServerRun()
        addr = server.addr
        results: dict[bytes, bytes] = {}
        errors: list[BaseException] = []

        def client_thread(k: int) -> None:
            try:
                for i in range(k, REQUESTS, CLIENT_THREADS):
                    payload = b"req-%03d-%s" % (i, os.urandom(8).hex().encode())
                    with connect_impl(addr) as s:
                        s.sendall(payload + b"\n")
                        results[payload] = recv_line(s)
                        assert s.recv(100) == b""   # the handler's child closed
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=client_thread, args=(k,))
                   for k in range(CLIENT_THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(WAIT * 3)
        assert not any(t.is_alive() for t in threads), "a client thread hangs"
        assert not errors, repr(errors[:3])
        assert len(results) == REQUESTS
        pids = set()
        for payload, line in results.items():
            pid, transport, back = line.rstrip(b"\n").split(b" ", 2)
            assert transport == b"ring"
            assert back == payload[::-1], (payload, line)
            pids.add(int(pid))
        # Each request was handled in a child of its own (ForkingMixIn).
        assert len(pids) == REQUESTS and server.pid not in pids
        server.wait_handlers_gone(mon)
        report = server.stop()
        assert report["active"] == [], "children not reaped"
        return len(pids)

    assert Child(driver).result() == REQUESTS
    clean.check()


class DefaultQueueForkingServer(ImplForkingTCPServer):
    """ImplForkingTCPServer with socketserver's own request_queue_size (5)."""

    request_queue_size = socketserver.TCPServer.request_queue_size


def _exchange(sock, payload: bytes) -> tuple[str, bytes]:
    """Send one request line on *sock*, check the echo and the EOF after it.

    Returns (the handler's transport, the handler's pid as bytes).
    """
    sock.sendall(payload + b"\n")
    pid, transport, back = recv_line(sock).rstrip(b"\n").split(b" ", 2)
    assert back == payload[::-1], (payload, back)
    assert sock.recv(100) == b""        # the handler's child closed
    return transport.decode(), pid


def test_forking_tcp_server_default_queue_mixes_ring_and_kernel(mon, clean):
    """request_queue_size 5 under 8 concurrent clients: ring and kernel routes, all served.

    Beyond the listener's backlog the monitor routes a connect to the
    kernel's listening socket (Connect.tla; counter backlog_full).  The
    server's accept() takes both kinds from one epoll set and ForkingMixIn
    forks for each, so every request is answered, and each end agrees on
    the transport.  First deterministically (the server stopped while
    backlog + 3 clients connect: exactly backlog rings, then kernel), then
    200 requests from 8 threads.
    """
    queue = DefaultQueueForkingServer.request_queue_size
    assert queue < CLIENT_THREADS, "the point is a queue smaller than the concurrency"

    def driver() -> dict:
        server = ForkingServerRun(DefaultQueueForkingServer)
        before = mon.status()["counters"]["backlog_full"]
        kernel = 0
        # Phase 1: nothing is accepted while the server is stopped.
        os.kill(server.pid, signal.SIGSTOP)
        try:
            socks = [impl.create_connection(server.addr, timeout=WAIT)
                     for _ in range(queue + 3)]
        finally:
            os.kill(server.pid, signal.SIGCONT)
        routes = [impl.transport_of(s) for s in socks]
        assert routes == ["ring"] * queue + ["kernel"] * 3, routes
        for i, s in enumerate(socks):
            with s:
                s.settimeout(WAIT)
                assert _exchange(s, b"stopped-%d" % i)[0] == routes[i]
        kernel += 3

        # Phase 2: the load of test 1 with socketserver's queue size.
        seen: dict[bytes, tuple[str, str]] = {}
        errors: list[BaseException] = []

        def client_thread(k: int) -> None:
            try:
                for i in range(k, REQUESTS, CLIENT_THREADS):
                    payload = b"mix-%03d-%s" % (i, os.urandom(8).hex().encode())
                    with impl.create_connection(server.addr, timeout=WAIT) as s:
                        mine = impl.transport_of(s)
                        seen[payload] = (mine, _exchange(s, payload)[0])
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=client_thread, args=(k,))
                   for k in range(CLIENT_THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(WAIT * 3)
        assert not any(t.is_alive() for t in threads), "a client thread hangs"
        assert not errors, repr(errors[:3])
        assert len(seen) == REQUESTS
        disagree = {p: v for p, v in seen.items() if v[0] != v[1]}
        assert not disagree, f"(client, handler) transports differ: {disagree}"
        assert {v[0] for v in seen.values()} <= {"ring", "kernel"}
        kernel += sum(v[0] == "kernel" for v in seen.values())
        # Each kernel connection is one the monitor sent there for a full backlog.
        assert mon.status()["counters"]["backlog_full"] - before == kernel
        server.wait_handlers_gone(mon)
        report = server.stop()
        assert report["active"] == [], "children not reaped"
        return {"kernel": kernel}

    got = Child(driver).result()
    assert got["kernel"] >= 3
    clean.check()


# -- 2. a pre-fork pool ---------------------------------------------------------------------
POOL = 3
POOL_CONNS = 60


def _pool_worker(lst, stop_r: int, report_w: int) -> int:
    """Accept on the inherited listener until *stop_r* is readable; return how many served.

    A request b"HOLD\\n" is answered with our pid and the connection kept
    open (never read again) for the test to look at or to kill us over.
    """
    kept = []
    served = 0
    me = os.getpid()
    while True:
        ready, _, _ = select.select([lst, stop_r], [], [], WAIT * 3)
        assert ready, "worker: nothing to do for too long"
        if stop_r in ready:
            break
        try:
            conn, _ = lst.accept()
        except (BlockingIOError, TimeoutError):
            continue    # another worker took it
        conn.settimeout(WAIT)
        line = recv_line(conn).rstrip(b"\n")
        if line == b"HOLD":
            conn.sendall(b"%d %d\n" % (me, conn._conn.cid if conn._conn else -1))
            kept.append(conn)
            continue
        conn.sendall(b"%d %s %s\n" % (me, impl.transport_of(conn).encode(), line[::-1]))
        conn.close()
        served += 1
    for c in kept:
        c.close()
    return served


class Pool:
    """A listener here and POOL forked children accepting on it."""

    def __init__(self) -> None:
        self.lst, self.addr = listen_impl()
        self.lst.setblocking(False)     # workers share it: accept() must not block
        self.stop_r, self.stop_w = os.pipe()
        self.workers = [Child(functools.partial(_pool_worker, self.lst, self.stop_r, -1))
                        for _ in range(POOL)]
        self.pids = {w.pid for w in self.workers}

    def request(self, payload: bytes) -> int:
        """One request; check the response; return the worker pid that served it."""
        with connect_impl(self.addr) as s:
            s.sendall(payload + b"\n")
            pid, transport, back = recv_line(s).rstrip(b"\n").split(b" ", 2)
            assert (transport, back) == (b"ring", payload[::-1])
            assert s.recv(10) == b""
        return int(pid)

    def stop(self) -> dict[int, int]:
        """Stop the live workers; return pid -> served count of each."""
        os.write(self.stop_w, b"x")
        counts = {w.pid: w.result() for w in self.workers if not w.done}
        self.lst.close()
        os.close(self.stop_r)
        os.close(self.stop_w)
        return counts

    def kill_all(self) -> None:
        for w in self.workers:
            w.kill()


def _no_connections(mon) -> bool:
    return mon.status()["counts"]["connections"] == 0


def _with_pool(body) -> object:
    pool = Pool()
    try:
        return body(pool)
    finally:
        pool.kill_all()


def test_prefork_pool_serves_every_connection(mon, clean):
    def driver():
        def body(pool: Pool):
            served: dict[int, int] = {}
            errors = []

            def client_thread(k: int) -> None:
                try:
                    for i in range(k, POOL_CONNS, 6):
                        pid = pool.request(b"pool-%02d-%s" % (i, os.urandom(4).hex().encode()))
                        served[i] = pid
                except BaseException as exc:
                    errors.append(exc)

            threads = [threading.Thread(target=client_thread, args=(k,)) for k in range(6)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(WAIT * 2)
            assert not errors, repr(errors[:3])
            assert len(served) == POOL_CONNS
            assert set(served.values()) <= pool.pids
            # Both ends closed: the monitor forgets each connection while the pool
            # runs on (not only when the listener's owner exits).
            left = wait_until(lambda: _no_connections(mon), "no connections in STATUS "
                              "while the pool runs", timeout=EOF_WAIT)
            assert left
            counts = pool.stop()
            # Each child's own count agrees with the responses it sent.
            share = {pid: list(served.values()).count(pid) for pid in pool.pids}
            assert counts == share
            return share
        return _with_pool(body)

    share = Child(driver).result()
    assert sum(share.values()) == POOL_CONNS
    clean.check()


def test_prefork_pool_child_is_the_holder_of_what_it_accepted(mon, clean):
    """Fork.tla MonitorKnowsHolders: the accepting pool child holds the server end."""
    def driver():
        def body(pool: Pool):
            seen = []
            socks = []
            for _ in range(POOL * 2):
                s = connect_impl(pool.addr)
                socks.append(s)
                s.sendall(b"HOLD\n")
                pid, cid = map(int, recv_line(s).split())
                assert cid == s._conn.cid
                seen.append((cid, pid))
            rows = [(cid, pid, holders(mon, cid)) for cid, pid in seen]
            for s in socks:
                s.close()
            pool.stop()
            return rows
        return _with_pool(body)

    rows = Child(driver).result()
    wrong = [row for row in rows if (row[2] or {}).get("server") != [row[1]]]
    assert not wrong, f"(id, acceptor pid, STATUS holders) where they disagree: {wrong}"
    clean.check()


def test_prefork_pool_child_killed_holding_a_connection(mon, clean):
    """A pool child killed -9 with an open connection: the client sees EOF, others serve on."""
    def driver():
        def body(pool: Pool):
            s = connect_impl(pool.addr)
            s.sendall(b"HOLD\n")
            victim, _ = map(int, recv_line(s).split())
            w = next(w for w in pool.workers if w.pid == victim)
            w.kill()
            t0 = time.monotonic()
            rest = recv_eof(s, EOF_WAIT)   # b"" / ECONNRESET, not a hang (TimeoutError)
            s.close()
            assert rest == b""
            after = [pool.request(b"after-%d" % i) for i in range(12)]
            assert victim not in after
            counts = pool.stop()
            return time.monotonic() - t0, sorted(counts)
        return _with_pool(body)

    _, survivors = Child(driver).result()
    assert len(survivors) == POOL - 1
    clean.check()


# -- 3. multiprocessing (fork) -------------------------------------------------------------
def _mp_child(sock, go_r: int, explicit_close: bool) -> None:
    """Talk over the inherited socket once the parent closed its copy."""
    wait_readable(go_r, "the parent's go")
    sock.settimeout(WAIT)
    sock.sendall(b"from the child\n")
    assert recv_line(sock) == b"ack\n"
    sock.sendall(b"second\n")
    if explicit_close:
        sock.close()
    # else: the process ends (os._exit) holding it


@pytest.mark.parametrize("explicit_close", [True, False], ids=["close", "exit"])
def test_multiprocessing_child_gets_the_connected_socket(mon, clean, explicit_close):
    def driver():
        srv, addr = listen_impl()
        cli = connect_impl(addr)
        conn, _ = srv.accept()
        conn.settimeout(WAIT)
        go_r, go_w = os.pipe()
        ctx = multiprocessing.get_context("fork")
        p = ctx.Process(target=_mp_child, args=(cli, go_r, explicit_close))
        p.start()
        cli.close()                     # the parent's copy; the child still holds it
        client.request(P.PING)          # the monitor has handled our CLOSE
        os.write(go_w, b"x")
        # Not EOF first: the child's bytes come (a closed ring would give b"").
        assert recv_line(conn) == b"from the child\n"
        conn.sendall(b"ack\n")
        assert recv_line(conn) == b"second\n"
        assert recv_eof(conn, WAIT) == b""   # EOF once the child is done
        p.join(WAIT)
        assert p.exitcode == 0, p.exitcode
        conn.close()
        srv.close()
        for fd in (go_r, go_w):
            os.close(fd)
        return True

    assert Child(driver).result()
    clean.check()


# -- 4. children exiting or killed mid-conversation --------------------------------------------
@pytest.mark.parametrize("how", ["exit", "kill"])
@pytest.mark.parametrize("children", [1, 3])
def test_children_gone_mid_conversation_leave_nothing(mon, clean, how, children):
    """The end closes for the peer when the last child goes, not before; nothing remains."""
    def driver():
        srv, addr = listen_impl()
        cli = connect_impl(addr)
        conn, _ = srv.accept()
        conn.settimeout(WAIT)
        srv.close()
        kids = []
        for k in range(children):
            go_r, go_w = os.pipe()

            def child(k=k, go_r=go_r):
                cli.settimeout(WAIT)
                cli.sendall(b"child %d partial" % k)   # no newline: mid-message
                wait_readable(go_r, "the go")
                os.read(go_r, 1)
                cli.sendall(b" and more %d|" % k)
                wait_readable(go_r, "the end")          # then exit or be killed
                return k

            kids.append((Child(child), go_w))
        cli.close()                     # only the children hold the client end now
        got = b""
        for k in range(children):
            want = b"child %d partial" % k
            while want not in got:
                piece = conn.recv(100)
                assert piece, f"EOF before the children's bytes: {got!r}"
                got += piece
        # All but the last go away; the last one can still send.
        for c, go_w in kids[:-1]:
            if how == "kill":
                c.kill()
            else:
                os.write(go_w, b"xy")
                c.result()
        mon.status()    # the monitor has seen those deaths (STATUS reaps first)
        last, go_w = kids[-1]
        os.write(go_w, b"x")
        k = children - 1
        while b"and more %d|" % k not in got:
            piece = conn.recv(100)
            assert piece, f"EOF while the last child still holds the end: {got!r}"
            got += piece
        if how == "kill":
            last.kill()
        else:
            os.write(go_w, b"y")
            last.result()
        rest = recv_eof(conn, EOF_WAIT)
        conn.close()
        for _, w in kids:
            os.close(w)
        return (got + rest).decode()

    text = Child(driver).result()
    assert text.endswith(f"and more {children - 1}|")
    clean.check()


# -- 5. a daemonizing parent ---------------------------------------------------------------
ROUND_TRIPS = 50


def _daemon_grandchild(sock, report_w: int) -> None:
    """Echo ROUND_TRIPS lines back, upper-cased, then say bye and close."""
    sock.settimeout(WAIT)
    for _ in range(ROUND_TRIPS):
        sock.sendall(recv_line(sock).upper())
    sock.sendall(b"bye\n")
    sock.close()
    os.write(report_w, b"closed")


def _daemonize(sock, report_w: int, stopped_r: int | None, ready_w: int | None) -> None:
    """In the intermediate process: fork the daemon and exit at once (os._exit).

    With *stopped_r*: the parent first stops the monitor (SIGSTOP) so that
    the daemon's FORKED surely reaches it after this process died.  A
    throw-away fork before that makes the hold pipe (and sends HOLD) while
    the monitor still answers.
    """
    if stopped_r is not None:
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        os.write(ready_w, b"r")
        wait_readable(stopped_r, "the monitor stopped")
    pid = os.fork()
    if pid == 0:
        try:
            os.setsid()
            os.write(report_w, b"%d\n" % os.getpid())
            _daemon_grandchild(sock, report_w)
        finally:
            os._exit(0)
    os._exit(0)


@pytest.mark.parametrize("race", [False, True], ids=["plain", "parent-gone-before-forked"])
def test_daemonizing_parent_exits_at_once(mon, clean, race):
    def driver():
        srv, addr = listen_impl()
        cli = connect_impl(addr)
        conn, _ = srv.accept()
        srv.close()
        conn.settimeout(WAIT)
        report_r, report_w = os.pipe()
        ready_r, ready_w = os.pipe()
        stopped_r, stopped_w = os.pipe()
        inter = os.fork()
        if inter == 0:
            try:
                _daemonize(cli, report_w, stopped_r if race else None,
                           ready_w if race else None)
            finally:
                os._exit(1)
        daemon_pid = None
        try:
            if race:
                wait_readable(ready_r, "the intermediate's first fork")
                os.kill(mon.pid, signal.SIGSTOP)
                try:
                    os.write(stopped_w, b"s")
                    _, status = os.waitpid(inter, 0)   # it exits without the monitor
                finally:
                    os.kill(mon.pid, signal.SIGCONT)
            else:
                _, status = os.waitpid(inter, 0)
            assert os.waitstatus_to_exitcode(status) == 0
            cli.close()     # ours too: only the daemon holds the client end now
            wait_readable(report_r, "the daemon's pid")
            daemon_pid = int(os.read(report_r, 20).split(b"\n")[0])
            for i in range(ROUND_TRIPS):
                conn.sendall(b"ping %d\n" % i)
                line = recv_line(conn)      # EOFError here: the end closed under the daemon
                assert line == b"PING %d\n" % i
            assert recv_line(conn) == b"bye\n"
            assert recv_eof(conn, EOF_WAIT) == b""
            wait_readable(report_r, "the daemon's close")
            conn.close()
            return True
        finally:
            if daemon_pid is not None:
                try:
                    os.kill(daemon_pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            for fd in (report_r, report_w, ready_r, ready_w, stopped_r, stopped_w):
                os.close(fd)

    assert Child(driver).result()
    clean.check()

