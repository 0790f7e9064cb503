"""What every spec's TLC tests assert: one run per config, its verdict, its coverage."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from spec import tlc
from spec.configs import CFG_SECTION, TLA_DIR, CheckedConfig, outcome

__all__ = ["result_of", "assert_meets_expectation", "assert_every_action_fires",
           "reachability_copy", "invariant_verdicts", "model_walk"]

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


def invariant_verdicts(dest: Path, module: str, constants: dict, variables: Iterable[str],
                       states: list[dict], invariants: list[str],
                       timeout: float) -> dict[int, list[str]]:
    """TLC's verdict on each of *states* (TLA+ records of *variables*), numbered from 1.

    A module that EXTENDS *module* makes each state an initial state and
    prints every invariant's value in it; the result maps each state's number
    to the names of the invariants it violates.  The models' tests hold
    their own invariant functions against this.
    """
    from spec.tlavalue import parse, to_tla

    for src in TLA_DIR.glob("*.tla"):
        os.symlink(src, dest / src.name)
    lines = ["---- MODULE XInv ----", f"EXTENDS {module}, TLC", "VARIABLE xn"]
    lines += [f"XConst_{c} == {to_tla(v)}" for c, v in constants.items()]
    lines.append("XS == <<")
    lines += [("  " if n == 0 else ", ") + to_tla(s) for n, s in enumerate(states)]
    lines.append(">>")
    lines.append("XInit == xn \\in 1..Len(XS) /\\ "
                 + " /\\ ".join(f"{v} = XS[xn].{v}" for v in variables))
    lines.append("XNext == UNCHANGED <<xn, vars>>")
    lines.append(f"XReport == PrintT(<<\"XINV\", xn, {', '.join(invariants)}>>)")
    lines.append("====")
    (dest / "XInv.tla").write_text("\n".join(lines) + "\n")
    cfg = ["CONSTANTS", *(f"    {c} <- XConst_{c}" for c in constants)]
    cfg += ["INIT XInit", "NEXT XNext", "INVARIANT XReport"]
    (dest / "XInv.cfg").write_text("\n".join(cfg) + "\n")
    res = tlc.run_tlc(dest, "XInv", "XInv.cfg", workers=1, deadlock=False, timeout=timeout)
    assert res.ok, res.report()
    verdicts = {}
    for line in res.output.splitlines():
        if line.startswith('<<"XINV"'):
            _, n, *vals = parse(line)
            verdicts[n] = [name for name, ok in zip(invariants, vals, strict=True) if not ok]
    assert sorted(verdicts) == list(range(1, len(states) + 1)), "TLC skipped states"
    return verdicts


def model_walk(model, params, rng, steps: int) -> list:
    """A random behaviour of a spec's Python model, logged as a driver logs the real one.

    *model* is a model module (spec.token, spec.fork: init_states,
    next_states, to_tla_state); its stuttering "Done" step is never taken.
    """
    from spec.tracecheck import Event

    s = model.init_states(params)[0]
    events = [Event("Init", (), model.to_tla_state(params, s))]
    for _ in range(steps):
        choices = [(lb, t) for lb, t in model.next_states(params, s) if lb.name != "Done"]
        if not choices:
            break
        label, s = rng.choice(choices)
        events.append(Event(label.name, label.params, model.to_tla_state(params, s)))
    return events

