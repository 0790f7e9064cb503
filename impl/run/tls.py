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

import os
import socket as _stdsocket
import threading

import impl.sdsocket

__all__ = ["kernel_socket_for_tls", "patched_wrap_socket"]

_CHUNK = 64 * 1024


def kernel_socket_for_tls(sock):
    """Return a socket OpenSSL may use in place of *sock* (itself unless a ring/listener)."""
    if not isinstance(sock, impl.sdsocket.socket):
        return sock
    if sock.transport == "listener":
        return _kernel_listener(sock)
    if sock.transport == "ring":
        return _bridge(sock)
    return sock


def patched_wrap_socket(original):
    """``SSLContext.wrap_socket`` that first swaps a ring or listener socket for a kernel one."""
    def wrap_socket(self, sock, *args, **kwargs):
        return original(self, kernel_socket_for_tls(sock), *args, **kwargs)
    wrap_socket.__doc__ = original.__doc__
    wrap_socket.__wrapped__ = original
    return wrap_socket


def _kernel_listener(sock):
    # The kernel listening socket stays open through our dup while the
    # listener itself closes, which withdraws it from the monitor.
    ksock = sock._lst.ksock
    k = _stdsocket.socket(sock.family, sock.type, sock.proto, fileno=os.dup(ksock.fileno()))
    k.settimeout(sock.gettimeout())
    sock.close()
    return k


def _bridge(sock):
    ours, theirs = _stdsocket.socketpair(_stdsocket.AF_UNIX, _stdsocket.SOCK_STREAM)
    theirs.settimeout(sock.gettimeout())
    sock.settimeout(None)
    done = threading.Semaphore(0)

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
            sock.close()
        else:
            done.release()

    for args in ((sock.recv, ours.sendall, ours.shutdown),
                 (ours.recv, sock.sendall, sock.shutdown)):
        threading.Thread(target=copy, args=args, daemon=True,
                         name="socksdirect-tls-bridge").start()
    return theirs
