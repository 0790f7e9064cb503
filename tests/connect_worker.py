"""A client process for the Connect machine: runs impl.socket operations on command.

``python -m tests.connect_worker --name p1``: reads one JSON command per line
on stdin, answers one JSON line on stdout.  Its name is on its command line
so that ACL rules can tell the machine's processes apart (``cmdline`` globs),
exactly as they would tell real programs apart.

Commands (``op`` and arguments) and answers:

``listen addr backlog``  -> ``{"ok": true}`` or ``{"error": errno, "kind": exception name}``
``unlisten addr``        -> ``{"ok": true}``
``connect addr``         -> ``{"transport": "ring" | "kernel", "cid": int | null}`` or error
``accept addr``          -> ``{"cid": int | null, "transport": ...}`` or error (timeout)
``close cid end``        -> ``{"ok": true}`` (closes our *end*, "client" or "server", of *cid*)
``sync``                 -> ``{"ok": true}`` once the monitor has read everything this
                            process sent it before (a PING on its channel)
``pid``                  -> ``{"pid": os.getpid()}``

Addresses are abstract AF_UNIX names: no files to clean up, and nothing of a
test can collide with anything else on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import impl
from impl.monitor import client
from impl.monitor import protocol as P

#: Bound on every blocking call: a wrong implementation fails, never hangs.
TIMEOUT = 10.0


class Worker:
    def __init__(self) -> None:
        self.listeners: dict[str, impl.socket] = {}
        self.socks: dict[tuple[int, str], impl.socket] = {}   # (cid, end) -> socket
        self.kernel: list[impl.socket] = []   # kernel connections: not the monitor's

    def listen(self, addr: str, backlog: int) -> dict:
        s = impl.socket(impl.AF_UNIX, impl.SOCK_STREAM)
        try:
            s.bind(addr)
            s.listen(backlog)
        except OSError:
            s.close()
            raise
        self.listeners[addr] = s
        return {"ok": True, "transport": s.transport}

    def unlisten(self, addr: str) -> dict:
        self.listeners.pop(addr).close()
        return {"ok": True}

    def connect(self, addr: str) -> dict:
        s = impl.socket(impl.AF_UNIX, impl.SOCK_STREAM)
        s.settimeout(TIMEOUT)
        try:
            s.connect(addr)
        except OSError:
            s.close()
            raise
        if s.transport == "ring":
            cid = s._conn.cid
            self.socks[(cid, "client")] = s
            return {"transport": "ring", "cid": cid}
        self.kernel.append(s)
        return {"transport": "kernel", "cid": None}

    def accept(self, addr: str) -> dict:
        lst = self.listeners[addr]
        lst.settimeout(TIMEOUT)
        s, _ = lst.accept()
        if s.transport != "ring":
            self.kernel.append(s)
            return {"transport": s.transport, "cid": None}
        cid = s._conn.cid
        self.socks[(cid, "server")] = s
        return {"transport": "ring", "cid": cid}

    def close(self, cid: int, end: str) -> dict:
        self.socks.pop((cid, end)).close()
        return {"ok": True}

    def sync(self) -> dict:
        chan = client.current()
        if chan is not None:
            chan.request(P.PING)
        return {"ok": True}

    def pid(self) -> dict:
        return {"pid": os.getpid()}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--name", required=True, help="the process's name in the spec")
    ap.parse_args()
    worker = Worker()
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd.pop("op")
        try:
            out = getattr(worker, op)(**cmd)
        except OSError as exc:
            out = {"error": exc.errno, "kind": type(exc).__name__, "message": str(exc)}
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
