"""Batched trace validation (spec/tracecheck.py) against RingCredit.

Traces come from random walks of the Python model (spec/ring.py) with the
constants the implementation uses (C = 8, K = 256, MaxBytes far beyond what a
test sends), so every one of them is a behaviour of the spec and must be
accepted; each test then breaks one event in one trace of a batch and
requires the rejection at exactly that trace and event.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from spec import ring
from spec.tracecheck import Event, TraceResult, check_traces, parse_state, read_dot
from tests.gates import needs_tlc

SPEC_DIR = Path(__file__).resolve().parent.parent / "spec" / "tla"
PARAMS = ring.Params(C=8, B=6, MaxLen=5, MaxBytes=1 << 30, K=256, CreditRequest=True)
TIMEOUT = 300
SLOW_TIMEOUT = 540  # below pytest-timeout's 600 s, so TLC is stopped cleanly


pytestmark = needs_tlc


def walk(p: ring.Params, rng: random.Random, steps: int, transport: str) -> list[Event]:
    """A random behaviour of the model, as the events an implementation would log."""
    s = next(s for s in ring.init_states(p) if s.transport == transport)
    events = [Event("Init", (), ring.to_tla_state(s))]
    for _ in range(steps):
        choices = list(ring.next_states(p, s))
        if not choices:
            break
        label, s = rng.choice(choices)
        events.append(Event(label.name, label.params, ring.to_tla_state(s)))
    return events


def batch(n: int, steps: int, seed: int) -> list[list[Event]]:
    rng = random.Random(seed)
    return [walk(PARAMS, rng, steps, ("shm", "rdma")[i % 2]) for i in range(n)]


def check(traces: list[list[Event]]) -> TraceResult:
    return check_traces(SPEC_DIR, "RingCredit", PARAMS.constants(), traces, timeout=TIMEOUT)


def change(e: Event, **values: object) -> Event:
    """``e`` with some variables of its logged state replaced."""
    return dataclasses.replace(e, state={**e.state, **values})


def first(trace: list[Event], pred: Callable[[int, Event], bool]) -> int:
    return next(i for i, e in enumerate(trace) if i > 0 and pred(i, e))


# --------------------------------------------------------------------------


def test_model_traces_validate() -> None:
    traces = batch(40, 40, seed=7)
    # Not vacuous: the walks use every action but Done (MaxBytes is never
    # reached) and wrap around the ring under both transports.
    used = {e.action for t in traces for e in t[1:]}
    assert used == set(ring.ACTIONS) - {"Done"}
    for transport in ("shm", "rdma"):
        assert any(t[-1].state["transport"] == transport and t[-1].state["tail"] > 2 * PARAMS.C
                   for t in traces)
    res = check(traces)
    assert res.ok, res.failure
    assert res.traces == 40 and res.events == sum(map(len, traces))
    assert res.distinct_states == res.events  # one state per event: each was followed


def test_single_state_trace_validates() -> None:
    traces = [batch(1, 0, seed=1)[0], batch(2, 3, seed=2)[1]]
    assert len(traces[0]) == 1
    res = check(traces)
    assert res.ok, res.failure


def test_wrong_byte_is_rejected_at_that_step() -> None:
    traces = batch(6, 30, seed=11)
    t = traces[3]  # "rdma": Deliver writes the receiver's ring
    i = first(t, lambda i, e: e.action == "Deliver" and e.state["buf"] != t[i - 1].state["buf"])
    slot = next(k for k, v in t[i].state["buf"].items() if v != t[i - 1].state["buf"][k])
    buf = dict(t[i].state["buf"])
    buf[slot] = buf[slot] % 255 + 1
    t[i] = change(t[i], buf=buf)
    res = check(traces)
    assert not res.ok
    f = res.failure
    assert (f.trace, f.step, f.action) == (3, i, "Deliver")
    assert (f.tid, f.cursor) == (4, i)
    assert set(f.diff) == {"buf"} and len(f.successors) == 1
    assert "buf" in str(f) and "rejected at event" in str(f)


def test_skipped_credit_is_rejected_at_that_step() -> None:
    traces = batch(4, 40, seed=5)
    t = traces[1]  # "rdma"
    i = first(t, lambda i, e: e.action == "ReturnCredit")
    credit = t[i].state["credited"] + 1  # returns a byte that was never freed
    t[i] = change(t[i], credited=credit, cwire=t[i].state["cwire"][:-1] + (credit,))
    res = check(traces)
    assert not res.ok
    f = res.failure
    assert (f.trace, f.step, f.action) == (1, i, "ReturnCredit")
    assert set(f.diff) == {"credited", "cwire"}


def test_lying_action_label_is_rejected() -> None:
    traces = batch(3, 20, seed=3)
    t = traces[2]  # "shm"
    i = first(t, lambda i, e: e.action == "Write")
    t[i] = dataclasses.replace(t[i], action="Recv", params=(1,))
    res = check(traces)
    assert not res.ok
    f = res.failure
    assert (f.trace, f.step, f.action, f.params) == (2, i, "Recv", (1,))
    assert f.explained_by == ["Write"]


def test_stale_last_event_is_rejected() -> None:
    """The last step is checked too: a logged step that changes nothing."""
    traces = batch(2, 12, seed=4)
    t = traces[0]
    t.append(dataclasses.replace(t[-1], action="Deliver", params=()))
    res = check(traces)
    assert not res.ok
    assert (res.failure.trace, res.failure.step) == (0, len(t) - 1)


def test_first_state_must_be_initial() -> None:
    traces = batch(3, 5, seed=9)
    traces[1][0] = change(traces[1][0], want=2)
    res = check(traces)
    assert not res.ok
    assert (res.failure.trace, res.failure.step) == (1, 0)
    assert "initial state" in res.failure.reason


def test_logged_states_are_checked_against_extra_invariants() -> None:
    """With invariants=..., every logged state must satisfy them as well."""
    traces = batch(3, 30, seed=12)
    res = check_traces(SPEC_DIR, "RingCredit", PARAMS.constants(), traces,
                       invariants=["DeliveredPrefix", "NoOverwrite", "CreditsAccounted"],
                       timeout=TIMEOUT)
    assert res.ok, res.failure
    # A predicate that the walks do break: the first event with head >= 10.
    hits = [(t, first(trace, lambda i, e: e.state["head"] >= 10)) for t, trace in
            enumerate(traces) if trace[-1].state["head"] >= 10]
    assert hits
    res = check_traces(SPEC_DIR, "RingCredit", PARAMS.constants(), traces,
                       invariants=["Bounds", "head < 10"], timeout=TIMEOUT)
    assert not res.ok
    assert (res.failure.trace, res.failure.step) in hits
    assert "head < 10" in res.failure.reason


def test_custom_action_formulas() -> None:
    """An event name of the implementation can map to any action formula."""
    traces = batch(2, 15, seed=8)
    names = {"Want": "send_start", "Write": "send", "Recv": "recv"}
    renamed = [[dataclasses.replace(e, action=names.get(e.action, e.action)) for e in t]
               for t in traces]
    formulas = {"send_start": "Want(p[1])", "send": "Write", "recv": "\\E k \\in 1..C : Recv(k)",
                "AskCredit": "AskCredit", "GetCredit": "GetCredit", "Deliver": "Deliver",
                "ReturnCredit": "ReturnCredit"}
    res = check_traces(SPEC_DIR, "RingCredit", PARAMS.constants(), renamed, formulas,
                       timeout=TIMEOUT)
    assert res.ok, res.failure


def test_malformed_traces_raise_value_error() -> None:
    good = batch(1, 3, seed=1)[0]
    missing = [good[0], Event("Want", (1,), {k: v for k, v in good[1].state.items()
                                             if k != "got"})]
    with pytest.raises(ValueError, match="missing: got"):
        check([missing])
    with pytest.raises(ValueError, match="not defined"):
        check([[good[0], dataclasses.replace(good[1], action="Send")]])
    with pytest.raises(ValueError, match="empty"):
        check([[]])
    arity = [good[0], Event("Recv", (1,), good[0].state), Event("Recv", (), good[0].state)]
    with pytest.raises(ValueError, match="params"):
        check([arity])


def test_parse_state_and_read_dot(tmp_path: Path) -> None:
    st = parse_state('/\\ x = <<1,\n   2>>\n/\\ y = [a |-> "b"]\n/\\ z = (0 :> TRUE)')
    assert st == {"x": (1, 2), "y": {"a": "b"}, "z": {0: True}}
    dot = tmp_path / "g.dot"
    dot.write_text(
        'strict digraph DiskGraph {\n'
        '1 [label="/\\\\ x = 0\\n/\\\\ s = \\"a\\"",style = filled]\n'
        '1 -> -2 [label="Inc",color="black",fontcolor="black"];\n'
        '-2 [label="/\\\\ x = 1\\n/\\\\ s = \\"a\\""];\n'
        '}\n'
    )
    states, initial, edges = read_dot(dot)
    assert states == {"1": {"x": 0, "s": "a"}, "-2": {"x": 1, "s": "a"}}
    assert initial == {"1"} and edges == [("1", "Inc", "-2")]


@pytest.mark.slow
def test_thousand_traces_of_fifty_steps(record_property) -> None:
    traces = batch(1000, 50, seed=2024)
    start = time.monotonic()
    res = check_traces(SPEC_DIR, "RingCredit", PARAMS.constants(), traces,
                       timeout=SLOW_TIMEOUT)
    total = time.monotonic() - start
    assert res.ok, res.failure
    assert res.events == 51_000 and res.distinct_states == 51_000
    record_property("tlc_seconds", round(res.seconds, 1))
    record_property("total_seconds", round(total, 1))
    print(f"1,000 traces x 50 steps: TLC {res.seconds:.1f} s, with generation {total:.1f} s")


@needs_tlc
def test_a_rejection_is_explained_for_a_spec_with_model_value_constants() -> None:
    """Connect has a model-value constant (None): the one-step explanation runs must
    assign it in their .cfg, not define it by itself (TLC overflowed its stack)."""
    from spec import connect as cm
    consts = cm.constants_of(SPEC_DIR / "MCConnectSmall.cfg")
    k = cm.Params.from_constants(consts)
    s0 = cm.init_states(k)[0]
    lab, s1 = next((lab, s) for lab, s in cm.next_states(k, s0) if lab.name == "Listen")
    good = cm.to_tla_state(k, s1)
    bad = dict(good, nextId=good["nextId"] + 5)
    trace = [Event("Init", (), cm.to_tla_state(k, s0)), Event(lab.name, lab.params, bad)]
    res = check_traces(SPEC_DIR, "Connect", consts, [trace],
                       action_formula=lambda name: "Listen(p[1], p[2])", timeout=TIMEOUT)
    assert not res.ok
    f = res.failure
    assert (f.step, f.action) == (1, "Listen")
    assert len(f.successors) == 1 and set(f.diff) == {"nextId"}, str(f)
