"""Isolation (issue 3, item 7): who can reach the monitor, who can obtain a connection's rings.

* A process of another uid cannot connect to this user's monitor: the 0700
  directory stops it (EACCES); with the directory opened up for the test,
  the monitor itself turns the channel away (SO_PEERCRED).
* A process of the same user that is not party to a connection cannot get
  its rings: no request returns them, and CLOSE / ACCEPTED naming the
  connection change nothing.
* 1,000 connect/close cycles leave the descriptor counts of this process and
  of the monitor, and the monitor's tables, where they were.
"""

from __future__ import annotations

import errno
import gc
import json
import os
import select
import socket
import subprocess
import sys

import pytest

import impl
from impl.monitor import protocol as P
from tests.monitor_util import ROOT, running_monitor
from tests.test_monitor import (
    TIMEOUT,
    connected_pair,
    fd_count,
    in_child,
    library_status,
    python_env,
    roundtrip,
    tables,
)

NOBODY = 65534
CYCLES = 1000

needs_root = pytest.mark.skipif(os.geteuid() != 0,
                                reason="becoming another uid (setuid to nobody) needs root")


def _become_nobody() -> None:
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)


def _reach_as_nobody(path: str) -> dict:
    """In a child: drop to nobody, try to connect and say HELLO; report what happened."""
    _become_nobody()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.settimeout(TIMEOUT)
    try:
        sock.connect(path)
    except OSError as exc:
        return {"stage": "connect", "errno": exc.errno}
    try:
        P.send_msg(sock, P.HELLO, {"version": P.VERSION, "role": "intruder"})
        reply = P.recv_msg(sock)
    except OSError as exc:
        return {"stage": "hello", "errno": exc.errno}
    finally:
        sock.close()
    return {"stage": "hello", "reply": None if reply is None else reply.name}


@needs_root
def test_another_uid_cannot_reach_the_monitor():
    """The private directory stops a process of another uid at connect(): EACCES."""
    with running_monitor() as mon:
        assert os.stat(os.path.dirname(mon.path)).st_mode & 0o777 == 0o700
        got = in_child(_reach_as_nobody, mon.path)
        assert got == {"stage": "connect", "errno": errno.EACCES}
        assert mon.status()["counters"]["channels_refused"] == 0   # never got that far


@needs_root
def test_another_uid_is_refused_even_through_an_open_directory():
    """With the directory and socket opened up, SO_PEERCRED still turns it away."""
    with running_monitor() as mon:
        d = os.path.dirname(mon.path)
        os.chmod(d, 0o755)
        os.chmod(mon.path, 0o777)
        try:
            got = in_child(_reach_as_nobody, mon.path)
        finally:
            os.chmod(d, 0o700)
        # Connected (the kernel queued it), then closed unanswered by the monitor.
        assert got in ({"stage": "hello", "reply": None},
                       {"stage": "hello", "errno": errno.ECONNRESET},
                       {"stage": "hello", "errno": errno.EPIPE}), got
        status = mon.status()
        assert status["counters"]["channels_refused"] == 1
        assert all(p["uid"] != NOBODY for p in status["processes"])
        assert "refused a control channel" in mon.log_text()


def _ring_inodes(pid: int | str = "self") -> set[int]:
    """Inodes of the ring memfds process *pid* holds."""
    out = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("/memfd:socksdirect-ring"):
                out.add(os.stat(f"/proc/{pid}/fd/{fd}").st_ino)
        except OSError:
            pass
    return out


# A third process of the same user, started fresh (a fork would inherit the rings):
# it tries every request on someone else's connection and reports what it got.
_MEDDLE = """
import json, os, socket, sys
from impl.monitor import client, protocol as P
path, cid, host, port = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])

def ring_inodes():
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:socksdirect-ring"):
                out.add(os.stat(f"/proc/self/fd/{fd}").st_ino)
        except OSError:
            pass
    return out

held_at_start = ring_inodes()
chan = client.ControlChannel.connect(path, role="meddler")
got = {"inodes": [], "held_at_start": sorted(held_at_start)}
for op in (P.CLOSE, P.ACCEPTED):
    chan.notify(op, {"id": cid})
chan.request(P.PING)          # ordered after the two notifications
# The only request that returns descriptors: CONNECT (new rings, its own).
mine = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
mine.bind(("127.0.0.1", 0))
body = {"family": "inet", "address": [host, port], "rcvbuf": 0, "sndbuf": 0}
reply = chan.request(P.CONNECT, body, [mine.fileno()])
got["route"], got["new_id"] = reply.body.get("route"), reply.body.get("id")
got["inodes"] += [os.fstat(fd).st_ino for fd in reply.fds]
reply.close_fds()
for op in (P.STATUS, P.STATS, P.PING):
    reply = chan.request(op)
    got["inodes"] += [os.fstat(fd).st_ino for fd in reply.fds]
    reply.close_fds()
got["held"] = sorted(ring_inodes())
print(json.dumps(got), flush=True)
sys.stdin.readline()          # stay a party to the new connection until told
"""


def test_a_process_not_party_to_a_connection_cannot_obtain_or_disturb_it():
    with running_monitor() as mon:
        before_rings = _ring_inodes()
        with connected_pair() as (srv, cli, acc):
            theirs = _ring_inodes() - before_rings
            assert len(theirs) == 2               # the connection's two rings
            status = library_status()
            [conn] = status["connections"]
            host, port = srv.getsockname()[:2]
            meddler = subprocess.Popen(
                [sys.executable, "-c", _MEDDLE, mon.path, str(conn["id"]), host, str(port)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                text=True, env=python_env(), cwd=str(ROOT))
            try:
                got = _read_json_line(meddler)
                assert got["held_at_start"] == []
                # Its CONNECT got a new connection of its own, never this one's rings.
                assert got["route"] == "ring" and got["new_id"] != conn["id"]
                assert len(got["inodes"]) == 6
                assert not set(got["inodes"]) & theirs
                assert not set(got["held"]) & theirs
                after = library_status()
                mine = [c for c in after["connections"] if c["id"] == conn["id"]]
                assert tables({"listeners": [], "processes": [], "connections": mine}) == \
                    tables({"listeners": [], "processes": [], "connections": [conn]})
                assert after["counters"]["closed"] == status["counters"]["closed"]
                assert after["counters"]["accepted"] == status["counters"]["accepted"]
                roundtrip(cli, acc, 10000)      # the parties still talk
                newcomer, _ = srv.accept()      # take the meddler's connection off the queue
                newcomer.close()
                _, err = meddler.communicate("done\n", timeout=TIMEOUT)
                assert meddler.returncode == 0, err
            finally:
                meddler.kill()
                meddler.wait()
            roundtrip(cli, acc, 100)


def _read_json_line(proc: subprocess.Popen) -> dict:
    """The first line *proc* prints, as JSON; bounded by TIMEOUT."""
    ready, _, _ = select.select([proc.stdout], [], [], TIMEOUT)
    line = proc.stdout.readline() if ready else ""
    if not line:
        proc.kill()
        raise AssertionError(f"no report from pid {proc.pid}: {proc.stderr.read()}")
    return json.loads(line)


def test_1000_connect_close_cycles_leave_nothing_behind():
    with running_monitor() as mon, impl.create_server(("127.0.0.1", 0)) as srv:
        srv.settimeout(TIMEOUT)
        address = srv.getsockname()

        def cycle() -> str:
            cli = impl.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                cli.settimeout(TIMEOUT)
                cli.connect(address)
                acc, _ = srv.accept()
                acc.close()
                return cli.transport
            finally:
                cli.close()

        assert cycle() == "ring"      # warm: channels open, pool made
        gc.collect()
        base = library_status()
        base_fds, base_mon_fds = fd_count(), fd_count(mon.pid)
        transports = {cycle() for _ in range(CYCLES)}
        assert transports == {"ring"}
        gc.collect()
        now = library_status()
        assert fd_count() == base_fds
        assert fd_count(mon.pid) == base_mon_fds
        assert tables(now) == tables(base)
        assert now["listeners"][0]["queued"] == 0
        for name in ("connections", "accepted", "closed"):
            assert now["counters"][name] == base["counters"][name] + CYCLES, name
        assert now["monitor"]["pool"] == base["monitor"]["pool"]
