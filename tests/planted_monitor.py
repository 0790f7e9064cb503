"""A monitor with one planted bug, for proving that a machine (Connect, tokens) catches it.

``python -m tests.planted_monitor BUG [impl.monitor options]`` runs the real
monitor (``impl.monitor.__main__.main``) with one method of
:class:`impl.monitor.server.Monitor` wrapped so that it breaks the protocol
the way the bug's name says.  Test-only: nothing in ``impl`` knows of it.
"""

from __future__ import annotations

import sys

from impl.monitor import __main__ as monitor_main
from impl.monitor import protocol as P
from impl.monitor.server import Monitor


def _patch(name: str, fn) -> None:
    """Replace method *name*, also where the dispatch table holds the original."""
    orig = getattr(Monitor, name)
    setattr(Monitor, name, fn)
    Monitor._HANDLERS = {op: (fn if h is orig else h) for op, h in Monitor._HANDLERS.items()}


def _unlisten_forgets_queue() -> None:
    """Connect!Unlisten without the reset: queued connections stay "queued" forever."""
    orig = Monitor._unlisten

    def _unlisten(self, key):
        lst = self.listeners.get(key)
        if lst is not None:
            lst.queue.clear()
        orig(self, key)
    _patch("_unlisten", _unlisten)


def _accepted_ignored() -> None:
    """Connect!Accept not recorded: the server end stays "queued" after accept()."""
    _patch("_on_accepted", lambda self, chan, msg: None)


def _no_backlog() -> None:
    """HandleConnect without the backlog check: queues grow past Backlog."""
    orig = Monitor._on_connect

    def _on_connect(self, chan, msg):
        for lst in self.listeners.values():
            lst.backlog = 1 << 30   # as if the check were gone
        return orig(self, chan, msg)
    _patch("_on_connect", _on_connect)


def _reclaim_forgets_queue() -> None:
    """TokenSharing!Reclaim with KeepQueue off: a dead holder's token is freed, not
    passed to the first process queued -- whose request is lost."""
    orig = Monitor._reclaim

    def _reclaim(self, conn, end, pid):
        for d in P.DIRS:
            tok = conn.tokens.get((end, d))
            if tok is not None and tok.holder == pid:
                tok.queue.clear()
        orig(self, conn, end, pid)
    _patch("_reclaim", _reclaim)


BUGS = {
    "unlisten-forgets-queue": _unlisten_forgets_queue,
    "accepted-ignored": _accepted_ignored,
    "no-backlog": _no_backlog,
    "reclaim-forgets-queue": _reclaim_forgets_queue,
}

if __name__ == "__main__":
    BUGS[sys.argv[1]]()
    sys.exit(monitor_main.main(sys.argv[2:]))
