"""Real fork() of processes sharing one socket end, against the Fork model.

A Hypothesis state machine drives real processes (``tests/fork_worker.py``)
through a private monitor.  Root (``p1``) holds the client end ``s1`` of a
socksdirect connection; the test process holds the server end and plays
the peer.  The machine takes the model's *external* actions
(``spec.fork.EXTERNAL``, which mirrors ``Fork.tla``):

* ``Fork(p, c)``: worker p calls ``os.fork()``; the child becomes worker c,
  driven over a new command channel that p made just before the fork;
* ``Dup(p, f)`` / ``Close(p, f)``: ``socket.dup()`` / ``close()`` in p;
* ``Die(p)``: SIGKILL (through a pidfd: never a recycled pid);
* ``PeerRead(s1)``: the test process reads one model byte of the ring.

Send calls are the model's *internal* business (Ask, Handover, SendStart,
Write, SendEnd): every live holder of an end makes ``Calls`` calls on it.
So after each action the machine tells every process that holds the end
and has calls left to make them (a ``sendall`` in its sender thread), and
the implementation does the rest by itself -- the TAKE, RECALL, RELEASE
and GRANT of the token, the writes.  Then, as in the token machine, the
model's internal actions are explored from the new state to every
quiescent state and the machine waits, bounded, until the implementation's
observed state (:meth:`ForkMachine.abstract`, the refinement mapping)
equals one of them twice in a row.  The model's path to it is the trace,
and every run's trace is replayed by TLC against ``Fork.tla`` at the end,
all runs in one batch.

A fork while a send is under way.  At rest no call is under way (Write and
SendEnd are internal), so now and then the machine forks twice in one
step: ``Fork(p, c)``, then at once ``Fork(c, d)`` while c makes its first
send call -- c forks as soon as its token word says BUSY for its sender
(bounded).  The model's candidates are then every state reachable by
internal steps, ``Fork(p, c)``, internal steps, ``Fork(c, d)``, internal
steps.  c reports whether its sender was BUSY just before ``os.fork()``,
and d its copy of the sender's state, which is c's memory at the instant
of the fork: BUSY before and still in the same call at the fork, and only
paths on which the model's ``Fork(c, d)`` happens with ``busy = c`` count
(in no call before and at the fork: only paths with ``busy # c``).

Resources: the library makes a process's resource on first use (a
child's FORKED, a TAKE, a CLOSE), the model's CreateResource once the
process holds an end: in both, a process that holds none never makes one.

Descriptors: the model's fd f is the real fd ``BASE + f`` of a worker;
see ``tests/fork_worker.py`` for why this window maps the kernel's lowest
free fd exactly onto the model's (a rank among the worker's socket fds
would not: after closing the middle of three fds the ranks of the other
two are 0 and 1, the model's fds 0 and 2).  A socket fd outside the
window shows as an entry after the model's fds: no model state has it.

Observation (each quantity from the implementation, none from the model):
each live worker's ring-socket fds and their ends (``impl.socket_for_fd``),
the owners of its per-process resources (``impl.fork``'s registry: whose
object its memory refers to -- not only ``resources()``, which reports
only its own), its send token's ``held``, its send calls; its parent
(getppid at its start); whether it is alive (its pidfd); the monitor's
STATUS: the end's holders (known), whether it is closed (monClosed), the
send token's holder and queue (tok, queue); from the test process's own
mapping of the ring: its bytes (ring), its token word (busy: BUSY and the
owner thread, a worker's sender) and its ``closed_wr`` flag (eof).  What
the machine cannot read is what it did itself or what a dead process
knew: born (it forked them), peerGot (the bytes it read), and a dead
process's res, pheld and calls (as last seen).  ``pending`` is empty for
every process: a child's FORKED is a request made in the library's fork
hook, answered before the child runs the worker's code (which says hello
first), and the machine waits for the hello.

Checks on top of the comparison at rest: right after a Fork, the child's
fd table equals its parent's (ForkCopiesTable, observed directly), and no
send call fails.  Besides the random runs, a few openings that random runs
seldom take whole (:data:`SCRIPTS`) run a few times each; four planted
bugs (``tests/planted_fork.py``) must each be reported.

Processes: every worker ignores SIGCHLD (the kernel reaps its dead
children); the test process is a child subreaper while a machine runs, so
a worker whose parent was killed is its own to reap.
"""

from __future__ import annotations

import ctypes
import json
import os
import random
import re
import select
import signal
import socket as _stdsocket
import subprocess
import sys
import time
import uuid
from collections import Counter, deque

import pytest
from hypothesis import HealthCheck, Phase, note, settings
from hypothesis import strategies as st
from hypothesis.errors import FlakyFailure, FlakyStrategyDefinition, InvalidArgument
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

import impl
from impl.ring import HAVE_C, layout
from spec import fork as M
from spec import tracecheck
from spec.configs import TLA_DIR
from tests.gates import needs_tlc
from tests.monitor_util import ROOT, running_monitor

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not HAVE_C, reason="needs the compiled ring module (tokens are "
                       "checked in C only): python impl/ring/_build.py"),
]

PARAMS = M.Params(Procs=("p1", "p2", "p3"), Root="p1", Fds=(0, 1, 2), Socks=("s1",),
                  CallLen=2, Calls=1, Mortal=("p1", "p2", "p3"))
ROOT_P = PARAMS.Root
S1 = PARAMS.Socks[0]
#: Real fd of the model's fd 0 in every worker (far above what a worker opens).
BASE = 64
#: Bytes per model byte.  Large, so that a send call lasts long enough to fork
#: inside it; the ring holds every byte the run can write (the model's ring
#: has no bound, so the real one must never fill).
CHUNK = 2 << 20
RING = len(PARAMS.Procs) * PARAMS.Calls * PARAMS.CallLen * CHUNK
#: Bound on waiting for the implementation to come to rest after a step.
SETTLE = 10.0
#: Bound on one answer of a worker.
ANSWER = 30.0
#: Most states explored after one step (a runaway is a bug).
MAX_CLOSURE = 50_000
EXTERNAL = frozenset(M.EXTERNAL)
INTERNAL = frozenset(M.INTERNAL)
#: PR_SET_CHILD_SUBREAPER: orphaned workers (their parent killed) become ours to reap.
_PR_SET_CHILD_SUBREAPER = 36

TRACES: list[list[tracecheck.Event]] = []
#: Every mismatch reported, newest last (see machine_failure).
FAILURES: list[str] = []
COVERAGE: Counter[str] = Counter()
#: SCRIPT -> how many runs took it whole.
SCRIPTS_DONE: Counter[tuple] = Counter()


def code(p: str, c: int, j: int) -> int:
    """The byte value of model byte ``<<p, c, j>>``: byte j of p's send call c."""
    assert c < 8 and j < 8, "Calls and CallLen must stay below 8 for this encoding"
    return PARAMS.proc(p) << 6 | c << 3 | j


def decode(b: int) -> tuple[str, int, int] | str:
    """Inverse of :func:`code`; a string (never a model byte) for no valid code."""
    i, c, j = b >> 6, b >> 3 & 7, b & 7
    if i >= len(PARAMS.Procs) or not 1 <= c <= PARAMS.Calls or not 1 <= j <= PARAMS.CallLen:
        return f"?byte {b}"
    return (PARAMS.Procs[i], c, j)


def chunk_value(part: bytes) -> tuple[str, int, int] | str:
    """The model byte of one chunk (CHUNK copies of one code), or a string saying what's wrong."""
    if len(part) != CHUNK:
        return f"?short chunk of {len(part)} bytes"
    if part.count(part[:1]) != CHUNK:
        return "?torn chunk"
    return decode(part[0])


def _set_subreaper(on: bool) -> None:
    """Make this process the reaper of orphaned descendants (Linux; best effort)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0)
    except (OSError, AttributeError):
        pass


def internal_steps(s: M.State) -> list[tuple[M.Label, M.State]]:
    """The model's internal steps from *s*: the implementation takes them by itself."""
    return list(M.internal_steps(PARAMS, s))


def at_rest(s: M.State) -> bool:
    """No step of :func:`internal_steps` is enabled: only the driver can move *s* on."""
    return not internal_steps(s)


class Worker:
    """One worker process: JSON commands over a SOCK_SEQPACKET channel, every read bounded."""

    def __init__(self, name: str, chan: _stdsocket.socket) -> None:
        self.name = name
        self.chan = chan
        self.hello = self._read(f"{name}'s start")[0]
        self.pid: int = self.hello["pid"]
        self.pidfd = os.pidfd_open(self.pid)
        self.alive = True

    def _read(self, what: str) -> tuple[dict, list[int]]:
        ready, _, _ = select.select([self.chan], [], [], ANSWER)
        assert ready, f"{self.name} did not answer {what} within {ANSWER} s"
        data, fds, _, _ = _stdsocket.recv_fds(self.chan, 1 << 16, 4)
        assert data, f"{self.name} died during {what}"
        return json.loads(data), fds

    def call(self, op: str, **args) -> dict:
        """Send one command; return its answer (a worker's exception fails the step)."""
        out, fds = self.call_fds(op, **args)
        for fd in fds:
            os.close(fd)
        return out

    def call_fds(self, op: str, **args) -> tuple[dict, list[int]]:
        """Like :meth:`call`, with the descriptors that came with the answer."""
        self.chan.send(json.dumps({"op": op, **args}).encode())
        out, fds = self._read(f"{op} {args}")
        assert "error" not in out, f"{self.name}: {op} {args} failed: {out['error']}\n" \
                                   f"{out.get('trace', '')}"
        return out, fds

    def dead(self) -> bool:
        """Has the process exited (its pidfd is readable)?"""
        ready, _, _ = select.select([self.pidfd], [], [], 0)
        return bool(ready)

    def kill(self) -> None:
        """SIGKILL, and wait (bounded) until it has exited."""
        try:
            signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
        except ProcessLookupError:
            pass
        ready, _, _ = select.select([self.pidfd], [], [], ANSWER)
        assert ready, f"{self.name} (pid {self.pid}) still runs {ANSWER} s after SIGKILL"
        self.alive = False

    def close(self) -> None:
        """Close the channel and the pidfd (the process is gone by now)."""
        self.chan.close()
        os.close(self.pidfd)


class ForkMachine(RuleBasedStateMachine):
    """Drive fork, dup, close and death with the model's actions; compare at every rest."""

    #: A bug of tests.planted_fork for the workers, or None.
    PLANT: str | None = None
    #: Keep the runs for TLC's replay (not those of a planted bug).
    RECORD = True
    #: Driver actions to take first, in order, each when enabled (a set of the
    #: labels that will do); a label "Fork(p, c)+Fork(c, d)" is a double fork.
    SCRIPT: tuple[frozenset[str], ...] = ()
    #: Bound on waiting for rest after a step (a planted bug's run fails sooner).
    SETTLE_S: float = SETTLE

    @initialize()
    def start(self) -> None:
        """A monitor, a listener, Root connected to it; then Root's sends, and rest."""
        _set_subreaper(True)
        self._mon_cm = running_monitor()
        self.mon = self._mon_cm.__enter__()
        self.workers: dict[str, Worker] = {}
        self.root_proc = self.srv = self.lst = None
        addr = f"\0sdfork-{uuid.uuid4().hex[:12]}"
        self.lst = impl.socket(impl.AF_UNIX, impl.SOCK_STREAM)
        self.lst.setsockopt(impl.SOL_SOCKET, impl.SO_RCVBUF, RING)
        self.lst.bind(addr)
        self.lst.listen(1)
        self.lst.settimeout(ANSWER)
        self._start_root(addr)
        self.srv, _ = self.lst.accept()
        self.srv.settimeout(SETTLE)
        conn = self.srv._conn
        root = self.workers[ROOT_P]
        assert conn.cid == root.hello["cid"], "accepted someone else's connection"
        assert root.hello["end"] == "client"
        self.cid = conn.cid
        self.ring = conn.rx             # the ring the client end writes
        assert self.ring.capacity >= RING, f"a ring of {self.ring.capacity} bytes"
        self.peer_got: list = []
        self.issued: dict[str, int] = {p: 0 for p in PARAMS.Procs}
        self.last_report: dict[str, dict] = {}
        self.last_rest: M.State | None = None
        self.actions: list[str] = []
        self.state = M.init_states(PARAMS)[0]
        self.trace = [tracecheck.Event("Init", (), M.to_tla_state(PARAMS, self.state))]
        self.issue_sends()
        self.settle("the start", self.candidates(self.state, []))

    def _start_root(self, addr: str) -> None:
        mine, theirs = _stdsocket.socketpair(_stdsocket.AF_UNIX, _stdsocket.SOCK_SEQPACKET)
        cmd = [sys.executable, "-m", "tests.fork_worker", "--addr", "@" + addr[1:],
               "--chan", str(theirs.fileno()), "--base", str(BASE), "--ring", str(RING)]
        if self.PLANT:
            cmd += ["--plant", self.PLANT]
        env = dict(os.environ, PYTHONPATH=str(ROOT), SOCKSDIRECT_AUTOSTART="0")
        try:
            self.root_proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, env=env,
                                              cwd=str(ROOT), pass_fds=(theirs.fileno(),))
        finally:
            theirs.close()
        self.workers[ROOT_P] = Worker(ROOT_P, mine)

    def teardown(self) -> None:
        """Kill and reap every worker, close the sockets, stop the monitor; keep the trace."""
        for w in getattr(self, "workers", {}).values():
            if w.alive and not w.dead():
                try:
                    signal.pidfd_send_signal(w.pidfd, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                select.select([w.pidfd], [], [], ANSWER)
        if getattr(self, "root_proc", None) is not None:
            self.root_proc.wait(timeout=ANSWER)
        for w in getattr(self, "workers", {}).values():
            if w.name != ROOT_P:
                try:    # an orphan (its parent killed) is ours: reap it
                    os.waitpid(w.pid, os.WNOHANG)
                except ChildProcessError:
                    pass
            w.close()
        for s in (getattr(self, "srv", None), getattr(self, "lst", None)):
            if s is not None:
                s.close()
        if hasattr(self, "_mon_cm"):
            self._mon_cm.__exit__(None, None, None)
        _set_subreaper(False)
        if self.RECORD and getattr(self, "trace", None) and len(self.trace) > 1:
            TRACES.append(self.trace)

    # -- observation: the refinement mapping -----------------------------------------
    def observe(self) -> dict:
        """Everything the mapping reads, from the implementation (and what the peer got)."""
        dead = {p for p, w in self.workers.items() if not w.alive or w.dead()}
        for p, w in self.workers.items():
            if p not in dead:
                try:
                    self.last_report[p] = w.call("state")
                except AssertionError:
                    if not w.dead():
                        raise
                    dead.add(p)     # died while asked: seen as dead
                    continue
                self._check_resources(p, self.last_report[p])
                low = self.last_report[p]["lowest_free"]
                assert low < BASE, f"{p} has every fd below {BASE} in use: the fd window " \
                                   f"no longer maps the kernel's lowest free fd"
        q = self.ring._q
        return {
            "dead": dead,
            # The flag before the word and the bytes: closed_wr is stored after
            # the writer's last tail, so bytes read after it are all there are.
            "closed_wr": bool(q[layout.word(layout.OFF_CLOSED_WR)]),
            "word": self.ring.token_word("writer"),
            "ring": self._ring_bytes(),
            "reports": dict(self.last_report),
            "status": self.mon.status(),
        }

    @staticmethod
    def _check_resources(p: str, rep: dict) -> None:
        """impl.fork.resources() names the process's own resources, and no one else's."""
        want = {k: (v if v == rep["pid"] else None) for k, v in rep["owners"].items()}
        assert rep["resources"] == want, \
            f"{p}: impl.fork.resources() says {rep['resources']}, its registry holds {want}"

    def _ring_bytes(self) -> tuple:
        """The model bytes in the ring (head to tail), one per chunk, from our own mapping."""
        ring = self.ring
        q, cap = ring._q, ring.capacity
        head, tail = q[layout.word(layout.OFF_HEAD)], q[layout.word(layout.OFF_TAIL)]
        if not 0 <= tail - head <= cap:
            return ("?positions moved",)
        data = ring._mem[layout.DATA_OFF:layout.DATA_OFF + cap]
        out = []
        for pos in range(head, tail, CHUNK):
            n = min(CHUNK, tail - pos)
            start = pos % cap
            if start + n <= cap:
                part = bytes(data[start:start + n])
            else:
                part = bytes(data[start:]) + bytes(data[:n - (cap - start)])
            out.append(chunk_value(part))
        data.release()
        return tuple(out)

    def abstract(self, obs: dict) -> M.State:
        """The spec's variables from the observation: the refinement mapping.

        See the module docstring for where each comes from.  A process's
        ``res`` is the process whose resource its memory refers to: NoProc
        when it has none, the owner of a made resource that is not its own
        if there is one (that is the bug to see), else itself.
        """
        par = PARAMS
        reports, dead = obs["reports"], obs["dead"]
        name_of = {w.pid: p for p, w in self.workers.items()}

        def name(pid: int | None) -> str | None:
            return None if pid is None else name_of.get(pid, f"?pid {pid}")

        born = frozenset(self.workers)
        alive = frozenset(p for p in born if p not in dead)
        parent, fdt, res, pheld, calls = [], [], [], [], []
        last = self.last_rest
        for i, p in enumerate(par.Procs):
            w = self.workers.get(p)
            if w is None:
                parent.append(None)
                fdt.append((None,) * len(par.Fds))
                res.append(None)
                pheld.append(frozenset())
                calls.append((0,) * len(par.Socks))
                continue
            parent.append(None if p == ROOT_P else name(w.hello["ppid"]))
            if p not in alive:
                # The kernel closed its fds; what its memory held is as last seen.
                fdt.append((None,) * len(par.Fds))
                res.append(last.res[i] if last else None)
                pheld.append(last.pheld[i] if last else frozenset())
                calls.append(last.calls[i] if last else (0,) * len(par.Socks))
                continue
            rep = reports[p]
            fdt.append(self._table(rep["fds"]))
            res.append(self._res(p, rep["owners"], name))
            key = f"{self.cid}/client"
            tok = rep["tokens"].get(key)
            pheld.append(frozenset({S1}) if tok is not None and tok["held"] else frozenset())
            calls.append((rep["sender"]["started"].get(key, 0),))
        known, closed, holder, queue = self._monitor(obs["status"], name)
        word = obs["word"]
        busy = None
        if word & layout.TOKEN_BUSY:
            tid = word >> layout.TOKEN_SHIFT
            busy = next((p for p, r in self.last_report.items() if r["sender"]["tid"] == tid),
                        f"?tid {tid}")
        return M.State(
            born=born, alive=alive, parent=tuple(parent), fdt=tuple(fdt), res=tuple(res),
            pending=(frozenset(),) * len(par.Procs),
            known=(known,), monClosed=(closed,), eof=(obs["closed_wr"],),
            pheld=tuple(pheld), tok=(holder,), queue=(queue,), busy=(busy,),
            calls=tuple(calls), ring=(obs["ring"],), peerGot=(tuple(self.peer_got),))

    def _table(self, fds: dict) -> tuple:
        """A worker's fd table in the model's terms: real fd BASE + f is the model's f.

        A socket fd outside the window, or one of another end, is kept as a
        string after the model's fds: no model state has one.
        """
        table: list = [None] * len(PARAMS.Fds)
        extra = []
        for fd, (cid, end) in sorted(fds.items(), key=lambda kv: int(kv[0])):
            f = int(fd) - BASE
            end_name = S1 if (int(cid), end) == (self.cid, "client") else f"?end {cid}/{end}"
            if f in PARAMS.Fds:
                table[PARAMS.fd(f)] = end_name
            else:
                extra.append(f"?fd {fd} -> {end_name}")
        return tuple(table) + tuple(extra)

    @staticmethod
    def _res(p: str, owners: dict, name) -> str | None:
        made = {name(pid) for pid in owners.values() if pid is not None}
        if "?" in owners:
            return f"?resources: {owners['?']}"
        foreign = sorted(x for x in made if x != p)
        if foreign:
            return foreign[0]
        return p if made else None

    def _monitor(self, status: dict, name) -> tuple:
        """known, monClosed, tok and queue of the client end, from STATUS."""
        conn = next((c for c in status["connections"] if c["id"] == self.cid), None)
        if conn is None:
            return frozenset(), True, None, ()     # both ends closed: the state is gone
        closed = conn["client_side"] == "closed"
        known = frozenset(name(pid) for pid in conn["holders"]["client"])
        row = next((r for r in status["tokens"] if r["id"] == self.cid
                    and r["end"] == "client" and r["dir"] == "send"), None)
        if row is None:
            # No row yet: the token is with the end's maker while it holds the end.
            origin = self.workers[ROOT_P].pid
            holder = ROOT_P if origin in conn["holders"]["client"] else None
            return known, closed, holder, ()
        return known, closed, name(row["holder"]), tuple(name(x) for x in row["queue"])

    # -- the model side -----------------------------------------------------------------
    def candidates(self, start: M.State, labels: list[tuple[M.Label, object]]
                   ) -> tuple[dict, int]:
        """Every state reachable from *start* by internal steps around the external *labels*.

        Breadth first over (state, how many of *labels* taken); each label
        comes with a guard on the state it is taken in (or None).  Returns
        node -> (parent node, label) for every node, and len(labels).
        """
        n = len(labels)
        parents: dict = {(start, 0): None}
        todo = deque([(start, 0)])
        while todo:
            node = todo.popleft()
            s, k = node
            moves = internal_steps(s)
            if k < n:
                lab, guard = labels[k]
                nxt = M.step(PARAMS, s, lab)
                if nxt is not None and (guard is None or guard(s)):
                    moves.append((lab, nxt))
            for lab, nxt in moves:
                child = (nxt, k + 1 if k < n and lab == labels[k][0] else k)
                if child not in parents:
                    parents[child] = (node, lab)
                    todo.append(child)
            assert len(parents) <= MAX_CLOSURE, "the model's internal steps do not end"
        return parents, n

    def settle(self, what: str, found: tuple[dict, int]) -> None:
        """Wait (bounded) for the implementation to rest in a quiescent candidate state."""
        parents, n = found
        rest = {s for (s, k) in parents if k == n and at_rest(s)}
        deadline = time.monotonic() + self.SETTLE_S
        before = None
        while True:
            got = self.abstract(self.observe())
            self.check_calls_succeed(what, got)
            if got in rest and got == before:
                break
            if time.monotonic() > deadline:
                self._fail(what, got, {s for (s, _) in parents}, rest)
            before = got
            time.sleep(0.005)  # a bounded poll of the implementation, not a sync
        path = []
        node = (got, n)
        while parents[node] is not None:
            node, lab = parents[node]
            path.append((lab, node[0]))
        for lab, s in reversed(path):
            self.take(lab, s)
        assert self.state == got
        self.last_rest = got

    def take(self, lab: M.Label, before: M.State) -> None:
        """Step the model by *lab* from *before* (the current state) and log the event."""
        assert before == self.state
        nxt = M.step(PARAMS, self.state, lab)
        assert nxt is not None, f"{lab} not enabled in the model"
        if self.RECORD:
            self._count(lab, self.state, nxt)
        self.state = nxt
        self.trace.append(tracecheck.Event(lab.name, lab.params, M.to_tla_state(PARAMS, nxt)))

    @staticmethod
    def _count(lab: M.Label, s: M.State, nxt: M.State) -> None:
        """Coverage: the action, and the situations the machine must reach."""
        par = PARAMS
        COVERAGE[lab.name] += 1
        if lab.name == "Fork" and lab.params[0] in s.busy:
            COVERAGE["fork while busy"] += 1
        elif lab.name == "Close":
            p, f = lab.params
            i = par.proc(p)
            x = s.fdt[i][par.fd(f)]
            kids = {c for c in s.alive if s.parent[par.proc(c)] == p}
            if x not in nxt.fdt[i] and kids & M.holders(par, s, x):
                COVERAGE["parent closes while child holds"] += 1
        elif lab.name == "Reap":
            (p,) = lab.params
            if any(p in k for k in s.known):
                COVERAGE["dead holder reaped"] += 1
        elif lab.name == "SendEnd":
            p, x = lab.params
            if p != par.Root and s.calls[par.proc(p)][par.sock(x)] == 1:
                COVERAGE["child's first send"] += 1
        elif lab.name == "MonClose":
            (x,) = lab.params
            if not s.eof[par.sock(x)]:
                COVERAGE["monitor closes for a dead last holder"] += 1

    def check_calls_succeed(self, what: str, got: M.State) -> None:
        """No send call fails: the model's cannot."""
        for p, rep in self.last_report.items():
            for r in rep["sender"]["results"]:
                if r["error"] is not None:
                    self._fail(what, got, set(), set(),
                               f"{p}'s send call {r['call']} failed: {r['error']}")

    def _fail(self, what: str, got: M.State, reach: set, rest: set,
              why: str | None = None) -> None:
        """Report the implementation's state *got* against the model's *rest*, and fail."""
        def diff(s: M.State) -> list[str]:
            return [f for f in M.State._fields if getattr(got, f) != getattr(s, f)]
        if why is not None:
            lines = [f"after {what}: {why}"]
        else:
            assert rest, f"after {what}: the model never comes to rest (a bug in the model?)"
            best = min(rest, key=lambda s: len(diff(s)))
            lines = [f"after {what}: the implementation rests in no state the model allows "
                     f"(checked for {self.SETTLE_S} s; {len(rest)} quiescent of {len(reach)} "
                     f"reachable); closest differs in {', '.join(diff(best))}:"]
            for f in diff(best):
                lines.append(f"  {f}: implementation {getattr(got, f)}")
                lines.append(f"  {' ' * len(f)}  model          {getattr(best, f)}")
            try:
                broken = M.invariants(PARAMS, got)
            except Exception:   # a value no model state has (a foreign fd, a torn chunk)
                broken = ["TypeOK"]
            if broken:
                lines.append(f"  the implementation's state violates {', '.join(broken)}")
            if got in reach:
                moves = [str(lab) for lab, _ in internal_steps(got)]
                lines.append(f"  (a model state, but not at rest: {', '.join(moves)} enabled)")
        lines.append(f"  driver actions: {', '.join(self.actions)}")
        FAILURES.append("\n".join(lines))
        raise AssertionError(FAILURES[-1])

    # -- the driver ---------------------------------------------------------------------
    def issue_sends(self) -> None:
        """Every live holder of the end makes the send calls it has left (the model's Ask...)."""
        for p in sorted(self.state.alive):
            i = PARAMS.proc(p)
            table = self.state.fdt[i]
            if S1 not in table or self.issued[p] >= PARAMS.Calls:
                continue
            fd = BASE + PARAMS.Fds[table.index(S1)]
            w = self.workers[p]
            while self.issued[p] < PARAMS.Calls:
                self.issued[p] += 1
                c = self.issued[p]
                w.call("send", fd=fd, chunk=CHUNK,
                       codes=[code(p, c, j) for j in range(1, PARAMS.CallLen + 1)])

    @rule(data=st.data())
    def act(self, data) -> None:
        """Take one of the model's enabled external actions on the real system, then compare."""
        # One draw of the same shape at every step, whatever is enabled: the
        # implementation chooses among the model's states (who gets the token
        # first), so what is enabled next varies from run to run.
        self.take_step(data.draw(st.integers(0, 2**64 - 1), label="pick"))

    def take_step(self, pick: int) -> None:
        """One step of the driver: *pick* chooses among the enabled external actions."""
        labels = [lab for lab, _ in M.next_states(PARAMS, self.state)
                  if lab.name in EXTERNAL
                  and not (lab.name == "Die" and len(self.state.alive) <= 1)]
        if not labels:
            return      # nothing left to do: the run is over
        # Deaths are rarer than the rest, so that processes share the end for a while.
        weighted = [lab for lab in labels if lab.name != "Die"] * 3 + \
                   [lab for lab in labels if lab.name == "Die"]
        lab = weighted[pick % len(weighted)]
        double = None
        if lab.name == "Fork":
            rest = [c for c in PARAMS.Procs if c not in self.state.born and c != lab.params[1]]
            if rest and (pick >> 32) % 3 == 0:
                double = M.Label("Fork", (lab.params[1], rest[0]))
        step = len(self.actions)
        if step < len(self.SCRIPT):
            lab, double = self._scripted(self.SCRIPT[step], labels, lab, double)
        self.actions.append(f"{lab}+{double}" if double else str(lab))
        try:
            note(f"action: {self.actions[-1]}")
        except InvalidArgument:
            pass    # driven without Hypothesis (drive())
        if double is None:
            getattr(self, "do_" + lab.name)(lab)
            self.take(lab, self.state)
            self.issue_sends()
            self.settle(str(lab), self.candidates(self.state, []))
            return
        self.do_Fork(lab)
        self.take(lab, self.state)
        self.issue_sends()          # the child's first send call
        guard = self.do_Fork(double, when_busy=True)
        before = self.state
        self.issue_sends_after(double)
        self.settle(f"{lab}+{double}", self.candidates(before, [(double, guard)]))

    def _scripted(self, want: frozenset[str], labels: list[M.Label], lab: M.Label,
                  double: M.Label | None) -> tuple[M.Label, M.Label | None]:
        """The scripted step: the enabled label (or double fork) named in *want*, if any."""
        for x in labels:
            choices = [(x, None)]
            if x.name == "Fork":
                rest = [c for c in PARAMS.Procs if c not in self.state.born and c != x.params[1]]
                if rest:
                    choices.append((x, M.Label("Fork", (x.params[1], rest[0]))))
            for first, second in choices:
                if (f"{first}+{second}" if second else str(first)) in want:
                    if len(self.actions) + 1 == len(self.SCRIPT):
                        SCRIPTS_DONE[self.SCRIPT] += 1
                    return first, second
        return lab, double

    def issue_sends_after(self, fork: M.Label) -> None:
        """The sends of the second child of a double fork (the model does not know it yet).

        The child's table is its parent's (checked by do_Fork).
        """
        parent, child = fork.params
        table = self.state.fdt[PARAMS.proc(parent)]
        if S1 not in table:
            return
        fd = BASE + PARAMS.Fds[table.index(S1)]
        while self.issued[child] < PARAMS.Calls:
            self.issued[child] += 1
            k = self.issued[child]
            self.workers[child].call(
                "send", fd=fd, chunk=CHUNK,
                codes=[code(child, k, j) for j in range(1, PARAMS.CallLen + 1)])

    def do_Fork(self, lab: M.Label, when_busy: bool = False):
        """p forks; the child is worker c.  Right after, its table must be its parent's."""
        p, c = lab.params
        w = self.workers[p]
        out, fds = w.call_fds("fork", when_busy=when_busy)
        assert len(fds) == 1, f"{p} passed {len(fds)} descriptors with its fork answer"
        child = Worker(c, _stdsocket.socket(fileno=fds[0]))
        self.workers[c] = child
        assert child.pid == out["pid"], (child.hello, out)
        mine = self._table(w.call("state")["fds"])
        theirs = self._table(child.call("state")["fds"])
        if mine != theirs:
            got = self.abstract(self.observe())
            self._fail(str(lab), got, set(), set(),
                       f"{c}'s fd table right after the fork differs from its parent's "
                       f"(ForkCopiesTable): {c} {theirs}, {p} {mine}")
        if not when_busy:
            return None
        return self._fork_guard(p, out["before"], child.hello["at_fork"])

    def _fork_guard(self, p: str, before: dict, at_fork: dict):
        """The guard on the model's Fork(p, c) from what p's sender did around os.fork().

        BUSY in call k just before the fork, and the child's copy of the
        sender (memory as at the fork) still in call k: the fork came while
        p was inside its send (the model's busy = p).  In no call before and
        in none at the fork, call count the same: it came while p was not.
        Otherwise any path of the model will do.
        """
        same = before["started"] == at_fork["started"]
        if before["busy"] and at_fork["in_call"] and same:
            COVERAGE["fork while busy, seen"] += self.RECORD
            return lambda s: s.busy[0] == p
        if not before["in_call"] and not at_fork["in_call"] and same:
            return lambda s: s.busy[0] != p
        return None

    def do_Dup(self, lab: M.Label) -> None:
        """socket.dup(): the kernel picks the fd (compared at rest: LowestFd)."""
        p, f = lab.params
        self.workers[p].call("dup", fd=BASE + f)

    def do_Close(self, lab: M.Label) -> None:
        """close() of the socket on the model's fd."""
        p, f = lab.params
        self.workers[p].call("close", fd=BASE + f)

    def do_Die(self, lab: M.Label) -> None:
        """kill -9; the monitor notices by itself (Reap, MonClose)."""
        (p,) = lab.params
        self.workers[p].kill()

    def do_PeerRead(self, lab: M.Label) -> None:
        """The peer reads one model byte (one chunk) of the ring."""
        buf = bytearray(CHUNK)
        view, got = memoryview(buf), 0
        while got < CHUNK:
            n = self.srv.recv_into(view[got:])
            assert n, "EOF on the client's ring while the model has bytes in it"
            got += n
        self.peer_got.append(chunk_value(bytes(buf)))

    @invariant()
    def model_invariants(self) -> None:
        """The model's own state keeps the spec's invariants (the path is the model's)."""
        if hasattr(self, "state"):
            assert M.invariants(PARAMS, self.state) == []


#: The default run.
MACHINE_SETTINGS = settings(
    max_examples=int(os.environ.get("FORK_MACHINE_EXAMPLES", "30")),
    stateful_step_count=12, deadline=None,
    # Shrinking re-runs processes and a monitor per attempt, and a concurrent
    # run need not fail again the same way; the report lists the actions.
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


def machine_failure(machine: type, how: settings) -> str | None:
    """Run *machine*; the mismatch it reports, or None if every run rested where the model does.

    The implementation is concurrent: a replay of a failing run may take a
    good path (FlakyFailure) or fail a step earlier (FlakyStrategyDefinition);
    the failure was seen all the same, and its report is the machine's.
    """
    FAILURES.clear()
    try:
        run_state_machine_as_test(machine, settings=how)
    except AssertionError as exc:
        return str(exc)
    except (FlakyFailure, FlakyStrategyDefinition):
        if not FAILURES:
            raise
        return FAILURES[-1]
    return None


def drive(machine: type[ForkMachine], steps: int, seed: int) -> str | None:
    """Run *machine* for *steps* steps, picks from a seeded generator, without Hypothesis.

    For the scripted runs: every one takes its whole script (Hypothesis
    chooses how many steps a run takes).  Returns the mismatch reported, or
    None.
    """
    rng = random.Random(seed)
    FAILURES.clear()
    m = machine()
    try:
        m.start()
        for _ in range(steps):
            m.take_step(rng.getrandbits(64))
            m.model_invariants()
    except AssertionError as exc:
        return str(exc)
    finally:
        m.teardown()
    return None


def test_fork_machine() -> None:
    """Real forked processes rest only in states the Fork model allows."""
    message = machine_failure(ForkMachine, MACHINE_SETTINGS)
    assert message is None, message


#: Openings that random runs reach only now and then, each run a few times
#: (then on at random); their traces join the batch for TLC.
SCRIPTS = {
    # The parent closes, the child holds; the child dies: the monitor closes
    # the rings for a dead last holder (its hold pipe reports POLLHUP).
    "dead last holder": ("Fork(p1, p2)", "Close(p1, 0)", "Die(p2)"),
    # A fork inside the child's first send; the middle process and Root die,
    # the orphan (FORKED long done) keeps the end until it closes it.
    "orphan": ("Fork(p1, p2)+Fork(p2, p3)", "Die(p2)", "Die(p1)", "PeerRead(s1)",
               "Close(p3, 0)"),
    # A table with a gap is forked as it is, and a dup in the child fills the gap.
    "table with a gap": ("Fork(p1, p2)", "Dup(p2, 0)", "Close(p2, 0)", "Fork(p2, p3)",
                         "Dup(p3, 1)"),
}


@pytest.mark.parametrize("opening", sorted(SCRIPTS))
def test_fork_machine_openings(opening: str) -> None:
    """Runs that start with a given opening rest only in states the model allows too."""
    class Opening(ForkMachine):
        SCRIPT = tuple(frozenset({x}) for x in SCRIPTS[opening])

    done = SCRIPTS_DONE[Opening.SCRIPT]
    for seed in range(2):
        message = drive(Opening, len(Opening.SCRIPT) + 4, seed)
        assert message is None, message
    assert SCRIPTS_DONE[Opening.SCRIPT] == done + 2, \
        f"the opening {opening!r} was not taken whole"


#: Planted bug -> its opening (driver actions, in order) and what the report must say.
PLANTED = {
    # Root forks, closes its copy; the peer sees EOF while p2 holds the end.
    "closer-ignores-holders": (
        (frozenset({"Fork(p1, p2)"}), frozenset({"Close(p1, 0)"})),
        [r"^after Close\(p1, 0\): .*closest differs in .*\beof\b",
         r"violates .*\bPeerClosedOnlyWhenUnheld\b"]),
    # The child's memory refers to Root's channel and agent.
    "child-keeps-resources": (
        (frozenset({"Fork(p1, p2)"}),),
        [r"^after Fork\(p1, p2\): .*closest differs in .*\bres\b",
         r"res: implementation \(.*'p1', 'p1'",
         r"violates .*\bResourceOwned\b"]),
    # Root forks at rest, holding the token: the child believes it holds it too.
    "child-keeps-token": (
        (frozenset({"Fork(p1, p2)"}),),
        [r"^after Fork\(p1, p2\): .*closest differs in .*\bpheld\b",
         r"violates .*\bOneTokenHolder\b"]),
    # The child's socket fd is not its parent's.
    "child-moves-fds": (
        (frozenset({"Fork(p1, p2)"}),),
        [r"^after Fork\(p1, p2\): p2's fd table right after the fork differs from its "
         r"parent's \(ForkCopiesTable\)"]),
}


@pytest.mark.parametrize("bug", sorted(PLANTED))
def test_the_machine_catches_a_planted_bug(bug: str) -> None:
    """The check can fail: each planted bug makes the machine report a mismatch."""
    script, patterns = PLANTED[bug]

    class Planted(ForkMachine):
        RECORD = False
        PLANT = bug
        SCRIPT = script
        SETTLE_S = 5.0

    message = drive(Planted, len(script) + 2, 0)
    assert message is not None, f"the machine did not catch {bug}"
    print(f"\n{bug} caught: {message}")
    for pattern in patterns:
        assert re.search(pattern, message, re.MULTILINE), message


#: What the default run must reach: every action, and the cases the issue names.
MUST_REACH = (*sorted(INTERNAL | EXTERNAL), "fork while busy", "fork while busy, seen",
              "parent closes while child holds", "dead holder reaped", "child's first send",
              "monitor closes for a dead last holder")


def test_the_machine_reached_the_interesting_cases() -> None:
    """Coverage of the runs above: each action and each case the issue names, reached."""
    if not TRACES:
        pytest.skip("run together with test_fork_machine (it records the runs)")
    print("\nfork machine coverage:", dict(sorted(COVERAGE.items())))
    missing = [name for name in MUST_REACH if not COVERAGE[name]]
    assert not missing, f"never reached: {missing}; counts: {dict(COVERAGE)}"


@needs_tlc
def test_traces_are_behaviours_of_fork_tla() -> None:
    """Every machine run above, replayed by TLC as a behaviour of Fork.tla."""
    if not TRACES:
        pytest.skip("run together with test_fork_machine (it records the traces)")
    res = tracecheck.check_traces(TLA_DIR, "Fork", PARAMS.constants(), TRACES,
                                  invariants=sorted(M.INVARIANTS))
    print(f"\nTLC: {res.traces} traces, {res.events} events, {res.distinct_states} "
          f"distinct states, {res.seconds:.1f} s")
    assert res.ok, str(res.failure)
    assert res.traces == len(TRACES) and res.events > len(TRACES)
