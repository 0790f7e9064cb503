"""The benchmark suite: ``make bench`` runs ``python -m bench``.

It measures our shared-memory ring (:mod:`impl.ring`, C and pure-Python
paths) against the kernel's TCP loopback, Unix sockets and pipes between
two processes, side by side in one run, and writes ``docs/bench.md``,
``docs/bench.json`` and the figures under ``docs/img/``.

Modules: :mod:`bench.transports` (what is compared), :mod:`bench.measure`
(the forked measurement loops), :mod:`bench.machine` (machine facts,
pinning, the glibc memcpy probe), :mod:`bench.suite` (the run and the
goals), :mod:`bench.report` and :mod:`bench.plots` (the output).
"""

from bench.report import render_markdown, write_report
from bench.suite import Settings, evaluate_goals, run_suite

__all__ = ["Settings", "evaluate_goals", "render_markdown", "run_suite", "write_report"]
