"""The whole benchmark run: which measurements, how often, in what order, and the goals.

:func:`run_suite` measures every transport side by side and returns plain,
JSON-ready data; :mod:`bench.report` and :mod:`bench.plots` turn that into
``bench.md``, ``bench.json`` and the figures.  Repeats are interleaved
(every transport once, then every transport again), so a burst of foreign
load on the shared machine hits all transports alike instead of one.

Besides the rings themselves, the run measures the socket API
(:mod:`bench.sockets`): ``impl.socket`` connections set up by a private
monitor take part in the round-trip and streaming loops as one more
transport, and two measurements of their own follow in every repeat:
connection set-up rate and an asyncio echo ping-pong.  Last come the
token benchmarks of issue 4 (:mod:`bench.tokens`) through the same monitor:
the single owner with and without token checks, four threads sharing one
socket against kernel TCP shared alike, and takeover latency.
"""

from __future__ import annotations

import contextlib
import functools
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from bench import dropin, forking, machine, sockets, tokens
from bench.measure import Placement, round_trips, stream
from bench.sockets import ASYNCIO_RING_SELECTOR, SOCKET_KEY
from bench.stats import percentile
from bench.stats import summarise_latency as _summarise_rtt
from bench.transports import Transport, available_transports, ring_settings

__all__ = ["GOALS", "SIZES", "SOCKET_GOALS", "TOKENS_KEY", "Settings", "all_transports",
           "evaluate_goals", "percentile", "run_suite"]

#: Streaming message sizes: 64 B, 1 KiB, 16 KiB, 256 KiB.
SIZES = (64, 1024, 16 * 1024, 256 * 1024)
#: The --only key of the token benchmarks (bench.tokens).
TOKENS_KEY = "tokens"

# The kernel transports the one-core runs compare the ring with.
_ONE_CORE_KERNEL = ("unix", "pipe")


@dataclass(frozen=True)
class Settings:
    """How much to measure.  The defaults are the full run (a few minutes)."""

    repeats: int = 3
    rtt_warmup: int = 2_000
    rtt_iterations: int = 100_000
    rtt_budget: float = 3.0  # seconds of round trips per run, at most
    one_core_iterations: int = 20_000
    one_core_budget: float = 2.0
    sizes: tuple[int, ...] = SIZES
    stream_seconds: float = 0.5  # a streaming run lasts about this long ...
    stream_min_count: int = 100  # ... but times at least this many messages
    stream_max_count: int = 5_000_000
    stream_warmup_bytes: int = 4 << 20  # untimed bytes first (within 20..20,000 messages)
    setup_warmup: int = 300  # untimed connect/accept/close cycles
    setup_seconds: float = 0.5  # a set-up run lasts about this long ...
    setup_min_count: int = 50  # ... but times at least this many connections
    setup_max_count: int = 200_000
    asyncio_warmup: int = 1_000
    asyncio_iterations: int = 30_000
    asyncio_budget: float = 2.0  # seconds of asyncio round trips per run, at most
    # The token benchmarks (bench.tokens, issue 4).
    token_pairs: int = 8  # single owner: (on, off) pairs, alternating in order
    token_rtt_iterations: int = 20_000
    token_rtt_budget: float = 0.5  # seconds of round trips per single-owner run, at most
    token_stream_seconds: float = 0.25  # a single-owner streaming run lasts about this long
    shared_warmup: int = 2_000  # untimed frames per thread in a shared-socket run ...
    shared_seconds: float = 0.5  # ... whose pace sets a timed run of about this long ...
    shared_min_count: int = 200  # ... within these bounds (frames per thread)
    shared_max_count: int = 1_000_000
    takeover_warmup: int = 20  # untimed sends of each sender in a takeover run
    takeover_fast: int = 5_000  # timed fast-path sends (the same thread again)
    takeover_thread: int = 2_000  # timed turns of each of two threads
    takeover_process: int = 300  # timed turns of each of two processes
    # The fork benchmarks (bench.forking, issue 5).
    fork_server_warmup: int = 20  # untimed requests to a ForkingTCPServer ...
    fork_server_seconds: float = 1.0  # ... then requests for about this long
    fork_iterations: int = 30  # fork() runs per kind and connection count
    # The drop-in benchmark (bench.dropin, issue 6).
    dropin_warmup: int = 300  # untimed ping-pong requests to an HTTP server ...
    dropin_requests: int = 5_000  # ... then up to this many timed ...
    dropin_budget: float = 2.0  # ... within this many seconds
    dropin_clients: int = 4  # keep-alive connections of the requests/s run ...
    dropin_rate_warmup: float = 0.2  # ... untimed for this long ...
    dropin_seconds: float = 1.0  # ... then timed for this long
    deadline: float = 120.0  # seconds any single measurement may take
    pin: str = "auto"
    only: tuple[str, ...] = field(default=())  # transport keys to run; empty: all

    def __post_init__(self) -> None:
        """Reject settings that cannot produce a measurement."""
        if self.repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {self.repeats}")
        if self.rtt_iterations < 1 or self.one_core_iterations < 1:
            raise ValueError("round-trip iteration counts must be >= 1")
        if not self.sizes or min(self.sizes) < 1:
            raise ValueError(f"sizes must be positive byte counts, got {self.sizes}")
        if not 1 <= self.stream_min_count <= self.stream_max_count:
            raise ValueError("need 1 <= stream_min_count <= stream_max_count")
        if not 0 < self.stream_seconds <= 60:
            raise ValueError(f"stream_seconds must be in (0, 60], got {self.stream_seconds}")
        if self.setup_warmup < 1 or not 1 <= self.setup_min_count <= self.setup_max_count:
            raise ValueError("need setup_warmup >= 1 and 1 <= setup_min_count <= "
                             "setup_max_count")
        if not 0 < self.setup_seconds <= 60:
            raise ValueError(f"setup_seconds must be in (0, 60], got {self.setup_seconds}")
        if self.asyncio_warmup < 0 or self.asyncio_iterations < 1:
            raise ValueError("need asyncio_warmup >= 0 and asyncio_iterations >= 1")
        self._check_token_settings()

    def _check_token_settings(self) -> None:
        """Reject token-benchmark settings that cannot produce a measurement."""
        if self.token_pairs < 1 or self.token_rtt_iterations < 1:
            raise ValueError("need token_pairs >= 1 and token_rtt_iterations >= 1")
        if not 0 < self.token_stream_seconds <= 60 or not 0 < self.shared_seconds <= 60:
            raise ValueError("token_stream_seconds and shared_seconds must be in (0, 60]")
        if self.shared_warmup < 1 or not 1 <= self.shared_min_count <= self.shared_max_count:
            raise ValueError("need shared_warmup >= 1 and 1 <= shared_min_count <= "
                             "shared_max_count")
        if self.takeover_warmup < 0 or min(self.takeover_fast, self.takeover_thread,
                                           self.takeover_process) < 1:
            raise ValueError("need takeover_warmup >= 0 and takeover_fast, takeover_thread, "
                             "takeover_process >= 1")
        if self.fork_server_warmup < 0 or self.fork_iterations < 1:
            raise ValueError("need fork_server_warmup >= 0 and fork_iterations >= 1")
        if not 0 < self.fork_server_seconds <= 60:
            raise ValueError("fork_server_seconds must be in (0, 60], got "
                             f"{self.fork_server_seconds}")
        if self.dropin_warmup < 0 or self.dropin_requests < 1 or self.dropin_clients < 1:
            raise ValueError("need dropin_warmup >= 0, dropin_requests >= 1, dropin_clients >= 1")
        if not (0 < self.dropin_budget <= 60 and 0 < self.dropin_seconds <= 60
                and 0 <= self.dropin_rate_warmup <= 60):
            raise ValueError("dropin_budget and dropin_seconds must be in (0, 60], "
                             "dropin_rate_warmup in [0, 60]")

    @classmethod
    def quick(cls) -> Settings:
        """Few iterations: seconds instead of minutes, for smoke tests (numbers are rough)."""
        return cls(repeats=2, rtt_warmup=300, rtt_iterations=3_000, rtt_budget=0.5,
                   one_core_iterations=1_000, one_core_budget=0.5,
                   stream_seconds=0.05, stream_min_count=20, stream_warmup_bytes=1 << 20,
                   setup_warmup=30, setup_seconds=0.1, setup_min_count=20,
                   asyncio_warmup=100, asyncio_iterations=2_000, asyncio_budget=0.3,
                   token_pairs=2, token_rtt_iterations=2_000, token_rtt_budget=0.2,
                   token_stream_seconds=0.05, shared_warmup=300, shared_seconds=0.05,
                   shared_min_count=50, takeover_warmup=5, takeover_fast=500,
                   takeover_thread=200, takeover_process=50, fork_server_warmup=3,
                   fork_server_seconds=0.1, fork_iterations=3, dropin_warmup=50,
                   dropin_requests=500, dropin_budget=0.3, dropin_rate_warmup=0.05,
                   dropin_seconds=0.2, deadline=60.0)

    def runs_tokens(self) -> bool:
        """Whether the token benchmarks are part of the run (--only names them, or all)."""
        return not self.only or TOKENS_KEY in self.only

    def runs_fork(self) -> bool:
        """Whether the fork benchmarks are part of the run (--only names them, or all)."""
        return not self.only or forking.FORK_KEY in self.only

    def runs_dropin(self) -> bool:
        """Whether the drop-in benchmark is part of the run (--only names it, or all)."""
        return not self.only or dropin.DROPIN_KEY in self.only

    def stream_warmup(self, size: int) -> int:
        """Return how many untimed messages of *size* bytes go first."""
        return max(20, min(20_000, self.stream_warmup_bytes // size))


def _summarise_stream(size: int, runs: list[tuple[int, int]]) -> dict[str, object]:
    """Turn the (messages, elapsed ns) of the repeats into msg/s and GB/s, median of repeats."""
    rates = [count / ns * 1e9 for count, ns in runs]
    middle = statistics.median(rates)
    return {
        "size": size,
        "counts": [count for count, _ in runs],
        "msgs_per_s": middle,
        "gb_per_s": middle * size / 1e9,
        "repeat_msgs_per_s": rates,
        "repeat_gb_per_s": [rate * size / 1e9 for rate in rates],
    }


def _summarise_setup(runs: list[tuple[int, int]]) -> dict[str, object]:
    """Turn the (connections, elapsed ns) of the repeats into connections/s, median of repeats."""
    rates = [count / ns * 1e9 for count, ns in runs]
    middle = statistics.median(rates)
    return {
        "counts": [count for count, _ in runs],
        "per_s": middle,
        "us_per_connection": 1e6 / middle,
        "repeat_per_s": rates,
    }


# name, what is measured, target, how the measured value is compared.
GOALS = (
    ("rtt_vs_tcp", "Round trip ≤ 1/12 of TCP loopback's", "≥ 12× faster", 12.0),
    ("rtt_vs_unix", "Round trip ≤ 1/8 of a Unix socket's", "≥ 8× faster", 8.0),
    ("msgs_64", "Streaming 64 B messages", "≥ 1.2 M msg/s", 1.2e6),
    ("tput_16k_vs_tcp", "Streaming 16 KiB against TCP loopback", "≥ 6× TCP's GB/s", 6.0),
    ("one_core_p99", "Both on one core: round-trip p99", "< 100 µs", 100.0),
)

# The goals of the socket API (issue 3), judged on the impl.socket transport
# against the kernel's sockets measured in the same run.  Every value is a
# ratio "how many times better than the kernel", so each passes at >= bound.
SOCKET_GOALS = (
    ("sock_rtt_vs_tcp", "Socket API round trip ≤ 1/10 of TCP loopback's",
     "≥ 10× faster", 10.0),
    ("sock_rtt_vs_unix", "Socket API round trip ≤ 1/7 of a Unix socket's",
     "≥ 7× faster", 7.0),
    ("sock_64_vs_tcp", "Socket API streaming 64 B against TCP loopback",
     "≥ 5× TCP's msg/s", 5.0),
    ("sock_16k_vs_tcp", "Socket API streaming 16 KiB against TCP loopback",
     "≥ 5× TCP's msg/s", 5.0),
    ("setup_vs_tcp", "Connection set-up rate (connect + accept + close) against TCP loopback",
     "≥ 1× TCP's rate", 1.0),
    ("asyncio_vs_tcp", "asyncio echo round trip: ring-first selector on rings against the "
     "stock loop on TCP", "≥ 2× faster", 2.0),
)


def _goal_value(goal: str, key: str, results: dict) -> float | None:
    """Return the measured value of *goal* for transport *key*, or None if not measured."""
    rtt, tput, one = results["latency"], results["throughput"], results["one_core"]["latency"]
    try:
        if goal == "rtt_vs_tcp":
            return rtt["tcp"]["median_us"] / rtt[key]["median_us"]
        if goal == "rtt_vs_unix":
            return rtt["unix"]["median_us"] / rtt[key]["median_us"]
        if goal == "msgs_64":
            return tput[key]["64"]["msgs_per_s"]
        if goal == "tput_16k_vs_tcp":
            return tput[key]["16384"]["gb_per_s"] / tput["tcp"]["16384"]["gb_per_s"]
        if goal == "one_core_p99":
            return one[key]["p99_us"]
        return _socket_goal_value(goal, key, results)
    except (KeyError, ZeroDivisionError):
        return None


def _socket_goal_value(goal: str, key: str, results: dict) -> float | None:
    """The value of a socket-API goal: how many times better than the kernel (KeyError: none)."""
    rtt, tput = results["latency"], results["throughput"]
    if goal == "sock_rtt_vs_tcp":
        return rtt["tcp"]["median_us"] / rtt[key]["median_us"]
    if goal == "sock_rtt_vs_unix":
        return rtt["unix"]["median_us"] / rtt[key]["median_us"]
    if goal in ("sock_64_vs_tcp", "sock_16k_vs_tcp"):
        size = "64" if goal == "sock_64_vs_tcp" else "16384"
        return tput[key][size]["msgs_per_s"] / tput["tcp"][size]["msgs_per_s"]
    if goal == "setup_vs_tcp":
        rates = results["setup"]["rates"]
        return rates["setup-ring"]["per_s"] / rates["setup-tcp"]["per_s"]
    if goal == "asyncio_vs_tcp":
        lat = results["asyncio"]["latency"]
        return lat["asyncio-tcp"]["median_us"] / lat[ASYNCIO_RING_SELECTOR]["median_us"]
    raise ValueError(f"unknown goal {goal!r}")


def evaluate_goals(results: dict) -> list[dict[str, object]]:
    """Judge every goal: the ring goals for each ring backend, the socket goals for impl.socket.

    Each verdict has the value and pass (True), fail (False) or not
    measured (None), and its group: "ring" or "socket".
    """
    keys = [t["key"] for t in results["transports"] if not t["kernel"]]
    plan = [(goal, key, "ring") for goal in GOALS for key in keys if key != SOCKET_KEY]
    if SOCKET_KEY in keys:
        plan += [(goal, SOCKET_KEY, "socket") for goal in SOCKET_GOALS]
    verdicts = []
    for (name, what, target, bound), key, group in plan:
        value = _goal_value(name, key, results)
        if value is None:
            passed = None
        elif name == "one_core_p99":
            passed = value < bound
        else:
            passed = value >= bound
        verdicts.append({"goal": name, "what": what, "target": target, "bound": bound,
                         "transport": key, "group": group, "value": value,
                         "passed": passed})
    return verdicts


class _Runner:
    """Runs measurements, drops a transport after its first failure, and logs progress."""

    def __init__(self, log: Callable[[str], None]) -> None:
        self.log = log
        self.failed: dict[str, str] = {}

    def attempt(self, transport: Transport, what: str, run: Callable[[], object]) -> object:
        """Run one measurement; on failure record why and return None."""
        if transport.key in self.failed:
            return None
        started = time.monotonic()
        try:
            value = run()
        except (OSError, EOFError, ValueError) as exc:
            self.failed[transport.key] = f"{what}: {type(exc).__name__}: {exc}"
            self.log(f"  {transport.key:<10} {what}: FAILED ({exc}); dropped from the run")
            return None
        self.log(f"  {transport.key:<10} {what} ({time.monotonic() - started:.1f} s)")
        return value


def all_transports() -> tuple[list[Transport], dict[str, str]]:
    """Return every transport of the round-trip and streaming tables, and why some are not.

    The rings first, then impl.socket (which needs the monitor that
    :func:`run_suite` starts), then the kernel's.
    """
    transports, skipped = available_transports()
    socket_api, not_here = sockets.socket_transports()
    skipped.update(not_here)
    rings = [t for t in transports if not t.kernel]
    kernel = [t for t in transports if t.kernel]
    return rings + socket_api + kernel, skipped


# The transport each set-up case and asyncio variant belongs to, for --only.
_OWNER = {"ring": SOCKET_KEY, "tcp": "tcp", "unix": "unix"}


def _as_transport(key: str, label: str, kind: str) -> Transport:
    """A Transport that only names a set-up case or asyncio variant for the runner."""

    def not_openable(same_cpu: bool) -> object:
        raise NotImplementedError(f"{key} is opened by bench.sockets")

    return Transport(key, label, kind != "ring", not_openable)


def _socket_api_plan(selected: set[str], skipped: dict[str, str]) -> tuple[list, list]:
    """Return the set-up cases and asyncio variants to run; note the unavailable ones."""
    cases = [c for c in sockets.setup_cases() if _OWNER[c.kind] in selected]
    variants, not_here = sockets.asyncio_variants()
    variants = [v for v in variants if _OWNER[v.kind] in selected]
    if SOCKET_KEY in selected:
        skipped.update(not_here)
    return cases, variants


def run_suite(settings: Settings | None = None,
              log: Callable[[str], None] = print) -> dict[str, object]:
    """Measure every transport side by side and return the results as JSON-ready data."""
    settings = settings or Settings()
    transports, skipped = all_transports()
    if settings.only:
        transports = [t for t in transports if t.key in settings.only]
    # The token benchmarks share sockets through impl.socket: they need it too.
    token_part = settings.runs_tokens()
    if token_part and SOCKET_KEY in skipped:
        skipped[TOKENS_KEY] = skipped[SOCKET_KEY]
        token_part = False
    fork_part = settings.runs_fork()
    if fork_part and SOCKET_KEY in skipped:
        skipped[forking.FORK_KEY] = skipped[SOCKET_KEY]
        fork_part = False
    with contextlib.ExitStack() as stack:
        monitor = None
        if token_part or fork_part or any(t.key == SOCKET_KEY for t in transports):
            try:
                monitor = stack.enter_context(sockets.private_monitor())
            except sockets.MonitorUnavailable as exc:
                # No monitor, no socket API: the rest of the run still means something.
                skipped[SOCKET_KEY] = str(exc)
                transports = [t for t in transports if t.key != SOCKET_KEY]
                if token_part:
                    skipped[TOKENS_KEY] = str(exc)
                    token_part = False
                if fork_part:
                    skipped[forking.FORK_KEY] = str(exc)
                    fork_part = False
        return _run(settings, transports, skipped, monitor, log, token_part, fork_part)


def _run(settings: Settings, transports: list[Transport], skipped: dict[str, str],
         monitor: sockets.MonitorHandle | None, log: Callable[[str], None],
         token_part: bool = False, fork_part: bool = False) -> dict[str, object]:
    """The run proper, with the monitor (if any) already started."""
    started = time.monotonic()
    info = machine.machine_info()
    info["glibc_tunables"] = os.environ.get("GLIBC_TUNABLES", "")
    log("probing glibc memcpy at the alignment trap ...")
    probe = machine.memcpy_probe()
    plan = machine.plan_pinning(settings.pin)
    log(f"{'pinned' if plan.pinned else 'not pinned'}: {plan.reason}")
    for key, reason in skipped.items():
        log(f"skipped {key}: {reason}")
    cases, variants = _socket_api_plan({t.key for t in transports}, skipped)
    two = Placement(plan.parent_cpu, plan.child_cpu)
    one = Placement(plan.one_core_cpu, plan.one_core_cpu)
    one_core = [t for t in transports if not t.kernel or t.key in _ONE_CORE_KERNEL]
    runner = _Runner(log)
    s = settings
    rtt_runs: dict[str, list[list[int]]] = {t.key: [] for t in transports}
    one_runs: dict[str, list[list[int]]] = {t.key: [] for t in one_core}
    stream_runs: dict[str, dict[int, list[tuple[int, int]]]] = {
        t.key: {size: [] for size in s.sizes} for t in transports}
    setup_runs: dict[str, list[tuple[int, int]]] = {c.key: [] for c in cases}
    asyncio_runs: dict[str, list[list[int]]] = {v.key: [] for v in variants}

    for rep in range(1, s.repeats + 1):
        log(f"repeat {rep}/{s.repeats}: round trips, 8 B")
        for t in transports:
            got = runner.attempt(t, "round trips", lambda t=t: round_trips(
                t, two, warmup=s.rtt_warmup, iterations=s.rtt_iterations,
                budget=s.rtt_budget, seconds=s.deadline))
            if got is not None:
                rtt_runs[t.key].append(got)
        for size in s.sizes:
            log(f"repeat {rep}/{s.repeats}: streaming {size} B messages")
            for t in transports:
                got = runner.attempt(t, f"stream {size} B", lambda t=t, size=size: stream(
                    t, two, size=size, warmup=s.stream_warmup(size), target=s.stream_seconds,
                    min_count=s.stream_min_count, max_count=s.stream_max_count,
                    seconds=s.deadline))
                if got is not None:
                    stream_runs[t.key][size].append(got)
        log(f"repeat {rep}/{s.repeats}: round trips with both processes on CPU "
            f"{plan.one_core_cpu}")
        for t in one_core:
            got = runner.attempt(t, "one-core round trips", lambda t=t: round_trips(
                t, one, warmup=min(s.rtt_warmup, s.one_core_iterations),
                iterations=s.one_core_iterations, budget=s.one_core_budget,
                seconds=s.deadline))
            if got is not None:
                one_runs[t.key].append(got)
        _socket_api_repeat(rep, s, two, cases, variants, setup_runs, asyncio_runs, runner)

    token_results = {}
    if token_part:
        token_results = tokens.run_tokens(s, two, functools.partial(_attempt_named, runner),
                                          log)
    fork_results = {}
    if fork_part:
        fork_results = forking.run_forking(s, two, functools.partial(_attempt_named, runner),
                                           log)
    dropin_results = {}
    if s.runs_dropin():
        dropin_results = dropin.run_dropin(s, two, functools.partial(_attempt_named, runner),
                                           log, skipped)

    # A transport that failed once is reported as failed, not with partial data.
    ok = [t for t in transports if t.key not in runner.failed]
    results: dict[str, object] = {
        "schema": 3,
        "machine": info,
        "settings": asdict(s),
        "pinning": plan.as_dict(),
        "memcpy_probe": probe,
        "ring": ring_settings(),
        "transports": [{"key": t.key, "label": t.label, "kernel": t.kernel} for t in ok],
        "skipped": skipped,
        "failed": runner.failed,
        "latency": {t.key: _summarise_rtt(rtt_runs[t.key]) for t in ok},
        "throughput": {
            t.key: {str(size): _summarise_stream(size, stream_runs[t.key][size])
                    for size in s.sizes}
            for t in ok},
        "one_core": {
            "cpu": plan.one_core_cpu,
            "latency": {t.key: _summarise_rtt(one_runs[t.key])
                        for t in one_core if t.key not in runner.failed},
        },
        "setup": {
            "cases": [{"key": c.key, "label": c.label, "kind": c.kind} for c in cases
                      if c.key not in runner.failed],
            "rates": {c.key: _summarise_setup(setup_runs[c.key]) for c in cases
                      if c.key not in runner.failed},
        },
        "asyncio": {
            "ring_loop": sockets.ring_loop_factory()[1],
            "variants": [{"key": v.key, "label": v.label, "kind": v.kind} for v in variants
                         if v.key not in runner.failed],
            "latency": {v.key: _summarise_rtt(asyncio_runs[v.key]) for v in variants
                        if v.key not in runner.failed},
        },
        "tokens": token_results,
        "fork": fork_results,
        "dropin": dropin_results,
        "monitor": _monitor_counters(monitor),
    }
    results["goals"] = evaluate_goals(results)
    info["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    results["duration_s"] = round(time.monotonic() - started, 1)
    return results


def _attempt_named(runner: _Runner, key: str, what: str, run: Callable[[], object]) -> object:
    """runner.attempt for a measurement that has a key but no transport (bench.tokens)."""
    return runner.attempt(_as_transport(key, key, "ring"), what, run)


def _socket_api_repeat(rep: int, s: Settings, two: Placement, cases: list, variants: list,
                       setup_runs: dict, asyncio_runs: dict, runner: _Runner) -> None:
    """One repeat of the socket API's own measurements: set-up rate, then asyncio echo."""
    if cases:
        runner.log(f"repeat {rep}/{s.repeats}: connection set-up (connect + accept + close)")
    for c in cases:
        got = runner.attempt(_as_transport(c.key, c.label, c.kind), "set-up rate",
                             lambda c=c: sockets.setup_rate(
                                 c, two, warmup=s.setup_warmup, target=s.setup_seconds,
                                 min_count=s.setup_min_count, max_count=s.setup_max_count,
                                 seconds=s.deadline))
        if got is not None:
            setup_runs[c.key].append(got)
    if variants:
        runner.log(f"repeat {rep}/{s.repeats}: asyncio echo ping-pong, 8 B")
    for v in variants:
        got = runner.attempt(_as_transport(v.key, v.label, v.kind), "asyncio round trips",
                             lambda v=v: sockets.asyncio_round_trips(
                                 v, two, warmup=s.asyncio_warmup,
                                 iterations=s.asyncio_iterations, budget=s.asyncio_budget,
                                 seconds=s.deadline))
        if got is not None:
            asyncio_runs[v.key].append(got)


def _monitor_counters(monitor: sockets.MonitorHandle | None) -> dict[str, object]:
    """The monitor's counters at the end of the run (proof that no connection fell back)."""
    if monitor is None:
        return {}
    from impl.monitor.server import DEFAULT_BUF  # the ring size a connection gets by default

    try:
        return {"counters": monitor.status()["counters"], "ring_bytes": DEFAULT_BUF}
    except (OSError, KeyError) as exc:
        return {"error": f"{type(exc).__name__}: {exc}", "ring_bytes": DEFAULT_BUF}
