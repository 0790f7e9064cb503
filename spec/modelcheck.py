"""Model-check every registered TLC config and print a table (``make modelcheck``).

Usage::

    python -m spec.modelcheck [--quick] [--workers N] [--timeout S] [NAME ...]

With no NAME, every config in :data:`spec.configs.CONFIGS` runs; ``--quick``
keeps only those that ``make test`` runs too.  The exit status is 0 when
every result is the expected one (``ok``, or a known-bad variant rejected
with the expected violation), 1 otherwise; the counterexample of each
unexpected result is printed after the table.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from spec.configs import CONFIGS, CheckedConfig, by_name, outcome
from spec.tlc import TLCResult

__all__ = ["main", "select"]

_COLUMNS = ("spec", "config", "distinct states", "diameter", "seconds", "result")
_REPO = Path(__file__).resolve().parent.parent


def select(names: Sequence[str], quick: bool) -> list[CheckedConfig]:
    """Return the configs named (all when none), keeping only quick ones if *quick*.

    Raises ``KeyError`` for a name that is not registered.
    """
    chosen = [by_name(n) for n in names] if names else list(CONFIGS)
    return [c for c in chosen if c.in_make_test or not quick]


def _spec_path(cfg: CheckedConfig) -> str:
    path = cfg.spec_dir / f"{cfg.module}.tla"
    try:
        return str(path.relative_to(_REPO))
    except ValueError:
        return str(path)


def _row(cfg: CheckedConfig, result: TLCResult | None, verdict: str) -> tuple[str, ...]:
    if result is None:
        return (_spec_path(cfg), cfg.config, "-", "-", "-", verdict)
    count = "-" if result.distinct_states is None else f"{result.distinct_states:,}"
    depth = "-" if result.diameter is None else str(result.diameter)
    return (_spec_path(cfg), cfg.config, count, depth, f"{result.seconds:.1f}", verdict)


def _print_row(row: Sequence[str], widths: Sequence[int]) -> None:
    # Numbers right-aligned, text left-aligned.
    cells = [
        cell.rjust(w) if i in (2, 3, 4) else cell.ljust(w)
        for i, (cell, w) in enumerate(zip(row, widths, strict=True))
    ]
    print("  ".join(cells).rstrip(), flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the selected configs, print the table, return the exit status."""
    parser = argparse.ArgumentParser(prog="python -m spec.modelcheck", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help="config file names to run (e.g. MCRingCreditSmall); default all")
    parser.add_argument("--quick", action="store_true",
                        help="only the configs that make test runs")
    parser.add_argument("--workers", type=int, default=2, help="TLC worker threads (default 2)")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds each TLC run may take (default: no limit)")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error(f"--workers must be at least 1, got {args.workers}")
    try:
        configs = select(args.names, args.quick)
    except KeyError as exc:
        parser.error(exc.args[0])

    # Widths fixed up front so that each row prints as soon as its run ends.
    widths = [max(len(_COLUMNS[0]), *(len(_spec_path(c)) for c in configs)),
              max(len(_COLUMNS[1]), *(len(c.config) for c in configs)),
              15, 8, 7, 6]
    _print_row(_COLUMNS, widths)
    _print_row(["-" * w for w in widths], widths)
    failures: list[tuple[CheckedConfig, str]] = []
    for cfg in configs:
        try:
            result = cfg.run(workers=args.workers, timeout=args.timeout)
        except (OSError, ValueError) as exc:
            _print_row(_row(cfg, None, f"FAIL: {exc}"), widths)
            failures.append((cfg, str(exc)))
            continue
        as_expected, verdict = outcome(cfg, result)
        _print_row(_row(cfg, result, verdict), widths)
        if not as_expected:
            failures.append((cfg, result.report()))
    for cfg, text in failures:
        print(f"\n=== {cfg.name}: expected {cfg.expect}\n{text}")
    if not configs:
        print("(no config selected)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
