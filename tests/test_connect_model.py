r"""The Python model spec/connect.py agrees with spec/tla/Connect.tla.

The constants come from the TLC configs themselves (spec.connect.constants_of,
which also resolves the ACL substitutions), so the model and TLC can never be
checked against different instances.  TLC runs with one worker where depths
are compared (see tests/test_ring_model.py), on a copy of the config without
the temporal properties (they do not change the state graph) and, for the
bad variants, without the invariants that TLC would stop at.

Liveness is TLC's to check; here the model checks its necessary condition:
from every reachable state where something is pending (a request, a queued
conn, a dead process not yet cleaned up), a state where it is resolved is
reachable.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from spec import connect as m
from spec.statespace import StateGraph, can_reach, explore
from tests.gates import needs_tlc
from tests.tlc_checks import reachability_copy

SPEC_DIR = Path(__file__).resolve().parent.parent / "spec" / "tla"
SMALL, BAD, BAD_ACL = "MCConnectSmall", "MCConnectBad", "MCConnectBadAcl"
TLC_TIMEOUT = 300


def params_of(name: str) -> m.Params:
    """The model's Params for one of the spec's configs."""
    return m.Params.from_constants(m.constants_of(SPEC_DIR / f"{name}.cfg"))


def graph_of(k: m.Params) -> StateGraph:
    return explore(m.init_states(k), lambda s: m.next_states(k, s), keep_edges=True,
                   max_states=100_000)


@pytest.fixture(scope="module")
def graphs() -> dict[str, tuple[m.Params, StateGraph]]:
    out = {}
    for name in (SMALL, BAD, BAD_ACL):
        k = params_of(name)
        out[name] = (k, graph_of(k))
    return out


# --------------------------------------------------------------------------
# Constants


def test_constants_resolve_the_acl_substitutions() -> None:
    consts = m.constants_of(SPEC_DIR / "MCConnectSmall.cfg")
    assert set(consts) == {"Procs", "Addrs", "Backlog", "MaxConns", "Acls", "InitAcl",
                           "None", "CleanupQueues", "CheckAclFirst"}
    assert consts["InitAcl"] in consts["Acls"] and len(consts["Acls"]) == 2
    assert ("listen", "p1", "a1") in consts["InitAcl"]
    k = params_of("MCConnect")
    assert (len(k.Procs), len(k.Addrs), len(k.Acls)) == (3, 2, 2)
    assert params_of(BAD).CleanupQueues is False and params_of(BAD).CheckAclFirst is True
    assert params_of(BAD_ACL).CheckAclFirst is False and params_of(BAD_ACL).CleanupQueues


def test_constants_of_names_a_missing_definition(tmp_path: Path) -> None:
    (tmp_path / "MCConnect.tla").write_text("---- MODULE MCConnect ----\nX == {}\n====\n")
    (tmp_path / "c.cfg").write_text("CONSTANTS\n    Acls <- Nowhere\n")
    with pytest.raises(ValueError, match="Nowhere"):
        m.constants_of(tmp_path / "c.cfg")


A = frozenset({("listen", "p1", "a1"), ("connect", "p2", "a1")})
B = frozenset({("connect", "p1", "a1")})
BASE = {"Procs": {"p1", "p2"}, "Addrs": {"a1"}, "Backlog": 1, "MaxConns": 2,
        "Acls": {A, B}, "InitAcl": A}


@pytest.mark.parametrize(
    "change",
    [
        {"Procs": set()},
        {"Procs": "p1"},
        {"Addrs": {"p1"}},                  # shares a name with Procs
        {"Backlog": 0},
        {"Backlog": 1.0},
        {"MaxConns": -1},
        {"InitAcl": frozenset({("connect", "p1", "a1"), ("listen", "p2", "a1")})},
        {"Acls": {A, frozenset({("send", "p1", "a1")})}},
        {"Acls": {A, frozenset({("listen", "p3", "a1")})}},
        {"CleanupQueues": 1},
        {"CheckAclFirst": None},
    ],
)
def test_params_enforce_the_assume(change: dict[str, object]) -> None:
    m.Params(**BASE)  # the base values are fine
    with pytest.raises(ValueError):
        m.Params(**{**BASE, **change})


# --------------------------------------------------------------------------
# Single actions


K = m.Params(**BASE)


def run(k: m.Params, *steps: tuple, start: m.State | None = None) -> m.State:
    """Apply the actions (name, *params) in order; each must be enabled."""
    s = start if start is not None else m.init_states(k)[0]
    for name, *params in steps:
        t = m.step(k, s, m.Label(name, tuple(params)))
        assert t is not None, f"{name}{tuple(params)} disabled in {s}"
        assert m.invariants(k, t) == [], (name, t)
        assert m.step_violations(k, s, t) == [], (name, s, t)
        s = t
    return s


def test_listen_needs_the_acl_and_a_free_address() -> None:
    s = m.init_states(K)[0]
    assert m.Listen(K, s, "p2", "a1") is None
    assert m.ListenDenied(K, s, "p2", "a1") is s          # stutters: nothing changes
    s = run(K, ("Listen", "p1", "a1"))
    assert s.listeners == (m.Listener("p1", ()),)
    assert m.Listen(K, s, "p1", "a1") is None            # EADDRINUSE: not a step
    assert m.ListenDenied(K, s, "p2", "a1") is None
    assert m.Unlisten(K, s, "p2", "a1") is None          # only the owner
    assert run(K, ("Unlisten", "p1", "a1"), start=s).listeners == (None,)


def test_handle_connect_checks_the_acl_first() -> None:
    s = run(K, ("Listen", "p1", "a1"), ("Connect", "p1", "a1"))
    assert m.Connect(K, s, "p1", "a1") is None           # one request at a time
    s = run(K, ("HandleConnect", "p1"), start=s)
    assert s.reply[K.proc("p1")] == m.Reply("refused")   # a listener, but p1 is denied
    assert s.conns == (None, None) and s.nextId == 1
    s = run(K, ("Unlisten", "p1", "a1"), ("Reload", B), ("Connect", "p2", "a1"),
            ("HandleConnect", "p2"), start=s)
    assert s.reply[K.proc("p2")] == m.Reply("refused")   # no listener: still refused


def test_ring_connect_accept_and_close() -> None:
    s = run(K, ("Listen", "p1", "a1"), ("Connect", "p2", "a1"), ("HandleConnect", "p2"))
    assert s.reply[K.proc("p2")] == m.Reply("ring", 1) and s.nextId == 2
    assert s.conns[0] == m.Conn("p2", "p1", "a1", "open", "queued")
    assert s.listeners[0].queue == (1,)
    # The backlog (1) is full: the next connect falls back to the kernel.
    t = run(K, ("Connect", "p2", "a1"), ("HandleConnect", "p2"), start=s)
    assert t.reply[K.proc("p2")] == m.Reply("kernel") and t.nextId == 2
    s = run(K, ("Accept", "p1", "a1"), start=s)
    assert s.conns[0].sstate == "open" and s.listeners[0].queue == ()
    assert m.Accept(K, s, "p1", "a1") is None
    assert m.Close(K, s, "p1", 1, "client") is None      # p1 holds the server end
    s = run(K, ("Close", "p1", 1, "server"), start=s)
    assert s.conns[0].sstate == "closed"
    s = run(K, ("Close", "p2", 1, "client"), start=s)
    assert s.conns == (None, None)                       # closed at both ends: gone


def test_kernel_when_the_owner_is_dead() -> None:
    s = run(K, ("Listen", "p1", "a1"), ("Die", "p1"), ("Connect", "p2", "a1"),
            ("HandleConnect", "p2"))
    assert s.reply[K.proc("p2")] == m.Reply("kernel") and s.conns == (None, None)


def test_accept_is_first_in_first_out_and_unlisten_resets() -> None:
    k = m.Params(**{**BASE, "Procs": {"p1", "p2", "p3"}, "Backlog": 2,
                    "Acls": {A | {("connect", "p3", "a1")}},
                    "InitAcl": A | {("connect", "p3", "a1")}})
    s = run(k, ("Listen", "p1", "a1"), ("Connect", "p3", "a1"), ("Connect", "p2", "a1"),
            ("HandleConnect", "p2"), ("HandleConnect", "p3"))
    assert s.listeners[0].queue == (1, 2)
    assert (s.conns[0].client, s.conns[1].client) == ("p2", "p3")
    t = run(k, ("Accept", "p1", "a1"), start=s)
    assert t.conns[0].sstate == "open" and t.conns[1].sstate == "queued"
    # The client of conn 2 closes before the accept; then the listener goes.
    t = run(k, ("Close", "p3", 2, "client"), ("Unlisten", "p1", "a1"), start=t)
    assert t.conns == (m.Conn("p2", "p1", "a1", "open", "open"), None)


def test_self_connection_closes_either_end_first() -> None:
    k = m.Params(**{**BASE, "Acls": {A | B}, "InitAcl": A | B})
    s = run(k, ("Listen", "p1", "a1"), ("Connect", "p1", "a1"), ("HandleConnect", "p1"),
            ("Accept", "p1", "a1"))
    assert s.conns[0] == m.Conn("p1", "p1", "a1", "open", "open")
    ends = {label.params[2]: t for label, t in m.next_states(k, s) if label.name == "Close"}
    assert ends["client"].conns[0].cstate == "closed"
    assert ends["server"].conns[0].sstate == "closed"
    with pytest.raises(ValueError, match="end"):
        m.Close(k, s, "p1", 1, "both")


def test_cleanup_after_death() -> None:
    s = run(K, ("Listen", "p1", "a1"), ("Connect", "p2", "a1"), ("HandleConnect", "p2"),
            ("Connect", "p2", "a1"), ("Die", "p2"))
    # The monitor may answer a request of a process that died unnoticed.
    assert m.HandleConnect(K, s, "p2") is not None
    assert m.Cleanup(K, s, "p1") is None                 # p1 is alive
    assert m.Connect(K, s, "p2", "a1") is None
    s = run(K, ("Cleanup", "p2"), start=s)
    assert s.cleaned[1] and s.req[1] is None and s.reply[1] == m.NO_REPLY
    assert s.conns[0] == m.Conn("p2", "p1", "a1", "closed", "queued")
    s = run(K, ("Die", "p1"), ("Cleanup", "p1"), start=s)
    assert s.listeners == (None,) and s.conns == (None, None)  # reset, then dropped
    assert m.Done(K, s) is s
    assert m.Cleanup(K, s, "p1") is None


def test_reload_and_done() -> None:
    s = m.init_states(K)[0]
    assert m.Reload(K, s, A) is None                     # already in force
    assert m.Reload(K, s, B).acl == B
    with pytest.raises(ValueError):
        m.Reload(K, s, frozenset())
    assert m.Done(K, s) is None


def test_bad_variants_in_single_steps() -> None:
    forget = m.Params(**{**BASE, "CleanupQueues": False})
    s = run(forget, ("Listen", "p1", "a1"), ("Connect", "p2", "a1"), ("HandleConnect", "p2"))
    t = m.Unlisten(forget, s, "p1", "a1")
    assert t.conns[0].sstate == "queued" and t.listeners == (None,)
    assert m.invariants(forget, t) == ["AcceptedMatchesOneConnect"]
    unchecked = m.Params(**{**BASE, "CheckAclFirst": False})
    s = run(unchecked, ("Connect", "p1", "a1"))
    t = m.HandleConnect(unchecked, s, "p1")
    assert t.reply[0] == m.Reply("kernel")
    assert m.step_violations(unchecked, s, t) == ["NoBypass"]


def test_step_rejects_unknown_actions_and_names() -> None:
    s = m.init_states(K)[0]
    with pytest.raises(ValueError, match="Listen"):
        m.step(K, s, m.Label("Bind"))
    with pytest.raises(ValueError, match="p9"):
        m.Die(K, s, "p9")
    with pytest.raises(ValueError, match="MaxConns"):
        m.Close(K, s, "p1", 3, "client")


# --------------------------------------------------------------------------
# Invariants and properties of steps


def test_invariants_and_step_properties_hold_everywhere(graphs) -> None:
    k, g = graphs[SMALL]
    bad = [(s, m.invariants(k, s)) for s in g.levels if m.invariants(k, s)]
    assert not bad, bad[:3]
    bad_steps = [(s, lb, t) for s, lb, t in g.edges if m.step_violations(k, s, t)]
    assert not bad_steps, bad_steps[:3]
    assert g.deadlocks == []


def test_small_config_is_not_vacuous(graphs) -> None:
    k, g = graphs[SMALL]
    assert {lb.name for _, lb, _ in g.edges} == set(m.ACTIONS)
    kinds = {t.reply[k.proc(lb.params[0])].kind
             for _, lb, t in g.edges if lb.name == "HandleConnect"}
    assert kinds == {"ring", "kernel", "refused"}
    states = g.levels
    assert any(lst is not None and len(lst.queue) == k.Backlog
               for s in states for lst in s.listeners)
    assert any(x is not None and x.client == x.server for s in states for x in s.conns)
    assert any(x is not None and not s.alive[k.proc(x.client)] and x.cstate == "open"
               for s in states for x in s.conns)   # a conn made for a dead process
    assert any(s.nextId == k.MaxConns + 1 for s in states)


def test_each_invariant_and_step_property_can_fail() -> None:
    s = run(K, ("Listen", "p1", "a1"), ("Connect", "p2", "a1"), ("HandleConnect", "p2"))
    lst, conn = s.listeners[0], s.conns[0]
    broken = {
        "TypeOK": s._replace(nextId=4),
        "AcceptedMatchesOneConnect": s._replace(listeners=(lst._replace(queue=(1, 1)),)),
        "BacklogBound": s._replace(listeners=(lst._replace(queue=(1, 2)),),
                                   conns=(conn, conn), nextId=3),
        "NoLeak": s._replace(alive=(True, False), cleaned=(False, True)),
    }
    for name, t in broken.items():
        assert name in m.invariants(K, t), name
    t = s._replace(conns=(conn, conn), nextId=2)
    assert "AcceptedMatchesOneConnect" in m.invariants(K, t)  # id 2 not given out yet
    # Steps: a listener the ACL denies, an id reused, a request dropped unanswered.
    init = m.init_states(K)[0]
    assert m.step_violations(K, init, init._replace(listeners=(m.Listener("p2"),))) == [
        "NoBypass"]
    gone = s._replace(conns=(None, None))
    assert "ConnsCreatedOnce" in m.step_violations(K, gone, s)
    asked = run(K, ("Connect", "p2", "a1"))
    assert m.step_violations(K, asked, asked._replace(req=(None, None))) == [
        "StablePending"]


def test_tla_state_round_trip(graphs) -> None:
    k, g = graphs[SMALL]
    for s in g.levels:
        assert m.from_tla_state(k, m.to_tla_state(k, s)) == s


# --------------------------------------------------------------------------
# Liveness, its necessary condition: what is pending can always be resolved


def _pending(k: m.Params) -> dict[str, tuple[Callable, Callable]]:
    """(pending, resolved) predicates, one pair per liveness goal and process or id."""
    out = {}
    for i, p in enumerate(k.Procs):
        out[f"request of {p}"] = (lambda s, i=i: s.req[i] is not None,
                                  lambda s, i=i: s.req[i] is None)
        out[f"death of {p}"] = (lambda s, i=i: not s.alive[i] and not s.cleaned[i],
                                lambda s, i=i: s.cleaned[i])
    for c in k.Ids:
        def queued(s: m.State, c: int = c) -> bool:
            x = s.conns[c - 1]
            return x is not None and x.sstate == "queued"
        out[f"queued conn {c}"] = (queued, lambda s, q=queued: not q(s))
    return out


def test_whatever_is_pending_can_be_resolved(graphs) -> None:
    k, g = graphs[SMALL]
    for what, (pending, resolved) in _pending(k).items():
        can = can_reach(g, resolved)
        stuck = [s for s in g.levels if pending(s) and s not in can]
        assert not stuck, (what, stuck[:2])


def test_bad_variant_strands_a_queued_conn(graphs) -> None:
    k, g = graphs[BAD]
    pending, resolved = _pending(k)["queued conn 1"]
    can = can_reach(g, resolved)
    stuck = [s for s in g.levels if pending(s) and s not in can]
    assert stuck
    for s in stuck:
        # Queued at no listener, or at one whose owner died: its clean-up will
        # forget the queue.
        lst = s.listeners[k.addr(s.conns[0].addr)]
        assert lst is None or 1 not in lst.queue or not s.alive[k.proc(lst.owner)], s
    assert any(s.listeners[k.addr(s.conns[0].addr)] is None for s in stuck)


# --------------------------------------------------------------------------
# Agreement with TLC


def _tlc(tmp_path: Path, name: str, *, invariants: bool, **kwargs):
    from spec.tlc import run_tlc

    cfg = reachability_copy(name, tmp_path, invariants=invariants)
    return run_tlc(tmp_path, "MCConnect", cfg, timeout=TLC_TIMEOUT, **kwargs)


@needs_tlc
@pytest.mark.slow
def test_small_config_matches_tlc_state_for_state(graphs, tmp_path: Path) -> None:
    """Counts, depth, and the whole labelled state graph."""
    from spec.tracecheck import read_dot

    k, g = graphs[SMALL]
    res = _tlc(tmp_path, SMALL, invariants=True, workers=1, dump_dot=tmp_path / "g.dot")
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
@pytest.mark.parametrize("name", [BAD, BAD_ACL])
def test_bad_config_matches_tlc(graphs, name: str, tmp_path: Path) -> None:
    _, g = graphs[name]
    res = _tlc(tmp_path, name, invariants=False, workers=1)
    assert res.ok, res.report()
    assert (res.distinct_states, res.diameter) == (g.distinct, g.depth)


@needs_tlc
def test_tlc_finds_the_shortest_violations_the_model_finds(graphs, tmp_path: Path) -> None:
    """With one worker TLC's search is breadth first: its trace is a shortest one."""
    from spec.configs import by_name

    k, g = graphs[BAD]
    res = by_name(BAD).run(workers=1, timeout=TLC_TIMEOUT)
    assert res.kinds == ["invariant"], res.report()
    end = m.from_tla_state(k, res.counterexample[-1].variables)
    assert res.violations[0].name in m.invariants(k, end)
    shortest = min(lv for s, lv in g.levels.items() if m.invariants(k, s))
    assert len(res.counterexample) - 1 == shortest == g.levels[end]

    k, g = graphs[BAD_ACL]
    res = by_name(BAD_ACL).run(workers=1, timeout=TLC_TIMEOUT)
    assert [v.name for v in res.violations] == ["NoBypass"], res.report()
    before, after = (m.from_tla_state(k, st.variables) for st in res.counterexample[-2:])
    assert "NoBypass" in m.step_violations(k, before, after)
    assert any(lb.name == "HandleConnect" and t == after
               for s, lb, t in g.edges if s == before)
    shortest = min(g.levels[s] + 1 for s, _, t in g.edges if m.step_violations(k, s, t))
    assert len(res.counterexample) - 1 == shortest
