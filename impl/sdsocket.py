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
"""

from __future__ import annotations

import errno
import io
import os
import select
import socket as _stdsocket
import threading
import weakref
from socket import (
    AF_INET,
    AF_INET6,
    AF_UNIX,
    MSG_DONTWAIT,
    MSG_PEEK,
    MSG_WAITALL,
    SHUT_RD,
    SHUT_RDWR,
    SHUT_WR,
    SOCK_STREAM,
    SOL_SOCKET,
)

from impl.monitor import client as _client
from impl.monitor import protocol as P
from impl.ring import Ring, RingFds

__all__ = ["socket", "socketpair", "create_connection", "create_server", "transport_of",
           "socket_for_fd"]

_RING_FAMILIES = {AF_INET: "inet", AF_INET6: "inet6", AF_UNIX: "unix"}
_SOCK_TYPE_MASK = ~(_stdsocket.SOCK_NONBLOCK | _stdsocket.SOCK_CLOEXEC)
_NOSIGNAL = getattr(_stdsocket, "MSG_NOSIGNAL", 0)
_CMSG_CLOEXEC = getattr(_stdsocket, "MSG_CMSG_CLOEXEC", 0)
_RECV_FLAGS = MSG_PEEK | MSG_DONTWAIT | MSG_WAITALL | _NOSIGNAL | _CMSG_CLOEXEC
_SEND_FLAGS = MSG_DONTWAIT | _NOSIGNAL | getattr(_stdsocket, "MSG_MORE", 0)
#: Ring size used for SO_RCVBUF/SO_SNDBUF when the socket did not set one.
DEFAULT_BUF = 256 * 1024
_MIN_BUF, _MAX_BUF = 4096, 64 * 1024 * 1024
_BOOL_OPTS = {
    (SOL_SOCKET, _stdsocket.SO_KEEPALIVE), (SOL_SOCKET, _stdsocket.SO_REUSEADDR),
    (SOL_SOCKET, getattr(_stdsocket, "SO_REUSEPORT", -1)),
    (_stdsocket.IPPROTO_TCP, _stdsocket.TCP_NODELAY),
}
_UNSET = object()
_detached: dict[int, _RingConn] = {}   # fd -> connection, for socket(fileno=fd) after detach()
# fd -> the open ring or listener socket on it, for selectors given bare descriptors
# (asyncio registers sock.fileno(), not the socket).
_by_fd: weakref.WeakValueDictionary[int, socket] = weakref.WeakValueDictionary()


def socket_for_fd(fd: int) -> socket | None:
    """The open ring or listener :class:`socket` whose descriptor is *fd*, if any."""
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
    if t < 0.0:
        raise ValueError("Timeout value out of range")
    if t != t:
        raise ValueError("Invalid value NaN (not a number)")
    return t


class _RingConn:
    """One ring connection, shared by every socket object that refers to it (dup()).

    ``tx`` is the ring this end writes, ``rx`` the one it reads; ``cid`` the
    monitor's connection id (None for socketpair(), which has no monitor).
    """

    def __init__(self, tx: Ring, rx: Ring, cid: int | None, family: int,
                 local, peer) -> None:
        self.tx, self.rx = tx, rx
        self.writer, self.reader = tx.writer(), rx.reader()
        self.cid = cid
        self.family = family
        self.local, self.peer = local, peer
        self.refs = 1
        self.readiness = False      # fileno() was handed out: keep the eventfd exact
        self.shut_rd = False
        self.shut_wr = False
        self.opts: dict[tuple[int, int], int] = {}
        self.ksock: _stdsocket.socket | None = None   # the client's kernel socket: its port
        self.lock = threading.Lock()

    @classmethod
    def from_fds(cls, fds: list[int], cid: int | None, family: int, local, peer) -> _RingConn:
        """Map the six descriptors of protocol.RING_FDS (they are closed here)."""
        try:
            tx = Ring.attach(RingFds(*fds[0:3]))
            try:
                rx = Ring.attach(RingFds(*fds[3:6]))
            except BaseException:
                tx.close()
                raise
        finally:
            for fd in fds:
                os.close(fd)
        return cls(tx, rx, cid, family, local, peer)

    @property
    def ready_fd(self) -> int:
        """The eventfd that is readable when this end has something to read."""
        return self.rx.fds().data_efd

    def arm(self) -> None:
        """Switch to keeping the eventfd exact (RingReader.settle after reads)."""
        if not self.readiness:
            self.readiness = True
            self.reader.settle()

    def release(self) -> None:
        """Drop one reference; the last one closes both directions and tells the monitor."""
        self.refs -= 1
        if self.refs > 0:
            return
        # Connect.tla!Close: the peer sees EOF on what we wrote and EPIPE on writes.
        self.writer.close()
        self.reader.close()
        self.tx.close()
        self.rx.close()
        if self.ksock is not None:
            self.ksock.close()
        if self.cid is not None:
            chan = _client.current()
            if chan is not None:
                chan.notify(P.CLOSE, {"id": self.cid})


def _af_name(family: int) -> str:
    return _RING_FAMILIES[family]


def _to_wire(family: int, address) -> list:
    """Normalise a connect address to the monitor's [host, port] or [path] form."""
    if family == AF_UNIX:
        if isinstance(address, (bytes, bytearray)):
            path = bytes(address).decode("utf-8", "surrogateescape")
        elif isinstance(address, str):
            path = address
        else:
            path = os.fspath(address)
        return [path]
    if not isinstance(address, tuple) or len(address) < 2:
        raise TypeError(f"{'AF_INET' if family == AF_INET else 'AF_INET6'} address must be "
                        f"a tuple (host, port), not {type(address).__name__}")
    host, port = address[0], address[1]
    if not isinstance(port, int) or isinstance(port, bool):
        raise TypeError(f"'{type(port).__name__}' object cannot be interpreted as an integer")
    if not 0 <= port <= 65535:
        raise OverflowError("connect(): port must be 0-65535.")
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


class socket(_stdsocket.socket):
    """A socket.socket that connects over shared memory where it can.

    Same constructor and methods as :class:`socket.socket`; see the module
    docstring for what differs.
    """

    __slots__ = ("_conn", "_lst", "_rtimeout", "_bufs")

    def __init__(self, family=-1, type=-1, proto=-1, fileno=None) -> None:
        """Create a socket like socket.socket(family, type, proto, fileno)."""
        conn = _detached.pop(fileno, None) if fileno is not None else None
        if conn is not None:
            self._init_ring(conn, fileno)
            return
        super().__init__(family, type, proto, fileno)
        self._conn: _RingConn | None = None
        self._lst: _Listener | None = None
        self._rtimeout = _UNSET
        self._bufs: dict[tuple[int, int], int] = {}

    def _init_ring(self, conn: _RingConn, fd: int) -> None:
        """Become a ring socket on descriptor *fd* (which must name conn's eventfd)."""
        # socket.socket refuses a descriptor that is not a socket, so start
        # from a throwaway kernel socket and put the eventfd in its place.
        _stdsocket.socket.__init__(self, conn.family, SOCK_STREAM, 0)
        os.dup2(fd, super().fileno(), inheritable=False)
        if fd != super().fileno():
            os.close(fd)
        self._conn = conn
        self._lst = None
        self._rtimeout = _stdsocket.getdefaulttimeout()
        self._bufs = {}
        _by_fd[_stdsocket.socket.fileno(self)] = self

    @classmethod
    def _from_conn(cls, conn: _RingConn) -> socket:
        sock = cls.__new__(cls)
        sock._init_ring(conn, os.dup(conn.ready_fd))
        return sock

    # -- what kind of socket is this -------------------------------------------
    @property
    def transport(self) -> str:
        """"ring", "listener" or "kernel" (see the module docstring)."""
        if self._conn is not None:
            return "ring"
        return "listener" if self._lst is not None else "kernel"

    def _ring(self) -> _RingConn:
        conn = self._conn
        if conn is None or self._closed:
            raise OSError(errno.EBADF, "Bad file descriptor")
        return conn

    def __repr__(self) -> str:
        if self._conn is None and self._lst is None:
            return super().__repr__().replace("<socket.socket", "<impl.socket", 1)
        s = (f"<impl.socket fd={_stdsocket.socket.fileno(self)}, transport={self.transport}, "
             f"family={self.family}, type={self.type}, proto={self.proto}")
        if not self._closed:
            try:
                s += f", laddr={self.getsockname()}"
                if self._conn is not None:
                    s += f", raddr={self.getpeername()}"
            except OSError:
                pass
        return s + ">"

    def __getstate__(self):
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
        if conn is not None and not self._closed:
            conn.arm()
        return super().fileno()

    def dup(self) -> socket:
        """Return a new socket object for the same connection (closed independently)."""
        conn = self._conn
        if conn is None:
            if self._lst is not None:
                raise OSError(errno.EOPNOTSUPP, "dup() of a socksdirect listener is not "
                              "supported yet")
            fd = _stdsocket.dup(super().fileno())
            return self.__class__(self.family, self.type, self.proto, fileno=fd)
        self._ring()
        conn.refs += 1
        return self._from_conn(conn)

    def detach(self) -> int:
        """Close the socket object without closing the descriptor; return it.

        A ring connection stays open: ``impl.socket(fileno=fd)`` takes it up again.
        """
        conn = self._conn
        fd = super().detach()
        if conn is not None and fd >= 0:
            self._conn = None
            _detached[fd] = conn
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
                lst.close()
        finally:
            super()._real_close()

    def __del__(self) -> None:
        if getattr(self, "_conn", None) is not None or getattr(self, "_lst", None) is not None:
            # Like a kernel socket collected unclosed: close, so the peer is told.
            import warnings
            warnings.warn(f"unclosed {self!r}", ResourceWarning, source=self, stacklevel=2)
            self.close()

    # -- timeouts ---------------------------------------------------------------------
    def settimeout(self, value) -> None:
        """Set a timeout on blocking operations (None: block; 0.0: non-blocking)."""
        if self._conn is None and self._lst is None:
            super().settimeout(value)
        else:
            # Not the kernel's: a ring socket's descriptor is an eventfd that
            # the ring's waits rely on staying non-blocking.
            self._rtimeout = _timeout_value(value)

    def gettimeout(self) -> float | None:
        """Return the timeout in seconds, or None."""
        if self._conn is None and self._lst is None:
            return super().gettimeout()
        return self._rtimeout

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
        if self._conn is not None or self._lst is not None:
            raise OSError(errno.EISCONN, "Transport endpoint is already connected")
        if not self._ring_capable():
            return super().connect(address)
        conn = self._ask_monitor(address)
        if conn is None:
            return super().connect(address)
        self._become_ring(conn)
        return None

    def connect_ex(self, address) -> int:
        """Like connect(), but return an errno (0 on success) instead of raising."""
        try:
            self.connect(address)
        except OSError as exc:
            if exc.errno is None:
                raise
            return exc.errno
        return 0

    def _ask_monitor(self, address) -> _RingConn | None:
        """Connect.tla!Connect: ask for a ring; None means "use the kernel"."""
        family = self.family
        dest = _to_wire(family, address)
        if family != AF_UNIX and not self._bind_for_ring(dest[0]):
            return None  # not an address of this host: no socksdirect listener can own it
        body = {"family": _af_name(family), "address": dest,
                "rcvbuf": self._buf_opt(_stdsocket.SO_RCVBUF),
                "sndbuf": self._buf_opt(_stdsocket.SO_SNDBUF)}
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
        local = super().getsockname()
        return _RingConn.from_fds(reply.fds, reply.body["id"], family, local,
                                  _from_wire(family, reply.body["peer"]))

    def _bind_for_ring(self, host: str) -> bool:
        """Make sure we hold a local port; False if *host* is not an address of this host."""
        sockname = super().getsockname()
        if sockname[1] != 0:
            return True  # bound by the user: theirs to choose
        try:
            super().bind((host, 0))
        except OSError as exc:
            if exc.errno == errno.EADDRNOTAVAIL:
                return False
            raise
        return True

    def _buf_opt(self, opt: int) -> int:
        v = self._opts_kernel().get((SOL_SOCKET, opt))
        return 0 if v is None else max(_MIN_BUF, min(_MAX_BUF, v))

    def _opts_kernel(self) -> dict:
        # SO_RCVBUF/SO_SNDBUF set before connect are remembered here: the
        # kernel rounds and doubles them, the ring uses the value asked for.
        return self._bufs

    def _become_ring(self, conn: _RingConn) -> None:
        """Put the connection's eventfd in place of our kernel socket's descriptor."""
        timeout = super().gettimeout()
        fd = super().fileno()
        conn.ksock = _stdsocket.socket(fileno=os.dup(fd))  # keeps the port reserved
        os.dup2(conn.ready_fd, fd, inheritable=False)
        self._conn = conn
        self._rtimeout = timeout
        _by_fd[fd] = self

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
        if not self._ring_capable():
            return super().listen(backlog)
        lst = _Listener.register(self, backlog)
        if lst is None:
            return super().listen(backlog)
        timeout = super().gettimeout()
        fd = super().fileno()
        os.dup2(lst.epoll.fileno(), fd, inheritable=False)
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

    # -- data -----------------------------------------------------------------------------
    def _nonblocking(self, flags: int) -> bool:
        return bool(flags & MSG_DONTWAIT) or self._rtimeout == 0.0

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        """Receive up to *bufsize* bytes; b"" at EOF."""
        if self._conn is None:
            return super().recv(bufsize, flags)
        if bufsize < 0:
            raise ValueError("negative buffersize in recv")
        buf = bytearray(bufsize)
        n = self._recv_ring(buf, bufsize, flags)
        return bytes(buf) if n == bufsize else bytes(memoryview(buf)[:n])

    def recv_into(self, buffer, nbytes: int = 0, flags: int = 0) -> int:
        """Receive into *buffer* (up to *nbytes*, default its size); return the count."""
        if self._conn is None:
            return super().recv_into(buffer, nbytes, flags)
        view = memoryview(buffer).cast("B")
        if nbytes < 0:
            raise ValueError("negative buffersize in recv_into")
        if nbytes == 0:
            nbytes = len(view)
        elif nbytes > len(view):
            raise ValueError("buffer too small for requested bytes")
        return self._recv_ring(view, nbytes, flags)

    def recvfrom(self, bufsize: int, flags: int = 0) -> tuple[bytes, object]:
        """Like recv(); the address is None, as for a connected TCP socket."""
        if self._conn is None:
            return super().recvfrom(bufsize, flags)
        return self.recv(bufsize, flags), None

    def recvfrom_into(self, buffer, nbytes: int = 0, flags: int = 0) -> tuple[int, object]:
        """Like recv_into(); the address is None."""
        if self._conn is None:
            return super().recvfrom_into(buffer, nbytes, flags)
        return self.recv_into(buffer, nbytes, flags), None

    def recvmsg(self, bufsize: int, ancbufsize: int = 0, flags: int = 0):
        """Like recv(); returns (data, [], msg_flags, None): rings carry no ancillary data."""
        if self._conn is None:
            return super().recvmsg(bufsize, ancbufsize, flags)
        return self.recv(bufsize, flags), [], 0, None

    def recvmsg_into(self, buffers, ancbufsize: int = 0, flags: int = 0):
        """Scatter into *buffers*; returns (nbytes, [], msg_flags, None)."""
        if self._conn is None:
            return super().recvmsg_into(buffers, ancbufsize, flags)
        views = [memoryview(b).cast("B") for b in buffers]
        total = sum(len(v) for v in views)
        data = self.recv(total, flags)
        off = 0
        for v in views:
            k = min(len(v), len(data) - off)
            v[:k] = data[off:off + k]
            off += k
        return len(data), [], 0, None

    def _recv_ring(self, view, n: int, flags: int) -> int:
        conn = self._ring()
        if flags & ~_RECV_FLAGS:
            raise OSError(errno.EOPNOTSUPP, f"recv flags {flags & ~_RECV_FLAGS:#x} are not "
                          "supported on a socksdirect ring connection")
        if conn.shut_rd or n == 0:
            return 0
        reader = conn.reader
        peek = bool(flags & MSG_PEEK)
        if n < len(view):
            view = memoryview(view)[:n]
        try:
            if self._nonblocking(flags):
                got = reader.read_into(view, peek=peek)  # RingCredit!Recv
                if got == 0 and not reader.eof:
                    if conn.readiness:
                        reader.settle()
                    raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
            else:
                got = reader.recv_into(view, self._rtimeout, peek=peek)
                if flags & MSG_WAITALL and not peek:
                    got = self._recv_rest(view, got, n)
        except TimeoutError:
            raise TimeoutError("timed out") from None
        except BrokenPipeError:
            raise ConnectionResetError(errno.ECONNRESET, "Connection reset by peer") from None
        if conn.readiness:
            reader.settle()
        return got

    def _recv_rest(self, view, got: int, n: int) -> int:
        reader = self._conn.reader
        while 0 < got < n:
            k = reader.recv_into(view[got:], self._rtimeout)
            if k == 0:
                break
            got += k
        return got

    def send(self, data, flags: int = 0) -> int:
        """Send *data*; return the number of bytes sent (all of it when blocking)."""
        if self._conn is None:
            return super().send(data, flags)
        writer = self._writer(flags)
        try:
            if self._nonblocking(flags):
                n = writer.write(data)  # RingCredit!Write
                if n == 0 and len(memoryview(data)):
                    raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
                return n
            timeout = self._rtimeout
            if timeout is None:
                writer.send_all(data)
                return memoryview(data).nbytes
            start = writer.tail
            try:
                writer.send_all(data, timeout)
            except TimeoutError:
                sent = writer.tail - start
                if sent:
                    return sent
                raise TimeoutError("timed out") from None
            return memoryview(data).nbytes
        except BrokenPipeError:
            raise BrokenPipeError(errno.EPIPE, "Broken pipe") from None

    def sendall(self, data, flags: int = 0) -> None:
        """Send all of *data* (the timeout bounds the whole call)."""
        if self._conn is None:
            return super().sendall(data, flags)
        writer = self._writer(flags)
        try:
            if self._nonblocking(flags):
                view = memoryview(data).cast("B")
                off = 0
                while off < len(view):
                    k = writer.write(view[off:])
                    if k == 0:
                        raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
                    off += k
                return None
            writer.send_all(data, self._rtimeout)
        except TimeoutError:
            raise TimeoutError("timed out") from None
        except BrokenPipeError:
            raise BrokenPipeError(errno.EPIPE, "Broken pipe") from None
        return None

    def sendto(self, data, flags_or_addr, addr=_UNSET) -> int:
        """On a connected stream socket the address is ignored, as TCP does."""
        if self._conn is None:
            if addr is _UNSET:
                return super().sendto(data, flags_or_addr)
            return super().sendto(data, flags_or_addr, addr)
        flags = 0 if addr is _UNSET else flags_or_addr
        return self.send(data, flags)

    def sendmsg(self, buffers, ancdata=(), flags: int = 0, address=None) -> int:
        """Send the concatenation of *buffers*; ancillary data is refused (EOPNOTSUPP)."""
        if self._conn is None:
            return super().sendmsg(buffers, ancdata, flags, address)
        if list(ancdata):
            raise OSError(errno.EOPNOTSUPP, "ancillary data (SCM_RIGHTS, ...) cannot travel "
                          "over a socksdirect ring connection; use a kernel AF_UNIX socket")
        return self.send(b"".join(bytes(memoryview(b).cast("B")) for b in buffers), flags)

    def sendfile(self, file, offset: int = 0, count: int | None = None) -> int:
        """Send a file's contents (read and copied: no sendfile(2) into a ring)."""
        if self._conn is None:
            return super().sendfile(file, offset, count)
        return self._sendfile_use_send(file, offset, count)

    def _writer(self, flags: int):
        conn = self._ring()
        if flags & ~_SEND_FLAGS:
            raise OSError(errno.EOPNOTSUPP, f"send flags {flags & ~_SEND_FLAGS:#x} are not "
                          "supported on a socksdirect ring connection")
        if conn.shut_wr:
            raise BrokenPipeError(errno.EPIPE, "Broken pipe")
        return conn.writer

    def shutdown(self, how: int) -> None:
        """Shut down reading (SHUT_RD), writing (SHUT_WR: the peer sees EOF) or both."""
        conn = self._conn
        if conn is None:
            if self._lst is not None:
                raise OSError(errno.ENOTCONN, "Transport endpoint is not connected")
            return super().shutdown(how)
        self._ring()
        if how not in (SHUT_RD, SHUT_WR, SHUT_RDWR):
            raise OSError(errno.EINVAL, "Invalid argument")
        if how in (SHUT_WR, SHUT_RDWR) and not conn.shut_wr:
            conn.shut_wr = True
            conn.writer.close()
        if how in (SHUT_RD, SHUT_RDWR) and not conn.shut_rd:
            conn.shut_rd = True
            if conn.readiness:
                os.eventfd_write(conn.ready_fd, 1)  # recv returns b"" now: readable

    # -- names and options ------------------------------------------------------------------
    def getsockname(self):
        """Return the local address."""
        if self._conn is not None:
            return self._ring().local
        if self._lst is not None:
            return self._lst.ksock.getsockname()
        return super().getsockname()

    def getpeername(self):
        """Return the remote address."""
        if self._conn is not None:
            return self._ring().peer
        if self._lst is not None:
            raise OSError(errno.ENOTCONN, "Transport endpoint is not connected")
        return super().getpeername()

    def setsockopt(self, level: int, optname: int, value, optlen: int | None = None) -> None:
        """Set an option; SO_RCVBUF / SO_SNDBUF size a ring connection's rings."""
        if self._lst is not None:
            args = (value,) if optlen is None else (value, optlen)
            return self._lst.ksock.setsockopt(level, optname, *args)
        conn = self._conn
        if conn is None:
            if optlen is None:
                super().setsockopt(level, optname, value)
            else:
                super().setsockopt(level, optname, value, optlen)
            if level == SOL_SOCKET and optname in (_stdsocket.SO_RCVBUF, _stdsocket.SO_SNDBUF):
                self._bufs[(level, optname)] = int(value)
            return None
        self._ring()
        if (level, optname) in _BOOL_OPTS or (level, optname) in (
                (SOL_SOCKET, _stdsocket.SO_RCVBUF), (SOL_SOCKET, _stdsocket.SO_SNDBUF)):
            if optlen is not None or not isinstance(value, int):
                raise OSError(errno.EINVAL, "Invalid argument")
            conn.opts[(level, optname)] = value
            return None
        ksock = getattr(conn, "ksock", None)
        if ksock is None:
            raise OSError(errno.ENOPROTOOPT, "Protocol not available")
        args = (value,) if optlen is None else (value, optlen)
        return ksock.setsockopt(level, optname, *args)

    def getsockopt(self, level: int, optname: int, buflen: int | None = None):
        """Get an option; a ring connection answers for its rings."""
        if self._lst is not None:
            args = () if buflen is None else (buflen,)
            return self._lst.ksock.getsockopt(level, optname, *args)
        conn = self._conn
        if conn is None:
            if buflen is None:
                return super().getsockopt(level, optname)
            return super().getsockopt(level, optname, buflen)
        self._ring()
        if buflen is None:
            if level == SOL_SOCKET:
                if optname == _stdsocket.SO_TYPE:
                    return SOCK_STREAM
                if optname == _stdsocket.SO_ERROR:
                    return 0
                if optname == _stdsocket.SO_RCVBUF:
                    return conn.rx.capacity
                if optname == _stdsocket.SO_SNDBUF:
                    return conn.tx.capacity
                if optname == getattr(_stdsocket, "SO_ACCEPTCONN", -1):
                    return 0
                if optname == getattr(_stdsocket, "SO_DOMAIN", -1):
                    return int(conn.family)
                if optname == getattr(_stdsocket, "SO_PROTOCOL", -1):
                    return self.proto
            if (level, optname) in _BOOL_OPTS:
                return conn.opts.get((level, optname), 0)
        ksock = getattr(conn, "ksock", None)
        if ksock is None:
            raise OSError(errno.ENOPROTOOPT, "Protocol not available")
        args = () if buflen is None else (buflen,)
        return ksock.getsockopt(level, optname, *args)

    def bind(self, address) -> None:
        """Bind to *address* (always the kernel's: ports belong to the kernel)."""
        if self._conn is not None or self._lst is not None:
            raise OSError(errno.EINVAL, "Invalid argument")
        return super().bind(address)

    # The class must define every public method of socket.socket itself
    # (CPython's tests look them up on the class): these keep the kernel's
    # meaning, since the descriptor they act on is ours in every transport.
    def get_inheritable(self) -> bool:
        """Get the inheritable flag of the descriptor."""
        return super().get_inheritable()

    def set_inheritable(self, inheritable: bool) -> None:
        """Set the inheritable flag of the descriptor."""
        super().set_inheritable(inheritable)

    def makefile(self, mode="r", buffering=None, *, encoding=None, errors=None, newline=None):
        """Return a file object reading and/or writing this socket (see socket.makefile)."""
        return super().makefile(mode, buffering, encoding=encoding, errors=errors,
                                newline=newline)

    def close(self) -> None:
        """Close the socket; a ring connection closes for the peer when its last copy does."""
        super().close()

    def __enter__(self) -> socket:
        return self

    def __exit__(self, *args) -> None:
        if not self._closed:
            self.close()


class _Listener:
    """A listening socket's two sources of connections, in one epoll set."""

    def __init__(self, ksock: _stdsocket.socket, chan: _client.ControlChannel,
                 family: int) -> None:
        self.ksock = ksock
        self.chan = chan
        self.family = family
        self.epoll = select.epoll()
        self.epoll.register(ksock.fileno(), select.EPOLLIN)
        self.epoll.register(chan.sock.fileno(), select.EPOLLIN)
        ksock.setblocking(False)

    @classmethod
    def register(cls, sock: socket, backlog: int) -> _Listener | None:
        """Connect.tla!Listen: bind the kernel socket and register it; None without a monitor."""
        family = sock.family
        if family != AF_UNIX and _stdsocket.socket.getsockname(sock)[1] == 0:
            # listen() would bind an ephemeral port; do it now, so that the
            # monitor sees the port the kernel gave us.
            _stdsocket.socket.bind(sock, ("::" if family == AF_INET6 else "0.0.0.0", 0))
        if family == AF_UNIX and not _stdsocket.socket.getsockname(sock):
            return None  # an unbound AF_UNIX listener (autobind): the kernel's alone
        _stdsocket.socket.listen(sock, backlog)
        chan = _client.open_listener_channel()
        if chan is None:
            return None
        ksock = _stdsocket.socket(fileno=os.dup(_stdsocket.socket.fileno(sock)))
        bufs = sock._opts_kernel()
        body = {"family": _af_name(family), "backlog": backlog,
                "rcvbuf": bufs.get((SOL_SOCKET, _stdsocket.SO_RCVBUF), 0),
                "sndbuf": bufs.get((SOL_SOCKET, _stdsocket.SO_SNDBUF), 0)}
        try:
            chan.request(P.LISTEN, body, [ksock.fileno()])
        except OSError as exc:
            chan.close()
            ksock.close()
            if exc.errno == errno.EACCES:
                raise PermissionError(errno.EACCES, exc.strerror) from None
            if isinstance(exc, (ConnectionResetError, BrokenPipeError)):
                return None
            raise
        chan.sock.setblocking(False)
        return cls(ksock, chan, family)

    def accept(self, owner: socket, timeout: float | None) -> tuple[socket, object]:
        """Take the next connection from the monitor or the kernel; wait per *timeout*."""
        import time
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            got = self._take_ring(owner) or self._take_kernel(owner)
            if got is not None:
                return got
            if timeout == 0.0:
                raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
            if deadline is None:
                self.epoll.poll()
            else:
                left = deadline - time.monotonic()
                if left <= 0 or not self.epoll.poll(left):
                    if time.monotonic() >= deadline:
                        raise TimeoutError("timed out")

    def _take_ring(self, owner: socket) -> tuple[socket, object] | None:
        """Connect.tla!Accept: a connection the monitor pushed, if one waits."""
        try:
            msg = P.recv_msg(self.chan.sock)
        except (BlockingIOError, InterruptedError):
            return None
        except P.ProtocolError:
            return None
        if msg is None:  # the monitor went away: kernel clients only from now on
            self.epoll.unregister(self.chan.sock.fileno())
            self.chan.sock.close()
            self.chan.sock = _DeadSock()
            return None
        if msg.op != P.NEWCONN:
            msg.close_fds()
            return None
        body = msg.body
        conn = _RingConn.from_fds(msg.fds, body["id"], self.family,
                                  _from_wire(self.family, body["local"]),
                                  _from_wire(self.family, body["peer"]))
        self.chan.notify(P.ACCEPTED, {"id": body["id"]})
        sock = socket._from_conn(conn)
        return sock, conn.peer

    def _take_kernel(self, owner: socket) -> tuple[socket, object] | None:
        try:
            fd, addr = self.ksock._accept()
        except (BlockingIOError, InterruptedError):
            return None
        sock = socket(owner.family, owner.type, owner.proto, fileno=fd)
        if _stdsocket.getdefaulttimeout() is None:
            sock.setblocking(True)
        return sock, addr

    def close(self) -> None:
        """Unregister (the monitor resets queued connections) and close the kernel socket."""
        self.chan.close()
        self.ksock.close()
        self.epoll.close()


class _DeadSock:
    """Stands in for a closed channel socket: every use says "nothing here"."""

    def fileno(self) -> int:
        return -1

    def recv(self, *a):
        raise BlockingIOError(errno.EAGAIN, "no monitor")

    def close(self) -> None:
        pass

    def detach(self) -> int:
        return -1


def transport_of(sock) -> str:
    """Return how *sock* carries data: "ring", "listener" or "kernel"."""
    return getattr(sock, "transport", "kernel")


def socketpair(family: int = AF_UNIX, type: int = SOCK_STREAM, proto: int = 0):
    """Return two connected sockets; AF_UNIX stream pairs run over rings, in this process.

    No monitor is involved: both ends are ours.  After fork() the two
    processes share the rings, like a kernel socketpair.
    """
    if family != AF_UNIX or type != SOCK_STREAM or proto not in (0,):
        a, b = _stdsocket.socketpair(family, type, proto)
        return (socket(a.family, a.type, a.proto, fileno=a.detach()),
                socket(b.family, b.type, b.proto, fileno=b.detach()))
    r1 = Ring.create(DEFAULT_BUF)
    r2 = Ring.create(DEFAULT_BUF)
    c1 = _RingConn(r1, r2, None, AF_UNIX, "", "")
    # The second end maps the same rings again, so each end closes its own.
    c2 = _RingConn(Ring.attach(r2.fds()), Ring.attach(r1.fds()), None, AF_UNIX, "", "")
    return socket._from_conn(c1), socket._from_conn(c2)


def create_connection(address, timeout=_stdsocket._GLOBAL_DEFAULT_TIMEOUT,
                      source_address=None, *, all_errors: bool = False) -> socket:
    """Connect to *address* (host, port) like socket.create_connection; return the socket."""
    host, port = address
    exceptions = []
    for family, type_, proto, _, sa in _stdsocket.getaddrinfo(host, port, 0, SOCK_STREAM):
        sock = None
        try:
            sock = socket(family, type_, proto)
            if timeout is not _stdsocket._GLOBAL_DEFAULT_TIMEOUT:
                sock.settimeout(timeout)
            if source_address:
                sock.bind(source_address)
            sock.connect(sa)
            exceptions.clear()
            return sock
        except OSError as exc:
            if not all_errors:
                exceptions.clear()
            exceptions.append(exc)
            if sock is not None:
                sock.close()
    if exceptions:
        try:
            if not all_errors:
                raise exceptions[0]
            raise ExceptionGroup("create_connection failed", exceptions)
        finally:
            exceptions.clear()
    raise OSError("getaddrinfo returns an empty list")


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
        if os.name not in ("nt", "cygwin") and family != AF_UNIX:
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


_ = io  # makefile's SocketIO comes from socket.socket
