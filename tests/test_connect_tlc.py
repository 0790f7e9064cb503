"""TLC on the Connect spec: the configs of spec.configs that make test runs.

MCConnectSmall must pass, invariants and temporal properties, with every
action firing.  The known-bad variants must be rejected, each with the
violation its broken protocol causes:

* MCConnectBad (queues forgotten when a listener goes away): an invariant;
* MCConnectBadLiveness (the same bug, temporal properties only): a conn
  queued forever;
* MCConnectBadAcl (the ACL checked only on the ring path): NoBypass.

The exhaustive MCConnect and MCConnectLeadsTo run in ``make modelcheck``
only.  Each config runs once per session and its result is shared.
"""

from __future__ import annotations

import pytest

from spec import tlc
from spec.configs import CONFIGS, CheckedConfig, by_name
from tests import tlc_checks
from tests.gates import needs_tlc

pytestmark = needs_tlc

TIMEOUT = 300  # seconds; the small config takes 6-30 s on 2 shared cores

# Every action of Connect's Next.
ACTIONS = ("Listen", "ListenDenied", "Unlisten", "Connect", "HandleConnect", "Accept",
           "Close", "Die", "Cleanup", "Reload", "Done")
# Stuttering steps (UNCHANGED vars): they fire, but never find a new state.
STUTTERING = {"ListenDenied", "Done"}

CONNECT = [c for c in CONFIGS if c.module == "MCConnect"]
QUICK = [c for c in CONNECT if c.in_make_test]


def result_of(cfg: CheckedConfig) -> tlc.TLCResult:
    """Run *cfg* once per session (shared with every test of every spec)."""
    return tlc_checks.result_of(cfg, TIMEOUT)


def test_registry_has_the_connect_configs() -> None:
    expected = {
        "MCConnect": ("ok", False),
        "MCConnectSmall": ("ok", True),
        "MCConnectLeadsTo": ("ok", False),
        "MCConnectBad": ("invariant", True),
        "MCConnectBadLiveness": ("property", True),
        "MCConnectBadAcl": ("property", True),
    }
    assert {c.name: (c.expect, c.in_make_test) for c in CONNECT} == expected
    for c in CONNECT:
        assert c.config_path.is_file(), c.config_path
        assert (c.spec_dir / "Connect.tla").is_file()


@pytest.mark.parametrize("cfg", QUICK, ids=[c.name for c in QUICK])
def test_quick_config_meets_its_expectation(cfg: CheckedConfig) -> None:
    tlc_checks.assert_meets_expectation(cfg, result_of(cfg))


def test_small_config_fires_every_action() -> None:
    r = result_of(by_name("MCConnectSmall"))
    tlc_checks.assert_every_action_fires(r, ACTIONS, STUTTERING)


def _queued_nowhere(state: dict) -> list[int]:
    """Ids of conns queued but in no listener's queue (TLC prints conns as a sequence)."""
    listeners = state["listeners"]
    out = []
    for c, x in enumerate(state["conns"], 1):
        if isinstance(x, dict) and x["sstate"] == "queued":
            lst = listeners[x["addr"]]
            if not isinstance(lst, dict) or c not in lst["queue"]:
                out.append(c)
    return out


def test_bad_config_leaves_a_conn_queued_at_no_listener() -> None:
    r = result_of(by_name("MCConnectBad"))
    assert r.kinds == ["invariant"] and r.exit_code == 12, r.report()
    assert r.violations[0].name in {"AcceptedMatchesOneConnect", "NoLeak"}, r.report()
    trace = r.counterexample
    # The listener went away by Unlisten or Cleanup, and its conn stayed queued.
    assert trace[-1].action in {"Unlisten", "Cleanup"}, r.format_counterexample()
    assert _queued_nowhere(trace[-1].variables), r.format_counterexample()
    assert not _queued_nowhere(trace[-2].variables)


def test_bad_liveness_config_never_resolves_a_queued_conn() -> None:
    r = result_of(by_name("MCConnectBadLiveness"))
    assert r.kinds == ["property"] and r.exit_code == 13, r.report()
    trace = r.counterexample
    assert trace[-1].marker in {"Stuttering", "Back to state"}, r.format_counterexample()
    # The behaviour ends in a cycle; a conn stays queued at no listener all along it.
    start = trace[-1].back_to if trace[-1].marker == "Back to state" else trace[-2].index
    cycle = [st.variables for st in trace if st.marker is None and st.index >= start]
    assert cycle, r.format_counterexample()
    stuck = set.intersection(*(set(_queued_nowhere(v)) for v in cycle))
    assert stuck, r.format_counterexample()


def test_bad_acl_config_is_a_kernel_bypass() -> None:
    cfg = by_name("MCConnectBadAcl")
    r = result_of(cfg)
    assert r.kinds == ["property"] and r.exit_code == 13, r.report()
    assert [v.name for v in r.violations] == ["NoBypass"], r.report()
    before, after = r.counterexample[-2].variables, r.counterexample[-1].variables
    assert r.counterexample[-1].action == "HandleConnect", r.format_counterexample()
    # Some process got "kernel" for a connect the ACL in force denies.
    bypassed = [
        p for p, rep in after["reply"].items()
        if rep["kind"] == "kernel" and before["reply"][p]["kind"] == "none"
        and ("connect", p, before["req"][p]) not in before["acl"]
    ]
    assert bypassed, r.format_counterexample()
