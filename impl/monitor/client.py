"""The library's side of the control protocol: one channel per process to the monitor.

:func:`channel` returns this process's :class:`ControlChannel`, connecting
(and, unless ``SOCKSDIRECT_AUTOSTART=0``, starting a monitor) on first use.
When no monitor can be had, it returns None and the socket layer uses plain
kernel sockets: the library degrades, it does not fail.  :func:`request`
sends one request on it and, when the channel turns out dead (the monitor
was restarted), once more on a new one.

A listener gets a channel of its own (:func:`open_listener_channel`): the
monitor pushes connections to it, so its descriptor is readable exactly when
a connection waits, and it can sit in the listener's epoll set.  So does a
process that shares sockets (:func:`open_agent_channel`): its agent thread
sends TAKE and RELEASE there (:meth:`ControlChannel.notify`) and receives
the monitor's RECALL and GRANT pushes (:meth:`ControlChannel.receive`).

After ``fork`` the child starts with no channel: SO_PEERCRED names the
process that connected, so the child must connect again to be itself.  The
channel is an :class:`impl.fork.PerProcess` resource ("control-channel"):
the child lets go of the parent's without a word and makes its own on first
use.

Every wait here is bounded: a channel's sends and receives time out after
:data:`REQUEST_TIMEOUT` (kernel timeouts, SO_RCVTIMEO/SO_SNDTIMEO, so a
request costs no extra poll() call), starting a monitor after
:data:`START_TIMEOUT`.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import select
import socket
import struct
import subprocess
import sys
import threading
import time
from typing import Any

from impl.fork import PerProcess
from impl.monitor import protocol as P
from impl.monitor.paths import ENV_AUTOSTART, default_socket_path, ensure_private_dir, flock_by

__all__ = ["ControlChannel", "channel", "current", "request", "open_listener_channel",
           "open_agent_channel", "reset", "start_monitor", "recv_msg", "MonitorUnavailable",
           "START_TIMEOUT", "REQUEST_TIMEOUT"]

log = logging.getLogger("socksdirect")

#: How long the library waits for a monitor it started to say it is ready.
START_TIMEOUT = 15.0
#: How long one request waits for the monitor to take it and to answer.
REQUEST_TIMEOUT = 15.0

#: The protocol's receive (into a reused buffer), under its old name here.
recv_msg = P.recv_msg


class MonitorUnavailable(OSError):
    """No monitor answers and none could be started."""


def _set_timeouts(sock: socket.socket, seconds: float) -> None:
    tv = struct.pack("ll", int(seconds), int((seconds % 1) * 1e6))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)


class ControlChannel:
    """A request/reply channel to the monitor (thread-safe: one request at a time)."""

    def __init__(self, sock: socket.socket, path: str) -> None:
        """Wrap a connected SOCK_SEQPACKET socket to the monitor at *path*."""
        self.sock = sock
        self.path = path
        self._lock = threading.Lock()
        self.pid = os.getpid()

    @classmethod
    def connect(cls, path: str, role: str = "library",
                timeout: float = REQUEST_TIMEOUT) -> ControlChannel:
        """Connect to the monitor at *path* and say HELLO; OSError if none answers.

        FileNotFoundError or ConnectionRefusedError: no monitor listens
        there; PermissionError: the directory is not ours to enter.
        """
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            _set_timeouts(sock, timeout)   # also bounds connect() on a full backlog
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
        a closed channel raises ConnectionResetError (or BrokenPipeError);
        no reply within the timeout raises TimeoutError and closes the
        channel, since a late reply would be taken for the next request's.
        """
        with self._lock:
            try:
                P.send_msg(self.sock, op, body, fds)
                reply = P.recv_msg(self.sock)
            except BlockingIOError:   # SO_RCVTIMEO / SO_SNDTIMEO ran out
                self.sock.close()
                raise TimeoutError(errno.ETIMEDOUT, f"the monitor at {self.path} did not "
                                   f"answer {P.OP_NAMES[op]}") from None
        if reply is None:
            raise ConnectionResetError(errno.ECONNRESET, "the monitor closed the channel")
        if reply.op == P.ERROR:
            reply.close_fds()
            raise OSError(reply.body["errno"], reply.body["message"])
        if reply.op != P.OK:
            reply.close_fds()
            raise ConnectionResetError(errno.EPROTO, f"unexpected {reply.name} from the monitor")
        return reply

    def notify(self, op: int, body: dict[str, Any], fds=(), *, check: bool = False) -> None:
        """Send a one-way message (with *fds*); a dead monitor is not an error, unless *check*.

        With *check*, an OSError from the socket is raised (BrokenPipeError
        or ConnectionResetError: the monitor is gone; TimeoutError: it took
        nothing for REQUEST_TIMEOUT).
        """
        try:
            with self._lock:
                P.send_msg(self.sock, op, body, fds)
        except BlockingIOError:   # SO_SNDTIMEO ran out
            if check:
                raise TimeoutError(errno.ETIMEDOUT, f"the monitor at {self.path} took no "
                                   f"{P.OP_NAMES[op]}") from None
        except OSError:
            if check:
                raise

    def receive(self, timeout: float | None = None) -> P.Message | None:
        """Wait up to *timeout* seconds (None: for ever) for one pushed message.

        For a channel that carries pushes (an agent's RECALL and GRANT, a
        listener's NEWCONN) and no requests: a reply would be taken here.
        Returns None at EOF (the monitor closed the channel or is gone);
        raises TimeoutError when nothing came in time, ProtocolError for a
        malformed message.  One thread at a time may receive.
        """
        if timeout is not None and timeout < 0:
            raise ValueError(f"timeout must be None or >= 0, got {timeout!r}")
        poller = select.poll()
        poller.register(self.sock.fileno(), select.POLLIN)
        if not poller.poll(None if timeout is None else int(timeout * 1000 + 0.999)):
            raise TimeoutError(errno.ETIMEDOUT, f"nothing from the monitor in {timeout} s")
        try:
            return P.recv_msg(self.sock)
        except ConnectionResetError:
            return None

    def fileno(self) -> int:
        """The channel's descriptor: readable when a message waits (for select/poll)."""
        return self.sock.fileno()

    def close(self) -> None:
        """Close the channel."""
        self.sock.close()


_unavailable_warned = False


def _connect_process_channel() -> ControlChannel | None:
    """Make this process's channel: connect, starting a monitor if allowed; None if none."""
    global _unavailable_warned
    path = default_socket_path()
    try:
        chan = ControlChannel.connect(path)
    except (FileNotFoundError, ConnectionRefusedError):
        if not _autostart_allowed():
            _warn_once(path, "is not running and SOCKSDIRECT_AUTOSTART=0")
            return None
        try:
            chan = _start_and_connect(path)
        except OSError as exc:
            _warn_once(path, f"could not be started: {exc}")
            return None
    except OSError as exc:
        _warn_once(path, f"cannot be reached: {exc}")
        return None
    _unavailable_warned = False
    return chan


def _orphan(chan: ControlChannel) -> None:
    """In a fork child: drop our copy of the parent's channel without a word."""
    fd = chan.sock.detach()
    if fd >= 0:
        os.close(fd)


#: This process's channel (Fork.tla's per-process resource: never a parent's).
_channel = PerProcess("control-channel", _connect_process_channel,
                      alive=lambda chan: chan.sock.fileno() >= 0,
                      close=ControlChannel.close, orphan=_orphan)


def _autostart_allowed() -> bool:
    return os.environ.get(ENV_AUTOSTART, "1").strip().lower() not in ("0", "no", "false", "off")


def channel(*, fresh: bool = False) -> ControlChannel | None:
    """This process's channel to the monitor, or None when there is no monitor.

    *fresh* drops the current channel first (after the monitor restarted).
    With no monitor listening and autostart allowed, one is started
    (:func:`start_monitor`); racing processes start exactly one.
    """
    if fresh:
        _channel.forget()
    return _channel.get()


def request(op: int, body: dict[str, Any] | None = None, fds=()) -> P.Message:
    """One request on this process's channel, retried once on a new channel if it was dead.

    A dead channel is what a restarted monitor leaves behind: the send fails
    with EPIPE or the reply is EOF.  Raises MonitorUnavailable without a
    monitor, and what ControlChannel.request raises otherwise.
    """
    for attempt in (0, 1):
        chan = channel(fresh=attempt > 0)
        if chan is None:
            raise MonitorUnavailable(errno.ECONNREFUSED, "no socksdirect monitor")
        try:
            return chan.request(op, body, fds)
        except (ConnectionResetError, BrokenPipeError):
            if attempt:
                raise
    raise AssertionError("unreachable")


def _warn_once(path: str, why: str) -> None:
    global _unavailable_warned
    if not _unavailable_warned:
        _unavailable_warned = True
        log.warning("socksdirect monitor at %s %s: using kernel sockets", path, why)


def current() -> ControlChannel | None:
    """This process's channel if it has one already; never connects or starts a monitor."""
    return _channel.peek()


def open_listener_channel() -> ControlChannel | None:
    """A new channel of its own for one listener (None without a monitor)."""
    if channel() is None:
        return None
    try:
        return ControlChannel.connect(default_socket_path(), role="listener")
    except OSError:
        return None


def open_agent_channel() -> ControlChannel | None:
    """A new channel for this process's agent: HELLO role "agent" (None without a monitor).

    The monitor pushes RECALL and GRANT there from then on, and any it kept
    for this process before.  A second agent channel replaces the first.
    """
    if channel() is None:
        return None
    try:
        return ControlChannel.connect(default_socket_path(), role="agent")
    except OSError:
        return None


def reset() -> None:
    """Forget this process's channel (tests; after the monitor restarted)."""
    _channel.forget()


def _start_and_connect(path: str) -> ControlChannel:
    """Start a monitor on *path* unless another process is doing so; connect to it.

    A lock file beside the socket makes the check-and-start one step among
    all processes of the user: whoever takes it second finds the monitor
    that the first one started.
    """
    ensure_private_dir(os.path.dirname(os.path.abspath(path)))
    fd = os.open(path + ".start", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        if not flock_by(fd, fcntl.LOCK_EX, time.monotonic() + START_TIMEOUT):
            raise MonitorUnavailable(errno.ETIMEDOUT, "another process has been starting "
                                     f"a monitor on {path} for {START_TIMEOUT} s")
        try:
            return ControlChannel.connect(path)
        except (FileNotFoundError, ConnectionRefusedError):
            pass
        start_monitor(path)
        return ControlChannel.connect(path)
    finally:
        os.close(fd)   # releases the lock


def start_monitor(path: str, *, config: str | None = None) -> None:
    """Start a detached monitor on *path* and wait until it listens.

    The monitor runs in its own session (double fork), logging warnings to
    ``monitor.log`` beside the socket.  If a monitor already runs on *path*
    this returns at once.  Raises MonitorUnavailable if it did not start.
    """
    ensure_private_dir(os.path.dirname(os.path.abspath(path)))
    r, w = os.pipe2(os.O_CLOEXEC)
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
        line = _read_line(r, time.monotonic() + START_TIMEOUT)
        proc.wait(timeout=START_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        line = ""
    finally:
        for fd in (r, w):
            if fd >= 0:
                os.close(fd)
    if line == "ready" or "already runs" in line:
        return
    raise MonitorUnavailable(errno.ECONNREFUSED, f"monitor did not start: {line or 'no reply'}"
                             f" (see {logfile})")


def _read_line(fd: int, deadline: float) -> str:
    """Read one line from *fd* until EOF or *deadline*."""
    data = b""
    while b"\n" not in data:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            break
        chunk = os.read(fd, 512)
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace").strip()


def _monitor_env() -> dict[str, str]:
    env = dict(os.environ)
    # The monitor must import this very package, wherever it was imported from.
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env
