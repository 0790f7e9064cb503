"""Executable model of ``spec/tla/RingCredit.tla``.

One sender, one receiver and one ring of ``C`` bytes; messages are placed
back to back and credits for freed space travel back in batches (under the
"rdma" transport).  This module mirrors the TLA+ specification one to one:

* :class:`State` has exactly the spec's variables, in hashable form;
* :class:`Params` holds the spec's constants and enforces its ASSUME;
* one function per action, with the action's exact name and enabling
  condition, returns the successor state or ``None`` when the action is
  disabled;
* one function per invariant, with the invariant's exact name.

It is the reference that the model-checking tests compare with TLC and that
the implementation's stateful tests compare with the real ring, so it is kept
small, direct and fast rather than clever.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

__all__ = [
    "ASK",
    "ACTIONS",
    "INVARIANTS",
    "AskMsg",
    "DataMsg",
    "Label",
    "Params",
    "State",
    "Want",
    "Write",
    "AskCredit",
    "GetCredit",
    "Deliver",
    "Recv",
    "ReturnCredit",
    "Done",
    "TypeOK",
    "DeliveredPrefix",
    "NoOverwrite",
    "Bounds",
    "SenderViewSafe",
    "CreditsAccounted",
    "Val",
    "Stream",
    "Free",
    "init_states",
    "next_states",
    "step",
    "from_tla_state",
    "invariants",
    "to_tla_state",
]

TRANSPORTS = ("shm", "rdma")
EMPTY = 0  # a slot never written: a fresh memfd is all zeros


# --------------------------------------------------------------------------
# Constants


@dataclass(frozen=True, slots=True)
class Params:
    """The spec's CONSTANTS; construction checks the spec's ASSUME.

    ``C`` ring capacity, ``B`` credit batch, ``MaxLen`` longest message,
    ``MaxBytes`` total bytes the sender may send, ``K`` byte alphabet size
    (bytes are ``1..K-1``), ``CreditRequest`` whether a blocked sender asks for
    credit (the fix for the credit deadlock).
    """

    C: int
    B: int
    MaxLen: int
    MaxBytes: int
    K: int
    CreditRequest: bool = True

    def __post_init__(self) -> None:
        for name in ("C", "B", "MaxLen", "MaxBytes", "K"):
            if type(getattr(self, name)) is not int:
                raise ValueError(f"{name} must be an int, not {getattr(self, name)!r}")
        if type(self.CreditRequest) is not bool:
            raise ValueError(f"CreditRequest must be a bool, not {self.CreditRequest!r}")
        if self.C < 1:
            raise ValueError(f"C must be >= 1, got {self.C}")
        if self.B < 1:
            raise ValueError(f"B must be >= 1, got {self.B}")
        if not 1 <= self.MaxLen <= self.C:
            raise ValueError(f"MaxLen must be in 1..C = 1..{self.C}, got {self.MaxLen}")
        if self.MaxBytes < 0:
            raise ValueError(f"MaxBytes must be >= 0, got {self.MaxBytes}")
        if self.K < 2:
            raise ValueError(f"K must be >= 2, got {self.K}")
        # A stale byte from one lap back would look right if K - 1 divided C.
        if self.C % (self.K - 1) == 0:
            raise ValueError(f"K - 1 must not divide C: C = {self.C}, K - 1 = {self.K - 1}")

    @classmethod
    def from_constants(cls, constants: dict[str, object]) -> Params:
        """Build from a mapping of constant names to values (e.g. a parsed .cfg)."""
        names = ("C", "B", "MaxLen", "MaxBytes", "K", "CreditRequest")
        missing = [n for n in names if n not in constants]
        if missing:
            raise ValueError(f"missing constants: {', '.join(missing)}")
        return cls(**{n: constants[n] for n in names})

    def constants(self) -> dict[str, object]:
        """The constants as a dict, in the spec's order (for TLC configs)."""
        return {
            "C": self.C,
            "B": self.B,
            "MaxLen": self.MaxLen,
            "MaxBytes": self.MaxBytes,
            "K": self.K,
            "CreditRequest": self.CreditRequest,
        }


# --------------------------------------------------------------------------
# Messages and state


@dataclass(frozen=True, slots=True)
class DataMsg:
    """A remote write in flight: ``vals`` go to stream position ``pos`` on.

    The spec's ``[kind |-> "data", pos |-> pos, vals |-> vals]``.
    """

    pos: int
    vals: tuple[int, ...]

    kind = "data"


@dataclass(frozen=True, slots=True)
class AskMsg:
    """A credit request in flight: the spec's ``[kind |-> "ask"]``."""

    kind = "ask"


ASK = AskMsg()  # the only value of AskMsg; reuse it


class State(NamedTuple):
    """One state of RingCredit: the spec's variables, in the spec's order.

    Rings (``sbuf``, ``buf``) are tuples indexed by slot ``0..C-1``;
    sequences (``wire``, ``cwire``, ``got``) are tuples, first element = the
    spec's index 1.
    """

    transport: str
    want: int
    tail: int
    shead: int
    asked: bool
    sbuf: tuple[int, ...]
    wire: tuple[DataMsg | AskMsg, ...]
    buf: tuple[int, ...]
    rtail: int
    head: int
    credited: int
    creq: bool
    cwire: tuple[int, ...]
    got: tuple[int, ...]


class Label(NamedTuple):
    """An action with its parameters, e.g. ``Label("Want", (2,))``.

    ``str(label)`` is the TLA+ form: ``Want(2)``, ``Write``.
    """

    name: str
    params: tuple[int, ...] = ()

    def __str__(self) -> str:
        if not self.params:
            return self.name
        return f"{self.name}({', '.join(map(str, self.params))})"


# --------------------------------------------------------------------------
# Operators of the spec


def Val(p: Params, pos: int) -> int:
    """RingCredit!Val: the byte at stream position ``pos``."""
    return pos % (p.K - 1) + 1


def Stream(p: Params, n: int) -> tuple[int, ...]:
    """RingCredit!Stream: the first ``n`` bytes of the stream."""
    k1 = p.K - 1
    return tuple(j % k1 + 1 for j in range(n))


def _vals(p: Params, pos: int, n: int) -> tuple[int, ...]:
    """The ``n`` bytes of the stream from position ``pos`` on."""
    k1 = p.K - 1
    return tuple((pos + j) % k1 + 1 for j in range(n))


def Free(p: Params, s: State) -> int:
    """RingCredit!Free: bytes the sender believes it may still write."""
    return p.C - (s.tail - s.shead)


def _put(p: Params, ring: tuple[int, ...], pos: int, vals: tuple[int, ...]) -> tuple[int, ...]:
    """RingCredit!Put: ``ring`` after writing ``vals`` from stream position ``pos``.

    Messages are at most MaxLen <= C bytes long (ASSUME), so no slot is
    written twice and a plain wrapping store is the spec's definition.
    """
    r = list(ring)
    c = p.C
    for j, v in enumerate(vals):
        r[(pos + j) % c] = v
    return tuple(r)


# --------------------------------------------------------------------------
# Init


def init_states(p: Params) -> list[State]:
    """RingCredit!Init: one initial state per transport."""
    zeros = (EMPTY,) * p.C
    return [
        State(
            transport=t, want=0, tail=0, shead=0, asked=False, sbuf=zeros, wire=(),
            buf=zeros, rtail=0, head=0, credited=0, creq=False, cwire=(), got=(),
        )
        for t in TRANSPORTS
    ]


# --------------------------------------------------------------------------
# Sender actions


def Want(p: Params, s: State, n: int) -> State | None:
    """RingCredit!Want(n): the sender's app asks to send ``n`` bytes."""
    if s.want != 0 or not 1 <= n <= p.MaxLen or s.tail + n > p.MaxBytes:
        return None
    return s._replace(want=n)


def Write(p: Params, s: State) -> State | None:
    """RingCredit!Write: the wanted message fits; place it and publish the tail.

    Under "shm" into the shared ring; under "rdma" into the sender's copy,
    with one remote write (data plus new tail) appended to the wire.
    """
    if s.want <= 0 or s.want > Free(p, s):
        return None
    v = _vals(p, s.tail, s.want)
    new_tail = s.tail + s.want
    if s.transport == "shm":
        return s._replace(buf=_put(p, s.buf, s.tail, v), rtail=new_tail, tail=new_tail, want=0)
    return s._replace(
        sbuf=_put(p, s.sbuf, s.tail, v),
        wire=s.wire + (DataMsg(s.tail, v),),
        tail=new_tail,
        want=0,
    )


def AskCredit(p: Params, s: State) -> State | None:
    """RingCredit!AskCredit: "rdma", the message does not fit; ask for credit."""
    if not p.CreditRequest or s.transport != "rdma" or s.want <= Free(p, s) or s.asked:
        return None
    return s._replace(wire=s.wire + (ASK,), asked=True)


def GetCredit(p: Params, s: State) -> State | None:
    """RingCredit!GetCredit: a credit return arrives; shead moves to it."""
    if not s.cwire:
        return None
    return s._replace(shead=s.cwire[0], cwire=s.cwire[1:], asked=False)


# --------------------------------------------------------------------------
# Receiver actions


def Deliver(p: Params, s: State) -> State | None:
    """RingCredit!Deliver: the oldest remote write (or request) lands."""
    if not s.wire:
        return None
    m = s.wire[0]
    rest = s.wire[1:]
    if isinstance(m, DataMsg):
        return s._replace(
            buf=_put(p, s.buf, m.pos, m.vals), rtail=m.pos + len(m.vals), wire=rest
        )
    return s._replace(creq=True, wire=rest)


def Recv(p: Params, s: State, k: int) -> State | None:
    """RingCredit!Recv(k): the receiver's app takes the next ``k`` bytes.

    Next quantifies k over 1..C, so k <= C is part of the enabling condition
    as well as k <= rtail - head.  Under "shm" the sender reads head directly,
    so its view (shead) moves at once.
    """
    if not 1 <= k <= min(p.C, s.rtail - s.head):
        return None
    c = p.C
    h = s.head
    buf = s.buf
    got = s.got + tuple(buf[(h + j) % c] for j in range(k))
    shead = h + k if s.transport == "shm" else s.shead
    return s._replace(got=got, head=h + k, shead=shead)


def _return_credit_enabled(p: Params, s: State) -> bool:
    return s.transport == "rdma" and s.head > s.credited and (
        s.head - s.credited >= p.B or s.creq
    )


def ReturnCredit(p: Params, s: State) -> State | None:
    """RingCredit!ReturnCredit: "rdma", return freed space (a batch, or on request)."""
    if not _return_credit_enabled(p, s):
        return None
    return s._replace(cwire=s.cwire + (s.head,), credited=s.head, creq=False)


def Done(p: Params, s: State) -> State | None:
    """RingCredit!Done: everything sent was read, nothing in flight; stutter."""
    if (
        s.tail == p.MaxBytes
        and s.head == p.MaxBytes
        and s.want == 0
        and not s.wire
        and not s.cwire
        and not _return_credit_enabled(p, s)
    ):
        return s
    return None


ACTIONS = ("Want", "Write", "AskCredit", "GetCredit", "Deliver", "Recv", "ReturnCredit", "Done")


def next_states(p: Params, s: State) -> Iterator[tuple[Label, State]]:
    """RingCredit!Next: every enabled action instance and its successor.

    Parameterised actions are expanded over the spec's ranges: ``Want(n)`` for
    n in 1..MaxLen, ``Recv(k)`` for k in 1..C.  ``Done`` yields ``s`` itself.
    """
    if s.want == 0:
        for n in range(1, p.MaxLen + 1):
            t = Want(p, s, n)
            if t is not None:
                yield Label("Want", (n,)), t
    for name, action in (
        ("Write", Write),
        ("AskCredit", AskCredit),
        ("GetCredit", GetCredit),
        ("Deliver", Deliver),
    ):
        t = action(p, s)
        if t is not None:
            yield Label(name), t
    for k in range(1, min(p.C, s.rtail - s.head) + 1):
        t = Recv(p, s, k)
        if t is not None:
            yield Label("Recv", (k,)), t
    for name, action in (("ReturnCredit", ReturnCredit), ("Done", Done)):
        t = action(p, s)
        if t is not None:
            yield Label(name), t


def step(p: Params, s: State, label: Label) -> State | None:
    """Apply the action named by ``label`` with its parameters; None if disabled."""
    fn = _BY_NAME.get(label.name)
    if fn is None:
        raise ValueError(f"unknown action {label.name!r}; allowed: {', '.join(ACTIONS)}")
    return fn(p, s, *label.params)


# --------------------------------------------------------------------------
# Invariants


def _is_nat(x: object) -> bool:
    return type(x) is int and x >= 0


def _is_bytes(xs: object, lo: int, hi: int) -> bool:
    return isinstance(xs, tuple) and all(type(x) is int and lo <= x <= hi for x in xs)


def TypeOK(p: Params, s: State) -> bool:
    """RingCredit!TypeOK: every variable has the spec's type."""
    k1 = p.K - 1
    return (
        s.transport in TRANSPORTS
        and type(s.want) is int
        and 0 <= s.want <= p.MaxLen
        and all(_is_nat(x) for x in (s.tail, s.shead, s.rtail, s.head, s.credited))
        and type(s.asked) is bool
        and type(s.creq) is bool
        and len(s.sbuf) == p.C
        and _is_bytes(s.sbuf, 0, k1)
        and len(s.buf) == p.C
        and _is_bytes(s.buf, 0, k1)
        and isinstance(s.wire, tuple)
        and all(
            isinstance(m, AskMsg)
            or (isinstance(m, DataMsg) and _is_nat(m.pos) and _is_bytes(m.vals, 1, k1))
            for m in s.wire
        )
        and isinstance(s.cwire, tuple)
        and all(_is_nat(x) for x in s.cwire)
        and _is_bytes(s.got, 1, k1)
    )


def DeliveredPrefix(p: Params, s: State) -> bool:
    """RingCredit!DeliveredPrefix: what the receiver got is the start of the stream."""
    return s.got == Stream(p, s.head)


def NoOverwrite(p: Params, s: State) -> bool:
    """RingCredit!NoOverwrite: every unread byte in the ring is the one sent there."""
    c = p.C
    return all(s.buf[q % c] == Val(p, q) for q in range(s.head, s.rtail))


def Bounds(p: Params, s: State) -> bool:
    """RingCredit!Bounds: positions are ordered and at most C bytes are in the ring."""
    return s.shead <= s.head <= s.rtail <= s.tail and s.tail - s.head <= p.C


def SenderViewSafe(p: Params, s: State) -> bool:
    """RingCredit!SenderViewSafe: the sender never overestimates the free space."""
    return Free(p, s) <= p.C - (s.tail - s.head)


def CreditsAccounted(p: Params, s: State) -> bool:
    """RingCredit!CreditsAccounted: credits never exceed what was freed, none twice."""
    if s.transport == "rdma" and not s.shead <= s.credited:
        return False
    if not s.credited <= s.head:
        return False
    cw = s.cwire
    return all(x <= s.credited for x in cw) and all(a < b for a, b in itertools.pairwise(cw))


INVARIANTS = {
    "TypeOK": TypeOK,
    "DeliveredPrefix": DeliveredPrefix,
    "NoOverwrite": NoOverwrite,
    "Bounds": Bounds,
    "SenderViewSafe": SenderViewSafe,
    "CreditsAccounted": CreditsAccounted,
}


def invariants(p: Params, s: State) -> list[str]:
    """The names of the spec's invariants that ``s`` violates (empty when all hold)."""
    return [name for name, inv in INVARIANTS.items() if not inv(p, s)]


# --------------------------------------------------------------------------
# Mapping to TLA+ values


def _msg_to_tla(m: DataMsg | AskMsg) -> dict[str, object]:
    if isinstance(m, DataMsg):
        return {"kind": "data", "pos": m.pos, "vals": m.vals}
    return {"kind": "ask"}


def to_tla_state(s: State) -> dict[str, object]:
    """The spec's variable values for ``s``, as values ``spec.tlavalue.to_tla`` renders.

    Rings become functions on slots (dicts with int keys, ``(0 :> v @@ ...)``),
    messages become records (dicts with str keys), sequences stay tuples.
    """
    return {
        "transport": s.transport,
        "want": s.want,
        "tail": s.tail,
        "shead": s.shead,
        "asked": s.asked,
        "sbuf": dict(enumerate(s.sbuf)),
        "wire": tuple(_msg_to_tla(m) for m in s.wire),
        "buf": dict(enumerate(s.buf)),
        "rtail": s.rtail,
        "head": s.head,
        "credited": s.credited,
        "creq": s.creq,
        "cwire": s.cwire,
        "got": s.got,
    }


def from_tla_state(values: dict[str, object]) -> State:
    """Inverse of :func:`to_tla_state`, from parsed TLA+ values.

    Accepts rings as dicts on slots or as tuples, and messages as records
    (dicts with a ``kind`` key).  Raises ValueError on anything else.
    """
    def ring(v: object) -> tuple[int, ...]:
        if isinstance(v, dict):
            return tuple(v[i] for i in range(len(v)))
        if isinstance(v, tuple):
            return v
        raise ValueError(f"a ring must be a function on slots, got {v!r}")

    def msg(m: object) -> DataMsg | AskMsg:
        if isinstance(m, dict) and m.get("kind") == "data":
            return DataMsg(m["pos"], tuple(m["vals"]))
        if isinstance(m, dict) and m.get("kind") == "ask":
            return ASK
        raise ValueError(f"not a wire message: {m!r}")

    return State(
        transport=values["transport"],
        want=values["want"],
        tail=values["tail"],
        shead=values["shead"],
        asked=values["asked"],
        sbuf=ring(values["sbuf"]),
        wire=tuple(msg(m) for m in values["wire"]),
        buf=ring(values["buf"]),
        rtail=values["rtail"],
        head=values["head"],
        credited=values["credited"],
        creq=values["creq"],
        cwire=tuple(values["cwire"]),
        got=tuple(values["got"]),
    )


_BY_NAME = {
    "Want": Want,
    "Write": Write,
    "AskCredit": AskCredit,
    "GetCredit": GetCredit,
    "Deliver": Deliver,
    "Recv": Recv,
    "ReturnCredit": ReturnCredit,
    "Done": Done,
}
