"""The processes of the fork machine: Root, and every process forked from it on command.

``python -m tests.fork_worker --addr @NAME --chan FD --base B --ring BYTES
[--plant BUG]`` is Root.  It connects a socksdirect socket to the abstract
AF_UNIX address *NAME* (a send ring of *BYTES*), moves the socket's
descriptor to *B* (the model's fd 0), and is driven over *FD*, a
SOCK_SEQPACKET socket to the driver: one JSON command per message, one
JSON answer per message.  Every process it
forks is driven the same way, over a new socket pair made for it just
before the fork (the child keeps one end, the driver gets the other with
the answer, by SCM_RIGHTS); the child closes the channel of its parent.

Descriptors.  The model's ``Fds`` are the window ``B .. B+N-1``: model fd
f is real fd B+f.  The kernel gives the lowest free descriptor, and so
does the model's Dup; the two agree when every descriptor below B is taken
at the moment of the dup.  So Dup first fills every free descriptor below
B with /dev/null (fillers), then calls ``socket.dup()`` -- the kernel
chooses -- and closes the fillers.  Everything else (the library's control
and agent channels, hold pipes, the command channels) opens its
descriptors when no fillers are there, so they go below B, where there is
always room (B is far above what a worker opens), and never into the
window.  Hence the real fd numbers of the sockets map one to one, order and
gaps kept, onto the model's; a fd the process holds outside the window
shows as itself, which no model state has.

Commands (``op`` and arguments) and answers:

``state``
    ``{"pid", "ppid", "fds": {fd: [id, end]}, "resources": {name: pid|null},
    "owners": {name: pid|null}, "tokens": {"id/end": {"held", "queue",
    "asked"}}, "sender": {"tid", "started": {"id/end": n}, "in_call",
    "results"}, "lowest_free"}``: every descriptor of the process that names
    an open ring socket (``impl.socket_for_fd``) with its end; its
    per-process resources as ``impl.fork.resources()`` reports them and as
    its memory holds them (``owners``: whose object it is, the parent's
    included); the send token of each end it holds; the send calls and
    their outcomes.
``fork {"when_busy"}``
    fork; answers ``{"pid", "before"}`` with the driver's end of the
    child's channel attached.  With *when_busy* it first waits (bounded)
    until its sender is inside a send call with the token BUSY, or has no
    call left.  ``before`` is what the sender did just before the fork
    (``in_call``, ``busy``, ``started``, ``queued``).  The child says
    ``{"pid", "ppid", "hello": true, "at_fork"}`` first, ``at_fork`` being
    its copy of the sender's ``in_call`` and ``started``: the moment of the
    fork itself.
``dup {"fd"}`` / ``close {"fd"}``
    ``socket.dup()`` of the socket on real fd *fd* (``{"fd": new}``) /
    ``close()`` of it.
``send {"fd", "codes", "chunk"}``
    the process's sender thread starts ``sendall`` of ``len(codes)``
    chunks, chunk i being *chunk* copies of byte ``codes[i]``, on the
    socket of *fd*; answers at once.

A process ignores SIGCHLD, so its children that die are reaped by the
kernel; the driver kills processes itself (a pidfd each).

``--plant BUG`` installs a planted bug by name (:mod:`tests.planted_fork`)
before anything else; the processes forked later inherit it.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import socket as _stdsocket
import sys
import threading
import time
import traceback

import impl
from impl.ring import layout

#: Largest message on a command channel.
MSG_MAX = 1 << 16
#: Bound on waiting for the sender to be inside its call (fork when_busy).
BUSY_WAIT = 5.0


class Sender(threading.Thread):
    """The process's one sending thread: runs the send calls it is given, one at a time.

    Sends run in a thread so that the process keeps answering (and can
    fork) while a call waits for the token.  A forked child has none of its
    parent's threads; it starts its own on its first send.
    """

    def __init__(self) -> None:
        super().__init__(name="fork-worker-sender", daemon=True)
        self.calls: queue.Queue = queue.Queue()
        self.lock = threading.Lock()
        self.tid = 0
        self.started: dict[str, int] = {}
        self.in_call = False
        self.results: list[dict] = []
        self.ready = threading.Event()

    def run(self) -> None:
        """Run the queued calls in order, recording each one's outcome."""
        self.tid = threading.get_native_id()
        self.ready.set()
        while True:
            sock, key, data = self.calls.get()
            with self.lock:
                self.started[key] = self.started.get(key, 0) + 1
                self.in_call = True
                n = self.started[key]
            err = None
            try:
                sock.sendall(data)
            except Exception as exc:   # reported, not raised: the driver judges
                err = f"{type(exc).__name__}: {exc}"
            with self.lock:
                self.results.append({"end": key, "call": n, "error": err})
                self.in_call = False

    def report(self) -> dict:
        """Its thread id, calls started per end, whether it is in one, the outcomes."""
        with self.lock:
            return {"tid": self.tid, "started": dict(self.started), "in_call": self.in_call,
                    "results": list(self.results)}


def end_key(sock: impl.socket) -> str:
    """``"id/end"``: the monitor's name of the end a ring socket holds."""
    conn = sock._conn
    return f"{conn.cid}/{conn.end}"


def ring_fds() -> dict[int, impl.socket]:
    """Every descriptor of this process that names an open ring socket, and the socket."""
    out = {}
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        sock = impl.socket_for_fd(fd)
        if sock is not None and sock._conn is not None:
            out[fd] = sock
    return out


def lowest_free() -> int:
    """The descriptor the kernel would give next."""
    used = {int(n) for n in os.listdir("/proc/self/fd")}
    fd = 0
    while fd in used:
        fd += 1
    return fd


def dup_lowest(sock: impl.socket, base: int) -> impl.socket:
    """``sock.dup()`` with every descriptor below *base* taken: the kernel's lowest free fd.

    The fillers make the window start at *base*: the dup gets the lowest free
    descriptor at or above it, chosen by the kernel, not by us.
    """
    fillers = []
    try:
        while True:
            fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            if fd >= base:
                os.close(fd)
                break
            fillers.append(fd)
        return sock.dup()
    finally:
        for fd in fillers:
            os.close(fd)


class Worker:
    """One process of the machine: its sockets (by fd), its sender, its command loop."""

    def __init__(self, chan: _stdsocket.socket, base: int) -> None:
        self.chan = chan
        self.base = base
        self.sender: Sender | None = None
        # Strong references: a socket object that nobody holds is closed by
        # the garbage collector (and the end with it).
        self.keep: dict[int, impl.socket] = ring_fds()

    # -- the commands --------------------------------------------------------------
    def state(self) -> dict:
        """The ``state`` command (see the module docstring)."""
        fds = ring_fds()
        tokens = {}
        for sock in fds.values():
            key = end_key(sock)
            send, _ = sock._conn.tokens()
            if key in tokens or send is None:
                continue
            locked = send.cond.acquire(timeout=1.0)
            try:
                q, held, asked = list(send.queue), send.held, send.asked
            finally:
                if locked:
                    send.cond.release()
            tokens[key] = {"held": held, "asked": asked,
                           "queue": [x if isinstance(x, int) else str(x) for x in q]}
        return {"pid": os.getpid(), "ppid": os.getppid(),
                "fds": {str(fd): end_key(s).split("/") for fd, s in fds.items()},
                "resources": _resources(), "owners": _owners(), "tokens": tokens,
                "sender": self.sender.report() if self.sender else
                {"tid": 0, "started": {}, "in_call": False, "results": []},
                "lowest_free": lowest_free()}

    def dup(self, fd: int) -> dict:
        """The ``dup`` command: the new fd is the kernel's choice (see dup_lowest)."""
        new = dup_lowest(self._sock(fd), self.base)
        fd = _stdsocket.socket.fileno(new)   # not fileno(): that arms the eventfd
        self.keep[fd] = new
        return {"fd": fd}

    def close(self, fd: int) -> dict:
        """The ``close`` command."""
        sock = self._sock(fd)
        self.keep.pop(fd, None)
        sock.close()
        return {"ok": True}

    def send(self, fd: int, codes: list[int], chunk: int) -> dict:
        """The ``send`` command: queue one sendall for the sender thread."""
        sock = self._sock(fd)
        if self.sender is None:
            self.sender = Sender()
            self.sender.start()
            self.sender.ready.wait(10.0)
        self.sender.calls.put((sock, end_key(sock),
                               b"".join(bytes([c]) * chunk for c in codes)))
        return {"ok": True}

    def _sock(self, fd: int) -> impl.socket:
        sock = impl.socket_for_fd(fd)
        if sock is None or sock._conn is None:
            raise OSError(f"no ring socket on fd {fd} in pid {os.getpid()}")
        return sock

    def fork(self, when_busy: bool = False) -> tuple[dict, list[int]]:
        """The ``fork`` command; the child serves its own channel and never returns."""
        before = self._wait_busy() if when_busy else self._sending()
        mine, theirs = _stdsocket.socketpair(_stdsocket.AF_UNIX, _stdsocket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:
            try:
                # The child: what its copy of the sender says is the moment of
                # the fork (read without the lock: no other thread runs here).
                s = self.sender
                snap = {"in_call": s is not None and s.in_call,
                        "started": dict(s.started) if s is not None else {}}
                # Its own channel; the parent's, and its sender, are not its.
                self.chan.close()
                mine.close()
                self.chan = theirs
                self.sender = None
                self.keep = ring_fds()
                self.reply({"pid": os.getpid(), "ppid": os.getppid(), "hello": True,
                            "at_fork": snap})
                self.serve()
            finally:
                os._exit(0)
        theirs.close()
        self._pass = mine       # closed once the answer (with its copy) is sent
        return {"pid": pid, "before": before}, [mine.fileno()]

    def _sending(self) -> dict:
        """What the sender does now: in a call?  BUSY with the send token?  Calls started."""
        s = self.sender
        if s is None:
            return {"in_call": False, "busy": False, "started": {}, "queued": 0}
        with s.lock:
            in_call, started = s.in_call, dict(s.started)
        busy = False
        for sock in ring_fds().values():
            w = sock._conn.tx.token_word("writer")
            busy = busy or bool(w & layout.TOKEN_BUSY and w >> layout.TOKEN_SHIFT == s.tid)
        return {"in_call": in_call, "busy": busy and in_call, "started": started,
                "queued": s.calls.qsize()}

    def _wait_busy(self) -> dict:
        """Wait (bounded) until the sender is BUSY in a call, or has none left to make."""
        deadline = time.monotonic() + BUSY_WAIT
        while True:
            now = self._sending()
            if now["busy"] or (not now["in_call"] and not now["queued"]):
                return now
            if time.monotonic() > deadline:
                return now
            time.sleep(0)   # let the sender run: a bounded spin, not a sync

    # -- the loop ------------------------------------------------------------------
    def reply(self, body: dict, fds: list[int] = ()) -> None:
        """Send one answer (with *fds* attached) to the driver."""
        data = json.dumps(body).encode()
        if fds:
            _stdsocket.send_fds(self.chan, [data], list(fds))
        else:
            self.chan.send(data)

    def serve(self) -> None:
        """Answer commands until the driver closes the channel."""
        while True:
            data = self.chan.recv(MSG_MAX)
            if not data:
                return
            cmd = json.loads(data)
            op = cmd.pop("op")
            fds: list[int] = []
            self._pass = None
            try:
                out = getattr(self, op)(**cmd)
                if isinstance(out, tuple):
                    out, fds = out
            except Exception as exc:
                out = {"error": f"{type(exc).__name__}: {exc}",
                       "trace": traceback.format_exc(limit=4)}
            self.reply(out, fds)
            if self._pass is not None:
                self._pass.close()


def _resources() -> dict:
    """impl.fork.resources(), or why not."""
    try:
        from impl import fork
        return dict(fork.resources())
    except Exception as exc:   # an older library: the driver reports it
        return {"?": f"{type(exc).__name__}: {exc}"}


def _owners() -> dict:
    """Whose object each per-process resource of this process's memory is (pid or None).

    Read from impl.fork's registry itself: resources() reports only the
    process's own, and the machine must see a parent's one too.
    """
    try:
        from impl import fork
        return {name: r._pid if r._obj is not None else None
                for name, r in fork._registry.items()}
    except Exception as exc:   # an older library: the driver reports it
        return {"?": f"{type(exc).__name__}: {exc}"}


def connect(addr: str, base: int, ring: int) -> impl.socket:
    """Root's socket (send ring of *ring* bytes), its descriptor moved to *base* (fd 0)."""
    s = impl.socket(impl.AF_UNIX, impl.SOCK_STREAM)
    s.setsockopt(impl.SOL_SOCKET, impl.SO_SNDBUF, ring)
    # An abstract AF_UNIX name travels on the command line as "@name".
    s.connect("\0" + addr[1:] if addr.startswith("@") else addr)
    if s.transport != "ring":
        raise SystemExit(f"the socket is a {s.transport} socket, not a ring")
    moved = dup_lowest(s, base)
    s.close()
    fd = _stdsocket.socket.fileno(moved)
    if fd != base:
        raise SystemExit(f"the socket went to fd {fd}, not {base}")
    return moved


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--addr", required=True)
    ap.add_argument("--chan", type=int, required=True, help="the command channel's fd")
    ap.add_argument("--base", type=int, required=True, help="real fd of the model's fd 0")
    ap.add_argument("--ring", type=int, required=True, help="bytes of the send ring")
    ap.add_argument("--plant", default=None, help="a bug of tests.planted_fork")
    args = ap.parse_args()
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)   # dead children reaped by the kernel
    if args.plant:
        from tests import planted_fork
        planted_fork.install(args.plant)
    chan = _stdsocket.socket(fileno=args.chan)
    sock = connect(args.addr, args.base, args.ring)
    w = Worker(chan, args.base)
    w.reply({"pid": os.getpid(), "ppid": os.getppid(), "hello": True,
             "cid": sock._conn.cid, "end": sock._conn.end})
    del sock
    w.serve()
    sys.stdout.flush()
    # The sender may sit in a blocking call: leave without joining it.
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
