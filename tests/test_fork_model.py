r"""The Python model spec/fork.py agrees with spec/tla/Fork.tla.

The constants come from the TLC configs themselves (spec.fork.constants_of),
so the model and TLC are always checked on the same instance.  TLC runs
with one worker where depths are compared (see tests/test_ring_model.py),
on a copy of the config without the temporal properties (they do not change
the state graph) and, for the bad variants, without the invariants TLC
would stop at.

Traces made of the model's actions, as a driver of the real implementation
logs them, must pass spec.tracecheck against the spec; a corrupted one, and
one walked by a known-bad variant of the model, must be rejected at the
exact step.

Liveness is TLC's to check; here the model checks its necessary condition:
from every reachable state where something is pending (a child's first
send, a dead process the monitor still lists, an unheld end not closed), a
state where it is resolved is reachable.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import pytest

from spec import fork as m
from spec.statespace import StateGraph, can_reach, explore
from spec.tracecheck import Event, check_traces
from tests.gates import needs_tlc
from tests.tlc_checks import invariant_verdicts, model_walk, reachability_copy

SPEC_DIR = Path(__file__).resolve().parent.parent / "spec" / "tla"
SMALL = "MCForkSmall"
BAD_COUNT, BAD_RESOURCE, BAD_TOKEN = "MCForkBadCount", "MCForkBadResource", "MCForkBadToken"
TLC_TIMEOUT = 400


def params_of(name: str) -> m.Params:
    """The model's Params for one of the spec's configs."""
    return m.Params.from_constants(m.constants_of(SPEC_DIR / f"{name}.cfg"))


def graph_of(k: m.Params) -> StateGraph:
    return explore(m.init_states(k), lambda s: m.next_states(k, s), keep_edges=True,
                   max_states=200_000)


@pytest.fixture(scope="module")
def small() -> tuple[m.Params, StateGraph]:
    k = params_of(SMALL)
    return k, graph_of(k)


# --------------------------------------------------------------------------
# Constants


def test_constants_come_from_the_configs() -> None:
    consts = m.constants_of(SPEC_DIR / f"{SMALL}.cfg")
    assert set(consts) == {"Procs", "Root", "Fds", "Socks", "CallLen", "Calls", "Mortal",
                           "CountHolders", "FreshResources", "TokenStays"}
    k = params_of("MCFork")
    assert len(k.Procs) == 3 and k.Fds == (0, 1) and k.CallLen == 2
    assert params_of(BAD_COUNT).CountHolders is False
    assert params_of(BAD_RESOURCE).FreshResources is False
    assert params_of(BAD_TOKEN).TokenStays is False


BASE = {"Procs": {"p1", "p2", "p3"}, "Root": "p1", "Fds": {0, 1, 2}, "Socks": {"s1"},
        "CallLen": 2, "Calls": 1, "Mortal": {"p1", "p2", "p3"}}


@pytest.mark.parametrize(
    "change",
    [
        {"Procs": set()},
        {"Procs": "p1"},
        {"Root": "p9"},
        {"Socks": {"p1"}},                     # shares a name with Procs
        {"Socks": {"Free"}},                   # a name the spec reserves
        {"Procs": {"p1", "NoProc"}},
        {"Fds": set()},
        {"Fds": {-1, 0}},
        {"Fds": {0.5}},
        {"Fds": {0}, "Socks": {"s1", "s2"}},   # fewer fds than ends
        {"CallLen": 0},
        {"Calls": -1},
        {"Calls": True},
        {"Mortal": {"p4"}},
        {"Mortal": "p1"},
        {"TokenStays": None},
    ],
)
def test_params_enforce_the_assume(change: dict[str, object]) -> None:
    m.Params(**BASE)  # the base values are fine
    with pytest.raises(ValueError):
        m.Params(**{**BASE, **change})


def test_params_constants_round_trip() -> None:
    k = params_of(SMALL)
    assert m.Params.from_constants(k.constants()) == k
    with pytest.raises(ValueError, match="missing constants: Root"):
        m.Params.from_constants({n: v for n, v in k.constants().items() if n != "Root"})


def test_init_puts_the_ends_on_the_lowest_fds_in_any_order() -> None:
    k = m.Params(**{**BASE, "Socks": {"s1", "s2"}})
    inits = m.init_states(k)
    root = k.proc("p1")
    assert {s.fdt[root] for s in inits} == {("s1", "s2", None), ("s2", "s1", None)}
    for s in inits:
        assert s.born == s.alive == {"p1"} and s.known == ({"p1"},) * 2
        assert s.pheld[root] == {"s1", "s2"} and s.tok == ("p1", "p1")
        assert m.invariants(k, s) == []


# --------------------------------------------------------------------------
# Single actions


K = m.Params(**BASE)


def run(k: m.Params, *steps: tuple, start: m.State | None = None) -> m.State:
    """Apply the actions (name, *params) in order; each must be enabled and safe."""
    s = start if start is not None else m.init_states(k)[0]
    for name, *params in steps:
        t = m.step(k, s, m.Label(name, tuple(params)))
        assert t is not None, f"{name}{tuple(params)} disabled in {s}"
        assert m.invariants(k, t) == [], (name, m.invariants(k, t), t)
        assert m.step_violations(k, s, t) == [], (name, s, t)
        s = t
    return s


P1, P2, P3 = K.proc("p1"), K.proc("p2"), K.proc("p3")
# Random walks: two ends, three fds, two calls per end, the children mortal.
WALK = m.Params(**{**BASE, "Socks": {"s1", "s2"}, "Fds": {0, 1, 2}, "Calls": 2,
                   "Mortal": {"p2", "p3"}})


def test_fork_copies_the_table_and_the_childs_ends_wait_for_forked() -> None:
    s = run(K, ("Dup", "p1", 0), ("Fork", "p1", "p2"))
    assert s.fdt[P2] == s.fdt[P1] == ("s1", "s1", None)
    assert s.parent[P2] == "p1" and s.pending[P2] == {"s1"}
    assert s.res[P2] is None and s.pheld[P2] == frozenset() and s.known == ({"p1"},)
    assert m.Fork(K, s, "p1", "p2") is None               # born once
    # Nothing before FORKED, and FORKED needs the child's own channel.
    assert m.Register(K, s, "p2") is None
    assert m.Close(K, s, "p2", 1) is None and m.Ask(K, s, "p2", "s1") is None
    s = run(K, ("CreateResource", "p2"), ("Register", "p2"), start=s)
    assert s.known == ({"p1", "p2"},) and s.pending[P2] == frozenset()
    assert m.CreateResource(K, s, "p2") is None
    # A grandchild, forked before its parent's FORKED was read, is pending too.
    s2 = run(K, ("Fork", "p1", "p2"), ("Fork", "p2", "p3"))
    assert s2.pending[P3] == {"s1"} and s2.parent[P3] == "p2"


def test_dup_takes_the_lowest_free_fd() -> None:
    s = run(K, ("Dup", "p1", 0), ("Dup", "p1", 1), ("Close", "p1", 1))
    assert s.fdt[P1] == ("s1", None, "s1")
    assert m.invariants(K, s) == [] and s.known == ({"p1"},)    # a copy: not the monitor's
    s = run(K, ("Dup", "p1", 2), start=s)
    assert s.fdt[P1] == ("s1", "s1", "s1")
    assert m.Dup(K, s, "p1", 0) is None                  # no fd free


def test_the_last_holder_closes_the_rings_not_the_first_closer() -> None:
    s = run(K, ("Fork", "p1", "p2"), ("Close", "p1", 0))
    assert s.eof == (False,)                              # the child still holds the end
    assert s.known == (frozenset(),) and s.tok == (None,) and s.pheld[P1] == frozenset()
    assert m.MonClose(K, s, "s1") is None                 # a holder: no POLLHUP
    s = run(K, ("CreateResource", "p2"), ("Register", "p2"), ("Close", "p2", 0), start=s)
    assert s.eof == (True,) and s.known == (frozenset(),)
    s = run(K, ("MonClose", "s1"), start=s)
    assert s.monClosed == (True,)


def test_the_monitor_closes_an_end_whose_last_holder_died() -> None:
    s = run(K, ("Fork", "p1", "p2"), ("CreateResource", "p2"), ("Register", "p2"),
            ("Die", "p1"))
    assert s.fdt[P1] == (None,) * 3 and s.eof == (False,)
    assert m.Handover(K, s, "s1") is None                 # nobody asked yet
    s = run(K, ("Reap", "p1"), ("Die", "p2"), start=s)
    assert s.tok == (None,) and s.known == ({"p2"},)
    assert m.MonClose(K, s, "s1") is None                 # p2 not reaped yet
    s = run(K, ("Reap", "p2"), ("MonClose", "s1"), start=s)
    assert s.eof == (True,) and s.monClosed == (True,)
    assert m.Reap(K, s, "p2") is None                     # reaped once


def test_a_child_that_dies_before_forked_does_not_keep_the_end_open() -> None:
    s = run(K, ("Fork", "p1", "p2"), ("CreateResource", "p2"), ("Die", "p2"),
            ("Close", "p1", 0))
    assert s.pending[P2] == {"s1"} and s.eof == (True,)   # the closer was the last holder
    s = run(K, ("MonClose", "s1"), start=s)
    # The FORKED read after the end was closed adds nothing.
    s = run(K, ("Register", "p2"), start=s)
    assert s.known == (frozenset(),) and not m.in_monitor(K, s, "p2")
    # Without a channel the FORKED never comes, and the end closes anyway.
    t = run(K, ("Fork", "p1", "p2"), ("Die", "p2"), ("Close", "p1", 0), ("MonClose", "s1"))
    assert t.monClosed == (True,) and m.Register(K, t, "p2") is None


def test_a_childs_first_send_takes_the_token_through_the_monitor() -> None:
    s = run(K, ("Fork", "p1", "p2"), ("CreateResource", "p2"), ("Register", "p2"),
            ("Ask", "p2", "s1"))
    assert s.queue == (("p2",),) and m.Ask(K, s, "p2", "s1") is None
    assert m.SendStart(K, s, "p2", "s1") is None
    s = run(K, ("Handover", "s1"), start=s)
    assert s.tok == ("p2",) and s.pheld[P2] == {"s1"} and s.pheld[P1] == frozenset()
    assert m.SendStart(K, s, "p1", "s1") is None
    s = run(K, ("SendStart", "p2", "s1"), ("Write", "p2", "s1"), start=s)
    assert m.SendEnd(K, s, "p2", "s1") is None            # one byte of two
    s = run(K, ("Write", "p2", "s1"), ("SendEnd", "p2", "s1"), ("PeerRead", "s1"),
            ("PeerRead", "s1"), start=s)
    assert s.peerGot == ((("p2", 1, 1), ("p2", 1, 2)),) and s.busy == (None,)
    assert m.Ask(K, s, "p2", "s1") is None                # its calls are made


def test_fork_in_the_middle_of_a_send_call() -> None:
    s = run(K, ("SendStart", "p1", "s1"), ("Write", "p1", "s1"), ("Fork", "p1", "p2"))
    assert s.busy == ("p1",) and s.calls[P2] == (0,)
    assert m.Write(K, s, "p2", "s1") is None              # the call does not go on in p2
    assert m.Close(K, s, "p1", 0) is None                 # nor does p1 close under it
    s = run(K, ("CreateResource", "p2"), ("Register", "p2"), ("Ask", "p2", "s1"), start=s)
    assert m.Handover(K, s, "s1") is None                 # a call is under way
    s = run(K, ("Write", "p1", "s1"), ("SendEnd", "p1", "s1"), ("Handover", "s1"), start=s)
    assert s.tok == ("p2",)


def test_death_in_a_send_call_leaves_a_prefix_and_reap_resets_the_word() -> None:
    s = run(K, ("Fork", "p1", "p2"), ("SendStart", "p1", "s1"), ("Write", "p1", "s1"),
            ("Die", "p1"))
    assert s.ring == ((("p1", 1, 1),),) and s.busy == ("p1",)
    assert m.Write(K, s, "p1", "s1") is None
    s = run(K, ("CreateResource", "p2"), ("Register", "p2"), ("Ask", "p2", "s1"), start=s)
    assert m.Handover(K, s, "s1") is None                 # the dead holder's word is busy
    s = run(K, ("Reap", "p1"), ("Handover", "s1"), ("SendStart", "p2", "s1"),
            ("Write", "p2", "s1"), start=s)
    assert s.ring == ((("p1", 1, 1), ("p2", 1, 1)),)


def test_step_rejects_unknown_actions_and_arities() -> None:
    s = m.init_states(K)[0]
    with pytest.raises(ValueError, match="unknown action"):
        m.step(K, s, m.Label("Exec", ("p1",)))
    with pytest.raises(ValueError, match="takes 2 parameters"):
        m.step(K, s, m.Label("Fork", ("p1",)))
    with pytest.raises(ValueError, match="unknown process"):
        m.step(K, s, m.Label("Die", ("p9",)))
    with pytest.raises(ValueError, match="unknown fd"):
        m.step(K, s, m.Label("Dup", ("p1", 7)))


# --------------------------------------------------------------------------
# What the cross-check uses


def test_internal_and_external_split_the_actions() -> None:
    assert set(m.INTERNAL) | set(m.EXTERNAL) | {"Done"} == set(m.ACTIONS)
    assert not set(m.INTERNAL) & set(m.EXTERNAL)


def test_settle_takes_internal_steps_to_a_quiescent_state() -> None:
    s = run(K, ("Fork", "p1", "p2"), ("Fork", "p2", "p3"))
    assert not m.quiescent(K, s)
    steps = m.settle(K, s)
    assert {lb.name for lb, _ in steps} <= set(m.INTERNAL)
    end = steps[-1][1]
    assert m.quiescent(K, end) and m.invariants(K, end) == []
    # Every child registered, made its resource, and made its send call.
    for p in ("p2", "p3"):
        i = K.proc(p)
        assert end.res[i] == p and end.pending[i] == frozenset() and end.calls[i] == (1,)
        assert p in end.known[0]
    assert m.settle(K, end) == []


def test_quiescent_states_of_the_small_model(small) -> None:
    k, g = small
    quiet = [s for s in g.levels if m.quiescent(k, s)]
    assert quiet
    for s in quiet:
        # Settled: every live holder is registered and made its calls, every
        # dead process is reaped, every unheld end is closed.
        for p in s.alive:
            i = k.proc(p)
            for j, x in enumerate(k.Socks):
                if x in m.held(k, s, p):
                    assert s.pending[i] == frozenset() and s.calls[i][j] == k.Calls
        for p in s.born - s.alive:
            assert not m.in_monitor(k, s, p) or s.pending[k.proc(p)]
        for j, x in enumerate(k.Socks):
            assert s.monClosed[j] or m.holders(k, s, x)


# --------------------------------------------------------------------------
# The small model's graph and invariants


def test_small_model_covers_the_interesting_cases(small) -> None:
    k, g = small
    states = list(g.levels)
    assert all(m.invariants(k, s) == [] for s in states)
    assert all(m.step_violations(k, s, t) == [] for s, _, t in g.edges)
    names = {lb.name for _, lb, _ in g.edges}
    assert names == set(m.ACTIONS)
    # The child sends; an end closed by the monitor after its last holder died.
    assert any(b[0] == "p2" for s in states for b in s.peerGot[0])
    assert any(lb.name == "MonClose" and not s.eof[0] for s, lb, _ in g.edges)
    # A FORKED read after the child died; a child that died with no channel.
    assert any(lb.name == "Register" and lb.params[0] not in s.alive for s, lb, _ in g.edges)
    assert any(s.pending[k.proc("p2")] and s.res[k.proc("p2")] is None
               and "p2" not in s.alive for s in states)


def test_each_invariant_can_fail() -> None:
    s = run(K, ("Fork", "p1", "p2"), ("CreateResource", "p2"), ("Register", "p2"),
            ("SendStart", "p1", "s1"), ("Write", "p1", "s1"))
    broken = {
        "TypeOK": s._replace(calls=m._set(s.calls, P1, (5,))),
        "PeerClosedOnlyWhenUnheld": s._replace(eof=(True,)),
        "MonitorKnowsHolders": s._replace(known=({"p1"},)),
        "KnownAreHolders": s._replace(known=({"p1", "p2", "p3"},)),
        "ResourceOwned": s._replace(res=m._set(s.res, P2, "p1")),
        "OneTokenHolder": s._replace(pheld=m._set(s.pheld, P2, frozenset({"s1"}))),
        "OnlySenderWrites": s._replace(tok=("p2",)),
        "SendCallsWhole": s._replace(ring=((("p1", 1, 2),),)),
        "MonitorClosedIsClosed": s._replace(monClosed=(True,)),
    }
    assert set(broken) == set(m.INVARIANTS)
    for name, t in broken.items():
        assert name in m.invariants(K, t), name
    # Another process's byte inside p1's call; a byte of a call never started.
    t = s._replace(ring=((("p1", 1, 1), ("p2", 1, 1), ("p1", 1, 2)),),
                   calls=m._set(s.calls, P2, (1,)))
    assert "SendCallsWhole" in m.invariants(K, t)
    assert "OnlySenderWrites" in m.invariants(K, s._replace(ring=((("p2", 1, 1),),)))
    # A call cut short by a process that is alive and not sending.
    t = s._replace(busy=(None,))
    assert m.invariants(K, t) == ["SendCallsWhole"]


def test_each_step_property_can_fail() -> None:
    s = run(K, ("Dup", "p1", 0))
    t = run(K, ("Fork", "p1", "p2"), start=s)
    assert m.step_violations(K, s, t) == []
    assert m.step_violations(K, s, t._replace(fdt=m._set(t.fdt, P2, ("s1", None, None)))) == [
        "ForkCopiesTable"]
    assert m.step_violations(K, s, t._replace(parent=m._set(t.parent, P2, "p3"))) == [
        "ForkCopiesTable"]
    s0 = m.init_states(K)[0]
    u = s0._replace(fdt=m._set(s0.fdt, P1, ("s1", None, "s1")))
    assert m.step_violations(K, s0, u) == ["LowestFd"]     # fd 2 taken while fd 1 is free
    assert m.step_violations(K, s0, s) == []               # fd 1: the lowest
    # A process born in the step is ForkCopiesTable's, not LowestFd's.
    assert m.step_violations(K, s0, t._replace(fdt=m._set(t.fdt, P2, ("s1", None, "s1")))) == [
        "ForkCopiesTable"]


def test_tla_state_round_trip(small) -> None:
    k, g = small
    for s in list(g.levels)[::7]:
        assert m.from_tla_state(k, m.to_tla_state(k, s)) == s
    # Fds from 1: TLC prints such a table as a sequence.
    k1 = m.Params(**{**BASE, "Fds": {1, 2}})
    s = m.init_states(k1)[0]
    values = m.to_tla_state(k1, s)
    values["fdt"] = {p: tuple(t[f] for f in (1, 2)) for p, t in values["fdt"].items()}
    assert m.from_tla_state(k1, values) == s


def _walk_states(k: m.Params, rng: random.Random, steps: int) -> list[m.State]:
    """The states of one random behaviour of the model."""
    s = m.init_states(k)[0]
    out = [s]
    for _ in range(steps):
        choices = [t for lb, t in m.next_states(k, s) if lb.name != "Done"]
        if not choices:
            break
        s = rng.choice(choices)
        out.append(s)
    return out


def _perturbed(k: m.Params, states: list[m.State], rng: random.Random) -> list[m.State]:
    """States near reachable ones, one variable changed: most break some invariant."""
    procs, socks = k.Procs, k.Socks

    def one(s: m.State) -> m.State:
        i, j, n = rng.randrange(len(procs)), rng.randrange(len(socks)), rng.randrange(len(k.Fds))
        p, x = procs[i], socks[j]
        any_proc = rng.choice((None, *procs))
        choices = [
            lambda: s._replace(alive=s.alive ^ {p} if p in s.born else s.alive),
            lambda: s._replace(born=s.born | {p}),
            lambda: s._replace(fdt=m._set(s.fdt, i, m._set(s.fdt[i], n, rng.choice(
                (None, *socks))))),
            lambda: s._replace(res=m._set(s.res, i, any_proc)),
            lambda: s._replace(pending=m._set(s.pending, i, s.pending[i] ^ {x})),
            lambda: s._replace(known=m._set(s.known, j, s.known[j] ^ {p})),
            lambda: s._replace(monClosed=m._set(s.monClosed, j, not s.monClosed[j])),
            lambda: s._replace(eof=m._set(s.eof, j, not s.eof[j])),
            lambda: s._replace(pheld=m._set(s.pheld, i, s.pheld[i] ^ {x})),
            lambda: s._replace(tok=m._set(s.tok, j, any_proc)),
            lambda: s._replace(queue=m._set(s.queue, j, s.queue[j] + (p,))),
            lambda: s._replace(busy=m._set(s.busy, j, any_proc)),
            lambda: s._replace(calls=m._set(s.calls, i, m._set(
                s.calls[i], j, rng.randrange(k.Calls + 1)))),
            lambda: s._replace(ring=m._set(s.ring, j, s.ring[j] + ((p, 1, rng.randrange(
                1, k.CallLen + 1)),))),
            lambda: s._replace(peerGot=m._set(s.peerGot, j, s.peerGot[j][1:])),
            lambda: s._replace(ring=m._set(s.ring, j, s.ring[j][::-1])),
        ]
        return rng.choice(choices)()

    return [one(s) for s in states]


@needs_tlc
def test_invariant_predicates_agree_with_tlc(tmp_path: Path) -> None:
    """TLC evaluates the spec's invariants on states the model judges: same verdicts.

    The states are reachable ones (met on random walks of an instance with
    two ends, two-byte calls and three processes) with one variable changed,
    so many break some invariant: the Python predicates must fail exactly
    where the TLA+ ones do, not only agree that all hold on the reachable
    states.
    """

    k = WALK
    rng = random.Random(7)
    met = {s for _ in range(30) for s in _walk_states(k, rng, 50)}
    states = _perturbed(k, rng.sample(sorted(met, key=repr), 400), rng)
    names = list(m.INVARIANTS)
    verdicts = invariant_verdicts(
        tmp_path, "Fork", k.constants(), m.State._fields,
        [m.to_tla_state(k, s) for s in states], names, TLC_TIMEOUT)
    for n, s in enumerate(states, 1):
        assert m.invariants(k, s) == verdicts[n], (n, s)
    assert sum(1 for v in verdicts.values() if v) >= 100     # many broken states
    assert {name for v in verdicts.values() for name in v} >= set(names) - {"TypeOK"}


# --------------------------------------------------------------------------
# Liveness, its necessary condition: what is pending can always be resolved


def _pending(k: m.Params) -> dict[str, tuple[Callable, Callable]]:
    """(pending, resolved) predicates, one pair per liveness goal, process and end.

    The first send is stronger than the spec's goal: the child's own close
    or death does not count as a resolution (it could always do that
    instead of sending).
    """
    out = {}
    for i, p in enumerate(k.Procs):
        for j, x in enumerate(k.Socks):
            if p != k.Root:
                out[f"first send of {p} on {x}"] = (
                    lambda s, i=i, j=j, p=p, x=x: p in m.holders(k, s, x) and s.calls[i][j] == 0,
                    lambda s, i=i, j=j, p=p: s.calls[i][j] > 0 and s.busy[j] != p)
        out[f"death of {p}"] = (
            lambda s, p=p: p in s.born - s.alive and m.in_monitor(k, s, p),
            lambda s, p=p: not m.in_monitor(k, s, p))
    for j, x in enumerate(k.Socks):
        out[f"unheld {x}"] = (lambda s, x=x: not m.holders(k, s, x),
                              lambda s, j=j: s.monClosed[j])
    return out


def test_whatever_is_pending_can_be_resolved(small) -> None:
    k, g = small
    for what, (pending, resolved) in _pending(k).items():
        can = can_reach(g, resolved)
        stuck = [s for s in g.levels if pending(s) and s not in can]
        assert not stuck, (what, stuck[:2])
        assert any(pending(s) for s in g.levels), what


def test_bad_resource_lets_a_childs_close_unlist_its_parent() -> None:
    """The consequence ResourceOwned stops at: the child's CLOSE on the parent's channel."""
    k = params_of(BAD_RESOURCE)
    g = graph_of(k)
    lost = [(s, lb, t) for s, lb, t in g.edges
            if "MonitorKnowsHolders" in m.invariants(k, t)
            and "MonitorKnowsHolders" not in m.invariants(k, s)]
    assert lost
    assert {lb.name for _, lb, _ in lost} == {"Close"}
    for _, lb, t in lost:
        closer = lb.params[0]
        assert closer != k.Root and t.res[k.proc(closer)] == k.Root
        assert k.Root in m.holders(k, t, k.Socks[0]) and k.Root not in t.known[0]


# --------------------------------------------------------------------------
# Agreement with TLC


def _tlc(tmp_path: Path, name: str, *, invariants: bool, **kwargs):
    from spec.tlc import run_tlc

    cfg = reachability_copy(name, tmp_path, invariants=invariants)
    return run_tlc(tmp_path, "MCFork", cfg, timeout=TLC_TIMEOUT, **kwargs)


@needs_tlc
def test_small_config_matches_tlc_state_for_state(small, tmp_path: Path) -> None:
    """Counts, depth, and the whole labelled state graph."""
    from spec.tracecheck import read_dot

    k, g = small
    res = _tlc(tmp_path, SMALL, invariants=False, workers=1, dump_dot=tmp_path / "g.dot")
    assert res.ok, res.report()
    assert (res.distinct_states, res.diameter) == (g.distinct, g.depth)

    states, initial, edges = read_dot(tmp_path / "g.dot")
    model = {node: m.from_tla_state(k, values) for node, values in states.items()}
    assert {model[n] for n in initial} == set(m.init_states(k))
    tlc_edges = {(model[a], name, model[b]) for a, name, b in edges}
    model_edges = {(s, lb.name, t) for s, lb, t in g.edges}
    assert tlc_edges - model_edges == set()
    assert model_edges - tlc_edges == set()


@needs_tlc
@pytest.mark.parametrize("name", [BAD_COUNT, BAD_RESOURCE, BAD_TOKEN])
def test_bad_config_matches_tlc(name: str, tmp_path: Path) -> None:
    g = graph_of(params_of(name))
    res = _tlc(tmp_path, name, invariants=False, workers=1, deadlock=False)
    assert res.ok, res.report()
    assert (res.distinct_states, res.diameter) == (g.distinct, g.depth)


def _first_violations(k: m.Params) -> tuple[int, set[m.State]]:
    """The BFS level of the shallowest states that violate an invariant, and those states."""
    level, frontier, seen = 0, set(m.init_states(k)), set(m.init_states(k))
    while frontier:
        bad = {s for s in frontier if m.invariants(k, s)}
        if bad:
            return level, bad
        nxt = {t for s in frontier for _, t in m.next_states(k, s)} - seen
        seen |= nxt
        frontier, level = nxt, level + 1
    raise AssertionError("no state violates an invariant")


@needs_tlc
def test_tlc_finds_the_shortest_violation_the_model_finds() -> None:
    """With one worker TLC's search is breadth first: its trace is a shortest one."""
    from spec.configs import by_name

    for name in (BAD_COUNT, BAD_RESOURCE, BAD_TOKEN):
        k = params_of(name)
        level, bad = _first_violations(k)
        res = by_name(name).run(workers=1, timeout=TLC_TIMEOUT)
        assert res.kinds == ["invariant"], res.report()
        end = m.from_tla_state(k, res.counterexample[-1].variables)
        assert res.violations[0].name in m.invariants(k, end)
        assert len(res.counterexample) - 1 == level and end in bad, name


# --------------------------------------------------------------------------
# Trace validation: what a driver of the implementation will do


def walk(k: m.Params, rng: random.Random, steps: int) -> list[Event]:
    """A random behaviour of the model, logged as a driver logs the real one."""
    return model_walk(m, k, rng, steps)


def check(k: m.Params, traces: list[list[Event]]):
    return check_traces(SPEC_DIR, "Fork", k.constants(), traces,
                        invariants=list(m.INVARIANTS), timeout=TLC_TIMEOUT)


@needs_tlc
@pytest.mark.slow
def test_model_traces_pass_and_corrupted_ones_fail() -> None:
    k = WALK
    rng = random.Random(4)
    traces = [walk(k, rng, 60) for _ in range(40)]
    assert sum(map(len, traces)) > 40 * 30            # long enough to mean something
    assert sum(e.action == "Fork" for tr in traces for e in tr) > 40
    res = check(k, traces)
    assert res.ok, str(res.failure)
    assert res.traces == 40 and res.events == sum(map(len, traces))

    # One event of one trace logs a Fork whose child got a different table.
    t = next(i for i, tr in enumerate(traces)
             if any(e.action == "Fork" and any(v != m.FREE for v in
                                                e.state["fdt"][e.params[1]].values())
                    for e in tr))
    n = next(i for i, e in enumerate(traces[t]) if e.action == "Fork"
             and any(v != m.FREE for v in e.state["fdt"][e.params[1]].values()))
    e = traces[t][n]
    child = e.params[1]
    fdt = dict(e.state["fdt"])
    fdt[child] = {f: m.FREE for f in fdt[child]}
    bad = [*traces[t][:n], Event(e.action, e.params, {**e.state, "fdt": fdt}),
           *traces[t][n + 1:]]
    res = check(k, [*traces[:t], bad, *traces[t + 1:]])
    assert not res.ok and res.failure is not None
    assert (res.failure.trace, res.failure.step) == (t, n), str(res.failure)
    assert "fdt" in res.failure.diff, str(res.failure)


@needs_tlc
def test_trace_of_the_bad_count_variant_is_rejected_at_the_early_close() -> None:
    """A driver's log of a library without the hold pipe fails the correct spec."""
    good = K
    bad = m.Params(**{**BASE, "CountHolders": False})
    s = m.init_states(bad)[0]
    steps = [("Fork", "p1", "p2"), ("CreateResource", "p2"), ("Register", "p2"),
             ("Close", "p1", 0), ("Ask", "p2", "s1")]
    events = [Event("Init", (), m.to_tla_state(bad, s))]
    for name, *params in steps:
        s = m.step(bad, s, m.Label(name, tuple(params)))
        events.append(Event(name, tuple(params), m.to_tla_state(bad, s)))
    res = check(good, [events])
    assert not res.ok and res.failure is not None
    assert res.failure.step == 4 and res.failure.action == "Close", str(res.failure)
    assert set(res.failure.diff) == {"eof"}, str(res.failure)
