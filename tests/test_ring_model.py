r"""The Python model spec/ring.py agrees with spec/tla/RingCredit.tla.

The constants come from the TLC configs themselves (spec.configs.read_constants), so
the model and TLC can never be checked against different instances.  TLC
runs with one worker where depths are compared: with two workers TLC's
breadth-first search is not strictly level by level and the depth it
reports can exceed the true one (seen: 50 instead of 49 on MCRingCredit).
TLC's count of generated states is not compared: TLC enumerates each
disjunct of an action separately, so ReturnCredit's ``head - credited >= B
\/ creq`` yields the same successor twice when both hold.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from spec import ring
from spec.configs import CFG_SECTION, read_constants
from spec.statespace import StateGraph, explore, reachable
from tests.gates import needs_tlc

SPEC_DIR = Path(__file__).resolve().parent.parent / "spec" / "tla"
SMALL_CFG = "MCRingCreditSmall.cfg"
BAD_CFG = "MCRingCreditBad.cfg"
TLC_TIMEOUT = 300


def params_of(cfg: str) -> ring.Params:
    """The model's Params for one of the spec's configs."""
    return ring.Params.from_constants(read_constants(SPEC_DIR / cfg))


def safety_copy(cfg: str, dest: Path, **override: int) -> str:
    """Link the spec's modules into ``dest`` and write ``cfg`` there without PROPERTIES.

    Temporal properties do not change the state graph, only the run time,
    and in the bad config they would be violated too (the deadlock).
    ``override`` replaces the values of some constants.
    """
    for src in SPEC_DIR.glob("*.tla"):
        os.symlink(src, dest / src.name)
    kept = []
    dropping = False
    for raw in (SPEC_DIR / cfg).read_text().splitlines():
        line = raw.split("\\*", 1)[0].rstrip()
        m = CFG_SECTION.match(line)
        if m:
            dropping = m.group(1) in ("PROPERTY", "PROPERTIES")
        for name, value in override.items():
            line = re.sub(rf"^(\s*{name}\s*=\s*)\S+", rf"\g<1>{value}", line)
        if not dropping:
            kept.append(line)
    (dest / cfg).write_text("\n".join(kept) + "\n")
    return cfg


def graph_of(p: ring.Params) -> StateGraph:
    return explore(ring.init_states(p), lambda s: ring.next_states(p, s), keep_edges=True,
                   max_states=200_000)


@pytest.fixture(scope="module")
def small() -> tuple[ring.Params, StateGraph]:
    p = params_of(SMALL_CFG)
    return p, graph_of(p)


@pytest.fixture(scope="module")
def bad() -> tuple[ring.Params, StateGraph]:
    p = params_of(BAD_CFG)
    return p, graph_of(p)


# --------------------------------------------------------------------------
# Constants and single actions


def test_cfg_reader_reads_every_constant() -> None:
    consts = read_constants(SPEC_DIR / SMALL_CFG)
    assert set(consts) == {"C", "B", "MaxLen", "MaxBytes", "K", "CreditRequest"}
    assert consts["CreditRequest"] is True
    assert read_constants(SPEC_DIR / BAD_CFG)["CreditRequest"] is False


@pytest.mark.parametrize(
    "change",
    [
        {"C": 0},
        {"B": 0},
        {"MaxLen": 0},
        {"MaxLen": 5},          # > C
        {"MaxBytes": -1},
        {"K": 1},
        {"K": 5},               # K - 1 = 4 divides C = 4
        {"CreditRequest": 1},
        {"C": 4.0},
    ],
)
def test_params_enforce_the_assume(change: dict[str, object]) -> None:
    args = {"C": 4, "B": 5, "MaxLen": 3, "MaxBytes": 10, "K": 6, "CreditRequest": True}
    ring.Params(**args)  # the base values are fine
    with pytest.raises(ValueError):
        ring.Params(**{**args, **change})


P = ring.Params(C=4, B=5, MaxLen=3, MaxBytes=10, K=6)


def _start(transport: str) -> ring.State:
    return next(s for s in ring.init_states(P) if s.transport == transport)


def _run(s: ring.State, *labels: tuple) -> ring.State:
    for name, *params in labels:
        t = ring.step(P, s, ring.Label(name, tuple(params)))
        assert t is not None, f"{name}{tuple(params)} disabled in {s}"
        s = t
    return s


def test_write_wraps_around_the_ring_and_needs_free_space() -> None:
    s = _run(_start("shm"), ("Want", 3), ("Write",), ("Recv", 2), ("Want", 3))
    assert ring.Free(P, s) == 3
    s = _run(s, ("Write",))
    # Bytes 3, 4, 5 of the stream (values 4, 5, 1) land in slots 3, 0, 1.
    assert s.buf == (5, 1, 3, 4) and s.tail == 6 and s.rtail == 6
    s = _run(s, ("Want", 2))
    assert ring.Write(P, s) is None  # only 0 bytes free: 6 - 2 = 4 in use
    assert ring.AskCredit(P, s) is None  # "shm" never asks


def test_rdma_credit_request_path() -> None:
    s = _run(_start("rdma"), ("Want", 3), ("Write",), ("Want", 2))
    assert ring.Write(P, s) is None and ring.Free(P, s) == 1
    s = _run(s, ("AskCredit",))
    assert s.asked and s.wire[-1] is ring.ASK
    assert ring.AskCredit(P, s) is None  # one request at a time
    s = _run(s, ("Deliver",), ("Recv", 3))
    assert ring.ReturnCredit(P, s) is None  # 3 < B and the request has not landed
    s = _run(s, ("Deliver",))
    assert s.creq
    s = _run(s, ("ReturnCredit",))
    assert s.cwire == (3,) and s.credited == 3 and not s.creq
    s = _run(s, ("GetCredit",))
    assert s.shead == 3 and not s.asked and ring.Write(P, s) is not None


def test_batch_returned_without_a_request() -> None:
    p = ring.Params(C=4, B=2, MaxLen=3, MaxBytes=10, K=6)
    s = next(s for s in ring.init_states(p) if s.transport == "rdma")
    for name, *args in (("Want", 3), ("Write",), ("Deliver",), ("Recv", 1)):
        s = ring.step(p, s, ring.Label(name, tuple(args)))
    assert ring.ReturnCredit(p, s) is None  # 1 byte freed, batch is 2
    s = ring.Recv(p, s, 1)
    assert ring.ReturnCredit(p, s).cwire == (2,)  # exactly one batch


def test_no_credit_request_without_the_fix() -> None:
    p = ring.Params(C=4, B=5, MaxLen=3, MaxBytes=10, K=6, CreditRequest=False)
    s = next(s for s in ring.init_states(p) if s.transport == "rdma")
    for label in (("Want", 3), ("Write",), ("Want", 2)):
        s = ring.step(p, s, ring.Label(label[0], tuple(label[1:])))
    assert ring.AskCredit(p, s) is None


def test_recv_bounds_and_done() -> None:
    s = _run(_start("shm"), ("Want", 2), ("Write",))
    assert ring.Recv(P, s, 0) is None and ring.Recv(P, s, 3) is None
    assert ring.Recv(P, s, 2).got == (1, 2)
    assert ring.Done(P, s) is None
    end = s._replace(tail=10, rtail=10, head=10, shead=10)
    assert ring.Done(P, end) is end
    assert ring.Done(P, end._replace(want=1)) is None


def test_step_rejects_unknown_actions() -> None:
    with pytest.raises(ValueError, match="Write"):
        ring.step(P, _start("shm"), ring.Label("Send"))


def test_tla_state_round_trip(small: tuple[ring.Params, StateGraph]) -> None:
    _, g = small
    for s in g.levels:
        assert ring.from_tla_state(ring.to_tla_state(s)) == s


# --------------------------------------------------------------------------
# Invariants


def test_invariants_hold_in_every_reachable_state(small: tuple[ring.Params, StateGraph]) -> None:
    p, g = small
    bad_states = [(s, ring.invariants(p, s)) for s in g.levels if ring.invariants(p, s)]
    assert not bad_states, bad_states[:3]


def test_each_invariant_can_fail() -> None:
    s = _run(_start("rdma"), ("Want", 3), ("Write",), ("Deliver",), ("Recv", 2),
             ("Want", 3), ("AskCredit",), ("Deliver",), ("ReturnCredit",))
    assert ring.invariants(P, s) == []
    broken = {
        "TypeOK": s._replace(want=4),
        "DeliveredPrefix": s._replace(got=(1, 3)),
        "NoOverwrite": s._replace(buf=(1, 2, 5, 0)),
        "Bounds": s._replace(rtail=s.tail + 1),
        "SenderViewSafe": s._replace(shead=s.head + 1),
        "CreditsAccounted": s._replace(cwire=(2, 2)),
    }
    for name, t in broken.items():
        assert name in ring.invariants(P, t), name


# --------------------------------------------------------------------------
# Agreement with TLC


def _tlc(tmp_path: Path, cfg: str, override: dict[str, int] | None = None, **kwargs):
    from spec.tlc import run_tlc

    config = safety_copy(cfg, tmp_path, **(override or {}))
    return run_tlc(tmp_path, "MCRingCredit", config, timeout=TLC_TIMEOUT, **kwargs)


def _state_graph_from_dot(path: Path) -> tuple[set, set]:
    from spec.tracecheck import read_dot

    states, initial, edges = read_dot(path)
    model = {node: ring.from_tla_state(values) for node, values in states.items()}
    return {model[n] for n in initial}, {(model[a], name, model[b]) for a, name, b in edges}


@needs_tlc
def test_small_config_matches_tlc_state_for_state(
    small: tuple[ring.Params, StateGraph], tmp_path: Path
) -> None:
    """Counts, depth, deadlock freedom and the whole labelled state graph."""
    p, g = small
    res = _tlc(tmp_path, SMALL_CFG, workers=1, deadlock=True, dump_dot=tmp_path / "g.dot")
    assert res.ok, res.report()
    assert (res.distinct_states, res.diameter) == (g.distinct, g.depth)
    assert g.deadlocks == []

    init, edges = _state_graph_from_dot(tmp_path / "g.dot")
    model_edges = {(s, label.name, t) for s, label, t in g.edges}
    assert init == set(ring.init_states(p))
    assert len(model_edges) == len(g.edges)  # action names alone tell edges apart
    assert edges - model_edges == set()
    assert model_edges - edges == set()
    # Not vacuous: every action fires, and the ring wraps under both transports.
    assert {name for _, name, _ in edges} == set(ring.ACTIONS)
    for transport in ("shm", "rdma"):
        assert any(s.transport == transport and s.tail > p.C for s in g.levels)


@needs_tlc
def test_bad_config_matches_tlc_and_deadlocks_where_tlc_does(
    bad: tuple[ring.Params, StateGraph], tmp_path: Path
) -> None:
    p, g = bad
    counted = _tlc(tmp_path, BAD_CFG, workers=1, deadlock=False)
    assert counted.ok, counted.report()
    assert (counted.distinct_states, counted.diameter) == (g.distinct, g.depth)

    (tmp_path / "dl").mkdir()
    found = _tlc(tmp_path / "dl", BAD_CFG, workers=2, deadlock=True)
    assert found.kinds == ["deadlock"], found.report()
    stuck = ring.from_tla_state(found.counterexample[-1].variables)
    assert stuck in set(g.deadlocks)


@needs_tlc
def test_batching_instance_matches_tlc(tmp_path: Path) -> None:
    """The configs have B > C, so a full batch never builds up there; this one has B < C."""
    p = ring.Params.from_constants({**read_constants(SPEC_DIR / SMALL_CFG), "B": 2})
    g = graph_of(p)
    assert any(label.name == "ReturnCredit" and not s.creq for s, label, _ in g.edges)
    res = _tlc(tmp_path, SMALL_CFG, {"B": 2}, workers=1, deadlock=True)
    assert res.ok, res.report()
    assert (res.distinct_states, res.diameter) == (g.distinct, g.depth)


def test_deadlocks_only_without_the_credit_request(
    small: tuple[ring.Params, StateGraph], bad: tuple[ring.Params, StateGraph]
) -> None:
    assert small[1].deadlocks == []
    p, g = bad
    assert g.deadlocks
    for s in g.deadlocks:
        # The credit deadlock: the sender waits for space it will never be
        # credited; the receiver has read everything and holds less than a batch.
        assert s.transport == "rdma" and s.want > ring.Free(p, s), s
        assert not s.wire and not s.cwire and not s.asked
        assert s.head == s.rtail == s.tail and s.head - s.credited < p.B


def test_reachable_matches_explore(small: tuple[ring.Params, StateGraph]) -> None:
    p, g = small
    assert reachable(ring.init_states(p), lambda s: ring.next_states(p, s)) == g.states
    with pytest.raises(ValueError, match="max_states"):
        explore(ring.init_states(p), lambda s: ring.next_states(p, s), max_states=100)
