"""The drop-in runner (``python -m impl.run``) and ``impl.patch()``/``impl.unpatch()``.

The runner tests start the target programs of tests/run_targets in a
subprocess that inherits the session's private monitor (conftest), and read
what carried their traffic from the program's own report and from the
monitor's counters.  Every subprocess has a timeout.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import select
import selectors
import socket
import subprocess
import sys
import threading
import time

import pytest

import impl
import impl.run
import impl.sdsocket
import impl.selectors
from impl.monitor.paths import ENV_AUTOSTART, ENV_SOCKET
from impl.run.patch import ENV_PATCH, is_patched
from tests.monitor_util import ROOT
from tests.proc_util import Child

WAIT = 120.0   # bound on one runner subprocess; only a hang reaches it
TARGETS = ROOT / "tests" / "run_targets"
PATCHED = {(socket, "socket"), (socket, "fromfd"), (selectors, "DefaultSelector")}
#: Left alone: they look socket.socket up when called, or are the common base class.
UNPATCHED = {(socket, "SocketType"), (socket, "create_connection"), (socket, "create_server")}


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python -m impl.run *args`` from the repo root (bounded)."""
    env = dict(os.environ if env is None else env, PYTHONPATH=str(ROOT))
    env.pop(ENV_PATCH, None)
    return subprocess.run([sys.executable, "-m", "impl.run", *args], capture_output=True,
                          text=True, timeout=WAIT, cwd=str(ROOT), env=env)


def report(proc: subprocess.CompletedProcess) -> dict:
    """The target's JSON report (its last stdout line)."""
    lines = proc.stdout.strip().splitlines()
    assert lines, f"no report; rc={proc.returncode}\n{proc.stderr}"
    return json.loads(lines[-1])


def connections(monitor) -> int:
    return monitor.status()["counters"]["connections"]


# -- the runner -----------------------------------------------------------------------------


def test_script_traffic_goes_over_rings(monitor):
    before = connections(monitor)
    proc = run(str(TARGETS / "echo.py"), "a", "--b")
    assert proc.returncode == 0, proc.stderr
    rep = report(proc)
    assert rep["name"] == "__main__"
    assert rep["argv"] == [str(TARGETS / "echo.py"), "a", "--b"]
    assert rep["path0"] == str(TARGETS), "sys.path[0] is not the script's directory"
    assert rep["echo_ok"] and rep["isinstance"]
    assert (rep["client_transport"], rep["server_transport"]) == ("ring", "ring")
    assert rep["select_ready"], "select.select missed bytes on a ring socket"
    assert connections(monitor) > before, "the monitor saw no connection"


def test_udp_stays_kernel_under_the_runner(monitor):
    rep = report(run(str(TARGETS / "echo.py")))
    assert rep["udp"] == "datagram"
    assert rep["udp_transport"] == "kernel" and rep["udp_isinstance"]


def test_module_form(monitor):
    proc = run("-m", "tests.run_targets.echo", "--exit", "3", "x")
    assert proc.returncode == 3, proc.stderr
    rep = report(proc)
    assert rep["name"] == "__main__"
    # argv[0] is the module's file, as with python -m
    assert rep["argv"] == [str(TARGETS / "echo.py"), "--exit", "3", "x"]
    assert rep["path0"] == str(ROOT), "sys.path[0] is not the current directory"
    assert rep["client_transport"] == "ring"


@pytest.mark.parametrize("code", [0, 3])
def test_exit_code_of_the_target(monitor, code):
    proc = run(str(TARGETS / "echo.py"), "--exit", str(code))
    assert proc.returncode == code, proc.stderr
    assert report(proc)["echo_ok"]


def test_uncaught_exception_prints_traceback_and_exits_1(monitor):
    proc = run(str(TARGETS / "fail.py"))
    assert proc.returncode == 1
    assert proc.stderr.startswith("Traceback (most recent call last):"), proc.stderr
    assert "fail.py\", line" in proc.stderr and "in deep" in proc.stderr
    assert proc.stderr.rstrip().endswith("ValueError: planted failure in the target")
    assert "impl/run" not in proc.stderr and "runpy" not in proc.stderr, proc.stderr


@pytest.mark.parametrize("args,what", [(["no_such_script.py"], "can't open file"),
                                       (["-m", "no_such_module_xyz"], "no module named"),
                                       (["-m", "no_such_pkg_xyz.sub"], "no module named"),
                                       ([], "required"),
                                       (["--bogus", "x.py"], "unrecognized option")])
def test_bad_target_is_a_usage_error(args, what):
    proc = run(*args)
    assert proc.returncode == 2
    assert what in proc.stderr and "usage:" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_help_documents_the_options():
    proc = run("--help")
    assert proc.returncode == 0
    for word in ("--subprocesses", "--no-autostart", "-m module", "script.py"):
        assert word in proc.stdout


@pytest.mark.parametrize("flag", [True, False])
def test_subprocesses_are_patched_only_with_the_flag(monitor, flag):
    args = ["--subprocesses"] if flag else []
    proc = run(*args, str(TARGETS / "spawn.py"))
    assert proc.returncode == 0, proc.stderr
    rep = report(proc)
    assert rep["child_rc"] == 0
    if flag:
        assert rep["cls"] == "impl.sdsocket.socket"
        assert (rep["transport"], rep["parent_transport"]) == ("ring", "ring")
    else:
        # An unpatched child is a stdlib client: our listener accepts it from the kernel.
        assert rep["cls"] == "socket.socket"
        assert (rep["transport"], rep["parent_transport"]) == ("stdlib", "kernel")


def test_subprocess_env_puts_sitecustomize_first():
    env = impl.run.subprocess_env({"PYTHONPATH": "/x"})
    parts = env["PYTHONPATH"].split(os.pathsep)
    assert parts[0].endswith(os.path.join("impl", "_sitecustomize"))
    assert parts[-1] == "/x" and env[ENV_PATCH] == "1"


def test_sitecustomize_patches_children_but_not_the_monitor(monkeypatch):
    code = "import socket; print(socket.socket.__module__)"
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           timeout=WAIT, env=impl.run.subprocess_env(), cwd=str(ROOT))
    assert child.stdout.strip() == "impl.sdsocket", child.stderr
    # The library starts its monitor as ``python -m impl.monitor``, with our environment.
    monkeypatch.delenv(ENV_PATCH, raising=False)
    monkeypatch.setattr(sys, "path", [str(ROOT / "impl" / "_sitecustomize")] + sys.path)
    monkeypatch.delitem(sys.modules, "sitecustomize", raising=False)
    import sitecustomize
    for argv, monitor in ((["python", "-m", "impl.monitor", "--daemon"], True),
                          (["python", "-m", "impl.monitor.server"], True),
                          (["python", "-m", "impl.monitoring"], False),
                          (["python", "app.py", "-m", "impl.monitor"], False),
                          (["python", "-c", "pass"], False)):
        monkeypatch.setattr(sys, "orig_argv", argv)
        assert sitecustomize._is_monitor() is monitor, argv


def _no_monitor_env(tmp_path) -> dict[str, str]:
    env = dict(os.environ)
    env[ENV_SOCKET] = str(tmp_path / "nobody.sock")   # no monitor there
    env.pop(ENV_AUTOSTART, None)                      # the runner's flag must do it
    return env


def test_no_autostart_runs_on_kernel_sockets(tmp_path):
    proc = run("--no-autostart", "--subprocesses", str(TARGETS / "spawn.py"),
               env=_no_monitor_env(tmp_path))
    assert proc.returncode == 0, proc.stderr
    rep = report(proc)
    assert rep["cls"] == "impl.sdsocket.socket", "the child was not patched"
    assert (rep["transport"], rep["parent_transport"]) == ("kernel", "kernel")
    assert not (tmp_path / "nobody.sock").exists(), "a monitor was started"


def test_blocking_accept_without_a_monitor(tmp_path):
    """No monitor: the target's blocking accept() waits for its client (kernel sockets)."""
    proc = run("--no-autostart", str(TARGETS / "echo.py"), env=_no_monitor_env(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert report(proc)["client_transport"] == "kernel"


def test_asyncio_streams_echo_under_the_runner(monitor):
    before = connections(monitor)
    proc = run(str(TARGETS / "aio_echo.py"))
    assert proc.returncode == 0, proc.stderr
    rep = report(proc)
    assert rep == {"echo_ok": True, "client_transport": "ring", "selector": "RingSelector"}
    assert connections(monitor) > before


# -- impl.patch() in this process -----------------------------------------------------------


def _library_globals() -> dict[tuple[str, str], object]:
    return {(name, attr): value for name, mod in sys.modules.items()
            if mod is not None and (name == "impl" or name.startswith("impl."))
            for attr, value in vars(mod).items() if value is socket or value is selectors}


@pytest.fixture
def patched():
    """impl.patch() for the test; unpatched afterwards whatever happens."""
    impl.patch()
    try:
        yield
    finally:
        impl.unpatch()


def test_patch_then_unpatch_restores_every_attribute():
    before = {(mod, name): getattr(mod, name) for mod, name in PATCHED | UNPATCHED}
    lib = _library_globals()
    policy = asyncio.events._event_loop_policy
    assert lib, "impl has no reference to socket/selectors to shield?"
    impl.patch()
    impl.patch()    # idempotent: a second call must not save the patched values
    try:
        assert is_patched()
        assert socket.socket is impl.socket and socket.fromfd is impl.fromfd
        for mod, name in UNPATCHED:
            assert getattr(mod, name) is before[mod, name], name
        assert issubclass(impl.socket, socket.SocketType)
        assert selectors.DefaultSelector is impl.selectors.RingSelector
        assert socket.socketpair is before[socket, "socket"].__init__.__globals__["socketpair"]
        if policy is None:
            assert isinstance(asyncio.get_event_loop_policy(), impl.selectors.EventLoopPolicy)
        # the library itself still sees the kernel's classes
        assert impl.sdsocket._stdsocket.socket is before[socket, "socket"]
        assert impl.sdsocket._stdsocket is not socket
    finally:
        impl.unpatch()
        impl.unpatch()
    assert not is_patched()
    assert {(mod, name): getattr(mod, name) for mod, name in PATCHED | UNPATCHED} == before
    assert _library_globals() == lib
    assert asyncio.events._event_loop_policy is policy


def test_patch_keeps_a_policy_the_program_chose():
    old = asyncio.events._event_loop_policy
    mine = asyncio.DefaultEventLoopPolicy()
    asyncio.set_event_loop_policy(mine)
    try:
        impl.patch()
        try:
            assert asyncio.get_event_loop_policy() is mine
        finally:
            impl.unpatch()
        assert asyncio.get_event_loop_policy() is mine
    finally:
        asyncio.set_event_loop_policy(old)


def test_patched_udp_is_a_working_kernel_socket(patched):
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with a, b:
        assert isinstance(a, socket.socket) and isinstance(a, socket.SocketType)
        assert impl.transport_of(a) == "kernel"
        a.bind(("127.0.0.1", 0))
        b.bind(("127.0.0.1", 0))
        b.settimeout(WAIT)
        a.sendto(b"dgram", b.getsockname())
        assert b.recvfrom(16) == (b"dgram", a.getsockname())


def test_patched_socketpair_stays_kernel(patched):
    a, b = socket.socketpair()
    with a, b:
        assert (impl.transport_of(a), impl.transport_of(b)) == ("kernel", "kernel")
        a.send(b"\0")    # what asyncio's self-pipe and signal.set_wakeup_fd need
        assert os.read(b.fileno(), 1) == b"\0"


def test_select_on_patched_ring_socket(monitor, patched):
    with socket.create_server(("127.0.0.1", 0)) as srv:
        assert isinstance(srv, impl.socket)
        with socket.create_connection(srv.getsockname(), timeout=WAIT) as cli:
            conn, _ = srv.accept()
            with conn:
                assert (impl.transport_of(cli), impl.transport_of(conn)) == ("ring", "ring")
                assert select.select([conn], [], [], 0)[0] == []
                cli.sendall(b"ping")
                assert select.select([conn], [], [], WAIT)[0] == [conn]
                poller = select.poll()
                poller.register(conn, select.POLLIN)
                assert poller.poll(WAIT * 1000) == [(conn.fileno(), select.POLLIN)]
                assert conn.recv(16) == b"ping"
                assert select.select([conn], [], [], 0)[0] == []


# -- TLS: OpenSSL uses the descriptor, so it must get a kernel socket ---------------------------
def _tls_contexts():
    ssl = pytest.importorskip("ssl", reason="Python built without OpenSSL")
    import test
    cert = os.path.join(os.path.dirname(test.__file__), "certdata", "keycert.pem")
    if not os.path.exists(cert):
        pytest.skip(f"no test certificate: {cert} (the stdlib test package's certdata)")
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    return server, client


def _serving(serve) -> tuple[threading.Thread, dict]:
    """Run ``serve(box)`` in a daemon thread; what it raises lands in ``box["error"]``."""
    box: dict = {}

    def run() -> None:
        try:
            serve(box)
        except BaseException as exc:   # noqa: BLE001 - reported by the test
            box["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, box


def _tls_echo(server_ctx, client_ctx, *, wrap_listener: bool) -> tuple[bytes, str]:
    """A TLS echo over patched sockets: (the echo, the raw client socket's transport)."""
    srv = socket.create_server(("127.0.0.1", 0))
    assert impl.transport_of(srv) == "listener"
    addr = srv.getsockname()
    if wrap_listener:
        srv = server_ctx.wrap_socket(srv, server_side=True)
    srv.settimeout(WAIT)

    def serve(box: dict) -> None:
        conn, _ = srv.accept()
        if not wrap_listener:
            box["accepted"] = impl.transport_of(conn)
            conn = server_ctx.wrap_socket(conn, server_side=True)
        with conn:
            conn.sendall(conn.recv(1024).upper())

    t, box = _serving(serve)
    raw = socket.create_connection(addr, timeout=WAIT)
    transport = impl.transport_of(raw)
    with client_ctx.wrap_socket(raw) as tls:
        tls.sendall(b"over tls")
        got = tls.recv(1024)
    t.join(WAIT)
    srv.close()
    assert not t.is_alive() and "error" not in box, box
    if not wrap_listener:
        assert box["accepted"] == "ring"
    # Both ends closed: each bridge passes the EOF on and closes its ring socket and
    # socketpair end.
    _join_tls_bridges()
    return got, transport


class _Forwarding:
    """An object passing everything on to a socket (as test_asyncio's TestSocketWrapper)."""

    def __init__(self, sock) -> None:
        self._sock = sock

    def __getattr__(self, name: str):
        return getattr(self._sock, name)


def _join_tls_bridges() -> None:
    """Wait for the bridges to close their descriptors, so none closes in a later test."""
    for bridge in [th for th in threading.enumerate() if th.name == "socksdirect-tls-bridge"]:
        bridge.join(WAIT)
        assert not bridge.is_alive(), "a TLS bridge did not end after both ends closed"


@pytest.mark.parametrize("forwarded", [False, True], ids=["socket", "forwarding-object"])
def test_tls_wrapping_a_ring_connection_takes_it_over(monitor, patched, forwarded):
    """wrap_socket takes a ring connection over, as it detaches a kernel socket.

    The server then does to the object it accepted what socketserver's
    shutdown_request does -- shutdown(SHUT_WR), close() -- right after its
    TLS reply: on a detached kernel socket those do nothing, and here they
    must not cut the bridged stream either.  The SSL socket reports the ring
    connection's family and addresses, not the socketpair's.
    """
    server_ctx, client_ctx = _tls_contexts()
    reply = os.urandom(200_000)
    with socket.create_server(("127.0.0.1", 0)) as srv:
        srv.settimeout(WAIT)

        def serve(box: dict) -> None:
            request, peer = srv.accept()
            request.settimeout(WAIT)
            ssock = server_ctx.wrap_socket(
                _Forwarding(request) if forwarded else request, server_side=True)
            box["fileno"] = request.fileno()
            box["names"] = (ssock.family, ssock.getsockname(), ssock.getpeername(), peer)
            ssock.sendall(reply)
            ssock.close()
            with pytest.raises(OSError) as closed:
                ssock.getpeername()
            box["closed"] = closed.value.errno
            with pytest.raises(OSError) as shut:
                request.shutdown(socket.SHUT_WR)
            box["shutdown"] = shut.value.errno
            request.close()

        t, box = _serving(serve)
        raw = socket.create_connection(srv.getsockname(), timeout=WAIT)
        assert impl.transport_of(raw) == "ring"
        mine, theirs = raw.getsockname(), raw.getpeername()
        got = bytearray()
        with client_ctx.wrap_socket(raw) as tls:
            assert (tls.family, tls.getsockname(), tls.getpeername()) == (
                socket.AF_INET, mine, theirs)
            while chunk := tls.recv(1 << 16):
                got += chunk
        t.join(WAIT)
    assert not t.is_alive() and "error" not in box, box
    assert len(got) == len(reply) and got == reply, "the reply was cut short"
    assert box["fileno"] == -1, "the wrapped object was left open (a kernel one is detached)"
    assert box["names"] == (socket.AF_INET, theirs, mine, mine)
    assert box["closed"] == box["shutdown"] == errno.EBADF
    _join_tls_bridges()


def test_refused_tls_wrap_leaves_the_ring_connection_as_it_was(monitor, patched):
    """wrap_socket refusing its arguments (check_hostname, no server_hostname) takes nothing.

    With a kernel socket the ValueError comes before ssl detaches it; the
    ring socket too must stay open and connected, the peer seeing no EOF.
    """
    ssl = pytest.importorskip("ssl", reason="Python built without OpenSSL")
    with socket.create_server(("127.0.0.1", 0)) as srv:
        srv.settimeout(WAIT)
        with socket.create_connection(srv.getsockname(), timeout=WAIT) as raw:
            acc, _ = srv.accept()
            with acc:
                assert impl.transport_of(raw) == "ring"
                with pytest.raises(ValueError, match="server_hostname"):
                    ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).wrap_socket(raw)
                assert raw.fileno() >= 0 and impl.transport_of(raw) == "ring"
                raw.sendall(b"still here")
                acc.settimeout(WAIT)
                assert acc.recv(10, socket.MSG_WAITALL) == b"still here"
                raw.close()
                assert acc.recv(1) == b"", "a hold on the connection was left behind"
    _join_tls_bridges()


def test_fork_child_lets_go_of_running_tls_bridges(monitor, patched):
    """A fork child has a bridge's ring socket but not its copy threads: it lets go of it.

    Otherwise its hold would keep the ring connection open, the peer seeing
    no EOF, for as long as the child lives (a kernel SSL socket is just one
    more descriptor in the child).  The parent's bridges go on working.
    """
    server_ctx, client_ctx = _tls_contexts()
    with socket.create_server(("127.0.0.1", 0)) as srv:
        srv.settimeout(WAIT)

        def serve(box: dict) -> None:
            conn, _ = srv.accept()
            with server_ctx.wrap_socket(conn, server_side=True) as ssock:
                while data := ssock.recv(1024):
                    ssock.sendall(data.upper())

        t, box = _serving(serve)
        raw = socket.create_connection(srv.getsockname(), timeout=WAIT)
        cid = raw._conn.cid
        with client_ctx.wrap_socket(raw) as tls:
            tls.sendall(b"before")
            assert tls.recv(1024) == b"BEFORE"       # both bridges run, in this process
            r, w = os.pipe()

            def stay() -> bool:          # alive until the parent closes w
                os.close(w)
                return os.read(r, 1) == b""

            child = Child(stay, wait=WAIT)
            os.close(r)
            try:
                deadline = time.monotonic() + 10
                while any(child.pid in row["holders"]["client"] + row["holders"]["server"]
                          for row in monitor.status()["connections"] if row["id"] == cid):
                    assert time.monotonic() < deadline, \
                        "the fork child still holds the bridged ring connection"
                    time.sleep(0.01)
                tls.sendall(b"after")
                assert tls.recv(1024) == b"AFTER"
            finally:
                os.close(w)
                assert child.result() is True
        t.join(WAIT)
    assert not t.is_alive() and "error" not in box, box
    _join_tls_bridges()


def test_refused_tls_wrap_leaves_the_listener_as_it_was(monitor, patched):
    """wrap_socket refusing its arguments (server_side with a server_hostname) takes nothing:
    the listener stays ours, in the monitor, and its next client comes in over a ring."""
    server_ctx, _ = _tls_contexts()
    with socket.create_server(("127.0.0.1", 0)) as srv:
        srv.settimeout(WAIT)
        with pytest.raises(ValueError, match="server_hostname"):
            server_ctx.wrap_socket(srv, server_side=True, server_hostname="x")
        assert srv.fileno() >= 0 and impl.transport_of(srv) == "listener"
        with socket.create_connection(srv.getsockname(), timeout=WAIT) as cli:
            acc, _ = srv.accept()
            with acc:
                assert impl.transport_of(cli) == impl.transport_of(acc) == "ring"
                cli.sendall(b"ring")
                acc.settimeout(WAIT)
                assert acc.recv(4, socket.MSG_WAITALL) == b"ring"


def test_tls_server_wrapping_its_listener_runs_over_the_kernel(monitor, patched):
    """http.server-style TLS: the listener is wrapped, so it leaves the monitor and
    clients connect through the kernel; nothing of OpenSSL touches an eventfd."""
    server_ctx, client_ctx = _tls_contexts()
    assert _tls_echo(server_ctx, client_ctx, wrap_listener=True) == (b"OVER TLS", "kernel")


def test_tls_over_a_ring_connection_wrapped_after_connect(monitor, patched):
    """Each accepted ring connection wrapped by the server (and the client's ring socket):
    OpenSSL gets a kernel socketpair whose bytes a bridge copies to and from the ring."""
    server_ctx, client_ctx = _tls_contexts()
    assert _tls_echo(server_ctx, client_ctx, wrap_listener=False) == (b"OVER TLS", "ring")


def test_unpatch_restores_ssl_wrap_socket():
    import ssl
    before = ssl.SSLContext.wrap_socket
    impl.patch()
    try:
        assert ssl.SSLContext.wrap_socket is not before
    finally:
        impl.unpatch()
    assert ssl.SSLContext.wrap_socket is before


# -- multiprocessing ------------------------------------------------------------------------


def test_multiprocessing_sockets_work_under_the_runner(monitor):
    """Listener/Client, a Manager and fork/spawn/forkserver pools, all under the runner.

    multiprocessing detaches its sockets' descriptors and os.read()s them, and
    gives the forkserver its listener's descriptor: on ring sockets both fail
    (EINVAL on an eventfd, ENOTSOCK on an epoll descriptor).  The pool
    workers' own connections must still be ring ones.
    """
    before = connections(monitor)
    proc = run("--subprocesses", str(TARGETS / "mp.py"))
    assert proc.returncode == 0, proc.stderr
    rep = report(proc)
    assert (rep["unix"], rep["inet"], rep["manager"]) == (42, 42, {"a": 1})
    for method in ("fork", "spawn", "forkserver"):
        assert [w["answer"] for w in rep[method]] == [2, 4], method
        assert {(w["cls"], w["transport"]) for w in rep[method]} == {("impl.sdsocket", "ring")}
    assert rep["server_transports"] == ["ring"] * 6
    assert connections(monitor) >= before + 6


def test_patch_gives_multiprocessing_the_kernel_socket():
    """multiprocessing modules imported before patch() keep the kernel's socket module."""
    import multiprocessing.connection
    import multiprocessing.forkserver
    kernel = socket.socket
    modules = (multiprocessing.connection, multiprocessing.forkserver)
    impl.patch()
    try:
        for mod in modules:
            assert mod.socket is not socket and mod.socket.socket is kernel, mod.__name__
    finally:
        impl.unpatch()
    assert all(mod.socket is socket for mod in modules)


SHIELD_ON_IMPORT = """
import json, socket, sys
import impl
from impl.run.patch import KERNEL_SOCKET_MODULES
kernel = socket.socket
assert not KERNEL_SOCKET_MODULES & sys.modules.keys(), "imported too early to test the hook"
impl.patch()
import multiprocessing.connection as conn, multiprocessing.forkserver as fs
import inspect
report = {"patched": [m.socket.socket is kernel for m in (conn, fs)],
          "source": "class Listener" in inspect.getsource(conn)}
impl.unpatch()
report["unpatched"] = [m.socket is socket for m in (conn, fs)]
report["hooks"] = [type(f).__name__ for f in sys.meta_path if "Kernel" in type(f).__name__]
print(json.dumps(report))
"""


def test_multiprocessing_imported_while_patched_gets_the_kernel_socket():
    """The import hook shields a module imported after patch(), and leaves with unpatch()."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop(ENV_PATCH, None)
    proc = subprocess.run([sys.executable, "-c", SHIELD_ON_IMPORT], capture_output=True,
                          text=True, timeout=WAIT, env=env)
    assert proc.returncode == 0, proc.stderr
    assert report(proc) == {"patched": [True, True], "source": True,
                            "unpatched": [True, True], "hooks": []}
