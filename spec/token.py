"""Executable model of ``spec/tla/TokenSharing.tla``: sharing one socket end by tokens.

One socket end has a send token (guarding its tx ring) and a recv token
(guarding its rx ring).  Threads of one process hand a token over through a
word in shared memory and a local FIFO queue; processes hand it over through
the monitor (TAKE, RECALL, RELEASE, GRANT); the monitor reclaims the tokens
of a process that dies.  This module mirrors the TLA+ specification one to
one:

* :class:`Params` holds the spec's constants and enforces its ASSUME;
  :func:`constants_of` reads them from a TLC config;
* :class:`State` has exactly the spec's variables;
* one function per action, with the action's exact name, parameters and
  enabling condition, returns the successor state or ``None`` when the
  action is disabled, so a test driver can take one step at a time;
* one function per invariant (and for the property of steps
  ``StablePending``), with the spec's exact names.

Representation.  Processes, threads and tokens are strings, kept in
:class:`Params` in a fixed order (processes and threads sorted, tokens in
the order ``send``, ``recv``); per-thread variables are tuples in
``Threads`` order, per-process ones tuples in ``Procs`` order, per-token
ones tuples in ``Tokens`` order (so ``lq[i][j]`` is process ``i``'s queue
for token ``j``).  The spec's ``NoThread`` (a parked word's owner) and
``NoProc`` (a free token's holder) are Python's ``None``; ``Agent`` (the
agent thread in a local queue) is :data:`AGENT`.  A send byte is the triple
``(thread, call, index)``, a byte the readers got ``(thread, call, value)``.
:func:`to_tla_state` gives the spec's values (dicts keyed by name), which is
what :func:`spec.tracecheck.check_traces` takes and what the refinement
mapping of the real implementation produces.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from spec.connect import constants_of as _constants_of

__all__ = [
    "ACTIONS",
    "AGENT",
    "INVARIANTS",
    "NO_CALL",
    "NO_PROC",
    "NO_THREAD",
    "PARKED",
    "PCS",
    "STEP_PROPERTIES",
    "TOKENS",
    "Label",
    "Msg",
    "Params",
    "State",
    "Word",
    "Enter",
    "Queue",
    "Flag",
    "Take",
    "Write",
    "Read",
    "Exit",
    "PeerRead",
    "PeerWrite",
    "Ask",
    "MonTake",
    "Recall",
    "Release",
    "MonRelease",
    "Grant",
    "Die",
    "Reclaim",
    "Done",
    "TypeOK",
    "OneOwner",
    "OnlyOwnerTouches",
    "OneHolder",
    "LocalQueues",
    "MonitorConsistent",
    "RequestsKept",
    "SendCallsWhole",
    "RecvInOrder",
    "ReclaimedOnce",
    "StablePending",
    "constants_of",
    "from_tla_state",
    "init_states",
    "invariants",
    "next_states",
    "step",
    "step_violations",
    "to_tla_state",
]

TOKENS = ("send", "recv")  # every token, in the spec's (and Reclaim's) order
PCS = ("idle", "queued", "op", "done", "dead")
OPS = ("TAKE", "RELEASE", "RECALL", "GRANT")
NO_CALL = "none"  # cur[t] of a thread that is in no call
#: The agent thread as a pseudo-waiter in a local queue: the spec's Agent.
AGENT = "Agent"
NO_THREAD = "NoThread"  # TokenSharing!NoThread, in TLA+ values
NO_PROC = "NoProc"      # TokenSharing!NoProc, in TLA+ values
_RESERVED = (NO_THREAD, NO_PROC, AGENT)
_SWITCHES = ("WaitBusy", "ReRecall", "KeepQueue")


# --------------------------------------------------------------------------
# Constants


def _names(value: object, what: str) -> tuple[str, ...]:
    """A non-empty set of names as a sorted tuple of plain strings."""
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise ValueError(f"{what} must be a set of names, not {value!r}")
    names = tuple(sorted(str(v) for v in value))
    if not names or any(not n for n in names) or len(set(names)) != len(names):
        raise ValueError(f"{what} must be a non-empty set of distinct names, got {value!r}")
    return names


@dataclass(frozen=True, slots=True)
class Params:
    """The spec's CONSTANTS; construction checks the spec's ASSUME.

    ``Procs`` and ``Threads`` are name sets (any iterable; stored sorted);
    ``ProcOf`` maps every thread to its process (stored as a tuple in
    ``Threads`` order); ``Tokens`` is a non-empty subset of ``("send",
    "recv")`` (stored in that order); ``Creator`` holds both tokens at the
    start; ``CallLen`` is the length of a send call and the most a recv call
    reads; ``Calls`` the calls each thread makes; ``Cap`` each ring's
    capacity; ``Mortal`` the processes that may die (stored sorted; empty:
    none does).  ``WaitBusy``, ``ReRecall``
    and ``KeepQueue`` switch off parts of the protocol (the known-bad
    variants) when False.
    """

    Procs: tuple[str, ...]
    Threads: tuple[str, ...]
    ProcOf: tuple[str, ...]
    Tokens: tuple[str, ...]
    Creator: str
    CallLen: int
    Calls: int
    Cap: int
    Mortal: tuple[str, ...] = ()
    WaitBusy: bool = True
    ReRecall: bool = True
    KeepQueue: bool = True

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalise the fields in place
        procs = _names(self.Procs, "Procs")
        threads = _names(self.Threads, "Threads")
        if set(procs) & set(threads):
            raise ValueError(f"Procs and Threads must not share names: {procs} {threads}")
        if set(_RESERVED) & (set(procs) | set(threads)):
            raise ValueError(f"no process or thread may be called {', '.join(_RESERVED)}")
        set_(self, "Procs", procs)
        set_(self, "Threads", threads)
        proc_of = self.ProcOf
        if isinstance(proc_of, Mapping):
            if set(map(str, proc_of)) != set(threads):
                raise ValueError(f"ProcOf must map exactly the threads {threads}, got {proc_of!r}")
            norm = {str(t): str(p) for t, p in proc_of.items()}
            proc_of = tuple(norm[t] for t in threads)
        if not isinstance(proc_of, tuple) or len(proc_of) != len(threads) or any(
            p not in procs for p in proc_of
        ):
            raise ValueError(f"ProcOf must map each thread to one of {procs}, got {self.ProcOf!r}")
        set_(self, "ProcOf", tuple(str(p) for p in proc_of))
        if isinstance(self.Tokens, str) or not isinstance(self.Tokens, Iterable):
            raise ValueError(f"Tokens must be a set of token names, not {self.Tokens!r}")
        toks = {str(x) for x in self.Tokens}
        if not toks or not toks <= set(TOKENS):
            raise ValueError(f"Tokens must be a non-empty subset of {TOKENS}, got {self.Tokens!r}")
        set_(self, "Tokens", tuple(x for x in TOKENS if x in toks))
        if self.Creator not in procs:
            raise ValueError(f"Creator must be one of {procs}, got {self.Creator!r}")
        set_(self, "Creator", str(self.Creator))
        for name, low in (("CallLen", 1), ("Calls", 0), ("Cap", 1)):
            v = getattr(self, name)
            if type(v) is not int or v < low:
                raise ValueError(f"{name} must be an int >= {low}, got {v!r}")
        if isinstance(self.Mortal, str) or not isinstance(self.Mortal, Iterable):
            raise ValueError(f"Mortal must be a set of processes, not {self.Mortal!r}")
        mortal = tuple(sorted({str(p) for p in self.Mortal}))
        if not set(mortal) <= set(procs):
            raise ValueError(f"Mortal must be a subset of {procs}, got {self.Mortal!r}")
        set_(self, "Mortal", mortal)
        for name in _SWITCHES:
            if type(getattr(self, name)) is not bool:
                raise ValueError(f"{name} must be a bool, not {getattr(self, name)!r}")

    @classmethod
    def from_constants(cls, constants: Mapping[str, object]) -> Params:
        """Build from a mapping of constant names to values (see :func:`constants_of`)."""
        names = ("Procs", "Threads", "ProcOf", "Tokens", "Creator", "CallLen", "Calls", "Cap",
                 "Mortal", *_SWITCHES)
        missing = [n for n in names if n not in constants]
        if missing:
            raise ValueError(f"missing constants: {', '.join(missing)}")
        return cls(**{n: constants[n] for n in names})

    def constants(self) -> dict[str, object]:
        """The constants as TLA+ values, for ``spec.tracecheck.check_traces``."""
        return {
            "Procs": frozenset(self.Procs),
            "Threads": frozenset(self.Threads),
            "ProcOf": dict(zip(self.Threads, self.ProcOf, strict=True)),
            "Tokens": frozenset(self.Tokens),
            "Creator": self.Creator,
            "CallLen": self.CallLen,
            "Calls": self.Calls,
            "Cap": self.Cap,
            "Mortal": frozenset(self.Mortal),
            "WaitBusy": self.WaitBusy,
            "ReRecall": self.ReRecall,
            "KeepQueue": self.KeepQueue,
        }

    def proc(self, p: str) -> int:
        """The index of process *p* in the per-process tuples."""
        try:
            return self.Procs.index(p)
        except ValueError:
            raise ValueError(f"unknown process {p!r}; Procs are {self.Procs}") from None

    def thread(self, t: str) -> int:
        """The index of thread *t* in the per-thread tuples."""
        try:
            return self.Threads.index(t)
        except ValueError:
            raise ValueError(f"unknown thread {t!r}; Threads are {self.Threads}") from None

    def token(self, tok: str) -> int:
        """The index of token *tok* in the per-token tuples."""
        try:
            return self.Tokens.index(tok)
        except ValueError:
            raise ValueError(f"unknown token {tok!r}; Tokens are {self.Tokens}") from None

    def proc_of(self, t: str) -> str:
        """TokenSharing!ProcOf[t]: the process of thread *t*."""
        return self.ProcOf[self.thread(t)]


def constants_of(cfg: str | Path, module: str = "MCTokenSharing") -> dict[str, Any]:
    """The constants a TokenSharing config gives, substitutions resolved.

    TLC's .cfg files cannot write functions, so ``ProcOf`` is a definition
    in *module* (next to the config) that the config substitutes
    (``ProcOf <- SmallProcOf``); see :func:`spec.connect.constants_of`.
    """
    return _constants_of(cfg, module)


# --------------------------------------------------------------------------
# State


class Word(NamedTuple):
    """A token word: its owner thread (None: parked), busy, want."""

    owner: str | None
    busy: bool
    want: bool


PARKED = Word(None, False, False)


class Msg(NamedTuple):
    """A message between a process and the monitor: ``op`` (TAKE, ...) and the token."""

    op: str
    tok: str


Send = tuple[str, int, int]   # (thread, call, byte index in the call)
Got = tuple[str, int, int]    # (thread, call, stream value)


class State(NamedTuple):
    """One state of TokenSharing: the spec's variables, in the spec's order.

    See the module docstring for how each is laid out.
    """

    word: tuple[Word, ...]
    tx: tuple[Send, ...]
    rx: tuple[int, ...]
    pc: tuple[str, ...]
    cur: tuple[str, ...]
    calls: tuple[int, ...]
    prog: tuple[int, ...]
    lq: tuple[tuple[tuple[str, ...], ...], ...]
    pheld: tuple[tuple[bool, ...], ...]
    asked: tuple[tuple[bool, ...], ...]
    holder: tuple[str | None, ...]
    queue: tuple[tuple[str, ...], ...]
    recalled: tuple[bool, ...]
    cleaned: tuple[bool, ...]
    reclaims: tuple[tuple[int, ...], ...]
    toMon: tuple[tuple[Msg, ...], ...]
    toProc: tuple[tuple[Msg, ...], ...]
    alive: tuple[bool, ...]
    peerGot: tuple[Send, ...]
    rgot: tuple[Got, ...]


class Label(NamedTuple):
    """An action with its parameters, e.g. ``Label("Take", ("t1", "send"))``."""

    name: str
    params: tuple[Any, ...] = ()

    def __str__(self) -> str:
        if not self.params:
            return self.name
        return f"{self.name}({', '.join(map(str, self.params))})"


def _set(t: tuple, i: int, v: object) -> tuple:
    """*t* with entry *i* replaced by *v*."""
    return t[:i] + (v,) + t[i + 1:]


def _set2(t: tuple, i: int, j: int, v: object) -> tuple:
    """*t* with entry ``[i][j]`` replaced by *v*."""
    return _set(t, i, _set(t[i], j, v))


def _idle(t: str) -> Word:
    """TokenSharing!Idle(t): the word that Enter expects."""
    return Word(t, False, False)


def _call_done(par: Params, s: State, i: int) -> bool:
    """TokenSharing!CallDone: a send call wrote all its bytes, a recv call read some."""
    if s.cur[i] == "send":
        return s.prog[i] == par.CallLen
    return s.prog[i] > 0


def _reader_waits(s: State) -> bool:
    """TokenSharing!ReaderWaits: some thread waits for data on the rx ring."""
    return any(
        pc in ("queued", "op") and cur == "recv" and prog == 0
        for pc, cur, prog in zip(s.pc, s.cur, s.prog, strict=True)
    )


def _again(par: Params, q: tuple[str, ...]) -> bool:
    """TokenSharing!Again: more than the new holder wait, so it is recalled at once."""
    return par.ReRecall and len(q) > 1


def _pass_msgs(par: Params, tok: str, q: tuple[str, ...]) -> tuple[Msg, ...]:
    """TokenSharing!PassMsgs: GRANT to the head of *q*, and RECALL if more wait."""
    return (Msg("GRANT", tok),) + ((Msg("RECALL", tok),) if _again(par, q) else ())


# --------------------------------------------------------------------------
# Init


def init_states(par: Params) -> list[State]:
    """TokenSharing!Init: the creator holds both tokens, parked; every thread idle."""
    n_t, n_p, n_k = len(par.Threads), len(par.Procs), len(par.Tokens)
    per_pk = tuple((False,) * n_k for _ in range(n_p))
    return [
        State(
            word=(PARKED,) * n_k,
            tx=(),
            rx=(),
            pc=("idle" if par.Calls > 0 else "done",) * n_t,
            cur=(NO_CALL,) * n_t,
            calls=(0,) * n_t,
            prog=(0,) * n_t,
            lq=tuple(((),) * n_k for _ in range(n_p)),
            pheld=tuple((p == par.Creator,) * n_k for p in par.Procs),
            asked=per_pk,
            holder=(par.Creator,) * n_k,
            queue=((),) * n_k,
            recalled=(False,) * n_k,
            cleaned=(False,) * n_p,
            reclaims=tuple((0,) * n_k for _ in range(n_p)),
            toMon=((),) * n_p,
            toProc=((),) * n_p,
            alive=(True,) * n_p,
            peerGot=(),
            rgot=(),
        )
    ]


# --------------------------------------------------------------------------
# Threads: the fast path, the local queue, the operation


def Enter(par: Params, s: State, t: str, tok: str) -> State | None:
    """TokenSharing!Enter(t, k): the fast path; t's CAS of its idle word to busy."""
    i, j = par.thread(t), par.token(tok)
    if s.pc[i] != "idle" or s.word[j] != _idle(t):
        return None
    return s._replace(
        word=_set(s.word, j, s.word[j]._replace(busy=True)),
        pc=_set(s.pc, i, "op"),
        cur=_set(s.cur, i, tok),
        calls=_set(s.calls, i, s.calls[i] + 1),
    )


def Queue(par: Params, s: State, t: str, tok: str) -> State | None:
    """TokenSharing!Queue(t, k): Enter's CAS fails; t joins its process's queue."""
    i, j = par.thread(t), par.token(tok)
    if s.pc[i] != "idle" or s.word[j] == _idle(t):
        return None
    p = par.proc(par.ProcOf[i])
    return s._replace(
        lq=_set2(s.lq, p, j, s.lq[p][j] + (t,)),
        pc=_set(s.pc, i, "queued"),
        cur=_set(s.cur, i, tok),
        calls=_set(s.calls, i, s.calls[i] + 1),
    )


def Flag(par: Params, s: State, p: str, tok: str) -> State | None:
    """TokenSharing!Flag(p, k): the head of p's queue finds the word busy; sets want."""
    i, j = par.proc(p), par.token(tok)
    w = s.word[j]
    if not s.alive[i] or not s.pheld[i][j] or not s.lq[i][j] or not w.busy or w.want:
        return None
    return s._replace(word=_set(s.word, j, w._replace(want=True)))


def Take(par: Params, s: State, t: str, tok: str) -> State | None:
    """TokenSharing!Take(t, k): t, first in the queue of a holder, takes the word.

    WANT goes up with it only when the agent waits behind t.  With
    ``WaitBusy`` False (a known-bad variant) it does not wait for busy.
    """
    i, j = par.thread(t), par.token(tok)
    p = par.proc(par.ProcOf[i])
    q = s.lq[p][j]
    if s.pc[i] != "queued" or not q or q[0] != t or not s.pheld[p][j]:
        return None
    if par.WaitBusy and s.word[j].busy:
        return None
    return s._replace(
        word=_set(s.word, j, Word(t, True, AGENT in q[1:])),
        lq=_set2(s.lq, p, j, q[1:]),
        pc=_set(s.pc, i, "op"),
    )


def Write(par: Params, s: State, t: str) -> State | None:
    """TokenSharing!Write(t): t's send call writes what fits of its remaining bytes."""
    i = par.thread(t)
    if s.pc[i] != "op" or s.cur[i] != "send" or s.prog[i] >= par.CallLen or len(s.tx) >= par.Cap:
        return None
    n = min(par.Cap - len(s.tx), par.CallLen - s.prog[i])
    c, done = s.calls[i], s.prog[i]
    return s._replace(
        tx=s.tx + tuple((t, c, done + x) for x in range(1, n + 1)),
        prog=_set(s.prog, i, done + n),
    )


def Read(par: Params, s: State, t: str) -> State | None:
    """TokenSharing!Read(t): t's recv call reads what the ring holds, up to CallLen."""
    i = par.thread(t)
    if s.pc[i] != "op" or s.cur[i] != "recv" or s.prog[i] != 0 or not s.rx:
        return None
    n = min(len(s.rx), par.CallLen)
    c = s.calls[i]
    return s._replace(
        rgot=s.rgot + tuple((t, c, v) for v in s.rx[:n]),
        rx=s.rx[n:],
        prog=_set(s.prog, i, n),
    )


def Exit(par: Params, s: State, t: str, tok: str) -> State | None:
    """TokenSharing!Exit(t, k): t's call is over; it clears busy (want stays)."""
    i, j = par.thread(t), par.token(tok)
    if s.pc[i] != "op" or s.cur[i] != tok or not _call_done(par, s, i):
        return None
    return s._replace(
        word=_set(s.word, j, s.word[j]._replace(busy=False)),
        pc=_set(s.pc, i, "done" if s.calls[i] == par.Calls else "idle"),
        cur=_set(s.cur, i, NO_CALL),
        prog=_set(s.prog, i, 0),
    )


# --------------------------------------------------------------------------
# The peer end


def PeerRead(par: Params, s: State) -> State | None:
    """TokenSharing!PeerRead: the peer reads the oldest byte of the tx ring."""
    if not s.tx:
        return None
    return s._replace(peerGot=s.peerGot + s.tx[:1], tx=s.tx[1:])


def PeerWrite(par: Params, s: State) -> State | None:
    """TokenSharing!PeerWrite: the peer writes its next byte while a reader waits."""
    if len(s.rx) >= par.Cap or not _reader_waits(s):
        return None
    return s._replace(rx=s.rx + (len(s.rgot) + len(s.rx) + 1,))


# --------------------------------------------------------------------------
# Processes and the monitor


def Ask(par: Params, s: State, p: str, tok: str) -> State | None:
    """TokenSharing!Ask(p, k): p has waiters, does not hold k, has not asked: TAKE."""
    i, j = par.proc(p), par.token(tok)
    if not s.alive[i] or s.pheld[i][j] or s.asked[i][j] or not s.lq[i][j]:
        return None
    return s._replace(
        asked=_set2(s.asked, i, j, True),
        toMon=_set(s.toMon, i, s.toMon[i] + (Msg("TAKE", tok),)),
    )


def MonTake(par: Params, s: State, p: str, tok: str) -> State | None:
    """TokenSharing!MonTake(p, k): the monitor reads TAKE; grants, or queues and recalls."""
    i, j = par.proc(p), par.token(tok)
    if not s.toMon[i] or s.toMon[i][0] != Msg("TAKE", tok):
        return None
    to_mon = _set(s.toMon, i, s.toMon[i][1:])
    h = s.holder[j]
    if h is None:
        return s._replace(
            holder=_set(s.holder, j, p),
            toMon=to_mon,
            toProc=_set(s.toProc, i, s.toProc[i] + (Msg("GRANT", tok),)),
        )
    queue = s.queue if p in s.queue[j] else _set(s.queue, j, s.queue[j] + (p,))
    to_proc = s.toProc
    if not s.recalled[j]:
        hi = par.proc(h)
        to_proc = _set(to_proc, hi, to_proc[hi] + (Msg("RECALL", tok),))
    return s._replace(
        queue=queue, recalled=_set(s.recalled, j, True), toMon=to_mon, toProc=to_proc
    )


def Recall(par: Params, s: State, p: str, tok: str) -> State | None:
    """TokenSharing!Recall(p, k): p's agent reads RECALL and joins p's queue."""
    i, j = par.proc(p), par.token(tok)
    if not s.alive[i] or not s.toProc[i] or s.toProc[i][0] != Msg("RECALL", tok):
        return None
    return s._replace(
        toProc=_set(s.toProc, i, s.toProc[i][1:]),
        lq=_set2(s.lq, i, j, s.lq[i][j] + (AGENT,)),
    )


def Release(par: Params, s: State, p: str, tok: str) -> State | None:
    """TokenSharing!Release(p, k): the agent, first, parks the word and sends RELEASE.

    With ``WaitBusy`` False (a known-bad variant) it does not wait for busy.
    """
    i, j = par.proc(p), par.token(tok)
    q = s.lq[i][j]
    if not s.alive[i] or not s.pheld[i][j] or not q or q[0] != AGENT:
        return None
    if par.WaitBusy and s.word[j].busy:
        return None
    return s._replace(
        word=_set(s.word, j, PARKED),
        pheld=_set2(s.pheld, i, j, False),
        lq=_set2(s.lq, i, j, q[1:]),
        toMon=_set(s.toMon, i, s.toMon[i] + (Msg("RELEASE", tok),)),
    )


def MonRelease(par: Params, s: State, p: str, tok: str) -> State | None:
    """TokenSharing!MonRelease(p, k): the monitor reads RELEASE; passes k on or frees it.

    With ``ReRecall`` False (a known-bad variant) the new holder is not
    recalled although others wait.
    """
    i, j = par.proc(p), par.token(tok)
    if not s.toMon[i] or s.toMon[i][0] != Msg("RELEASE", tok):
        return None
    to_mon = _set(s.toMon, i, s.toMon[i][1:])
    q = s.queue[j]
    if not q:
        return s._replace(
            toMon=to_mon, holder=_set(s.holder, j, None), recalled=_set(s.recalled, j, False)
        )
    h = par.proc(q[0])
    return s._replace(
        toMon=to_mon,
        holder=_set(s.holder, j, q[0]),
        queue=_set(s.queue, j, q[1:]),
        recalled=_set(s.recalled, j, _again(par, q)),
        toProc=_set(s.toProc, h, s.toProc[h] + _pass_msgs(par, tok, q)),
    )


def Grant(par: Params, s: State, p: str, tok: str) -> State | None:
    """TokenSharing!Grant(p, k): p's agent reads GRANT; p holds k.

    A word still naming a thread of another (dead) process is parked.
    """
    i, j = par.proc(p), par.token(tok)
    if not s.alive[i] or not s.toProc[i] or s.toProc[i][0] != Msg("GRANT", tok):
        return None
    word = s.word
    owner = word[j].owner
    if owner is not None and par.proc_of(owner) != p:
        word = _set(word, j, PARKED)
    return s._replace(
        toProc=_set(s.toProc, i, s.toProc[i][1:]),
        pheld=_set2(s.pheld, i, j, True),
        asked=_set2(s.asked, i, j, False),
        word=word,
    )


# --------------------------------------------------------------------------
# Death


def Die(par: Params, s: State, p: str) -> State | None:
    """TokenSharing!Die(p): kill -9; p's threads stop, its memory is gone."""
    i = par.proc(p)
    if p not in par.Mortal or not s.alive[i]:
        return None
    n_k = len(par.Tokens)
    return s._replace(
        alive=_set(s.alive, i, False),
        pc=tuple("dead" if q == p else pc for q, pc in zip(par.ProcOf, s.pc, strict=True)),
        lq=_set(s.lq, i, ((),) * n_k),
        pheld=_set(s.pheld, i, (False,) * n_k),
        asked=_set(s.asked, i, (False,) * n_k),
    )


def Reclaim(par: Params, s: State, p: str) -> State | None:
    """TokenSharing!Reclaim(p): the monitor notices p's death and reclaims its tokens.

    Every token p holds is parked and passed to the first process queued
    (GRANT, RECALL too if more wait), or freed; p leaves every queue; the
    messages to and from p are dropped.  With ``KeepQueue`` False (a
    known-bad variant) a reclaimed token's queue is forgotten.  Messages to
    one process go in token order (send first).
    """
    i = par.proc(p)
    if s.alive[i] or s.cleaned[i]:
        return None
    word, holder, queue = list(s.word), list(s.holder), list(s.queue)
    recalled, reclaims = list(s.recalled), list(s.reclaims[i])
    sent: dict[int, tuple[Msg, ...]] = {}
    for j, tok in enumerate(par.Tokens):
        q = tuple(x for x in s.queue[j] if x != p)
        if s.holder[j] != p:
            queue[j] = q
            continue
        word[j] = PARKED
        reclaims[j] += 1
        if par.KeepQueue and q:
            holder[j], queue[j], recalled[j] = q[0], q[1:], _again(par, q)
            h = par.proc(q[0])
            sent[h] = sent.get(h, ()) + _pass_msgs(par, tok, q)
        else:
            holder[j], queue[j], recalled[j] = None, (), False
    to_proc = tuple(
        () if r == i else msgs + sent.get(r, ()) for r, msgs in enumerate(s.toProc)
    )
    return s._replace(
        word=tuple(word),
        holder=tuple(holder),
        queue=tuple(queue),
        recalled=tuple(recalled),
        reclaims=_set(s.reclaims, i, tuple(reclaims)),
        toProc=to_proc,
        toMon=_set(s.toMon, i, ()),
        cleaned=_set(s.cleaned, i, True),
    )


def Done(par: Params, s: State) -> State | None:
    """TokenSharing!Done: every thread has made its calls or died; stutter."""
    if all(pc in ("done", "dead") for pc in s.pc):
        return s
    return None


#: The spec's action names, in the order of its Next.
ACTIONS = ("Enter", "Queue", "Take", "Exit", "Write", "Read", "Flag", "Ask", "MonTake",
           "Recall", "Release", "MonRelease", "Grant", "Die", "Reclaim", "PeerRead",
           "PeerWrite", "Done")

_THREAD_TOKEN = (("Enter", Enter), ("Queue", Queue), ("Take", Take), ("Exit", Exit))
_THREAD = (("Write", Write), ("Read", Read))
_PROC_TOKEN = (("Flag", Flag), ("Ask", Ask), ("MonTake", MonTake), ("Recall", Recall),
               ("Release", Release), ("MonRelease", MonRelease), ("Grant", Grant))
_PROC = (("Die", Die), ("Reclaim", Reclaim))
_ENV = (("PeerRead", PeerRead), ("PeerWrite", PeerWrite), ("Done", Done))


def next_states(par: Params, s: State) -> Iterator[tuple[Label, State]]:
    """TokenSharing!Next: every enabled action instance and its successor.

    ``Done`` is a stuttering step: it yields ``s``.
    """
    for t in par.Threads:
        for tok in par.Tokens:
            for name, action in _THREAD_TOKEN:
                nxt = action(par, s, t, tok)
                if nxt is not None:
                    yield Label(name, (t, tok)), nxt
        for name, action in _THREAD:
            nxt = action(par, s, t)
            if nxt is not None:
                yield Label(name, (t,)), nxt
    for p in par.Procs:
        for tok in par.Tokens:
            for name, action in _PROC_TOKEN:
                nxt = action(par, s, p, tok)
                if nxt is not None:
                    yield Label(name, (p, tok)), nxt
        for name, action in _PROC:
            nxt = action(par, s, p)
            if nxt is not None:
                yield Label(name, (p,)), nxt
    for name, action in _ENV:
        nxt = action(par, s)
        if nxt is not None:
            yield Label(name), nxt


_BY_NAME = dict(_THREAD_TOKEN + _THREAD + _PROC_TOKEN + _PROC + _ENV)


def step(par: Params, s: State, label: Label) -> State | None:
    """Apply the action named by ``label`` with its parameters; None if disabled.

    Raises ValueError for an unknown action, a wrong number of parameters or
    an unknown thread, process or token.
    """
    fn = _BY_NAME.get(label.name)
    if fn is None:
        raise ValueError(f"unknown action {label.name!r}; allowed: {', '.join(ACTIONS)}")
    arity = fn.__code__.co_argcount - 2
    if len(label.params) != arity:
        raise ValueError(f"{label.name} takes {arity} parameters, got {label.params!r}")
    return fn(par, s, *label.params)


# --------------------------------------------------------------------------
# Invariants


def TypeOK(par: Params, s: State) -> bool:
    """TokenSharing!TypeOK: every variable has the spec's type."""
    n_t, n_p, n_k = len(par.Threads), len(par.Procs), len(par.Tokens)

    def per(x: object, n: int, ok: Any) -> bool:
        return isinstance(x, tuple) and len(x) == n and all(ok(v) for v in x)

    def is_bool(v: object) -> bool:
        return type(v) is bool

    def is_word(w: object) -> bool:
        return (isinstance(w, Word) and (w.owner is None or w.owner in par.Threads)
                and is_bool(w.busy) and is_bool(w.want))

    def is_send(b: object) -> bool:
        return (isinstance(b, tuple) and len(b) == 3 and b[0] in par.Threads
                and type(b[1]) is int and 1 <= b[1] <= par.Calls
                and type(b[2]) is int and 1 <= b[2] <= par.CallLen)

    def is_got(b: object) -> bool:
        return (isinstance(b, tuple) and len(b) == 3 and b[0] in par.Threads
                and type(b[1]) is int and 1 <= b[1] <= par.Calls
                and type(b[2]) is int and b[2] >= 1)

    def is_msg(m: object) -> bool:
        return isinstance(m, Msg) and m.op in OPS and m.tok in par.Tokens

    def is_seq(x: object, ok: Any) -> bool:
        return isinstance(x, tuple) and all(ok(v) for v in x)

    waiters = set(par.Threads) | {AGENT}
    return (
        per(s.word, n_k, is_word)
        and is_seq(s.tx, is_send) and len(s.tx) <= par.Cap
        and is_seq(s.rx, lambda v: type(v) is int and v >= 1) and len(s.rx) <= par.Cap
        and per(s.pc, n_t, lambda v: v in PCS)
        and per(s.cur, n_t, lambda v: v in par.Tokens or v == NO_CALL)
        and per(s.calls, n_t, lambda v: type(v) is int and 0 <= v <= par.Calls)
        and per(s.prog, n_t, lambda v: type(v) is int and 0 <= v <= par.CallLen)
        and per(s.lq, n_p, lambda r: per(r, n_k, lambda q: is_seq(q, lambda x: x in waiters)))
        and per(s.pheld, n_p, lambda r: per(r, n_k, is_bool))
        and per(s.asked, n_p, lambda r: per(r, n_k, is_bool))
        and per(s.holder, n_k, lambda h: h is None or h in par.Procs)
        and per(s.queue, n_k, lambda q: is_seq(q, lambda x: x in par.Procs))
        and per(s.recalled, n_k, is_bool)
        and per(s.cleaned, n_p, is_bool)
        and per(s.reclaims, n_p, lambda r: per(r, n_k, lambda v: type(v) is int and v >= 0))
        and per(s.toMon, n_p, lambda q: is_seq(q, is_msg))
        and per(s.toProc, n_p, lambda q: is_seq(q, is_msg))
        and per(s.alive, n_p, is_bool)
        and is_seq(s.peerGot, is_send)
        and is_seq(s.rgot, is_got)
    )


def _live(par: Params, s: State, t: str) -> bool:
    """TokenSharing!Live(t): t's process runs."""
    return s.alive[par.proc(par.proc_of(t))]


def OneOwner(par: Params, s: State) -> bool:
    """TokenSharing!OneOwner: one thread in an operation per token, the busy owner.

    A named owner's process holds the token and the monitor agrees, unless
    that process died and the monitor has not noticed yet.
    """
    for j, tok in enumerate(par.Tokens):
        in_op = [i for i in range(len(par.Threads)) if s.pc[i] == "op" and s.cur[i] == tok]
        if len(in_op) > 1:
            return False
        w = s.word[j]
        if w.busy and w.owner is None:
            return False
        if w.owner is None:
            continue
        p = par.proc_of(w.owner)
        i = par.proc(p)
        if s.holder[j] != p:
            return False
        if s.alive[i] and not s.pheld[i][j]:
            return False
        if not s.alive[i] and s.cleaned[i]:
            return False
        o = par.thread(w.owner)
        if w.busy and s.alive[i] and (s.pc[o] != "op" or s.cur[o] != tok):
            return False
    return True


def OnlyOwnerTouches(par: Params, s: State) -> bool:
    """TokenSharing!OnlyOwnerTouches: every live thread in an operation is the busy owner."""
    for i, t in enumerate(par.Threads):
        if s.pc[i] == "op" and _live(par, s, t):
            w = s.word[par.token(s.cur[i])]
            if w.owner != t or not w.busy:
                return False
    return True


def OneHolder(par: Params, s: State) -> bool:
    """TokenSharing!OneHolder: at most one process holds a token, the monitor's holder.

    With no GRANT or RELEASE of it in flight, the monitor's live holder holds it.
    """
    for j, tok in enumerate(par.Tokens):
        holders = [i for i in range(len(par.Procs)) if s.pheld[i][j]]
        if len(holders) > 1:
            return False
        for i in holders:
            if s.holder[j] != par.Procs[i] or not s.alive[i]:
                return False
        h = s.holder[j]
        if h is not None:
            i = par.proc(h)
            if (s.alive[i] and Msg("GRANT", tok) not in s.toProc[i]
                    and Msg("RELEASE", tok) not in s.toMon[i] and not s.pheld[i][j]):
                return False
    return True


def LocalQueues(par: Params, s: State) -> bool:
    """TokenSharing!LocalQueues: each queued thread once in its process's queue.

    Entries are queued threads of that process for that token; the agent is
    there at most once, and only where the process holds the token.
    """
    for i, t in enumerate(par.Threads):
        if s.pc[i] == "queued" and _live(par, s, t):
            q = s.lq[par.proc(par.ProcOf[i])][par.token(s.cur[i])]
            if q.count(t) != 1:
                return False
    for i, p in enumerate(par.Procs):
        for j, tok in enumerate(par.Tokens):
            q = s.lq[i][j]
            for x in q:
                if x == AGENT:
                    continue
                o = par.thread(x)
                if par.ProcOf[o] != p or s.pc[o] != "queued" or s.cur[o] != tok:
                    return False
            if q.count(AGENT) > 1 or (AGENT in q and not s.pheld[i][j]):
                return False
    return True


def MonitorConsistent(par: Params, s: State) -> bool:
    """TokenSharing!MonitorConsistent: the monitor's queues, holders and recalls agree.

    A queue holds each process once, never the holder, only processes that
    asked (or died); a free token has no queue and no recall; while
    processes wait, the holder is being recalled; a recall in progress
    (RECALL in flight, the agent queued, RELEASE in flight) is the holder's
    and the monitor knows of it.
    """
    for j, tok in enumerate(par.Tokens):
        q, h = s.queue[j], s.holder[j]
        if len(set(q)) != len(q) or h in q:
            return False
        if h is None and (q or s.recalled[j]):
            return False
        if q and not s.recalled[j]:
            return False
        for i, p in enumerate(par.Procs):
            if p in q and not s.asked[i][j] and s.alive[i]:
                return False
            recalling = (Msg("RECALL", tok) in s.toProc[i] or AGENT in s.lq[i][j]
                         or Msg("RELEASE", tok) in s.toMon[i])
            if recalling and (h != p or not s.recalled[j]):
                return False
    return True


def RequestsKept(par: Params, s: State) -> bool:
    """TokenSharing!RequestsKept: no request is lost.

    A process that asked has its TAKE in flight, waits in the monitor's
    queue, or has been made the holder (GRANT in flight).
    """
    for i, p in enumerate(par.Procs):
        for j, tok in enumerate(par.Tokens):
            if not s.asked[i][j]:
                continue
            if Msg("TAKE", tok) in s.toMon[i] or p in s.queue[j]:
                continue
            if s.holder[j] == p and Msg("GRANT", tok) in s.toProc[i]:
                continue
            return False
    return True


def SendCallsWhole(par: Params, s: State) -> bool:
    """TokenSharing!SendCallsWhole: the send stream holds each call whole and in order.

    In ``peerGot`` followed by ``tx``: byte j > 1 of a call comes right
    after byte j - 1; where a call begins, every earlier byte of its thread
    is of an earlier call; a call stops short only at the end of the stream
    while still being written, or where its thread died in it; the call in
    progress has all the bytes its thread wrote.
    """
    stream = s.peerGot + s.tx
    for n, (t, c, x) in enumerate(stream):
        if x > 1 and (n == 0 or stream[n - 1] != (t, c, x - 1)):
            return False
        if x == 1 and any(b[0] == t and b[1] >= c for b in stream[:n]):
            return False
        if x < par.CallLen and (n + 1 == len(stream) or stream[n + 1] != (t, c, x + 1)):
            i = par.thread(t)
            if s.calls[i] != c:
                return False
            if not (s.pc[i] == "dead" or (s.pc[i] == "op" and n + 1 == len(stream))):
                return False
    for i, t in enumerate(par.Threads):
        if s.pc[i] == "op" and s.cur[i] == "send":
            if sum(1 for b in stream if b[0] == t and b[1] == s.calls[i]) != s.prog[i]:
                return False
    return True


def RecvInOrder(par: Params, s: State) -> bool:
    """TokenSharing!RecvInOrder: every byte the peer wrote is read once, in order.

    The readers got 1, 2, ... and the ring holds what follows; where a recv
    call's bytes begin, every earlier byte of its thread is of an earlier
    call (so a call's bytes are contiguous and each thread's calls in
    order); the call in an operation has the bytes it read.
    """
    got = s.rgot
    if any(b[2] != n for n, b in enumerate(got, 1)):
        return False
    if any(v != len(got) + n for n, v in enumerate(s.rx, 1)):
        return False
    for n, (t, c, _) in enumerate(got):
        if n == 0 or got[n - 1][:2] != (t, c):
            if any(b[0] == t and b[1] >= c for b in got[:n]):
                return False
    for i, t in enumerate(par.Threads):
        if s.pc[i] == "op" and s.cur[i] == "recv":
            if sum(1 for b in got if b[0] == t and b[1] == s.calls[i]) != s.prog[i]:
                return False
    return True


def ReclaimedOnce(par: Params, s: State) -> bool:
    """TokenSharing!ReclaimedOnce: a dead holder's token is reclaimed exactly once.

    At most once per process and token, only after the monitor noticed the
    death; once it has, nothing of the monitor's refers to the process.
    """
    for i, p in enumerate(par.Procs):
        for j in range(len(par.Tokens)):
            r = s.reclaims[i][j]
            if r > 1 or (r == 1 and not s.cleaned[i]):
                return False
        if s.cleaned[i]:
            if s.alive[i] or s.toMon[i] or s.toProc[i]:
                return False
            if any(h == p for h in s.holder) or any(p in q for q in s.queue):
                return False
    return True


INVARIANTS = {
    "TypeOK": TypeOK,
    "OneOwner": OneOwner,
    "OnlyOwnerTouches": OnlyOwnerTouches,
    "OneHolder": OneHolder,
    "LocalQueues": LocalQueues,
    "MonitorConsistent": MonitorConsistent,
    "RequestsKept": RequestsKept,
    "SendCallsWhole": SendCallsWhole,
    "RecvInOrder": RecvInOrder,
    "ReclaimedOnce": ReclaimedOnce,
}


def invariants(par: Params, s: State) -> list[str]:
    """The names of the spec's invariants that ``s`` violates (empty when all hold)."""
    return [name for name, inv in INVARIANTS.items() if not inv(par, s)]


# --------------------------------------------------------------------------
# The property of steps


def StablePending(par: Params, s: State, t: State) -> bool:
    """TokenSharing!StablePending: what is pending stays so until its goal holds.

    A queued thread stays queued until it takes the token or dies; a TAKE
    stays outstanding until granted or its process dies; a death and a
    clean-up stay.
    """
    for i in range(len(par.Threads)):
        if s.pc[i] == "queued" and t.pc[i] not in ("queued", "op", "dead"):
            return False
    for i in range(len(par.Procs)):
        for j in range(len(par.Tokens)):
            if s.asked[i][j] and not (t.asked[i][j] or t.pheld[i][j] or not t.alive[i]):
                return False
        if (not s.alive[i] and t.alive[i]) or (s.cleaned[i] and not t.cleaned[i]):
            return False
    return True


STEP_PROPERTIES = {"StablePending": StablePending}


def step_violations(par: Params, s: State, t: State) -> list[str]:
    """The names of the spec's properties of steps that the step s -> t violates."""
    return [name for name, prop in STEP_PROPERTIES.items() if not prop(par, s, t)]


# --------------------------------------------------------------------------
# Mapping to TLA+ values


def to_tla_state(par: Params, s: State) -> dict[str, object]:
    """The spec's variable values for ``s``, as ``spec.tlavalue.to_tla`` renders them.

    Functions on threads, processes and tokens become records (dicts with
    str keys), sequences tuples, words and messages records; None becomes
    the spec's NoThread (an owner) or NoProc (a holder).  This is the
    ``state`` of a :class:`spec.tracecheck.Event`.
    """
    toks, procs, threads = par.Tokens, par.Procs, par.Threads

    def by_tok(xs: tuple, f: Any = lambda v: v) -> dict[str, object]:
        return {k: f(v) for k, v in zip(toks, xs, strict=True)}

    def by_proc(xs: tuple, f: Any = lambda v: v) -> dict[str, object]:
        return {p: f(v) for p, v in zip(procs, xs, strict=True)}

    def by_thread(xs: tuple) -> dict[str, object]:
        return dict(zip(threads, xs, strict=True))

    def word(w: Word) -> dict[str, object]:
        return {"owner": NO_THREAD if w.owner is None else w.owner,
                "busy": w.busy, "want": w.want}

    def msgs(q: tuple[Msg, ...]) -> tuple[dict[str, str], ...]:
        return tuple({"op": m.op, "tok": m.tok} for m in q)

    return {
        "word": by_tok(s.word, word),
        "tx": s.tx,
        "rx": s.rx,
        "pc": by_thread(s.pc),
        "cur": by_thread(s.cur),
        "calls": by_thread(s.calls),
        "prog": by_thread(s.prog),
        "lq": by_proc(s.lq, by_tok),
        "pheld": by_proc(s.pheld, by_tok),
        "asked": by_proc(s.asked, by_tok),
        "holder": by_tok(s.holder, lambda h: NO_PROC if h is None else h),
        "queue": by_tok(s.queue),
        "recalled": by_tok(s.recalled),
        "cleaned": by_proc(s.cleaned),
        "reclaims": by_proc(s.reclaims, by_tok),
        "toMon": by_proc(s.toMon, msgs),
        "toProc": by_proc(s.toProc, msgs),
        "alive": by_proc(s.alive),
        "peerGot": s.peerGot,
        "rgot": s.rgot,
    }


def from_tla_state(par: Params, values: Mapping[str, object]) -> State:
    """Inverse of :func:`to_tla_state`, from parsed TLA+ values or plain Python ones.

    NoThread and NoProc may also be given as None.  Raises ValueError on a
    value that does not fit.
    """
    def by(keys: tuple[str, ...], fn: object, what: str) -> tuple:
        if not isinstance(fn, Mapping) or set(map(str, fn)) != set(keys):
            raise ValueError(f"{what} must be a function on {keys}, got {fn!r}")
        norm = {str(key): v for key, v in fn.items()}
        return tuple(norm[key] for key in keys)

    def seq(v: object, what: str) -> tuple:
        if not isinstance(v, tuple):
            raise ValueError(f"{what} must be a sequence, got {v!r}")
        return v

    def none_in(v: object, null: str) -> object:
        return None if v is None or v == null else v

    def word(v: object) -> Word:
        if not isinstance(v, Mapping) or set(v) != {"owner", "busy", "want"}:
            raise ValueError(f"a word must be [owner, busy, want], got {v!r}")
        owner = none_in(v["owner"], NO_THREAD)
        return Word(None if owner is None else str(owner), v["busy"], v["want"])

    def msg(v: object) -> Msg:
        if not isinstance(v, Mapping) or set(v) != {"op", "tok"}:
            raise ValueError(f"a message must be [op, tok], got {v!r}")
        return Msg(str(v["op"]), str(v["tok"]))

    def waiter(v: object) -> str:
        return str(v)

    def triple(v: object, what: str) -> tuple[str, int, int]:
        if not isinstance(v, tuple) or len(v) != 3:
            raise ValueError(f"{what} entries must be triples, got {v!r}")
        return (str(v[0]), v[1], v[2])

    toks, procs, threads = par.Tokens, par.Procs, par.Threads

    def per_pk(name: str, f: Any) -> tuple:
        return tuple(tuple(f(v) for v in by(toks, row, name))
                     for row in by(procs, values[name], name))

    return State(
        word=tuple(word(v) for v in by(toks, values["word"], "word")),
        tx=tuple(triple(b, "tx") for b in seq(values["tx"], "tx")),
        rx=seq(values["rx"], "rx"),
        pc=tuple(str(v) for v in by(threads, values["pc"], "pc")),
        cur=tuple(str(v) for v in by(threads, values["cur"], "cur")),
        calls=by(threads, values["calls"], "calls"),
        prog=by(threads, values["prog"], "prog"),
        lq=per_pk("lq", lambda q: tuple(waiter(x) for x in seq(q, "lq"))),
        pheld=per_pk("pheld", lambda v: v),
        asked=per_pk("asked", lambda v: v),
        holder=tuple(None if none_in(v, NO_PROC) is None else str(v)
                     for v in by(toks, values["holder"], "holder")),
        queue=tuple(tuple(str(x) for x in seq(q, "queue"))
                    for q in by(toks, values["queue"], "queue")),
        recalled=by(toks, values["recalled"], "recalled"),
        cleaned=by(procs, values["cleaned"], "cleaned"),
        reclaims=per_pk("reclaims", lambda v: v),
        toMon=tuple(tuple(msg(m) for m in seq(q, "toMon"))
                    for q in by(procs, values["toMon"], "toMon")),
        toProc=tuple(tuple(msg(m) for m in seq(q, "toProc"))
                     for q in by(procs, values["toProc"], "toProc")),
        alive=by(procs, values["alive"], "alive"),
        peerGot=tuple(triple(b, "peerGot") for b in seq(values["peerGot"], "peerGot")),
        rgot=tuple(triple(b, "rgot") for b in seq(values["rgot"], "rgot")),
    )
