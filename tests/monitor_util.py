"""Running monitors for tests: each one private, in its own temporary directory.

Tests never touch the user's own monitor: :mod:`tests.conftest` points
``SOCKSDIRECT_MONITOR`` at a session monitor in a temporary directory and
sets ``SOCKSDIRECT_AUTOSTART=0`` before any test runs.  A test that needs a
monitor of its own (an ACL, a restart, a kill) uses :func:`running_monitor`.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from impl.monitor import client
from impl.monitor import protocol as P
from impl.monitor.paths import ENV_AUTOSTART, ENV_SOCKET

__all__ = ["MonitorProc", "running_monitor", "use_monitor", "ROOT", "open_fds", "no_fd_leaks"]

ROOT = Path(__file__).resolve().parent.parent
#: Bound on every wait for a monitor to start or stop.
START_TIMEOUT = 30.0


class MonitorProc:
    """A monitor process started by a test."""

    def __init__(self, path: str, proc: subprocess.Popen, log: Path) -> None:
        self.path = path
        self.proc = proc
        self.log = log

    @property
    def pid(self) -> int:
        return self.proc.pid

    def request(self, op: int, body: dict | None = None) -> P.Message:
        """One request on a fresh channel (not this process's library channel)."""
        chan = client.ControlChannel.connect(self.path, role="test")
        try:
            return chan.request(op, body)
        finally:
            chan.close()

    def status(self) -> dict:
        """The monitor's STATUS reply."""
        return self.request(P.STATUS).body

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Stop it with *sig* and return its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=START_TIMEOUT)


def start_monitor(path: str, *, config: str | None = None, log_level: str = "info",
                  log: Path | None = None, command: tuple[str, ...] = ("impl.monitor",)
                  ) -> MonitorProc:
    """Start ``python -m impl.monitor`` on *path*; return once it listens.

    *command* is the module to run and its first arguments (a planted-bug
    monitor: ``("tests.planted_monitor", "BUG")``).
    """
    log = log or Path(path).with_suffix(".log")
    r, w = os.pipe()
    cmd = [sys.executable, "-m", *command, "--socket", path, "--ready-fd", str(w),
           "--log-level", log_level]
    if config:
        cmd += ["--config", config]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with open(log, "ab") as err:
        proc = subprocess.Popen(cmd, pass_fds=(w,), stdin=subprocess.DEVNULL,
                                stdout=err, stderr=err, env=env, cwd=str(ROOT))
    os.close(w)
    try:
        with os.fdopen(r, "rb") as f:
            line = f.readline().decode(errors="replace").strip()
    except BaseException:
        proc.kill()
        raise
    if line != "ready":
        proc.kill()
        proc.wait()
        raise RuntimeError(f"monitor did not start ({line!r}); log:\n{log.read_text()}")
    return MonitorProc(path, proc, log)


@contextlib.contextmanager
def running_monitor(*, config: str | None = None, acl_text: str | None = None,
                    log_level: str = "info", command: tuple[str, ...] = ("impl.monitor",)
                    ) -> Iterator[MonitorProc]:
    """A private monitor for one test; the library of this process uses it meanwhile."""
    with tempfile.TemporaryDirectory(prefix="sdmon-") as d:
        os.chmod(d, 0o700)
        if acl_text is not None:
            config = os.path.join(d, "acl.toml")
            Path(config).write_text(acl_text)
        mon = start_monitor(os.path.join(d, "monitor.sock"), config=config,
                            log_level=log_level, command=command)
        try:
            with use_monitor(mon.path):
                yield mon
        finally:
            if mon.proc.poll() is None:
                mon.stop()


@contextlib.contextmanager
def use_monitor(path: str) -> Iterator[None]:
    """Point this process's library at the monitor on *path* meanwhile."""
    old = os.environ.get(ENV_SOCKET)
    os.environ[ENV_SOCKET] = path
    client.reset()
    try:
        yield
    finally:
        client.reset()
        if old is None:
            os.environ.pop(ENV_SOCKET, None)
        else:
            os.environ[ENV_SOCKET] = old


def isolate_environment() -> str:
    """Make a private socket directory the default and forbid autostart; return it."""
    d = tempfile.mkdtemp(prefix="sdtest-")
    os.chmod(d, 0o700)
    os.environ[ENV_SOCKET] = os.path.join(d, "monitor.sock")
    os.environ[ENV_AUTOSTART] = "0"
    return d


def open_fds() -> set[str]:
    """This process's descriptors, less the library's control channel (opened once, kept)."""
    fds = set(os.listdir("/proc/self/fd"))
    chan = client.current()
    if chan is not None and chan.sock.fileno() >= 0:
        fds.discard(str(chan.sock.fileno()))
    return fds


@pytest.fixture
def no_fd_leaks():
    """Fail the test if it leaves descriptors open (import it, with autouse, where wanted)."""
    # Earlier tests' garbage first: a socket collected during this test would
    # close a descriptor that was open before it, and fail it for nothing.
    gc.collect()
    before = open_fds()
    yield
    assert open_fds() == before, "file descriptors leaked"
