"""Faults (issue 3, item 8): killed peers, killed listeners, a killed monitor, a failing handler.

Every wait is bounded by a socket timeout or a pidfd; a test fails when a
bound is reached ("hung"), never because something took long.  The monitor
learns of a death from the process's pidfd and closes the dead side's ring
ends itself, so the survivor's EOF / EPIPE is produced by the monitor's
clean-up: once the survivor sees it, a STATUS shows the clean-up done.
"""

from __future__ import annotations

import errno
import os
import select
import signal
import socket
import time

import pytest

import impl
from impl.monitor import client
from impl.monitor import protocol as P
from impl.monitor.server import Monitor
from tests.monitor_util import running_monitor, start_monitor
from tests.test_monitor import (
    TIMEOUT,
    ChildPipe,
    Forked,
    connected_pair,
    library_status,
    roundtrip,
    tables,
)

CHUNK = 64 * 1024


# -- the victim: a forked process at one end of a connection ----------------------------------
def _victim(pipe: ChildPipe, role: str, doing: str) -> None:
    """Be the client or the server of one ring connection, then write or read until killed."""
    if role == "client":
        sock = impl.create_connection(tuple(pipe.recv()["address"]), timeout=TIMEOUT)
    else:
        srv = impl.create_server(("127.0.0.1", 0))
        srv.settimeout(TIMEOUT)
        pipe.send({"address": list(srv.getsockname())})
        sock, _ = srv.accept()
    sock.settimeout(None)
    pipe.send({"transport": sock.transport, "pid": os.getpid()})
    if doing == "writing":
        data = b"w" * CHUNK
        while True:                       # until the ring is full, then blocked in it
            sock.sendall(data)
    else:
        sock.recv(1)                      # reading: took the first byte ...
        pipe.send({"read": 1})
        pipe.recv()                       # ... and never reads again


def _drain_until_closed(sock) -> bytes:
    """Read until EOF or ECONNRESET; the socket's timeout bounds every wait."""
    got = b""
    while True:
        try:
            chunk = sock.recv(CHUNK)
        except ConnectionResetError:
            return got
        except TimeoutError:
            pytest.fail(f"hung: neither EOF nor ECONNRESET within {TIMEOUT} s")
        if not chunk:
            return got
        got += chunk


def _fill(sock) -> int:
    """Write without blocking until the ring is full; return how much went in."""
    sent = 0
    data = b"r" * CHUNK
    timeout = sock.gettimeout()
    sock.setblocking(False)
    try:
        while True:
            try:
                sent += sock.send(data)
            except BlockingIOError:
                return sent
    finally:
        sock.settimeout(timeout)


@pytest.mark.parametrize("doing", ["writing", "reading"])
@pytest.mark.parametrize("role", ["client", "server"])
def test_kill9_of_a_peer_mid_transfer(role, doing):
    """The survivor gets EOF / ECONNRESET (it read) or EPIPE (it wrote) and never hangs."""
    with running_monitor() as mon, Forked(_victim, role, doing) as victim:
        srv = None
        try:
            if role == "client":
                srv = impl.create_server(("127.0.0.1", 0))
                srv.settimeout(TIMEOUT)
                victim.send({"address": list(srv.getsockname())})
                sock, _ = srv.accept()
            else:
                address = tuple(victim.recv()["address"])
                sock = impl.create_connection(address, timeout=TIMEOUT)
            with sock:
                sock.settimeout(TIMEOUT)
                assert victim.recv()["transport"] == sock.transport == "ring"
                if doing == "writing":
                    assert sock.recv(1) == b"w"        # it is writing now
                    victim.kill()
                    _drain_until_closed(sock)
                else:
                    sock.sendall(b"r")
                    assert victim.recv() == {"read": 1}
                    _fill(sock)                        # the ring is full: blocked writes
                    victim.kill()
                    with pytest.raises((BrokenPipeError, ConnectionResetError)):
                        while True:                    # a bounded send: EPIPE ends it
                            sock.sendall(b"r" * CHUNK)
                assert os.waitstatus_to_exitcode(victim.wait()) == -signal.SIGKILL
                status = library_status()
                assert victim.pid not in [p["pid"] for p in status["processes"]]
                assert all(victim.pid not in (c["client"], c["server"]) or
                           {c["client_side"], c["server_side"]} & {"closed"}
                           for c in status["connections"])
                assert status["counters"]["deaths"] >= 1
                if role == "server":
                    assert status["listeners"] == []
        finally:
            if srv is not None:
                srv.close()
        assert library_status()["connections"] == []     # our close finished it
        assert mon.proc.poll() is None


def _listen_and_never_accept(pipe: ChildPipe, backlog: int) -> None:
    srv = impl.create_server(("127.0.0.1", 0), backlog=backlog)
    pipe.send({"address": list(srv.getsockname()), "transport": srv.transport})
    pipe.recv()


def test_killed_listener_resets_its_queued_connections():
    with running_monitor(), Forked(_listen_and_never_accept, 8) as lst:
        got = lst.recv()
        assert got["transport"] == "listener"
        address = tuple(got["address"])
        socks = [impl.create_connection(address, timeout=TIMEOUT) for _ in range(3)]
        try:
            assert [s.transport for s in socks] == ["ring"] * 3
            before = library_status()
            assert [x["queued"] for x in before["listeners"]] == [3]
            lst.kill()
            for s in socks:
                assert _drain_until_closed(s) == b""
                with pytest.raises((BrokenPipeError, ConnectionResetError)):
                    s.sendall(b"x")
            lst.wait()          # it has exited: a STATUS now must not list it
            after = library_status()
            assert after["listeners"] == []
            assert after["counters"]["resets"] == before["counters"]["resets"] + 3
            assert lst.pid not in [p["pid"] for p in after["processes"]]
        finally:
            for s in socks:
                s.close()
        assert library_status()["connections"] == []


def test_monitor_restart_keeps_connections_and_serves_new_ones():
    """kill -9 of the monitor: established rings go on; after a restart, connects work again."""
    with running_monitor() as mon, connected_pair() as (srv, cli, acc):
        assert cli.transport == "ring"
        mon.stop(signal.SIGKILL)
        roundtrip(cli, acc, 100_000)                      # no monitor at all
        new = start_monitor(mon.path)
        try:
            roundtrip(cli, acc, 1000)
            # The library's channel died with the old monitor; it reconnects.
            assert client.request(P.PING).op == P.OK
            with connected_pair() as (_, c2, a2):
                assert c2.transport == "ring"
                roundtrip(c2, a2, 1000)
            # The old listener registers again when it next looks for connections
            # (its channel's EOF); from then on its clients get rings again.
            srv.settimeout(0.0)
            with pytest.raises(BlockingIOError):
                srv.accept()
            srv.settimeout(TIMEOUT)
            with impl.create_connection(srv.getsockname(), timeout=TIMEOUT) as c3:
                a3, _ = srv.accept()
                with a3:
                    assert c3.transport == a3.transport == "ring"
                    a3.settimeout(TIMEOUT)
                    roundtrip(c3, a3, 1000)
            cli.close()
            acc.close()      # CLOSE for an id of the old monitor: ignored
            status = library_status()
            assert status["connections"] == []
            assert status["counters"]["internal_errors"] == 0
        finally:
            new.stop()


# -- the loop survives its own handlers -------------------------------------------------------
def _planted_monitor(pipe: ChildPipe, path: str) -> None:
    """Run a monitor whose STATS and CLOSE handlers raise, and whose admission fails once."""
    def boom(self, chan, msg):
        raise RuntimeError("planted failure")

    Monitor._HANDLERS = {**Monitor._HANDLERS, P.STATS: boom, P.CLOSE: boom}
    from impl.monitor import acl
    real = acl.Peer.from_pid
    calls = []

    def from_pid_once(pid, uid, gid):
        calls.append(pid)
        if len(calls) == 1:
            raise RuntimeError("planted admission failure")
        return real(pid, uid, gid)
    acl.Peer.from_pid = staticmethod(from_pid_once)
    mon = Monitor(path)
    mon.serve_forever(ready=lambda: pipe.send("ready"))


def test_an_exception_in_a_handler_is_answered_and_survived(tmp_path):
    d = tmp_path / "m"
    d.mkdir(mode=0o700)
    path = str(d / "monitor.sock")
    with Forked(_planted_monitor, path) as mon:
        assert mon.recv() == "ready"
        # The first channel's admission raises: it is closed, the loop goes on.
        with pytest.raises((ConnectionResetError, BrokenPipeError)):
            client.ControlChannel.connect(path, role="first")
        chan = client.ControlChannel.connect(path, role="test")
        try:
            with pytest.raises(OSError) as info:
                chan.request(P.STATS)
            assert info.value.errno == errno.EIO and "planted failure" in str(info.value)
            chan.notify(P.CLOSE, {"id": 1})             # one-way: no reply, not even ERROR
            assert chan.request(P.PING).op == P.OK      # the very next reply is the PING's
            counters = chan.request(P.STATUS).body["counters"]
            assert counters["internal_errors"] == 3
            assert chan.request(P.STOP).op == P.OK
        finally:
            chan.close()
        assert os.waitstatus_to_exitcode(mon.wait()) == 0
        assert not os.path.exists(path)


def _connect_hello_exit(pipe: ChildPipe, path: str) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.connect(path)
    P.send_msg(sock, P.HELLO, {"version": P.VERSION, "role": "ghost"})
    pipe.send("sent")
    pipe.recv()


@pytest.mark.parametrize("reaped", [False, True], ids=["zombie", "reaped"])
def test_a_client_that_exits_before_it_is_admitted_is_not_kept(reaped):
    """Its channel is dropped and no process entry (pidfd) stays behind."""
    with running_monitor() as mon:
        deaths = library_status()["counters"]["deaths"]
        os.kill(mon.pid, signal.SIGSTOP)
        try:
            ghost = Forked(_connect_hello_exit, mon.path)
            assert ghost.recv() == "sent"
            ghost.kill()
            if reaped:
                ghost.wait()
            else:       # a zombie: exited, not yet reaped, its pid not reusable
                assert select.select([ghost.pidfd], [], [], TIMEOUT)[0]
        finally:
            os.kill(mon.pid, signal.SIGCONT)
        try:
            before = library_status()   # queued behind the ghost's channel: admitted after it
            assert ghost.pid not in [p["pid"] for p in before["processes"]]
            assert tables(before, without_pid=os.getpid())["processes"] == []
            assert before["counters"]["deaths"] == deaths    # turned away, never admitted
        finally:
            ghost.close()


def _stop_monitor(mon) -> None:
    """SIGSTOP the monitor (our child) and wait until it is stopped."""
    os.kill(mon.pid, signal.SIGSTOP)
    _, status = os.waitpid(mon.pid, os.WUNTRACED)
    assert os.WIFSTOPPED(status)


def _connect_and_hold(pipe: ChildPipe, address: list) -> None:
    with impl.create_connection(tuple(address), timeout=TIMEOUT):
        pipe.send("connected")
        pipe.recv()


def test_status_never_lists_a_process_that_has_exited():
    """Even when the request is handled before the exit's own event: STATUS looks first."""
    with running_monitor() as mon, impl.create_server(("127.0.0.1", 0)) as srv, \
            Forked(_connect_and_hold, list(srv.getsockname())) as other:
        assert other.recv() == "connected"    # a party to a connection: it has state to clean
        srv.settimeout(TIMEOUT)
        acc, _ = srv.accept()
        with acc:
            assert other.pid in [p["pid"] for p in library_status()["processes"]]
            chan = client.current()
            _stop_monitor(mon)
            try:
                P.send_msg(chan.sock, P.STATUS)      # queued first ...
                other.kill()
                other.wait()                         # ... the exit after it
            finally:
                os.kill(mon.pid, signal.SIGCONT)
            reply = client.recv_msg(chan.sock)
            assert reply.op == P.OK
            assert other.pid not in [p["pid"] for p in reply.body["processes"]]
            assert [c["client_side"] for c in reply.body["connections"]] == ["closed"]


def test_listener_owner_dies_with_a_queued_connection():
    """The owner of a listener with an unaccepted ring connection dies while the monitor sleeps.

    Woken, the monitor sees the listener channel's EOF first: unlistening
    resets the queued connection, which reaps the dead process, whose
    cleanup drops the channel being dropped (once a KeyError, counted as an
    internal error).
    """
    with running_monitor() as mon:
        ready_r, ready_w = os.pipe()
        go_r, go_w = os.pipe()
        pid = os.fork()
        if pid == 0:      # pragma: no cover - the child
            try:
                os.close(ready_r)
                os.close(go_w)
                srv = impl.create_server(("127.0.0.1", 0))
                cli = impl.create_connection(srv.getsockname(), timeout=TIMEOUT)
                os.write(ready_w, cli.transport.encode())
                os.read(go_r, 1)
            finally:
                os._exit(0)
        os.close(ready_w)
        os.close(go_r)
        try:
            assert os.read(ready_r, 16) == b"ring"
            os.kill(mon.pid, signal.SIGSTOP)
            try:
                os.write(go_w, b"x")
                assert os.waitpid(pid, 0)[1] == 0
            finally:
                os.kill(mon.pid, signal.SIGCONT)
        finally:
            os.close(ready_r)
            os.close(go_w)
        deadline = time.monotonic() + TIMEOUT
        while mon.status()["listeners"] and time.monotonic() < deadline:
            select.select([], [], [], 0.01)
        status = mon.status()
        assert status["listeners"] == [] and status["connections"] == []
        assert status["counters"]["internal_errors"] == 0
