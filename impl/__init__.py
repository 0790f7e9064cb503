"""socksdirect: a user-space socket system after SocksDirect (SIGCOMM 2019).

``import impl`` and use it like the :mod:`socket` module::

    import impl
    srv = impl.create_server(("127.0.0.1", 0))
    cli = impl.create_connection(srv.getsockname())   # over shared memory
    conn, addr = srv.accept()

:class:`impl.socket` is a :class:`socket.socket`; every constant, exception
and helper of the socket module is re-exported here, so ``import impl as
socket`` works.  Connections between processes of this host run over
shared-memory rings (:mod:`impl.ring`) set up by the monitor
(:mod:`impl.monitor`); anything else is a kernel socket.  Tokens and fork
semantics live in :mod:`impl.token` and :mod:`impl.fork`; :mod:`impl.diag`
dumps what a stuck process's sockets wait for.
"""

import os as _os
import socket as _socket
import warnings as _warnings

from impl import diag as _diag
from impl.run.patch import patch, unpatch
from impl.sdsocket import (
    create_connection,
    create_server,
    fromfd,
    socket,
    socket_for_fd,
    socketpair,
    transport_of,
)

__version__ = "0.1.0"


def _reexport() -> list[str]:
    names = []
    for name in dir(_socket):
        if name.startswith("_") or name in globals() or name in ("socket", "SocketType"):
            continue
        globals()[name] = getattr(_socket, name)
        names.append(name)
    return names


SocketType = socket
__all__ = ["socket", "SocketType", "socketpair", "create_connection", "create_server",
           "fromfd", "transport_of", "socket_for_fd", "patch", "unpatch", *_reexport()]

if _os.environ.get(_diag.ENV_SIGNAL):
    try:
        _diag.install()
    except (ValueError, OSError) as _exc:   # a bad name or signal, or not the main thread
        _warnings.warn(f"socksdirect: no dump on a signal: {_exc}", RuntimeWarning,
                       stacklevel=2)
