"""The refinement mapping: implementation state -> ``spec/tla/RingCredit.tla`` variables.

This is the one place that says what the real ring's state *means* in the
spec's terms.  The cross-check (``tests/ring_machine.py``) drives the real
objects and the executable model (:mod:`spec.ring`) side by side and, after
every step, compares :func:`ring_state` of the real objects with the model's
state; the same mapped states are logged as traces and replayed through TLC.

The mapping, variable by variable (``app`` is the test harness, which plays
the two applications):

=========  ==============================  ===================================
variable   "shm" (one shared ring)         "rdma" (two copies, credits)
=========  ==============================  ===================================
want       ``app.want``                    ``app.want``
tail       ``Ring.snapshot().tail``        ``CreditSender.tail``
shead      ``snapshot().head`` (read       ``CreditSender.shead``
           directly by the writer)
asked      FALSE                           ``CreditSender.asked``
sbuf       all 0 (no sender copy)          ``CreditSender.local_copy()``
wire       ``<<>>``                        pending writes of the data channel,
                                           grouped into messages (see below)
buf        ``snapshot().data``             ``CreditReceiver.ring_copy()``
rtail      ``snapshot().tail``             ``CreditReceiver.rtail``
head       ``snapshot().head``             ``CreditReceiver.head``
credited   0                               ``CreditReceiver.credited``
creq       FALSE                           ``CreditReceiver.creq``
cwire      ``<<>>``                        credit returns landed but not yet
                                           taken, then the pending credit writes
got        ``app.got``                     ``app.got``
=========  ==============================  ===================================

Values.  The spec's byte at stream position p is ``(p % (K - 1)) + 1``.  The
applications send exactly that byte (:func:`stream_bytes`), so with
``K = 256`` (:data:`K_BYTES`) a spec value *is* the byte stored in the ring,
and 0 is a slot never written (a fresh memfd or bytearray is zeroed).

The wire.  The data channel holds remote writes ``(offset, data, imm)`` in
issue order.  The writes up to and including one whose imm is a position
form one spec message ``[kind |-> "data", pos |-> new tail - len(vals),
vals |-> their bytes]``; a write whose imm has the request bit is
``[kind |-> "ask"]``.  The mapping is stricter than
:func:`impl.ring.credit.wire_messages`: each piece must also go to the slot
where its stream position lives, because the spec's message says nothing
about offsets -- a piece aimed at the wrong slot would otherwise map to a
correct message.  Pending writes that form no spec message (data with no
tail behind it, a request inside a message, a misplaced piece) raise
:class:`RefinementError` naming ``wire``; so does an imm already landed on
the data side but not yet taken by ``deliver()`` (its bytes are in ``buf``
while ``rtail`` has not moved, which no spec state describes).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from spec.ring import ASK, AskMsg, DataMsg, Params, State

__all__ = [
    "K_BYTES",
    "TRANSPORTS",
    "AppState",
    "RefinementError",
    "format_diff",
    "rdma_state",
    "ring_state",
    "shm_state",
    "spec_params",
    "state_diff",
    "stream_bytes",
]

#: The spec's K for which a spec value is exactly a byte: values 1..255, 0 = empty.
K_BYTES = 256
#: The transports the mapping knows, as the spec names them.
TRANSPORTS = ("shm", "rdma")

# The imm layout of impl.ring.credit, repeated here rather than imported so that
# a change there shows up as a failing cross-check, not as a silent re-mapping.
_IMM_REQUEST = 1 << 31
_IMM_POS_MASK = _IMM_REQUEST - 1


class RefinementError(ValueError):
    """The implementation's state has no value for a spec variable.

    ``variable`` names it (e.g. ``"wire"``); the message says why.  For a
    correct implementation this never happens between two actions, so a
    cross-check reports it like a mismatch of that variable.
    """

    def __init__(self, variable: str, detail: str) -> None:
        super().__init__(f"{variable}: {detail}")
        self.variable = variable
        self.detail = detail


@dataclass
class AppState:
    """The harness-owned variables: what the two applications know.

    ``want`` is the length of the message the sending app waits to write
    (0: none), ``got`` every byte the receiving app has received, in order.
    ``sent`` is how many bytes the sending app has handed to the ring; it is
    no spec variable (the spec's ``tail`` is the implementation's), but the
    app needs it to produce the bytes of the stream.
    """

    want: int = 0
    got: bytearray = field(default_factory=bytearray)
    sent: int = 0


# --------------------------------------------------------------------------
# Values


def stream_bytes(pos: int, n: int) -> bytes:
    """The ``n`` bytes of the stream from position ``pos``: ``(p % 255) + 1`` each.

    With ``K = 256`` these are the spec's ``Val(p)``; never 0.
    """
    if pos < 0 or n < 0:
        raise ValueError(f"pos and n must be >= 0, got pos={pos}, n={n}")
    return bytes((p % (K_BYTES - 1)) + 1 for p in range(pos, pos + n))


def spec_params(capacity: int, batch: int, max_len: int, *, max_bytes: int = 10**6,
                credit_request: bool = True) -> Params:
    """The spec's constants for a ring of *capacity* bytes, with ``K = 256``.

    Raises ValueError (from :class:`spec.ring.Params`) outside the spec's
    ASSUME, e.g. for a capacity that 255 divides.
    """
    return Params(C=capacity, B=batch, MaxLen=max_len, MaxBytes=max_bytes, K=K_BYTES,
                  CreditRequest=credit_request)


# --------------------------------------------------------------------------
# The two mappings


class _Snapshotting(Protocol):
    def snapshot(self) -> Any: ...


def _ring_values(data: bytes | bytearray) -> tuple[int, ...]:
    # K = 256: a byte is its spec value.
    return tuple(data)


def shm_state(ring: _Snapshotting, app: AppState) -> State:
    """RingCredit's state for one shared ring (transport "shm").

    *ring* is an :class:`impl.ring.Ring` (anything with ``snapshot()``
    returning head, tail and the payload in slot order).  Take it between
    operations: the snapshot does not lock.
    """
    snap = ring.snapshot()
    zeros = (0,) * len(snap.data)
    return State(
        transport="shm",
        want=app.want,
        tail=snap.tail,
        shead=snap.head,     # the writer reads head itself: its view is exact
        asked=False,
        sbuf=zeros,
        wire=(),
        buf=_ring_values(snap.data),
        rtail=snap.tail,     # one ring: the reader reads the writer's tail
        head=snap.head,
        credited=0,
        creq=False,
        cwire=(),
        got=tuple(app.got),
    )


def _unwrap(base: int, low: int) -> int:
    """A stream position from its low 31 bits and a position at or before it."""
    return base + ((low - base) & _IMM_POS_MASK)


def _wire(pending: Sequence[tuple[int, bytes, int | None]], rtail: int,
          capacity: int) -> tuple[DataMsg | AskMsg, ...]:
    """The spec's ``wire`` for a data channel's pending writes (see the module doc)."""
    messages: list[DataMsg | AskMsg] = []
    pieces: list[tuple[int, bytes]] = []
    base = rtail
    for i, (offset, data, imm) in enumerate(pending):
        if imm is not None and imm & _IMM_REQUEST:
            if pieces:
                raise RefinementError("wire", f"pending write {i} is a credit request "
                                      "inside a data message")
            if data:
                raise RefinementError("wire", f"pending write {i} is a credit request "
                                      f"carrying {len(data)} bytes")
            messages.append(ASK)
            continue
        pieces.append((offset, bytes(data)))
        if imm is None:
            continue
        vals = b"".join(d for _, d in pieces)
        base = _unwrap(base, imm)
        pos = base - len(vals)
        if pos < 0:
            raise RefinementError("wire", f"pending write {i}: tail {base} is less than "
                                  f"the {len(vals)} bytes of its message")
        _check_offsets(pieces, pos, capacity, i)
        messages.append(DataMsg(pos, _ring_values(vals)))
        pieces = []
    if pieces:
        raise RefinementError("wire", f"the last {len(pieces)} pending write(s) carry data "
                              "with no tail behind them")
    return tuple(messages)


def _check_offsets(pieces: list[tuple[int, bytes]], pos: int, capacity: int, last: int) -> None:
    """Each piece of a message must land where its stream positions live."""
    p = pos
    for offset, data in pieces:
        if data and offset != p % capacity:
            raise RefinementError(
                "wire", f"the message ending at pending write {last} puts position {p} at "
                f"offset {offset}, but it lives in slot {p % capacity}")
        if offset + len(data) > capacity:
            raise RefinementError(
                "wire", f"a piece of {len(data)} bytes at offset {offset} runs past the "
                f"end of the {capacity}-byte ring")
        p += len(data)


def _cwire(landed: Sequence[int], pending: Sequence[tuple[int, bytes, int | None]],
           shead: int) -> tuple[int, ...]:
    """The spec's ``cwire``: landed-but-untaken credit imms, then pending credit writes.

    A landed credit has overwritten the sender's credit word but
    ``get_credit()`` has not moved ``shead`` yet: it is still in flight in
    the spec's terms.  A pending write carries the head in its 64-bit data.
    """
    heads: list[int] = []
    base = shead
    for imm in landed:
        base = _unwrap(base, imm & _IMM_POS_MASK)
        heads.append(base)
    for i, (_offset, data, _imm) in enumerate(pending):
        if len(data) != 8:
            raise RefinementError("cwire", f"pending credit write {i} has {len(data)} "
                                  "bytes, not one 64-bit head")
        heads.append(int.from_bytes(data, "little"))
    return tuple(heads)


def rdma_state(sender: Any, receiver: Any, app: AppState, *,
               data_channel: Any = None, credit_channel: Any = None) -> State:
    """RingCredit's state for the two-copy mode (transport "rdma").

    *sender* is an :class:`impl.ring.credit.CreditSender`, *receiver* a
    :class:`~impl.ring.credit.CreditReceiver`.  The channels default to
    ``sender.channel`` (data, sender to receiver) and ``sender.credit_target``
    (credits, receiver to sender); both must offer ``pending()`` and
    ``completions()`` as :class:`impl.ring.remote.LocalChannel` does.
    Raises :class:`RefinementError` when the channels hold something no spec
    state describes.
    """
    data_channel = sender.channel if data_channel is None else data_channel
    credit_channel = sender.credit_target if credit_channel is None else credit_channel
    landed = data_channel.completions()
    if landed:
        raise RefinementError("wire", f"{len(landed)} data imm(s) landed but not taken by "
                              "deliver(): the ring holds bytes beyond rtail")
    capacity = receiver.capacity
    return State(
        transport="rdma",
        want=app.want,
        tail=sender.tail,
        shead=sender.shead,
        asked=sender.asked,
        sbuf=_ring_values(sender.local_copy()),
        wire=_wire(data_channel.pending(), receiver.rtail, capacity),
        buf=_ring_values(receiver.ring_copy()),
        rtail=receiver.rtail,
        head=receiver.head,
        credited=receiver.credited,
        creq=receiver.creq,
        cwire=_cwire(credit_channel.completions(), credit_channel.pending(), sender.shead),
        got=tuple(app.got),
    )


def ring_state(transport: str, endpoints: Any, app: AppState) -> State:
    """RingCredit's state for the implementation under *transport*.

    *endpoints* is the :class:`impl.ring.Ring` for ``"shm"`` and the pair
    ``(CreditSender, CreditReceiver)`` for ``"rdma"``; *app* holds the
    harness-owned ``want`` and ``got``.  See the module docstring for the
    mapping.  Raises ValueError for an unknown transport and
    :class:`RefinementError` for an implementation state with no spec value.
    """
    if transport == "shm":
        return shm_state(endpoints, app)
    if transport == "rdma":
        sender, receiver = endpoints
        return rdma_state(sender, receiver, app)
    raise ValueError(f"transport must be one of {TRANSPORTS}, got {transport!r}")


# --------------------------------------------------------------------------
# Comparing states


def state_diff(actual: State, expected: State) -> dict[str, tuple[Any, Any]]:
    """The variables in which *actual* differs from *expected*: name -> (actual, expected).

    In the spec's order, so the first entry is the first variable to look at.
    """
    return {name: (a, e) for name, a, e in zip(State._fields, actual, expected, strict=True)
            if a != e}


def _show(value: Any, limit: int = 160) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def format_diff(diff: dict[str, tuple[Any, Any]]) -> str:
    """A readable report of :func:`state_diff`, one variable per block.

    Rings and byte sequences of equal length list the differing indices, so
    a wrong slot is visible at once.
    """
    lines = []
    for name, (a, e) in diff.items():
        lines.append(f"  {name}: impl {_show(a)}")
        lines.append(f"  {' ' * len(name)}  spec {_show(e)}")
        if (isinstance(a, tuple) and isinstance(e, tuple) and len(a) == len(e)
                and all(isinstance(x, int) for x in a + e)):
            idx = [i for i, (x, y) in enumerate(zip(a, e, strict=True)) if x != y]
            shown = ", ".join(f"[{i}] {a[i]} != {e[i]}" for i in idx[:8])
            more = f" (+{len(idx) - 8} more)" if len(idx) > 8 else ""
            lines.append(f"  {' ' * len(name)}  differs at {shown}{more}")
        elif isinstance(a, tuple) and isinstance(e, tuple) and len(a) != len(e):
            lines.append(f"  {' ' * len(name)}  lengths {len(a)} != {len(e)}")
    return "\n".join(lines)
