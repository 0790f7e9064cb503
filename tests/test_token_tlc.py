"""TLC on the TokenSharing spec: the configs of spec.configs that make test runs.

MCTokenSharingSmall must pass, invariants and temporal properties, with every
action firing.  The known-bad variants must be rejected, each with the
violation its broken protocol causes:

* MCTokenSharingBadBusy (Take and Release do not wait for the owner's call
  to end): a second thread in the ring, OnlyOwnerTouches (or OneOwner);
* MCTokenSharingBadRecall (the monitor does not recall a new holder while
  others wait): a thread starves, a temporal property;
* MCTokenSharingBadReclaim (Reclaim forgets the queue of a dead holder's
  token): a request lost, RequestsKept;
* MCTokenSharingBadReclaimLiveness (the same bug, temporal properties only):
  the process that asked is never granted.

The exhaustive MCTokenSharing and MCTokenSharingLiveness run in ``make
modelcheck`` only.  Each config runs once per session and its result is shared.
"""

from __future__ import annotations

import pytest

from spec import tlc
from spec import token as m
from spec.configs import CONFIGS, CheckedConfig, by_name
from tests import tlc_checks
from tests.gates import needs_tlc

pytestmark = needs_tlc

TIMEOUT = 300  # seconds; the small config takes 20-40 s on 2 shared cores

# Every action of TokenSharing's Next.
ACTIONS = m.ACTIONS
# Done is a stuttering step (UNCHANGED vars): it fires, but never finds a new state.
STUTTERING = {"Done"}

TOKEN = [c for c in CONFIGS if c.module == "MCTokenSharing"]
QUICK = [c for c in TOKEN if c.in_make_test]
# The small config takes more than 20 s; the bad ones stop at their violation.
QUICK_PARAMS = [pytest.param(c, id=c.name, marks=[pytest.mark.slow] if c.expect == "ok" else [])
                for c in QUICK]


def result_of(cfg: CheckedConfig) -> tlc.TLCResult:
    """Run *cfg* once per session (shared with every test of every spec)."""
    return tlc_checks.result_of(cfg, TIMEOUT)


def params(name: str) -> m.Params:
    """The model's Params for a registered config."""
    return m.Params.from_constants(m.constants_of(by_name(name).config_path))


def test_registry_has_the_token_configs() -> None:
    expected = {
        "MCTokenSharing": ("ok", False),
        "MCTokenSharingLiveness": ("ok", False),
        "MCTokenSharingSmall": ("ok", True),
        "MCTokenSharingBadBusy": ("invariant", True),
        "MCTokenSharingBadRecall": ("property", True),
        "MCTokenSharingBadReclaim": ("invariant", True),
        "MCTokenSharingBadReclaimLiveness": ("property", True),
    }
    assert {c.name: (c.expect, c.in_make_test) for c in TOKEN} == expected
    for c in TOKEN:
        assert c.config_path.is_file(), c.config_path
        assert (c.spec_dir / "TokenSharing.tla").is_file()


def test_each_bad_config_differs_from_the_protocol_by_its_switch() -> None:
    switches = {"WaitBusy", "ReRecall", "KeepQueue"}
    off = {
        "MCTokenSharingBadBusy": {"WaitBusy"},
        "MCTokenSharingBadRecall": {"ReRecall"},
        "MCTokenSharingBadReclaim": {"KeepQueue"},
        "MCTokenSharingBadReclaimLiveness": {"KeepQueue"},
    }
    for c in TOKEN:
        k = params(c.name)
        assert {s for s in switches if not getattr(k, s)} == off.get(c.name, set()), c.name


@pytest.mark.parametrize("cfg", QUICK_PARAMS)
def test_quick_config_meets_its_expectation(cfg: CheckedConfig) -> None:
    tlc_checks.assert_meets_expectation(cfg, result_of(cfg))


@pytest.mark.slow
def test_small_config_fires_every_action() -> None:
    r = result_of(by_name("MCTokenSharingSmall"))
    tlc_checks.assert_every_action_fires(r, ACTIONS, STUTTERING)


def test_big_config_is_at_least_a_million_states() -> None:
    """The exhaustive config is not run here; its recorded size is in its comment."""
    text = by_name("MCTokenSharing").config_path.read_text()
    assert "distinct states" in text
    k = params("MCTokenSharing")
    # Three processes (a monitor queue of two), two threads in one process,
    # both tokens, deaths: every part of the protocol at once.
    assert len(k.Procs) == 3 and len(k.Tokens) == 2 and k.Mortal
    assert max(k.ProcOf.count(p) for p in k.Procs) >= 2


def _states(r: tlc.TLCResult, k: m.Params) -> list[m.State]:
    return [m.from_tla_state(k, st.variables) for st in r.counterexample if st.variables]


def test_bad_busy_puts_a_second_thread_in_the_ring() -> None:
    k = params("MCTokenSharingBadBusy")
    r = result_of(by_name("MCTokenSharingBadBusy"))
    assert r.kinds == ["invariant"] and r.exit_code == 12, r.report()
    assert r.violations[0].name in {"OnlyOwnerTouches", "OneOwner"}, r.report()
    trace = _states(r, k)
    last = trace[-1]
    assert r.violations[0].name in m.invariants(k, last)
    assert m.invariants(k, trace[-2]) == []
    # The step taken without waiting for busy: a Take (or a Release of the
    # word) while another thread is in its call.
    assert r.counterexample[-1].action in {"Take", "Release"}, r.format_counterexample()
    busy_before = [j for j, w in enumerate(trace[-2].word) if w.busy]
    assert busy_before, r.format_counterexample()
    # The fixed protocol would not have taken that step.
    fixed = m.Params.from_constants({**m.constants_of(by_name("MCTokenSharingBadBusy")
                                                      .config_path), "WaitBusy": True})
    assert all(t != last for _, t in m.next_states(fixed, trace[-2]))


def _cycle(r: tlc.TLCResult, k: m.Params) -> list[m.State]:
    """The states of the lasso's loop (or the final stuttering state)."""
    trace = r.counterexample
    assert trace[-1].marker in {"Stuttering", "Back to state"}, r.format_counterexample()
    start = trace[-1].back_to if trace[-1].marker == "Back to state" else trace[-2].index
    return [m.from_tla_state(k, st.variables)
            for st in trace if st.marker is None and st.index >= start]


def test_bad_recall_starves_a_process_behind_a_holder_never_recalled() -> None:
    k = params("MCTokenSharingBadRecall")
    r = result_of(by_name("MCTokenSharingBadRecall"))
    assert r.kinds == ["property"] and r.exit_code == 13, r.report()
    cycle = _cycle(r, k)
    assert cycle, r.format_counterexample()
    # Its safety counterpart: processes wait, but no recall is outstanding.
    for s in cycle:
        assert m.invariants(k, s) == ["MonitorConsistent"]
    # Along the whole loop: a thread stays queued, its process waits in the
    # monitor's queue, and no recall of the live holder is under way.
    stuck = set.intersection(*({t for i, t in enumerate(k.Threads) if s.pc[i] == "queued"}
                               for s in cycle))
    assert stuck, r.format_counterexample()
    for s in cycle:
        j = 0  # the one token of this config
        assert s.queue[j] and not s.recalled[j], s
        h = k.proc(s.holder[j])
        assert s.alive[h] and m.Msg("RECALL", k.Tokens[j]) not in s.toProc[h]


def test_bad_reclaim_loses_the_request_of_a_waiting_process() -> None:
    k = params("MCTokenSharingBadReclaim")
    r = result_of(by_name("MCTokenSharingBadReclaim"))
    assert r.kinds == ["invariant"] and r.exit_code == 12, r.report()
    assert [v.name for v in r.violations] == ["RequestsKept"], r.report()
    assert r.counterexample[-1].action == "Reclaim", r.format_counterexample()
    before, after = _states(r, k)[-2:]
    # Someone asked and waited in the queue of a token the dead process held;
    # after the Reclaim the token is free and the request is nowhere.
    lost = [(p, tok) for i, p in enumerate(k.Procs) for j, tok in enumerate(k.Tokens)
            if after.asked[i][j] and p in before.queue[j] and p not in after.queue[j]]
    assert lost, r.format_counterexample()
    for _, tok in lost:
        assert after.holder[k.token(tok)] is None


def test_bad_reclaim_liveness_never_grants_the_lost_request() -> None:
    k = params("MCTokenSharingBadReclaimLiveness")
    r = result_of(by_name("MCTokenSharingBadReclaimLiveness"))
    assert r.kinds == ["property"] and r.exit_code == 13, r.report()
    cycle = _cycle(r, k)
    assert cycle, r.format_counterexample()
    waiting = set.intersection(*({(i, j) for i in range(len(k.Procs))
                                  for j in range(len(k.Tokens))
                                  if s.asked[i][j] and s.alive[i]} for s in cycle))
    assert waiting, r.format_counterexample()
    for s in cycle:
        for i, j in waiting:
            assert not m.RequestsKept(k, s)
            assert k.Procs[i] not in s.queue[j] and not s.pheld[i][j]
