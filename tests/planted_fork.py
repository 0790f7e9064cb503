"""Planted fork bugs for the fork machine (tests/test_fork_stateful.py): it must catch each.

:func:`install` patches the library of the calling process by name, before
it opens any socket (``tests.fork_worker --plant BUG``); the processes it
forks inherit the patch.  Each bug breaks one promise of Fork.tla:

``closer-ignores-holders``
    A closer always takes itself for the end's last holder
    (``_RingConn._last_holder`` answers True after doing its own part):
    a parent that closes its copy closes the rings under a fork child that
    still holds the socket, and the peer sees EOF (Fork.tla with
    CountHolders = FALSE; PeerClosedOnlyWhenUnheld).
``child-keeps-resources``
    A fork child keeps its parent's per-process resources -- the control
    channel, the token agent -- and uses them as its own
    (``PerProcess`` neither lets go of them in the child nor checks whose
    they are): its FORKED, CLOSE and TAKE travel on the parent's channel,
    so the monitor takes them for the parent's (Fork.tla with
    FreshResources = FALSE; ResourceOwned).
``child-keeps-token``
    A fork child keeps its parent's belief that it holds the send token
    (``Token._forked_child`` leaves ``held`` as it was): parent and child
    both send without asking (Fork.tla with TokenStays = FALSE;
    OneTokenHolder).
``child-moves-fds``
    The child's fork hook re-creates every ring socket's descriptor (a dup
    under a new number, the old one closed): the child's fd table is not
    its parent's (ForkCopiesTable).
"""

from __future__ import annotations

import os
import threading

__all__ = ["BUGS", "install"]

#: Sockets the child-moves-fds hook made (kept alive: an unreferenced socket closes).
_moved: list = []


def _closer_ignores_holders() -> None:
    from impl import sdsocket
    real = sdsocket._RingConn._last_holder

    def last_holder(self) -> bool:
        real(self)      # closes this process's copy of the hold pipe, as before
        return True     # (planted) whatever the kernel's count says

    sdsocket._RingConn._last_holder = last_holder


def _child_keeps_resources() -> None:
    from impl import fork

    def forked_child(self) -> None:
        self._lock = threading.Lock()   # (planted) and the parent's object stays ours

    def usable(self):
        obj = self._obj
        if obj is None:
            return None
        if self._alive is not None and not self._alive(obj):
            return None
        return obj                      # (planted) whoever made it

    fork.PerProcess._forked_child = forked_child
    fork.PerProcess._usable = usable
    fork.PerProcess.peek = lambda self: self._obj


def _child_keeps_token() -> None:
    from impl import token
    real = token.Token._forked_child

    def forked_child(self) -> None:
        held = self.held
        real(self)
        self.held = held        # (planted) the parent's belief, copied

    token.Token._forked_child = forked_child


def _child_moves_fds() -> None:
    import impl
    from impl import sdsocket

    def move_all() -> None:
        for name in os.listdir("/proc/self/fd"):
            fd = int(name)
            sock = impl.socket_for_fd(fd)
            if sock is None or sock._conn is None:
                continue
            new = os.dup(fd)
            old = sock.detach()
            sdsocket._detached[new] = sdsocket._detached.pop(old)
            os.close(old)
            _moved.append(impl.socket(fileno=new))   # (planted) the end under a new number

    # Registered after the library's hooks, so it runs after them in the child.
    os.register_at_fork(after_in_child=move_all)


BUGS = {
    "closer-ignores-holders": _closer_ignores_holders,
    "child-keeps-resources": _child_keeps_resources,
    "child-keeps-token": _child_keeps_token,
    "child-moves-fds": _child_moves_fds,
}


def install(name: str) -> None:
    """Plant the bug *name* (one of :data:`BUGS`) in this process's library."""
    try:
        plant = BUGS[name]
    except KeyError:
        raise ValueError(f"unknown planted bug {name!r}; known: {', '.join(sorted(BUGS))}") \
            from None
    plant()
