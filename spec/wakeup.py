"""An executable model of spec/tla/RingWakeup.tla: the sleep/wake handshake on x86-TSO.

The same variables as the spec, one function per action with the spec's name
and enabling condition: each returns the successor state, or ``None`` when
the action is not enabled.  :func:`next_states` enumerates every enabled
action instance the way TLC does, so :func:`spec.statespace.explore` finds
the same state graph TLC does (tests/test_wakeup_model.py checks the counts).

Shared memory is a :class:`Mem` of the two words the handshake touches; a
store buffer is a tuple of ``(word, value)`` pairs, oldest first.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

__all__ = [
    "ACTIONS", "INVARIANTS", "Mem", "Params", "State", "WPCS", "RPCS",
    "Write", "WriterFence", "LoadFlag", "ClearFlag", "Signal",
    "TryRead", "Arm", "ReaderFence", "RecheckTail", "Wake", "Flush", "Done",
    "Load", "TypeOK", "Bounds", "NoLostWakeup",
    "init_states", "next_states", "invariants", "lost_wakeup",
]

#: The spec's action names, in the order of its Next.
ACTIONS = ("Write", "WriterFence", "LoadFlag", "ClearFlag", "Signal",
           "TryRead", "Arm", "ReaderFence", "RecheckTail", "Wake", "Flush", "Done")
#: The invariants the configs check.
INVARIANTS = ("TypeOK", "Bounds", "NoLostWakeup")
WPCS = ("idle", "fence", "load", "xchg", "signal")
RPCS = ("try", "arm", "fence", "recheck", "block")
WORDS = ("tail", "flag")


@dataclass(frozen=True)
class Params:
    """The spec's constants.  Raises ValueError where the ASSUME does not hold."""

    N: int
    Fence: bool = True
    Recheck: bool = True

    def __post_init__(self) -> None:
        if type(self.N) is not int or self.N < 1:
            raise ValueError(f"N must be an int >= 1, got {self.N!r}")
        for name in ("Fence", "Recheck"):
            if type(getattr(self, name)) is not bool:
                raise ValueError(f"{name} must be TRUE or FALSE, got {getattr(self, name)!r}")

    @classmethod
    def from_constants(cls, k: Mapping[str, Any]) -> Params:
        """Params from the constants of a TLC config (spec.configs.read_constants)."""
        return cls(N=k["N"], Fence=k["Fence"], Recheck=k["Recheck"])


class Mem(NamedTuple):
    """Shared memory: ``mem["tail"]`` and ``mem["flag"]`` of the spec."""

    tail: int
    flag: int


Buffer = tuple[tuple[str, int], ...]


class State(NamedTuple):
    """One state of RingWakeup: the spec's variables, same names."""

    mem: Mem
    wbuf: Buffer
    rbuf: Buffer
    sent: int
    head: int
    efd: int
    wpc: str
    rpc: str


def Load(s: State, b: Buffer, w: str) -> int:
    """The newest store to word *w* in buffer *b*, else memory (TSO forwarding)."""
    for word, value in reversed(b):
        if word == w:
            return value
    return getattr(s.mem, w)


def init_states(p: Params) -> list[State]:
    """The one initial state (Init)."""
    return [State(Mem(0, 0), (), (), 0, 0, 0, "idle", "try")]


# -- writer -------------------------------------------------------------------

def Write(p: Params, s: State) -> State | None:
    """RingWakeup!Write: the new tail goes into the writer's store buffer."""
    if s.wpc != "idle" or s.sent >= p.N:
        return None
    return s._replace(wbuf=s.wbuf + (("tail", s.sent + 1),), sent=s.sent + 1, wpc="fence")


def WriterFence(p: Params, s: State) -> State | None:
    """RingWakeup!WriterFence: waits for an empty store buffer (when Fence)."""
    if s.wpc != "fence" or (p.Fence and s.wbuf):
        return None
    return s._replace(wpc="load")


def LoadFlag(p: Params, s: State) -> State | None:
    """RingWakeup!LoadFlag: a set flag leads to the exchange, else back to idle."""
    if s.wpc != "load":
        return None
    return s._replace(wpc="xchg" if Load(s, s.wbuf, "flag") == 1 else "idle")


def ClearFlag(p: Params, s: State) -> State | None:
    """RingWakeup!ClearFlag: the locked exchange of the flag with 0."""
    if s.wpc != "xchg" or s.wbuf:
        return None
    return s._replace(mem=s.mem._replace(flag=0),
                      wpc="signal" if s.mem.flag == 1 else "idle")


def Signal(p: Params, s: State) -> State | None:
    """RingWakeup!Signal: the eventfd write."""
    if s.wpc != "signal":
        return None
    return s._replace(efd=s.efd + 1, wpc="idle")


# -- reader -------------------------------------------------------------------

def TryRead(p: Params, s: State) -> State | None:
    """RingWakeup!TryRead: consume what is there, else go to arm."""
    if s.rpc != "try":
        return None
    t = Load(s, s.rbuf, "tail")
    return s._replace(head=t) if t > s.head else s._replace(rpc="arm")


def Arm(p: Params, s: State) -> State | None:
    """RingWakeup!Arm: the flag store goes into the reader's store buffer."""
    if s.rpc != "arm":
        return None
    return s._replace(rbuf=s.rbuf + (("flag", 1),), rpc="fence")


def ReaderFence(p: Params, s: State) -> State | None:
    """RingWakeup!ReaderFence: waits for an empty store buffer (when Fence)."""
    if s.rpc != "fence" or (p.Fence and s.rbuf):
        return None
    return s._replace(rpc="recheck" if p.Recheck else "block")


def RecheckTail(p: Params, s: State) -> State | None:
    """RingWakeup!RecheckTail: data came meanwhile: read it, take the flag down."""
    if s.rpc != "recheck":
        return None
    t = Load(s, s.rbuf, "tail")
    if t > s.head:
        return s._replace(head=t, rbuf=s.rbuf + (("flag", 0),), rpc="try")
    return s._replace(rpc="block")


def Wake(p: Params, s: State) -> State | None:
    """RingWakeup!Wake: the eventfd counter is > 0; drain it and retry."""
    if s.rpc != "block" or s.efd == 0:
        return None
    return s._replace(efd=0, rpc="try")


# -- memory -------------------------------------------------------------------

def Flush(p: Params, s: State, proc: str) -> State | None:
    """RingWakeup!Flush(proc): the oldest store of "w" or "r" reaches memory."""
    if proc not in ("w", "r"):
        raise ValueError(f"proc must be 'w' or 'r', got {proc!r}")
    b = s.wbuf if proc == "w" else s.rbuf
    if not b:
        return None
    (word, value), rest = b[0], b[1:]
    mem = s.mem._replace(**{word: value})
    return s._replace(mem=mem, wbuf=rest) if proc == "w" else s._replace(mem=mem, rbuf=rest)


def Done(p: Params, s: State) -> State | None:
    """RingWakeup!Done: the terminal stuttering step."""
    if (s.sent == p.N and s.head == p.N and s.wpc == "idle" and s.rpc == "block"
            and s.efd == 0 and not s.wbuf and not s.rbuf):
        return s
    return None


_PLAIN = (Write, WriterFence, LoadFlag, ClearFlag, Signal,
          TryRead, Arm, ReaderFence, RecheckTail, Wake)


def next_states(p: Params, s: State) -> Iterator[tuple[str, State]]:
    """Yield ``(action name, successor)`` for every enabled action instance (Next)."""
    for action in _PLAIN:
        t = action(p, s)
        if t is not None:
            yield action.__name__, t
    for proc in ("w", "r"):
        t = Flush(p, s, proc)
        if t is not None:
            yield "Flush", t
    t = Done(p, s)
    if t is not None:
        yield "Done", t


# -- invariants ---------------------------------------------------------------

def TypeOK(p: Params, s: State) -> bool:
    """RingWakeup!TypeOK."""
    bufs_ok = all(w in WORDS and type(v) is int and v >= 0 for w, v in s.wbuf + s.rbuf)
    return (min(s.mem) >= 0 and bufs_ok and 0 <= s.sent <= p.N and 0 <= s.head <= p.N
            and s.efd >= 0 and s.wpc in WPCS and s.rpc in RPCS)


def Bounds(p: Params, s: State) -> bool:
    """RingWakeup!Bounds: head <= mem tail <= sent."""
    return s.head <= s.mem.tail <= s.sent


def lost_wakeup(s: State) -> bool:
    """The state NoLostWakeup forbids: asleep on unread data nobody will signal."""
    return (s.rpc == "block" and s.efd == 0 and not s.wbuf and not s.rbuf
            and s.wpc == "idle" and s.head < s.mem.tail)


def NoLostWakeup(p: Params, s: State) -> bool:
    """RingWakeup!NoLostWakeup."""
    return not lost_wakeup(s)


def invariants(p: Params, s: State) -> list[str]:
    """The names of the invariants *s* violates (empty when all hold)."""
    checks = {"TypeOK": TypeOK, "Bounds": Bounds, "NoLostWakeup": NoLostWakeup}
    return [name for name, check in checks.items() if not check(p, s)]
