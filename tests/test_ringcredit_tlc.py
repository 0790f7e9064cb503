"""TLC on the RingCredit spec: the configs of spec.configs that make test runs.

The small config must pass with every action firing; the known-bad config
(batching without the credit request) must be rejected with the credit
deadlock.  Each config runs once per session and its result is shared by the
tests below.
"""

from __future__ import annotations

import re

import pytest

from spec import tlc
from spec.configs import CONFIGS, CheckedConfig, by_name
from tests import tlc_checks
from tests.gates import needs_tlc

pytestmark = needs_tlc

TIMEOUT = 500  # seconds; the small config takes 7-20 s on 2 shared cores

# Every action of RingCredit's Next.
ACTIONS = ("Want", "Write", "AskCredit", "GetCredit", "Deliver", "Recv", "ReturnCredit", "Done")
# Done is a stuttering step (UNCHANGED vars): it fires, but never finds a new state.
STUTTERING = {"Done"}

# The quick configs of the ring specs; Connect's are run by test_connect_tlc.py.
QUICK = [c for c in CONFIGS if c.in_make_test and c.module != "MCConnect"]


def result_of(cfg: CheckedConfig) -> tlc.TLCResult:
    """Run *cfg* once per session (shared with every test of every spec)."""
    return tlc_checks.result_of(cfg, TIMEOUT)


def test_registry_has_the_ringcredit_configs() -> None:
    names = {c.name: c for c in CONFIGS}
    assert names["MCRingCredit"].expect == "ok" and not names["MCRingCredit"].in_make_test
    assert names["MCRingCreditSmall"].expect == "ok" and names["MCRingCreditSmall"].in_make_test
    assert names["MCRingCreditBad"].expect == "deadlock" and names["MCRingCreditBad"].in_make_test
    for c in CONFIGS:
        assert c.config_path.is_file(), c.config_path
        assert (c.spec_dir / f"{c.module}.tla").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("cfg", QUICK, ids=[c.name for c in QUICK])
def test_quick_config_meets_its_expectation(cfg: CheckedConfig) -> None:
    tlc_checks.assert_meets_expectation(cfg, result_of(cfg))


@pytest.mark.slow
def test_small_config_fires_every_action() -> None:
    r = result_of(by_name("MCRingCreditSmall"))
    tlc_checks.assert_every_action_fires(r, ACTIONS, STUTTERING)


def test_bad_config_is_the_credit_deadlock() -> None:
    cfg = by_name("MCRingCreditBad")
    r = result_of(cfg)
    assert r.kinds == ["deadlock"], r.report()
    assert r.exit_code == 11
    assert r.counterexample, r.report()
    k = cfg.constants()
    C, B = k["C"], k["B"]
    end = r.counterexample[-1].variables
    assert end["transport"] == "rdma", r.format_counterexample()
    # The sender waits: its message does not fit in what it believes is free...
    assert end["want"] > 0
    assert end["want"] > C - (end["tail"] - end["shead"])
    assert not end["asked"]  # ...and (without the fix) it never asks for credit.
    # Nothing is in flight either way.
    assert end["wire"] == () and end["cwire"] == ()
    # The receiver has read all there is and holds less than a batch of credit.
    assert end["head"] == end["rtail"] == end["tail"]
    assert end["head"] - end["credited"] < B and not end["creq"]


def test_bad_config_failure_reads_well() -> None:
    # What pytest shows when a config that TLC rejects is checked as if it should pass.
    cfg = by_name("MCRingCreditBad")
    with pytest.raises(AssertionError) as info:
        tlc.check(cfg.spec_dir, cfg.module, cfg.config, expect="ok", timeout=TIMEOUT)
    text = str(info.value)
    assert text.startswith("expected ok, but:")
    assert "Violation: deadlock" in text
    # One header per state, numbered from 1, each later one naming its action.
    steps = re.findall(r"^(\d+): (\w+) \(line \d+, col \d+ .* of module RingCredit\)$",
                       text, re.M)
    assert "1: <Initial predicate>" in text
    assert [int(n) for n, _ in steps] == list(range(2, len(steps) + 2)), text
    assert {a for _, a in steps} <= set(ACTIONS), text
    assert 'transport = "rdma"' in text
    # Later states show only what changed: transport appears once.
    assert text.count("transport = ") == 1
