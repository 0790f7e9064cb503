"""Executable model of ``spec/tla/Fork.tla``: fork() with user-space sockets.

Processes fork (the child gets a copy of the parent's fd table), dup, close
and die; the monitor lists each end's holders, learns of a child's ends by
its FORKED (Register), reaps dead processes and closes an end once no
process holds it (the hold pipe); per-process resources are made on demand
in a child; a send token per end is handed over through the monitor.  This
module mirrors the TLA+ specification one to one:

* :class:`Params` holds the spec's constants and enforces its ASSUME;
  :func:`constants_of` reads them from a TLC config;
* :class:`State` has exactly the spec's variables, in the spec's order;
* one function per action, with the action's exact name and parameters,
  returns the successor state or ``None`` when the action is disabled, so a
  test driver can take one step at a time; :func:`step` applies a
  :class:`Label`, :func:`next_states` yields every enabled action instance;
* one function per invariant and per property of steps (``ForkCopiesTable``,
  ``LowestFd``), with the spec's exact names; :func:`invariants` and
  :func:`step_violations` list the ones broken.

Representation.  Processes and ends are strings, fds ints, kept in
:class:`Params` sorted.  ``born`` and ``alive`` are frozensets of process
names; per-process variables (``parent``, ``fdt``, ``res``, ``pending``,
``pheld``, ``calls``) are tuples in ``Procs`` order, per-end ones
(``known``, ``monClosed``, ``eof``, ``tok``, ``queue``, ``busy``, ``ring``,
``peerGot``) tuples in ``Socks`` order; ``fdt[i]`` is a tuple in ``Fds``
order and ``calls[i]`` one in ``Socks`` order.  Sets (``pending[i]``,
``known[j]``, ``pheld[i]``) are frozensets of names.  The spec's ``Free``
(an unused fd) and ``NoProc`` (no parent, resource, token holder or sender)
are Python's ``None``.  A byte is the triple ``(process, call, index)``.
:func:`to_tla_state` gives the spec's values (dicts keyed by name, ``Free``
and ``NoProc`` as the spec's strings), which is what
:func:`spec.tracecheck.check_traces` takes; :func:`from_tla_state` is its
inverse.  :func:`holders` is the spec's ``Holders(s)``, :func:`held` its
``Held(p)``.

For a cross-check that drives the real implementation:

* :data:`EXTERNAL` names the actions a test driver chooses (``Fork``,
  ``Dup``, ``Close``, ``Die``, ``PeerRead``);
* :data:`INTERNAL` names the ones the library, the monitor and the token
  hand-over take on their own (``CreateResource``, ``Register``, ``Ask``,
  ``Handover``, ``SendStart``, ``Write``, ``SendEnd``, ``Reap``,
  ``MonClose``); ``Done`` (a stuttering step) is in neither;
* :func:`quiescent` says that no internal action is enabled: the state the
  real system settles in once the driver waits; :func:`internal_steps` and
  :func:`settle` follow internal actions only.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from spec.connect import constants_of as _constants_of

__all__ = [
    "ACTIONS",
    "EXTERNAL",
    "FREE",
    "INTERNAL",
    "INVARIANTS",
    "NO_PROC",
    "STEP_PROPERTIES",
    "Label",
    "Params",
    "State",
    "Fork",
    "CreateResource",
    "Register",
    "Dup",
    "Close",
    "Die",
    "Ask",
    "Handover",
    "SendStart",
    "Write",
    "SendEnd",
    "Reap",
    "MonClose",
    "PeerRead",
    "Done",
    "TypeOK",
    "PeerClosedOnlyWhenUnheld",
    "MonitorKnowsHolders",
    "KnownAreHolders",
    "ResourceOwned",
    "OneTokenHolder",
    "OnlySenderWrites",
    "SendCallsWhole",
    "MonitorClosedIsClosed",
    "ForkCopiesTable",
    "LowestFd",
    "constants_of",
    "from_tla_state",
    "held",
    "holders",
    "in_monitor",
    "init_states",
    "internal_steps",
    "invariants",
    "next_states",
    "quiescent",
    "settle",
    "step",
    "step_violations",
    "to_tla_state",
    "written",
]

FREE = "Free"       # Fork!Free, in TLA+ values (None in the model)
NO_PROC = "NoProc"  # Fork!NoProc, in TLA+ values (None in the model)
_RESERVED = (FREE, NO_PROC)
_SWITCHES = ("CountHolders", "FreshResources", "TokenStays")

#: Every action of Fork's Next, in the order :func:`next_states` tries them.
ACTIONS = ("Fork", "CreateResource", "Register", "Dup", "Close", "Die", "Ask", "Handover",
           "SendStart", "Write", "SendEnd", "Reap", "MonClose", "PeerRead", "Done")
#: The actions a test driver chooses (no fairness on them in the spec but PeerRead's).
EXTERNAL = ("Fork", "Dup", "Close", "Die", "PeerRead")
#: The actions the library, the monitor and the token hand-over take on their own.
INTERNAL = ("CreateResource", "Register", "Ask", "Handover", "SendStart", "Write", "SendEnd",
            "Reap", "MonClose")


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

    ``Procs`` and ``Socks`` are name sets (any iterable; stored sorted);
    ``Root`` is the process alive at the start, holding every end;
    ``Fds`` a non-empty set of fd numbers >= 0 (stored sorted), at least as
    many as ends; ``CallLen`` the bytes of a send call (>= 1); ``Calls`` the
    send calls each process makes on each end (>= 0); ``Mortal`` the
    processes that may die (stored sorted).  ``CountHolders``,
    ``FreshResources`` and ``TokenStays`` switch on the known-bad variants
    when False.
    """

    Procs: tuple[str, ...]
    Root: str
    Fds: tuple[int, ...]
    Socks: tuple[str, ...]
    CallLen: int
    Calls: int
    Mortal: tuple[str, ...] = ()
    CountHolders: bool = True
    FreshResources: bool = True
    TokenStays: bool = True

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalise the fields in place
        procs = _names(self.Procs, "Procs")
        socks = _names(self.Socks, "Socks")
        if set(procs) & set(socks):
            raise ValueError(f"Procs and Socks must not share names: {procs} {socks}")
        if set(_RESERVED) & (set(procs) | set(socks)):
            raise ValueError(f"no process or end may be called {', '.join(_RESERVED)}")
        set_(self, "Procs", procs)
        set_(self, "Socks", socks)
        if self.Root not in procs:
            raise ValueError(f"Root must be one of {procs}, got {self.Root!r}")
        set_(self, "Root", str(self.Root))
        if isinstance(self.Fds, str) or not isinstance(self.Fds, Iterable):
            raise ValueError(f"Fds must be a set of fd numbers, not {self.Fds!r}")
        fds = tuple(sorted(set(self.Fds)))
        if not fds or any(type(f) is not int or f < 0 for f in fds):
            raise ValueError(f"Fds must be a non-empty set of ints >= 0, got {self.Fds!r}")
        if len(socks) > len(fds):
            raise ValueError(f"Fds must have at least {len(socks)} fds (one per end), "
                             f"got {len(fds)}")
        set_(self, "Fds", fds)
        for name, low in (("CallLen", 1), ("Calls", 0)):
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
        names = ("Procs", "Root", "Fds", "Socks", "CallLen", "Calls", "Mortal", *_SWITCHES)
        missing = [n for n in names if n not in constants]
        if missing:
            raise ValueError(f"missing constants: {', '.join(missing)}")
        return cls(**{n: constants[n] for n in names})

    def constants(self) -> dict[str, object]:
        """The constants as TLA+ values, for ``spec.tracecheck.check_traces``."""
        return {
            "Procs": frozenset(self.Procs),
            "Root": self.Root,
            "Fds": frozenset(self.Fds),
            "Socks": frozenset(self.Socks),
            "CallLen": self.CallLen,
            "Calls": self.Calls,
            "Mortal": frozenset(self.Mortal),
            "CountHolders": self.CountHolders,
            "FreshResources": self.FreshResources,
            "TokenStays": self.TokenStays,
        }

    def proc(self, p: str) -> int:
        """The index of process *p* in the per-process tuples."""
        try:
            return self.Procs.index(p)
        except ValueError:
            raise ValueError(f"unknown process {p!r}; Procs are {self.Procs}") from None

    def sock(self, s: str) -> int:
        """The index of end *s* in the per-end tuples."""
        try:
            return self.Socks.index(s)
        except ValueError:
            raise ValueError(f"unknown end {s!r}; Socks are {self.Socks}") from None

    def fd(self, f: int) -> int:
        """The index of fd *f* in an fd table."""
        try:
            return self.Fds.index(f)
        except ValueError:
            raise ValueError(f"unknown fd {f!r}; Fds are {self.Fds}") from None


def constants_of(cfg: str | Path, module: str = "MCFork") -> dict[str, Any]:
    """The constants a Fork config gives (substitutions from *module* resolved)."""
    return _constants_of(cfg, module)


# --------------------------------------------------------------------------
# State


Byte = tuple[str, int, int]   # (process, call, byte index in the call)


class State(NamedTuple):
    """One state of Fork: the spec's variables, in the spec's order.

    See the module docstring for how each is laid out.
    """

    born: frozenset[str]
    alive: frozenset[str]
    parent: tuple[str | None, ...]
    fdt: tuple[tuple[str | None, ...], ...]
    res: tuple[str | None, ...]
    pending: tuple[frozenset[str], ...]
    known: tuple[frozenset[str], ...]
    monClosed: tuple[bool, ...]
    eof: tuple[bool, ...]
    pheld: tuple[frozenset[str], ...]
    tok: tuple[str | None, ...]
    queue: tuple[tuple[str, ...], ...]
    busy: tuple[str | None, ...]
    calls: tuple[tuple[int, ...], ...]
    ring: tuple[tuple[Byte, ...], ...]
    peerGot: tuple[tuple[Byte, ...], ...]


class Label(NamedTuple):
    """An action with its parameters, e.g. ``Label("Fork", ("p1", "p2"))``."""

    name: str
    params: tuple[Any, ...] = ()

    def __str__(self) -> str:
        if not self.params:
            return self.name
        return f"{self.name}({', '.join(map(str, self.params))})"


def _set(t: tuple, i: int, v: object) -> tuple:
    """*t* with entry *i* replaced by *v*."""
    return t[:i] + (v,) + t[i + 1:]


def holders(par: Params, s: State, sock: str) -> frozenset[str]:
    """Fork!Holders(s): the live processes with an fd of *sock* (the kernel's count)."""
    return frozenset(p for i, p in enumerate(par.Procs)
                     if p in s.alive and sock in s.fdt[i])


def held(par: Params, s: State, p: str) -> frozenset[str]:
    """Fork!Held(p): the ends *p* has an fd of."""
    return frozenset(x for x in s.fdt[par.proc(p)] if x is not None)


def in_monitor(par: Params, s: State, p: str) -> bool:
    """Fork!InMonitor(p): the monitor lists *p* as a holder, a waiter or a token holder."""
    return any(p in k for k in s.known) or any(p in q for q in s.queue) or p in s.tok


def _stream(s: State, j: int) -> tuple[Byte, ...]:
    """Fork!Stream(s): what the peer read from end *j*, then what its ring holds."""
    return s.peerGot[j] + s.ring[j]


def written(par: Params, s: State, p: str, sock: str) -> int:
    """Fork!Written(p, s): the bytes *p*'s current call on *sock* has written."""
    i, j = par.proc(p), par.sock(sock)
    c = s.calls[i][j]
    return sum(1 for b in _stream(s, j) if b[0] == p and b[1] == c)


def _lowest_free(s: State, i: int) -> int | None:
    """Fork!LowestFree: the index of the lowest free fd of process *i*, or None."""
    for n, x in enumerate(s.fdt[i]):
        if x is None:
            return n
    return None


# --------------------------------------------------------------------------
# Init


def init_states(par: Params) -> list[State]:
    """Fork!Init: Root alive, holding every end on its lowest fds (any one-to-one order)."""
    n_p, n_s, n_f = len(par.Procs), len(par.Socks), len(par.Fds)
    root = par.proc(par.Root)
    states = []
    for order in itertools.permutations(par.Socks):
        table = order + (None,) * (n_f - n_s)
        states.append(State(
            born=frozenset({par.Root}),
            alive=frozenset({par.Root}),
            parent=(None,) * n_p,
            fdt=tuple(table if i == root else (None,) * n_f for i in range(n_p)),
            res=tuple(par.Root if i == root else None for i in range(n_p)),
            pending=(frozenset(),) * n_p,
            known=(frozenset({par.Root}),) * n_s,
            monClosed=(False,) * n_s,
            eof=(False,) * n_s,
            pheld=tuple(frozenset(par.Socks) if i == root else frozenset()
                        for i in range(n_p)),
            tok=(par.Root,) * n_s,
            queue=((),) * n_s,
            busy=(None,) * n_s,
            calls=((0,) * n_s,) * n_p,
            ring=((),) * n_s,
            peerGot=((),) * n_s,
        ))
    return states


# --------------------------------------------------------------------------
# Processes: fork, the fd table, death


def Fork(par: Params, s: State, p: str, c: str) -> State | None:
    """Fork!Fork(p, c): p forks the unborn c, which gets a copy of p's fd table.

    c's ends are pending until its FORKED is read; its resource is none (or
    p's, without FreshResources); it holds no token (or p's, without
    TokenStays).
    """
    i, k = par.proc(p), par.proc(c)
    if p not in s.alive or c in s.born:
        return None
    return s._replace(
        born=s.born | {c},
        alive=s.alive | {c},
        parent=_set(s.parent, k, p),
        fdt=_set(s.fdt, k, s.fdt[i]),
        pending=_set(s.pending, k, held(par, s, p)),
        res=_set(s.res, k, None if par.FreshResources else s.res[i]),
        pheld=_set(s.pheld, k, frozenset() if par.TokenStays else s.pheld[i]),
        calls=_set(s.calls, k, (0,) * len(par.Socks)),
    )


def CreateResource(par: Params, s: State, p: str) -> State | None:
    """Fork!CreateResource(p): p makes its own per-process resource, on demand.

    Only a process that holds an end has a use for one (a FORKED, a TAKE, a CLOSE).
    """
    i = par.proc(p)
    if p not in s.alive or s.res[i] == p or not held(par, s, p):
        return None
    return s._replace(res=_set(s.res, i, p))


def Register(par: Params, s: State, c: str) -> State | None:
    """Fork!Register(c): the monitor reads c's FORKED (c may be dead by then).

    c joins the holders of its pending ends the monitor has not closed.
    """
    k = par.proc(c)
    if not s.pending[k] or s.res[k] is None:
        return None
    known = tuple(kn | {c} if x in s.pending[k] and not s.monClosed[j] else kn
                  for j, (x, kn) in enumerate(zip(par.Socks, s.known, strict=True)))
    return s._replace(known=known, pending=_set(s.pending, k, frozenset()))


def Dup(par: Params, s: State, p: str, f: int) -> State | None:
    """Fork!Dup(p, f): the lowest free fd of p gets the end of fd f."""
    i, n = par.proc(p), par.fd(f)
    x = s.fdt[i][n]
    low = _lowest_free(s, i)
    if p not in s.alive or x is None or low is None:
        return None
    return s._replace(fdt=_set(s.fdt, i, _set(s.fdt[i], low, x)))


def Close(par: Params, s: State, p: str, f: int) -> State | None:
    """Fork!Close(p, f): p closes fd f, not inside a send call on its end.

    Closing p's last copy of the end sends CLOSE through p's resource (so
    needs one): the monitor drops it from the holders and the token queue
    and frees a token it held; the rings close if p was the end's last
    holder (without CountHolders: whenever p closes its last copy).
    """
    i, n = par.proc(p), par.fd(f)
    x = s.fdt[i][n]
    if p not in s.alive or x is None:
        return None
    j = par.sock(x)
    if x in s.pending[i] or s.busy[j] == p:
        return None
    t = s._replace(fdt=_set(s.fdt, i, _set(s.fdt[i], n, None)))
    if x in t.fdt[i]:
        return t   # not the last copy: the monitor is not told
    me = s.res[i]
    if me is None:
        return None
    closes = holders(par, s, x) == {p} if par.CountHolders else True
    return t._replace(
        eof=_set(s.eof, j, s.eof[j] or closes),
        known=_set(s.known, j, s.known[j] - {me}),
        queue=_set(s.queue, j, tuple(q for q in s.queue[j] if q != me)),
        tok=_set(s.tok, j, None if s.tok[j] == me else s.tok[j]),
        pheld=_set(s.pheld, i, s.pheld[i] - {x}),
    )


def Die(par: Params, s: State, p: str) -> State | None:
    """Fork!Die(p): kill -9; the kernel closes p's fds.  The monitor notices later."""
    i = par.proc(p)
    if p not in par.Mortal or p not in s.alive:
        return None
    return s._replace(alive=s.alive - {p}, fdt=_set(s.fdt, i, (None,) * len(par.Fds)))


# --------------------------------------------------------------------------
# The send token and send calls


def Ask(par: Params, s: State, p: str, sock: str) -> State | None:
    """Fork!Ask(p, s): p has a send call to make and no token: its resource queues."""
    i, j = par.proc(p), par.sock(sock)
    me = s.res[i]
    if (p not in holders(par, s, sock) or sock in s.pending[i] or s.calls[i][j] >= par.Calls
            or sock in s.pheld[i] or me is None or me in s.queue[j]):
        return None
    return s._replace(queue=_set(s.queue, j, s.queue[j] + (me,)))


def Handover(par: Params, s: State, sock: str) -> State | None:
    """Fork!Handover(s): the first process queued gets the token, no call under way."""
    j = par.sock(sock)
    old = s.tok[j]
    if not s.queue[j] or s.busy[j] is not None or not (old is None or old in s.alive):
        return None
    h = s.queue[j][0]
    pheld = tuple(ph | {sock} if p == h else ph - {sock} if p == old else ph
                  for p, ph in zip(par.Procs, s.pheld, strict=True))
    return s._replace(tok=_set(s.tok, j, h), pheld=pheld,
                      queue=_set(s.queue, j, s.queue[j][1:]))


def SendStart(par: Params, s: State, p: str, sock: str) -> State | None:
    """Fork!SendStart(p, s): p, holding the token, starts a send call on s."""
    i, j = par.proc(p), par.sock(sock)
    if (p not in holders(par, s, sock) or sock not in s.pheld[i] or s.tok[j] != p
            or s.busy[j] is not None or s.calls[i][j] >= par.Calls):
        return None
    return s._replace(busy=_set(s.busy, j, p),
                      calls=_set(s.calls, i, _set(s.calls[i], j, s.calls[i][j] + 1)))


def Write(par: Params, s: State, p: str, sock: str) -> State | None:
    """Fork!Write(p, s): p's send call writes its next byte into s's ring."""
    i, j = par.proc(p), par.sock(sock)
    if s.busy[j] != p or p not in s.alive:
        return None
    n = written(par, s, p, sock)
    if n >= par.CallLen:
        return None
    return s._replace(ring=_set(s.ring, j, s.ring[j] + ((p, s.calls[i][j], n + 1),)))


def SendEnd(par: Params, s: State, p: str, sock: str) -> State | None:
    """Fork!SendEnd(p, s): p's send call has written its CallLen bytes and ends."""
    j = par.sock(sock)
    if s.busy[j] != p or p not in s.alive or written(par, s, p, sock) != par.CallLen:
        return None
    return s._replace(busy=_set(s.busy, j, None))


# --------------------------------------------------------------------------
# The monitor and the peer


def Reap(par: Params, s: State, p: str) -> State | None:
    """Fork!Reap(p): the monitor notices p's death and drops it everywhere.

    A token p held is freed, the busy word of a send p died in is reset.
    Only after any FORKED of p was read.
    """
    i = par.proc(p)
    if p not in s.born or p in s.alive or not in_monitor(par, s, p) or s.pending[i]:
        return None
    return s._replace(
        known=tuple(k - {p} for k in s.known),
        queue=tuple(tuple(x for x in q if x != p) for q in s.queue),
        tok=tuple(None if t == p else t for t in s.tok),
        busy=tuple(None if b == p else b for b in s.busy),
    )


def MonClose(par: Params, s: State, sock: str) -> State | None:
    """Fork!MonClose(s): no listed holder and the hold pipe's POLLHUP: s is closed."""
    j = par.sock(sock)
    if s.monClosed[j] or s.known[j] or holders(par, s, sock):
        return None
    return s._replace(monClosed=_set(s.monClosed, j, True), eof=_set(s.eof, j, True))


def PeerRead(par: Params, s: State, sock: str) -> State | None:
    """Fork!PeerRead(s): the peer reads the oldest byte of s's ring."""
    j = par.sock(sock)
    if not s.ring[j]:
        return None
    return s._replace(peerGot=_set(s.peerGot, j, s.peerGot[j] + s.ring[j][:1]),
                      ring=_set(s.ring, j, s.ring[j][1:]))


def Done(par: Params, s: State) -> State | None:
    """Fork!Done: everyone born (or no one alive) and no live process holds an end.

    A stuttering step: returns ``s`` itself when enabled.
    """
    if len(s.born) != len(par.Procs) and s.alive:
        return None
    if any(held(par, s, p) for p in s.alive):
        return None
    return s


_PROC_PROC = (("Fork", Fork),)
_PROC = (("CreateResource", CreateResource), ("Register", Register), ("Die", Die),
         ("Reap", Reap))
_PROC_FD = (("Dup", Dup), ("Close", Close))
_PROC_SOCK = (("Ask", Ask), ("SendStart", SendStart), ("Write", Write), ("SendEnd", SendEnd))
_SOCK = (("Handover", Handover), ("MonClose", MonClose), ("PeerRead", PeerRead))
_ENV = (("Done", Done),)
_BY_NAME = dict(_PROC_PROC + _PROC + _PROC_FD + _PROC_SOCK + _SOCK + _ENV)
assert set(_BY_NAME) == set(ACTIONS) == set(INTERNAL) | set(EXTERNAL) | {"Done"}


def _instances(par: Params, names: Iterable[str]) -> Iterator[tuple[str, tuple]]:
    """Every (action, params) instance of the named actions, in Next's order."""
    wanted = set(names)
    for p in par.Procs:
        for name, _ in _PROC_PROC:
            if name in wanted:
                for c in par.Procs:
                    yield name, (p, c)
        for name, _ in _PROC:
            if name in wanted:
                yield name, (p,)
        for name, _ in _PROC_FD:
            if name in wanted:
                for f in par.Fds:
                    yield name, (p, f)
        for name, _ in _PROC_SOCK:
            if name in wanted:
                for x in par.Socks:
                    yield name, (p, x)
    for x in par.Socks:
        for name, _ in _SOCK:
            if name in wanted:
                yield name, (x,)
    for name, _ in _ENV:
        if name in wanted:
            yield name, ()


def next_states(par: Params, s: State) -> Iterator[tuple[Label, State]]:
    """Fork!Next: every enabled action instance and its successor.

    ``Done`` is a stuttering step: it yields ``s``.
    """
    for name, params in _instances(par, ACTIONS):
        t = _BY_NAME[name](par, s, *params)
        if t is not None:
            yield Label(name, params), t


def internal_steps(par: Params, s: State) -> Iterator[tuple[Label, State]]:
    """The enabled instances of the :data:`INTERNAL` actions and their successors."""
    for name, params in _instances(par, INTERNAL):
        t = _BY_NAME[name](par, s, *params)
        if t is not None:
            yield Label(name, params), t


def quiescent(par: Params, s: State) -> bool:
    """No :data:`INTERNAL` action is enabled in *s*: only the driver can move it on."""
    return next(internal_steps(par, s), None) is None


def settle(par: Params, s: State, limit: int = 10_000) -> list[tuple[Label, State]]:
    """Take internal steps (always the first enabled one) until *s* is quiescent.

    Returns the steps taken.  Internal steps alone always end (finitely many
    calls, resources, registrations); *limit* guards against a model bug
    with ``RuntimeError``.
    """
    taken: list[tuple[Label, State]] = []
    while (nxt := next(internal_steps(par, s), None)) is not None:
        if len(taken) >= limit:
            raise RuntimeError(f"no quiescent state after {limit} internal steps")
        taken.append(nxt)
        s = nxt[1]
    return taken


def step(par: Params, s: State, label: Label) -> State | None:
    """Apply the action named by ``label`` with its parameters; None if disabled.

    Raises ValueError for an unknown action, a wrong number of parameters or
    an unknown process, fd or end.
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
    """Fork!TypeOK: every variable has the spec's type."""
    procs, socks = set(par.Procs), set(par.Socks)
    n_p, n_s, n_f = len(par.Procs), len(par.Socks), len(par.Fds)

    def per(x: object, n: int, ok: Any) -> bool:
        return isinstance(x, tuple) and len(x) == n and all(ok(v) for v in x)

    def names(x: object, allowed: set[str]) -> bool:
        return isinstance(x, frozenset) and x <= allowed

    def proc_or_none(v: object) -> bool:
        return v is None or v in procs

    def is_byte(b: object) -> bool:
        return (isinstance(b, tuple) and len(b) == 3 and b[0] in procs
                and type(b[1]) is int and 1 <= b[1] <= par.Calls
                and type(b[2]) is int and 1 <= b[2] <= par.CallLen)

    def is_seq(x: object, ok: Any) -> bool:
        return isinstance(x, tuple) and all(ok(v) for v in x)

    def is_bool(v: object) -> bool:
        return type(v) is bool

    return (
        names(s.born, procs) and names(s.alive, set(s.born))
        and per(s.parent, n_p, proc_or_none)
        and per(s.fdt, n_p, lambda t: per(t, n_f, lambda x: x is None or x in socks))
        and per(s.res, n_p, proc_or_none)
        and per(s.pending, n_p, lambda x: names(x, socks))
        and per(s.known, n_s, lambda x: names(x, procs))
        and per(s.monClosed, n_s, is_bool)
        and per(s.eof, n_s, is_bool)
        and per(s.pheld, n_p, lambda x: names(x, socks))
        and per(s.tok, n_s, proc_or_none)
        and per(s.queue, n_s, lambda q: is_seq(q, lambda x: x in procs))
        and per(s.busy, n_s, proc_or_none)
        and per(s.calls, n_p,
                lambda r: per(r, n_s, lambda v: type(v) is int and 0 <= v <= par.Calls))
        and per(s.ring, n_s, lambda q: is_seq(q, is_byte))
        and per(s.peerGot, n_s, lambda q: is_seq(q, is_byte))
    )


def PeerClosedOnlyWhenUnheld(par: Params, s: State) -> bool:
    """Fork!PeerClosedOnlyWhenUnheld: the peer sees EOF only when no process holds the end."""
    return all(not s.eof[j] or not holders(par, s, x) for j, x in enumerate(par.Socks))


def MonitorKnowsHolders(par: Params, s: State) -> bool:
    """Fork!MonitorKnowsHolders: every live holder whose FORKED was read is listed."""
    for j, x in enumerate(par.Socks):
        for p in holders(par, s, x):
            if x not in s.pending[par.proc(p)] and p not in s.known[j]:
                return False
    return True


def KnownAreHolders(par: Params, s: State) -> bool:
    """Fork!KnownAreHolders: the listed holders hold the end, or died unreaped."""
    dead = s.born - s.alive
    return all(s.known[j] <= holders(par, s, x) | dead for j, x in enumerate(par.Socks))


def ResourceOwned(par: Params, s: State) -> bool:
    """Fork!ResourceOwned: a live process's memory refers to its own resource or none."""
    return all(s.res[par.proc(p)] in (None, p) for p in s.alive)


def OneTokenHolder(par: Params, s: State) -> bool:
    """Fork!OneTokenHolder: at most one live process believes it holds a send token.

    If one does, the monitor's holder is that process.
    """
    for j, x in enumerate(par.Socks):
        believers = [p for p in s.alive if x in s.pheld[par.proc(p)]]
        if len(believers) > 1 or any(s.tok[j] != p for p in believers):
            return False
    return True


def OnlySenderWrites(par: Params, s: State) -> bool:
    """Fork!OnlySenderWrites: only the token holder writes.

    A send call under way is the token holder's (who believes it, if alive)
    and counted in its calls; every byte in the stream is of a call its
    process started.
    """
    for j, x in enumerate(par.Socks):
        b = s.busy[j]
        if b is not None:
            if s.tok[j] != b or s.calls[par.proc(b)][j] == 0:
                return False
            if b in s.alive and x not in s.pheld[par.proc(b)]:
                return False
        for p, c, _ in _stream(s, j):
            if c > s.calls[par.proc(p)][j]:
                return False
    return True


def SendCallsWhole(par: Params, s: State) -> bool:
    """Fork!SendCallsWhole: each call's bytes contiguous and in order, calls in order.

    In the stream of each end: byte j > 1 of a call right after byte j - 1;
    where a call begins, every earlier byte of its process is of an earlier
    call; a call stops short only at the end of the stream while being
    written, or where its process died.
    """
    for j in range(len(par.Socks)):
        stream = _stream(s, j)
        for n, (p, c, x) in enumerate(stream):
            if x > 1 and (n == 0 or stream[n - 1] != (p, c, x - 1)):
                return False
            if x == 1 and any(b[0] == p and b[1] >= c for b in stream[:n]):
                return False
            if x < par.CallLen and (n + 1 == len(stream) or stream[n + 1] != (p, c, x + 1)):
                if s.calls[par.proc(p)][j] != c:
                    return False
                if p in s.alive and not (s.busy[j] == p and n + 1 == len(stream)):
                    return False
    return True


def MonitorClosedIsClosed(par: Params, s: State) -> bool:
    """Fork!MonitorClosedIsClosed: a closed end has EOF and no holder."""
    return all(not s.monClosed[j] or (s.eof[j] and not holders(par, s, x))
               for j, x in enumerate(par.Socks))


INVARIANTS = {
    "TypeOK": TypeOK,
    "PeerClosedOnlyWhenUnheld": PeerClosedOnlyWhenUnheld,
    "MonitorKnowsHolders": MonitorKnowsHolders,
    "KnownAreHolders": KnownAreHolders,
    "ResourceOwned": ResourceOwned,
    "OneTokenHolder": OneTokenHolder,
    "OnlySenderWrites": OnlySenderWrites,
    "SendCallsWhole": SendCallsWhole,
    "MonitorClosedIsClosed": MonitorClosedIsClosed,
}


def invariants(par: Params, s: State) -> list[str]:
    """The names of the spec's invariants that ``s`` violates (empty when all hold)."""
    return [name for name, inv in INVARIANTS.items() if not inv(par, s)]


# --------------------------------------------------------------------------
# Properties of steps


def ForkCopiesTable(par: Params, s: State, t: State) -> bool:
    """Fork!ForkCopiesTable: a process born in the step has its parent's table.

    The parent was alive, and the child's table is the parent's before the step.
    """
    for c in t.born - s.born:
        k = par.proc(c)
        p = t.parent[k]
        if p is None or p not in s.alive or t.fdt[k] != s.fdt[par.proc(p)]:
            return False
    return True


def LowestFd(par: Params, s: State, t: State) -> bool:
    """Fork!LowestFd: an fd that becomes used in an existing process was the lowest free."""
    for p in s.born:
        i = par.proc(p)
        for n, (a, b) in enumerate(zip(s.fdt[i], t.fdt[i], strict=True)):
            if a is None and b is not None and None in s.fdt[i][:n]:
                return False
    return True


STEP_PROPERTIES = {"ForkCopiesTable": ForkCopiesTable, "LowestFd": LowestFd}


def step_violations(par: Params, s: State, t: State) -> list[str]:
    """The names of the spec's properties of steps that the step s -> t violates."""
    return [name for name, prop in STEP_PROPERTIES.items() if not prop(par, s, t)]


# --------------------------------------------------------------------------
# Mapping to TLA+ values


def _tla_proc(p: str | None) -> str:
    return NO_PROC if p is None else p


def to_tla_state(par: Params, s: State) -> dict[str, object]:
    """The spec's variable values for ``s``, as ``spec.tlavalue.to_tla`` renders them.

    Functions on processes and ends become records (dicts with str keys),
    an fd table a function on ``Fds`` (a dict with int keys), sets
    frozensets, sequences tuples; None becomes the spec's ``Free`` (an fd)
    or ``NoProc``.  This is the ``state`` of a :class:`spec.tracecheck.Event`.
    """
    procs, socks = par.Procs, par.Socks

    def by_proc(xs: tuple, f: Any = lambda v: v) -> dict[str, object]:
        return {p: f(v) for p, v in zip(procs, xs, strict=True)}

    def by_sock(xs: tuple, f: Any = lambda v: v) -> dict[str, object]:
        return {x: f(v) for x, v in zip(socks, xs, strict=True)}

    def table(t: tuple) -> dict[int, str]:
        return {f: FREE if x is None else x for f, x in zip(par.Fds, t, strict=True)}

    return {
        "born": frozenset(s.born),
        "alive": frozenset(s.alive),
        "parent": by_proc(s.parent, _tla_proc),
        "fdt": by_proc(s.fdt, table),
        "res": by_proc(s.res, _tla_proc),
        "pending": by_proc(s.pending, frozenset),
        "known": by_sock(s.known, frozenset),
        "monClosed": by_sock(s.monClosed),
        "eof": by_sock(s.eof),
        "pheld": by_proc(s.pheld, frozenset),
        "tok": by_sock(s.tok, _tla_proc),
        "queue": by_sock(s.queue),
        "busy": by_sock(s.busy, _tla_proc),
        "calls": by_proc(s.calls, lambda r: by_sock(r)),
        "ring": by_sock(s.ring),
        "peerGot": by_sock(s.peerGot),
    }


def from_tla_state(par: Params, values: Mapping[str, object]) -> State:
    """Inverse of :func:`to_tla_state`, from parsed TLA+ values or plain Python ones.

    ``Free`` and ``NoProc`` may also be given as None; an fd table over
    ``1..n`` may come as a sequence (TLC prints it so).  Raises ValueError
    on a value that does not fit.
    """
    def by(keys: tuple, fn: object, what: str) -> tuple:
        if isinstance(fn, tuple) and tuple(range(1, len(fn) + 1)) == keys:
            fn = dict(enumerate(fn, start=1))   # TLC prints [1..n -> ...] as a sequence
        if not isinstance(fn, Mapping) or set(fn) != set(keys):
            raise ValueError(f"{what} must be a function on {keys}, got {fn!r}")
        return tuple(fn[k] for k in keys)

    def seq(v: object, what: str) -> tuple:
        if not isinstance(v, tuple):
            raise ValueError(f"{what} must be a sequence, got {v!r}")
        return v

    def nameset(v: object, what: str) -> frozenset[str]:
        if not isinstance(v, frozenset | set | tuple):
            raise ValueError(f"{what} must be a set, got {v!r}")
        return frozenset(str(x) for x in v)

    def proc(v: object) -> str | None:
        return None if v is None or v == NO_PROC else str(v)

    def end(v: object) -> str | None:
        return None if v is None or v == FREE else str(v)

    def byte(b: object, what: str) -> Byte:
        if not isinstance(b, tuple) or len(b) != 3:
            raise ValueError(f"{what} entries must be triples, got {b!r}")
        return (str(b[0]), b[1], b[2])

    procs, socks, fds = par.Procs, par.Socks, par.Fds
    return State(
        born=nameset(values["born"], "born"),
        alive=nameset(values["alive"], "alive"),
        parent=tuple(proc(v) for v in by(procs, values["parent"], "parent")),
        fdt=tuple(tuple(end(x) for x in by(fds, t, "fdt[p]"))
                  for t in by(procs, values["fdt"], "fdt")),
        res=tuple(proc(v) for v in by(procs, values["res"], "res")),
        pending=tuple(nameset(v, "pending") for v in by(procs, values["pending"], "pending")),
        known=tuple(nameset(v, "known") for v in by(socks, values["known"], "known")),
        monClosed=by(socks, values["monClosed"], "monClosed"),
        eof=by(socks, values["eof"], "eof"),
        pheld=tuple(nameset(v, "pheld") for v in by(procs, values["pheld"], "pheld")),
        tok=tuple(proc(v) for v in by(socks, values["tok"], "tok")),
        queue=tuple(tuple(str(x) for x in seq(q, "queue"))
                    for q in by(socks, values["queue"], "queue")),
        busy=tuple(proc(v) for v in by(socks, values["busy"], "busy")),
        calls=tuple(by(socks, r, "calls[p]") for r in by(procs, values["calls"], "calls")),
        ring=tuple(tuple(byte(b, "ring") for b in seq(q, "ring"))
                   for q in by(socks, values["ring"], "ring")),
        peerGot=tuple(tuple(byte(b, "peerGot") for b in seq(q, "peerGot"))
                      for q in by(socks, values["peerGot"], "peerGot")),
    )
