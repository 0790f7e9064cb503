"""Executable model of ``spec/tla/Connect.tla``: connection set-up through the monitor.

A trusted monitor sets up connections between processes on one host: they
listen, connect, accept and close through it; a process may die at any time
and the monitor cleans up after it; the operator may reload the ACL.  This
module mirrors the TLA+ specification one to one:

* :class:`Params` holds the spec's constants and enforces its ASSUME;
* :class:`State` has exactly the spec's variables;
* one function per action, with the action's exact name and enabling
  condition, returns the successor state or ``None`` when the action is
  disabled;
* one function per invariant, and one per property of steps (the spec's
  ``[][A]_vars`` properties), with the spec's exact names.

Representation.  Processes and addresses are strings (``"p1"``, ``"a1"``),
kept in sorted order in :class:`Params`; the per-process variables
(``alive``, ``req``, ``reply``, ``cleaned``) are tuples in ``Procs`` order,
``listeners`` a tuple in ``Addrs`` order and ``conns`` a tuple indexed by
conn id - 1.  The spec's model value ``None`` is Python's ``None``.  An ACL
is a frozenset of ``(direction, proc, addr)`` triples.  :func:`to_tla_state`
and :func:`from_tla_state` convert to and from the spec's values (dicts
keyed by process, address and conn id), which is also the form a refinement
mapping of the real monitor can produce.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from spec import tlavalue
from spec.configs import read_constants

__all__ = [
    "ACTIONS",
    "INVARIANTS",
    "STEP_PROPERTIES",
    "DIRECTIONS",
    "ENDS",
    "NO_REPLY",
    "Conn",
    "Label",
    "Listener",
    "Params",
    "Reply",
    "State",
    "Listen",
    "ListenDenied",
    "Unlisten",
    "Connect",
    "HandleConnect",
    "Accept",
    "Close",
    "Die",
    "Cleanup",
    "Reload",
    "Done",
    "TypeOK",
    "AcceptedMatchesOneConnect",
    "BacklogBound",
    "NoLeak",
    "NoBypass",
    "ConnsCreatedOnce",
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

Rule = tuple[str, str, str]
Acl = frozenset[Rule]

DIRECTIONS = ("listen", "connect")
CLIENT_STATES = ("open", "closed")
SERVER_STATES = ("queued", "open", "closed")
REPLY_KINDS = ("none", "kernel", "refused", "ring")
NO_CONN = 0  # the conn field of a reply that is not "ring"
ENDS = ("client", "server")


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


def _acl(value: object, procs: tuple[str, ...], addrs: tuple[str, ...]) -> Acl:
    """One ACL: a set of (direction, proc, addr) triples over the given names."""
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise ValueError(f"an ACL must be a set of triples, not {value!r}")
    rules = []
    for r in value:
        if not (
            isinstance(r, tuple) and len(r) == 3
            and r[0] in DIRECTIONS and r[1] in procs and r[2] in addrs
        ):
            raise ValueError(
                f"an ACL rule must be (direction, proc, addr) with direction in "
                f"{DIRECTIONS}, proc in {procs}, addr in {addrs}; got {r!r}"
            )
        rules.append((str(r[0]), str(r[1]), str(r[2])))
    return frozenset(rules)


@dataclass(frozen=True, slots=True)
class Params:
    """The spec's CONSTANTS; construction checks the spec's ASSUME.

    ``Procs`` and ``Addrs`` are the process and address names (any iterable;
    stored sorted); ``Backlog`` the most queued conns per listener;
    ``MaxConns`` the number of conn ids; ``Acls`` the ACLs the operator may
    load and ``InitAcl`` the one in force at start; ``CleanupQueues`` and
    ``CheckAclFirst`` switch off parts of the protocol (the known-bad
    variants) when False.
    """

    Procs: tuple[str, ...]
    Addrs: tuple[str, ...]
    Backlog: int
    MaxConns: int
    Acls: frozenset[Acl]
    InitAcl: Acl
    CleanupQueues: bool = True
    CheckAclFirst: bool = True

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalise the fields in place
        procs = _names(self.Procs, "Procs")
        addrs = _names(self.Addrs, "Addrs")
        if set(procs) & set(addrs):
            raise ValueError(f"Procs and Addrs must not share names: {procs} {addrs}")
        set_(self, "Procs", procs)
        set_(self, "Addrs", addrs)
        if type(self.Backlog) is not int or self.Backlog < 1:
            raise ValueError(f"Backlog must be an int >= 1, got {self.Backlog!r}")
        if type(self.MaxConns) is not int or self.MaxConns < 0:
            raise ValueError(f"MaxConns must be an int >= 0, got {self.MaxConns!r}")
        if isinstance(self.Acls, str) or not isinstance(self.Acls, Iterable):
            raise ValueError(f"Acls must be a set of ACLs, not {self.Acls!r}")
        set_(self, "Acls", frozenset(_acl(a, procs, addrs) for a in self.Acls))
        init = _acl(self.InitAcl, procs, addrs)
        if init not in self.Acls:
            raise ValueError("InitAcl must be one of Acls")
        set_(self, "InitAcl", init)
        for name in ("CleanupQueues", "CheckAclFirst"):
            if type(getattr(self, name)) is not bool:
                raise ValueError(f"{name} must be a bool, not {getattr(self, name)!r}")

    @classmethod
    def from_constants(cls, constants: Mapping[str, object]) -> Params:
        """Build from a mapping of constant names to values (see :func:`constants_of`)."""
        names = ("Procs", "Addrs", "Backlog", "MaxConns", "Acls", "InitAcl",
                 "CleanupQueues", "CheckAclFirst")
        missing = [n for n in names if n not in constants]
        if missing:
            raise ValueError(f"missing constants: {', '.join(missing)}")
        return cls(**{n: constants[n] for n in names})

    def proc(self, p: str) -> int:
        """The index of process *p* in the per-process tuples."""
        try:
            return self.Procs.index(p)
        except ValueError:
            raise ValueError(f"unknown process {p!r}; Procs are {self.Procs}") from None

    def addr(self, a: str) -> int:
        """The index of address *a* in ``listeners``."""
        try:
            return self.Addrs.index(a)
        except ValueError:
            raise ValueError(f"unknown address {a!r}; Addrs are {self.Addrs}") from None

    @property
    def Ids(self) -> range:
        """Connect!Ids: the conn ids 1..MaxConns."""
        return range(1, self.MaxConns + 1)


# A substitution in a .cfg: `Name <- Definition`.
_SUBST = re.compile(r"^\s*([A-Za-z_]\w*)\s*<-\s*([A-Za-z_]\w*)\s*$")
_DEFINITION = re.compile(r"^([A-Za-z_]\w*)\s*==", re.M)


def _definitions(module: Path) -> dict[str, str]:
    """The bodies of the top-level ``Name == body`` definitions of *module*."""
    text = re.sub(r"\(\*.*?\*\)", " ", module.read_text(), flags=re.S)  # (* comments *)
    text = "\n".join(line.split("\\*", 1)[0] for line in text.splitlines())
    text = text.split("\n====", 1)[0]
    starts = list(_DEFINITION.finditer(text))
    bodies = {}
    for m, nxt in zip(starts, starts[1:] + [None], strict=True):
        end = nxt.start() if nxt is not None else len(text)
        bodies[m.group(1)] = text[m.end():end].strip()
    return bodies


def constants_of(cfg: str | Path, module: str = "MCConnect") -> dict[str, Any]:
    """The constants a Connect config gives, substitutions resolved.

    TLC's .cfg files cannot write tuples, so the ACLs are definitions in
    *module* (next to the config) that the config substitutes (``Acls <-
    SmallAcls``); each such definition must be a literal value.  The other
    constants come from :func:`spec.configs.read_constants`.
    """
    cfg = Path(cfg)
    constants = read_constants(cfg)
    bodies: dict[str, str] | None = None
    for raw in cfg.read_text().splitlines():
        m = _SUBST.match(raw.split("\\*", 1)[0])
        if m is None:
            continue
        if bodies is None:
            bodies = _definitions(cfg.parent / f"{module}.tla")
        name, definition = m.groups()
        if definition not in bodies:
            raise ValueError(f"{cfg.name}: {name} <- {definition}, but {module} has no "
                             f"definition {definition}")
        constants[name] = tlavalue.parse(bodies[definition])
    return constants


# --------------------------------------------------------------------------
# State


class Listener(NamedTuple):
    """A listener: its owner and its queue of conn ids, next to accept first."""

    owner: str
    queue: tuple[int, ...] = ()


class Conn(NamedTuple):
    """A conn in the monitor's table: its ends, its address and each end's state."""

    client: str
    server: str
    addr: str
    cstate: str   # "open" | "closed"
    sstate: str   # "queued" | "open" | "closed"


class Reply(NamedTuple):
    """The monitor's answer to a request: ``kind``, and ``conn`` for "ring" (else 0)."""

    kind: str
    conn: int = NO_CONN


NO_REPLY = Reply("none")


class State(NamedTuple):
    """One state of Connect: the spec's variables, in the spec's order (see module doc)."""

    alive: tuple[bool, ...]
    acl: Acl
    listeners: tuple[Listener | None, ...]
    conns: tuple[Conn | None, ...]
    req: tuple[str | None, ...]
    reply: tuple[Reply, ...]
    cleaned: tuple[bool, ...]
    nextId: int


class Label(NamedTuple):
    """An action with its parameters, e.g. ``Label("Listen", ("p1", "a1"))``.

    ``Close`` carries a third parameter, the end closed (``"client"`` or
    ``"server"``), which the spec leaves to its disjunction; ``Reload``'s
    parameter is the ACL loaded.
    """

    name: str
    params: tuple[Any, ...] = ()

    def __str__(self) -> str:
        if not self.params:
            return self.name
        return f"{self.name}({', '.join(map(str, self.params))})"


def _set(t: tuple, i: int, v: object) -> tuple:
    """*t* with entry *i* replaced by *v*."""
    return t[:i] + (v,) + t[i + 1:]


def _conn(s: State, c: int) -> Conn | None:
    return s.conns[c - 1]


def _drop(conns: Iterable[Conn | None]) -> tuple[Conn | None, ...]:
    """Connect!Drop: the table without conns closed at both ends."""
    return tuple(
        None if x is not None and x.cstate == "closed" and x.sstate == "closed" else x
        for x in conns
    )


def _reset(conns: tuple[Conn | None, ...], ids: set[int]) -> tuple[Conn | None, ...]:
    """Connect!Reset: the table with the server end of every conn in *ids* closed."""
    return tuple(
        x._replace(sstate="closed") if c in ids and x is not None else x
        for c, x in enumerate(conns, 1)
    )


def _allowed(s: State, direction: str, p: str, a: str) -> bool:
    """Connect!Allowed: the ACL in force allows <<direction, p, a>>."""
    return (direction, p, a) in s.acl


def _owns(k: Params, s: State, p: str, a: str) -> bool:
    """Connect!Owns: p owns the listener at a."""
    lst = s.listeners[k.addr(a)]
    return lst is not None and lst.owner == p


def _outstanding(s: State) -> int:
    """Connect!Outstanding: how many processes have a request outstanding."""
    return sum(r is not None for r in s.req)


def _queued(x: Conn | None) -> bool:
    return x is not None and x.sstate == "queued"


# --------------------------------------------------------------------------
# Init


def init_states(k: Params) -> list[State]:
    """Connect!Init: every process alive, no listener, no conn, the initial ACL."""
    n = len(k.Procs)
    return [
        State(
            alive=(True,) * n,
            acl=k.InitAcl,
            listeners=(None,) * len(k.Addrs),
            conns=(None,) * k.MaxConns,
            req=(None,) * n,
            reply=(NO_REPLY,) * n,
            cleaned=(False,) * n,
            nextId=1,
        )
    ]


# --------------------------------------------------------------------------
# Listeners


def Listen(k: Params, s: State, p: str, a: str) -> State | None:
    """Connect!Listen(p, a): p, alive and allowed, listens on a free address."""
    i, j = k.proc(p), k.addr(a)
    if not s.alive[i] or s.listeners[j] is not None or not _allowed(s, "listen", p, a):
        return None
    return s._replace(listeners=_set(s.listeners, j, Listener(p)))


def ListenDenied(k: Params, s: State, p: str, a: str) -> State | None:
    """Connect!ListenDenied(p, a): the same, but the ACL denies it; nothing changes."""
    i, j = k.proc(p), k.addr(a)
    if not s.alive[i] or s.listeners[j] is not None or _allowed(s, "listen", p, a):
        return None
    return s


def Unlisten(k: Params, s: State, p: str, a: str) -> State | None:
    """Connect!Unlisten(p, a): the owner closes its listener; its queue is reset."""
    i, j = k.proc(p), k.addr(a)
    if not s.alive[i] or not _owns(k, s, p, a):
        return None
    conns = s.conns
    if k.CleanupQueues:
        conns = _drop(_reset(conns, set(s.listeners[j].queue)))
    return s._replace(listeners=_set(s.listeners, j, None), conns=conns)


# --------------------------------------------------------------------------
# Connecting


def Connect(k: Params, s: State, p: str, a: str) -> State | None:
    """Connect!Connect(p, a): p asks to connect to a (while conn ids last)."""
    i = k.proc(p)
    k.addr(a)  # a must be an address
    if not s.alive[i] or s.req[i] is not None or s.nextId + _outstanding(s) > k.MaxConns:
        return None
    return s._replace(req=_set(s.req, i, a), reply=_set(s.reply, i, NO_REPLY))


def _answer(s: State, i: int, kind: str) -> State:
    """Connect!Answer: reply "refused" or "kernel" to process number *i*."""
    return s._replace(reply=_set(s.reply, i, Reply(kind)), req=_set(s.req, i, None))


def _ring(k: Params, s: State, i: int, p: str, a: str) -> State:
    """Connect!Ring: a new conn from p to the listener at a, queued there."""
    j = k.addr(a)
    lst = s.listeners[j]
    c = s.nextId
    conn = Conn(client=p, server=lst.owner, addr=a, cstate="open", sstate="queued")
    return s._replace(
        conns=_set(s.conns, c - 1, conn),
        listeners=_set(s.listeners, j, lst._replace(queue=lst.queue + (c,))),
        reply=_set(s.reply, i, Reply("ring", c)),
        req=_set(s.req, i, None),
        nextId=c + 1,
    )


def _has_room(k: Params, s: State, a: str) -> bool:
    """Connect!HasRoom: a listener at a whose owner is alive and whose queue has room."""
    lst = s.listeners[k.addr(a)]
    return (
        lst is not None
        and s.alive[k.proc(lst.owner)]
        and len(lst.queue) < k.Backlog
    )


def HandleConnect(k: Params, s: State, p: str) -> State | None:
    """Connect!HandleConnect(p): the monitor answers p's request, ACL first.

    Denied: "refused"; else a listener with room: a new queued conn and
    "ring"; else "kernel".  With ``CheckAclFirst`` False (the known-bad
    variant) the ACL is checked only where a ring would be set up.
    """
    i = k.proc(p)
    a = s.req[i]
    if a is None:
        return None
    ok = _allowed(s, "connect", p, a)
    if k.CheckAclFirst:
        if not ok:
            return _answer(s, i, "refused")
        return _ring(k, s, i, p, a) if _has_room(k, s, a) else _answer(s, i, "kernel")
    if _has_room(k, s, a):
        return _ring(k, s, i, p, a) if ok else _answer(s, i, "refused")
    return _answer(s, i, "kernel")


def Accept(k: Params, s: State, p: str, a: str) -> State | None:
    """Connect!Accept(p, a): the owner of the listener at a accepts its oldest conn."""
    i, j = k.proc(p), k.addr(a)
    if not s.alive[i] or not _owns(k, s, p, a) or not s.listeners[j].queue:
        return None
    lst = s.listeners[j]
    c = lst.queue[0]
    return s._replace(
        conns=_set(s.conns, c - 1, _conn(s, c)._replace(sstate="open")),
        listeners=_set(s.listeners, j, lst._replace(queue=lst.queue[1:])),
    )


def Close(k: Params, s: State, p: str, c: int, end: str) -> State | None:
    """Connect!Close(p, c): p closes its open *end* ("client" or "server") of c.

    The spec's Close is the disjunction of the two ends; a process connected
    to its own listener may close either first.  A conn closed at both ends
    leaves the table.
    """
    if end not in ENDS:
        raise ValueError(f"end must be 'client' or 'server', got {end!r}")
    i = k.proc(p)
    if not 1 <= c <= k.MaxConns:
        raise ValueError(f"conn id must be in 1..MaxConns = 1..{k.MaxConns}, got {c!r}")
    x = _conn(s, c)
    if not s.alive[i] or x is None:
        return None
    if end == "client" and x.client == p and x.cstate == "open":
        x = x._replace(cstate="closed")
    elif end == "server" and x.server == p and x.sstate == "open":
        x = x._replace(sstate="closed")
    else:
        return None
    return s._replace(conns=_drop(_set(s.conns, c - 1, x)))


# --------------------------------------------------------------------------
# Process death and the operator


def Die(k: Params, s: State, p: str) -> State | None:
    """Connect!Die(p): kill -9; the monitor has not noticed yet."""
    i = k.proc(p)
    if not s.alive[i]:
        return None
    return s._replace(alive=_set(s.alive, i, False))


def Cleanup(k: Params, s: State, p: str) -> State | None:
    """Connect!Cleanup(p): the monitor notices p's death and cleans up after it.

    p's listeners go (their queues reset, unless ``CleanupQueues`` is False),
    p's ends of every conn close, conns closed at both ends leave the table,
    p's request and reply are forgotten.
    """
    i = k.proc(p)
    if s.alive[i] or s.cleaned[i]:
        return None
    mine = {j for j, lst in enumerate(s.listeners) if lst is not None and lst.owner == p}
    reset: set[int] = set()
    if k.CleanupQueues:
        for j in mine:
            reset.update(s.listeners[j].queue)

    def close_p(x: Conn | None) -> Conn | None:
        if x is None:
            return None
        return x._replace(
            cstate="closed" if x.client == p else x.cstate,
            sstate="closed" if x.server == p and x.sstate == "open" else x.sstate,
        )

    conns = _drop(_reset(tuple(close_p(x) for x in s.conns), reset))
    listeners = tuple(None if j in mine else lst for j, lst in enumerate(s.listeners))
    return s._replace(
        listeners=listeners,
        conns=conns,
        req=_set(s.req, i, None),
        reply=_set(s.reply, i, NO_REPLY),
        cleaned=_set(s.cleaned, i, True),
    )


def Reload(k: Params, s: State, acl2: Iterable[Rule]) -> State | None:
    """Connect!Reload(acl2): the operator loads another of the ACLs."""
    acl2 = frozenset(acl2)
    if acl2 not in k.Acls:
        raise ValueError("the ACL loaded must be one of Acls")
    if acl2 == s.acl:
        return None
    return s._replace(acl=acl2)


def Done(k: Params, s: State) -> State | None:
    """Connect!Done: every process is dead and cleaned up; stutter."""
    if all(not al and cl for al, cl in zip(s.alive, s.cleaned, strict=True)):
        return s
    return None


#: The spec's action names, in the order of its Next.
ACTIONS = ("Listen", "ListenDenied", "Unlisten", "Connect", "Accept", "HandleConnect",
           "Close", "Die", "Cleanup", "Reload", "Done")


def next_states(k: Params, s: State) -> Iterator[tuple[Label, State]]:
    """Connect!Next: every enabled action instance and its successor.

    ``ListenDenied`` and ``Done`` are stuttering steps: they yield ``s``.
    """
    for p in k.Procs:
        for a in k.Addrs:
            for name, action in (("Listen", Listen), ("ListenDenied", ListenDenied),
                                 ("Unlisten", Unlisten), ("Connect", Connect),
                                 ("Accept", Accept)):
                t = action(k, s, p, a)
                if t is not None:
                    yield Label(name, (p, a)), t
        t = HandleConnect(k, s, p)
        if t is not None:
            yield Label("HandleConnect", (p,)), t
        for c in k.Ids:
            for end in ENDS:
                t = Close(k, s, p, c, end)
                if t is not None:
                    yield Label("Close", (p, c, end)), t
        for name, action in (("Die", Die), ("Cleanup", Cleanup)):
            t = action(k, s, p)
            if t is not None:
                yield Label(name, (p,)), t
    for acl2 in sorted(k.Acls, key=sorted):
        t = Reload(k, s, acl2)
        if t is not None:
            yield Label("Reload", (acl2,)), t
    t = Done(k, s)
    if t is not None:
        yield Label("Done"), t


def step(k: Params, s: State, label: Label) -> State | None:
    """Apply the action named by ``label`` with its parameters; None if disabled."""
    fn = _BY_NAME.get(label.name)
    if fn is None:
        raise ValueError(f"unknown action {label.name!r}; allowed: {', '.join(ACTIONS)}")
    return fn(k, s, *label.params)


_BY_NAME = {
    "Listen": Listen,
    "ListenDenied": ListenDenied,
    "Unlisten": Unlisten,
    "Connect": Connect,
    "Accept": Accept,
    "HandleConnect": HandleConnect,
    "Close": Close,
    "Die": Die,
    "Cleanup": Cleanup,
    "Reload": Reload,
    "Done": Done,
}


# --------------------------------------------------------------------------
# Invariants


def TypeOK(k: Params, s: State) -> bool:
    """Connect!TypeOK: every variable has the spec's type."""
    n = len(k.Procs)

    def is_conn(x: object) -> bool:
        return (
            isinstance(x, Conn)
            and x.client in k.Procs and x.server in k.Procs and x.addr in k.Addrs
            and x.cstate in CLIENT_STATES and x.sstate in SERVER_STATES
        )

    def is_listener(x: object) -> bool:
        return (
            isinstance(x, Listener) and x.owner in k.Procs
            and isinstance(x.queue, tuple)
            and all(type(c) is int and 1 <= c <= k.MaxConns for c in x.queue)
        )

    def is_reply(x: object) -> bool:
        if not isinstance(x, Reply) or x.kind not in REPLY_KINDS:
            return False
        if x.kind == "ring":
            return type(x.conn) is int and 1 <= x.conn <= k.MaxConns
        return x.conn == NO_CONN

    return (
        len(s.alive) == n and all(type(v) is bool for v in s.alive)
        and s.acl in k.Acls
        and len(s.listeners) == len(k.Addrs)
        and all(x is None or is_listener(x) for x in s.listeners)
        and len(s.conns) == k.MaxConns
        and all(x is None or is_conn(x) for x in s.conns)
        and len(s.req) == n and all(r is None or r in k.Addrs for r in s.req)
        and len(s.reply) == n and all(is_reply(r) for r in s.reply)
        and len(s.cleaned) == n and all(type(v) is bool for v in s.cleaned)
        and type(s.nextId) is int and 1 <= s.nextId <= k.MaxConns + 1
    )


def AcceptedMatchesOneConnect(k: Params, s: State) -> bool:
    """Connect!AcceptedMatchesOneConnect: each conn made once, each id in one place.

    Ids below nextId only; every queued id is a conn queued at that address
    for that listener's owner, in one queue position only; every queued conn
    is in its listener's queue; a "ring" reply names a conn given out to
    that process and to no other process.
    """
    if any(x is not None and c >= s.nextId for c, x in enumerate(s.conns, 1)):
        return False
    seen: list[int] = []
    for a, lst in zip(k.Addrs, s.listeners, strict=True):
        if lst is None:
            continue
        for c in lst.queue:
            x = _conn(s, c)
            if x is None or x.sstate != "queued" or x.addr != a or x.server != lst.owner:
                return False
        seen.extend(lst.queue)
    if len(seen) != len(set(seen)):
        return False
    for c, x in enumerate(s.conns, 1):
        if _queued(x):
            lst = s.listeners[k.addr(x.addr)]
            if lst is None or c not in lst.queue:
                return False
    rings = []
    for p, r in zip(k.Procs, s.reply, strict=True):
        if r.kind == "ring":
            if r.conn >= s.nextId:
                return False
            x = _conn(s, r.conn)
            if x is not None and x.client != p:
                return False
            rings.append(r.conn)
    return len(rings) == len(set(rings))


def BacklogBound(k: Params, s: State) -> bool:
    """Connect!BacklogBound: no listener holds more than Backlog queued conns."""
    return all(lst is None or len(lst.queue) <= k.Backlog for lst in s.listeners)


def NoLeak(k: Params, s: State) -> bool:
    """Connect!NoLeak: nothing refers to a cleaned-up process as live; no dead conn kept."""
    for i, p in enumerate(k.Procs):
        if not s.cleaned[i]:
            continue
        if s.alive[i] or s.req[i] is not None or s.reply[i] != NO_REPLY:
            return False
        if any(lst is not None and lst.owner == p for lst in s.listeners):
            return False
        for x in s.conns:
            if x is None:
                continue
            if (x.client == p and x.cstate != "closed") or (
                x.server == p and x.sstate != "closed"
            ):
                return False
    return not any(
        x is not None and x.cstate == "closed" and x.sstate == "closed" for x in s.conns
    )


INVARIANTS = {
    "TypeOK": TypeOK,
    "AcceptedMatchesOneConnect": AcceptedMatchesOneConnect,
    "BacklogBound": BacklogBound,
    "NoLeak": NoLeak,
}


def invariants(k: Params, s: State) -> list[str]:
    """The names of the spec's invariants that ``s`` violates (empty when all hold)."""
    return [name for name, inv in INVARIANTS.items() if not inv(k, s)]


# --------------------------------------------------------------------------
# Properties of steps: the spec's [][A]_vars, for a step s -> t


def NoBypass(k: Params, s: State, t: State) -> bool:
    """Connect!NoBypass: each new listener, new conn and "kernel" answer was allowed.

    Allowed by the ACL in force before the step (``s.acl``).
    """
    for a, before, after in zip(k.Addrs, s.listeners, t.listeners, strict=True):
        if before is None and after is not None and ("listen", after.owner, a) not in s.acl:
            return False
    for before, after in zip(s.conns, t.conns, strict=True):
        if before is None and after is not None and (
            ("connect", after.client, after.addr) not in s.acl
        ):
            return False
    for i, p in enumerate(k.Procs):
        if s.reply[i].kind == "none" and t.reply[i].kind == "kernel" and (
            ("connect", p, s.req[i]) not in s.acl
        ):
            return False
    return True


def ConnsCreatedOnce(k: Params, s: State, t: State) -> bool:
    """Connect!ConnsCreatedOnce: a conn is made once, under a fresh id, then keeps its ends.

    A new conn takes id nextId (which then grows by one) with a "ring" answer
    to its client; an existing conn keeps client, server and address, its
    server end never goes back to "queued", and a closed end stays closed.
    """
    if t.nextId not in (s.nextId, s.nextId + 1):
        return False
    for c, (before, after) in enumerate(zip(s.conns, t.conns, strict=True), 1):
        if before is None and after is not None:
            if c != s.nextId or t.nextId != s.nextId + 1:
                return False
            if t.reply[k.proc(after.client)] != Reply("ring", c):
                return False
        elif before is not None and after is not None:
            if (after.client, after.server, after.addr) != (
                before.client, before.server, before.addr
            ):
                return False
            if before.sstate != "queued" and after.sstate == "queued":
                return False
            if before.sstate == "closed" and after.sstate != "closed":
                return False
            if before.cstate == "closed" and after.cstate != "closed":
                return False
    return True


def StablePending(k: Params, s: State, t: State) -> bool:
    """Connect!StablePending: a request stays until answered or cleaned up; death stays."""
    for i in range(len(k.Procs)):
        if s.req[i] is not None and t.req[i] != s.req[i]:
            if t.req[i] is not None:
                return False
            if t.reply[i].kind == "none" and not t.cleaned[i]:
                return False
        if not s.alive[i] and t.alive[i]:
            return False
        if s.cleaned[i] and not t.cleaned[i]:
            return False
    return True


STEP_PROPERTIES = {
    "NoBypass": NoBypass,
    "ConnsCreatedOnce": ConnsCreatedOnce,
    "StablePending": StablePending,
}


def step_violations(k: Params, s: State, t: State) -> list[str]:
    """The names of the spec's properties of steps that the step s -> t violates."""
    return [name for name, prop in STEP_PROPERTIES.items() if not prop(k, s, t)]


# --------------------------------------------------------------------------
# Mapping to TLA+ values


def _none_in(v: object) -> object:
    """Python None for the spec's model value None (as parsed from TLC)."""
    return None if v is None or (isinstance(v, tlavalue.ModelValue) and v == "None") else v


def _none_out(v: object) -> object:
    return tlavalue.ModelValue("None") if v is None else v


def to_tla_state(k: Params, s: State) -> dict[str, object]:
    """The spec's variable values for ``s``, as ``spec.tlavalue.to_tla`` renders them.

    Functions on processes and addresses become records (dicts with str
    keys), ``conns`` a dict on conn ids, listeners, conns and replies
    records, ACL triples tuples, and the spec's None the model value None.
    """
    def listener(x: Listener | None) -> object:
        return _none_out(x if x is None else {"owner": x.owner, "queue": x.queue})

    def conn(x: Conn | None) -> object:
        return _none_out(x if x is None else x._asdict())

    return {
        "alive": dict(zip(k.Procs, s.alive, strict=True)),
        "acl": frozenset(s.acl),
        "listeners": {a: listener(x) for a, x in zip(k.Addrs, s.listeners, strict=True)},
        "conns": {c: conn(x) for c, x in enumerate(s.conns, 1)},
        "req": {p: _none_out(r) for p, r in zip(k.Procs, s.req, strict=True)},
        "reply": {p: {"kind": r.kind, "conn": r.conn}
                  for p, r in zip(k.Procs, s.reply, strict=True)},
        "cleaned": dict(zip(k.Procs, s.cleaned, strict=True)),
        "nextId": s.nextId,
    }


def from_tla_state(k: Params, values: Mapping[str, object]) -> State:
    """Inverse of :func:`to_tla_state`, from parsed TLA+ values or plain Python ones.

    The spec's None may be the model value or Python's None; ``conns`` may
    be a dict on ids or a sequence (TLC prints a function on 1..n as one).
    Raises ValueError on a value that does not fit.
    """
    def by(keys: tuple[str, ...], fn: object, what: str) -> list[object]:
        if not isinstance(fn, Mapping) or set(map(str, fn)) != set(keys):
            raise ValueError(f"{what} must be a function on {keys}, got {fn!r}")
        norm = {str(key): v for key, v in fn.items()}
        return [norm[key] for key in keys]

    def listener(v: object) -> Listener | None:
        v = _none_in(v)
        if v is None:
            return None
        if not isinstance(v, Mapping) or set(v) != {"owner", "queue"}:
            raise ValueError(f"a listener must be [owner, queue] or None, got {v!r}")
        return Listener(str(v["owner"]), tuple(v["queue"]))

    def conn(v: object) -> Conn | None:
        v = _none_in(v)
        if v is None:
            return None
        if not isinstance(v, Mapping) or set(v) != set(Conn._fields):
            raise ValueError(f"a conn must be a record of {Conn._fields} or None, got {v!r}")
        return Conn(**{f: str(v[f]) for f in Conn._fields})

    def reply(v: object) -> Reply:
        if not isinstance(v, Mapping) or set(v) != {"kind", "conn"}:
            raise ValueError(f"a reply must be [kind, conn], got {v!r}")
        return Reply(str(v["kind"]), v["conn"])

    conns = values["conns"]
    if isinstance(conns, tuple):
        conns = dict(enumerate(conns, 1))
    if not isinstance(conns, Mapping) or set(conns) != set(k.Ids):
        raise ValueError(f"conns must be a function on 1..{k.MaxConns}, got {conns!r}")
    return State(
        alive=tuple(by(k.Procs, values["alive"], "alive")),
        acl=_acl(values["acl"], k.Procs, k.Addrs),
        listeners=tuple(listener(v) for v in by(k.Addrs, values["listeners"], "listeners")),
        conns=tuple(conn(conns[c]) for c in k.Ids),
        req=tuple(
            None if _none_in(v) is None else str(v) for v in by(k.Procs, values["req"], "req")
        ),
        reply=tuple(reply(v) for v in by(k.Procs, values["reply"], "reply")),
        cleaned=tuple(by(k.Procs, values["cleaned"], "cleaned")),
        nextId=values["nextId"],
    )
