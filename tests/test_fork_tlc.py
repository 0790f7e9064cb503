"""TLC on the Fork spec: the configs of spec.configs that make test runs.

MCForkSmall must pass, invariants, properties of steps and temporal
properties, with every action firing.  The known-bad variants must be
rejected, each with the invariant its broken protocol breaks:

* MCForkBadCount (a closer closes the rings when it closes its own last
  copy, not when no process holds the end): PeerClosedOnlyWhenUnheld;
* MCForkBadResource (a child keeps its parent's per-process resources):
  ResourceOwned;
* MCForkBadToken (a child copies its parent's tokens): OneTokenHolder.

Two variants of the spec written here show that the liveness properties can
fail, and why the spec is as it is: with SendStart only weakly fair a child
can lose the token to Handover forever (FirstSendSucceeds), and with
MonClose waiting for every FORKED (as the design's first draft had it) an
end whose child died before making its monitor channel is never closed
(UnheldCloses).

The exhaustive MCFork and MCForkLiveness run in ``make modelcheck`` only.
Each config runs once per session and its result is shared.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from spec import fork as m
from spec import tlc
from spec.configs import CONFIGS, TLA_DIR, CheckedConfig, by_name
from tests import tlc_checks
from tests.gates import needs_tlc

pytestmark = needs_tlc

TIMEOUT = 300  # seconds; the small config takes about 5 s

# Done is a stuttering step (UNCHANGED vars): it fires, but never finds a new state.
STUTTERING = {"Done"}

FORK = [c for c in CONFIGS if c.module == "MCFork"]
QUICK = [c for c in FORK if c.in_make_test]


def result_of(cfg: CheckedConfig) -> tlc.TLCResult:
    """Run *cfg* once per session (shared with every test of every spec)."""
    return tlc_checks.result_of(cfg, TIMEOUT)


def params(name: str) -> m.Params:
    """The model's Params for a registered config."""
    return m.Params.from_constants(m.constants_of(by_name(name).config_path))


def _states(r: tlc.TLCResult, k: m.Params) -> list[m.State]:
    return [m.from_tla_state(k, st.variables) for st in r.counterexample if st.variables]


def test_registry_has_the_fork_configs() -> None:
    expected = {
        "MCFork": ("ok", False),
        "MCForkLiveness": ("ok", False),
        "MCForkSmall": ("ok", True),
        "MCForkBadCount": ("invariant", True),
        "MCForkBadResource": ("invariant", True),
        "MCForkBadToken": ("invariant", True),
    }
    assert {c.name: (c.expect, c.in_make_test) for c in FORK} == expected
    for c in FORK:
        assert c.config_path.is_file(), c.config_path
        assert (c.spec_dir / "Fork.tla").is_file()


def test_each_bad_config_differs_from_the_small_one_by_its_switch() -> None:
    switches = ("CountHolders", "FreshResources", "TokenStays")
    off = {
        "MCForkBadCount": {"CountHolders"},
        "MCForkBadResource": {"FreshResources"},
        "MCForkBadToken": {"TokenStays"},
    }
    small = params("MCForkSmall")
    for c in FORK:
        k = params(c.name)
        assert {s for s in switches if not getattr(k, s)} == off.get(c.name, set()), c.name
        if c.name in off:
            fixed = k.constants() | {s: True for s in switches}
            assert m.Params.from_constants(fixed) == small, c.name


@pytest.mark.parametrize("cfg", QUICK, ids=[c.name for c in QUICK])
def test_quick_config_meets_its_expectation(cfg: CheckedConfig) -> None:
    tlc_checks.assert_meets_expectation(cfg, result_of(cfg))


def test_small_config_checks_every_property_and_fires_every_action() -> None:
    cfg = by_name("MCForkSmall")
    text = cfg.config_path.read_text()
    for name in [*m.INVARIANTS, *m.STEP_PROPERTIES, "FirstSendSucceeds", "DeadReaped",
                 "UnheldCloses"]:
        assert name in text, name
    r = result_of(cfg)
    tlc_checks.assert_every_action_fires(r, m.ACTIONS, STUTTERING)


def test_big_configs_are_recorded_and_larger() -> None:
    """The exhaustive configs are not run here; their recorded sizes are in their comments."""
    small = params("MCForkSmall")
    for name in ("MCFork", "MCForkLiveness"):
        text = by_name(name).config_path.read_text()
        assert "distinct states" in text, name
        k = params(name)
        # A grandchild is possible (three processes), and a parent can die.
        assert len(k.Procs) == 3 and k.Root in k.Mortal, name
        assert len(k.Procs) > len(small.Procs)
    big = params("MCFork")
    # A fork or a death in the middle of a send call; a Dup and a gap to fill.
    assert big.CallLen >= 2 and len(big.Fds) >= 2
    assert "FirstSendSucceeds" in by_name("MCForkLiveness").config_path.read_text()


def test_bad_count_tells_the_peer_eof_while_the_child_holds_the_end() -> None:
    k = params("MCForkBadCount")
    r = result_of(by_name("MCForkBadCount"))
    assert r.kinds == ["invariant"] and r.exit_code == 12, r.report()
    assert [v.name for v in r.violations] == ["PeerClosedOnlyWhenUnheld"], r.report()
    assert r.counterexample[-1].action == "Close", r.format_counterexample()
    trace = _states(r, k)
    before, after = trace[-2:]
    assert m.invariants(k, before) == []
    closed = [j for j in range(len(k.Socks)) if after.eof[j] and not before.eof[j]]
    assert closed, r.format_counterexample()
    for j in closed:
        still = m.holders(k, after, k.Socks[j])
        assert still, r.format_counterexample()
        # Someone other than the root holds it: a forked child.
        assert still - {k.Root}
    # The fixed protocol closes the same fd without the EOF.
    fixed = m.Params.from_constants(k.constants() | {"CountHolders": True})
    assert after not in {t for _, t in m.next_states(fixed, before)}
    assert {t.eof for lb, t in m.next_states(fixed, before) if lb.name == "Close"} <= {
        before.eof}


def test_bad_resource_shares_the_parents_resource_at_the_fork() -> None:
    k = params("MCForkBadResource")
    r = result_of(by_name("MCForkBadResource"))
    assert r.kinds == ["invariant"] and r.exit_code == 12, r.report()
    assert [v.name for v in r.violations] == ["ResourceOwned"], r.report()
    assert r.counterexample[-1].action == "Fork", r.format_counterexample()
    before, after = _states(r, k)[-2:]
    (child,) = after.born - before.born
    c = k.proc(child)
    p = after.parent[c]
    assert after.res[c] == before.res[k.proc(p)] == p != child


def test_bad_token_gives_the_child_the_parents_token() -> None:
    k = params("MCForkBadToken")
    r = result_of(by_name("MCForkBadToken"))
    assert r.kinds == ["invariant"] and r.exit_code == 12, r.report()
    assert [v.name for v in r.violations] == ["OneTokenHolder"], r.report()
    assert r.counterexample[-1].action == "Fork", r.format_counterexample()
    before, after = _states(r, k)[-2:]
    (child,) = after.born - before.born
    for j, x in enumerate(k.Socks):
        believers = {p for p in after.alive if x in after.pheld[k.proc(p)]}
        if len(believers) > 1:
            assert child in believers and after.tok[j] != child
            break
    else:
        pytest.fail(r.format_counterexample())


# --------------------------------------------------------------------------
# The liveness properties can fail: two variants of the spec


def _variant(tmp_path: Path, name: str, replace: dict[str, str], properties: str) -> str:
    """A copy of Fork.tla with *replace* applied, and a config of MCForkSmall's constants."""
    for src in TLA_DIR.glob("*.tla"):
        if src.name != "Fork.tla":
            os.symlink(src, tmp_path / src.name)
    text = (TLA_DIR / "Fork.tla").read_text()
    for old, new in replace.items():
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    (tmp_path / "Fork.tla").write_text(text)
    cfg = by_name("MCForkSmall").config_path.read_text()
    head = cfg[: cfg.index("SPECIFICATION")]
    (tmp_path / f"{name}.cfg").write_text(head + f"SPECIFICATION Spec\nPROPERTIES {properties}\n")
    return f"{name}.cfg"


def test_first_send_needs_sendstart_strongly_fair(tmp_path: Path) -> None:
    """With SendStart weakly fair, Handover can take the token back before every send."""
    cfg = _variant(tmp_path, "XWeak", {"SF_vars(SendStart(p, s))": "WF_vars(SendStart(p, s))"},
                   "FirstSendSucceeds")
    r = tlc.run_tlc(tmp_path, "MCFork", cfg, timeout=TIMEOUT)
    assert r.kinds == ["property"] and r.exit_code == 13, r.report()
    k = params("MCForkSmall")
    loop = [m.from_tla_state(k, st.variables) for st in r.counterexample if st.variables]
    assert any(st.action == "Handover" for st in r.counterexample), r.format_counterexample()
    # In the loop a child holds the end and has made no send call.
    child = [p for p in k.Procs if p != k.Root]
    assert any(p in m.holders(k, s, x) and s.calls[k.proc(p)][k.sock(x)] == 0
               for s in loop[-2:] for p in child for x in k.Socks)


def test_unheld_end_closes_only_if_monclose_does_not_wait_for_forked(tmp_path: Path) -> None:
    """A child that dies before making its channel never sends FORKED."""
    cfg = _variant(tmp_path, "XWait",
                   {"/\\ Holders(s) = {}\n    /\\ monClosed'":
                    "/\\ Holders(s) = {}\n    /\\ \\A p \\in Procs : s \\notin pending[p]\n"
                    "    /\\ monClosed'"},
                   "UnheldCloses")
    r = tlc.run_tlc(tmp_path, "MCFork", cfg, timeout=TIMEOUT)
    assert r.kinds == ["property"] and r.exit_code == 13, r.report()
    k = params("MCForkSmall")
    # (A marker at the end of a lasso carries the variables of the state it repeats.)
    last = m.from_tla_state(k, r.counterexample[-1].variables)
    # Stuck: nobody holds the end, a dead child's FORKED can never be sent.
    stuck = [p for p in last.born - last.alive
             if last.pending[k.proc(p)] and last.res[k.proc(p)] is None]
    assert stuck, r.format_counterexample()
    assert not any(last.monClosed)
