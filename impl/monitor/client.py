"""The library's side of the control protocol: one channel per process to the monitor.

:func:`channel` returns this process's :class:`ControlChannel`, connecting
(and, unless ``SOCKSDIRECT_AUTOSTART=0``, starting a monitor) on first use.
When no monitor can be had, it returns None and the socket layer uses plain
kernel sockets: the library degrades, it does not fail.

A listener gets a channel of its own (:func:`open_listener_channel`): the
monitor pushes connections to it, so its descriptor is readable exactly when
a connection waits, and it can sit in the listener's epoll set.

After ``fork`` the child starts with no channel: SO_PEERCRED names the
process that connected, so the child must connect again to be itself.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import subprocess
import sys
import threading
from typing import Any

from impl.monitor import protocol as P
from impl.monitor.paths import ENV_AUTOSTART, default_socket_path, ensure_private_dir

__all__ = ["ControlChannel", "channel", "current", "open_listener_channel", "reset",
           "start_monitor",
           "MonitorUnavailable"]

log = logging.getLogger("socksdirect")

#: How long the library waits for a monitor it started to say it is ready.
START_TIMEOUT = 15.0


class MonitorUnavailable(OSError):
    """No monitor answers and none could be started."""


class ControlChannel:
    """A request/reply channel to the monitor (thread-safe: one request at a time)."""

    def __init__(self, sock: socket.socket, path: str) -> None:
        """Wrap a connected SOCK_SEQPACKET socket to the monitor at *path*."""
        self.sock = sock
        self.path = path
        self._lock = threading.Lock()
        self.pid = os.getpid()

    @classmethod
    def connect(cls, path: str, role: str = "library") -> ControlChannel:
        """Connect to the monitor at *path* and say HELLO; OSError if none answers."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            sock.settimeout(START_TIMEOUT)
            sock.connect(path)
            chan = cls(sock, path)
            chan.request(P.HELLO, {"version": P.VERSION, "role": role})
        except BaseException:
            sock.close()
            raise
        return chan

    def request(self, op: int, body: dict[str, Any] | None = None,
                fds=()) -> P.Message:
        """Send one request and return the OK reply (its fds are the caller's).

        An ERROR reply raises OSError with the monitor's errno and message;
        a closed channel raises ConnectionResetError.
        """
        with self._lock:
            P.send_msg(self.sock, op, body, fds)
            reply = P.recv_msg(self.sock)
        if reply is None:
            raise ConnectionResetError(errno.ECONNRESET, "the monitor closed the channel")
        if reply.op == P.ERROR:
            reply.close_fds()
            raise OSError(reply.body["errno"], reply.body["message"])
        if reply.op != P.OK:
            reply.close_fds()
            raise ConnectionResetError(errno.EPROTO, f"unexpected {reply.name} from the monitor")
        return reply

    def notify(self, op: int, body: dict[str, Any]) -> None:
        """Send a one-way message; a dead monitor is not an error here."""
        try:
            with self._lock:
                P.send_msg(self.sock, op, body)
        except OSError:
            pass

    def close(self) -> None:
        """Close the channel."""
        self.sock.close()


_lock = threading.Lock()
_channel: ControlChannel | None = None
_unavailable_warned = False


def _autostart_allowed() -> bool:
    return os.environ.get(ENV_AUTOSTART, "1").lower() not in ("0", "no", "false", "off")


def channel(*, fresh: bool = False) -> ControlChannel | None:
    """This process's channel to the monitor, or None when there is no monitor.

    *fresh* drops the current channel first (after the monitor restarted).
    """
    global _channel, _unavailable_warned
    with _lock:
        if _channel is not None and (fresh or _channel.pid != os.getpid()):
            _channel.close()
            _channel = None
        if _channel is not None:
            return _channel
        path = default_socket_path()
        try:
            _channel = ControlChannel.connect(path)
        except (FileNotFoundError, ConnectionRefusedError):
            if not _autostart_allowed():
                _warn_once(path, "not running and SOCKSDIRECT_AUTOSTART=0")
                return None
            try:
                start_monitor(path)
                _channel = ControlChannel.connect(path)
            except OSError as exc:
                _warn_once(path, f"could not be started: {exc}")
                return None
        except OSError as exc:
            _warn_once(path, str(exc))
            return None
        _unavailable_warned = False
        return _channel


def _warn_once(path: str, why: str) -> None:
    global _unavailable_warned
    if not _unavailable_warned:
        _unavailable_warned = True
        log.warning("socksdirect monitor at %s %s: using kernel sockets", path, why)


def current() -> ControlChannel | None:
    """This process's channel if it has one already; never connects or starts a monitor."""
    chan = _channel
    return chan if chan is not None and chan.pid == os.getpid() else None


def open_listener_channel() -> ControlChannel | None:
    """A new channel of its own for one listener (None without a monitor)."""
    if channel() is None:
        return None
    try:
        return ControlChannel.connect(default_socket_path(), role="listener")
    except OSError:
        return None


def reset() -> None:
    """Forget this process's channel (tests; after the monitor restarted)."""
    global _channel
    with _lock:
        if _channel is not None:
            _channel.close()
        _channel = None


def start_monitor(path: str, *, config: str | None = None) -> None:
    """Start a detached monitor on *path* and wait until it listens.

    Two processes racing here both start one; the loser finds the lock
    taken and exits, and both then connect to the winner.
    """
    ensure_private_dir(os.path.dirname(os.path.abspath(path)))
    r, w = os.pipe()
    cmd = [sys.executable, "-m", "impl.monitor", "--socket", path, "--daemon",
           "--ready-fd", str(w), "--log-level", "warning"]
    if config:
        cmd += ["--config", config]
    logfile = os.path.join(os.path.dirname(os.path.abspath(path)), "monitor.log")
    try:
        with open(logfile, "ab") as err:
            proc = subprocess.Popen(cmd, pass_fds=(w,), stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=err,
                                    cwd="/", env=_monitor_env())
        os.close(w)
        w = -1
        with os.fdopen(r, "rb") as f:
            r = -1
            line = f.readline().decode(errors="replace").strip()
        proc.wait(timeout=START_TIMEOUT)
    finally:
        for fd in (r, w):
            if fd >= 0:
                os.close(fd)
    if line == "ready" or "already runs" in line:
        return
    raise MonitorUnavailable(errno.ECONNREFUSED, f"monitor did not start: {line or 'no reply'}"
                             f" (see {logfile})")


def _monitor_env() -> dict[str, str]:
    env = dict(os.environ)
    # The monitor must import this very package, wherever it was imported from.
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _after_fork_in_child() -> None:
    global _channel, _lock
    _lock = threading.Lock()
    if _channel is not None:
        # The parent still uses the socket: drop our copy without a word.
        fd = _channel.sock.detach()
        if fd >= 0:
            os.close(fd)
        _channel = None


os.register_at_fork(after_in_child=_after_fork_in_child)
