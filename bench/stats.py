"""Percentiles and latency summaries shared by the suite and the token benchmarks."""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction

__all__ = ["percentile", "summarise_latency"]


def percentile(ordered: Sequence[int], q: float) -> int:
    """Return the *q*-th percentile (nearest rank) of the sorted samples *ordered*."""
    if not ordered:
        raise ValueError("percentile of no samples")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {q}")
    # Exact arithmetic: in floats 99.9 / 100 * 1000 is 999.0000000000001, one rank too far.
    rank = max(1, math.ceil(Fraction(str(q)) * len(ordered) / 100))
    return ordered[rank - 1]


def summarise_latency(runs: list[list[int]]) -> dict[str, object]:
    """Pool the samples (ns) of all repeats; keep each repeat's median and p99 (in µs)."""
    pooled = sorted(s for run in runs for s in run)
    per_run = [sorted(run) for run in runs if run]
    us = 1e-3
    return {
        "samples": len(pooled),
        "median_us": percentile(pooled, 50) * us,
        "p99_us": percentile(pooled, 99) * us,
        "p999_us": percentile(pooled, 99.9) * us,
        "min_us": pooled[0] * us,
        "max_us": pooled[-1] * us,
        "mean_us": sum(pooled) / len(pooled) * us,
        "repeat_median_us": [percentile(r, 50) * us for r in per_run],
        "repeat_p99_us": [percentile(r, 99) * us for r in per_run],
    }
