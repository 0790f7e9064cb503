r"""The Python model spec/wakeup.py agrees with spec/tla/RingWakeup.tla, and TLC
rejects the two known-bad variants of the handshake.

The constants come from the TLC configs (spec.configs.read_constants).  TLC
runs with one worker where depths are compared (see tests/test_ring_model.py).
For the bad configs TLC stops at the first violation, so their whole state
graphs are compared on a copy of the config without NoLostWakeup and without
the deadlock check; the violation itself is checked on the config as is.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from spec import wakeup
from spec.configs import CFG_SECTION, by_name, read_constants
from spec.statespace import StateGraph, explore
from tests.gates import needs_tlc

SPEC_DIR = Path(__file__).resolve().parent.parent / "spec" / "tla"
GOOD, NO_FENCE, NO_RECHECK = "MCRingWakeup", "MCRingWakeupNoFence", "MCRingWakeupNoRecheck"
ALL = (GOOD, NO_FENCE, NO_RECHECK)
TLC_TIMEOUT = 300


def params_of(name: str) -> wakeup.Params:
    """The model's Params for one of the spec's configs."""
    return wakeup.Params.from_constants(read_constants(SPEC_DIR / f"{name}.cfg"))


def graph_of(p: wakeup.Params) -> StateGraph:
    return explore(wakeup.init_states(p), lambda s: wakeup.next_states(p, s),
                   keep_edges=True, max_states=100_000)


@pytest.fixture(scope="module")
def graphs() -> dict[str, tuple[wakeup.Params, StateGraph]]:
    out = {}
    for name in ALL:
        p = params_of(name)
        out[name] = (p, graph_of(p))
    return out


def reachability_copy(name: str, dest: Path) -> str:
    """Write *name*.cfg into *dest* without PROPERTIES and without NoLostWakeup.

    Neither changes the state graph; dropping them lets TLC explore all of
    it in the bad configs instead of stopping at the first lost wake-up.
    """
    for src in SPEC_DIR.glob("*.tla"):
        os.symlink(src, dest / src.name)
    kept, dropping = [], False
    for raw in (SPEC_DIR / f"{name}.cfg").read_text().splitlines():
        line = raw.split("\\*", 1)[0].rstrip()
        m = CFG_SECTION.match(line)
        if m:
            dropping = m.group(1) in ("PROPERTY", "PROPERTIES")
        if m and m.group(1).startswith("INVARIANT"):
            line = line.replace("NoLostWakeup", "")
        if not dropping:
            kept.append(line)
    (dest / f"{name}.cfg").write_text("\n".join(kept) + "\n")
    return f"{name}.cfg"


# --------------------------------------------------------------------------
# Constants and single actions


def test_configs_set_the_switches() -> None:
    assert params_of(GOOD) == wakeup.Params(N=params_of(GOOD).N, Fence=True, Recheck=True)
    assert params_of(NO_FENCE).Fence is False and params_of(NO_FENCE).Recheck is True
    assert params_of(NO_RECHECK).Recheck is False and params_of(NO_RECHECK).Fence is True


@pytest.mark.parametrize("change", [{"N": 0}, {"N": 1.0}, {"Fence": 1}, {"Recheck": None}])
def test_params_enforce_the_assume(change: dict[str, object]) -> None:
    wakeup.Params(N=2)
    with pytest.raises(ValueError):
        wakeup.Params(**{"N": 2, **change})


P = wakeup.Params(N=2)


def run(p: wakeup.Params, *steps: str) -> wakeup.State:
    """Apply the named actions in order ("Flush(w)" names a Flush); each must be enabled."""
    s = wakeup.init_states(p)[0]
    for step in steps:
        if step.startswith("Flush("):
            t = wakeup.Flush(p, s, step[6])
        else:
            t = getattr(wakeup, step)(p, s)
        assert t is not None, f"{step} disabled in {s}"
        s = t
    return s


def test_load_forwards_the_newest_own_store() -> None:
    s = run(P, "Write")
    assert s.wbuf == (("tail", 1),) and s.mem.tail == 0
    assert wakeup.Load(s, s.wbuf, "tail") == 1      # the writer sees its own store
    assert wakeup.Load(s, s.rbuf, "tail") == 0      # the reader does not, yet
    s = s._replace(wbuf=(("tail", 1), ("tail", 2)))
    assert wakeup.Load(s, s.wbuf, "tail") == 2


def test_fences_wait_for_the_store_buffer() -> None:
    s = run(P, "Write")
    assert wakeup.WriterFence(P, s) is None
    assert wakeup.WriterFence(wakeup.Params(N=2, Fence=False), s).wpc == "load"
    s = run(P, "TryRead", "Arm")
    assert wakeup.ReaderFence(P, s) is None
    assert run(P, "TryRead", "Arm", "Flush(r)", "ReaderFence").rpc == "recheck"
    no_recheck = wakeup.Params(N=2, Recheck=False)
    assert run(no_recheck, "TryRead", "Arm", "Flush(r)", "ReaderFence").rpc == "block"


def test_the_writer_signals_a_published_flag_once() -> None:
    s = run(P, "TryRead", "Arm", "Flush(r)", "ReaderFence", "RecheckTail",
            "Write", "Flush(w)", "WriterFence", "LoadFlag")
    assert s.wpc == "xchg" and s.rpc == "block"
    s = wakeup.ClearFlag(P, s)
    assert s.mem.flag == 0 and s.wpc == "signal"
    s = wakeup.Signal(P, s)
    assert s.efd == 1 and s.wpc == "idle"
    s = wakeup.Wake(P, s)
    assert s.efd == 0 and s.rpc == "try"
    assert wakeup.TryRead(P, s).head == 1


def test_exchange_of_a_flag_already_down_does_not_signal() -> None:
    # The reader's re-check found the data and took its flag down first.
    s = run(P, "TryRead", "Arm", "Flush(r)", "ReaderFence",
            "Write", "Flush(w)", "WriterFence", "LoadFlag", "RecheckTail", "Flush(r)")
    assert s.wpc == "xchg" and s.head == 1 and s.mem.flag == 0
    assert wakeup.ClearFlag(P, s).wpc == "idle"


def test_done_only_when_all_is_read_and_quiet() -> None:
    s = run(wakeup.Params(N=1), "Write", "Flush(w)", "WriterFence", "LoadFlag",
            "TryRead", "TryRead", "Arm", "Flush(r)", "ReaderFence", "RecheckTail")
    assert wakeup.Done(wakeup.Params(N=1), s) is s
    assert wakeup.Done(P, s) is None                    # one message still to write
    assert wakeup.Done(wakeup.Params(N=1), s._replace(efd=1)) is None


def test_flush_rejects_unknown_processes() -> None:
    with pytest.raises(ValueError, match="'w' or 'r'"):
        wakeup.Flush(P, wakeup.init_states(P)[0], "x")


def test_each_invariant_can_fail() -> None:
    s = run(P, "Write", "Flush(w)")
    assert wakeup.invariants(P, s) == []
    broken = {
        "TypeOK": s._replace(rpc="sleeping"),
        "Bounds": s._replace(head=2),
        "NoLostWakeup": s._replace(wpc="idle", rpc="block"),
    }
    for name, t in broken.items():
        assert name in wakeup.invariants(P, t), name


# --------------------------------------------------------------------------
# The state graphs


def test_good_config_has_no_lost_wakeup_and_no_deadlock(graphs) -> None:
    p, g = graphs[GOOD]
    bad = [(s, wakeup.invariants(p, s)) for s in g.levels if wakeup.invariants(p, s)]
    assert not bad, bad[:3]
    assert g.deadlocks == []
    # Not vacuous: every action fires, a real sleep is woken, and both buffers fill.
    assert {label for _, label, _ in g.edges} == set(wakeup.ACTIONS)
    assert any(s.rpc == "block" and s.efd > 0 and s.head < p.N for s in g.levels)
    assert any(len(s.wbuf) and len(s.rbuf) for s in g.levels)


@pytest.mark.parametrize("name", [NO_FENCE, NO_RECHECK])
def test_bad_configs_reach_a_lost_wakeup_that_deadlocks(graphs, name: str) -> None:
    p, g = graphs[name]
    lost = [s for s in g.levels if wakeup.lost_wakeup(s)]
    assert lost
    assert all(wakeup.invariants(p, s) == ["NoLostWakeup"] for s in lost)
    # With no lost wake-up, the model's only end is Done's stutter: each deadlock
    # is a reader asleep on data.
    assert g.deadlocks and set(g.deadlocks) <= set(lost)


# --------------------------------------------------------------------------
# Agreement with TLC


@needs_tlc
@pytest.mark.parametrize("name", ALL)
def test_state_count_and_depth_match_tlc(graphs, name: str, tmp_path: Path) -> None:
    from spec.tlc import run_tlc

    _, g = graphs[name]
    cfg = reachability_copy(name, tmp_path)
    res = run_tlc(tmp_path, "MCRingWakeup", cfg, workers=1, deadlock=False,
                  timeout=TLC_TIMEOUT)
    assert res.ok, res.report()
    assert (res.distinct_states, res.diameter) == (g.distinct, g.depth)


@needs_tlc
@pytest.mark.parametrize("name", [NO_FENCE, NO_RECHECK])
def test_tlc_rejects_the_bad_config_with_the_lost_wakeup(graphs, name: str) -> None:
    p, g = graphs[name]
    cfg = by_name(name)
    assert cfg.expect == "invariant"
    res = cfg.run(workers=1, timeout=TLC_TIMEOUT)
    assert res.kinds == ["invariant"], res.report()
    assert [v.name for v in res.violations] == ["NoLostWakeup"]
    end = res.counterexample[-1].variables
    assert end["rpc"] == "block" and end["efd"] == 0 and end["wpc"] == "idle"
    assert end["wbuf"] == () and end["rbuf"] == ()
    assert end["head"] < end["mem"]["tail"]
    # The model reaches the same state (TLC's BFS trace is a shortest one).
    assert len(res.counterexample) - 1 == min(g.levels[s] for s in g.levels
                                              if wakeup.lost_wakeup(s))


@needs_tlc
def test_tlc_passes_the_good_config_with_liveness() -> None:
    res = by_name(GOOD).run(workers=1, timeout=TLC_TIMEOUT)
    assert res.ok and res.exit_code == 0, res.report()
