"""What every spec's TLC tests assert: one run per config, its verdict, its coverage."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from spec import tlc
from spec.configs import CFG_SECTION, TLA_DIR, CheckedConfig, outcome

__all__ = ["result_of", "assert_meets_expectation", "assert_every_action_fires",
           "reachability_copy"]

_results: dict[str, tlc.TLCResult] = {}


def result_of(cfg: CheckedConfig, timeout: float) -> tlc.TLCResult:
    """Run *cfg* once (with coverage) and remember the result for the session."""
    if cfg.name not in _results:
        _results[cfg.name] = cfg.run(coverage=True, timeout=timeout)
    return _results[cfg.name]


def assert_meets_expectation(cfg: CheckedConfig, r: tlc.TLCResult) -> None:
    """TLC concluded what the registry says: ok with states, or the expected violation."""
    as_expected, verdict = outcome(cfg, r)
    assert as_expected, f"{verdict}\n{r.report()}"
    if cfg.expect == "ok":
        assert r.exit_code == 0 and r.counterexample == []
        assert r.distinct_states is not None and r.distinct_states > 0
    else:
        assert r.counterexample, r.report()


def assert_every_action_fires(r: tlc.TLCResult, actions: Iterable[str],
                              stuttering: set[str]) -> None:
    """Every action was enabled; every non-stuttering one found a new state."""
    assert r.ok, r.report()
    actions = list(actions)
    missing = [a for a in actions if a not in r.coverage]
    assert not missing, f"no coverage reported for {missing}: {r.coverage}"
    for action in actions:
        distinct, generated = r.coverage[action]
        if action in stuttering:
            assert generated > 0, f"{action} never enabled: {r.coverage}"
        else:
            assert distinct > 0, f"{action} never found a new state: {r.coverage}"
    # Every distinct state was found by the initial predicate or one action.
    assert sum(d for d, _ in r.coverage.values()) == r.distinct_states


def reachability_copy(name: str, dest: Path, *, invariants: bool) -> str:
    """Link the spec's modules into *dest* and write *name*.cfg there, reduced.

    Without PROPERTIES always, and without INVARIANTS unless *invariants*:
    neither changes the state graph, and leaving them out lets TLC explore
    all of it in a bad config instead of stopping at the first violation.
    """
    for src in TLA_DIR.glob("*.tla"):
        os.symlink(src, dest / src.name)
    kept, dropping = [], False
    for raw in (TLA_DIR / f"{name}.cfg").read_text().splitlines():
        line = raw.split("\\*", 1)[0].rstrip()
        sec = CFG_SECTION.match(line)
        if sec:
            dropping = sec.group(1) in ("PROPERTY", "PROPERTIES") or (
                not invariants and sec.group(1).startswith("INVARIANT")
            )
        if not dropping:
            kept.append(line)
    (dest / f"{name}.cfg").write_text("\n".join(kept) + "\n")
    return f"{name}.cfg"
