"""The Hypothesis cross-check of the real ring against the RingCredit model.

A :class:`RingMachine` holds the real objects (a shared-memory
:class:`impl.ring.Ring`, or a :class:`~impl.ring.credit.CreditSender` and
:class:`~impl.ring.credit.CreditReceiver` joined by in-process channels) and
the executable model's state (:mod:`spec.ring`) side by side.  Its rules are
the spec's actions -- want, write, ask_credit, get_credit, deliver, recv,
return_credit -- and each runs the real operation and the model action of
the same name.  A rule is taken only when the model action is enabled
(``@precondition``), and the real operation must then do exactly what the
action does; the always-enabled rule :meth:`RingMachine.disabled_refuse`
tries every action the model disables and requires the implementation to
refuse it too, without effect.  After every step the ``@invariant``
:meth:`RingMachine.refines_model` maps the real state to the spec's
variables (:func:`spec.refinement.ring_state`), compares it with the model,
variable by variable, and checks every invariant of the spec on it.

Every run is also logged, one :class:`spec.tracecheck.Event` per step (the
action, its parameters, the mapped state), into :data:`COLLECTED`;
:func:`validate_runs` replays all logged runs through TLC against
``RingCredit.tla`` in one batch, whatever their constants (see there).

Failures are typed, so that a test can say which check caught a bug:
:class:`StateCheckFailure` (a mismatched or unmappable variable, a violated
spec invariant) and :class:`ActionDisagreement` (the implementation and the
spec disagree on whether an action can be taken, or on what it does).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import hypothesis.strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from impl.ring import Ring
from impl.ring.credit import CreditReceiver, CreditSender
from impl.ring.remote import LocalChannel
from spec import ring as model
from spec.refinement import (
    AppState,
    RefinementError,
    format_diff,
    ring_state,
    spec_params,
    state_diff,
    stream_bytes,
)
from spec.ring import Label, Params, State, from_tla_state, to_tla_state
from spec.tracecheck import Event, TraceResult, check_traces

__all__ = [
    "COLLECTED",
    "INVARIANT_NAMES",
    "SPEC_DIR",
    "ActionDisagreement",
    "RdmaMachine",
    "RdmaSystem",
    "RingMachine",
    "Run",
    "ShmCMachine",
    "ShmPythonMachine",
    "ShmSystem",
    "StateCheckFailure",
    "FEATURES",
    "features",
    "first_bad_step",
    "validate_runs",
    "variant",
]

SPEC_DIR = Path(__file__).resolve().parent.parent / "spec" / "tla"
#: The spec's invariants, checked on every mapped state (and again by TLC).
INVARIANT_NAMES = tuple(model.INVARIANTS)
#: Bytes the sender may send in all: far more than any run reaches, so the
#: spec's Done is never enabled and Want is bounded only by MaxLen.
MAX_BYTES = 10**6


@dataclass
class Run:
    """One logged run of a machine: its constants and its events.

    ``events[0]`` is the initial state (action ``"Init"``); every later
    event names the spec action taken, its parameters and the mapped state
    after it.  ``machine`` names the machine class that produced it.
    """

    machine: str
    params: Params
    events: list[Event] = field(default_factory=list)


#: Every run of the machines below, in this process (the test file's TLC batch).
COLLECTED: list[Run] = []


# --------------------------------------------------------------------------
# Failures


class ActionDisagreement(AssertionError):
    """The implementation and the spec disagree about an action.

    ``action`` is the spec action's name; ``enabled`` says whether the spec
    had it enabled (then the implementation refused it or did something
    else) or disabled (then the implementation took it anyway).
    """

    def __init__(self, action: str, enabled: bool, detail: str) -> None:
        state = "enabled" if enabled else "disabled"
        super().__init__(f"{action}: the spec has it {state}, but {detail}")
        self.action = action
        self.enabled = enabled


class StateCheckFailure(AssertionError):
    """The mapped implementation state fails the cross-check after ``step``.

    ``mismatched`` names the spec variables whose mapped value differs from
    the model's (or has no value: then ``unmappable`` says why),
    ``violated`` the spec invariants the mapped state breaks.
    """

    def __init__(self, step: Label, mismatched: Sequence[str], violated: Sequence[str],
                 report: str, unmappable: str | None = None) -> None:
        parts = []
        if mismatched:
            what = "has no value for" if unmappable else "differs from the model in"
            parts.append(f"the implementation's state {what} {', '.join(mismatched)}")
        if violated:
            parts.append(f"it violates {', '.join(violated)}")
        super().__init__(f"after {step}: " + "; ".join(parts) + "\n" + report)
        self.step = step
        self.mismatched = tuple(mismatched)
        self.violated = tuple(violated)
        self.unmappable = unmappable


# --------------------------------------------------------------------------
# The systems under test: one interface for both transports


class ShmSystem:
    """One shared-memory ring (transport "shm") with its two endpoints.

    The spec's credit actions do not exist here (the writer reads head
    directly): the spec never enables them under "shm", and these methods
    refuse, as the implementation has no way to take them.
    """

    transport = "shm"

    def __init__(self, params: Params, backend: str) -> None:
        self.ring = Ring.create(params.C, backend=backend)
        self.writer = self.ring.writer()
        self.reader = self.ring.reader()

    def spec_state(self, app: AppState) -> State:
        """The refinement mapping of the current state."""
        return ring_state("shm", self.ring, app)

    def free(self) -> int:
        """The writer's free space: C - (tail - head)."""
        return self.writer.free

    def write(self, data: bytes) -> int:
        """RingCredit!Write: the ring's non-blocking write."""
        return self.writer.write(data)

    def ask_credit(self, n: int) -> bool:
        """No credit request in one shared ring."""
        return False

    def get_credit(self) -> bool:
        """No credit return in one shared ring."""
        return False

    def deliver(self) -> bool:
        """Nothing is in flight in one shared ring."""
        return False

    def read_into(self, buf: bytearray) -> int:
        """RingCredit!Recv: the ring's non-blocking read."""
        return self.reader.read_into(buf)

    def return_credit(self) -> bool:
        """No credit return in one shared ring."""
        return False

    def close(self) -> None:
        """Unmap the ring and close its descriptors."""
        self.ring.close()


class RdmaSystem:
    """The two-copy mode (transport "rdma"): a sender and a receiver joined by
    two in-process :class:`LocalChannel` queues, so the machine decides when
    each write lands.  *sender_cls* and *receiver_cls* let a test plant a bug
    in a subclass."""

    transport = "rdma"

    def __init__(self, params: Params, *, sender_cls: type = CreditSender,
                 receiver_cls: type = CreditReceiver) -> None:
        data = LocalChannel(params.C)
        self.sender = sender_cls(params.C, data, max_message=params.MaxLen,
                                 credit_request=params.CreditRequest, batch=params.B)
        self.receiver = receiver_cls(params.C, data, self.sender.credit_target, params.B)

    def spec_state(self, app: AppState) -> State:
        """The refinement mapping of the current state."""
        return ring_state("rdma", (self.sender, self.receiver), app)

    def free(self) -> int:
        """The sender's view of the free space: C - (tail - shead)."""
        return self.sender.free

    def write(self, data: bytes) -> int:
        """RingCredit!Write: all or nothing."""
        return self.sender.write(data)

    def ask_credit(self, n: int) -> bool:
        """RingCredit!AskCredit for a message of *n* bytes."""
        return self.sender.ask_credit(n)

    def get_credit(self) -> bool:
        """RingCredit!GetCredit."""
        return self.sender.get_credit()

    def deliver(self) -> bool:
        """RingCredit!Deliver."""
        return self.receiver.deliver()

    def read_into(self, buf: bytearray) -> int:
        """RingCredit!Recv."""
        return self.receiver.read_into(buf)

    def return_credit(self) -> bool:
        """RingCredit!ReturnCredit."""
        return self.receiver.return_credit()

    def close(self) -> None:
        """Nothing to release: the channels are plain Python objects."""


# --------------------------------------------------------------------------
# The machine


class RingMachine(RuleBasedStateMachine):
    """Real ring and RingCredit model side by side; see the module docstring.

    Subclasses choose ``transport`` ("shm" or "rdma") and, for "shm",
    ``backend`` ("c" or "python").  ``compare_model = False`` checks only the
    spec's invariants on the mapped state, re-reading the model's state from
    the implementation after every step (so that enabling conditions follow
    the implementation): it shows what the invariants alone miss.
    ``collector`` receives every run (None: runs are not kept).
    :meth:`make_system` builds the objects under test; tests override it to
    plant bugs.
    """

    transport: ClassVar[str] = "shm"
    backend: ClassVar[str | None] = "python"
    compare_model: ClassVar[bool] = True
    collector: ClassVar[list[Run] | None] = COLLECTED

    def __init__(self) -> None:
        super().__init__()
        self.p: Params | None = None
        self.sys: Any = None
        self.model: State | None = None
        self.app = AppState()
        self.run: Run | None = None
        self._label: Label | None = None

    # -- set-up -----------------------------------------------------------

    def make_system(self, params: Params) -> Any:
        """The implementation under test for *params*."""
        if self.transport == "shm":
            return ShmSystem(params, self.backend)
        return RdmaSystem(params)

    @initialize(capacity=st.integers(5, 13), data=st.data())
    def setup(self, capacity: int, data: st.DataObject) -> None:
        """Pick the constants, build the ring, start from the spec's Init."""
        max_len = data.draw(st.integers(1, capacity), label="MaxLen")
        if self.transport == "rdma":
            # Both sides of the deadlock threshold C - MaxLen + 1, and above C.
            batch = data.draw(st.integers(1, 2 * capacity + 1), label="B")
        else:
            batch = 1  # no credits under "shm": one value keeps TLC's batch small
        self.start(spec_params(capacity, batch, max_len, max_bytes=MAX_BYTES))

    def start(self, params: Params) -> None:
        """Build the system for *params* and put the model in the spec's Init.

        ``setup`` calls it; a test can call it to drive the machine by hand
        (``start``, then the rules as methods, with ``refines_model()`` after
        each, as Hypothesis does).
        """
        self.p = params
        self.sys = self.make_system(params)
        self.model = next(s for s in model.init_states(params) if s.transport == self.transport)
        self.run = Run(type(self).__name__, params)
        self._label = Label("Init")

    def teardown(self) -> None:
        """Release the ring and hand the run to the collector."""
        if self.sys is not None:
            self.sys.close()
        # A run that never left Init (swarm testing switched off its sending
        # rules) says nothing TLC does not know: keep only runs that moved.
        if self.collector is not None and self.run is not None and len(self.run.events) > 1:
            self.collector.append(self.run)

    # -- helpers ----------------------------------------------------------

    def _enabled(self, name: str, *params: int) -> bool:
        if self.model is None:
            return False
        return model.step(self.p, self.model, Label(name, params)) is not None

    def _take(self, label: Label) -> None:
        """Apply the model action *label*; the rule's precondition enabled it."""
        nxt = model.step(self.p, self.model, label)
        assert nxt is not None, f"the precondition let a disabled {label} through"
        self.model = nxt
        self._label = label

    def _free(self) -> int:
        return model.Free(self.p, self.model)

    # -- sender rules -----------------------------------------------------

    @precondition(lambda self: self.model is not None and self.model.want == 0
                  and self.model.tail < MAX_BYTES)
    @rule(data=st.data())
    def want(self, data: st.DataObject) -> None:
        """RingCredit!Want(n): the sending app wants to send n bytes (no real call)."""
        self.want_n(data.draw(st.integers(1, min(self.p.MaxLen, MAX_BYTES - self.model.tail)),
                              label="n"))

    def want_n(self, n: int) -> None:
        """The body of ``want`` for a given n."""
        self.app.want = n
        self._take(Label("Want", (n,)))

    @precondition(lambda self: self._enabled("Write"))
    @rule()
    def write(self) -> None:
        """RingCredit!Write: the whole wanted message goes in."""
        n = self.app.want
        wrote = self.sys.write(stream_bytes(self.app.sent, n))  # RingCredit!Write
        if wrote != n:
            raise ActionDisagreement(
                "Write", True, f"the implementation wrote {wrote} of the {n} bytes "
                f"(spec: Free = {self._free()})")
        self.app.sent += n
        self.app.want = 0
        self._take(Label("Write"))

    @precondition(lambda self: self._enabled("AskCredit"))
    @rule()
    def ask_credit(self) -> None:
        """RingCredit!AskCredit: the message does not fit; ask for credit."""
        if not self.sys.ask_credit(self.app.want):  # RingCredit!AskCredit
            raise ActionDisagreement("AskCredit", True, "the sender did not ask")
        self._take(Label("AskCredit"))

    @precondition(lambda self: self._enabled("GetCredit"))
    @rule()
    def get_credit(self) -> None:
        """RingCredit!GetCredit: the oldest credit return reaches the sender."""
        if not self.sys.get_credit():  # RingCredit!GetCredit
            raise ActionDisagreement("GetCredit", True, "the sender found no credit")
        self._take(Label("GetCredit"))

    # -- receiver rules ---------------------------------------------------

    @precondition(lambda self: self._enabled("Deliver"))
    @rule()
    def deliver(self) -> None:
        """RingCredit!Deliver: the oldest message (data or request) lands."""
        if not self.sys.deliver():  # RingCredit!Deliver
            raise ActionDisagreement("Deliver", True, "the receiver found nothing to land")
        self._take(Label("Deliver"))

    @precondition(lambda self: self.model is not None and self.model.rtail > self.model.head)
    @rule(data=st.data())
    def recv(self, data: st.DataObject) -> None:
        """RingCredit!Recv(k): read into a buffer of m bytes; k = min(m, available)."""
        self.recv_m(data.draw(st.integers(1, self.p.C), label="buffer size"))

    def recv_m(self, m: int) -> None:
        """The body of ``recv`` for a buffer of m bytes."""
        k = min(m, self.model.rtail - self.model.head)
        buf = bytearray(m)
        got = self.sys.read_into(buf)  # RingCredit!Recv
        if got != k:
            raise ActionDisagreement(
                "Recv", True, f"a read into {m} bytes returned {got}, not Recv({k})")
        self.app.got += buf[:got]
        self._take(Label("Recv", (k,)))

    @precondition(lambda self: self._enabled("ReturnCredit"))
    @rule()
    def return_credit(self) -> None:
        """RingCredit!ReturnCredit: a batch is full, or credit was asked for."""
        if not self.sys.return_credit():  # RingCredit!ReturnCredit
            raise ActionDisagreement("ReturnCredit", True, "the receiver returned nothing")
        self._take(Label("ReturnCredit"))

    # -- the always-enabled rule -------------------------------------------

    @rule()
    def disabled_refuse(self) -> None:
        """Try every action the spec disables now: the implementation must refuse.

        A stuttering step (nothing is logged); the invariant then checks that
        nothing changed.  Under "shm" a write is tried only when the ring is
        full: the shared ring's write takes what fits, and sending whole
        messages (the spec's Write) is the application's part, so with some
        room the check is that the ring reports less than the message.
        """
        if self.model is None:
            return
        want = self.app.want
        if want and not self._enabled("Write"):
            free = self.sys.free()
            if free >= want:
                raise ActionDisagreement(
                    "Write", False, f"the implementation has {free} bytes free for a "
                    f"{want}-byte message (spec: Free = {self._free()})")
            if self.transport == "rdma" or free == 0:
                wrote = self.sys.write(stream_bytes(self.app.sent, want))
                if wrote:
                    raise ActionDisagreement("Write", False, f"it wrote {wrote} bytes")
        if not self._enabled("AskCredit") and self.sys.ask_credit(want):
            raise ActionDisagreement("AskCredit", False, "the sender asked for credit")
        if not self._enabled("GetCredit") and self.sys.get_credit():
            raise ActionDisagreement("GetCredit", False, "the sender took a credit")
        if not self._enabled("Deliver") and self.sys.deliver():
            raise ActionDisagreement("Deliver", False, "the receiver landed a message")
        if self.model.rtail == self.model.head:
            got = self.sys.read_into(bytearray(self.p.C))
            if got:
                raise ActionDisagreement("Recv", False, f"a read returned {got} bytes")
        if not self._enabled("ReturnCredit") and self.sys.return_credit():
            raise ActionDisagreement("ReturnCredit", False, "the receiver returned credit")

    # -- the check after every step ----------------------------------------

    @invariant()
    def refines_model(self) -> None:
        """Map the real state; compare it with the model; check the spec's invariants.

        The step is logged first (the mapped state, even a wrong one), so that
        TLC can replay a failing run up to and including the bad step.
        """
        if self.sys is None:
            return
        step, self._label = self._label, None
        shown = step if step is not None else Label("(stutter)")
        try:
            actual = self.sys.spec_state(self.app)
        except RefinementError as exc:
            raise StateCheckFailure(shown, (exc.variable,), (), str(exc),
                                    unmappable=str(exc)) from exc
        if step is not None:
            self.run.events.append(Event(step.name, step.params, to_tla_state(actual)))
        diff = state_diff(actual, self.model) if self.compare_model else {}
        violated = model.invariants(self.p, actual)
        if diff or violated:
            report = format_diff(diff) if diff else f"  mapped state: {actual}"
            raise StateCheckFailure(shown, tuple(diff), violated, report)
        if not self.compare_model:
            self.model = actual


class ShmCMachine(RingMachine):
    """The shared ring over the C (cffi) path."""

    transport = "shm"
    backend = "c"


class ShmPythonMachine(RingMachine):
    """The shared ring over the pure-Python path."""

    transport = "shm"
    backend = "python"


class RdmaMachine(RingMachine):
    """The two-copy mode with batched credits and credit requests."""

    transport = "rdma"
    backend = None


def variant(base: type[RingMachine], name: str, *,
            make_system: Callable[[RingMachine, Params], Any] | None = None,
            **attrs: Any) -> type[RingMachine]:
    """A subclass of *base* named *name* with *attrs* set (and *make_system*).

    For tests: a machine with a planted bug, another collector, or
    ``compare_model=False``.
    """
    ns: dict[str, Any] = dict(attrs)
    if make_system is not None:
        ns["make_system"] = make_system
    return type(name, (base,), ns)


# --------------------------------------------------------------------------
# Trace validation with TLC, all runs in one batch


def _wrapper_module(params: Sequence[Params]) -> str:
    """A module that follows RingCredit under one of several sets of constants.

    TLC fixes a module's constants for the whole run, and TLA+ forbids
    instantiating a constant with a state-dependent value.  So the wrapper
    instantiates RingCredit once per set of constants (``R1``, ``R2``, ...),
    adds a frozen variable ``xcfg`` that says which set a trace uses, and
    defines each action and invariant by a CASE on it.  An event's action
    name then refers to the wrapper's operator of that name, as for the
    spec itself.  ``Recv(k)`` also carries the bound ``k <= C`` that the
    spec puts in ``Next``'s quantifier rather than in the action.
    """
    variables = ", ".join(State._fields)
    lines = [
        "--------------------------- MODULE RingCreditTraces ---------------------------",
        "(* Generated by tests/ring_machine.py: RingCredit under several constants. *)",
        "EXTENDS Naturals, Sequences",
        f"VARIABLES {variables}, xcfg",
        "",
    ]
    for i, p in enumerate(params, start=1):
        subst = ", ".join(f"{k} <- {'TRUE' if v is True else 'FALSE' if v is False else v}"
                          for k, v in p.constants().items())
        lines.append(f"R{i} == INSTANCE RingCredit WITH {subst}")

    def case_of(expr: Callable[[int, Params], str]) -> str:
        return "CASE " + "\n  [] ".join(f"xcfg = {i} -> {expr(i, p)}"
                                        for i, p in enumerate(params, start=1))

    def case(op: str) -> str:
        return case_of(lambda i, p: f"R{i}!{op}")

    lines.append("")
    lines.append(f"Init == {case('Init')}")
    for action in ("Write", "AskCredit", "GetCredit", "Deliver", "ReturnCredit", "Done"):
        lines.append(f"{action} == xcfg' = xcfg /\\ ({case(action)})")
    lines.append(f"Want(n) == xcfg' = xcfg /\\ ({case('Want(n)')})")
    # RingCredit's Recv(k) leaves k <= C to Next's quantifier: keep that bound.
    recv = case_of(lambda i, p: f"(k \\in 1..{p.C} /\\ R{i}!Recv(k))")
    lines.append(f"Recv(k) == xcfg' = xcfg /\\ ({recv})")
    max_len = max(p.MaxLen for p in params)
    max_c = max(p.C for p in params)
    # The spec's Next over the wrapper's actions (TLC then labels steps by them).
    lines += [
        "Next ==",
        f"    \\/ \\E n \\in 1..{max_len} : Want(n)",
        "    \\/ Write \\/ AskCredit \\/ GetCredit \\/ Deliver",
        f"    \\/ \\E k \\in 1..{max_c} : Recv(k)",
        "    \\/ ReturnCredit \\/ Done",
    ]
    for inv in INVARIANT_NAMES:
        lines.append(f"{inv} == {case(inv)}")
    lines += ["=" * 80, ""]
    return "\n".join(lines)


def validate_runs(runs: Sequence[Run], *, timeout: float = 600,
                  keep_dir: str | None = None) -> TraceResult:
    """Check every logged run against RingCredit.tla in ONE TLC run.

    Each run keeps its own constants (see :func:`_wrapper_module`); each
    event must be a step of the spec's action of that name, with those
    parameters, to exactly the logged state, and every logged state must
    satisfy the spec's invariants.  ``TraceResult.failure.trace`` indexes
    *runs*.
    """
    configs: dict[Params, int] = {}
    for r in runs:
        configs.setdefault(r.params, len(configs) + 1)
    traces = [
        [Event(e.action, e.params, {**e.state, "xcfg": configs[r.params]}) for e in r.events]
        for r in runs
    ]
    with tempfile.TemporaryDirectory(prefix="ringtraces-") as tmp:
        spec_dir = Path(tmp)
        for name in ("RingCredit.tla", "FifoChannel.tla"):
            (spec_dir / name).symlink_to(SPEC_DIR / name)
        (spec_dir / "RingCreditTraces.tla").write_text(_wrapper_module(list(configs)),
                                                       encoding="utf-8")
        return check_traces(spec_dir, "RingCreditTraces", {}, traces,
                            invariants=INVARIANT_NAMES, timeout=timeout, keep_dir=keep_dir)


def first_bad_step(run: Run) -> int | None:
    """Where the Python model rejects *run*: the index of the first event that
    is no step of its action (or breaks an invariant); None if it is a behaviour.

    The same question TLC answers in :func:`validate_runs`, asked of
    :mod:`spec.ring`: the two must agree.
    """
    p = run.params
    states = [from_tla_state(e.state) for e in run.events]
    if states[0] not in model.init_states(p) or model.invariants(p, states[0]):
        return 0
    for i in range(1, len(states)):
        e = run.events[i]
        nxt = model.step(p, states[i - 1], Label(e.action, tuple(e.params)))
        if nxt != states[i] or model.invariants(p, states[i]):
            return i
    return None


# --------------------------------------------------------------------------
# What the runs covered


#: The behaviours the cross-check must have exercised (see :func:`features`).
FEATURES = {
    "shm": ("write wraps", "write ends at the ring's end", "recv wraps", "ring full",
            "second lap"),
    "rdma": ("write wraps", "write ends at the ring's end", "recv wraps", "ring full",
             "second lap", "ask", "request delivered", "credit on request",
             "credit by batch", "get credit"),
}


def features(run: Run) -> set[str]:
    """The interesting behaviours one logged run went through.

    "write wraps" / "recv wraps": a message or a read crossed the end of the
    ring; "ring full": the sender's view of the free space reached 0;
    "second lap": the stream passed 2 C; "credit on request": a credit
    returned below a full batch because it was asked for.
    """
    p = run.params
    c = p.C
    states = [from_tla_state(e.state) for e in run.events]
    seen: set[str] = set()
    for prev, e, cur in zip(states, run.events[1:], states[1:], strict=False):
        if e.action == "Write":
            n = cur.tail - prev.tail
            if prev.tail % c + n > c:
                seen.add("write wraps")
            if cur.tail % c == 0:
                seen.add("write ends at the ring's end")
            if model.Free(p, cur) == 0:
                seen.add("ring full")
            if cur.tail > 2 * c:
                seen.add("second lap")
        elif e.action == "Recv" and prev.head % c + e.params[0] > c:
            seen.add("recv wraps")
        elif e.action == "AskCredit":
            seen.add("ask")
        elif e.action == "Deliver" and prev.wire and prev.wire[0] is model.ASK:
            seen.add("request delivered")
        elif e.action == "ReturnCredit":
            batch_full = prev.head - prev.credited >= p.B
            seen.add("credit by batch" if batch_full else "credit on request")
        elif e.action == "GetCredit":
            seen.add("get credit")
    return seen
