"""The two processes of the token machine: P1, and P2 forked from it, sharing one socket end.

``python -m tests.token_worker --addr @NAME --ring BYTES --threads t1,t2
--child-threads t3 --child-fds IN,OUT [--patch BUG]`` connects a socksdirect
socket to the abstract AF_UNIX address *NAME* (its rings *BYTES* long:
SO_SNDBUF and SO_RCVBUF before connect), parks both token words, then
forks.  The parent (P1) runs the ``--threads`` and is driven over its
stdin/stdout; the child (P2) runs the ``--child-threads`` and is driven over
the pipe pair *IN*, *OUT* that the driver made before starting us.  Both
hold the same client end; the monitor knows the child as a holder (FORKED,
from the library's fork hook).

Why park: the connecting thread owns a new end's words (``Token.claim``),
and it is none of the machine's threads.  TokenSharing's initial state is
a parked word (owner 0) held by the creator, P1: the creator's main thread,
still alone and outside any operation, stores 0 before the fork -- what
``Ring.set_token_word`` allows its creator before handing the ring out.

Each process prints one JSON line when it is ready, then answers one JSON
line per command:

``{"op": "call", "thread": T, "kind": "send", "codes": [..], "chunk": B}``
    thread T starts ``sendall`` of ``len(codes)`` chunks, chunk i being B
    bytes of value ``codes[i]``; answers ``{"ok": true}`` at once.
``{"op": "call", "thread": T, "kind": "recv", "n": N}``
    thread T starts ``recv(N)``; answers at once.
``{"op": "state"}``
    ``{"pid", "threads": {T: {"tid", "started", "in_call", "results"}},
    "tokens": {"send" | "recv": {"queue", "held", "asked"}}}``.  A queue
    names threads by T (``"agent"``: the agent's release; ``"tid:N"`` a
    thread that is not ours).  ``results`` lists the finished calls in
    order: ``{"call": c, "kind", "runs": [[byte, count], ..] | null,
    "error": str | null}`` (a recv's bytes run-length coded).
``{"op": "reap"}``
    P1 only: wait (bounded) for the killed child; ``{"ok": bool}``.

Calls run on a blocking socket: the machine checks the states in which the
token waits (a send on a full ring, a recv on an empty one); the driver's
waits are bounded and it kills both processes at the end.

``--patch`` plants a bug in this process's ``impl.token`` (the machine must
catch it):

``release-busy``
    ``Token._advance`` releases to the monitor even while the owner is
    BUSY: the token is granted before the in-flight send finished.
``take-ignores-busy``
    the first waiter's take (``sd_token_take`` in ``Token._wait_turn``) is
    an unconditional store of the word: two owners after a race.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import select
import sys
import threading

import impl
from impl import token as tokmod
from impl.token import AGENT, Token, agent

#: Bound on the reap of a killed child.
REAP_TIMEOUT = 10.0
#: Bound on taking a token's lock for a state report.
LOCK_TIMEOUT = 1.0


# -- planted bugs -----------------------------------------------------------------------
def _advance_while_busy(self: Token) -> None:
    """Token._advance without the BUSY check: RELEASE under a running operation."""
    if not self.queue or self.queue[0] is not AGENT:
        return
    if not self.held:
        self.queue.popleft()
        return
    p = self.endpoint._p
    w = tokmod._lib.sd_token_load(p)
    # (planted) the real one flags WANT and returns here while w & BUSY
    if tokmod._lib.sd_token_cas(p, w, 0) != 1:
        return
    self.queue.popleft()
    self.held = False
    agent.send_release(self.key)
    if self.queue:
        self._ask()
    self.cond.notify_all()


class _StoreTake:
    """impl.token's C library, with sd_token_take an unconditional store (planted)."""

    def __init__(self, lib) -> None:
        self._lib = lib

    def __getattr__(self, name: str):
        return getattr(self._lib, name)

    def sd_token_take(self, r, extra: int, spin_ns: int) -> int:
        lib = self._lib
        mine = lib.sd_token_self() << tokmod._SHIFT | tokmod._BUSY | (extra & tokmod._WANT)
        while True:     # store whatever the word holds, BUSY or not
            if lib.sd_token_cas(r, lib.sd_token_load(r), mine) == 1:
                return 1


def _plant(bug: str | None) -> None:
    if bug is None:
        return
    if bug == "release-busy":
        Token._advance = _advance_while_busy
    elif bug == "take-ignores-busy":
        tokmod._lib = _StoreTake(tokmod._lib)
    else:
        raise SystemExit(f"unknown --patch {bug!r}")


# -- the threads ------------------------------------------------------------------------
class Caller(threading.Thread):
    """One of the machine's threads: runs the socket calls it is given, one at a time."""

    def __init__(self, name: str, sock: impl.socket) -> None:
        super().__init__(name=name, daemon=True)
        self.sock = sock
        self.calls: queue.Queue = queue.Queue()
        self.lock = threading.Lock()
        self.tid = 0
        self.started = 0
        self.in_call = False
        self.results: list[dict] = []
        self.ready = threading.Event()

    def run(self) -> None:
        self.tid = tokmod.self_tid()
        self.ready.set()
        while True:
            cmd = self.calls.get()
            with self.lock:
                self.started += 1
                self.in_call = True
                n = self.started
            runs = err = None
            try:
                if cmd["kind"] == "send":
                    chunk = cmd["chunk"]
                    self.sock.sendall(b"".join(bytes([c]) * chunk for c in cmd["codes"]))
                else:
                    runs = _runs(self.sock.recv(cmd["n"]))
            except Exception as exc:   # reported, not raised: the driver judges
                err = f"{type(exc).__name__}: {exc}"
            with self.lock:
                self.results.append({"call": n, "kind": cmd["kind"], "runs": runs,
                                     "error": err})
                self.in_call = False

    def report(self) -> dict:
        with self.lock:
            return {"tid": self.tid, "started": self.started, "in_call": self.in_call,
                    "results": list(self.results)}


def _runs(data: bytes) -> list[list[int]]:
    """Run-length code of *data*: [[byte, count], ...]."""
    out: list[list[int]] = []
    for b in data:
        if out and out[-1][0] == b:
            out[-1][1] += 1
        else:
            out.append([b, 1])
    return out


# -- the process ------------------------------------------------------------------------
class Process:
    """One process's side: its threads, its tokens, its command loop."""

    def __init__(self, sock: impl.socket, names: list[str], child: int | None) -> None:
        self.sock = sock
        self.child = child
        self.callers = {n: Caller(n, sock) for n in names}
        for c in self.callers.values():
            c.start()
        for c in self.callers.values():
            c.ready.wait()
        self.names = {c.tid: n for n, c in self.callers.items()}

    def hello(self) -> dict:
        return {"pid": os.getpid(), "child": self.child, "cid": self.sock._conn.cid,
                "tids": {n: c.tid for n, c in self.callers.items()}}

    def call(self, thread: str, **cmd) -> dict:
        self.callers[thread].calls.put(cmd)
        return {"ok": True}

    def state(self) -> dict:
        send, recv = self.sock._conn.tokens()
        return {"pid": os.getpid(),
                "threads": {n: c.report() for n, c in self.callers.items()},
                "tokens": {"send": self._token(send), "recv": self._token(recv)}}

    def _token(self, tok: Token) -> dict:
        # Under its lock, so that queue, held and asked are one moment's; a
        # lock held for long (a bug) must not hang the report.
        locked = tok.cond.acquire(timeout=LOCK_TIMEOUT)
        try:
            q, held, asked = list(tok.queue), tok.held, tok.asked
        finally:
            if locked:
                tok.cond.release()
        names = ["agent" if x is AGENT else self.names.get(x, f"tid:{x}") for x in q]
        return {"queue": names, "held": held, "asked": asked}

    def reap(self) -> dict:
        if self.child is None:
            return {"ok": False}
        try:
            fd = os.pidfd_open(self.child)
        except ProcessLookupError:
            return {"ok": True}
        try:
            ready, _, _ = select.select([fd], [], [], REAP_TIMEOUT)
            if not ready:
                return {"ok": False}
            os.waitpid(self.child, 0)
        except ChildProcessError:
            pass
        finally:
            os.close(fd)
        self.child = None
        return {"ok": True}

    def serve(self, inp, out) -> None:
        out.write(json.dumps(self.hello()) + "\n")
        out.flush()
        for line in inp:
            cmd = json.loads(line)
            op = cmd.pop("op")
            try:
                reply = getattr(self, op)(**cmd)
            except Exception as exc:
                reply = {"error": f"{type(exc).__name__}: {exc}"}
            out.write(json.dumps(reply) + "\n")
            out.flush()


def connect(addr: str, ring: int) -> impl.socket:
    """The shared socket: rings of *ring* bytes, both token words parked."""
    s = impl.socket(impl.AF_UNIX, impl.SOCK_STREAM)
    s.setsockopt(impl.SOL_SOCKET, impl.SO_SNDBUF, ring)
    s.setsockopt(impl.SOL_SOCKET, impl.SO_RCVBUF, ring)
    # An abstract AF_UNIX name travels on the command line as "@name".
    s.connect("\0" + addr[1:] if addr.startswith("@") else addr)
    conn = s._conn
    if conn.tx.capacity != ring or conn.rx.capacity != ring:
        raise SystemExit(f"rings of {conn.tx.capacity} and {conn.rx.capacity} bytes, "
                         f"asked for {ring}")
    send, recv = conn.tokens()
    if send is None:
        raise SystemExit("this socket checks no tokens (the pure-Python ring backend)")
    # TokenSharing!Init: parked words, held by the creator (see the module docstring).
    conn.tx.set_token_word("writer", 0)
    conn.rx.set_token_word("reader", 0)
    return s


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--addr", required=True)
    ap.add_argument("--ring", type=int, required=True)
    ap.add_argument("--threads", required=True, help="P1's threads, comma-separated")
    ap.add_argument("--child-threads", required=True, help="P2's threads")
    ap.add_argument("--child-fds", required=True, help="P2's command and reply fds: IN,OUT")
    ap.add_argument("--patch", default=None)
    args = ap.parse_args()
    _plant(args.patch)
    cin, cout = (int(x) for x in args.child_fds.split(","))
    sock = connect(args.addr, args.ring)
    pid = os.fork()
    if pid == 0:
        # P2: its own pipes; the parent's stdin and stdout are not ours.
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(null, 1)
        os.close(null)
        try:
            with os.fdopen(cin, "r") as inp, os.fdopen(cout, "w") as out:
                Process(sock, args.child_threads.split(","), None).serve(inp, out)
        finally:
            os._exit(0)
    os.close(cin)
    os.close(cout)
    Process(sock, args.threads.split(","), pid).serve(sys.stdin, sys.stdout)
    # Daemon threads may sit in a blocking call: leave without joining them.
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
