"""The monitor: SocksDirect's trusted control plane (spec/tla/Connect.tla).

One single-threaded event loop.  It accepts control channels from client
processes of its own user (``SO_PEERCRED``; anyone else is turned away),
registers listeners, answers connects by creating a connection's two rings
and handing their descriptors to its two endpoints only, enforces the ACL,
and watches every client process through a pidfd so that a process that
dies -- even by ``kill -9`` -- has its listeners removed and its peers told
(EOF on what it wrote, EPIPE on what it would have read).

The data plane never passes through here: once both ends hold their rings,
the monitor could stop and the connection would go on working.  It keeps a
mapping of each connection's rings only to close them on behalf of a dead
process and to count the bytes that went through.

Why single-threaded: every table changes only in the loop, so a request is
one atomic step, which is exactly what Connect.tla's actions assume.

Token sharing (spec/tla/TokenSharing.tla, across processes): a connection
end may be held by several processes once a fork child says FORKED; the
monitor keeps the set of *holders* of each end.

Fork (spec/tla/Fork.tla): before the first fork() an end lives through, its
process sends the read end of the end's *hold pipe* (HOLD); every process
that holds the end has a copy of the write end, so the read end reports
POLLHUP exactly when no process holds it any more -- the kernel's count,
which includes children whose FORKED has not come yet.  The monitor watches
each read end in its selector.  An end closes for the monitor only when its
registered holders are gone AND its hold pipe (if it has one) reports
POLLHUP; if its last holder died without closing, the monitor closes its
ring ends for it, so that the peer sees EOF.  A child proves that it holds
an end with its copy of the write end (FORKED), an acceptor that it took a
connection with the memfd of the ring it reads (ACCEPTED, on its own process
channel: the listener's channel may be shared by a pre-fork pool).

Each end's send and recv token has a row in the token table -- holder pid,
FIFO queue of pids, whether a RECALL is out -- made on the first TAKE.  The
monitor pushes RECALL and GRANT to each process's *agent channel* (HELLO
role "agent"), keeping them for a process whose agent has not said HELLO
yet.  A holder that dies or closes its copy of the end has its tokens
reclaimed: the token word in the ring is reset through the monitor's own
mapping and the token goes to the next in queue.

What keeps the loop alive: every event handler runs under :meth:`Monitor._run`,
which logs an unexpected exception (and answers the request that raised it
with ``ERROR EIO``) instead of letting it end the loop.  Every descriptor
that arrives with a message is closed after its handler returns
(:meth:`protocol.Message.close_fds`); handlers look at them, never keep them.
"""

from __future__ import annotations

import _socket  # the C socket: no enum conversions, on the connect path
import errno
import fcntl
import itertools
import logging
import mmap
import os
import resource
import secrets
import select
import selectors
import signal
import socket
import stat
import struct
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from impl.localaddr import is_local_address
from impl.monitor import acl as aclmod
from impl.monitor import protocol as P
from impl.monitor.paths import ensure_private_dir
from impl.ring import Ring, layout

__all__ = ["Monitor", "DEFAULT_BUF", "MAX_BUF", "POOL_SIZE", "MAX_ROWS", "raise_nofile_limit"]

log = logging.getLogger("socksdirect.monitor")

#: Ring size when a socket did not set SO_RCVBUF / SO_SNDBUF.
DEFAULT_BUF = 256 * 1024
#: Largest ring the monitor will create for one direction.
MAX_BUF = 64 * 1024 * 1024
#: Rings of DEFAULT_BUF kept ready, made while the loop has nothing else to
#: do, so that a connect does not wait for memfd_create, eventfd and mmap.
#: A connection takes two.  Each costs three descriptors and one resident page.
POOL_SIZE = 8
#: Most rows of one table in a STATUS reply (the counts say how many there are).
MAX_ROWS = 2000
_MIN_BUF = 4096
_WILDCARD = {"inet": "0.0.0.0", "inet6": "::"}
#: Ops whose sender does not wait for a reply: never answer them, not even
#: with ERROR, or the sender would take it for the reply to its next request.
_ONE_WAY = frozenset({P.ACCEPTED, P.CLOSE, P.TAKE, P.RELEASE})
#: SO_PEERPIDFD (Linux 6.5): a pidfd of the very process that connected.
_SO_PEERPIDFD = getattr(socket, "SO_PEERPIDFD", 77)
#: Most rounds of waiting messages a STATUS handles before it answers.
_SETTLE_ROUNDS = 16
#: Most messages of a dead process's channel handled before its clean-up.
_DRAIN_MAX = 4096


@dataclass
class Proc:
    """A client process, known by its pid from SO_PEERCRED."""

    pid: int
    uid: int
    gid: int
    pidfd: int
    netns: int
    peer: aclmod.Peer
    channels: set[int] = field(default_factory=set)      # fds of its control channels
    conns: set[int] = field(default_factory=set)         # connections it holds an end of
    listeners: set[tuple] = field(default_factory=set)
    agent: Channel | None = None                         # where RECALL and GRANT go
    outbox: deque[bytes] = field(default_factory=deque)  # pushes not sent yet, oldest first


@dataclass
class Channel:
    """One control connection (a process may hold several: one per listener, an agent's)."""

    sock: socket.socket
    pid: int
    listener: tuple | None = None
    hello: bool = False
    role: str = ""
    stalled: bool = False       # an agent channel that was full: waits until writable


@dataclass
class Listener:
    """A registered listener: Connect.tla's ``listeners[a]``."""

    key: tuple
    owner: int
    chan: Channel
    backlog: int
    rcvbuf: int
    sndbuf: int
    queue: deque[int] = field(default_factory=deque)    # pushed, not yet accepted


@dataclass
class Conn:
    """A connection: Connect.tla's ``conns[c]``; sides "open", "queued" or "closed"."""

    id: int
    client: int
    server: int
    key: tuple
    cs: Ring            # client -> server
    sc: Ring            # server -> client
    cstate: str = "open"
    sstate: str = "queued"
    created: float = field(default_factory=time.time)
    #: end -> pids holding it (the process that made it, and fork children that said FORKED)
    holders: dict[str, set[int]] = field(init=False)
    #: every pid that held an end: each one's Proc.conns lists this connection
    pids: set[int] = field(init=False)
    #: (end, dir) -> its row of the token table, made on first use
    tokens: dict[tuple[str, str], Token] = field(default_factory=dict)
    #: end -> the read end of its hold pipe (HOLD), watched in the selector
    #: until it reports POLLHUP (no process holds the end any more)
    hold: dict[str, int] = field(default_factory=dict)
    #: ends whose hold pipe reported POLLHUP: closed once no holder is registered
    unheld: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        # The server end is nobody's until a process says ACCEPTED (with
        # proof): in a pre-fork pool, any holder of the listener may take it.
        self.holders = {"client": {self.client}, "server": set()}
        self.pids = {self.client}

    def origin(self, end: str) -> int:
        """The pid that made *end*: the connecting process or the one that accepted it."""
        return self.client if end == "client" else self.server


@dataclass
class Token:
    """TokenSharing.tla's monitor state for one token: holder (None: free), queue, recalled."""

    holder: int | None
    queue: deque[int] = field(default_factory=deque)
    recalled: bool = False


class _Refused(Exception):
    """A request refused with *errno*: answered with ERROR, nothing changed."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.errno = code


def raise_nofile_limit() -> tuple[int, int]:
    """Raise this process's RLIMIT_NOFILE soft limit to its hard limit; return (soft, hard).

    The monitor holds three descriptors per ring, six per connection, and
    one or two per client process: the usual soft limit of 1024 would cap a
    host at ~150 connections.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            log.warning("cannot raise RLIMIT_NOFILE from %d to %d: %s", soft, hard, exc)
    return soft, hard


class Monitor:
    """The monitor daemon.  ``serve_forever()`` runs it until STOP or a signal."""

    def __init__(self, path: str, *, acl: aclmod.Acl | None = None,
                 config: str | None = None, pool_size: int = POOL_SIZE) -> None:
        """Bind the control socket at *path* (its directory is made private).

        *config* is the ACL's TOML file, re-read on RELOAD and SIGHUP; *acl*
        overrides the first load (tests).  *pool_size* rings are kept ready
        (0: make each one when a connect needs it).
        """
        self.path = path
        self.config = config
        if acl is None:
            acl = aclmod.load_acl(config) if config else aclmod.default_acl()
        self.acl = acl
        self.started = time.time()
        self.counters = dict.fromkeys(
            ("connections", "kernel_fallbacks", "backlog_full", "refused", "denied",
             "listens", "listens_denied", "accepted", "closed", "resets", "deaths",
             "bytes", "protocol_errors", "channels_refused", "internal_errors",
             "forks", "takes", "grants", "recalls", "reclaims"), 0)
        self.procs: dict[int, Proc] = {}
        self.channels: dict[int, Channel] = {}
        self.listeners: dict[tuple, Listener] = {}
        self.conns: dict[int, Conn] = {}
        # Ids start at a random point: a CLOSE for a connection of a monitor
        # that was killed and restarted must not name one of this monitor's.
        self._ids = itertools.count((secrets.randbits(20) << 32) + 1)
        self._stopping = False
        self._reload_asked = False
        self._settling = False
        self._uid = os.geteuid()
        self._netns = _netns(os.getpid())
        self._pool: list[Ring] = []
        self._pool_size = pool_size
        self._pool_ok = True          # False after a failure to make one, until fds free up
        # One receive buffer for every channel: a fresh MAX_BODY buffer per
        # message costs more than the rest of a CONNECT.  Private, so a fork
        # (there is none in the monitor) could never share it.
        self._rbuf = mmap.mmap(-1, P.HEADER.size + P.MAX_BODY,
                               flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self._sel = selectors.DefaultSelector()
        self._lock_fd = -1
        self._spare_fd = -1
        self._sock_ino = 0
        try:
            self._sock = self._bind(path)
            # Kept for one purpose: when accept() fails with EMFILE, closing
            # it makes room to accept and close the channel, so the listening
            # socket does not stay readable and spin the loop.
            self._spare_fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        except BaseException:
            self._sel.close()
            self._rbuf.close()
            if self._lock_fd >= 0:
                os.close(self._lock_fd)
            raise

    # -- set-up ----------------------------------------------------------------
    def _bind(self, path: str) -> socket.socket:
        directory = os.path.dirname(os.path.abspath(path))
        ensure_private_dir(directory)
        # The lock, not the socket file, says whether a monitor runs: a socket
        # file can outlive a killed monitor, a lock cannot.
        self._lock_fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            self._lock_fd = -1
            raise OSError(errno.EADDRINUSE, f"a monitor already runs on {path}") from None
        try:
            os.unlink(path)     # a socket file left by a monitor that was killed
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            sock.bind(path)
            # The file's inode, to remove only our own socket file at the end
            # (fstat of the socket gives the socket's inode, not the file's).
            self._sock_ino = os.stat(path).st_ino
            os.chmod(path, 0o600)
            sock.listen(128)
            sock.setblocking(False)
            self._sel.register(sock, selectors.EVENT_READ, self._on_accept)
        except BaseException:
            sock.close()
            raise
        return sock

    # -- the loop ----------------------------------------------------------------
    def serve_forever(self, ready: Callable[[], None] | None = None) -> None:
        """Run until STOP, SIGTERM or SIGINT; then close everything of ours.

        Signal handlers only set flags: a step of the loop (one request)
        is never cut in half.  The wake-up pipe makes select() return so the
        flags are seen at once (PEP 475 would otherwise resume the wait).
        A SIGHUP is acted on before the next event is handled, so a request
        sent after the signal was delivered sees the new rules.  *ready* is
        called once the handlers are in place: a signal sent after it was
        called is never taken with its default action (which would kill).
        """
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._sel.register(r, selectors.EVENT_READ, self._on_wakeup)
        old_fd = signal.set_wakeup_fd(w)
        handlers = {signal.SIGTERM: self._on_signal, signal.SIGINT: self._on_signal,
                    signal.SIGHUP: self._on_signal}
        old = {s: signal.signal(s, h) for s, h in handlers.items()}
        log.info("monitor %d listening on %s (acl: %s)", os.getpid(), self.path,
                 self.acl.source)
        try:
            if ready is not None:
                ready()
            while not self._stopping:
                # Idle time fills the ring pool, one ring per turn, so that
                # a request never waits behind more than one ring's making.
                idle = self._pool_ok and len(self._pool) < self._pool_size
                events = self._sel.select(0 if idle else None)
                if not events and idle:
                    self._fill_pool(1)
                for key, _ in events:
                    if self._reload_asked:
                        self._reload_asked = False
                        self.reload()
                    self._run(key)
                    if self._stopping:
                        break
                if self._reload_asked:
                    self._reload_asked = False
                    self.reload()
        finally:
            for s, h in old.items():
                signal.signal(s, h)
            signal.set_wakeup_fd(old_fd)
            self._sel.unregister(r)
            os.close(r)
            os.close(w)
            self.close()

    def _run(self, key: selectors.SelectorKey) -> None:
        """Handle one event; an exception is logged and never ends the loop."""
        try:
            key.data(key.fileobj)
        except Exception:
            self.counters["internal_errors"] += 1
            log.exception("internal error handling %r", key.fileobj)
            # A channel whose handling fails outside a request would fail
            # again on the next turn: drop it rather than spin.
            chan = self.channels.get(_fileno(key.fileobj))
            if chan is not None and chan.sock is key.fileobj:
                self._drop_channel(chan)

    def _on_wakeup(self, fd: int) -> None:
        try:
            while os.read(fd, 512):
                pass
        except BlockingIOError:
            pass

    def _on_signal(self, signum, frame) -> None:
        if signum == signal.SIGHUP:
            self._reload_asked = True
        else:
            log.info("signal %d: stopping", signum)
            self._stopping = True

    def stop(self) -> None:
        """Ask the loop to end after the current step."""
        self._stopping = True

    def close(self) -> None:
        """Close the control socket and every descriptor the monitor holds.

        Established connections keep working: their rings are mapped by the
        endpoints, not by us.  Stopping is not a death: no connection is
        reset, not even one still queued at its listener.
        """
        self.listeners.clear()
        for chan in list(self.channels.values()):
            chan.listener = None
            self._drop_channel(chan)
        for conn in list(self.conns.values()):
            for end in P.ENDS:
                self._unwatch(conn, end)
            conn.cs.close()
            conn.sc.close()
        self.conns.clear()
        for proc in list(self.procs.values()):
            self._forget_proc(proc)
        for ring in self._pool:
            ring.close()
        self._pool.clear()
        try:
            self._sel.unregister(self._sock)
        except (KeyError, ValueError):
            pass
        self._sel.close()
        try:
            if os.stat(self.path).st_ino == self._sock_ino:
                os.unlink(self.path)
        except OSError:
            pass
        self._sock.close()
        for name in ("_spare_fd", "_lock_fd"):   # the lock last: a successor may start now
            fd = getattr(self, name)
            if fd >= 0:
                os.close(fd)
                setattr(self, name, -1)
        self._rbuf.close()

    # -- channels ----------------------------------------------------------------
    def _on_accept(self, lsock: socket.socket) -> None:
        try:
            sock, _ = lsock.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return
        except OSError as exc:
            if exc.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                raise
            self._shed_channel(lsock, exc)
            return
        try:
            self._admit(sock)
        except BaseException:
            if sock.fileno() not in self.channels:
                sock.close()
            raise

    def _shed_channel(self, lsock: socket.socket, exc: OSError) -> None:
        """Out of descriptors: accept and close one waiting channel (the client sees EOF)."""
        log.warning("cannot accept a control channel: %s; refusing it", exc)
        self.counters["channels_refused"] += 1
        self._pool_ok = False
        if self._spare_fd >= 0:
            os.close(self._spare_fd)
            self._spare_fd = -1
        try:
            sock, _ = lsock.accept()
            sock.close()
        except OSError:
            pass
        try:
            self._spare_fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            pass

    def _admit(self, sock: socket.socket) -> None:
        """Take a new channel: check who is at the other end, then serve it."""
        pid, uid, gid = _peercred(sock)
        if uid != self._uid and uid != 0:
            # The directory's mode should already have stopped this process.
            log.warning("refused a control channel from pid %d uid %d (not uid %d)",
                        pid, uid, self._uid)
            self.counters["channels_refused"] += 1
            sock.close()
            return
        proc = self.procs.get(pid)
        if proc is not None and _readable(proc.pidfd):
            # That process exited (its pidfd says so, we just have not handled
            # it yet) and its pid now names a new one: finish the old first.
            self.cleanup(pid)
            proc = None
        if proc is None:
            proc = self._new_proc(sock, pid, uid, gid)
            if proc is None:
                sock.close()
                return
        sock.setblocking(False)
        chan = Channel(sock, pid)
        self.channels[sock.fileno()] = chan
        proc.channels.add(sock.fileno())
        self._sel.register(sock, selectors.EVENT_READ, self._on_channel)

    def _new_proc(self, sock: socket.socket, pid: int, uid: int, gid: int) -> Proc | None:
        if pid <= 0:  # outside our pid namespace: no pidfd, no clean-up; turn it away
            log.warning("refused a control channel from a process outside our pid namespace")
            self.counters["channels_refused"] += 1
            return None
        pidfd = _peer_pidfd(sock, pid)
        if pidfd is None:  # gone already: nothing to serve
            return None
        try:
            proc = Proc(pid, uid, gid, pidfd, _netns(pid), aclmod.Peer.from_pid(pid, uid, gid))
            self._sel.register(pidfd, selectors.EVENT_READ,
                               lambda _fd, proc=proc: self._on_exit(proc))
        except BaseException:
            os.close(pidfd)
            raise
        self.procs[pid] = proc
        log.debug("process %d (%s) connected", pid, proc.peer.exe)
        return proc

    def _on_channel(self, sock: socket.socket) -> None:
        chan = self.channels.get(sock.fileno())
        if chan is None or chan.sock is not sock:
            return
        if chan.stalled:
            self._unstall(chan)
        try:
            msg = P.recv_msg(sock, self._rbuf)
        except (BlockingIOError, InterruptedError):
            return
        except P.ProtocolError as exc:
            self._protocol_error(chan, exc)
            return
        except OSError:
            msg = None
        if msg is None:
            self._drop_channel(chan)
            return
        try:
            self._dispatch(chan, msg)
        except Exception as exc:
            self.counters["internal_errors"] += 1
            log.exception("pid %d: internal error in %s", chan.pid, msg.name)
            if msg.op not in _ONE_WAY and self.channels.get(sock.fileno()) is chan:
                self._reply_error(chan, errno.EIO,
                                  f"internal monitor error in {msg.name}: {exc!r}")
        finally:
            msg.close_fds()

    def _protocol_error(self, chan: Channel, exc: P.ProtocolError) -> None:
        self.counters["protocol_errors"] += 1
        log.warning("pid %d: bad control message: %s", chan.pid, exc)
        self._reply_error(chan, errno.EPROTO, f"bad control message: {exc}")
        if exc.fatal:
            self._drop_channel(chan)

    def _send(self, chan: Channel, op: int, body: dict | None = None, fds=()) -> bool:
        """Send one message; False (and logged) if it could not go out."""
        try:
            P.send_msg(chan.sock, op, body, fds)
        except (OSError, P.ProtocolError) as exc:
            log.info("pid %d: cannot send %s: %s", chan.pid, P.OP_NAMES[op], exc)
            return False
        return True

    def _reply(self, chan: Channel, op: int, body: dict | None = None, fds=()) -> bool:
        """Answer a request; a reply that cannot go out ends the channel.

        Never a silent drop: the client would wait for it, or take the next
        reply for this one.  Closing makes it read what went out, then EOF.
        """
        if self._send(chan, op, body, fds):
            return True
        self._drop_channel(chan)
        return False

    def _reply_error(self, chan: Channel, code: int, message: str) -> None:
        self._reply(chan, P.ERROR, P.error_body(code, message))

    def _drop_channel(self, chan: Channel) -> None:
        fd = chan.sock.fileno()
        if fd < 0 or self.channels.get(fd) is not chan:
            return
        if chan.listener is not None:
            self._unlisten(chan.listener)
            # Unlistening resets the queued connections, and settling those can
            # reap this channel's process, whose cleanup drops this very channel.
            if self.channels.get(fd) is not chan:
                return
        del self.channels[fd]
        try:
            self._sel.unregister(chan.sock)
        except (KeyError, ValueError):
            pass
        chan.sock.close()
        proc = self.procs.get(chan.pid)
        if proc is not None:
            proc.channels.discard(fd)
            if proc.agent is chan:
                proc.agent = None    # pushes wait in its outbox for the next agent
            if not (proc.channels or proc.conns or proc.listeners):
                # Nothing left to clean up when it dies: stop watching it.
                self._forget_proc(proc)

    # -- messages ----------------------------------------------------------------
    def _dispatch(self, chan: Channel, msg: P.Message) -> None:
        if not chan.hello and msg.op != P.HELLO:
            self._protocol_error(chan, P.ProtocolError(
                f"{msg.name} before HELLO: the first message must be HELLO"))
            return
        handler = self._HANDLERS.get(msg.op)
        if handler is None:
            self._protocol_error(chan, P.ProtocolError(
                f"{msg.name} is not a request a monitor answers", fatal=False))
            return
        handler(self, chan, msg)

    def _on_hello(self, chan: Channel, msg: P.Message) -> None:
        if chan.hello:
            self._protocol_error(chan, P.ProtocolError("a second HELLO", fatal=False))
            return
        version = msg.body["version"]
        if version != P.VERSION:
            self._protocol_error(chan, P.ProtocolError(
                f"protocol version {_quote(version)}, this monitor speaks {P.VERSION}"))
            return
        chan.hello = True
        chan.role = msg.body["role"]
        if self._reply(chan, P.OK, {"version": P.VERSION, "pid": os.getpid()}) \
                and chan.role == "agent":
            self._adopt_agent(chan)

    def _on_ping(self, chan: Channel, msg: P.Message) -> None:
        self._reply(chan, P.OK)

    def _on_status(self, chan: Channel, msg: P.Message) -> None:
        # Topping the pool up first makes the descriptor count that follows
        # a STATUS the same whenever nothing else is going on.
        self._fill_pool(self._pool_size)
        self._settle(chan)
        body = self.status()
        if not self._send(chan, P.OK, body):
            # Too big for the socket's send buffer: make room once, then give up.
            size = len(P.encode(P.OK, body)) + 65536
            try:
                chan.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
            except OSError:
                pass
            self._reply(chan, P.OK, body)

    def _on_stats(self, chan: Channel, msg: P.Message) -> None:
        self._settle(chan)
        self._reply(chan, P.OK, {"counters": self.stats()})

    def _on_reload(self, chan: Channel, msg: P.Message) -> None:
        try:
            self.reload(strict=True)
        except (OSError, aclmod.AclError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            self._reply_error(chan, errno.EINVAL, f"reload failed, old rules kept: {why}")
            return
        self._reply(chan, P.OK, {"acl": self.acl.source, "rules": len(self.acl.rules)})

    def _on_stop(self, chan: Channel, msg: P.Message) -> None:
        self._reply(chan, P.OK)
        log.info("stop requested by pid %d", chan.pid)
        self._stopping = True

    # Connect.tla!Listen / ListenDenied
    def _on_listen(self, chan: Channel, msg: P.Message) -> None:
        proc = self.procs[chan.pid]
        if chan.listener is not None:
            self._reply_error(chan, errno.EISCONN, "this channel already carries a listener")
            return
        try:
            family, bufs, backlog, key, addr, req = self._check_listen(proc, msg)
        except _Refused as exc:
            self._reply_error(chan, exc.errno, str(exc))
            return
        decision = self._decide(proc, req)
        if not decision.allowed:
            self.counters["listens_denied"] += 1
            log.warning("denied listen by pid %d (%s) on %s: %s", proc.pid, proc.peer.exe,
                        _fmt(addr), decision)
            self._reply_error(chan, errno.EACCES, f"listen on {_fmt(addr)} {decision}")
            return
        old = self.listeners.get(key)
        if old is not None:
            if not _hung_up(old.chan.sock):
                # Another live socket has the address (SO_REUSEPORT): the kernel
                # shares kernel clients between the two; ring clients keep going
                # to the first.  Never take its queue from it.
                log.info("pid %d listens on %s, shared with pid %d's listener", proc.pid,
                         _fmt(addr), old.owner)
                self._reply(chan, P.OK, {"address": addr, "shared": True})
                return
            # Its owner closed it; the channel's EOF is just not handled yet.
            self._drop_channel(old.chan)
        self.listeners[key] = Listener(key, proc.pid, chan, max(1, backlog), *bufs)
        chan.listener = key
        proc.listeners.add(key)
        self.counters["listens"] += 1
        log.info("pid %d listens on %s (backlog %d)", proc.pid, _fmt(addr), backlog)
        self._reply(chan, P.OK, {"address": addr})

    def _check_listen(self, proc: Proc, msg: P.Message) -> tuple:
        body = msg.body
        try:
            family, bufs = body["family"], _check_bufs(body)
            backlog = body["backlog"]
            if not 0 <= backlog <= 65535:
                raise ValueError(f"backlog must be 0..65535, got {backlog}")
            key, addr = self._listening_key(proc, family, msg.fds[0])
            req = self._request("listen", family, addr)
        except (ValueError, OSError) as exc:
            raise _Refused(getattr(exc, "errno", None) or errno.EINVAL, str(exc)) from None
        return family, bufs, backlog, key, addr, req

    def _listening_key(self, proc: Proc, family: str, fd: int) -> tuple[tuple, list]:
        """Check the kernel socket the client sent; return its table key and address.

        The address comes from the socket itself, not from the message, so a
        process can only register a port the kernel gave it.
        """
        if family not in P.FAMILIES:
            raise ValueError(f"unknown family {family!r}")
        sock = _socket.socket(fileno=fd)   # the message still owns fd: detached below
        try:
            if (sock.family != P.FAMILIES[family] or sock.type != socket.SOCK_STREAM
                    or not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)):
                raise OSError(errno.EINVAL, "the descriptor is not a listening stream socket "
                              f"of family {family}")
            addr = _addr_list(family, sock.getsockname())
        finally:
            sock.detach()
        if family == "unix" and not addr[0]:
            raise OSError(errno.EINVAL, "an unbound unix socket cannot be a listener")
        return (proc.netns, family, *addr), addr

    def _unlisten(self, key: tuple) -> None:
        """Connect.tla!Unlisten: queued connections are reset.

        An ACCEPTED travels on the acceptor's process channel, not on the
        listener's: one sent before the listener closed may still wait
        there.  So what waits on other channels is handled first, and only
        connections nobody took are reset.
        """
        lst = self.listeners.get(key)
        if lst is None:
            return
        if lst.queue:
            self._settle(lst.chan)
        lst = self.listeners.pop(key, None)
        if lst is None:
            return
        lst.chan.listener = None
        proc = self.procs.get(lst.owner)
        if proc is not None:
            proc.listeners.discard(key)
        while lst.queue:
            conn = self.conns.get(lst.queue.popleft())
            if conn is not None and conn.sstate == "queued":
                self.counters["resets"] += 1
                self._close_side(conn, "server", dead=True, reset=True)
        log.info("listener %s closed", _fmt(list(key[2:])))

    # Connect.tla!HandleConnect
    def _on_connect(self, chan: Channel, msg: P.Message) -> None:
        proc = self.procs[chan.pid]
        try:
            family, bufs, dest, local, req = self._check_connect(msg)
        except _Refused as exc:
            self.counters["refused"] += 1
            self._reply_error(chan, exc.errno, str(exc))
            return
        decision = self._decide(proc, req)  # first, whatever the route
        if not decision.allowed:
            self.counters["denied"] += 1
            log.warning("denied connect by pid %d (%s) to %s: %s", proc.pid, proc.peer.exe,
                        _fmt(dest), decision)
            self._reply_error(chan, errno.ECONNREFUSED, f"connect to {_fmt(dest)} {decision}")
            return
        lst = self._find_listener(proc, family, dest)
        if lst is not None and _hung_up(lst.chan.sock):
            # Connect.tla!HasRoom wants a live listener: one whose every holder
            # has closed it or exited (the channel's EOF not handled yet) is
            # removed first, so no ring is set up towards nobody.  Its owner
            # alone does not decide: fork children may hold the listener.
            self._drop_channel(lst.chan)
            lst = None
        if lst is None:
            self._kernel_route(chan)
            return
        if len(lst.queue) >= lst.backlog:
            # Full: the kernel's own listening socket takes it (kernel backlog
            # rules), so a burst of connects is queued, not refused.
            self.counters["backlog_full"] += 1
            self._kernel_route(chan)
            return
        self._set_up(chan, proc, lst, dest, local, bufs)

    def _check_connect(self, msg: P.Message) -> tuple:
        body = msg.body
        try:
            family, bufs = body["family"], _check_bufs(body)
            if family not in P.FAMILIES:
                raise ValueError(f"unknown family {family!r}")
            dest = _check_addr(family, body["address"])
            local = self._client_address(family, msg.fds[0])
            req = self._request("connect", family, dest)
        except (ValueError, OSError) as exc:
            raise _Refused(getattr(exc, "errno", None) or errno.EINVAL, str(exc)) from None
        return family, bufs, dest, local, req

    def _request(self, direction: str, family: str, addr: list) -> aclmod.Request | None:
        """The ACL's view of a request (ValueError if malformed); None when no rule could use it."""
        if not self.acl.rules:
            return None     # the default decides: skip parsing the address once more
        return aclmod.Request(direction, family, addr[0], addr[1] if len(addr) > 1 else None)

    def _decide(self, proc: Proc, req: aclmod.Request | None) -> aclmod.Decision:
        if req is None or not self.acl.rules:   # a reload may have come in between
            return aclmod.Decision(self.acl.default == "allow", "default", None)
        return self.acl.decide(proc.peer, req)

    def _kernel_route(self, chan: Channel) -> None:
        self.counters["kernel_fallbacks"] += 1
        self._reply(chan, P.OK, {"route": "kernel"})

    def _set_up(self, chan: Channel, proc: Proc, lst: Listener, dest: list, local: list | None,
                bufs: tuple[int, int]) -> None:
        rcvbuf, sndbuf = bufs
        try:
            cs, sc = self._ring_pair(max(sndbuf, lst.rcvbuf), max(lst.sndbuf, rcvbuf))
        except OSError as exc:
            # Out of descriptors or memory: the kernel can still connect them.
            log.warning("cannot make rings for pid %d (%s): kernel route", proc.pid, exc)
            self._pool_ok = False
            self._kernel_route(chan)
            return
        try:
            side = _side_channel(lst.key[1])
        except OSError as exc:
            log.warning("cannot make a side channel for pid %d (%s): kernel route", proc.pid, exc)
            cs.close()
            sc.close()
            self._kernel_route(chan)
            return
        # The monitor keeps no copy of the side channel: once both ends have
        # theirs, the kernel frees it (and closes descriptors in flight) when
        # the processes holding the ends have closed them.
        try:
            self._set_up_rings(chan, proc, lst, dest, local, cs, sc, side)
        finally:
            for end in side:
                end.close()

    def _set_up_rings(self, chan: Channel, proc: Proc, lst: Listener, dest: list,
                      local: list | None, cs: Ring, sc: Ring, side: tuple) -> None:
        cid = next(self._ids)
        newconn = {"id": cid, "family": lst.key[1], "peer": local, "local": dest}
        sfds = [end.fileno() for end in side]
        try:
            P.send_msg(lst.chan.sock, P.NEWCONN, newconn, (*sc.fds(), *cs.fds(), *sfds[1:]))
        except (BlockingIOError, InterruptedError) as exc:
            # The listener's channel is full: it accepts slower than the monitor
            # pushes.  Treat it as a full backlog, keep the listener.
            log.info("listener %s cannot take more (%s): kernel route", _fmt(dest), exc)
            cs.close()
            sc.close()
            self.counters["backlog_full"] += 1
            self._kernel_route(chan)
            return
        except OSError as exc:
            log.info("listener %s is gone (%s): kernel route", _fmt(dest), exc)
            cs.close()
            sc.close()
            self._drop_channel(lst.chan)
            self._kernel_route(chan)
            return
        conn = Conn(cid, proc.pid, lst.owner, lst.key, cs, sc)
        self.conns[cid] = conn
        lst.queue.append(cid)
        proc.conns.add(cid)
        self.counters["connections"] += 1
        if not self._reply(chan, P.OK, {"route": "ring", "id": cid, "peer": dest},
                           (*cs.fds(), *sc.fds(), *sfds[:1])):
            if cid in self.conns and conn.cstate != "closed":
                self._close_side(conn, "client", dead=True)

    def _ring_pair(self, cs_size: int, sc_size: int) -> tuple[Ring, Ring]:
        cs = self._new_ring(cs_size)
        try:
            return cs, self._new_ring(sc_size)
        except BaseException:
            cs.close()
            raise

    def _new_ring(self, capacity: int) -> Ring:
        if capacity == DEFAULT_BUF and self._pool:
            return self._pool.pop()
        return Ring.create(capacity, spin_ns=0)

    def _fill_pool(self, count: int) -> None:
        """Make up to *count* pooled rings; stop quietly at the first failure."""
        while count > 0 and len(self._pool) < self._pool_size:
            try:
                self._pool.append(Ring.create(DEFAULT_BUF, spin_ns=0))
            except OSError as exc:
                log.debug("ring pool not refilled: %s", exc)
                self._pool_ok = False
                return
            count -= 1

    def _client_address(self, family: str, fd: int) -> list | None:
        sock = _socket.socket(fileno=fd)   # the message still owns fd: detached below
        try:
            if sock.family != P.FAMILIES[family] or sock.type != socket.SOCK_STREAM:
                raise OSError(errno.EINVAL, f"the descriptor is not a {family} stream socket")
            name = sock.getsockname()
        finally:
            sock.detach()
        addr = _addr_list(family, name)
        return addr if addr[0] or family != "unix" else None

    def _find_listener(self, proc: Proc, family: str, dest: list) -> Listener | None:
        if family == "unix":
            return self.listeners.get((proc.netns, "unix", dest[0]))
        host, port = dest
        lst = self.listeners.get((proc.netns, family, host, port))
        if lst is None and is_local_address(host):
            lst = self.listeners.get((proc.netns, family, _WILDCARD[family], port))
        return lst

    # Connect.tla!Accept
    def _on_accepted(self, chan: Channel, msg: P.Message) -> None:
        """ACCEPTED: the sender took a queued connection; it holds the server end from now on.

        One-way, so a refusal is only logged.  The proof is the memfd of the
        ring the server end reads: only a process that received the NEWCONN
        has it.  In a pre-fork pool the acceptor is any holder of the
        listener, not its owner; tokens, CLOSE and clean-up at death are
        attributed to the acceptor.
        """
        cid = msg.body["id"]
        conn = self.conns.get(cid)
        if conn is None or conn.sstate != "queued":
            return  # reset meanwhile, or closed already: nothing to do
        if len(msg.fds) != 1 or not _same_file(msg.fds[0], conn.cs.fds().memfd):
            log.warning("pid %d: ACCEPTED of connection %d %s: ignored", chan.pid, cid,
                        "without a proof" if not msg.fds
                        else "with a descriptor that is not its ring")
            return
        self._dequeue(conn)
        conn.sstate = "open"
        self.counters["accepted"] += 1
        pid = chan.pid
        conn.server = pid
        conn.holders["server"] = {pid}
        conn.pids.add(pid)
        self.procs[pid].conns.add(cid)

    # Connect.tla!Close
    def _on_close(self, chan: Channel, msg: P.Message) -> None:
        conn = self.conns.get(msg.body["id"])
        if conn is None:
            return  # both sides gone already, or an id of an earlier monitor
        end = msg.body.get("end")  # which end, for a process holding both
        if end not in (None, "client", "server"):
            log.warning("pid %d: CLOSE of connection %d names end %r", chan.pid, conn.id,
                        end)
            return
        pid = chan.pid
        # A holder's copy of an end: the end itself closes when no process
        # holds it (the hold pipe counts them).  "shared" (version 2) is ignored.
        if pid in conn.holders["client"] and end != "server":
            self._leave_end(conn, "client", pid, dead=False)
        elif pid in conn.holders["server"] and end != "client":
            self._leave_end(conn, "server", pid, dead=False)
        elif pid not in conn.pids:
            log.warning("pid %d tried to close connection %d of pids %d and %d",
                        chan.pid, conn.id, conn.client, conn.server)

    # Fork!Close (the monitor's part) and Fork!Reap
    def _leave_end(self, conn: Conn, end: str, pid: int, *, dead: bool) -> None:
        """Process *pid* no longer holds *end* of *conn*: it closed its copy or died.

        Its tokens of that end are reclaimed (and its place in their queues
        given up); the end closes once no process holds it (_maybe_close).
        """
        holders = conn.holders[end]
        if pid not in holders:
            return
        if pid == conn.origin(end) and (len(holders) > 1 or end in conn.hold):
            # Its tokens are in no row yet (no TAKE so far): they are still
            # with it, and leave it now like any holder's -- also when the
            # other holders are children not registered yet (hold pipe).
            for d in P.DIRS:
                self._token(conn, end, d)
        holders.discard(pid)
        self._reclaim(conn, end, pid)
        if not holders:
            self._maybe_close(conn, end, dead=dead)

    # Fork!MonClose
    def _maybe_close(self, conn: Conn, end: str, *, dead: bool) -> None:
        """Close *end* if no process holds it: no registered holder, hold pipe at POLLHUP.

        An end that was ever forked (it has a hold pipe) may have lost its
        last holder by death while another closed before it: its ring ends
        are closed here in any case (a no-op if the last closer did it).
        """
        if conn.holders[end] or (conn.cstate if end == "client" else conn.sstate) == "closed":
            return
        forked = end in conn.hold or end in conn.unheld
        if end in conn.hold:
            if not _poll_now(conn.hold[end], select.POLLIN) & select.POLLHUP:
                return      # a process holds it still: a child whose FORKED is to come
            self._unwatch(conn, end)
        self._close_side(conn, end, dead=dead or forked)

    def _unwatch(self, conn: Conn, end: str) -> None:
        """Stop watching *end*'s hold pipe and close our read end of it."""
        fd = conn.hold.pop(end, None)
        if fd is None:
            return
        conn.unheld.add(end)
        try:
            self._sel.unregister(fd)
        except (KeyError, ValueError):
            pass
        os.close(fd)

    def _on_hold_event(self, conn: Conn, end: str) -> None:
        """A hold pipe's read end is ready: POLLHUP means no process holds the end any more."""
        fd = conn.hold.get(end)
        if fd is None or self.conns.get(conn.id) is not conn:
            return
        ev = _poll_now(fd, select.POLLIN)
        if ev & select.POLLHUP:
            log.debug("connection %d: no process holds the %s end any more", conn.id, end)
            self._unwatch(conn, end)
            self._maybe_close(conn, end, dead=True)
        elif ev & select.POLLIN:
            # Nothing is ever written there by the library: a holder wrote
            # into its copy.  Drain it, or the selector would report it again.
            try:
                os.read(fd, 65536)
            except OSError:
                pass

    def _dequeue(self, conn: Conn) -> None:
        lst = self.listeners.get(conn.key)
        if lst is not None and conn.id in lst.queue:
            lst.queue.remove(conn.id)

    def _close_side(self, conn: Conn, side: str, *, dead: bool, reset: bool = False) -> None:
        """Mark one side closed; for a dead or reset side, close its ring ends for it."""
        if dead:
            tx, rx = (conn.cs, conn.sc) if side == "client" else (conn.sc, conn.cs)
            # What it wrote ends in EOF for the peer; what it would read, EPIPE
            # (at once after a reset, as after the kernel's RST).
            tx.writer().close()
            rx.reader().close(reset=reset)
        if side == "client":
            conn.cstate = "closed"
        else:
            conn.sstate = "closed"
        # A closed end has no holders, no tokens and no hold pipe to watch.
        conn.holders[side].clear()
        self._unwatch(conn, side)
        for d in P.DIRS:
            conn.tokens.pop((side, d), None)
        if conn.cstate == "closed" and conn.sstate == "closed":
            self._remove_conn(conn)

    def _remove_conn(self, conn: Conn) -> None:
        self.counters["closed"] += 1
        self.counters["bytes"] += _ring_bytes(conn.cs) + _ring_bytes(conn.sc)
        del self.conns[conn.id]
        for pid in conn.pids:
            proc = self.procs.get(pid)
            if proc is not None:
                proc.conns.discard(conn.id)
                if not (proc.channels or proc.conns or proc.listeners):
                    self._forget_proc(proc)
        self._dequeue(conn)
        conn.cs.close()
        conn.sc.close()
        self._pool_ok = True    # descriptors were freed: the pool may grow again

    # -- fork (Fork.tla) ---------------------------------------------------------------
    def _on_hold(self, chan: Channel, msg: P.Message) -> None:
        """HOLD: the sender will fork; watch the hold pipe of each end it names.

        The sender must hold each end; each descriptor must be a pipe's read
        end.  An end watched already keeps its first pipe (the copies of the
        write end are what count, and every holder has the first one's).
        """
        pid = chan.pid
        try:
            pairs = self._ends_of(msg)
            for i, (conn, end) in enumerate(pairs):
                if pid not in conn.holders[end]:
                    raise _Refused(errno.EPERM, f"pid {pid} does not hold the {end} end of "
                                   f"connection {conn.id}")
                if not _is_pipe(msg.fds[i], os.O_RDONLY):
                    raise _Refused(errno.EINVAL, f"HOLD descriptor {i} is not the read end "
                                   "of a pipe")
        except _Refused as exc:
            log.warning("pid %d: HOLD refused: %s", pid, exc)
            self._reply_error(chan, exc.errno, str(exc))
            return
        fds, msg.fds = msg.fds, []
        watched = 0
        for (conn, end), fd in zip(pairs, fds, strict=True):
            if end in conn.hold or end in conn.unheld:
                os.close(fd)
                continue
            self._sel.register(fd, selectors.EVENT_READ,
                               lambda _fd, conn=conn, end=end: self._on_hold_event(conn, end))
            conn.hold[end] = fd
            watched += 1
        self._reply(chan, P.OK, {"ends": watched})

    # Fork!Register
    def _on_forked(self, chan: Channel, msg: P.Message) -> None:
        """FORKED: a fork child holds these ends too; each proven by its copy of the hold pipe."""
        child = chan.pid
        try:
            ends = self._check_forked(msg)
        except _Refused as exc:
            log.warning("pid %d: FORKED refused: %s", child, exc)
            self._reply_error(chan, exc.errno, str(exc))
            return
        proc = self.procs[child]
        for conn, end in ends:
            conn.holders[end].add(child)
            conn.pids.add(child)
            proc.conns.add(conn.id)   # so that its death is cleaned up (its pidfd is watched)
        self.counters["forks"] += 1
        log.info("pid %d, a fork child, holds %d connection ends too", child, len(ends))
        self._reply(chan, P.OK, {"ends": len(ends)})

    def _check_forked(self, msg: P.Message) -> list[tuple[Conn, str]]:
        """The (connection, end) pairs of a FORKED; _Refused unless each is proven.

        The proof of an end is a descriptor of its hold pipe's write end:
        the kernel, not the message, says that the sender holds the end.  No
        parent needs to be alive or known.
        """
        pairs = self._ends_of(msg)
        for i, (conn, end) in enumerate(pairs):
            fd = conn.hold.get(end)
            if fd is None:
                raise _Refused(errno.EPERM, f"the {end} end of connection {conn.id} has no "
                               "hold pipe (no HOLD before the fork, or no process holds it)")
            if not _is_pipe(msg.fds[i], os.O_WRONLY) or not _same_file(msg.fds[i], fd):
                raise _Refused(errno.EPERM, f"FORKED descriptor {i} is not the write end of "
                               f"the hold pipe of the {end} end of connection {conn.id}")
        return pairs

    def _ends_of(self, msg: P.Message) -> list[tuple[Conn, str]]:
        """The [[id, end], ...] of a HOLD or FORKED as open (connection, end) pairs.

        EINVAL for a malformed list or a descriptor count that differs from
        it; EPERM for a connection this monitor does not have open.
        """
        raw = msg.body["ends"]
        if not raw:
            raise _Refused(errno.EINVAL, f'{msg.name} "ends" is empty')
        for item in raw:
            if (not isinstance(item, list) or len(item) != 2 or item[0].__class__ is not int
                    or item[1] not in P.ENDS):
                raise _Refused(errno.EINVAL, f'{msg.name} "ends" must be [[id, "client" or '
                               f'"server"], ...], got {_quote(item)} in it')
        if len(msg.fds) != len(raw):
            raise _Refused(errno.EINVAL, f"{msg.name} names {len(raw)} ends but carries "
                           f"{len(msg.fds)} descriptors (one per end)")
        pairs = []
        for cid, end in raw:
            conn = self.conns.get(cid)
            if conn is None or (conn.cstate if end == "client" else conn.sstate) != "open":
                raise _Refused(errno.EPERM, f"no open {end} end of connection {_quote(cid)}")
            pairs.append((conn, end))
        return pairs

    # -- token sharing (TokenSharing.tla) ---------------------------------------------
    def _token_of(self, chan: Channel, msg: P.Message) -> tuple[Conn, str, str, Token] | None:
        """The token a TAKE or RELEASE names, if the sender holds its end; else None (logged).

        One-way messages get no answer, not even an error: a process that
        closed its copy of an end may still have one in flight.  A RELEASE
        of a token with no row yet makes none unless it comes from the
        token's implicit holder: a message that is ignored changes nothing.
        """
        body = msg.body
        conn = self.conns.get(body["id"])
        end, d = body["end"], body["dir"]
        if conn is None or chan.pid not in conn.holders[end]:
            log.info("pid %d: %s of (%s, %s, %s), an end it does not hold: ignored",
                     chan.pid, msg.name, _quote(body["id"]), end, d)
            return None
        if msg.op == P.RELEASE and (end, d) not in conn.tokens \
                and chan.pid != conn.origin(end):
            log.info("pid %d released (%d, %s, %s), which it does not hold: ignored",
                     chan.pid, conn.id, end, d)
            return None
        return conn, end, d, self._token(conn, end, d)

    def _token(self, conn: Conn, end: str, d: str) -> Token:
        """The row of token (conn, end, d), made on first use.

        Until then the token is where the connection put it: with the
        process that made the end (its library starts out holding it), as
        long as that process still holds the end; free otherwise.
        """
        tok = conn.tokens.get((end, d))
        if tok is None:
            origin = conn.origin(end)
            tok = conn.tokens[(end, d)] = Token(origin if origin in conn.holders[end] else None)
        return tok

    # TokenSharing!MonTake
    def _mon_take(self, chan: Channel, msg: P.Message) -> None:
        found = self._token_of(chan, msg)
        if found is None:
            return
        conn, end, d, tok = found
        pid = chan.pid
        self.counters["takes"] += 1
        if tok.holder is None:
            tok.holder = pid
            self._grant(conn, end, d, pid, reclaimed=False)
        elif tok.holder == pid:
            # It holds it already (it lost count, e.g. of a token it had from
            # the start): say so again rather than recall it from itself.
            self._grant(conn, end, d, pid, reclaimed=False)
        else:
            if pid not in tok.queue:
                tok.queue.append(pid)
            if not tok.recalled:
                self._recall(conn, end, d, tok)

    # TokenSharing!MonRelease
    def _mon_release(self, chan: Channel, msg: P.Message) -> None:
        found = self._token_of(chan, msg)
        if found is None:
            return
        conn, end, d, tok = found
        if tok.holder != chan.pid:
            # Reclaimed meanwhile (it closed its copy), or a confused process.
            log.info("pid %d released (%d, %s, %s), held by %s: ignored", chan.pid, conn.id,
                     end, d, tok.holder)
            return
        self._hand_on(conn, end, d, tok, reclaimed=False)

    # TokenSharing!Reclaim
    def _reclaim(self, conn: Conn, end: str, pid: int) -> None:
        """Process *pid* left *end*: it leaves every queue there, its tokens go on.

        Called once per (pid, end), when *pid* leaves the end's holders, so
        each token of a dead holder is reclaimed exactly once.
        """
        for d in P.DIRS:
            tok = conn.tokens.get((end, d))
            if tok is None:
                continue
            if pid in tok.queue:
                tok.queue.remove(pid)
            if tok.holder == pid:
                self.counters["reclaims"] += 1
                # Its owner thread (if any) is gone with it: the next holder's
                # threads must find the word free, not owned by a dead thread.
                ring, side = _token_ring(conn, end, d)
                if not ring.closed:
                    ring.set_token_word(side, 0)
                log.info("token (%d, %s, %s) reclaimed from pid %d", conn.id, end, d, pid)
                self._hand_on(conn, end, d, tok, reclaimed=True)

    def _hand_on(self, conn: Conn, end: str, d: str, tok: Token, *, reclaimed: bool) -> None:
        """The holder let go of *tok*: GRANT it to the head of the queue, or leave it free.

        If others still queue behind the new holder, it is recalled at once:
        each RECALL serves the whole queue, one holder after another.
        """
        tok.recalled = False
        if not tok.queue:
            tok.holder = None
            return
        tok.holder = tok.queue.popleft()
        self._grant(conn, end, d, tok.holder, reclaimed=reclaimed)
        if tok.queue:
            self._recall(conn, end, d, tok)

    def _grant(self, conn: Conn, end: str, d: str, pid: int, *, reclaimed: bool) -> None:
        self.counters["grants"] += 1
        self._push(pid, P.GRANT, {"id": conn.id, "end": end, "dir": d, "reclaimed": reclaimed})

    def _recall(self, conn: Conn, end: str, d: str, tok: Token) -> None:
        assert tok.holder is not None
        tok.recalled = True
        self.counters["recalls"] += 1
        self._push(tok.holder, P.RECALL, {"id": conn.id, "end": end, "dir": d})

    def _adopt_agent(self, chan: Channel) -> None:
        """*chan* said HELLO as its process's agent: pushes go there from now on."""
        proc = self.procs.get(chan.pid)
        if proc is None:
            return
        old = proc.agent
        if old is not None and old is not chan and old.stalled:
            self._unstall(old, flush=False)
        proc.agent = chan
        self._flush(proc)

    def _push(self, pid: int, op: int, body: dict) -> None:
        """Send RECALL or GRANT to *pid*'s agent, or keep it until there is one."""
        proc = self.procs.get(pid)
        if proc is None:
            log.debug("%s to pid %d, which is gone: dropped", P.OP_NAMES[op], pid)
            return
        proc.outbox.append(P.encode(op, body))
        self._flush(proc)

    def _flush(self, proc: Proc) -> None:
        """Send what waits for *proc*'s agent, in order, as far as its channel takes it.

        A full channel (an agent slow to read) is watched for room instead:
        a push is never dropped while its process lives.
        """
        chan = proc.agent
        if chan is None or chan.stalled:
            return
        while proc.outbox:
            try:
                chan.sock.send(proc.outbox[0])
            except BlockingIOError:
                chan.stalled = True
                self._sel.modify(chan.sock, selectors.EVENT_READ | selectors.EVENT_WRITE,
                                 self._on_channel)
                return
            except OSError as exc:
                log.info("pid %d: agent channel failed (%s); pushes kept for the next",
                         proc.pid, exc)
                self._drop_channel(chan)
                return
            proc.outbox.popleft()

    def _unstall(self, chan: Channel, *, flush: bool = True) -> None:
        """Stop watching *chan* for room; then (by default) try its pushes again."""
        chan.stalled = False
        self._sel.modify(chan.sock, selectors.EVENT_READ, self._on_channel)
        proc = self.procs.get(chan.pid)
        if flush and proc is not None and proc.agent is chan:
            self._flush(proc)

    # -- process death (Connect.tla!Cleanup) ---------------------------------------
    def _on_exit(self, proc: Proc) -> None:
        if self.procs.get(proc.pid) is proc:
            self.cleanup(proc.pid)

    def _settle(self, asking: Channel) -> None:
        """Before a STATUS or STATS: handle what already waits on other channels, and deaths.

        The asker may know of messages other channels sent before its
        request (an ACCEPTED of its own listener, a process it saw exit);
        the reply must not predate them.  Bounded: a busy system gets a
        reply anyway.
        """
        if self._settling:
            return
        self._settling = True
        try:
            for _ in range(_SETTLE_ROUNDS):
                ready = [key for key, _ in self._sel.select(0)
                         if key.data == self._on_channel and key.fileobj is not asking.sock]
                for key in ready:
                    self._run(key)
                if not ready:
                    break
            self._reap()
        finally:
            self._settling = False

    def _reap(self) -> None:
        """Clean up every process that has exited, whether or not its event came yet.

        For STATUS and STATS: a process that exited before the request was
        sent is never reported alive (its pidfd event may sit later in the
        same batch of events, or its channel's EOF may have come first).
        """
        if not self.procs:
            return
        p = select.poll()
        for proc in self.procs.values():
            p.register(proc.pidfd, select.POLLIN)
        exited = {fd for fd, _ in p.poll(0)}
        for proc in [q for q in self.procs.values() if q.pidfd in exited]:
            self.cleanup(proc.pid)

    def cleanup(self, pid: int) -> None:
        """Forget process *pid*: its listeners, its sides of connections, its channels."""
        proc = self.procs.get(pid)
        if proc is None:
            return
        self.counters["deaths"] += 1
        self._drain(proc)
        if self.procs.get(pid) is not proc:
            return
        log.info("process %d exited: %d listeners, %d connections to clean up",
                 pid, len(proc.listeners), len(proc.conns))
        for key in list(proc.listeners):
            lst = self.listeners.get(key)
            if lst is not None and not _hung_up(lst.chan.sock):
                # Fork children still hold the listener (its channel is
                # open): it stays, until the channel's EOF.
                proc.channels.discard(lst.chan.sock.fileno())
                continue
            self._unlisten(key)
        for cid in sorted(proc.conns):
            conn = self.conns.get(cid)
            if conn is None:
                continue
            for end in P.ENDS:
                if cid in self.conns:
                    self._leave_end(conn, end, pid, dead=True)
        for fd in list(proc.channels):
            chan = self.channels.get(fd)
            if chan is not None:
                self._drop_channel(chan)
        self._forget_proc(proc)

    def _drain(self, proc: Proc) -> None:
        """Handle what a process sent before it died, still waiting in its channels.

        Its death may be seen first: an ACCEPTED (which makes it the holder
        of an end), a CLOSE or a FORKED it sent must count all the same, or
        an end it took would stay queued for ever.  Bounded: a dead process
        sends nothing more, and its channels hold at most their buffers.
        """
        for fd in sorted(proc.channels):
            chan = self.channels.get(fd)
            if chan is None or chan.listener is not None:
                continue       # a listener's channel may be held by its fork children
            for _ in range(_DRAIN_MAX):
                if self.channels.get(fd) is not chan or not _readable(fd):
                    break
                self._on_channel(chan.sock)

    def _forget_proc(self, proc: Proc) -> None:
        if self.procs.get(proc.pid) is not proc:
            return
        del self.procs[proc.pid]
        try:
            self._sel.unregister(proc.pidfd)
        except (KeyError, ValueError):
            pass
        os.close(proc.pidfd)

    # -- operator ------------------------------------------------------------------
    def reload(self, strict: bool = False) -> None:
        """Connect.tla!Reload: re-read the ACL file; new rules apply to new requests only.

        On a bad file the old rules stay (and *strict* re-raises the error).
        """
        if not self.config:
            log.warning("reload asked, but the monitor was started without --config")
            if strict:
                raise OSError(errno.ENOENT, "the monitor was started without --config")
            return
        try:
            self.acl = aclmod.load_acl(self.config)
        except (OSError, aclmod.AclError) as exc:
            log.error("reload of %s failed, old rules kept: %s", self.config, exc)
            if strict:
                raise
            return
        log.info("reloaded %d rules from %s", len(self.acl.rules), self.config)

    def stats(self) -> dict[str, int]:
        """The counters, with bytes of live connections included."""
        out = dict(self.counters)
        out["bytes"] += sum(_ring_bytes(c.cs) + _ring_bytes(c.sc) for c in self.conns.values())
        return out

    def status(self) -> dict[str, Any]:
        """Every table, JSON-able: what ``impl.ctl status`` shows.

        Each table lists at most MAX_ROWS rows; ``counts`` has the real sizes.
        """
        listeners = [{"address": list(lst.key[2:]), "family": lst.key[1], "pid": lst.owner,
                      "backlog": lst.backlog, "queued": len(lst.queue)}
                     for lst in itertools.islice(self.listeners.values(), MAX_ROWS)]
        conns = [{"id": c.id, "client": c.client, "server": c.server,
                  "address": list(c.key[2:]), "client_side": c.cstate,
                  "server_side": c.sstate, "bytes": _ring_bytes(c.cs) + _ring_bytes(c.sc),
                  "holders": {end: sorted(c.holders[end]) for end in P.ENDS},
                  "hold": {end: _hold_state(c, end) for end in P.ENDS}}
                 for c in itertools.islice(self.conns.values(), MAX_ROWS)]
        tokens = [{"id": c.id, "end": end, "dir": d, "holder": t.holder,
                   "queue": list(t.queue), "recalled": t.recalled}
                  for c, (end, d), t in itertools.islice(self._token_rows(), MAX_ROWS)]
        procs = [{"pid": p.pid, "uid": p.uid, "program": p.peer.exe,
                  "channels": len(p.channels), "listeners": len(p.listeners),
                  "connections": len(p.conns), "agent": p.agent is not None,
                  "pending": len(p.outbox)}
                 for p in itertools.islice(self.procs.values(), MAX_ROWS)]
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        return {
            "monitor": {"pid": os.getpid(), "socket": self.path, "version": P.VERSION,
                        "uptime": round(time.time() - self.started, 3),
                        "config": self.config, "fds": _count_fds(), "fd_limit": soft,
                        "pool": len(self._pool)},
            "acl": {"source": self.acl.source, "default": self.acl.default,
                    "rules": self.acl.describe()},
            "counts": {"listeners": len(self.listeners), "connections": len(self.conns),
                       "processes": len(self.procs), "channels": len(self.channels),
                       "tokens": sum(len(c.tokens) for c in self.conns.values()),
                       "hold_pipes": sum(len(c.hold) for c in self.conns.values())},
            "listeners": listeners,
            "connections": conns,
            "tokens": tokens,
            "processes": procs,
            "counters": self.stats(),
        }

    def _token_rows(self):
        """(connection, (end, dir), Token) of every row of the token table."""
        for c in self.conns.values():
            for key, tok in c.tokens.items():
                yield c, key, tok

    _HANDLERS = {
        P.HELLO: _on_hello, P.PING: _on_ping, P.STATUS: _on_status, P.STATS: _on_stats,
        P.RELOAD: _on_reload, P.STOP: _on_stop, P.LISTEN: _on_listen,
        P.CONNECT: _on_connect, P.ACCEPTED: _on_accepted, P.CLOSE: _on_close,
        P.TAKE: _mon_take, P.RELEASE: _mon_release, P.FORKED: _on_forked, P.HOLD: _on_hold,
    }


# -- helpers ---------------------------------------------------------------------------
def _side_channel(family: str) -> tuple:
    """The two ends of an AF_UNIX connection's side channel for descriptors; () for others.

    SOCK_SEQPACKET: each record (a stream position and length, with its
    descriptors as SCM_RIGHTS) stays one message, so the reader never has to
    reassemble one, and the kernel keeps descriptors in flight safe.  Only
    AF_UNIX connections get one: the kernel passes descriptors over no other
    family, so the others would pay two descriptors per end for nothing.
    """
    if family != "unix":
        return ()
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)


def _peercred(sock: socket.socket) -> tuple[int, int, int]:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)


def _peer_pidfd(sock: socket.socket, pid: int) -> int | None:
    """A pidfd of the process that connected *sock*; None if it has exited.

    SO_PEERPIDFD names the very process that called connect(): no race with
    pid reuse.  Without it (kernels before 6.5) the pid is opened by number;
    that is the right process only while the peer lives (a live process's pid
    cannot be reused), so the channel is then checked for a hang-up: the
    peer's exit closes its end.
    """
    try:
        pidfd = sock.getsockopt(socket.SOL_SOCKET, _SO_PEERPIDFD)
    except OSError as exc:
        if exc.errno != errno.ENOPROTOOPT:
            return None  # the peer is gone (reaped): ESRCH / EINVAL / ENODATA
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            return None
        if _hung_up(sock):
            os.close(pidfd)
            return None
    if _readable(pidfd):  # it connected, then exited
        os.close(pidfd)
        return None
    return pidfd


def _poll_now(fd: int, events: int) -> int:
    # poll, not select: descriptors beyond FD_SETSIZE are normal here.
    p = select.poll()
    p.register(fd, events)
    ready = p.poll(0)
    return ready[0][1] if ready else 0


def _readable(fd: int) -> bool:
    """Is *fd* readable now (for a pidfd: has the process exited)?"""
    return bool(_poll_now(fd, select.POLLIN))


def _hung_up(sock: socket.socket) -> bool:
    """Has the peer of *sock* closed its end?"""
    if sock.fileno() < 0:
        return True
    return bool(_poll_now(sock.fileno(), select.POLLRDHUP) & (select.POLLHUP | select.POLLRDHUP))


def _fileno(obj) -> int:
    return obj if isinstance(obj, int) else obj.fileno()


def _count_fds() -> int:
    try:
        return len(os.listdir("/proc/self/fd")) - 1   # less the listing's own
    except OSError:
        return -1


def _netns(pid: int) -> int:
    """The network namespace's inode: addresses mean the same only within one."""
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return 0


def _check_bufs(body: dict) -> tuple[int, int]:
    out = []
    for name in ("rcvbuf", "sndbuf"):
        v = body[name]
        if v == 0:
            v = DEFAULT_BUF
        if not _MIN_BUF <= v <= MAX_BUF:
            raise ValueError(f"{name} must be 0 (default) or {_MIN_BUF}..{MAX_BUF}, got {v}")
        out.append(v)
    return out[0], out[1]


def _check_addr(family: str, addr: list) -> list:
    """Validate a [host, port] or [path] address from a message."""
    if family == "unix":
        if len(addr) != 1 or not isinstance(addr[0], str) or not addr[0] \
                or len(addr[0].encode("utf-8", "surrogateescape")) > 107:
            raise ValueError("a unix address is [path] with a path of 1..107 bytes")
        return addr
    if (len(addr) != 2 or not isinstance(addr[0], str) or not isinstance(addr[1], int)
            or isinstance(addr[1], bool) or not 0 <= addr[1] <= 65535):
        raise ValueError(f"an {family} address is [host, port] with port 0..65535")
    host, port = addr
    if family == "inet" and "%" in host:
        raise ValueError(f"{_quote(host)} is not an IPv4 address (IPv4 has no scope)")
    af = P.FAMILIES[family]
    ip, scope = host.partition("%")[::2]
    try:
        # inet_pton: strict numeric forms only, and a fraction of ipaddress's cost.
        canonical = socket.inet_ntop(af, socket.inet_pton(af, ip))
    except (OSError, ValueError):
        raise ValueError(f"{_quote(host)} is not a numeric {family} address") from None
    return [f"{canonical}%{scope}" if scope else canonical, port]


def _addr_list(family: str, name) -> list:
    if family == "unix":
        if isinstance(name, bytes):  # abstract names come back as bytes
            name = name.decode("utf-8", "surrogateescape")
        return [name]
    return [name[0], name[1]]


def _quote(value: Any) -> str:
    """repr() of a value from the wire, cut short: error replies must stay small."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _fmt(addr: list) -> str:
    if len(addr) == 1:
        return repr(addr[0])
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _same_file(a: int, b: int) -> bool:
    """Do descriptors *a* and *b* name the same file (a pipe's two ends do; a memfd)?"""
    try:
        sa, sb = os.fstat(a), os.fstat(b)
    except OSError:
        return False
    return (sa.st_ino, sa.st_dev) == (sb.st_ino, sb.st_dev)


def _is_pipe(fd: int, mode: int) -> bool:
    """Is *fd* a pipe end opened for *mode* (os.O_RDONLY: the read end, os.O_WRONLY: the write)?"""
    try:
        return (stat.S_ISFIFO(os.fstat(fd).st_mode)
                and fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == mode)
    except OSError:
        return False


def _hold_state(conn: Conn, end: str) -> str:
    """STATUS: "watched" (a hold pipe is watched), "unheld" (it reported POLLHUP) or "none"."""
    if end in conn.hold:
        return "watched"
    return "unheld" if end in conn.unheld else "none"


def _token_ring(conn: Conn, end: str, d: str) -> tuple[Ring, str]:
    """The ring and side whose header holds token (end, d): an end writes one ring, reads the
    other (the client writes cs and reads sc)."""
    writes, reads = (conn.cs, conn.sc) if end == "client" else (conn.sc, conn.cs)
    return (writes, "writer") if d == "send" else (reads, "reader")


def _ring_bytes(ring: Ring) -> int:
    """Bytes written into *ring* so far: its tail (RingCredit's ``tail``)."""
    if ring.closed:
        return 0
    return ring._q[layout.word(layout.OFF_TAIL)]
