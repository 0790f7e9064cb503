"""``impl.socket``: a socket.socket whose connections to this host run over shared memory.

Use it exactly like :class:`socket.socket`.  A stream socket of family
AF_INET, AF_INET6 or AF_UNIX asks the monitor (:mod:`impl.monitor`) when it
connects: if a socksdirect listener owns the address on this host, the
monitor hands both ends a pair of shared-memory rings and no byte of the
connection crosses the kernel again; otherwise it is a plain kernel
connection.  Listeners bind a real kernel socket too, so the port is the
kernel's and clients that do not use this library still connect.

Transports of a socket (``transport`` attribute):

``"kernel"``   every call is the kernel's (socket.socket's own methods);
``"ring"``     a connection over two rings (impl.ring); the descriptor number
               stays the same, but after connect it names an eventfd that is
               readable exactly when ``recv`` would not block (see fileno());
``"listener"`` a listening socket: the descriptor names an epoll set of the
               kernel listening socket and the monitor's channel for it.

Why subclass socket.socket rather than wrap one: ``isinstance(s,
socket.socket)`` holds, so asyncio, ssl's type checks, socketserver and
CPython's own tests accept it, and every method not overridden here keeps its
kernel meaning on a kernel socket.

Errors are the kernel's: where a ring or listener socket cannot ask the
kernel (there is no kernel socket behind the data), it raises what a kernel
TCP socket raises in the same situation; where it can (options, a listener's
data calls) it asks a kernel socket of the same kind.
"""

from __future__ import annotations

import array
import errno
import io
import logging
import operator
import os
import select
import socket as _stdsocket
import struct
import threading
import time
import warnings
import weakref
from contextlib import nullcontext
from socket import (
    AF_INET,
    AF_INET6,
    AF_UNIX,
    SHUT_RD,
    SHUT_RDWR,
    SHUT_WR,
    SO_RCVBUF,
    SO_SNDBUF,
    SOCK_STREAM,
    SOL_SOCKET,
)

import impl.fork  # noqa: F401  (the fork hooks, which call _prepare_fork and _forked_*)
from impl.localaddr import is_local_address
from impl.monitor import client as _client
from impl.monitor import protocol as P
from impl.ring import Ring, RingFds, layout
from impl.token import Token
from impl.token import agent as _agent

__all__ = ["socket", "socketpair", "create_connection", "create_server", "fromfd",
           "transport_of", "socket_for_fd", "DEFAULT_BUF"]

_log = logging.getLogger("socksdirect")
_RING_FAMILIES = {AF_INET: "inet", AF_INET6: "inet6", AF_UNIX: "unix"}
_SOCK_TYPE_MASK = ~(_stdsocket.SOCK_NONBLOCK | _stdsocket.SOCK_CLOEXEC)
# Plain ints, not the socket module's IntFlag members: IntFlag arithmetic
# costs microseconds a call, and recv/send test flags on every call.
MSG_DONTWAIT = int(_stdsocket.MSG_DONTWAIT)
MSG_PEEK = int(_stdsocket.MSG_PEEK)
MSG_WAITALL = int(_stdsocket.MSG_WAITALL)
_NOSIGNAL = int(getattr(_stdsocket, "MSG_NOSIGNAL", 0))
_CMSG_CLOEXEC = int(getattr(_stdsocket, "MSG_CMSG_CLOEXEC", 0))
_RECV_FLAGS = MSG_PEEK | MSG_DONTWAIT | MSG_WAITALL | _NOSIGNAL | _CMSG_CLOEXEC
_SEND_FLAGS = MSG_DONTWAIT | _NOSIGNAL | int(getattr(_stdsocket, "MSG_MORE", 0))
#: recv(n) with a large n allocates no more than what waits, or this much.
_RECV_CHUNK = 64 * 1024
#: Ring size of socketpair() (the monitor picks it for connections).
DEFAULT_BUF = 256 * 1024
_MIN_BUF, _MAX_BUF = 4096, 64 * 1024 * 1024
_BUF_OPTS = ((SOL_SOCKET, SO_RCVBUF), (SOL_SOCKET, SO_SNDBUF))
_UNIX_PATH_MAX = 107       # sun_path is 108 bytes, one for the terminating NUL
_UNSET = object()
_EAGAIN_MSG = "Resource temporarily unavailable"
# Descriptor passing (SCM_RIGHTS) over AF_UNIX ring connections: see _RingConn.
_SCM_RIGHTS = int(_stdsocket.SCM_RIGHTS)
_SOL_SOCKET = int(SOL_SOCKET)
_MSG_CTRUNC = int(_stdsocket.MSG_CTRUNC)
_SCM_MAX_FD = 253              # the kernel's limit of descriptors in one message
_FD_SIZE = struct.calcsize("i")
_CMSG_HEADER = _stdsocket.CMSG_LEN(0)
_RECORD = struct.Struct("<QQ")  # a side-channel record: stream position, length
_SIDE_ANCBUF = _stdsocket.CMSG_SPACE(_SCM_MAX_FD * _FD_SIZE)
_W_RECORDS = layout.word(layout.OFF_RECORDS)
_INT_MIN, _INT_MAX = -(1 << 31), (1 << 31) - 1

# fd -> connection or listener, for socket(fileno=fd) after detach()
_detached: dict[int, _RingConn | _Listener] = {}
# fd -> the open ring or listener socket on it, for selectors given bare descriptors
# (asyncio registers sock.fileno(), not the socket).
_by_fd: weakref.WeakValueDictionary[int, socket] = weakref.WeakValueDictionary()
# Every ring connection of this process, for the fork hooks.
_live: weakref.WeakSet[_RingConn] = weakref.WeakSet()
# Every open listener of this process, for the fork hooks.
_listeners: weakref.WeakSet[_Listener] = weakref.WeakSet()
# Control channel -> pid of the monitor at its other end.
_chan_monitor: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def socket_for_fd(fd: int) -> socket | None:
    """Return the open ring or listener :class:`socket` whose descriptor is *fd*, if any."""
    sock = _by_fd.get(fd)
    if sock is None or sock._closed or (sock._conn is None and sock._lst is None):
        return None
    return sock


def _timeout_value(value) -> float | None:
    """Check a timeout like socket.settimeout does; return it as float or None."""
    if value is None:
        return None
    try:
        t = float(value)
    except (TypeError, ValueError):
        raise TypeError("Timeout value must be int, float or None") from None
    if t != t:
        raise ValueError("Invalid value NaN (not a number)")
    if t < 0.0:
        raise ValueError("Timeout value out of range")
    return t


def _peer_pid(sock: _stdsocket.socket) -> int:
    """The pid at the other end of a Unix socket (SO_PEERCRED); 0 if unknown."""
    try:
        creds = sock.getsockopt(SOL_SOCKET, _stdsocket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return 0
    return struct.unpack("3i", creds)[0]


def _monitor_of(chan: _client.ControlChannel) -> int:
    """Which monitor (its pid) *chan* talks to: a restarted monitor has another."""
    pid = _chan_monitor.get(chan)
    if pid is None:
        pid = _chan_monitor[chan] = _peer_pid(chan.sock)
    return pid


def _channel_dead(chan: _client.ControlChannel | None) -> bool:
    """Has the monitor at the other end of *chan* gone (hang-up)?  True for no channel."""
    if chan is None:
        return True
    poller = select.poll()
    # Only the hang-up: POLLIN may be a reply that another thread waits for.
    poller.register(chan.sock.fileno(), select.POLLHUP | select.POLLRDHUP)
    return any(ev & (select.POLLHUP | select.POLLRDHUP | select.POLLERR | select.POLLNVAL)
               for _, ev in poller.poll(0))


class _RingConn:
    """One end of a ring connection, shared by every socket object that refers to it (dup()).

    ``tx`` is the ring this end writes, ``rx`` the one it reads; ``cid`` the
    monitor's connection id (None for socketpair(), which has no monitor) and
    ``monitor`` the pid of the monitor that set it up.

    ``side`` (AF_UNIX only) is this end of the connection's *side channel*,
    a kernel SOCK_SEQPACKET socketpair that carries the descriptors passed
    with ``sendmsg(SCM_RIGHTS)``.  A sender, holding the send token, queues a
    record (the stream position of its message's first byte, the message's
    length) with the descriptors, counts it in the header word ``records`` of
    the ring it writes, and only then writes the bytes.  So a reader that
    sees byte p in the ring can find p's record: it snapshots the ring's
    ``available`` first, then -- if the count moved -- drains the side
    channel into ``records`` (sorted by position), then reads at most the
    snapshot.  Why a kernel socket: descriptors can only travel through the
    kernel, and in flight they stay the kernel's (closed with the socket when
    the last holder of this end closes it or dies); why SEQPACKET: a record
    stays one message.  While the count is what this process last ``seen``
    and nothing is queued (``quiet``), a read looks at one header word more.
    A plain read that was already waiting when a record came may read past
    it; the next read prunes such records (closes their descriptors).
    """

    def __init__(self, tx: Ring, rx: Ring, cid: int | None, family: int,
                 local, peer, monitor: int = 0,
                 side: _stdsocket.socket | None = None) -> None:
        self.tx, self.rx = tx, rx
        self.side = side
        # [position, length, descriptors] drained from the side channel, not yet read.
        self.records: list[list] = []
        self.seen = 0               # the peer's record count when this process last drained
        # What the peer's count must equal for a read to skip the side channel:
        # ``seen`` while no drained record waits, else -1 (never).
        self.quiet = 0
        # Header words: the count the peer bumps (rq) and ours (tq); None without a side channel.
        self.rq = rx._q if side is not None else None
        self.tq = tx._q if side is not None else None
        self.probe = bytearray(1)   # where a wait for data peeks
        self.writer, self.reader = tx.writer(), rx.reader()
        self.cid = cid
        self.monitor = monitor
        self.end = "client"         # or "server": which end of the monitor's connection
        self.family = family
        self.reset_seen = False     # the peer reset us (TCP: after the one send let through)
        self.local, self.peer = local, peer
        self.refs = 1
        self.readiness = False      # fileno() was handed out: keep the eventfd exact
        self.shut_rd = False
        self.shut_wr = False
        # A kernel socket of the same family: the client's bound socket (it
        # keeps the port reserved) or, made on demand, an unconnected one that
        # stores and validates the options rings do not interpret.
        self.shadow: _stdsocket.socket | None = None
        # (read end, write end) of a pipe made before the first fork() while
        # this end is open: the kernel counts the processes that hold it.
        self.hold: tuple[int, int] | None = None
        # The monitor has the pipe's read end (HOLD went through, here or in
        # an ancestor): a fork child proves it holds the end with the write end.
        self.watched = False
        _live.add(self)

    @classmethod
    def from_fds(cls, fds: list[int], cid: int | None, family: int, local, peer,
                 monitor: int) -> _RingConn:
        """Map the six descriptors of protocol.RING_FDS; they are the rings' (or closed) after.

        They come from the monitor, which made them: the rings adopt them
        (no dup, no eventfd check; the memfd and header are still checked),
        which saves a dozen system calls per connection.
        """
        rest = list(fds)
        try:
            # AF_UNIX connections come with their end of the side channel.
            want = len(P.RING_FDS) + (family == AF_UNIX)
            if len(rest) != want:
                raise OSError(errno.EPROTO, f"{len(rest)} ring descriptors from the monitor, "
                              f"expected {want}")
            del rest[0:3]      # attach owns them from the call on, and closes them if it fails
            tx = Ring.attach(RingFds(*fds[0:3]), adopt=True)
        except BaseException:
            for fd in rest:
                os.close(fd)
            raise
        try:
            del rest[0:3]
            rx = Ring.attach(RingFds(*fds[3:6]), adopt=True)
        except BaseException:
            for fd in rest:
                os.close(fd)
            tx.close()
            raise
        side = None
        if rest:
            side = _stdsocket.socket(AF_UNIX, _stdsocket.SOCK_SEQPACKET, 0, rest[0])
        return cls(tx, rx, cid, family, local, peer, monitor, side)

    def init_tokens(self, end: str | None = None) -> None:
        """Give this end its send and receive tokens, owned by the calling thread.

        *end* ("client" or "server") names it for the monitor; a socketpair()
        end has no monitor and no name.  Only the C ring backend checks
        tokens; the pure-Python one is for single-threaded ring tests.
        """
        if end is not None:
            self.end = end
        if not hasattr(self.writer, "enable_token"):
            return
        for direction, ep in (("send", self.writer), ("recv", self.reader)):
            tok = Token(ep, None if self.cid is None else (self.cid, self.end, direction))
            ep.enable_token(tok)
            tok.claim()   # a fresh word is 0: its creator's thread is the first owner

    def tokens(self) -> tuple[Token | None, Token | None]:
        """(send token, receive token), or Nones without token checks."""
        return self.writer.token, self.reader.token

    @property
    def ready_fd(self) -> int:
        """The eventfd that is readable when this end has something to read."""
        return self.rx.fds().data_efd

    def arm(self) -> None:
        """Switch to keeping the eventfd exact (RingReader.settle after reads)."""
        if not self.readiness:
            self.readiness = True
            if self.shut_rd:
                os.eventfd_write(self.ready_fd, 1)  # recv never blocks any more
            else:
                self.reader.settle()

    def shadow_socket(self) -> _stdsocket.socket:
        """The kernel socket that answers for options (made on first use)."""
        if self.shadow is None:
            self.shadow = _stdsocket.socket(self.family, SOCK_STREAM)
        return self.shadow

    def release(self) -> None:
        """Drop one reference; the last one closes both directions and tells the monitor."""
        self.refs -= 1
        if self.refs > 0:
            return
        _live.discard(self)
        for tok in self.tokens():
            if tok is not None:
                tok.close()
        last = self._last_holder()
        if last:
            # Connect.tla!Close: the peer sees EOF on what we wrote and EPIPE on writes.
            self.writer.close()
            self.reader.close()
        self.rq = self.tq = None
        self.tx.close()
        self.rx.close()
        if self.shadow is not None:
            self.shadow.close()
        self._close_side()
        self._tell_monitor()

    def _close_side(self) -> None:
        """Close this process's side channel and the descriptors it drained and nobody read.

        Descriptors still in the kernel's queue are closed by the kernel, once
        every process holding this end has closed its copy (or died).
        """
        records, self.records = self.records, []
        self.quiet = -1
        for rec in records:
            _close_fds(rec[2])
        if self.side is not None:
            self.side.close()
            self.side = None

    def _last_holder(self) -> bool:
        """Is this process the last one holding this end (it was inherited by fork)?

        Each holder has a copy of the pipe's write end; once every copy is
        closed -- by close or by the holder's exit -- the read end reports
        POLLHUP.  Whoever closes last sees it, so exactly the last closer
        (or each of several closing at once: closing twice is harmless)
        shuts the rings.
        """
        hold = self.hold
        if hold is None:
            return True
        self.hold = None
        r, w = hold
        os.close(w)
        try:
            poller = select.poll()
            poller.register(r, select.POLLIN)
            return any(ev & select.POLLHUP for _, ev in poller.poll(0))
        finally:
            os.close(r)

    def _tell_monitor(self) -> None:
        """Connect.tla!Close, Fork!Close: one-way CLOSE, only to the monitor that set this up.

        Other processes may still hold the end (fork children, registered
        or not): the monitor keeps it open until its hold pipe says none does.
        """
        if self.cid is None:
            return
        chan = _client.current()
        # A restarted monitor never knew this connection, and nothing keeps
        # its ids apart from the old one's: a stale CLOSE could name one of its.
        if chan is not None and _monitor_of(chan) == self.monitor:
            chan.notify(P.CLOSE, {"id": self.cid, "end": self.end})

    def _ours(self, chan: _client.ControlChannel) -> bool:
        """Is this an open end that the monitor at the other end of *chan* set up?"""
        return self.cid is not None and self.refs > 0 and _monitor_of(chan) == self.monitor


# -- fork (called by impl.fork's hooks) ---------------------------------------------------
def _prepare_fork() -> None:
    """Fork!Fork, the parent's part: a hold pipe for every open end; HOLD for the new ones.

    Synchronous: the monitor has each read end before the child exists, so
    it counts the child as a holder from its first instant, whatever order
    the child's FORKED and the parent's CLOSE or death come in.
    """
    new = []
    for conn in list(_live):
        if conn.hold is None and conn.refs > 0:
            conn.hold = os.pipe2(os.O_CLOEXEC)
            new.append(conn)
    if not any(conn.cid is not None for conn in new):
        return
    chan = _client.current() or _client.channel()
    if chan is None:
        return
    mine = [conn for conn in new if conn._ours(chan)]
    for start in range(0, len(mine), P.MAX_ENDS):
        batch = mine[start:start + P.MAX_ENDS]
        try:
            chan.request(P.HOLD, {"ends": [[c.cid, c.end] for c in batch]},
                         [c.hold[0] for c in batch])
        except OSError as exc:
            # The monitor is gone or refused: it cannot count this end's
            # holders, and children cannot register it (their TAKEs wait).
            _log.warning("the monitor did not take the hold pipes of %d ends: %s",
                                len(batch), exc)
            continue
        for conn in batch:
            conn.watched = True


def _forked_parent() -> None:
    """After fork, in the parent: the child may ask for our tokens; the agent must answer."""
    chan = _client.current()
    if chan is not None and any(conn._ours(chan) for conn in list(_live)):
        _agent.ensure()


def _forked_child() -> None:
    """After fork, in the child: own epoll sets for listeners, then Fork!Register (FORKED).

    The child holds every end too; the monitor hears it before fork()
    returns here, since the parent may exit at once.  The proofs are the
    child's copies of the hold pipes' write ends.  Its tokens stay with the
    parent until it asks (impl.token reset them already).
    """
    for lst in list(_listeners):
        lst._forked_child()
    held = [conn for conn in list(_live)
            if conn.watched and conn.hold is not None and conn.refs > 0]
    if not held:
        return
    chan = _client.channel()
    if chan is None:
        return
    held = [conn for conn in held if conn._ours(chan)]
    if held:
        _agent.register_child([[c.cid, c.end] for c in held], [c.hold[1] for c in held])


def _c_int(value) -> int:
    """*value* as the kernel's socket methods take an int argument (TypeError, OverflowError)."""
    value = operator.index(value)
    if not -2**31 <= value < 2**31:
        raise OverflowError("Python int too large to convert to C int")
    return value


def _close_fds(fds) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


# -- descriptor passing over a ring connection's side channel (see _RingConn) -----------
def _scm_drain(conn: _RingConn) -> None:
    """Move the records queued on the side channel into ``conn.records``, if the count moved.

    The count is read first: every record it counts was queued before, so
    after the drain this process has seen them (or a fork sibling took them).
    """
    count = conn.rq[_W_RECORDS]
    if count == conn.seen:
        return
    side, records = conn.side, conn.records
    while True:
        try:
            data, anc, _, _ = side.recvmsg(_RECORD.size, _SIDE_ANCBUF,
                                           MSG_DONTWAIT | _CMSG_CLOEXEC)
        except (BlockingIOError, InterruptedError):
            break
        fds = _fds_of(anc)
        if len(data) != _RECORD.size:
            _close_fds(fds)     # EOF (b""), or not a record of ours
            if not data:
                break
            continue
        pos, length = _RECORD.unpack(data)
        records.append([pos, length, fds])
    conn.seen = count
    _scm_requiet(conn)


def _scm_requiet(conn: _RingConn) -> None:
    """Set what the fast paths compare the peer's count with: -1 (never) while records wait."""
    conn.quiet = -1 if conn.records else conn.seen


def _fds_of(ancdata) -> list[int]:
    fds = []
    for level, kind, data in ancdata:
        if level == _SOL_SOCKET and kind == _SCM_RIGHTS:
            arr = array.array("i")
            arr.frombytes(data[:len(data) - len(data) % _FD_SIZE])
            fds.extend(arr)
    return fds


def _scm_prune(conn: _RingConn, head: int) -> None:
    """Close the descriptors of records whose first byte was read without them.

    A plain read that was already waiting when the message came (or a fork
    sibling's read) took the byte; the kernel would have closed them then.
    """
    records = conn.records
    while records and records[0][0] < head:
        _close_fds(records.pop(0)[2])
    _scm_requiet(conn)


def _scm_read(conn: _RingConn, view, peek: bool,
              hold: float | None) -> tuple[int, list[int] | None]:
    """One read of what is there now, never past a message with descriptors (see _recv_scm)."""
    reader = conn.reader
    tok = reader.token
    with (tok.hold(hold) if tok is not None else nullcontext()):
        avail = reader.available      # the snapshot: every record of these bytes is queued
        if not avail:
            return 0, None
        _scm_drain(conn)
        head = reader.head
        _scm_prune(conn, head)
        limit = min(len(view), avail)
        records = conn.records
        rec = records[0] if records and records[0][0] < head + avail else None
        if rec is not None and rec[0] < head + limit:
            limit = min(limit, rec[0] + rec[1] - head)
        n = reader.read_into(view[:limit], peek=peek)  # RingCredit!Recv
        if rec is None:
            return n, None
        if peek:
            # The kernel installs new descriptors on each peek -- and a peek
            # walks on past its last byte to the first queued message with
            # descriptors, and returns those (unix_stream_read_generic).
            return n, [os.dup(fd) for fd in rec[2]]
        if n <= rec[0] - head:
            return n, None
        records.pop(0)
        _scm_requiet(conn)
        return n, rec[2]


def _scm_deliver(fds: list[int] | None, ancbufsize: int, flags: int) -> tuple[list, int]:
    """(ancdata, msg_flags) of recvmsg for *fds*: as many as fit in *ancbufsize*, others closed.

    The kernel's scm_detach_fds: one SCM_RIGHTS item of at most
    (ancbufsize - CMSG_LEN(0)) // sizeof(int) descriptors, MSG_CTRUNC if some
    did not fit; close-on-exec only with MSG_CMSG_CLOEXEC, which the kernel
    also echoes in msg_flags, descriptors or not.
    """
    echo = flags & _CMSG_CLOEXEC
    if not fds:
        return [], echo
    room = max(0, (ancbufsize - _CMSG_HEADER) // _FD_SIZE)
    keep, drop = fds[:room], fds[room:]
    _close_fds(drop)
    if not flags & _CMSG_CLOEXEC:
        for fd in keep:
            os.set_inheritable(fd, True)
    ancdata = [(_SOL_SOCKET, _SCM_RIGHTS, array.array("i", keep).tobytes())] if keep else []
    return ancdata, echo | (_MSG_CTRUNC if drop else 0)


def _rights_items(conn: _RingConn, ancdata) -> tuple[list, int]:
    """Check sendmsg's *ancdata* like the kernel path; return (items to pass, descriptor count).

    Malformed items raise socket.sendmsg's own TypeError.  Items of other
    levels are ignored, as the kernel does; SCM_RIGHTS goes on the side
    channel of an AF_UNIX connection and is ignored on AF_INET/AF_INET6
    (TCP ignores it too); any other SOL_SOCKET item is refused.
    """
    try:
        items = list(ancdata)
    except TypeError:
        _ancillary_error(ancdata)
        raise
    out, nfds = [], 0
    for item in items:
        try:
            level, kind, data = item
            level, kind, size = operator.index(level), operator.index(kind), memoryview(data).nbytes
        except (TypeError, ValueError):
            _ancillary_error(items)
            raise
        if not (_INT_MIN <= level <= _INT_MAX and _INT_MIN <= kind <= _INT_MAX):
            _ancillary_error(items)     # socket.sendmsg's OverflowError
        if level != _SOL_SOCKET:
            continue
        if kind == _SCM_RIGHTS and conn.side is not None:
            out.append(item)
            nfds += size // _FD_SIZE
        elif kind == _SCM_RIGHTS or (kind == _stdsocket.SCM_CREDENTIALS and conn.family != AF_UNIX):
            continue
        else:
            raise OSError(errno.EOPNOTSUPP, f"ancillary data of type {kind} cannot travel over a "
                          "socksdirect ring connection (only SCM_RIGHTS on AF_UNIX); use a kernel "
                          "AF_UNIX socket")
    return out, nfds


def _ancillary_error(ancdata) -> None:
    """Raise the TypeError (or OverflowError) socket.sendmsg raises for *ancdata*, if it does.

    It is reproduced, not imitated: the same call on a throwaway kernel
    socket, which parses its arguments before it could send anything.
    """
    with _stdsocket.socket(AF_UNIX, _stdsocket.SOCK_DGRAM) as probe:
        try:
            _stdsocket.socket.sendmsg(probe, [], ancdata, MSG_DONTWAIT)
        except (TypeError, ValueError, OverflowError):
            raise
        except OSError:
            pass


def _check_sendmsg_address(conn: _RingConn, address) -> None:
    """sendmsg's address on a connected stream socket: its form is checked, then as the kernel.

    A wrong type raises the kernel path's TypeError (parsed by socket.sendmsg
    on the shadow socket, which never sends); a well-formed address is
    ignored on AF_INET/AF_INET6, as TCP does, and EISCONN on AF_UNIX.
    """
    try:
        _stdsocket.socket.sendmsg(conn.shadow_socket(), [], (), MSG_DONTWAIT | _NOSIGNAL,
                                  address)
    except (TypeError, ValueError, OverflowError):
        raise
    except OSError:
        pass
    if conn.family == AF_UNIX:
        raise OSError(errno.EISCONN, "Transport endpoint is already connected")


def _check_fds(items: list) -> None:
    """EBADF or EINVAL as the kernel gives them, for descriptors that are sent with no data."""
    fds = []
    for _, _, data in items:
        view = memoryview(data).cast("B")
        fds.extend(array.array("i", bytes(view[:len(view) - len(view) % _FD_SIZE])))
    if len(fds) > _SCM_MAX_FD:
        raise OSError(errno.EINVAL, "Invalid argument")
    for fd in fds:
        os.fstat(fd)


def _space_for(conn: _RingConn, n: int, nowait: bool, deadline: float | None) -> int:
    """How many of *n* bytes go with the descriptors: what fits now, after waiting for space."""
    writer = conn.writer
    while True:
        free = writer.free
        if free:
            return min(n, free)
        if nowait:
            raise _eagain()
        if writer.settle_space():   # RingWakeup, roles swapped: space or the reader closed
            if not writer.free:
                raise BrokenPipeError(errno.EPIPE, "Broken pipe")
            continue
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            raise TimeoutError("timed out")
        _poll_in(conn.tx.fds().space_efd, left)


def _side_send(conn: _RingConn, record: bytes, items: list, nowait: bool,
               deadline: float | None) -> None:
    """Queue *record* with its descriptors on the side channel; the kernel checks them."""
    side = conn.side
    while True:
        try:
            side.sendmsg([record], items, MSG_DONTWAIT | _NOSIGNAL)
            return
        except BlockingIOError:
            # The peer has not drained its records: wait, like a full socket buffer.
            if nowait:
                raise _eagain() from None
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            raise TimeoutError("timed out")
        poller = select.poll()
        poller.register(side.fileno(), select.POLLOUT)
        poller.poll(None if left is None else max(0, int(left * 1000)) + 1)


def _poll_in(fd: int, timeout: float | None) -> None:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    poller.poll(None if timeout is None else max(0, int(timeout * 1000)) + 1)


def _af_name(family: int) -> str:
    return _RING_FAMILIES[family]


def _inet_host(family: int, address) -> tuple[str, int]:
    """Check an AF_INET/AF_INET6 address like the kernel module does; return (host, port)."""
    name = "AF_INET" if family == AF_INET else "AF_INET6"
    if not isinstance(address, tuple):
        raise TypeError(f"connect(): {name} address must be tuple, not "
                        f"{type(address).__name__}")
    if family == AF_INET and len(address) != 2:
        raise TypeError("AF_INET address must be a pair (host, port)")
    if family == AF_INET6 and not 2 <= len(address) <= 4:
        raise TypeError("AF_INET6 address must be a tuple (host, port[, flowinfo[, scopeid]])")
    host, port = address[0], address[1]
    if not isinstance(host, (str, bytes, bytearray)):
        raise TypeError(f"str, bytes or bytearray expected, not {type(host).__name__}")
    if not isinstance(port, int) or isinstance(port, bool):
        raise TypeError(f"'{type(port).__name__}' object cannot be interpreted as an integer")
    if not 0 <= port <= 65535:
        raise OverflowError("connect(): port must be 0-65535.")
    if isinstance(host, (bytes, bytearray)):
        host = bytes(host).decode("idna")
    if host == "":
        host = "0.0.0.0" if family == AF_INET else "::"
    return host, port


def _to_wire(family: int, address) -> list:
    """Normalise a connect address to the monitor's [host, port] or [path] form."""
    if family == AF_UNIX:
        if isinstance(address, str):
            raw = address.encode("utf-8", "surrogateescape")
        else:
            raw = bytes(memoryview(address))   # TypeError like the kernel's for others
        if len(raw) > _UNIX_PATH_MAX:
            raise OSError("AF_UNIX path too long")
        path = raw.decode("utf-8", "surrogateescape")
        if path and not path.startswith("\0") and not os.path.isabs(path):
            # The monitor compares names, not files: a relative name means
            # another file in another directory.
            path = os.path.abspath(path)
        return [path]   # may now exceed the limit: then only the kernel can reach it
    host, port = _inet_host(family, address)
    info = _stdsocket.getaddrinfo(host, port, family, SOCK_STREAM)
    return [info[0][4][0], port]


def _from_wire(family: int, addr) -> object:
    if addr is None:
        return "" if family == AF_UNIX else None
    if family == AF_UNIX:
        name = addr[0]
        return name.encode("utf-8", "surrogateescape") if name.startswith("\0") else name
    if family == AF_INET6:
        return (addr[0], addr[1], 0, 0)
    return (addr[0], addr[1])


def _int_flags(flags) -> int:
    """*flags* as a plain int: the socket module's MSG_* are IntFlag members,
    and each ``&`` on one costs microseconds (enum arithmetic), several per call.
    TypeError for a non-integer, as socket.socket raises."""
    return flags if type(flags) is int else operator.index(flags)


def _eagain() -> BlockingIOError:
    return BlockingIOError(errno.EAGAIN, _EAGAIN_MSG)


class socket(_stdsocket.socket):
    """A socket.socket that connects over shared memory where it can.

    Same constructor and methods as :class:`socket.socket`; see the module
    docstring for what differs.
    """

    __slots__ = ("_conn", "_lst", "_rtimeout", "_bufs", "_kroute", "_connecting", "_fd_out",
                 "_alias")

    def __init__(self, family=-1, type=-1, proto=-1, fileno=None) -> None:
        """Create a socket like socket.socket(family, type, proto, fileno).

        *fileno* may also be a descriptor that :meth:`detach` returned for a
        ring or listener socket: the new object takes the connection up again.
        Or that of a ring socket still open (http.client's ``response.fileno()``
        made a socket of, for a tunnel): the new object is another holder of
        the connection, on a descriptor of its own; its :meth:`detach` gives
        *fileno* back, still open, as the kernel's would.
        """
        held = _detached.pop(fileno, None) if isinstance(fileno, int) else None
        if isinstance(held, _RingConn):
            self._init_ring(held, fileno, close_src=True)
            return
        # The holder may be closed but not yet released: close() waits for its
        # makefile() objects, as http.client's closed connection does here.
        live = _by_fd.get(fileno) if held is None and isinstance(fileno, int) else None
        conn = live._conn if live is not None else None
        if conn is not None and conn.refs > 0:
            conn.refs += 1
            try:
                self._init_ring(conn, fileno, close_src=False, type=live.type, proto=live.proto)
            except BaseException:
                conn.release()      # the hold taken above
                raise
            self._alias = fileno
            return
        if isinstance(held, _Listener):
            self._init_listener(held, fileno)
            return
        super().__init__(family, type, proto, fileno)
        self._conn: _RingConn | None = None
        self._lst: _Listener | None = None
        self._rtimeout = _UNSET
        self._bufs: dict[tuple[int, int], int] = {}
        self._kroute = False
        self._connecting: threading.Event | None = None  # a connect() is asking the monitor
        self._fd_out = False    # fileno() was handed out before a ring was set up
        self._alias: int | None = None   # made by socket(fileno=) of this open ring socket

    def _adopt(self, family: int, type: int, proto: int, src: int, close_src: bool) -> None:
        """Become a socket object on descriptor *src* (any kind of descriptor).

        *close_src*: take *src* over, number and all, as socket(fileno=src)
        does; otherwise work on a copy of it under a new number.
        """
        # socket.socket refuses a descriptor that is not a socket, so it gets
        # one of a throwaway kernel socket first, and then *src* in its place.
        if close_src:
            inheritable = os.get_inheritable(src)
            keep = os.dup(src)
            try:
                with _stdsocket.socket(family, SOCK_STREAM) as throwaway:
                    os.dup2(throwaway.fileno(), src, inheritable=False)
                _stdsocket.socket.__init__(self, family, type, proto, src)
                os.dup2(keep, src, inheritable=inheritable)
            finally:
                os.close(keep)
            fd = src
        else:
            _stdsocket.socket.__init__(self, family, type, proto)
            fd = _stdsocket.socket.fileno(self)
            os.dup2(src, fd, inheritable=False)
        self._bufs = {}
        self._kroute = False
        self._connecting = None
        self._fd_out = False
        self._alias = None
        _by_fd[fd] = self

    def _init_ring(self, conn: _RingConn, src: int, *, close_src: bool, type: int = SOCK_STREAM,
                   proto: int = 0) -> None:
        """Become a ring socket on *src*, conn's eventfd (see _adopt for *close_src*)."""
        self._conn = conn
        self._lst = None
        self._rtimeout = _stdsocket.getdefaulttimeout()
        self._adopt(conn.family, type, proto, src, close_src)

    def _init_listener(self, lst: _Listener, fd: int) -> None:
        self._conn = None
        self._lst = lst
        self._rtimeout = _stdsocket.getdefaulttimeout()
        self._adopt(lst.family, SOCK_STREAM, 0, fd, True)

    @classmethod
    def _from_conn(cls, conn: _RingConn, type: int = SOCK_STREAM, proto: int = 0) -> socket:
        sock = cls.__new__(cls)
        sock._init_ring(conn, conn.ready_fd, close_src=False, type=type, proto=proto)
        return sock

    # -- what kind of socket is this -------------------------------------------
    @property
    def transport(self) -> str:
        """"ring", "listener" or "kernel" (see the module docstring)."""
        if self._conn is not None:
            return "ring"
        return "listener" if self._lst is not None else "kernel"

    def __repr__(self) -> str:
        """Like socket.socket's repr, with the transport of ring and listener sockets."""
        if self._conn is None and self._lst is None:
            text = super().__repr__()
            return "<impl.socket" + text[text.index(" "):]
        s = (f"<impl.socket fd={_stdsocket.socket.fileno(self)}, family={self.family}, "
             f"type={self.type}, proto={self.proto}")
        try:
            s += f", laddr={self.getsockname()}"
            if self._conn is not None:
                s += f", raddr={self.getpeername()}"
        except OSError:
            pass
        return s + f", transport={self.transport}>"

    def __getstate__(self):
        """Refuse pickling, as socket.socket does."""
        raise TypeError(f"cannot pickle {self.__class__.__name__!r} object")

    # -- descriptors ----------------------------------------------------------------
    def fileno(self) -> int:
        """Return the descriptor; for a ring socket, readable exactly when recv would not block.

        Handing out the descriptor switches a ring socket to keeping its
        eventfd exact: from then on every read that empties the ring costs an
        eventfd read, and the peer's next write an eventfd write.  Writability
        is always reported (an eventfd is always writable); a send may still
        find the ring full.
        """
        conn = self._conn
        if conn is not None:
            conn.arm()
        else:
            self._fd_out = True     # should connect() set up a ring, it arms it then
            conn = self._conn
            if conn is not None:    # a connect() in another thread got there between
                conn.arm()
        return super().fileno()

    def dup(self) -> socket:
        """Return a new socket object for the same socket (closed independently)."""
        conn, lst = self._conn, self._lst
        if conn is None and lst is None:
            fd = _stdsocket.dup(super().fileno())
            return self.__class__(self.family, self.type, self.proto, fileno=fd)
        sock = self.__class__.__new__(self.__class__)
        if conn is not None:
            conn.refs += 1
            sock._init_ring(conn, super().fileno(), close_src=False, type=self.type,
                            proto=self.proto)
        else:
            lst.refs += 1
            sock._init_listener(lst, os.dup(super().fileno()))
        sock._rtimeout = self._rtimeout
        return sock

    def detach(self) -> int:
        """Close the socket object without closing the descriptor; return it.

        A ring connection or listener stays open: ``impl.socket(fileno=fd)``
        takes it up again.  A socket made on the number of an open ring
        socket closes its own descriptor and returns that number.
        """
        if self._alias is not None and self._conn is not None:
            fd, self._alias = self._alias, None
            self._closed = True
            self._real_close()
            return fd
        conn, lst = self._conn, self._lst
        fd = super().detach()
        if fd >= 0 and (conn is not None or lst is not None):
            self._conn = self._lst = None
            if _by_fd.get(fd) is self:
                del _by_fd[fd]
            _detached[fd] = conn if conn is not None else lst
        return fd

    def _real_close(self, _ss=_stdsocket.socket) -> None:
        conn, lst = self._conn, self._lst
        fd = _stdsocket.socket.fileno(self)
        if _by_fd.get(fd) is self:
            del _by_fd[fd]
        self._conn = self._lst = None
        try:
            if conn is not None:
                conn.release()
            if lst is not None:
                lst.release()
        finally:
            super()._real_close()

    def __del__(self) -> None:
        """Close a collected ring or listener socket, so that the peer is told."""
        if getattr(self, "_conn", None) is not None or getattr(self, "_lst", None) is not None:
            warnings.warn(f"unclosed {self!r}", ResourceWarning, source=self, stacklevel=2)
            self.close()
        else:
            super().__del__()   # the kernel socket's own finalizer: its ResourceWarning

    def get_inheritable(self) -> bool:
        """Get the inheritable flag of the descriptor."""
        return super().get_inheritable()

    def set_inheritable(self, inheritable: bool) -> None:
        """Set the inheritable flag of the descriptor.

        A ring socket's descriptor is an eventfd: a program started with
        exec() inherits it but cannot use the connection.
        """
        super().set_inheritable(inheritable)

    def close(self) -> None:
        """Close the socket; a ring connection closes for the peer when its last copy does."""
        super().close()

    def __enter__(self) -> socket:
        """Return the socket itself (``with`` closes it)."""
        return self

    def __exit__(self, *args) -> None:
        """Close the socket."""
        if not self._closed:
            self.close()

    # -- timeouts ---------------------------------------------------------------------
    def settimeout(self, value) -> None:
        """Set a timeout on blocking operations (None: block; 0.0: non-blocking)."""
        if self._rtimeout is _UNSET:
            super().settimeout(value)
            return
        # Not the kernel's: a ring socket's descriptor is an eventfd that
        # the ring's waits rely on staying non-blocking.
        self._rtimeout = _timeout_value(value)
        fd = _stdsocket.socket.fileno(self)
        if fd < 0:
            # The kernel's socket object keeps the value and then fails, too.
            raise OSError(errno.EBADF, "Bad file descriptor")
        if self._lst is not None:
            # A listener's descriptor is an epoll set, which nothing of ours
            # reads: give it the flag the kernel's socket would have
            # (O_NONBLOCK whenever there is a timeout), as programs check it.
            os.set_blocking(fd, self._rtimeout is None)

    def gettimeout(self) -> float | None:
        """Return the timeout in seconds, or None."""
        t = self._rtimeout
        return super().gettimeout() if t is _UNSET else t

    def setblocking(self, flag: bool) -> None:
        """Set blocking (True) or non-blocking (False) mode."""
        self.settimeout(None if flag else 0.0)

    def getblocking(self) -> bool:
        """True unless the timeout is 0.0."""
        return self.gettimeout() != 0.0

    @property
    def timeout(self) -> float | None:
        """The timeout in seconds (None: blocking)."""
        return self.gettimeout()

    # -- connecting ---------------------------------------------------------------------
    def _ring_capable(self) -> bool:
        return (self.family in _RING_FAMILIES
                and (_stdsocket.socket.type.__get__(self) & _SOCK_TYPE_MASK) == SOCK_STREAM)

    def connect(self, address) -> None:
        """Connect to *address*: over rings if a socksdirect listener has it, else the kernel's.

        A connect that the monitor's rules deny raises ConnectionRefusedError
        and never falls back to the kernel.
        """
        self._connect(address, False)

    def connect_ex(self, address) -> int:
        """Like connect(), but return an errno (0 on success) instead of raising it."""
        return self._connect(address, True)

    def _connect(self, address, ex: bool):
        if self._conn is not None:
            if ex:
                return errno.EISCONN
            raise OSError(errno.EISCONN, "Transport endpoint is already connected")
        lst = self._lst
        if lst is not None:
            return lst.ksock.connect_ex(address) if ex else lst.ksock.connect(address)
        if not self._kroute and self._ring_capable():
            # Another thread may use this socket while we ask -- the peer's
            # accept() can return before we have the rings (CPython's
            # TCPCloserTest does so); its calls wait for us (_connected_meanwhile).
            self._connecting = connecting = threading.Event()
            try:
                conn = self._ask_monitor(address)
                if conn is not None:
                    self._become_ring(conn)
            except (TypeError, ValueError, OverflowError, _stdsocket.gaierror):
                raise
            except OSError as exc:
                if ex and exc.errno is not None:
                    return exc.errno
                raise
            finally:
                self._connecting = None
                connecting.set()
            if conn is not None:
                return 0 if ex else None
            self._kroute = True  # the kernel's from now on: its EALREADY, EISCONN, ...
        return super().connect_ex(address) if ex else super().connect(address)

    def _connected_meanwhile(self) -> bool:
        """Wait for a connect() in progress in another thread; True if it made a ring."""
        connecting = self._connecting
        if connecting is not None:
            connecting.wait()
        return self._conn is not None

    def _ask_monitor(self, address) -> _RingConn | None:
        """Connect.tla!Connect: ask for a ring; None means "use the kernel"."""
        family = self.family
        dest = _to_wire(family, address)
        if family == AF_UNIX:
            try:
                super().getpeername()
                return None  # connected already (a descriptor handed to us): the kernel's EISCONN
            except OSError:
                pass
            if len(dest[0].encode("utf-8", "surrogateescape")) > _UNIX_PATH_MAX:
                return None  # a relative name made absolute: too long to be a listener's
            local = None
        else:
            local = self._bind_for_ring(dest[0])
            if local is None:
                return None  # connected already, or no socksdirect listener can own dest
        body = {"family": _af_name(family), "address": dest,
                "rcvbuf": self._buf_opt(SO_RCVBUF), "sndbuf": self._buf_opt(SO_SNDBUF)}
        for attempt in (0, 1):
            chan = _client.channel(fresh=attempt > 0)
            if chan is None:
                return None
            try:
                reply = chan.request(P.CONNECT, body, [super().fileno()])
                break
            except (ConnectionResetError, BrokenPipeError):
                continue  # the monitor restarted: one more try on a new channel
            except OSError as exc:
                if exc.errno == errno.ECONNREFUSED:
                    raise ConnectionRefusedError(errno.ECONNREFUSED, exc.strerror) from None
                raise
        else:
            return None
        if reply.body.get("route") != "ring":
            reply.close_fds()
            return None
        if local is None:
            local = super().getsockname()
        conn = _RingConn.from_fds(reply.fds, reply.body["id"], family, local,
                                  _from_wire(family, reply.body["peer"]), _monitor_of(chan))
        conn.init_tokens("client")
        return conn

    def _bind_for_ring(self, host: str) -> tuple | None:
        """Make sure we hold a local port; return our address.

        None when the kernel must connect: the socket is connected already,
        or *host* is not an address of this host (no socksdirect listener
        can own it).
        """
        local = super().getsockname()
        if local[1] != 0:
            # Bound by the user (theirs to choose), or connected already: an
            # unbound socket cannot be, so only here is getpeername worth a call.
            try:
                super().getpeername()
                return None  # a descriptor handed to us: the kernel's EISCONN
            except OSError:
                pass
            return local if is_local_address(host) else None
        try:
            super().bind((host, 0))
        except OSError as exc:
            if exc.errno == errno.EADDRNOTAVAIL:
                return None
            raise
        return super().getsockname()

    def _buf_opt(self, opt: int) -> int:
        # SO_RCVBUF/SO_SNDBUF set before connect are remembered: the kernel
        # rounds and doubles them, the ring uses the value asked for.
        v = self._bufs.get((SOL_SOCKET, opt))
        return 0 if v is None else max(_MIN_BUF, min(_MAX_BUF, v))

    def _become_ring(self, conn: _RingConn) -> None:
        """Put the connection's eventfd in place of our kernel socket's descriptor."""
        timeout = super().gettimeout()
        fd = super().fileno()
        conn.shadow = _stdsocket.socket(fileno=os.dup(fd))  # keeps the port reserved
        os.dup2(conn.ready_fd, fd, inheritable=os.get_inheritable(fd))
        self._conn = conn
        self._rtimeout = timeout
        _by_fd[fd] = self
        if self._fd_out:
            # The program may keep the number it got before connecting (asyncore
            # does) and never ask again: the eventfd must be exact from now on.
            conn.arm()

    # -- listening ----------------------------------------------------------------------
    def listen(self, backlog: int | None = None) -> None:
        """Listen for connections, from socksdirect clients and kernel clients alike."""
        if self._conn is not None:
            raise OSError(errno.EINVAL, "Invalid argument")
        if backlog is None:
            backlog = min(_stdsocket.SOMAXCONN, 128)
        if self._lst is not None:
            self._lst.ksock.listen(backlog)
            return
        super().listen(backlog)
        if not self._ring_capable() or self._kroute:
            return
        lst = _Listener.start(self, backlog)
        if lst is None:
            return  # no monitor: the kernel's listener alone
        timeout = super().gettimeout()
        fd = super().fileno()
        os.dup2(lst.epoll.fileno(), fd, inheritable=os.get_inheritable(fd))
        self._lst = lst
        self._rtimeout = timeout
        _by_fd[fd] = self

    def accept(self) -> tuple[socket, object]:
        """Wait for a connection; return (new socket, peer address)."""
        lst = self._lst
        if lst is None:
            if self._conn is not None:
                raise OSError(errno.EINVAL, "Invalid argument")
            fd, addr = self._accept()
            sock = self.__class__(self.family, self.type, self.proto, fileno=fd)
            if _stdsocket.getdefaulttimeout() is None and self.gettimeout():
                sock.setblocking(True)
            return sock, addr
        return lst.accept(self, self._rtimeout)

    # -- receiving ------------------------------------------------------------------------
    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        """Receive up to *bufsize* bytes; b"" at EOF."""
        conn = self._conn
        if (conn is not None and (not flags or flags == MSG_WAITALL) and self._rtimeout is None
                and 0 < bufsize <= _RECV_CHUNK and not conn.readiness and not conn.shut_rd
                and (conn.rq is None or conn.rq[_W_RECORDS] == conn.quiet)):
            # The fast path of a blocking ring socket: one call into the ring.
            buf = bytearray(bufsize)
            n = conn.reader.recv_into(buf, waitall=bool(flags))  # RingCredit!Recv
            return bytes(buf) if n == bufsize else bytes(memoryview(buf)[:n])
        if conn is None:
            if self._lst is not None:
                return self._lst.ksock.recv(bufsize, flags)
            if self._connecting is not None and self._connected_meanwhile():
                return self.recv(bufsize, flags)
            return super().recv(bufsize, flags)
        if bufsize < 0:
            raise ValueError("negative buffersize in recv")
        flags = _int_flags(flags)
        if bufsize > _RECV_CHUNK and not flags & MSG_WAITALL:
            # asyncio asks for 256 KiB a call: zero-filling that much costs
            # more than the read.  A stream read may return less, so allocate
            # what waits (or a chunk, to wait for).
            bufsize = min(bufsize, max(conn.reader.available, _RECV_CHUNK))
        buf = bytearray(bufsize)
        n = self._recv_ring(conn, buf, flags)
        return bytes(buf) if n == bufsize else bytes(memoryview(buf)[:n])

    def recv_into(self, buffer, nbytes: int = 0, flags: int = 0) -> int:
        """Receive into *buffer* (up to *nbytes*, default its size); return the count."""
        conn = self._conn
        if (conn is not None and (not flags or flags == MSG_WAITALL) and self._rtimeout is None
                and not conn.readiness and not conn.shut_rd and type(buffer) is bytearray
                and (not nbytes or nbytes == len(buffer))
                and (conn.rq is None or conn.rq[_W_RECORDS] == conn.quiet)):
            # the fast path: RingCredit!Recv
            return conn.reader.recv_into(buffer, waitall=bool(flags))
        if conn is None:
            if self._lst is not None:
                return self._lst.ksock.recv_into(buffer, nbytes, flags)
            if self._connecting is not None and self._connected_meanwhile():
                return self.recv_into(buffer, nbytes, flags)
            return super().recv_into(buffer, nbytes, flags)
        flags = _int_flags(flags)
        view = memoryview(buffer).cast("B")
        if nbytes < 0:
            raise ValueError("negative buffersize in recv_into")
        if nbytes == 0:
            nbytes = len(view)
        elif nbytes > len(view):
            raise ValueError("buffer too small for requested bytes")
        if nbytes < len(view):
            view = view[:nbytes]
        return self._recv_ring(conn, view, flags)

    def recvfrom(self, bufsize: int, flags: int = 0) -> tuple[bytes, object]:
        """Like recv(); the address is None, as for a connected TCP socket."""
        if self._conn is None:
            if self._lst is not None:
                return self._lst.ksock.recvfrom(bufsize, flags)
            if self._connecting is not None and self._connected_meanwhile():
                return self.recvfrom(bufsize, flags)
            return super().recvfrom(bufsize, flags)
        return self.recv(bufsize, flags), None

    def recvfrom_into(self, buffer, nbytes: int = 0, flags: int = 0) -> tuple[int, object]:
        """Like recv_into(); the address is None."""
        if self._conn is None:
            if self._lst is not None:
                return self._lst.ksock.recvfrom_into(buffer, nbytes, flags)
            if self._connecting is not None and self._connected_meanwhile():
                return self.recvfrom_into(buffer, nbytes, flags)
            return super().recvfrom_into(buffer, nbytes, flags)
        return self.recv_into(buffer, nbytes, flags), None

    def recvmsg(self, bufsize: int, ancbufsize: int = 0, flags: int = 0):
        """Receive up to *bufsize* bytes and ancillary data: (data, ancdata, msg_flags, None).

        On an AF_UNIX ring connection *ancdata* holds the descriptors that
        came with the data (SOL_SOCKET, SCM_RIGHTS), as many as fit in
        *ancbufsize* bytes; the others are closed and MSG_CTRUNC is set.
        """
        conn = self._conn
        if conn is None:
            if self._lst is not None:
                return self._lst.ksock.recvmsg(bufsize, ancbufsize, flags)
            if self._connecting is not None and self._connected_meanwhile():
                return self.recvmsg(bufsize, ancbufsize, flags)
            return super().recvmsg(bufsize, ancbufsize, flags)
        if ancbufsize < 0:
            raise ValueError("negative buffer size in recvmsg()")
        if conn.side is None:
            return self.recv(bufsize, flags), [], _int_flags(flags) & _CMSG_CLOEXEC, None
        if bufsize < 0:
            raise ValueError("negative buffer size in recvmsg()")
        flags = _int_flags(flags)
        if not flags & MSG_WAITALL:
            bufsize = min(bufsize, max(conn.reader.available, _RECV_CHUNK))  # as recv() does
        buf = bytearray(bufsize)
        n, fds = self._recv_scm(conn, memoryview(buf), flags)
        ancdata, msg_flags = _scm_deliver(fds, ancbufsize, flags)
        return bytes(memoryview(buf)[:n]), ancdata, msg_flags, None

    def recvmsg_into(self, buffers, ancbufsize: int = 0, flags: int = 0):
        """Scatter into *buffers*; returns (nbytes, ancdata, msg_flags, None) as recvmsg()."""
        conn = self._conn
        if conn is None:
            if self._lst is not None:
                return self._lst.ksock.recvmsg_into(buffers, ancbufsize, flags)
            if self._connecting is not None and self._connected_meanwhile():
                return self.recvmsg_into(buffers, ancbufsize, flags)
            return super().recvmsg_into(buffers, ancbufsize, flags)
        if ancbufsize < 0:
            raise ValueError("negative buffer size in recvmsg_into()")
        views = [memoryview(b).cast("B") for b in buffers]
        if conn.side is None:
            if len(views) == 1:
                return (self.recv_into(views[0], 0, flags), [],
                        _int_flags(flags) & _CMSG_CLOEXEC, None)
            data = self.recv(sum(len(v) for v in views), flags)
        else:
            flags = _int_flags(flags)
            if len(views) == 1:
                n, fds = self._recv_scm(conn, views[0], flags)
                ancdata, msg_flags = _scm_deliver(fds, ancbufsize, flags)
                return n, ancdata, msg_flags, None
            buf = bytearray(sum(len(v) for v in views))
            n, fds = self._recv_scm(conn, memoryview(buf), flags)
            ancdata, msg_flags = _scm_deliver(fds, ancbufsize, flags)
            data = memoryview(buf)[:n]
        off = 0
        for v in views:
            k = min(len(v), len(data) - off)
            v[:k] = data[off:off + k]
            off += k
        if conn.side is None:
            return len(data), [], _int_flags(flags) & _CMSG_CLOEXEC, None
        return len(data), ancdata, msg_flags, None

    def _recv_scm(self, conn: _RingConn, view, flags: int) -> tuple[int, list[int] | None]:
        """Read into *view* as the kernel's AF_UNIX stream does; return (count, descriptors).

        The kernel's rules (unix_stream_read_generic): a read takes bytes up
        to the end of the first message with descriptors that it reaches,
        and that message's descriptors, then stops; bytes before it are
        merged in.  MSG_PEEK leaves them queued and hands out new copies.
        The descriptors (None if none) are the caller's to deliver or close.
        """
        if flags & ~_RECV_FLAGS:
            raise OSError(errno.EOPNOTSUPP, f"recv flags {flags & ~_RECV_FLAGS:#x} are not "
                          "supported on a socksdirect ring connection")
        if not len(view):
            return 0, None
        if type(view) is not memoryview:
            view = memoryview(view).cast("B")   # slices below must not copy
        reader = conn.reader
        peek = bool(flags & MSG_PEEK)
        waitall = bool(flags & MSG_WAITALL) and not peek
        timeout = self._rtimeout
        nowait = timeout == 0.0 or conn.shut_rd or bool(flags & MSG_DONTWAIT and timeout is None)
        deadline = None if timeout is None or nowait else time.monotonic() + timeout
        armed = conn.readiness
        got, fds = 0, None
        try:
            while True:
                if not nowait and not reader.available:
                    # Wait for a byte (or EOF) without taking it: what may be
                    # read is decided below, against a snapshot, with the token.
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        raise TimeoutError("timed out")
                    if not reader.recv_into(conn.probe, left, peek=True):  # RingCredit!Recv
                        break   # EOF
                n, fds = _scm_read(conn, view[got:], peek, 0.0 if nowait else None)
                got += n
                if n == 0:
                    if got or nowait or reader.eof:
                        if not got and nowait and not conn.shut_rd and not reader.eof:
                            raise _eagain()
                        break
                    continue    # another reader took the bytes: wait again
                if fds is not None or not waitall or got == len(view):
                    break
        except TimeoutError:
            if got:
                return got, fds    # MSG_WAITALL: what came before the timeout
            raise TimeoutError("timed out") from None
        except BrokenPipeError:
            raise ConnectionResetError(errno.ECONNRESET, "Connection reset by peer") from None
        finally:
            if armed and not conn.shut_rd and not reader.closed:
                reader.settle()    # RingWakeup: the eventfd stays exact
        return got, fds

    def _recv_ring(self, conn: _RingConn, view, flags: int) -> int:
        """Read into *view* per *flags*, waiting as the timeout says (RingCredit!Recv)."""
        if flags & ~_RECV_FLAGS:
            raise OSError(errno.EOPNOTSUPP, f"recv flags {flags & ~_RECV_FLAGS:#x} are not "
                          "supported on a socksdirect ring connection")
        if not len(view):
            return 0
        if conn.rq is not None and conn.rq[_W_RECORDS] != conn.quiet:
            # Descriptors are on their way: the kernel stops a plain read at the
            # end of their message and closes them (nobody asked for them).
            n, fds = self._recv_scm(conn, view, flags)
            if fds is not None:
                _close_fds(fds)
            return n
        reader = conn.reader
        peek = bool(flags & MSG_PEEK)
        armed = conn.readiness
        timeout = self._rtimeout
        try:
            # MSG_DONTWAIT counts only on a blocking socket: with a timeout,
            # socket.socket waits for readiness first, whatever the flags.
            if timeout == 0.0 or conn.shut_rd or (flags & MSG_DONTWAIT and timeout is None):
                got = reader.read_into(view, peek=peek)  # RingCredit!Recv
                # After SHUT_RD a read never waits: b"" once the ring is empty.
                if got == 0 and not conn.shut_rd and not reader.eof:
                    raise _eagain()
                return got
            # MSG_WAITALL is one ring operation: it keeps the receive token
            # until the buffer is full, so no other reader's bytes land inside.
            return reader.recv_into(view, timeout, peek=peek,
                                    waitall=bool(flags & MSG_WAITALL) and not peek)
        except TimeoutError:
            raise TimeoutError("timed out") from None
        except BrokenPipeError:
            raise ConnectionResetError(errno.ECONNRESET, "Connection reset by peer") from None
        finally:
            if armed and not conn.shut_rd and not reader.closed:
                # RingWakeup: keep the eventfd readable exactly while data or EOF waits.
                reader.settle()

    # -- sending ----------------------------------------------------------------------------
    def send(self, data, flags: int = 0) -> int:
        """Send *data*; return the number of bytes sent (all of it when blocking)."""
        conn = self._conn
        if (conn is not None and not flags and self._rtimeout is None and not conn.shut_wr
                and type(data) is bytes):
            try:  # the fast path of a blocking ring socket: one call into the ring
                conn.writer.send_all(data)  # RingCredit!Write
            except BrokenPipeError:
                return self._peer_gone(conn, len(data))
            return len(data)
        if conn is None:
            if self._lst is not None:
                return self._lst.ksock.send(data, flags)
            if self._connecting is not None and self._connected_meanwhile():
                return self.send(data, flags)
            return super().send(data, flags)
        flags = _int_flags(flags)
        writer = self._writer(conn, flags)
        timeout = self._rtimeout
        try:
            if timeout == 0.0 or (flags & MSG_DONTWAIT and timeout is None):
                n = writer.write(data)  # RingCredit!Write
                if n == 0 and len(memoryview(data)):
                    raise _eagain()
                return n
            if timeout is None:
                writer.send_all(data)
                return memoryview(data).nbytes
            return self._send_timed(writer, data, timeout)
        except BrokenPipeError:
            return self._peer_gone(conn, memoryview(data).nbytes)

    def sendall(self, data, flags: int = 0) -> None:
        """Send all of *data* (the timeout bounds the whole call)."""
        conn = self._conn
        if conn is not None and not flags and self._rtimeout is None and not conn.shut_wr:
            try:  # the fast path of a blocking ring socket: one call into the ring
                conn.writer.send_all(data)  # RingCredit!Write
            except BrokenPipeError:
                self._peer_gone(conn, memoryview(data).nbytes)
            return None
        if conn is None:
            if self._lst is not None:
                return self._lst.ksock.sendall(data, flags)
            if self._connecting is not None and self._connected_meanwhile():
                return self.sendall(data, flags)
            return super().sendall(data, flags)
        flags = _int_flags(flags)
        writer = self._writer(conn, flags)
        timeout = self._rtimeout
        try:
            if timeout == 0.0 or (flags & MSG_DONTWAIT and timeout is None):
                if writer.token is None:
                    return self._write_all_now(writer, data)
                with writer.token.hold(0.0):   # one operation: no other send inside
                    return self._write_all_now(writer, data)
            writer.send_all(data, timeout)
        except TimeoutError:
            raise TimeoutError("timed out") from None
        except BrokenPipeError:
            self._peer_gone(conn, memoryview(data).nbytes)
        return None

    def _peer_gone(self, conn: _RingConn, nbytes: int) -> int:
        """A send of *nbytes* found the peer's reader closed: what the kernel would do.

        TCP accepts the first send after the peer closed -- the peer's
        kernel answers it with a reset -- and fails the ones after it.  Programs
        rely on that: a server writes its reply to a client that has just
        given up, and carries on.  But a peer that closed (or died) with
        bytes of ours unread, or was never accepted (the monitor reset it),
        resets at once, and an AF_UNIX socket always fails at once.
        Sending nothing fails only once the reset came.
        """
        if self.family != AF_UNIX and not conn.reset_seen:
            try:
                reset = conn.writer.peer_reset or conn.writer.free != conn.tx.capacity
            except OSError:
                reset = True
            if not reset:
                if nbytes:
                    conn.reset_seen = True  # the bytes are dropped, as the peer's RST would
                return nbytes
        conn.reset_seen = True
        raise BrokenPipeError(errno.EPIPE, "Broken pipe") from None

    @staticmethod
    def _send_timed(writer, data, timeout: float) -> int:
        """send() with a timeout: what was written when it ran out, or TimeoutError.

        The tail moves for every sender of this end, so the count is taken
        while this call holds the send token: the bytes between are its own.
        """
        deadline = time.monotonic() + timeout
        hold = writer.token.hold(timeout) if writer.token is not None else nullcontext()
        try:
            with hold:
                start = writer.tail
                try:
                    writer.send_all(data, max(0.0, deadline - time.monotonic()))
                except TimeoutError:
                    sent = writer.tail - start
                    if sent:
                        return sent
                    raise
        except TimeoutError:
            raise TimeoutError("timed out") from None
        return memoryview(data).nbytes

    @staticmethod
    def _write_all_now(writer, data) -> None:
        """Non-blocking sendall: write what fits, EAGAIN once the ring is full."""
        view = memoryview(data).cast("B")
        off = 0
        while off < len(view):
            k = writer.write(view[off:])
            if k == 0:
                raise _eagain()
            off += k

    def sendto(self, data, *args) -> int:
        """sendto(data[, flags], address): on a connected stream socket the address is
        ignored, as TCP does."""
        if not 1 <= len(args) <= 2:
            raise TypeError(f"sendto() takes 2 or 3 arguments ({len(args) + 1} given)")
        flags_or_addr, addr = args[0], args[1] if len(args) == 2 else _UNSET
        if self._conn is None:
            if self._connecting is not None and self._connected_meanwhile():
                return self.sendto(data, *args)
            target = self._lst.ksock if self._lst is not None else super()
            if addr is _UNSET:
                return target.sendto(data, flags_or_addr)
            return target.sendto(data, flags_or_addr, addr)
        flags = 0 if addr is _UNSET else flags_or_addr
        return self.send(data, flags)

    def sendmsg(self, buffers, ancdata=(), flags: int = 0, address=None) -> int:
        """Send the concatenation of *buffers*, with descriptors (SCM_RIGHTS) on AF_UNIX.

        The descriptors go with the first byte of the data, as the kernel's
        AF_UNIX stream sockets do; without data nothing is sent.  Other
        ancillary data of level SOL_SOCKET is refused (EOPNOTSUPP); on an
        AF_INET/AF_INET6 connection SCM_RIGHTS is ignored, as TCP does.
        """
        conn = self._conn
        if conn is None:
            if self._connecting is not None and self._connected_meanwhile():
                return self.sendmsg(buffers, ancdata, flags, address)
            target = self._lst.ksock if self._lst is not None else super()
            return target.sendmsg(buffers, ancdata, flags, address)
        if address is not None:
            _check_sendmsg_address(conn, address)
        items, nfds = _rights_items(conn, ancdata)
        views = [memoryview(b).cast("B") for b in buffers]
        data = views[0] if len(views) == 1 else b"".join(views)
        if not nfds:
            return self.send(data, flags)
        return self._send_rights(conn, memoryview(data).cast("B"), items, _int_flags(flags))

    def _send_rights(self, conn: _RingConn, view, items: list, flags: int) -> int:
        """sendmsg with descriptors: record on the side channel, then the bytes (see _RingConn).

        The record covers the bytes written at once (all of them when they
        fit); the rest follow as plain bytes, as the kernel attaches
        descriptors to the first of the buffers it splits a message into.
        """
        writer = self._writer(conn, flags)
        if not len(view):
            _check_fds(items)   # the kernel checks them, then sends nothing
            return 0
        timeout = self._rtimeout
        nowait = timeout == 0.0 or bool(flags & MSG_DONTWAIT and timeout is None)
        deadline = None if timeout is None or nowait else time.monotonic() + timeout
        tok = writer.token
        try:
            with (tok.hold(0.0 if nowait else timeout) if tok is not None else nullcontext()):
                k = _space_for(conn, len(view), nowait, deadline)
                _side_send(conn, _RECORD.pack(writer.tail, k), items, nowait, deadline)
                conn.tq[_W_RECORDS] += 1    # before the bytes: see _RingConn
                writer.write(view[:k])      # fits: only we write, and space only grows
                if k == len(view) or nowait:
                    return k
                start = writer.tail
                try:
                    left = None if deadline is None else max(0.0, deadline - time.monotonic())
                    writer.send_all(view[k:], left)  # RingCredit!Write
                except TimeoutError:
                    return k + writer.tail - start
                return len(view)
        except TimeoutError:
            raise TimeoutError("timed out") from None
        except BrokenPipeError:
            raise BrokenPipeError(errno.EPIPE, "Broken pipe") from None

    def sendmsg_afalg(self, msg=(), *, op, iv=None, assoclen=None, flags: int = 0) -> int:
        """AF_ALG (kernel crypto) sockets only: a ring connection refuses it (EOPNOTSUPP)."""
        if self._conn is None:
            target = self._lst.ksock if self._lst is not None else super()
            return target.sendmsg_afalg(msg, op=op, iv=iv, assoclen=assoclen, flags=flags)
        raise OSError(errno.EOPNOTSUPP, "sendmsg_afalg() is for AF_ALG sockets, not a "
                      "socksdirect ring connection")

    def sendfile(self, file, offset: int = 0, count: int | None = None) -> int:
        """Send a file's contents (read and copied: no sendfile(2) into a ring)."""
        if self._conn is None:
            return super().sendfile(file, offset, count)
        return self._sendfile_use_send(file, offset, count)

    def _sendfile_use_sendfile(self, file, offset: int = 0, count: int | None = None) -> int:
        # socket.sendfile()'s zero-copy half, which programs and tests call by
        # name: sendfile(2) cannot write into a ring (the descriptor is an
        # eventfd), so a ring socket copies.
        if self._conn is None:
            return super()._sendfile_use_sendfile(file, offset, count)
        # The kernel path's own refusals first: socket.sendfile() falls back
        # on them, and callers test them.
        try:
            size = os.fstat(file.fileno()).st_size
        except (AttributeError, io.UnsupportedOperation, OSError) as err:
            raise _stdsocket._GiveupOnSendfile(err) from None
        if not size:
            return 0    # an empty file: nothing to send, as the kernel path says
        return self._sendfile_use_send(file, offset, count)

    def _writer(self, conn: _RingConn, flags: int):
        if flags & ~_SEND_FLAGS:  # (flags is a plain int: see _int_flags)
            raise OSError(errno.EOPNOTSUPP, f"send flags {flags & ~_SEND_FLAGS:#x} are not "
                          "supported on a socksdirect ring connection")
        if conn.shut_wr:
            raise BrokenPipeError(errno.EPIPE, "Broken pipe") from None
        return conn.writer

    def makefile(self, mode="r", buffering=None, *, encoding=None, errors=None, newline=None):
        """Return a file object reading and/or writing this socket (see socket.makefile)."""
        return super().makefile(mode, buffering, encoding=encoding, errors=errors,
                                newline=newline)

    def shutdown(self, how: int) -> None:
        """Shut down reading (SHUT_RD), writing (SHUT_WR: the peer sees EOF) or both.

        After SHUT_RD, recv returns what is still in the ring and then b""
        without waiting, as a TCP socket does.
        """
        conn = self._conn
        if conn is None:
            if self._lst is not None:
                self._lst.shutdown(how)
                return
            if self._connecting is not None and self._connected_meanwhile():
                return self.shutdown(how)
            super().shutdown(how)
            return
        how = _c_int(how)
        if how not in (SHUT_RD, SHUT_WR, SHUT_RDWR):
            raise OSError(errno.EINVAL, "Invalid argument")
        if how in (SHUT_WR, SHUT_RDWR) and not conn.shut_wr:
            conn.shut_wr = True
            conn.writer.close()
        if how in (SHUT_RD, SHUT_RDWR) and not conn.shut_rd:
            conn.shut_rd = True
            if conn.readiness:
                os.eventfd_write(conn.ready_fd, 1)  # recv never blocks now: readable

    # -- names and options ------------------------------------------------------------------
    def getsockname(self):
        """Return the local address."""
        if self._conn is not None:
            return self._conn.local
        if self._lst is not None:
            return self._lst.ksock.getsockname()
        return super().getsockname()

    def getpeername(self):
        """Return the remote address."""
        if self._conn is not None:
            return self._conn.peer
        if self._lst is not None:
            return self._lst.ksock.getpeername()
        if self._connecting is not None and self._connected_meanwhile():
            return self._conn.peer
        return super().getpeername()

    def setsockopt(self, level: int, optname: int, value, optlen: int | None = None) -> None:
        """Set an option; SO_RCVBUF / SO_SNDBUF set before connect or listen size the rings."""
        args = (value,) if optlen is None else (value, optlen)
        if self._lst is not None:
            return self._lst.ksock.setsockopt(level, optname, *args)
        conn = self._conn
        if conn is None:
            super().setsockopt(level, optname, *args)
            if (level, optname) in _BUF_OPTS and isinstance(value, int):
                self._bufs[(level, optname)] = value
            return None
        # The kernel socket validates and keeps every option, as it would for
        # a connection; a ring's size is fixed once it exists.
        return conn.shadow_socket().setsockopt(level, optname, *args)

    def getsockopt(self, level: int, optname: int, buflen: int | None = None):
        """Get an option; a ring connection reports its rings' sizes as SO_RCVBUF/SO_SNDBUF."""
        args = () if buflen is None else (buflen,)
        if self._lst is not None:
            return self._lst.ksock.getsockopt(level, optname, *args)
        conn = self._conn
        if conn is None:
            return super().getsockopt(level, optname, *args)
        value = conn.shadow_socket().getsockopt(level, optname, *args)
        if (level, optname) in _BUF_OPTS:
            size = (conn.rx if optname == SO_RCVBUF else conn.tx).capacity
            return size if buflen is None else struct.pack("i", size)[:len(value)]
        return value

    def bind(self, address) -> None:
        """Bind to *address* (always the kernel's: ports belong to the kernel)."""
        if self._conn is not None or self._lst is not None:
            raise OSError(errno.EINVAL, "Invalid argument")
        return super().bind(address)


class _Listener:
    """A listening socket's two sources of connections, in one epoll set.

    The kernel listening socket (``ksock``) brings kernel clients; the
    listener's own channel to the monitor brings ring connections (NEWCONN).
    When the monitor goes away the channel reads EOF; the listener then
    registers again with the monitor that runs now -- at once, on later
    accept() calls, and every RETRY seconds while an accept() waits -- so
    that ring connections resume once a monitor is back.
    """

    #: Seconds between attempts to register again while no monitor answers.
    RETRY = 1.0

    def __init__(self, ksock: _stdsocket.socket, family: int, backlog: int,
                 bufs: dict) -> None:
        self.ksock = ksock
        self.family = family
        self.backlog = backlog
        self.rcvbuf = bufs.get((SOL_SOCKET, SO_RCVBUF), 0)
        self.sndbuf = bufs.get((SOL_SOCKET, SO_SNDBUF), 0)
        self.chan: _client.ControlChannel | None = None
        self.monitor = 0            # pid of the monitor we are registered with
        self.refs = 1
        self.stopped = False        # denied or shut down: never register again
        self.next_try = 0.0         # monotonic time of the next attempt to register
        self.epoll = select.epoll()
        self.epoll.register(ksock.fileno(), select.EPOLLIN)
        ksock.setblocking(False)
        _listeners.add(self)

    @classmethod
    def start(cls, sock: socket, backlog: int) -> _Listener | None:
        """Register the (already listening) kernel socket of *sock*; None without a monitor.

        Raises PermissionError if the monitor's rules deny it; the kernel
        socket then stops listening.
        """
        fd = _stdsocket.socket.fileno(sock)
        # The copy shares the open file, and with it O_NONBLOCK, which the
        # listener sets: a socket that stays the kernel's gets its own back.
        blocking = os.get_blocking(fd)
        ksock = _stdsocket.socket(fileno=os.dup(fd))
        bufs = {k: sock._buf_opt(k[1]) for k in _BUF_OPTS if k in sock._bufs}
        lst = cls(ksock, sock.family, max(0, min(backlog, 65535)), bufs)
        try:
            if lst.register():
                return lst
        except PermissionError:
            lst.close()
            os.set_blocking(fd, blocking)
            try:
                _stdsocket.socket.shutdown(sock, SHUT_RD)  # a TCP listener stops listening
            except OSError:
                pass
            raise
        lst.close()
        os.set_blocking(fd, blocking)
        return None

    def register(self) -> bool:
        """Connect.tla!Listen: register with the monitor on a channel of our own.

        Returns False when no monitor answers (try again later); raises
        PermissionError when its rules deny us.
        """
        chan = _client.open_listener_channel()
        if chan is None:
            return False
        body = {"family": _af_name(self.family), "backlog": self.backlog,
                "rcvbuf": self.rcvbuf, "sndbuf": self.sndbuf}
        try:
            chan.request(P.LISTEN, body, [self.ksock.fileno()])
        except OSError as exc:
            chan.close()
            if exc.errno == errno.EACCES:
                self.stopped = True
                raise PermissionError(errno.EACCES, exc.strerror) from None
            return False
        chan.sock.setblocking(False)
        self.chan = chan
        self.monitor = _peer_pid(chan.sock)
        self.epoll.register(chan.sock.fileno(), select.EPOLLIN)
        return True

    def _forked_child(self) -> None:
        """In a fork child: an epoll set of our own, in place of the one shared with the parent.

        An epoll set is one kernel object for every process that inherited
        it: the child's register/unregister (_lost, a new channel) would
        change the parent's.  The new set watches the same kernel socket and
        channel, and takes the old one's place under every descriptor of a
        socket object that names this listener, so fileno() stays the same.
        """
        if self.epoll.closed:
            return
        old, self.epoll = self.epoll, select.epoll()
        self.epoll.register(self.ksock.fileno(), select.EPOLLIN)
        if self.chan is not None:
            # Shared with the parent, like the kernel socket; its lock is this process's.
            self.chan._lock = threading.Lock()
            self.epoll.register(self.chan.sock.fileno(), select.EPOLLIN)
        fds = [fd for fd, sock in list(_by_fd.items()) if sock._lst is self]
        fds += [fd for fd, held in _detached.items() if held is self]
        for fd in fds:
            os.dup2(self.epoll.fileno(), fd, inheritable=os.get_inheritable(fd))
        old.close()

    def _lost(self) -> None:
        """The monitor closed our channel (it stopped): forget it and register again."""
        chan, self.chan = self.chan, None
        if chan is not None:
            try:
                self.epoll.unregister(chan.sock.fileno())
            except (OSError, ValueError):
                pass
            chan.close()
        self.next_try = 0.0
        self._retry()

    def _retry(self) -> None:
        """Register again unless it was tried less than RETRY seconds ago."""
        if self.chan is not None or self.stopped:
            return
        now = time.monotonic()
        if now < self.next_try:
            return
        self.next_try = now + self.RETRY
        # The process channel talked to the old monitor too: replace it, so
        # that CLOSE of connections accepted from now on reaches the new one
        # (unless another call replaced it already).
        if _client.channel(fresh=_channel_dead(_client.current())) is None:
            return
        try:
            self.register()
        except PermissionError:
            pass  # the new monitor's rules deny us: kernel clients only

    def accept(self, owner: socket, timeout: float | None) -> tuple[socket, object]:
        """Take the next connection from the monitor or the kernel; wait per *timeout*."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self.chan is None:
                self._retry()
            got = self._take_ring(owner) or self._take_kernel(owner)
            if got is not None:
                return got
            if timeout == 0.0:
                raise _eagain()
            wait = None if deadline is None else deadline - time.monotonic()
            if self.chan is None and not self.stopped:
                wait = self.RETRY if wait is None else min(wait, self.RETRY)
            if wait is not None and wait <= 0:
                raise TimeoutError("timed out")
            self.epoll.poll(-1 if wait is None else wait)

    def _take_ring(self, owner: socket) -> tuple[socket, object] | None:
        """Connect.tla!Accept: a connection the monitor pushed, if one waits."""
        chan = self.chan
        if chan is None:
            return None
        try:
            msg = P.recv_msg(chan.sock)
        except (BlockingIOError, InterruptedError):
            return None
        except P.ProtocolError:
            return None
        except OSError:
            msg = None
        if msg is None:
            self._lost()
            return None
        if msg.op != P.NEWCONN:
            msg.close_fds()
            return None
        body = msg.body
        conn = _RingConn.from_fds(msg.fds, body["id"], self.family,
                                  _from_wire(self.family, body["local"]),
                                  _from_wire(self.family, body["peer"]), self.monitor)
        conn.init_tokens("server")
        self._accepted(conn)
        sock = owner._from_conn(conn, owner.type, owner.proto)
        return sock, conn.peer

    def _accepted(self, conn: _RingConn) -> None:
        """Connect.tla!Accept: ACCEPTED on this process's own channel, with the proof.

        Not on the listener's channel: after fork() that one is shared (a
        pre-fork pool) and names its maker, while the acceptor is to hold
        the end.  The proof is the memfd of the ring this end reads.
        """
        chan = _client.channel()
        if chan is not None and _monitor_of(chan) != self.monitor:
            chan = _client.channel(fresh=_channel_dead(chan))
        if chan is None or _monitor_of(chan) != self.monitor:
            return   # the monitor is gone: it resets the connection, or has already
        chan.notify(P.ACCEPTED, {"id": conn.cid}, [conn.rx.fds().memfd])

    def _take_kernel(self, owner: socket) -> tuple[socket, object] | None:
        try:
            fd, addr = self.ksock._accept()
        except (BlockingIOError, InterruptedError):
            return None
        return owner.__class__(owner.family, owner.type, owner.proto, fileno=fd), addr

    def shutdown(self, how: int) -> None:
        """The kernel's shutdown; if the kernel socket stops listening, so do we."""
        self.ksock.shutdown(how)
        if not self.ksock.getsockopt(SOL_SOCKET, _stdsocket.SO_ACCEPTCONN):
            self.stopped = True
            chan, self.chan = self.chan, None
            if chan is not None:
                chan.close()  # Connect.tla!Unlisten: queued ring connections are reset

    def release(self) -> None:
        """Drop one reference (dup()); the last one closes the listener."""
        self.refs -= 1
        if self.refs <= 0:
            self.close()

    def close(self) -> None:
        """Unregister (the monitor resets queued connections) and close the kernel socket."""
        self.stopped = True
        if self.chan is not None:
            self.chan.close()
            self.chan = None
        self.ksock.close()
        self.epoll.close()


def transport_of(sock) -> str:
    """Return how *sock* carries data: "ring", "listener" or "kernel"."""
    return getattr(sock, "transport", "kernel")


def fromfd(fd: int, family: int, type: int, proto: int = 0) -> socket:
    """Return a socket on a duplicate of *fd*, like socket.fromfd.

    The descriptor of an open ring or listener socket of this process gives
    another socket object for the same connection, as dup() does.
    """
    sock = socket_for_fd(fd)
    if sock is not None:
        return sock.dup()
    return socket(family, type, proto, fileno=_stdsocket.dup(fd))


def socketpair(family: int | None = None, type: int = SOCK_STREAM, proto: int = 0):
    """Return two connected sockets; AF_UNIX stream pairs run over rings, in this process.

    No monitor is involved: both ends are ours.  After fork() the processes
    share the rings, like a kernel socketpair, and an end closes for its
    peer when the last process holding it closes it.
    """
    if family is None:
        family = AF_UNIX
    if family != AF_UNIX or type != SOCK_STREAM or proto != 0:
        a, b = _stdsocket.socketpair(family, type, proto)
        return (socket(a.family, a.type, a.proto, fileno=a.detach()),
                socket(b.family, b.type, b.proto, fileno=b.detach()))
    r1 = Ring.create(DEFAULT_BUF)
    try:
        r2 = Ring.create(DEFAULT_BUF)
    except BaseException:
        r1.close()
        raise
    try:
        # The side channel for descriptors (see _RingConn), as the monitor makes it.
        s1, s2 = _stdsocket.socketpair(AF_UNIX, _stdsocket.SOCK_SEQPACKET)
    except BaseException:
        r1.close()
        r2.close()
        raise
    c1 = _RingConn(r1, r2, None, AF_UNIX, "", "", side=s1)
    # The second end maps the same rings again, so each end closes its own.
    c2 = _RingConn(Ring.attach(r2.fds()), Ring.attach(r1.fds()), None, AF_UNIX, "", "",
                   side=s2)
    c1.init_tokens()
    c2.init_tokens()
    return socket._from_conn(c1), socket._from_conn(c2)


def create_connection(address, timeout=_stdsocket._GLOBAL_DEFAULT_TIMEOUT,
                      source_address=None, *, all_errors: bool = False) -> socket:
    """Connect to *address* (host, port) like socket.create_connection; return the socket.

    Each address getaddrinfo() gives is tried in turn; the first error is
    raised, or all of them as an ExceptionGroup with *all_errors*.
    """
    host, port = address
    errors: list[Exception] = []
    for family, type_, proto, _, sa in _stdsocket.getaddrinfo(host, port, 0, SOCK_STREAM):
        sock = None
        try:
            sock = socket(family, type_, proto)
            if timeout is not _stdsocket._GLOBAL_DEFAULT_TIMEOUT:
                sock.settimeout(timeout)
            if source_address:
                sock.bind(source_address)
            sock.connect(sa)
            return sock
        except OSError as exc:
            errors.append(exc)
            if sock is not None:
                sock.close()
    if not errors:
        raise OSError("getaddrinfo returns an empty list")
    try:
        if all_errors:
            raise ExceptionGroup("create_connection failed", errors)
        raise errors[-1]  # the last address's error, as socket.create_connection does
    finally:
        errors = []


def create_server(address, *, family=AF_INET, backlog=None, reuse_port=False,
                  dualstack_ipv6=False) -> socket:
    """Bind and listen on *address* like socket.create_server; return the listener."""
    if reuse_port and not hasattr(_stdsocket, "SO_REUSEPORT"):
        raise ValueError("SO_REUSEPORT not supported on this platform")
    if dualstack_ipv6:
        if not _stdsocket.has_dualstack_ipv6():
            raise ValueError("dualstack_ipv6 not supported on this platform")
        if family != AF_INET6:
            raise ValueError("dualstack_ipv6 requires AF_INET6 family")
    sock = socket(family, SOCK_STREAM)
    try:
        if family != AF_UNIX:
            # A restarted server must be able to bind while old connections linger.
            sock.setsockopt(SOL_SOCKET, _stdsocket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(SOL_SOCKET, _stdsocket.SO_REUSEPORT, 1)
        if family == AF_INET6:
            sock.setsockopt(_stdsocket.IPPROTO_IPV6, _stdsocket.IPV6_V6ONLY,
                            0 if dualstack_ipv6 else 1)
        try:
            sock.bind(address)
        except OSError as err:
            raise OSError(err.errno, f"{err.strerror} (while attempting to bind on address "
                          f"{address!r})") from None
        sock.listen(backlog)
        return sock
    except BaseException:
        sock.close()
        raise
