"""The monitor's operator side: ``impl.ctl``, its lifecycle, the ACL end to end, autostart.

Every monitor here is private to its test (tests.monitor_util.running_monitor
or a path in tmp_path), so the session's monitor and the user's are never
touched.  Processes started here are waited for with a bound and killed in
``finally`` blocks; the helpers at the top are shared with
test_monitor_isolation.py and test_monitor_faults.py.
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import json
import os
import resource
import select
import signal
import socket
import subprocess
import sys
import tomllib
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import impl
from impl import ctl
from impl.monitor import client
from impl.monitor import protocol as P
from impl.monitor.paths import ENV_AUTOSTART, ENV_SOCKET
from tests.monitor_util import ROOT, MonitorProc, running_monitor, start_monitor

#: Bound on every wait in these tests; only a hang reaches it.
TIMEOUT = 30.0


# -- helpers (shared with the isolation and fault tests) ------------------------------------
class Forked:
    """A forked child running ``fn(pipe, *args)``; talks JSON lines with the parent.

    Every wait is bounded (select on the pipe and the child's pidfd), and
    :meth:`close` kills the child if it is still there.
    """

    def __init__(self, fn: Callable, *args) -> None:
        r, cw = os.pipe()
        cr, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            status = 0
            try:
                os.close(r)
                os.close(w)
                fn(ChildPipe(cr, cw), *args)
            except BaseException:
                traceback.print_exc()
                status = 1
            finally:
                os._exit(status)
        os.close(cr)
        os.close(cw)
        self.pid = pid
        self.pidfd = os.pidfd_open(pid)
        self._r, self._w = r, w
        self._buf = b""
        self.status: int | None = None

    def recv(self, timeout: float = TIMEOUT) -> dict:
        """The child's next message; AssertionError if it exits or says nothing in time."""
        while b"\n" not in self._buf:
            ready, _, _ = select.select([self._r, self.pidfd], [], [], timeout)
            if self._r in ready:
                chunk = os.read(self._r, 65536)
                if chunk:
                    self._buf += chunk
                    continue
            raise AssertionError(f"child {self.pid} {'exited' if ready else 'said nothing'} "
                                 f"(waited up to {timeout} s)")
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def send(self, obj) -> None:
        """Send one JSON message to the child."""
        os.write(self._w, json.dumps(obj).encode() + b"\n")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send *sig* to the child."""
        signal.pidfd_send_signal(self.pidfd, sig)

    def wait(self, timeout: float = TIMEOUT) -> int:
        """Reap the child; return its wait status."""
        if self.status is None:
            if not select.select([self.pidfd], [], [], timeout)[0]:
                raise AssertionError(f"child {self.pid} still runs after {timeout} s")
            self.status = os.waitpid(self.pid, 0)[1]
        return self.status

    def close(self) -> None:
        """Kill the child if it still runs, reap it and close our descriptors."""
        if self.status is None:
            with contextlib.suppress(ProcessLookupError):
                self.kill()
            self.wait()
        for fd in (self._r, self._w, self.pidfd):
            with contextlib.suppress(OSError):
                os.close(fd)

    def __enter__(self) -> Forked:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ChildPipe:
    """The child's end of a Forked pipe pair."""

    def __init__(self, r: int, w: int) -> None:
        self._r, self._w = r, w
        self._buf = b""

    def send(self, obj) -> None:
        os.write(self._w, json.dumps(obj).encode() + b"\n")

    def recv(self) -> dict:
        """Block until the parent sends (the parent bounds the whole exchange)."""
        while b"\n" not in self._buf:
            chunk = os.read(self._r, 65536)
            if not chunk:
                os._exit(0)   # the parent is gone
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)


def in_child(fn: Callable, *args, timeout: float = TIMEOUT):
    """Run ``fn(*args)`` in a forked child; return its JSON-able result."""
    def body(pipe: ChildPipe) -> None:
        try:
            pipe.send({"result": fn(*args)})
        except BaseException as exc:
            pipe.send({"error": type(exc).__name__, "errno": getattr(exc, "errno", None),
                       "message": str(exc)})
    with Forked(body) as child:
        reply = child.recv(timeout)
        assert os.waitstatus_to_exitcode(child.wait(timeout)) == 0
    if "error" in reply:
        raise AssertionError(f"in the child: {reply}")
    return reply["result"]


def library_status() -> dict:
    """STATUS on this process's own library channel.

    The monitor handles one channel's messages in order, so every CLOSE
    this process sent before is reflected in the reply.
    """
    return client.request(P.STATUS).body


def fd_count(pid: int | str = "self") -> int:
    """How many descriptors process *pid* holds."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def tables(status: dict, *, without_pid: int | None = None) -> dict:
    """The tables of a STATUS reply, without byte counts (the data plane moves them)."""
    return {
        "listeners": status["listeners"],
        "connections": [{k: v for k, v in c.items() if k != "bytes"}
                        for c in status["connections"]],
        "processes": [p for p in status["processes"] if p["pid"] != without_pid],
    }


def python_env(**extra: str | None) -> dict[str, str]:
    """os.environ for a child interpreter that imports this checkout; None removes a name."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for name, value in extra.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def run_py(args: list[str], *, env: dict | None = None, timeout: float = TIMEOUT,
           **kw) -> subprocess.CompletedProcess:
    """Run this interpreter with *args*; output captured as text."""
    return subprocess.run([sys.executable, *args], capture_output=True, text=True,
                          env=env or python_env(), cwd=str(ROOT), timeout=timeout, **kw)


def private_dir(tmp_path: Path, name: str = "sd") -> Path:
    """A new directory of mode 0700 under *tmp_path*."""
    d = tmp_path / name
    d.mkdir(mode=0o700)
    d.chmod(0o700)
    return d


def monitors_on(path: str) -> list[int]:
    """Pids of the monitor processes serving *path* (from /proc)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if b"impl.monitor" in argv and os.fsencode(path) in argv:
            pids.append(int(entry))
    return pids


def kill_monitors_on(path: str) -> None:
    """Kill (and so never leave behind) every monitor serving *path*."""
    for pid in monitors_on(path):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def wait_gone(pid: int, timeout: float = TIMEOUT) -> None:
    """Wait until *pid* (not our child) has exited."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        if not select.select([pidfd], [], [], timeout)[0]:
            raise AssertionError(f"process {pid} still runs after {timeout} s")
    finally:
        os.close(pidfd)


@contextlib.contextmanager
def connected_pair(address=("127.0.0.1", 0)) -> Iterator[tuple]:
    """(listener, client, server) of one ring connection inside this process."""
    with impl.create_server(address) as srv:
        cli = impl.create_connection(srv.getsockname()[:2], timeout=TIMEOUT)
        try:
            srv.settimeout(TIMEOUT)
            acc, _ = srv.accept()
            try:
                acc.settimeout(TIMEOUT)
                yield srv, cli, acc
            finally:
                acc.close()
        finally:
            cli.close()


def roundtrip(a, b, size: int = 1000) -> None:
    """Send *size* bytes each way between sockets *a* and *b* and check them."""
    for x, y in ((a, b), (b, a)):
        data = os.urandom(size)
        x.sendall(data)
        got = b""
        while len(got) < size:
            chunk = y.recv(size - len(got))
            assert chunk, "EOF in the middle of a round trip"
            got += chunk
        assert got == data


def ctl_main(capsys, *args: str) -> tuple[int, str, str]:
    """Run impl.ctl in this process; (status, stdout, stderr)."""
    code = ctl.main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


# -- packaging ------------------------------------------------------------------------------
def test_console_scripts_name_the_entry_points():
    """pyproject's [project.scripts] names callables that exist."""
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"socksdirect-monitor": "impl.monitor.__main__:main",
                       "socksdirect-ctl": "impl.ctl:main",
                       "socksdirect-run": "impl.run:main"}
    for target in scripts.values():
        module, func = target.split(":")
        assert callable(getattr(importlib.import_module(module), func))


# -- impl.ctl ---------------------------------------------------------------------------------
def test_ctl_status_shows_a_live_system(tmp_path):
    """The CLI's tables show the listener, the connection, this process and the counters."""
    with running_monitor() as mon, connected_pair() as (srv, cli, acc):
        roundtrip(cli, acc, 1000)
        port = srv.getsockname()[1]
        me = os.getpid()
        text = run_py(["-m", "impl.ctl", "status", "--socket", mon.path])
        assert text.returncode == 0, text.stderr
        out = text.stdout
        assert f"monitor  pid {mon.pid}" in out
        assert "LISTENERS (1)" in out and f"127.0.0.1:{port}" in out
        assert "CONNECTIONS (1)" in out
        assert "PROCESSES (2)" in out        # this one and the ctl asking
        row = next(line for line in out.splitlines() if f"127.0.0.1:{port}" in line
                   and "open" in line)
        assert row.split()[1:3] == [str(me), str(me)]       # client and server pids
        assert "ring connections set up" in out and "bytes through rings" in out

        as_json = run_py(["-m", "impl.ctl", "status", "--json", "--socket", mon.path])
        assert as_json.returncode == 0, as_json.stderr
        status = json.loads(as_json.stdout)
        assert status["monitor"]["pid"] == mon.pid
        assert [(x["address"], x["pid"]) for x in status["listeners"]] == \
            [(["127.0.0.1", port], me)]
        [conn] = status["connections"]
        assert (conn["client"], conn["server"]) == (me, me)
        assert (conn["client_side"], conn["server_side"]) == ("open", "open")
        assert conn["bytes"] == 2000
        assert status["counters"]["connections"] == 1
        assert status["counters"]["accepted"] == 1
        assert me in [p["pid"] for p in status["processes"]]
        assert len(status["processes"]) == status["counts"]["processes"] == 2


def test_ctl_stats_counters_move(capsys):
    """stats --json: a ring connection and its bytes are counted, a kernel fallback too."""
    with running_monitor() as mon:
        code, out, _ = ctl_main(capsys, "stats", "--json", "--socket", mon.path)
        assert code == 0
        before = json.loads(out)
        with connected_pair() as (_, cli, acc):
            roundtrip(cli, acc, 3000)
        with socket.create_server(("127.0.0.1", 0)) as plain:   # not a socksdirect listener
            with impl.create_connection(plain.getsockname(), timeout=TIMEOUT) as k:
                assert k.transport == "kernel"
        library_status()   # our CLOSEs are in
        code, out, _ = ctl_main(capsys, "stats", "--json", "--socket", mon.path)
        after = json.loads(out)
        delta = {k: after[k] - before[k] for k in after}
        assert delta["connections"] == delta["accepted"] == delta["closed"] == 1
        assert delta["kernel_fallbacks"] == 1
        assert delta["bytes"] == 6000
        code, text, _ = ctl_main(capsys, "stats", "--socket", mon.path)
        assert code == 0 and "ring connections set up" in text


@pytest.mark.parametrize("command", ["status", "stats", "reload", "stop"])
def test_ctl_without_a_monitor_fails_and_starts_none(tmp_path, command):
    """Exit status 1 and a clear message; no monitor appears, even with autostart on."""
    d = private_dir(tmp_path)
    path = str(d / "monitor.sock")
    env = python_env(**{ENV_SOCKET: path, ENV_AUTOSTART: "1"})
    try:
        res = run_py(["-m", "impl.ctl", command], env=env)
        assert res.returncode == 1
        assert f"no monitor is running on {path}" in res.stderr
        # A socket file left behind by a dead monitor: the same answer.
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as stale:
            stale.bind(path)
        res = run_py(["-m", "impl.ctl", command, "--socket", path])
        assert res.returncode == 1 and "no monitor is running" in res.stderr
        assert monitors_on(path) == []
        assert not os.path.exists(path + ".lock")
    finally:
        kill_monitors_on(path)


def test_ctl_stop_stops_the_monitor(tmp_path, capsys):
    """stop returns once the monitor has exited; exit status 0, socket removed."""
    d = private_dir(tmp_path)
    mon = start_monitor(str(d / "monitor.sock"))
    try:
        code, out, err = ctl_main(capsys, "stop", "--socket", mon.path)
        assert (code, err) == (0, "")
        assert f"monitor {mon.pid} stopped" in out
        assert mon.proc.wait(timeout=TIMEOUT) == 0
        assert not os.path.exists(mon.path)
    finally:
        if mon.proc.poll() is None:
            mon.proc.kill()
            mon.proc.wait()


def test_ctl_reload_with_a_bad_file_keeps_the_old_rules(tmp_path, capsys):
    """reload: a bad file -> exit 1 naming the problem, old rules stay; a good one applies."""
    first = 'default = "allow"\n[[rule]]\nname = "first"\naction = "allow"\nport = 1\n'
    with running_monitor(acl_text=first) as mon:
        config = Path(mon.path).parent / "acl.toml"
        config.write_text('default = "allow"\n[[rule]]\nname = "x"\naction = "maybe"\n')
        code, _, err = ctl_main(capsys, "reload", "--socket", mon.path)
        assert code == 1
        assert "old rules kept" in err and "action" in err and "maybe" in err
        assert [r["name"] for r in mon.status()["acl"]["rules"]] == ["first", "default"]
        assert "old rules kept" in mon.log_text()
        config.write_text('default = "deny"\n[[rule]]\nname = "second"\naction = "allow"\n')
        code, out, _ = ctl_main(capsys, "reload", "--socket", mon.path)
        assert code == 0 and "reloaded 1 rules" in out
        acl = mon.status()["acl"]
        assert ([r["name"] for r in acl["rules"]], acl["default"]) == \
            (["second", "default"], "deny")


# -- lifecycle --------------------------------------------------------------------------------
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_with_status_0_and_removes_the_socket(tmp_path, sig):
    d = private_dir(tmp_path)
    mon = start_monitor(str(d / "monitor.sock"))
    assert os.path.exists(mon.path)
    assert mon.stop(sig) == 0
    assert not os.path.exists(mon.path)


def test_socket_directory_is_created_private(tmp_path):
    d = private_dir(tmp_path)
    mon = start_monitor(str(d / "sub" / "monitor.sock"), log=d / "monitor.log")
    try:
        st = os.stat(d / "sub")
        assert st.st_mode & 0o777 == 0o700 and st.st_uid == os.geteuid()
    finally:
        mon.stop()


def test_directory_open_to_others_is_refused(tmp_path):
    """Mode 0755: exit status 1, a message naming the mode and the fix, no socket made."""
    d = tmp_path / "open"
    d.mkdir()
    d.chmod(0o755)
    res = run_py(["-m", "impl.monitor", "--socket", str(d / "monitor.sock")])
    assert res.returncode == 1
    assert "mode 755" in res.stderr and "chmod 700" in res.stderr
    assert list(d.iterdir()) == []


def test_directory_of_another_owner_is_refused(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("giving a directory to another user needs root")
    d = private_dir(tmp_path, "theirs")
    os.chown(d, 65534, 65534)
    res = run_py(["-m", "impl.monitor", "--socket", str(d / "monitor.sock")])
    assert res.returncode == 1
    assert "belongs to uid 65534" in res.stderr
    assert list(d.iterdir()) == []


def test_second_monitor_on_the_same_path_exits_1(tmp_path):
    d = private_dir(tmp_path)
    mon = start_monitor(str(d / "monitor.sock"))
    try:
        res = run_py(["-m", "impl.monitor", "--socket", mon.path])
        assert res.returncode == 1
        assert "a monitor already runs on" in res.stderr
        assert mon.status()["monitor"]["pid"] == mon.pid    # the first one is unharmed
    finally:
        mon.stop()


def test_stale_socket_after_kill9_does_not_stop_a_new_monitor(tmp_path):
    d = private_dir(tmp_path)
    path = str(d / "monitor.sock")
    old = start_monitor(path)
    old.stop(signal.SIGKILL)
    assert os.path.exists(path)            # left behind
    new = start_monitor(path)
    try:
        assert new.status()["monitor"]["pid"] == new.pid != old.pid
    finally:
        new.stop()


def test_bad_acl_file_at_start_exits_1(tmp_path):
    d = private_dir(tmp_path)
    config = d / "acl.toml"
    config.write_text("[[rule]]\naction = 'allow'\n")    # no default
    res = run_py(["-m", "impl.monitor", "--socket", str(d / "m.sock"), "--config", str(config)])
    assert res.returncode == 1 and "default" in res.stderr


def test_sighup_rereads_the_acl(tmp_path):
    """After SIGHUP, the next request sees the new rules; a bad file keeps the old ones."""
    first = 'default = "allow"\n[[rule]]\nname = "one"\naction = "allow"\nport = 1\n'
    with running_monitor(acl_text=first) as mon:
        config = Path(mon.path).parent / "acl.toml"
        config.write_text('default = "allow"\n[[rule]]\nname = "two"\naction = "deny"\n')
        # The signal is delivered before the monitor can see a channel opened
        # after kill() returned, and it acts on it before the next event.
        os.kill(mon.pid, signal.SIGHUP)
        assert [r["name"] for r in mon.status()["acl"]["rules"]] == ["two", "default"]
        config.write_text("not toml [")
        os.kill(mon.pid, signal.SIGHUP)
        assert [r["name"] for r in mon.status()["acl"]["rules"]] == ["two", "default"]
        assert "old rules kept" in mon.log_text()


def test_descriptor_limit_is_raised_to_the_hard_limit(tmp_path):
    hard = int(_limits_line("self").split()[4])
    if hard <= 64:
        pytest.skip(f"the hard RLIMIT_NOFILE is {hard}: nothing to raise")
    d = private_dir(tmp_path)
    path = str(d / "monitor.sock")
    r, w = os.pipe()

    def lower() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
    proc = subprocess.Popen([sys.executable, "-m", "impl.monitor", "--socket", path,
                             "--ready-fd", str(w)], pass_fds=(w,), preexec_fn=lower,
                            env=python_env(), cwd=str(ROOT), stderr=subprocess.DEVNULL)
    os.close(w)
    try:
        with os.fdopen(r, "rb") as f:
            assert f.readline() == b"ready\n"
        fields = _limits_line(proc.pid).split()
        assert int(fields[3]) == int(fields[4]) == hard
        assert MonitorProc(path, proc, d / "none").status()["monitor"]["fd_limit"] == hard
    finally:
        proc.terminate()
        proc.wait(timeout=TIMEOUT)


def _limits_line(pid) -> str:
    with open(f"/proc/{pid}/limits") as f:
        return next(line for line in f if line.startswith("Max open files"))


# -- the ACL end to end -------------------------------------------------------------------------
def _acl(*rules: str, default: str = "allow") -> str:
    return f'default = "{default}"\n' + "".join(f"[[rule]]\n{r}\n" for r in rules)


def test_denied_connect_is_refused_and_never_reaches_the_kernel(tmp_path):
    """ConnectionRefusedError; the kernel listener sees nothing; counter and log name the rule."""
    d = private_dir(tmp_path, "socks")
    rule = f'name = "no-secret"\naction = "deny"\ndirection = "connect"\n' \
           f'address = ["{d}/secret*"]'
    with running_monitor(acl_text=_acl(rule)) as mon:
        path = str(d / "secret.sock")
        with impl.socket(socket.AF_UNIX, socket.SOCK_STREAM) as srv:
            srv.bind(path)
            srv.listen()
            assert srv.transport == "listener"
            before = mon.status()["counters"]
            with impl.socket(socket.AF_UNIX, socket.SOCK_STREAM) as cli:
                cli.settimeout(TIMEOUT)
                with pytest.raises(ConnectionRefusedError) as info:
                    cli.connect(path)
                assert info.value.errno == errno.ECONNREFUSED
                assert "no-secret" in str(info.value)
                assert cli.transport == "kernel"
                with pytest.raises(OSError):   # not connected, to anyone
                    cli.getpeername()
            srv.settimeout(0.0)
            with pytest.raises(BlockingIOError):   # nothing came in through the kernel
                srv.accept()
            after = mon.status()["counters"]
        assert after["denied"] == before["denied"] + 1
        assert after["kernel_fallbacks"] == before["kernel_fallbacks"]
        assert after["connections"] == before["connections"]
        log = mon.log_text()
        assert "denied connect" in log and "'no-secret'" in log and str(os.getpid()) in log


def test_denied_listen_raises_permission_error(tmp_path):
    d = private_dir(tmp_path, "socks")
    rule = f'name = "no-listen-here"\naction = "deny"\ndirection = "listen"\n' \
           f'address = ["{d}/*"]'
    with running_monitor(acl_text=_acl(rule)) as mon:
        before = mon.status()["counters"]
        with impl.socket(socket.AF_UNIX, socket.SOCK_STREAM) as srv:
            srv.bind(str(d / "l.sock"))
            with pytest.raises(PermissionError) as info:
                srv.listen()
            assert info.value.errno == errno.EACCES and "no-listen-here" in str(info.value)
        status = mon.status()
        assert status["counters"]["listens_denied"] == before["listens_denied"] + 1
        assert status["counters"]["listens"] == before["listens"]
        assert status["listeners"] == []
        assert "denied listen" in mon.log_text() and "'no-listen-here'" in mon.log_text()


def test_reload_applies_to_new_connections_while_an_old_one_keeps_working(tmp_path, capsys):
    with running_monitor(acl_text=_acl('name = "noop"\naction = "allow"\nport = 1')) as mon:
        config = Path(mon.path).parent / "acl.toml"
        with connected_pair() as (srv, cli, acc):
            port = srv.getsockname()[1]
            assert cli.transport == "ring"
            config.write_text(_acl(f'name = "closed-now"\naction = "deny"\n'
                                   f'direction = "connect"\nport = {port}'))
            code, _, err = ctl_main(capsys, "reload", "--socket", mon.path)
            assert code == 0, err
            with pytest.raises(ConnectionRefusedError):
                impl.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
            roundtrip(cli, acc, 5000)      # established before: untouched
            counters = mon.status()["counters"]
            assert (counters["denied"], counters["connections"]) == (1, 1)


# -- autostart ----------------------------------------------------------------------------------
_CONNECT_ONCE = """
import json, os, socket, sys
import impl
from impl.monitor import client, protocol as P
sys.stdin.readline()                      # the parent says go
plain = socket.create_server(("127.0.0.1", 0))
with impl.create_connection(plain.getsockname(), timeout=20) as c:
    chan = client.current()
    pid = chan.request(P.STATUS).body["monitor"]["pid"] if chan else None
    print(json.dumps({"transport": c.transport, "monitor": pid}), flush=True)
"""


def _autostart_env(path: str, autostart: str | None) -> dict[str, str]:
    return python_env(**{ENV_SOCKET: path, ENV_AUTOSTART: autostart})


def _connect_once(procs: list[subprocess.Popen]) -> list[dict]:
    for p in procs:       # release all at once: they race from here
        p.stdin.write("go\n")
        p.stdin.flush()
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=TIMEOUT)
        assert p.returncode == 0, stderr
        out.append(json.loads(stdout))
    return out


def _spawn_connectors(n: int, env: dict) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", _CONNECT_ONCE], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=env, cwd=str(ROOT)) for _ in range(n)]


@pytest.mark.parametrize("setting", [None, "1"], ids=["unset", "1"])
def test_autostart_starts_a_detached_monitor(tmp_path, setting):
    d = private_dir(tmp_path)
    path = str(d / "monitor.sock")
    procs = _spawn_connectors(1, _autostart_env(path, setting))
    try:
        [got] = _connect_once(procs)
        assert got["transport"] == "kernel"       # nobody listens through socksdirect
        assert got["monitor"] is not None
        assert monitors_on(path) == [got["monitor"]]      # outlived its starter
        assert os.getsid(got["monitor"]) != os.getsid(0)   # in a session of its own
        assert (d / "monitor.log").exists()
        res = run_py(["-m", "impl.ctl", "stop", "--socket", path])
        assert res.returncode == 0, res.stderr
        wait_gone(got["monitor"])
    finally:
        for p in procs:
            p.kill()
            p.wait()
        kill_monitors_on(path)


def test_racing_processes_start_exactly_one_monitor(tmp_path):
    d = private_dir(tmp_path)
    path = str(d / "monitor.sock")
    procs = _spawn_connectors(3, _autostart_env(path, None))
    try:
        got = _connect_once(procs)
        pids = {g["monitor"] for g in got}
        assert len(pids) == 1 and None not in pids, got   # all reached the same one
        assert monitors_on(path) == list(pids)
    finally:
        for p in procs:
            p.kill()
            p.wait()
        kill_monitors_on(path)


def test_autostart_off_means_kernel_sockets(tmp_path):
    d = private_dir(tmp_path)
    path = str(d / "monitor.sock")
    procs = _spawn_connectors(1, _autostart_env(path, "0"))
    try:
        [got] = _connect_once(procs)
        assert got == {"transport": "kernel", "monitor": None}
        assert monitors_on(path) == [] and not os.path.exists(path)
    finally:
        for p in procs:
            p.kill()
            p.wait()


# -- descriptors handed over by the monitor ------------------------------------------------------
def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def test_ring_attach_adopt_takes_the_descriptors_as_they_are():
    """Ring.attach(adopt=True): no dup; the ring owns them, closes them, even on failure."""
    from impl.ring import Ring, RingCorrupt, RingFds
    with Ring.create(4096) as made:
        given = RingFds(*(os.dup(fd) for fd in made.fds()))
        ring = Ring.attach(given, adopt=True)
        assert ring.fds() == given
        ring.writer().write(b"hello")
        assert made.reader().read(5) == b"hello"      # the same ring
        ring.close()
        assert not any(_is_open(fd) for fd in given)
        bad = os.memfd_create("not-a-ring", os.MFD_CLOEXEC)
        efds = [os.dup(fd) for fd in made.fds()[1:]]
        with pytest.raises(RingCorrupt):
            Ring.attach(RingFds(bad, *efds), adopt=True)
        assert not any(_is_open(fd) for fd in (bad, *efds))
        kept = RingFds(*(os.dup(fd) for fd in made.fds()))
        try:
            with Ring.attach(kept) as twin:               # without adopt: a copy
                assert set(twin.fds()).isdisjoint(kept)
            assert all(_is_open(fd) for fd in kept)
        finally:
            for fd in kept:
                os.close(fd)
