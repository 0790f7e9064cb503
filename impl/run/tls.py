"""TLS under the drop-in patch: ``ssl`` gets kernel sockets, never ring ones.

``ssl.SSLContext.wrap_socket`` hands the socket's descriptor to OpenSSL,
which reads and writes it with the C library.  A ring socket's descriptor is
an eventfd and a listener's is an epoll set, so OpenSSL must not see them.
While :func:`impl.patch` is in force, ``wrap_socket`` is given instead:

* for a **listener**: a kernel socket on the same listening socket (the
  listener is withdrawn from the monitor, so later clients connect through
  the kernel -- TLS servers run as they would without socksdirect);
* for a **ring connection** (a socket wrapped after it connected, as
  STARTTLS or a server wrapping each accepted connection does): one end of a
  kernel socketpair, whose other end two threads copy to and from the ring.
  The bytes still cross the rings; the TLS records cross the socketpair too.

asyncio's TLS needs none of this: it runs OpenSSL over memory buffers
(``ssl.SSLObject``), not over the descriptor.
"""

from __future__ import annotations

import errno
import os
import socket as _stdsocket
import threading

import impl.sdsocket

__all__ = ["patched_wrap_socket"]

_CHUNK = 64 * 1024


def _impl_socket_of(sock) -> impl.sdsocket.socket | None:
    """The ring or listener impl socket *sock* is, or forwards fileno() to; else None.

    A wrapper object (one that passes family, fileno(), detach() ... on to a
    socket) is as good as a socket to ``wrap_socket``; its descriptor tells
    which of ours it stands for.
    """
    if isinstance(sock, impl.sdsocket.socket):
        return sock if sock.transport in ("ring", "listener") else None
    try:
        fd = sock.fileno()
    except (AttributeError, OSError, TypeError, ValueError):
        return None
    return impl.sdsocket.socket_for_fd(fd) if isinstance(fd, int) else None


def patched_wrap_socket(original):
    """``SSLContext.wrap_socket`` that first swaps a ring or listener socket for a kernel one.

    A bridged connection's SSL socket still reports the ring connection's
    family and addresses (ftplib's FTP_TLS, for one, builds its data
    connections from them), not the socketpair's.
    """
    def wrap_socket(self, sock, *args, **kwargs):
        real = _impl_socket_of(sock)
        if real is None:
            return original(self, sock, *args, **kwargs)
        listening = real.transport == "listener"
        if listening:
            end = _kernel_listener(real)
        else:
            names = (real.family, real.getsockname(), real.getpeername())
            end = _bridge(real)
        try:
            ssock = original(self, end, *args, **kwargs)
        except BaseException:
            end.abandon()       # refused before it took the socket: the caller keeps it
            raise
        if listening:
            return ssock
        ssock.__class__ = _bridged_class(type(ssock))
        ssock._ring_family, ssock._ring_sockname, ssock._ring_peername = names
        return ssock
    wrap_socket.__doc__ = original.__doc__
    wrap_socket.__wrapped__ = original
    return wrap_socket


_bridged_classes: dict[type, type] = {}


def _bridged_class(cls: type) -> type:
    """A subclass of the SSL socket class *cls* reporting the ring's family and addresses."""
    sub = _bridged_classes.get(cls)
    if sub is not None:
        return sub

    class Bridged(cls):
        @property
        def family(self):
            return self._ring_family

        def getsockname(self):
            self._check_open()
            return self._ring_sockname

        def getpeername(self):
            self._check_open()
            return self._ring_peername

        def _check_open(self) -> None:
            if self.fileno() < 0:
                raise OSError(errno.EBADF, os.strerror(errno.EBADF))

    Bridged.__name__, Bridged.__qualname__ = cls.__name__, cls.__qualname__
    Bridged.__doc__ = cls.__doc__
    return _bridged_classes.setdefault(cls, Bridged)


class _Handover(_stdsocket.socket):
    """The kernel socket given to ``wrap_socket`` in place of one of ours.

    ssl checks its arguments first and then detaches the socket it wraps:
    that ``detach()`` is the point where the kernel's wrap_socket takes the
    socket from its caller, so it is where ours is handed over
    (``detach_hook``: the listener closed, or the bridge started).  A
    wrap_socket refused before that leaves the caller's socket as it was
    (``abandon``).
    """

    __slots__ = ("detach_hook", "abandon")

    def detach(self) -> int:
        """Detach, and hand our socket over (once)."""
        fd = super().detach()
        self.detach_hook()
        return fd


def _kernel_listener(sock) -> _Handover:
    # The kernel listening socket stays open through our dup while the
    # listener itself closes, which withdraws it from the monitor.
    ksock = sock._lst.ksock
    k = _Handover(sock.family, sock.type, sock.proto, fileno=os.dup(ksock.fileno()))
    k.settimeout(sock.gettimeout())
    k.detach_hook, k.abandon = sock.close, k.close
    return k


def _bridge(sock) -> _Handover:
    # The copy threads work on a duplicate, and the caller's object is closed,
    # as wrap_socket detaches it from a kernel socket: a shutdown(SHUT_WR) or
    # close() the caller then makes (socketserver's shutdown_request does
    # both) must not cut the ring while TLS records are still being copied.
    ring = sock.dup()
    ring.settimeout(None)
    ours, pair_end = _stdsocket.socketpair(_stdsocket.AF_UNIX, _stdsocket.SOCK_STREAM)
    theirs = _Handover(fileno=pair_end.detach())
    theirs.settimeout(sock.gettimeout())
    done = threading.Semaphore(0)
    started = []
    held = (ring, ours)

    def copy(src_recv, dst_sendall, dst_shut) -> None:
        # One direction; at EOF (or when the other side is gone) pass the EOF on.
        try:
            while data := src_recv(_CHUNK):
                dst_sendall(data)
        except OSError:
            pass
        try:
            dst_shut(_stdsocket.SHUT_WR)
        except OSError:
            pass
        if done.acquire(blocking=False):     # the second direction to finish closes
            ours.close()
            ring.close()
            # Only now: a fork before the closes must still find them to drop.
            _running.discard(held)
        else:
            done.release()

    def start() -> None:
        if started:
            return
        started.append(True)
        _running.add(held)
        sock.close()
        for args in ((ring.recv, ours.sendall, ours.shutdown),
                     (ours.recv, ring.sendall, ring.shutdown)):
            threading.Thread(target=copy, args=args, daemon=True,
                             name="socksdirect-tls-bridge").start()

    def abandon() -> None:
        if started:     # refused after the handshake began: the threads end it
            return
        theirs.close()
        ours.close()
        ring.close()    # one holder less; the caller's socket still holds the ring

    theirs.detach_hook, theirs.abandon = start, abandon
    return theirs


#: (ring socket, socketpair end) of every bridge running in this process.
_running: set[tuple] = set()


def _drop_bridges_in_child() -> None:
    # A fork child has the bridges' sockets but not their threads: nothing
    # would ever close them, and its hold would keep each ring connection
    # open (the peer never seeing EOF) for as long as the child lives.  A
    # kernel wrap_socket leaves no such hold: the child's copy of an SSL
    # socket is one descriptor.  So the child lets go of them at once.
    bridges = list(_running)
    _running.clear()
    for ring, ours in bridges:
        ours.close()
        ring.close()


os.register_at_fork(after_in_child=_drop_bridges_in_child)
