"""Unmodified stdlib programs under ``python -m impl.run`` (issue 6, item 3).

Each family is a server program and a client program from
tests/dropin_targets -- stdlib only, no ``import impl`` -- started as two
separate processes, both under the runner, so both ends are patched:

* http.server's ThreadingHTTPServer (SimpleHTTPRequestHandler, HTTP/1.1
  keep-alive) with urllib.request clients and http.client keep-alive clients;
* an asyncio streams echo server (``asyncio.start_server``) with concurrent
  ``asyncio.open_connection`` clients;
* xmlrpc.server's SimpleXMLRPCServer with an xmlrpc.client ServerProxy;
* socketserver's ThreadingTCPServer with threaded socket clients.

Every answer is checked against what the test computes itself, and the
traffic is shown to have gone over rings by the monitor's counters: the
ring connections it set up rose by exactly the number of connections the
clients made, none was sent to the kernel, and the server saw each of its
connections as a ring one.  The same programs run without the runner make
no ring connection at all, so those assertions can fail.

A private monitor serves this module (its counters move only with these
programs).  Every wait is bounded: the server announces its port on stdout
(read with a timeout), clients run with a timeout, and a server stops at
end of file on its stdin.
"""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from impl.monitor.paths import ENV_AUTOSTART, ENV_SOCKET
from impl.run.patch import ENV_PATCH
from tests.monitor_util import ROOT, MonitorProc, running_monitor

pytestmark = [pytest.mark.timeout(300)]

#: Bound on one program's run; only a hang reaches it.
WAIT = 60.0
TARGETS = ROOT / "tests" / "dropin_targets"
PAGE = "page.txt"
PAGE_TEXT = "a static page\n" * 200


@pytest.fixture(scope="module")
def monitor() -> Iterator[MonitorProc]:
    """This module's own monitor: its counters move with these programs only."""
    with running_monitor(log_level="warning") as mon:
        yield mon


def _command(script: str, args: list[str], runner: bool) -> list[str]:
    target = [str(TARGETS / script), *args]
    return [sys.executable, "-m", "impl.run", *target] if runner else [sys.executable, *target]


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop(ENV_PATCH, None)      # a plain run must not be patched by sitecustomize either
    return env


def _json_line(line: str, what: str) -> dict:
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        raise AssertionError(f"{what} printed {line!r}, not a JSON report") from None


class Server:
    """A server program in a subprocess: started, its port read, stopped by EOF on stdin."""

    def __init__(self, script: str, args: list[str], runner: bool, cwd: str) -> None:
        self.proc = subprocess.Popen(_command(script, args, runner), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env=_env(), cwd=cwd)
        self.script = script
        try:
            self.hello = _json_line(self._first_line(), f"{script} (start)")
        except BaseException:
            self.proc.kill()
            self.proc.communicate(timeout=WAIT)
            raise

    def _first_line(self) -> str:
        """The line the server prints once it listens (bounded wait)."""
        fd = self.proc.stdout.fileno()
        if not select.select([fd], [], [], WAIT)[0]:
            raise AssertionError(f"{self.script} did not announce its port within {WAIT} s")
        line = self.proc.stdout.readline().decode()
        if not line:
            err = self.proc.communicate(timeout=WAIT)[1].decode(errors="replace")
            raise AssertionError(f"{self.script} exited before listening:\n{err}")
        return line

    @property
    def port(self) -> str:
        return str(self.hello["port"])

    def stop(self) -> dict:
        """Close its stdin (it shuts down); return its final report."""
        try:
            out, err = self.proc.communicate(timeout=WAIT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate(timeout=WAIT)
            raise AssertionError(f"{self.script} did not stop within {WAIT} s") from None
        assert self.proc.returncode == 0, err.decode(errors="replace")
        lines = out.decode().strip().splitlines()
        assert lines, f"{self.script}: no report\n{err.decode(errors='replace')}"
        return _json_line(lines[-1], f"{self.script} (report)")


def run_client(script: str, args: list[str], runner: bool, cwd: str) -> dict:
    """Run a client program to its end (bounded); return its JSON report."""
    proc = subprocess.run(_command(script, args, runner), capture_output=True, text=True,
                          timeout=WAIT, env=_env(), cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines, f"{script}: no report\n{proc.stderr}"
    return _json_line(lines[-1], script)


# -- the families: programs, arguments, and what every answer must be ------------------------

URLLIB = 3                 # urllib rounds: a GET and a POST each, a connection each
KEEPALIVE = (3, 7)         # http.client: connections, requests on each
AIO = (4, 6)               # asyncio: clients at once, lines each
XMLRPC = 4                 # xmlrpc: rounds of four calls, then a multicall of as many adds
TCP = (3, 8)               # ThreadingTCPServer: client threads, requests each


def _check_http(server: dict, client: dict) -> int:
    """Check every HTTP answer; return how many connections the clients made."""
    expected_urllib = []
    for i in range(URLLIB):
        expected_urllib += [["GET", 200, PAGE_TEXT], ["POST", 200, f"urllib {i}"[::-1]]]
    assert client["urllib"] == expected_urllib
    conns, per_conn = KEEPALIVE
    assert len(client["keepalive"]) == conns
    for c, conn in enumerate(client["keepalive"]):
        # GET /hello, POST /echo, GET the page, in turn.
        expected = [[200, ["Hello, world!\n", f"conn {c} request {k}"[::-1], PAGE_TEXT][k % 3]]
                    for k in range(per_conn)]
        assert conn["replies"] == expected
        assert conn["one_socket"], "http.client reopened its connection: no keep-alive"
    assert server["requests"] == 2 * URLLIB + conns * per_conn
    return 2 * URLLIB + conns


def _check_aio(server: dict, client: dict) -> int:
    clients, lines = AIO
    assert len(client["clients"]) == clients
    for c, got in enumerate(client["clients"]):
        assert got["echoes"] == [f"client {c} line {k} {'x' * (k * 37 % 500)}\n".upper()
                                 for k in range(lines)]
    assert server["lines"] == clients * lines and server["connections"] == clients
    assert server["most_open"] == clients, "the clients were not served at the same time"
    return clients


def _check_xmlrpc(server: dict, client: dict) -> int:
    expected = []
    for i in range(XMLRPC):
        expected += [i + i * i, (f"call {i} " + "z" * (i * 100))[::-1], list(range(i)),
                     [f"k{j}" for j in sorted(range(i + 1), key=lambda j: f"k{j}")]]
    expected.append([-i for i in range(XMLRPC)])
    assert client["results"] == expected
    assert server["calls"] == 5 * XMLRPC
    # SimpleXMLRPCRequestHandler speaks HTTP/1.0: a connection per HTTP request.
    return 4 * XMLRPC + 1


def _check_tcp(server: dict, client: dict) -> int:
    clients, lines = TCP
    for c, got in enumerate(client["clients"]):
        assert got is not None, f"client thread {c} did not finish"
        assert got["answers"] == [[f"{k}:{f'c{c}l{n}'[::-1]}" for k in range(n % 7 + 1)]
                                  for n in range(lines)]
    assert server["lines"] == clients * lines
    return clients


@dataclass(frozen=True)
class Family:
    """A server program, its clients, and the check of their reports."""

    server: str
    server_args: tuple[str, ...]
    client: str
    client_args: Callable[[str], list[str]]
    check: Callable[[dict, dict], int]


FAMILIES = {
    "http.server": Family("http_server.py", ("--dir", ".", "--quiet"), "http_clients.py",
                          lambda port: [port, PAGE, str(URLLIB), *map(str, KEEPALIVE)],
                          _check_http),
    "asyncio": Family("aio_echo_server.py", (), "aio_echo_clients.py",
                      lambda port: [port, *map(str, AIO)], _check_aio),
    "xmlrpc": Family("xmlrpc_server.py", (), "xmlrpc_client.py",
                     lambda port: [port, str(XMLRPC)], _check_xmlrpc),
    "socketserver": Family("tcp_server.py", (), "tcp_clients.py",
                           lambda port: [port, *map(str, TCP)], _check_tcp),
}


def counters(monitor: MonitorProc) -> dict[str, int]:
    return monitor.status()["counters"]


def run_family(family: Family, runner: bool, cwd: str) -> tuple[dict, dict, dict, int]:
    """Run the server and its clients; return (server hello, server report, client report,
    connections the clients made by the family's own count)."""
    server = Server(family.server, list(family.server_args), runner, cwd)
    try:
        client = run_client(family.client, family.client_args(server.port), runner, cwd)
    finally:
        report = server.stop()
    return server.hello, report, client, family.check(report, client)


@pytest.fixture
def workdir(tmp_path) -> str:
    (tmp_path / PAGE).write_text(PAGE_TEXT)
    return str(tmp_path)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_program_traffic_goes_over_rings(monitor, workdir, name):
    """Under the runner: right answers, and one ring connection per client connection."""
    before = counters(monitor)
    hello, server, client, made = run_family(FAMILIES[name], True, workdir)
    after = counters(monitor)
    assert after["connections"] - before["connections"] == made
    assert after["accepted"] - before["accepted"] == made
    assert after["kernel_fallbacks"] == before["kernel_fallbacks"], "a connect fell back"
    assert server["transports"] == ["ring"] * made
    assert after["bytes"] > before["bytes"]
    if name == "http.server":
        assert hello["listener"] == "listener"
        assert {c["transport"] for c in client["keepalive"]} == {"ring"}
    elif name == "asyncio":
        # asyncio.run made its loop from the runner's policy: the ring-first selector.
        assert hello["selector"] == "RingSelector"
        assert client["policy"] == "impl.selectors"
        assert {c["transport"] for c in client["clients"]} == {"ring"}
    elif name == "socketserver":
        assert {c["transport"] for c in client["clients"]} == {"ring"}


@pytest.mark.parametrize("name", list(FAMILIES))
def test_program_without_the_runner_makes_no_ring_connection(monitor, workdir, name):
    """The same programs, plain: they work, over the kernel, and the monitor sees nothing."""
    before = counters(monitor)
    hello, server, client, made = run_family(FAMILIES[name], False, workdir)
    after = counters(monitor)
    assert made > 0
    assert after["connections"] == before["connections"]
    assert server["transports"] == ["stdlib"] * made
    if name == "asyncio":
        assert hello["selector"] != "RingSelector"


# -- the benchmark's programs and checks (bench/dropin.py) -----------------------------------


def _wrong_server(body: bytes) -> tuple[socket.socket, threading.Thread]:
    """A kernel HTTP server answering one keep-alive request with *body*, then closing."""
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(WAIT)

    def serve() -> None:
        with srv:
            conn, _ = srv.accept()
            with conn:
                conn.settimeout(WAIT)
                conn.recv(4096)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s"
                             % (len(body), body))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return srv, thread


@pytest.mark.parametrize("body", [b"Hello, world?\n", b"Hello"])
def test_load_client_rejects_a_wrong_response(workdir, body):
    srv, thread = _wrong_server(body)
    port = str(srv.getsockname()[1])
    proc = subprocess.run(_command("http_load.py", [port, "pingpong", "0", "3", "5"], False),
                          capture_output=True, text=True, timeout=WAIT, env=_env(), cwd=workdir)
    thread.join(WAIT)
    assert proc.returncode == 1, proc.stdout
    assert "bad response" in proc.stderr


def test_bench_measure_refuses_kernel_connections_under_the_runner(tmp_path, monkeypatch):
    """With no monitor the runner's programs fall back to kernel sockets: not a ring result."""
    from bench.dropin import measure
    from bench.measure import Placement

    monkeypatch.setenv(ENV_SOCKET, str(tmp_path / "nobody.sock"))
    monkeypatch.setenv(ENV_AUTOSTART, "0")
    with pytest.raises(ValueError, match="not ring"):
        measure("asyncio", "runner", Placement(None, None), warmup=0, requests=5, budget=30.0,
                clients=2, rate_warmup=0.0, seconds=0.01, deadline=WAIT)
    assert not (tmp_path / "nobody.sock").exists()
