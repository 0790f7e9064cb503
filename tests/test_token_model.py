r"""The Python model spec/token.py agrees with spec/tla/TokenSharing.tla.

The constants come from the TLC configs themselves (spec.token.constants_of,
which also resolves the ProcOf substitution), so the model and TLC are
always checked on the same instance.  TLC runs with one worker where depths
are compared (see tests/test_ring_model.py), on a copy of the config without
the temporal properties (they do not change the state graph) and, for the
bad variants, without the invariants TLC would stop at.

Traces made of the model's actions, as a driver of the real implementation
logs them, must pass spec.tracecheck against the spec; a corrupted one, and
one walked by a known-bad variant of the model, must be rejected at the
exact step.

Liveness is TLC's to check; here the model checks its necessary condition:
from every reachable state where something is pending (a queued thread, an
outstanding TAKE, an unnoticed death), a state where it is resolved is
reachable.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import pytest

from spec import token as m
from spec.statespace import StateGraph, can_reach, explore
from spec.tracecheck import Event, check_traces
from tests.gates import needs_tlc
from tests.tlc_checks import invariant_verdicts, model_walk, reachability_copy

SPEC_DIR = Path(__file__).resolve().parent.parent / "spec" / "tla"
SMALL = "MCTokenSharingSmall"
BAD_BUSY, BAD_RECLAIM = "MCTokenSharingBadBusy", "MCTokenSharingBadReclaim"
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


def test_constants_resolve_the_procof_substitution() -> None:
    consts = m.constants_of(SPEC_DIR / f"{SMALL}.cfg")
    assert set(consts) == {"Procs", "Threads", "ProcOf", "Tokens", "Creator", "CallLen",
                           "Calls", "Cap", "Mortal", "WaitBusy", "ReRecall", "KeepQueue"}
    assert set(consts["ProcOf"]) == set(consts["Threads"])
    k = params_of("MCTokenSharing")
    assert len(k.Procs) == 3 and k.Tokens == ("send", "recv")
    assert params_of(BAD_BUSY).WaitBusy is False
    assert params_of(BAD_RECLAIM).KeepQueue is False
    assert params_of("MCTokenSharingBadRecall").ReRecall is False


BASE = {"Procs": {"p1", "p2"}, "Threads": {"t1", "t2", "t3"},
        "ProcOf": {"t1": "p1", "t2": "p1", "t3": "p2"}, "Tokens": {"send", "recv"},
        "Creator": "p1", "CallLen": 2, "Calls": 1, "Cap": 1, "Mortal": {"p1", "p2"}}


@pytest.mark.parametrize(
    "change",
    [
        {"Procs": set()},
        {"Procs": "p1"},
        {"Threads": {"p1"}},                         # shares a name with Procs
        {"Threads": {"t1", "t2", "Agent"}},          # a name the spec reserves
        {"ProcOf": {"t1": "p1", "t2": "p1"}},        # t3 missing
        {"ProcOf": {"t1": "p1", "t2": "p9", "t3": "p2"}},
        {"Tokens": set()},
        {"Tokens": {"send", "both"}},
        {"Creator": "p3"},
        {"CallLen": 0},
        {"Calls": -1},
        {"Cap": 0},
        {"Cap": 1.0},
        {"Mortal": {"p3"}},
        {"Mortal": "p1"},
        {"WaitBusy": None},
    ],
)
def test_params_enforce_the_assume(change: dict[str, object]) -> None:
    m.Params(**BASE)  # the base values are fine
    with pytest.raises(ValueError):
        m.Params(**{**BASE, **change})


def test_params_constants_round_trip() -> None:
    k = params_of(SMALL)
    assert m.Params.from_constants(k.constants()) == k
    assert m.Params(**BASE).Tokens == ("send", "recv")     # the spec's order, whatever given


# --------------------------------------------------------------------------
# Single actions


K = m.Params(**{**BASE, "Calls": 2, "Procs": {"p1", "p2", "p3"}, "Mortal": {"p1", "p2", "p3"},
                "Threads": {"t1", "t2", "t3", "t4"},
                "ProcOf": {"t1": "p1", "t2": "p1", "t3": "p2", "t4": "p3"}})
K_FIELDS = {f: getattr(K, f) for f in K.__dataclass_fields__}


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


def word_of(k: m.Params, s: m.State, tok: str = "send") -> m.Word:
    """The word of token *tok* in *s*."""
    return s.word[k.token(tok)]


def test_first_call_takes_the_slow_path_then_the_fast_path() -> None:
    s = m.init_states(K)[0]
    assert m.Enter(K, s, "t1", "send") is None           # parked: the CAS fails
    s = run(K, ("Queue", "t1", "send"), ("Take", "t1", "send"))
    assert word_of(K, s) == m.Word("t1", True, False)
    s = run(K, ("Write", "t1"), start=s)
    assert s.tx == (("t1", 1, 1),) and m.Write(K, s, "t1") is None   # the ring is full
    assert m.Exit(K, s, "t1", "send") is None            # the call is not over
    s = run(K, ("PeerRead",), ("Write", "t1"), ("Exit", "t1", "send"), start=s)
    assert word_of(K, s) == m.Word("t1", False, False) and s.pc[0] == "idle"
    assert m.Queue(K, s, "t1", "send") is None           # the fast path would succeed
    s = run(K, ("Enter", "t1", "send"), start=s)
    assert word_of(K, s).busy and s.calls[0] == 2 and s.lq == m.init_states(K)[0].lq


def test_takeover_within_a_process_waits_for_the_call() -> None:
    s = run(K, ("Queue", "t1", "send"), ("Take", "t1", "send"), ("Queue", "t2", "send"))
    assert m.Take(K, s, "t2", "send") is None            # t1 is busy
    s = run(K, ("Flag", "p1", "send"), start=s)
    assert word_of(K, s) == m.Word("t1", True, True)
    assert m.Flag(K, s, "p1", "send") is None
    s = run(K, ("Write", "t1"), ("PeerRead",), ("Write", "t1"), ("Exit", "t1", "send"),
            start=s)
    assert word_of(K, s) == m.Word("t1", False, True)          # want stays: t1 cannot Enter
    assert m.Enter(K, s, "t1", "send") is None
    s = run(K, ("Queue", "t1", "send"), ("Take", "t2", "send"), start=s)
    # A thread behind the taker gets no want with the word (it spins for its
    # turn); it Flags for itself while t2 is busy.
    assert word_of(K, s) == m.Word("t2", True, False)
    assert s.lq[K.proc("p1")][0] == ("t1",)
    s = run(K, ("Flag", "p1", "send"), start=s)
    assert word_of(K, s) == m.Word("t2", True, True)


def test_take_sets_want_when_the_agent_waits_behind() -> None:
    """The agent's release must be run by the taker's Exit: Take raises want for it."""
    s = run(K, ("Queue", "t1", "send"), ("Take", "t1", "send"), ("Queue", "t2", "send"),
            ("Queue", "t3", "send"), ("Ask", "p2", "send"), ("MonTake", "p2", "send"),
            ("Recall", "p1", "send"))
    assert s.lq[K.proc("p1")][0] == ("t2", m.AGENT)
    s = run(K, ("Write", "t1"), ("PeerRead",), ("Write", "t1"), ("Exit", "t1", "send"),
            ("Take", "t2", "send"), start=s)
    assert word_of(K, s) == m.Word("t2", True, True)


def test_takeover_across_processes_through_the_monitor() -> None:
    s = run(K, ("Queue", "t1", "send"), ("Take", "t1", "send"), ("Queue", "t3", "send"),
            ("Ask", "p2", "send"))
    assert m.Ask(K, s, "p2", "send") is None             # asked once
    s = run(K, ("MonTake", "p2", "send"), start=s)
    assert s.queue[0] == ("p2",) and s.recalled[0]
    assert s.toProc[K.proc("p1")] == (m.Msg("RECALL", "send"),)
    s = run(K, ("Recall", "p1", "send"), start=s)
    assert s.lq[K.proc("p1")][0] == (m.AGENT,)
    assert m.Release(K, s, "p1", "send") is None         # t1 is in its call
    s = run(K, ("Write", "t1"), ("PeerRead",), ("Write", "t1"), ("Exit", "t1", "send"),
            ("Release", "p1", "send"), start=s)
    assert word_of(K, s) == m.PARKED and not s.pheld[K.proc("p1")][0]
    s = run(K, ("MonRelease", "p1", "send"), start=s)
    assert s.holder[0] == "p2" and s.queue[0] == () and not s.recalled[0]
    assert m.Take(K, s, "t3", "send") is None            # not granted yet
    s = run(K, ("Grant", "p2", "send"), ("Take", "t3", "send"), start=s)
    assert word_of(K, s) == m.Word("t3", True, False)


def test_the_new_holder_is_recalled_at_once_while_others_wait() -> None:
    s = run(K, ("Queue", "t3", "send"), ("Ask", "p2", "send"), ("Queue", "t4", "send"),
            ("Ask", "p3", "send"), ("MonTake", "p2", "send"), ("MonTake", "p3", "send"),
            ("Recall", "p1", "send"), ("Release", "p1", "send"),
            ("MonRelease", "p1", "send"))
    assert s.holder[0] == "p2" and s.queue[0] == ("p3",) and s.recalled[0]
    assert s.toProc[K.proc("p2")] == (m.Msg("GRANT", "send"), m.Msg("RECALL", "send"))
    # t3, queued before the RECALL, goes first: FIFO with the agent.
    s = run(K, ("Grant", "p2", "send"), ("Recall", "p2", "send"), start=s)
    assert s.lq[K.proc("p2")][0] == ("t3", m.AGENT)
    assert m.Release(K, s, "p2", "send") is None
    s = run(K, ("Take", "t3", "send"), start=s)
    assert word_of(K, s) == m.Word("t3", True, True)


def test_death_cuts_a_send_and_reclaim_passes_the_token_on() -> None:
    s = run(K, ("Queue", "t1", "send"), ("Take", "t1", "send"), ("Write", "t1"),
            ("Queue", "t3", "send"), ("Ask", "p2", "send"), ("MonTake", "p2", "send"),
            ("Die", "p1"))
    assert s.pc[:2] == ("dead", "dead") and word_of(K, s).busy   # t1 died in its call
    assert m.Recall(K, s, "p1", "send") is None
    assert m.Reclaim(K, s, "p2") is None                 # p2 is alive
    s = run(K, ("Reclaim", "p1"), start=s)
    assert word_of(K, s) == m.PARKED and s.holder[0] == "p2" and s.reclaims[0][0] == 1
    assert s.toProc[K.proc("p1")] == () and s.toProc[K.proc("p2")] == (m.Msg("GRANT", "send"),)
    assert m.Reclaim(K, s, "p1") is None                 # exactly once
    s = run(K, ("Grant", "p2", "send"), ("Take", "t3", "send"), ("PeerRead",),
            ("Write", "t3"), start=s)
    # The cut call stays a prefix, and t3's call follows it whole.
    assert s.peerGot + s.tx == (("t1", 1, 1), ("t3", 1, 1))
    s = run(K, ("PeerRead",), ("Write", "t3"), ("Exit", "t3", "send"), start=s)
    assert s.peerGot + s.tx == (("t1", 1, 1), ("t3", 1, 1), ("t3", 1, 2))


def test_recv_calls_read_what_the_peer_wrote() -> None:
    s = run(K, ("Queue", "t1", "recv"))
    assert m.PeerWrite(K, m.init_states(K)[0]) is None   # nobody reads
    s = run(K, ("PeerWrite",), start=s)
    assert m.PeerWrite(K, s) is None                     # the ring is full
    s = run(K, ("Take", "t1", "recv"), ("Read", "t1"), ("Exit", "t1", "recv"),
            ("Queue", "t2", "recv"), ("Take", "t2", "recv"), ("PeerWrite",), ("Read", "t2"),
            start=s)
    assert s.rgot == (("t1", 1, 1), ("t2", 1, 2)) and s.rx == ()


def test_bad_variants_in_single_steps() -> None:
    def with_(**kw: object) -> m.Params:
        return m.Params(**{**BASE, "Calls": 2, **kw})

    # WaitBusy off: t2 takes the word from t1 in the middle of its call.
    k = with_(WaitBusy=False)
    s = run(k, ("Queue", "t1", "send"), ("Take", "t1", "send"), ("Write", "t1"),
            ("Queue", "t2", "send"))
    t = m.Take(k, s, "t2", "send")
    assert t is not None and "OnlyOwnerTouches" in m.invariants(k, t)
    assert m.Take(with_(), s, "t2", "send") is None
    # ReRecall off: the new holder gets its GRANT but no RECALL.
    k3 = m.Params(**{**K_FIELDS, "ReRecall": False})
    s = run(k3, ("Queue", "t3", "send"), ("Ask", "p2", "send"), ("Queue", "t4", "send"),
            ("Ask", "p3", "send"), ("MonTake", "p2", "send"), ("MonTake", "p3", "send"),
            ("Recall", "p1", "send"), ("Release", "p1", "send"))
    t = m.MonRelease(k3, s, "p1", "send")
    assert t.toProc[k3.proc("p2")] == (m.Msg("GRANT", "send"),) and not t.recalled[0]
    assert t.queue[0] == ("p3",)
    assert m.invariants(k3, t) == ["MonitorConsistent"]   # p3 waits, nobody is recalled
    # KeepQueue off: the reclaimed token's queue is forgotten.
    k = with_(KeepQueue=False)
    s = run(k, ("Queue", "t3", "send"), ("Ask", "p2", "send"), ("MonTake", "p2", "send"),
            ("Die", "p1"))
    t = m.Reclaim(k, s, "p1")
    assert t.holder[0] is None and t.queue[0] == ()
    assert m.invariants(k, t) == ["RequestsKept"]


def test_step_rejects_unknown_actions_names_and_arity() -> None:
    s = m.init_states(K)[0]
    with pytest.raises(ValueError, match="Enter"):
        m.step(K, s, m.Label("Steal"))
    with pytest.raises(ValueError, match="t9"):
        m.Enter(K, s, "t9", "send")
    with pytest.raises(ValueError, match="tokens|Tokens"):
        m.Queue(K, s, "t1", "both")
    with pytest.raises(ValueError, match="2 parameters"):
        m.step(K, s, m.Label("Take", ("t1",)))


# --------------------------------------------------------------------------
# Invariants and the property of steps


def test_invariants_and_stable_pending_hold_everywhere(small) -> None:
    k, g = small
    bad = [(s, m.invariants(k, s)) for s in g.levels if m.invariants(k, s)]
    assert not bad, bad[:3]
    bad_steps = [(s, lb, t) for s, lb, t in g.edges if m.step_violations(k, s, t)]
    assert not bad_steps, bad_steps[:3]
    assert g.deadlocks == []


def test_small_config_is_not_vacuous(small) -> None:
    k, g = small
    assert {lb.name for _, lb, _ in g.edges} == set(m.ACTIONS)
    states = g.levels
    # A send call written in two chunks with the peer reading in between.
    assert any(lb.name == "Write" and s.tx == () and s.prog[k.thread(lb.params[0])] == 1
               for s, lb, _ in g.edges)
    # A send call cut by a death, followed by another thread's call.
    assert any(len(s.peerGot + s.tx) > 1 and (s.peerGot + s.tx)[0][2] < k.CallLen
               for s in states)
    # Both tokens held by different processes at once; a GRANT after a reclaim.
    assert any(s.holder[0] != s.holder[1] and None not in s.holder for s in states)
    assert any(lb.name == "Reclaim" and any(t.toProc) for _, lb, t in g.edges)
    # The agent queued behind a thread of its own process.
    assert any(len(q) > 1 and q[-1] == m.AGENT for s in states for r in s.lq for q in r)


def test_each_invariant_can_fail() -> None:
    s = run(K, ("Queue", "t1", "send"), ("Take", "t1", "send"), ("Write", "t1"),
            ("Queue", "t3", "send"), ("Ask", "p2", "send"))
    p1, p2 = K.proc("p1"), K.proc("p2")
    broken = {
        "TypeOK": s._replace(calls=(3, 0, 0, 0)),
        "OneOwner": s._replace(word=(m.Word(None, True, False), s.word[1])),
        "OnlyOwnerTouches": s._replace(word=(s.word[0]._replace(owner="t2"), s.word[1])),
        "OneHolder": s._replace(pheld=m._set2(s.pheld, p2, 0, True)),
        "LocalQueues": s._replace(lq=m._set2(s.lq, p1, 0, ("t3",))),
        "MonitorConsistent": s._replace(queue=(("p2", "p2"), ())),
        "RequestsKept": s._replace(toMon=m._set(s.toMon, p2, ())),
        "SendCallsWhole": s._replace(tx=(("t1", 1, 2),)),
        "RecvInOrder": s._replace(rx=(2,)),
        "ReclaimedOnce": s._replace(reclaims=m._set2(s.reclaims, p1, 0, 1)),
    }
    assert set(broken) == set(m.INVARIANTS)
    for name, t in broken.items():
        assert name in m.invariants(K, t), name
    # Interleaved calls: another thread's byte inside t1's call.
    s2 = s._replace(peerGot=(("t1", 1, 1), ("t2", 1, 1)), tx=(("t1", 1, 2),))
    assert "SendCallsWhole" in m.invariants(K, s2)
    # A recv call's bytes split around another call's.
    r = s._replace(rgot=(("t1", 1, 1), ("t2", 1, 2), ("t1", 1, 3)))
    assert "RecvInOrder" in m.invariants(K, r)
    # A queued thread that vanishes from the queue, a request dropped.
    t = s._replace(pc=m._set(s.pc, K.thread("t3"), "idle"))
    assert m.step_violations(K, s, t) == ["StablePending"]


def test_tla_state_round_trip(small) -> None:
    k, g = small
    for s in list(g.levels)[::7]:
        assert m.from_tla_state(k, m.to_tla_state(k, s)) == s


def _perturbed(k: m.Params, states: list[m.State], rng: random.Random) -> list[m.State]:
    """States near reachable ones, one variable changed: most break some invariant."""
    threads, procs = k.Threads, k.Procs

    def one(s: m.State) -> m.State:
        i, j = rng.randrange(len(threads)), rng.randrange(len(k.Tokens))
        p = rng.randrange(len(procs))
        w = s.word[j]
        choices = [
            lambda: s._replace(word=m._set(s.word, j, w._replace(busy=not w.busy))),
            lambda: s._replace(word=m._set(s.word, j, w._replace(owner=rng.choice(
                (None, *threads))))),
            # (a thread in no call is not put in one: cur would name no token)
            lambda: s._replace(pc=m._set(s.pc, i, rng.choice(
                m.PCS if s.cur[i] != "none" else ("idle", "done", "dead")))),
            lambda: s._replace(prog=m._set(s.prog, i, rng.randrange(k.CallLen + 1))),
            lambda: s._replace(calls=m._set(s.calls, i, rng.randrange(k.Calls + 1))),
            lambda: s._replace(lq=m._set2(s.lq, p, j, s.lq[p][j] + (rng.choice(
                (m.AGENT, *threads)),))),
            lambda: s._replace(pheld=m._set2(s.pheld, p, j, not s.pheld[p][j])),
            lambda: s._replace(asked=m._set2(s.asked, p, j, not s.asked[p][j])),
            lambda: s._replace(holder=m._set(s.holder, j, rng.choice((None, *procs)))),
            lambda: s._replace(queue=m._set(s.queue, j, s.queue[j] + (procs[p],))),
            lambda: s._replace(recalled=m._set(s.recalled, j, not s.recalled[j])),
            lambda: s._replace(alive=m._set(s.alive, p, not s.alive[p])),
            lambda: s._replace(cleaned=m._set(s.cleaned, p, not s.cleaned[p])),
            lambda: s._replace(reclaims=m._set2(s.reclaims, p, j, s.reclaims[p][j] + 1)),
            lambda: s._replace(toMon=m._set(s.toMon, p, s.toMon[p] + (m.Msg(
                rng.choice(m.OPS), k.Tokens[j]),))),
            lambda: s._replace(toProc=m._set(s.toProc, p, ())),
            lambda: s._replace(tx=s.tx[1:] + s.tx[:1]),
            lambda: s._replace(peerGot=s.peerGot + ((threads[i], 1, rng.randrange(
                1, k.CallLen + 1)),)),
            lambda: s._replace(rgot=s.rgot + ((threads[i], 1, len(s.rgot) + 2),)),
            lambda: s._replace(rgot=s.rgot[1:] + s.rgot[:1]),
            lambda: s._replace(rx=s.rx[1:]),
        ]
        return rng.choice(choices)()

    return [one(s) for s in states]


@needs_tlc
def test_invariant_predicates_agree_with_tlc(small, tmp_path: Path) -> None:
    """TLC evaluates the spec's invariants on states the model judges: same verdicts.

    The states are reachable ones with one variable changed, so most break
    some invariant: the Python predicates must fail exactly where the TLA+
    ones do, not only agree that all hold on the reachable states.
    """

    k, g = small
    rng = random.Random(7)
    states = _perturbed(k, rng.sample(sorted(g.levels, key=repr), 250), rng)
    names = list(m.INVARIANTS)
    verdicts = invariant_verdicts(
        tmp_path, "TokenSharing", k.constants(), m.State._fields,
        [m.to_tla_state(k, s) for s in states], names, TLC_TIMEOUT)
    for n, s in enumerate(states, 1):
        assert m.invariants(k, s) == verdicts[n], (n, s)
    assert sum(1 for v in verdicts.values() if v) >= 100     # mostly broken states
    assert {name for v in verdicts.values() for name in v} >= set(names) - {"TypeOK"}


# --------------------------------------------------------------------------
# Liveness, its necessary condition: what is pending can always be resolved


def _pending(k: m.Params) -> dict[str, tuple[Callable, Callable]]:
    """(pending, resolved) predicates, one pair per liveness goal and thread, process, token.

    Stronger than the spec's goals: the waiting party's own death does not
    count as a resolution (it could always die instead of being served).
    """
    out = {}
    for i, t in enumerate(k.Threads):
        p = k.proc(k.ProcOf[i])
        out[f"queued {t}"] = (lambda s, i=i, p=p: s.pc[i] == "queued" and s.alive[p],
                              lambda s, i=i: s.pc[i] == "op")
    for i, p in enumerate(k.Procs):
        for j, tok in enumerate(k.Tokens):
            out[f"TAKE {tok} of {p}"] = (
                lambda s, i=i, j=j: s.asked[i][j] and s.alive[i],
                lambda s, i=i, j=j: s.pheld[i][j])
        out[f"death of {p}"] = (lambda s, i=i: not s.alive[i] and not s.cleaned[i],
                                lambda s, i=i: s.cleaned[i])
    return out


def test_whatever_is_pending_can_be_resolved(small) -> None:
    k, g = small
    for what, (pending, resolved) in _pending(k).items():
        can = can_reach(g, resolved)
        stuck = [s for s in g.levels if pending(s) and s not in can]
        assert not stuck, (what, stuck[:2])


def test_bad_reclaim_strands_a_request() -> None:
    k = params_of(BAD_RECLAIM)
    g = graph_of(k)
    pending = _pending(k)
    stranded = []
    for i, p in enumerate(k.Procs):
        for j, tok in enumerate(k.Tokens):
            waits, granted = pending[f"TAKE {tok} of {p}"]
            can = can_reach(g, granted)
            stranded += [(s, i, j) for s in g.levels if waits(s) and s not in can]
    assert stranded
    for s, _, j in stranded:
        # The holder is dead (its Reclaim will drop the queue) or gone.
        h = s.holder[j]
        assert h is None or not s.alive[k.proc(h)], s
    assert any("RequestsKept" in m.invariants(k, s) for s, _, _ in stranded)


# --------------------------------------------------------------------------
# Agreement with TLC


def _tlc(tmp_path: Path, name: str, *, invariants: bool, **kwargs):
    from spec.tlc import run_tlc

    cfg = reachability_copy(name, tmp_path, invariants=invariants)
    return run_tlc(tmp_path, "MCTokenSharing", cfg, timeout=TLC_TIMEOUT, **kwargs)


@needs_tlc
@pytest.mark.slow
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
@pytest.mark.parametrize("name", [pytest.param(BAD_BUSY, marks=pytest.mark.slow), BAD_RECLAIM])
def test_bad_config_matches_tlc(name: str, tmp_path: Path) -> None:
    g = graph_of(params_of(name))
    # Without the deadlock check: a request lost (BadReclaim) is also a deadlock.
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

    for name in (BAD_BUSY, BAD_RECLAIM):
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
    return check_traces(SPEC_DIR, "TokenSharing", k.constants(), traces,
                        invariants=list(m.INVARIANTS), timeout=TLC_TIMEOUT)


@needs_tlc
@pytest.mark.slow
def test_model_traces_pass_and_corrupted_ones_fail() -> None:
    k = m.Params(**{**K_FIELDS, "Mortal": {"p2"}})   # deaths, but not too soon
    rng = random.Random(4)
    traces = [walk(k, rng, 80) for _ in range(40)]
    assert sum(map(len, traces)) > 40 * 30            # long enough to mean something
    res = check(k, traces)
    assert res.ok, str(res.failure)
    assert res.traces == 40 and res.events == sum(map(len, traces))

    # One event of one trace logs a Take that leaves the word not busy.
    t = next(i for i, tr in enumerate(traces) if any(e.action == "Take" for e in tr))
    n = next(i for i, e in enumerate(traces[t]) if e.action == "Take")
    e = traces[t][n]
    tok = e.params[1]
    word = dict(e.state["word"])
    word[tok] = {**word[tok], "busy": False}
    bad = [*traces[t][:n], Event(e.action, e.params, {**e.state, "word": word}),
           *traces[t][n + 1:]]
    res = check(k, [*traces[:t], bad, *traces[t + 1:]])
    assert not res.ok and res.failure is not None
    assert (res.failure.trace, res.failure.step) == (t, n), str(res.failure)
    assert "word" in res.failure.diff, str(res.failure)


@needs_tlc
@pytest.mark.slow
def test_trace_of_the_bad_busy_variant_is_rejected_at_the_bad_take() -> None:
    """A driver's log of an implementation that ignores busy fails the correct spec."""
    good = m.Params(**K_FIELDS)
    bad = m.Params(**{**K_FIELDS, "WaitBusy": False})
    s = m.init_states(bad)[0]
    steps = [("Queue", "t1", "send"), ("Take", "t1", "send"), ("Write", "t1"),
             ("Queue", "t2", "send"), ("Take", "t2", "send"), ("PeerRead",),
             ("Write", "t2")]
    events = [Event("Init", (), m.to_tla_state(bad, s))]
    for name, *params in steps:
        s = m.step(bad, s, m.Label(name, tuple(params)))
        events.append(Event(name, tuple(params), m.to_tla_state(bad, s)))
    res = check(good, [events])
    assert not res.ok and res.failure is not None
    assert res.failure.step == 5 and res.failure.action == "Take", str(res.failure)
    assert res.failure.successors == []                  # Take is not enabled there
