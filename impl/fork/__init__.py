"""Fork semantics (spec/tla/Fork.tla): every socket stays usable in parent and child.

After ``fork()`` both processes hold every socket, as with kernel sockets.
The shared-memory rings are shared already (a MAP_SHARED mapping survives
fork); what needs care is everything else a process has, and this module's
``os.register_at_fork`` hooks do it:

* before the fork (Fork!Fork, the parent's part): every open ring end gets
  a *hold pipe* if it has none, and the monitor is sent its read end (HOLD,
  synchronous): from then on the kernel counts the processes that hold the
  end -- each has a copy of the write end -- and the monitor sees the count
  reach zero (POLLHUP), including children it has not heard from yet;
* in the child (Fork!Fork, FreshResources): its per-process resources --
  the control channel, the token agent (channel and thread), later RDMA
  queue pairs -- are the parent's, and must not be used: each
  :class:`PerProcess` forgets its object (without closing what the parent
  still uses) and makes a new one on first use (Fork!CreateResource).
  Locks another thread may have held at the fork are made anew; tokens
  are the parent's until the child asks (TokenStays);
* in the child (Fork!Register): FORKED tells the monitor that the child
  holds the ends too, proven by its copies of the hold pipes' write ends,
  before fork() returns -- the parent may exit at once (daemonize);
* in the parent: the token agent runs, to answer the child's TAKE.

Why the hooks live here and call into :mod:`impl.sdsocket` through
``sys.modules``: the control channel (impl.monitor.client) and the agent use
:class:`PerProcess`, and the socket module imports them; this module imports
none of them, so any of them may import it.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["PerProcess", "resources", "holders"]

T = TypeVar("T")

#: name -> PerProcess, in the order they were made (the child resets them in this order).
_registry: dict[str, PerProcess] = {}


class PerProcess(Generic[T]):
    """A resource that belongs to one process, made on demand, made anew in a fork child.

    *factory* makes it (None: not available now; nothing is kept).  *alive*
    says whether a made one is still usable (else :meth:`get` makes another,
    closing the old); *close* closes one of this process's; *orphan* lets go
    of the parent's copy in a child without disturbing the parent (e.g.
    closes a descriptor without a word to the peer).  The spec's ``res[p]``:
    :attr:`owner` is the pid whose resource this process refers to, and it
    is never another process's: a child starts with none.
    """

    def __init__(self, name: str, factory: Callable[[], T | None], *,
                 alive: Callable[[T], bool] | None = None,
                 close: Callable[[T], None] | None = None,
                 orphan: Callable[[T], None] | None = None) -> None:
        """Register the resource *name* (unique) with its *factory* and hooks."""
        if name in _registry:
            raise ValueError(f"a per-process resource named {name!r} exists already")
        self.name = name
        self._factory = factory
        self._alive = alive
        self._close = close
        self._orphan = orphan
        self._obj: T | None = None
        self._pid: int | None = None
        self._lock = threading.Lock()
        _registry[name] = self

    def __repr__(self) -> str:
        return f"<PerProcess {self.name} owner={self.owner}>"

    @property
    def owner(self) -> int | None:
        """The pid that made this process's resource; None if there is none yet."""
        return self._pid if self._obj is not None else None

    def peek(self) -> T | None:
        """This process's resource if it has one already; never makes one."""
        obj = self._obj
        if obj is not None and self._pid == os.getpid():
            return obj
        return None

    def get(self) -> T | None:
        """This process's resource, made first if there is none (or it died); None if
        the factory cannot make one now."""
        obj = self._usable()
        if obj is not None:
            return obj
        with self._lock:
            obj = self._usable()
            if obj is not None:
                return obj
            self._drop()
            obj = self._factory()       # Fork!CreateResource
            if obj is not None:
                self._obj, self._pid = obj, os.getpid()
            return obj

    def forget(self) -> None:
        """Close this process's resource (if any); the next :meth:`get` makes a new one."""
        with self._lock:
            self._drop()

    def _usable(self) -> T | None:
        obj = self._obj
        if obj is None or self._pid != os.getpid():
            return None
        if self._alive is not None and not self._alive(obj):
            return None
        return obj

    def _drop(self) -> None:
        """Under the lock: let go of the current object, closing it if it is ours."""
        obj, self._obj = self._obj, None
        pid, self._pid = self._pid, None
        if obj is None:
            return
        hook = self._close if pid == os.getpid() else self._orphan
        if hook is not None:
            hook(obj)

    def _forked_child(self) -> None:
        """In a new child: the lock may have been held by a thread that is not here."""
        self._lock = threading.Lock()
        self._drop()


def resources() -> dict[str, int | None]:
    """Every per-process resource by name, with the pid that owns this process's copy.

    None means "not made in this process yet"; in a fork child every one is
    None until first used (Fork.tla's ResourceOwned: never the parent's).
    """
    return {name: res._pid if res._pid == os.getpid() and res._obj is not None else None
            for name, res in _registry.items()}


def holders(sock) -> list[int]:
    """The pids the monitor lists as holders of *sock*'s end of its connection (for tests).

    Raises ValueError for a socket that is not a ring socket the monitor
    set up, OSError if the monitor cannot be asked.
    """
    from impl.monitor import client
    from impl.monitor import protocol as P
    conn = getattr(sock, "_conn", None)
    if conn is None or conn.cid is None:
        raise ValueError("not a ring socket that a monitor set up")
    reply = client.request(P.STATUS)
    for row in reply.body.get("connections", []):
        if row["id"] == conn.cid:
            return list(row["holders"][conn.end])
    return []


# -- the hooks --------------------------------------------------------------------------
def _sdsocket():
    """impl.sdsocket if it was imported (else there is no socket to care for)."""
    return sys.modules.get("impl.sdsocket")


def _before_fork() -> None:
    # Fork!Fork, the parent's part: count the holders of every open end from
    # now on, and let the monitor count them too (HOLD).
    sd = _sdsocket()
    if sd is not None:
        sd._prepare_fork()


def _after_fork_in_parent() -> None:
    sd = _sdsocket()
    if sd is not None:
        sd._forked_parent()


def _after_fork_in_child() -> None:
    # Fork!Fork in the child: res[c] = NoProc -- the parent's channels and
    # agent are not ours; new ones are made on first use (CreateResource).
    for res in list(_registry.values()):
        res._forked_child()
    # Tokens stay with the parent (TokenStays); their locks are made anew.
    tok = sys.modules.get("impl.token")
    if tok is not None:
        tok._forked_child()
    sd = _sdsocket()
    if sd is not None:
        sd._forked_child()          # Fork!Register (FORKED), listeners' own epoll sets


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                    after_in_child=_after_fork_in_child)
