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
"""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import itertools
import logging
import os
import selectors
import signal
import socket
import struct
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from impl.monitor import acl as aclmod
from impl.monitor import protocol as P
from impl.monitor.paths import ensure_private_dir
from impl.ring import Ring, layout

__all__ = ["Monitor", "DEFAULT_BUF", "MAX_BUF"]

log = logging.getLogger("socksdirect.monitor")

#: Ring size when a socket did not set SO_RCVBUF / SO_SNDBUF.
DEFAULT_BUF = 256 * 1024
#: Largest ring the monitor will create for one direction.
MAX_BUF = 64 * 1024 * 1024
_MIN_BUF = 4096
_WILDCARD = {"inet": "0.0.0.0", "inet6": "::"}


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
    conns: set[int] = field(default_factory=set)
    listeners: set[tuple] = field(default_factory=set)


@dataclass
class Channel:
    """One control connection (a process may hold several: one per listener)."""

    sock: socket.socket
    pid: int
    listener: tuple | None = None


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


class Monitor:
    """The monitor daemon.  ``serve_forever()`` runs it until STOP or a signal."""

    def __init__(self, path: str, *, acl: aclmod.Acl | None = None,
                 config: str | None = None) -> None:
        """Bind the control socket at *path* (its directory is made private).

        *config* is the ACL's TOML file, re-read on RELOAD and SIGHUP; *acl*
        overrides the first load (tests).
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
             "bytes", "protocol_errors", "channels_refused"), 0)
        self.procs: dict[int, Proc] = {}
        self.channels: dict[int, Channel] = {}
        self.listeners: dict[tuple, Listener] = {}
        self.conns: dict[int, Conn] = {}
        self._ids = itertools.count(1)
        self._local_cache: dict[str, bool] = {}
        self._stopping = False
        self._reload_asked = False
        self._uid = os.geteuid()
        self._netns = _netns(os.getpid())
        self._sel = selectors.DefaultSelector()
        self._lock_fd = -1
        self._sock = self._bind(path)

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
            raise OSError(errno.EADDRINUSE, f"a monitor already runs on {path}") from None
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sock.bind(path)
        os.chmod(path, 0o600)
        sock.listen(128)
        sock.setblocking(False)
        self._sel.register(sock, selectors.EVENT_READ, self._on_accept)
        return sock

    # -- the loop ----------------------------------------------------------------
    def serve_forever(self) -> None:
        """Run until STOP, SIGTERM or SIGINT; then close everything of ours.

        Signal handlers only set flags: a step of the loop (one request)
        is never cut in half.  The wake-up pipe makes select() return so the
        flags are seen at once (PEP 475 would otherwise resume the wait).
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
            while not self._stopping:
                for key, _ in self._sel.select():
                    key.data(key.fileobj)
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
        endpoints, not by us.
        """
        for chan in list(self.channels.values()):
            self._drop_channel(chan, quiet=True)
        for conn in list(self.conns.values()):
            conn.cs.close()
            conn.sc.close()
        self.conns.clear()
        for proc in list(self.procs.values()):
            self._forget_proc(proc)
        try:
            self._sel.unregister(self._sock)
        except (KeyError, ValueError):
            pass
        self._sel.close()
        try:
            if os.path.exists(self.path) and os.stat(self.path).st_ino == os.fstat(
                    self._sock.fileno()).st_ino:
                os.unlink(self.path)
        except OSError:
            pass
        self._sock.close()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    # -- channels ----------------------------------------------------------------
    def _on_accept(self, lsock: socket.socket) -> None:
        try:
            sock, _ = lsock.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return
        pid, uid, gid = _peercred(sock)
        if uid != self._uid and uid != 0:
            # The directory's mode should already have stopped this process.
            log.warning("refused a control channel from pid %d uid %d (not uid %d)",
                        pid, uid, self._uid)
            self.counters["channels_refused"] += 1
            sock.close()
            return
        proc = self.procs.get(pid) or self._new_proc(pid, uid, gid)
        if proc is None:
            sock.close()
            return
        sock.setblocking(False)
        chan = Channel(sock, pid)
        self.channels[sock.fileno()] = chan
        proc.channels.add(sock.fileno())
        self._sel.register(sock, selectors.EVENT_READ, self._on_channel)

    def _new_proc(self, pid: int, uid: int, gid: int) -> Proc | None:
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:  # gone already: nothing to serve
            return None
        proc = Proc(pid, uid, gid, pidfd, _netns(pid), aclmod.Peer.from_pid(pid, uid, gid))
        self.procs[pid] = proc
        self._sel.register(pidfd, selectors.EVENT_READ, self._on_pidfd)
        log.debug("process %d (%s) connected", pid, proc.peer.exe)
        return proc

    def _on_channel(self, sock: socket.socket) -> None:
        chan = self.channels.get(sock.fileno())
        if chan is None:
            return
        try:
            msg = P.recv_msg(sock)
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
        finally:
            msg.close_fds()

    def _protocol_error(self, chan: Channel, exc: P.ProtocolError) -> None:
        self.counters["protocol_errors"] += 1
        log.warning("pid %d: bad control message: %s", chan.pid, exc)
        self._reply_error(chan, errno.EPROTO, f"bad control message: {exc}")
        if exc.fatal:
            self._drop_channel(chan)

    def _send(self, chan: Channel, op: int, body: dict | None = None, fds=()) -> bool:
        try:
            P.send_msg(chan.sock, op, body, fds)
        except OSError as exc:
            # A full or dead channel: the process is not reading its replies.
            log.info("pid %d: cannot send %s: %s", chan.pid, P.OP_NAMES[op], exc)
            return False
        return True

    def _reply_error(self, chan: Channel, code: int, message: str) -> None:
        self._send(chan, P.ERROR, P.error_body(code, message))

    def _drop_channel(self, chan: Channel, quiet: bool = False) -> None:
        fd = chan.sock.fileno()
        if fd < 0 or self.channels.get(fd) is not chan:
            return
        if chan.listener is not None:
            self._unlisten(chan.listener)
        del self.channels[fd]
        proc = self.procs.get(chan.pid)
        if proc is not None:
            proc.channels.discard(fd)
        try:
            self._sel.unregister(chan.sock)
        except (KeyError, ValueError):
            pass
        chan.sock.close()

    # -- messages ----------------------------------------------------------------
    def _dispatch(self, chan: Channel, msg: P.Message) -> None:
        handler = self._HANDLERS.get(msg.op)
        if handler is None:
            self._protocol_error(chan, P.ProtocolError(
                f"{msg.name} is not a request a monitor answers", fatal=False))
            return
        handler(self, chan, msg)

    def _on_hello(self, chan: Channel, msg: P.Message) -> None:
        self._send(chan, P.OK, {"version": P.VERSION, "pid": os.getpid()})

    def _on_ping(self, chan: Channel, msg: P.Message) -> None:
        self._send(chan, P.OK)

    def _on_status(self, chan: Channel, msg: P.Message) -> None:
        self._send(chan, P.OK, self.status())

    def _on_stats(self, chan: Channel, msg: P.Message) -> None:
        self._send(chan, P.OK, {"counters": self.stats()})

    def _on_reload(self, chan: Channel, msg: P.Message) -> None:
        try:
            self.reload(strict=True)
        except (OSError, aclmod.AclError) as exc:
            self._reply_error(chan, errno.EINVAL, f"reload failed, old rules kept: {exc}")
            return
        self._send(chan, P.OK, {"acl": self.acl.source, "rules": len(self.acl.rules)})

    def _on_stop(self, chan: Channel, msg: P.Message) -> None:
        self._send(chan, P.OK)
        log.info("stop requested by pid %d", chan.pid)
        self._stopping = True

    # Connect.tla!Listen / ListenDenied
    def _on_listen(self, chan: Channel, msg: P.Message) -> None:
        proc = self.procs[chan.pid]
        body = msg.body
        if chan.listener is not None:
            self._reply_error(chan, errno.EISCONN, "this channel already carries a listener")
            return
        try:
            family, bufs = body["family"], _check_bufs(body)
            backlog = body["backlog"]
            if not 0 <= backlog <= 65535:
                raise ValueError(f"backlog must be 0..65535, got {backlog}")
            key, addr = self._listening_key(proc, family, msg.fds[0])
        except (ValueError, OSError) as exc:
            self._reply_error(chan, getattr(exc, "errno", None) or errno.EINVAL, str(exc))
            return
        req = aclmod.Request("listen", family, addr[0], addr[1] if len(addr) > 1 else None)
        decision = self.acl.decide(proc.peer, req)
        if not decision.allowed:
            self.counters["listens_denied"] += 1
            log.warning("denied listen by pid %d on %s: rule %s", proc.pid, _fmt(addr),
                        decision.rule)
            self._reply_error(chan, errno.EACCES,
                              f"listen on {_fmt(addr)} denied by rule {decision.rule!r}")
            return
        if key in self.listeners:
            # The kernel let this process bind and listen, so the old owner's
            # socket is gone; its channel's EOF may just not have come yet.
            self._unlisten(key)
        backlog = max(1, backlog)
        self.listeners[key] = Listener(key, proc.pid, chan, backlog, *bufs)
        chan.listener = key
        proc.listeners.add(key)
        self.counters["listens"] += 1
        log.info("pid %d listens on %s (backlog %d)", proc.pid, _fmt(addr), backlog)
        self._send(chan, P.OK, {"address": addr})

    def _listening_key(self, proc: Proc, family: str, fd: int) -> tuple[tuple, list]:
        """Check the kernel socket the client sent; return its table key and address.

        The address comes from the socket itself, not from the message, so a
        process can only register a port the kernel gave it.
        """
        if family not in P.FAMILIES:
            raise ValueError(f"unknown family {family!r}")
        sock = socket.socket(fileno=os.dup(fd))
        try:
            if (sock.family != P.FAMILIES[family] or sock.type != socket.SOCK_STREAM
                    or not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)):
                raise OSError(errno.EINVAL, "the descriptor is not a listening stream socket "
                              f"of family {family}")
            addr = _addr_list(family, sock.getsockname())
        finally:
            sock.close()
        if family == "unix" and not addr[0]:
            raise OSError(errno.EINVAL, "an unbound unix socket cannot be a listener")
        return (proc.netns, family, *addr), addr

    def _unlisten(self, key: tuple) -> None:
        """Connect.tla!Unlisten: queued connections are reset."""
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
                self._close_side(conn, "server", dead=True)
        log.info("listener %s closed", _fmt(list(key[2:])))

    # Connect.tla!HandleConnect
    def _on_connect(self, chan: Channel, msg: P.Message) -> None:
        proc = self.procs[chan.pid]
        body = msg.body
        try:
            family, bufs = body["family"], _check_bufs(body)
            if family not in P.FAMILIES:
                raise ValueError(f"unknown family {family!r}")
            dest = _check_addr(family, body["address"])
            local = self._client_address(family, msg.fds[0])
        except (ValueError, OSError) as exc:
            self._reply_error(chan, getattr(exc, "errno", None) or errno.EINVAL, str(exc))
            return
        req = aclmod.Request("connect", family, dest[0], dest[1] if len(dest) > 1 else None)
        decision = self.acl.decide(proc.peer, req)  # first, whatever the route
        if not decision.allowed:
            self.counters["denied"] += 1
            log.warning("denied connect by pid %d to %s: rule %s", proc.pid, _fmt(dest),
                        decision.rule)
            self._reply_error(chan, errno.ECONNREFUSED,
                              f"connect to {_fmt(dest)} denied by rule {decision.rule!r}")
            return
        lst = self._find_listener(proc, family, dest)
        if lst is None or lst.owner not in self.procs:
            self.counters["kernel_fallbacks"] += 1
            self._send(chan, P.OK, {"route": "kernel"})
            return
        if len(lst.queue) >= lst.backlog:
            # Full: the kernel's own listening socket takes it (kernel backlog
            # rules), so a burst of connects is queued, not refused.
            self.counters["backlog_full"] += 1
            self.counters["kernel_fallbacks"] += 1
            self._send(chan, P.OK, {"route": "kernel"})
            return
        self._set_up(chan, proc, lst, dest, local, bufs)

    def _set_up(self, chan: Channel, proc: Proc, lst: Listener, dest: list, local: list | None,
                bufs: tuple[int, int]) -> None:
        rcvbuf, sndbuf = bufs
        cs = Ring.create(max(sndbuf, lst.rcvbuf), spin_ns=0)
        try:
            sc = Ring.create(max(lst.sndbuf, rcvbuf), spin_ns=0)
        except BaseException:
            cs.close()
            raise
        cid = next(self._ids)
        family = lst.key[1]
        newconn = {"id": cid, "family": family, "peer": local, "local": dest}
        if not self._send(lst.chan, P.NEWCONN, newconn, (*sc.fds(), *cs.fds())):
            cs.close()
            sc.close()
            self._drop_channel(lst.chan)
            self.counters["kernel_fallbacks"] += 1
            self._send(chan, P.OK, {"route": "kernel"})
            return
        conn = Conn(cid, proc.pid, lst.owner, lst.key, cs, sc)
        self.conns[cid] = conn
        lst.queue.append(cid)
        proc.conns.add(cid)
        self.procs[lst.owner].conns.add(cid)
        self.counters["connections"] += 1
        if not self._send(chan, P.OK, {"route": "ring", "id": cid, "peer": dest},
                          (*cs.fds(), *sc.fds())):
            self._close_side(conn, "client", dead=True)

    def _client_address(self, family: str, fd: int) -> list | None:
        sock = socket.socket(fileno=os.dup(fd))
        try:
            if sock.family != P.FAMILIES[family] or sock.type != socket.SOCK_STREAM:
                raise OSError(errno.EINVAL, f"the descriptor is not a {family} stream socket")
            name = sock.getsockname()
        finally:
            sock.close()
        addr = _addr_list(family, name)
        return addr if addr[0] or family != "unix" else None

    def _find_listener(self, proc: Proc, family: str, dest: list) -> Listener | None:
        if family == "unix":
            return self.listeners.get((proc.netns, "unix", dest[0]))
        host, port = dest
        lst = self.listeners.get((proc.netns, family, host, port))
        if lst is None and self._is_local(host):
            lst = self.listeners.get((proc.netns, family, _WILDCARD[family], port))
        return lst

    def _is_local(self, host: str) -> bool:
        """Is *host* an address of this host (so a wildcard listener receives it)?"""
        known = self._local_cache.get(host)
        if known is None:
            try:
                ip = ipaddress.ip_address(host.split("%")[0])
            except ValueError:
                return False
            if ip.is_loopback:
                known = True
            else:
                fam = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
                with socket.socket(fam, socket.SOCK_DGRAM) as probe:
                    try:
                        probe.bind((host, 0))
                        known = True
                    except OSError:
                        known = False
            self._local_cache[host] = known
        return known

    # Connect.tla!Accept
    def _on_accepted(self, chan: Channel, msg: P.Message) -> None:
        cid = msg.body["id"]
        lst = self.listeners.get(chan.listener) if chan.listener else None
        if lst is None or cid not in lst.queue:
            return  # reset meanwhile, or not this listener's: nothing to do
        lst.queue.remove(cid)
        conn = self.conns[cid]
        conn.sstate = "open"
        self.counters["accepted"] += 1

    # Connect.tla!Close
    def _on_close(self, chan: Channel, msg: P.Message) -> None:
        conn = self.conns.get(msg.body["id"])
        if conn is None:
            return  # both sides gone already
        if conn.client == chan.pid and conn.cstate == "open":
            self._close_side(conn, "client", dead=False)
        elif conn.server == chan.pid and conn.sstate == "open":
            self._close_side(conn, "server", dead=False)
        elif chan.pid not in (conn.client, conn.server):
            log.warning("pid %d tried to close connection %d of pids %d and %d",
                        chan.pid, conn.id, conn.client, conn.server)

    def _close_side(self, conn: Conn, side: str, *, dead: bool) -> None:
        """Mark one side closed; for a dead or reset side, close its ring ends for it."""
        if dead:
            tx, rx = (conn.cs, conn.sc) if side == "client" else (conn.sc, conn.cs)
            # What it wrote ends in EOF for the peer; what it would read, EPIPE.
            tx.writer().close()
            rx.reader().close()
        if side == "client":
            conn.cstate = "closed"
        else:
            conn.sstate = "closed"
        if conn.cstate == "closed" and conn.sstate == "closed":
            self._remove_conn(conn)

    def _remove_conn(self, conn: Conn) -> None:
        self.counters["closed"] += 1
        self.counters["bytes"] += _ring_bytes(conn.cs) + _ring_bytes(conn.sc)
        del self.conns[conn.id]
        for pid in (conn.client, conn.server):
            proc = self.procs.get(pid)
            if proc is not None:
                proc.conns.discard(conn.id)
        lst = self.listeners.get(conn.key)
        if lst is not None and conn.id in lst.queue:
            lst.queue.remove(conn.id)
        conn.cs.close()
        conn.sc.close()

    # -- process death (Connect.tla!Cleanup) ---------------------------------------
    def _on_pidfd(self, pidfd: int) -> None:
        proc = next((p for p in self.procs.values() if p.pidfd == pidfd), None)
        if proc is not None:
            self.cleanup(proc.pid)

    def cleanup(self, pid: int) -> None:
        """Forget process *pid*: its listeners, its sides of connections, its channels."""
        proc = self.procs.get(pid)
        if proc is None:
            return
        self.counters["deaths"] += 1
        log.info("process %d exited: %d listeners, %d connections to clean up",
                 pid, len(proc.listeners), len(proc.conns))
        for key in list(proc.listeners):
            self._unlisten(key)
        for cid in sorted(proc.conns):
            conn = self.conns.get(cid)
            if conn is None:
                continue
            for side, owner, state in (("client", conn.client, conn.cstate),
                                       ("server", conn.server, conn.sstate)):
                if owner == pid and state != "closed" and cid in self.conns:
                    self._close_side(conn, side, dead=True)
        for fd in list(proc.channels):
            chan = self.channels.get(fd)
            if chan is not None:
                self._drop_channel(chan, quiet=True)
        self._forget_proc(proc)

    def _forget_proc(self, proc: Proc) -> None:
        try:
            self._sel.unregister(proc.pidfd)
        except (KeyError, ValueError):
            pass
        os.close(proc.pidfd)
        self.procs.pop(proc.pid, None)

    # -- operator ------------------------------------------------------------------
    def reload(self, strict: bool = False) -> None:
        """Re-read the ACL file; new rules apply to new requests only.

        On a bad file the old rules stay (and *strict* re-raises the error).
        """
        if not self.config:
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
        """Every table, JSON-able: what ``impl.ctl status`` shows."""
        return {
            "monitor": {"pid": os.getpid(), "socket": self.path, "version": P.VERSION,
                        "uptime": round(time.time() - self.started, 3)},
            "acl": {"source": self.acl.source, "default": self.acl.default,
                    "rules": self.acl.describe()},
            "listeners": [{"address": list(lst.key[2:]), "family": lst.key[1],
                           "pid": lst.owner, "backlog": lst.backlog, "queued": len(lst.queue)}
                          for lst in self.listeners.values()],
            "connections": [{"id": c.id, "client": c.client, "server": c.server,
                             "address": list(c.key[2:]), "client_side": c.cstate,
                             "server_side": c.sstate,
                             "bytes": _ring_bytes(c.cs) + _ring_bytes(c.sc)}
                            for c in self.conns.values()],
            "processes": [{"pid": p.pid, "uid": p.uid, "program": p.peer.exe,
                           "channels": len(p.channels), "listeners": len(p.listeners),
                           "connections": len(p.conns)} for p in self.procs.values()],
            "counters": self.stats(),
        }

    _HANDLERS = {
        P.HELLO: _on_hello, P.PING: _on_ping, P.STATUS: _on_status, P.STATS: _on_stats,
        P.RELOAD: _on_reload, P.STOP: _on_stop, P.LISTEN: _on_listen,
        P.CONNECT: _on_connect, P.ACCEPTED: _on_accepted, P.CLOSE: _on_close,
    }


# -- helpers ---------------------------------------------------------------------------
def _peercred(sock: socket.socket) -> tuple[int, int, int]:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)


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
    try:
        ip = ipaddress.ip_address(addr[0].split("%")[0])
    except ValueError:
        raise ValueError(f"{addr[0]!r} is not a numeric IP address") from None
    if (ip.version == 6) != (family == "inet6"):
        raise ValueError(f"{addr[0]} is not an {family} address")
    return [str(ip) if "%" not in addr[0] else addr[0], addr[1]]


def _addr_list(family: str, name) -> list:
    if family == "unix":
        if isinstance(name, bytes):  # abstract names come back as bytes
            name = name.decode("utf-8", "surrogateescape")
        return [name]
    return [name[0], name[1]]


def _fmt(addr: list) -> str:
    if len(addr) == 1:
        return repr(addr[0])
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _ring_bytes(ring: Ring) -> int:
    """Bytes written into *ring* so far: its tail (RingCredit's ``tail``)."""
    if ring.closed:
        return 0
    return ring._q[layout.word(layout.OFF_TAIL)]

