"""Drop-in benchmark (issue 6): unmodified HTTP servers under ``python -m impl.run`` vs plain.

The paper's Nginx experiment, in Python.  Two unmodified stdlib servers
from tests/dropin_targets (the programs tests/test_dropin_programs.py shows
to run over rings):

* ``http.server``: ``ThreadingHTTPServer`` with a ``SimpleHTTPRequestHandler``
  subclass speaking HTTP/1.1 keep-alive, with TCP_NODELAY on its connections
  (``disable_nagle_algorithm``) and without per-request log lines;
* ``asyncio``: a minimal HTTP/1.1 keep-alive server on asyncio protocols
  (tests/dropin_targets/aio_http.py).

Each answers ``GET /hello`` with a 14-byte body.  The client is another
unmodified program, tests/dropin_targets/http_load.py, on plain sockets:
one keep-alive connection doing request/response ping-pong, each request
timed (latency), then a few keep-alive connections with one request
outstanding each (requests/s).  Every response is checked.

Each server runs twice per repeat: under the runner (``python -m impl.run``,
server and client, so both ends are patched) and plain (``python``, kernel
TCP loopback); the order alternates between repeats.  The server is pinned
to the suite's child CPU and the client to its parent CPU (when the suite
pins at all).  A private monitor serves the runner's processes; its counters
prove that every connection of a runner measurement was a ring one and that
none fell back to the kernel, and the programs report each connection's
transport.

:func:`run_dropin` returns JSON-ready data; :func:`summary_lines` and
:func:`markdown_section` turn it into the command's summary and bench.md's
section.
"""

from __future__ import annotations

import errno
import json
import os
import select
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from bench.measure import Placement
from bench.stats import summarise_latency

if TYPE_CHECKING:
    from bench.suite import Settings

__all__ = ["DROPIN_KEY", "GOAL_RATIO", "MODES", "SERVERS", "markdown_section",
           "measure", "run_dropin", "summary_lines"]

#: The --only key of the drop-in benchmark.
DROPIN_KEY = "dropin"
#: The goal: plain median / runner median of the asyncio server's request latency.
GOAL_RATIO = 1.5
#: The server the goal is judged on.
GOAL_SERVER = "asyncio"
ROOT = Path(__file__).resolve().parent.parent
TARGETS = ROOT / "tests" / "dropin_targets"
#: server key -> (label, program, its arguments)
SERVERS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "http.server": ("http.server ThreadingHTTPServer", "http_server.py",
                    ("--quiet", "--nodelay")),
    "asyncio": ("asyncio protocol server", "aio_http.py", ()),
}
#: "runner": python -m impl.run (rings); "plain": python (kernel TCP loopback).
MODES = ("runner", "plain")
CLIENT = "http_load.py"
# Bound on a server announcing its port, and on its stopping.
_START_WAIT = 30.0

Attempt = Callable[[str, str, Callable[[], object]], object]


def _command(program: str, args: list[str], mode: str) -> list[str]:
    """The command line running *program* in *mode*."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    target = [str(TARGETS / program), *args]
    return [sys.executable, "-m", "impl.run", *target] if mode == "runner" \
        else [sys.executable, *target]


def _env() -> dict[str, str]:
    """The programs' environment: impl importable; never patched by a sitecustomize."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("SOCKSDIRECT_PATCH", None)
    return env


def _pinned(cpu: int | None) -> Callable[[], None] | None:
    """A preexec_fn pinning the program (all its threads to come) to *cpu*."""
    if cpu is None:
        return None
    return lambda: os.sched_setaffinity(0, {cpu})


def _json_report(text: str, what: str) -> dict:
    """The last stdout line of a program, as JSON."""
    lines = text.strip().splitlines()
    if not lines:
        raise ValueError(f"{what}: no report")
    try:
        return json.loads(lines[-1])
    except json.JSONDecodeError:
        raise ValueError(f"{what}: not a JSON report: {lines[-1][:200]!r}") from None


class _Server:
    """A server program: started pinned, its port read (bounded), stopped by EOF on stdin."""

    def __init__(self, key: str, mode: str, cpu: int | None) -> None:
        _, program, args = SERVERS[key]
        self.what = f"{key} server ({mode})"
        self.proc = subprocess.Popen(_command(program, list(args), mode),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=_env(), cwd=str(ROOT),
                                     preexec_fn=_pinned(cpu))
        try:
            self.port = int(self._hello()["port"])
        except BaseException:
            self.kill()
            raise

    def _hello(self) -> dict:
        fd = self.proc.stdout.fileno()
        if not select.select([fd], [], [], _START_WAIT)[0]:
            raise TimeoutError(errno.ETIMEDOUT, f"{self.what}: no port within {_START_WAIT} s")
        line = self.proc.stdout.readline().decode(errors="replace")
        if not line:
            raise ChildProcessError(errno.ECHILD, f"{self.what} exited: {self._stderr()}")
        return _json_report(line, self.what)

    def _stderr(self) -> str:
        try:
            return self.proc.communicate(timeout=_START_WAIT)[1].decode(errors="replace")[-2000:]
        except (subprocess.TimeoutExpired, ValueError):
            return ""

    def kill(self) -> None:
        """Stop it at once (after a failure)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate(timeout=_START_WAIT)

    def stop(self) -> dict:
        """Close its stdin (it shuts down); return its report."""
        try:
            out, err = self.proc.communicate(timeout=_START_WAIT)
        except subprocess.TimeoutExpired:
            self.kill()
            raise TimeoutError(errno.ETIMEDOUT, f"{self.what} did not stop") from None
        if self.proc.returncode != 0:
            raise ChildProcessError(errno.ECHILD, f"{self.what} exited with "
                                    f"{self.proc.returncode}: {err.decode()[-2000:]}")
        return _json_report(out.decode(), self.what)


def _client(port: int, mode: str, cpu: int | None, args: list[str], deadline: float) -> dict:
    """Run the load client to its end (bounded by *deadline* s); return its report."""
    try:
        done = subprocess.run(_command(CLIENT, [str(port), *args], mode), capture_output=True,
                              text=True, timeout=deadline, env=_env(), cwd=str(ROOT),
                              preexec_fn=_pinned(cpu))
    except subprocess.TimeoutExpired:
        raise TimeoutError(errno.ETIMEDOUT, f"the {mode} client took longer than "
                           f"{deadline:g} s") from None
    if done.returncode != 0:
        raise ValueError(f"the {mode} client failed ({done.returncode}): {done.stderr[-2000:]}")
    return _json_report(done.stdout, f"{mode} client")


def _expect_transports(mode: str, seen: list[str], what: str) -> None:
    """Runner: every connection a ring one; plain: every one the stdlib's (raise ValueError)."""
    want = "ring" if mode == "runner" else "stdlib"
    if not seen or any(t != want for t in seen):
        raise ValueError(f"{what} ({mode}): connections over {sorted(set(seen))}, not {want}")


def measure(key: str, mode: str, placement: Placement, *, warmup: int, requests: int,
            budget: float, clients: int, rate_warmup: float, seconds: float,
            deadline: float, counters: Callable[[], dict] | None = None) -> dict[str, object]:
    """Latency and requests/s of server *key* in *mode*; return samples, rate and proofs.

    Returns ``{"samples": [ns, ...], "requests": n, "ns": t, "connections": k}``;
    raises ValueError when a response was wrong or a connection was not
    carried as *mode* promises.  *counters* returns the monitor's counters:
    in runner mode the ring connections must rise by exactly the client's
    connections, with no kernel fallback; in plain mode not at all.
    """
    if key not in SERVERS:
        raise ValueError(f"server must be one of {sorted(SERVERS)}, got {key!r}")
    if warmup < 0 or requests < 1 or clients < 1 or not budget > 0 or not seconds > 0 \
            or rate_warmup < 0:
        raise ValueError("need warmup >= 0, requests >= 1, clients >= 1, budget > 0, "
                         f"seconds > 0, rate_warmup >= 0; got {warmup}, {requests}, {clients}, "
                         f"{budget}, {seconds}, {rate_warmup}")
    before = counters() if counters else None
    server = _Server(key, mode, placement.child_cpu)
    try:
        got = _client(server.port, mode, placement.parent_cpu,
                      ["pingpong", str(warmup), str(requests), str(budget),
                       "rate", str(clients), str(rate_warmup), str(seconds)], deadline)
    except BaseException:
        server.kill()
        raise
    report = server.stop()
    ping, rate = got["pingpong"], got["rate"]
    made = 1 + clients
    _expect_transports(mode, report["transports"], f"{key} server")
    _expect_transports(mode, [ping["transport"], *rate["transports"]], f"{key} client")
    if len(report["transports"]) != made:
        raise ValueError(f"{key} ({mode}): the server accepted {len(report['transports'])} "
                         f"connections, the client made {made}")
    if counters is not None:
        after = counters()
        rings = after["connections"] - before["connections"]
        fallbacks = after["kernel_fallbacks"] - before["kernel_fallbacks"]
        if fallbacks or rings != (made if mode == "runner" else 0):
            raise ValueError(f"{key} ({mode}): the monitor set up {rings} ring connections "
                             f"and sent {fallbacks} to the kernel for {made} connections")
    if not ping["samples"]:
        raise ValueError(f"{key} ({mode}): the time budget ran out during warm-up")
    return {"samples": ping["samples"], "requests": rate["requests"], "ns": rate["ns"],
            "connections": made}


def _order(rep: int) -> tuple[str, ...]:
    """Runner first in odd repeats, plain first in even ones (a drift cancels out)."""
    return MODES if rep % 2 else MODES[::-1]


def run_dropin(s: Settings, two: Placement, attempt: Attempt,
               log: Callable[[str], None], skipped: dict[str, str] | None = None
               ) -> dict[str, object]:
    """Run the drop-in benchmark; return it as JSON-ready data ({} if it could not run).

    *attempt(key, what, run)* runs one measurement and returns its value, or
    None after a failure.  A private monitor of its own serves the runner's
    programs (so the suite's monitor counts none of them); if it cannot start,
    *skipped* gets the reason and nothing is measured.
    """
    from bench import sockets

    started = time.monotonic()
    runs: dict[str, dict[str, list]] = {k: {m: [] for m in MODES} for k in SERVERS}
    rates: dict[str, dict[str, list[float]]] = {k: {m: [] for m in MODES} for k in SERVERS}
    try:
        with sockets.private_monitor() as monitor:
            counters = lambda: monitor.status()["counters"]  # noqa: E731
            for rep in range(1, s.repeats + 1):
                for key in SERVERS:
                    log(f"dropin: repeat {rep}/{s.repeats}: {key} server, runner and plain")
                    for mode in _order(rep):
                        got = attempt(f"dropin-{key}-{mode}", f"{key} {mode}", lambda k=key, m=mode:
                                      measure(k, m, two, warmup=s.dropin_warmup,
                                              requests=s.dropin_requests,
                                              budget=s.dropin_budget,
                                              clients=s.dropin_clients,
                                              rate_warmup=s.dropin_rate_warmup,
                                              seconds=s.dropin_seconds,
                                              deadline=s.deadline, counters=counters))
                        if got is not None:
                            runs[key][mode].append(got["samples"])
                            rates[key][mode].append(got["requests"] / got["ns"] * 1e9)
            final = counters()
    except sockets.MonitorUnavailable as exc:
        if skipped is not None:
            skipped[DROPIN_KEY] = str(exc)
        return {}
    return _results(runs, rates, two, final, time.monotonic() - started)


def _results(runs: dict, rates: dict, two: Placement, counters: dict,
             duration: float) -> dict[str, object]:
    """Summaries, ratios and the goal from the raw samples."""
    servers: dict[str, object] = {}
    for key, (label, program, args) in SERVERS.items():
        modes = {}
        for mode in MODES:
            if runs[key][mode]:
                summary = summarise_latency(runs[key][mode])
                summary["per_s"] = statistics.median(rates[key][mode])
                summary["repeat_per_s"] = rates[key][mode]
                modes[mode] = summary
        ratios = {}
        if len(modes) == len(MODES):
            run, plain = modes["runner"], modes["plain"]
            ratios = {"median": plain["median_us"] / run["median_us"],
                      "p99": plain["p99_us"] / run["p99_us"],
                      "per_s": run["per_s"] / plain["per_s"]}
        servers[key] = {"label": label, "program": f"tests/dropin_targets/{program}",
                        "args": list(args), "modes": modes, "ratios": ratios}
    value = servers[GOAL_SERVER]["ratios"].get("median")
    goal = {"what": f"{SERVERS[GOAL_SERVER][0]}: median request latency, plain / under the "
                    "runner", "target": f"≥ {GOAL_RATIO}× lower", "bound": GOAL_RATIO,
            "server": GOAL_SERVER, "value": value,
            "passed": None if value is None else value >= GOAL_RATIO}
    return {"servers": servers, "goals": [goal],
            "pinned": {"server_cpu": two.child_cpu, "client_cpu": two.parent_cpu},
            "monitor": counters, "duration_s": round(duration, 1)}


# -- reporting -----------------------------------------------------------------------------


def summary_lines(dropin: dict) -> list[str]:
    """Headline lines for the command's summary."""
    if not dropin:
        return []
    lines = ["", "dropin: unmodified HTTP servers, plain / under the runner "
             "(median µs, p99 µs, requests/s):"]
    for key, server in dropin["servers"].items():
        for mode in MODES:
            r = server["modes"].get(mode)
            if r is not None:
                lines.append(f"  {key:<12} {mode:<7} {r['median_us']:8.1f} {r['p99_us']:8.1f} "
                             f"{r['per_s']:10,.0f}")
        if server["ratios"]:
            lines.append(f"  {key:<12} median {server['ratios']['median']:.2f}x lower under "
                         f"the runner, {server['ratios']['per_s']:.2f}x the requests/s")
    for g in dropin["goals"]:
        verdict = {True: "pass", False: "FAIL", None: "not measured"}[g["passed"]]
        value = "-" if g["value"] is None else f"{g['value']:.3g}"
        lines.append(f"  goal: {verdict}: {g['what']} ({g['target']}): {value}")
    return lines


def markdown_section(results: dict) -> list[str]:
    """bench.md's "Drop-in" section (issue 6), or why it was not measured."""
    # Late: bench.report imports this module.
    from bench.report import _failed_lines, _spread, _table, _us

    dropin = results.get("dropin") or {}
    if not dropin:
        why = results["skipped"].get(DROPIN_KEY)
        return ["## Drop-in: unmodified HTTP servers", "", f"Not measured: {why}.", ""] \
            if why else []
    s = results["settings"]
    pinned = dropin["pinned"]
    where = (f"the server pinned to CPU {pinned['server_cpu']}, the client to CPU "
             f"{pinned['client_cpu']} (`os.sched_setaffinity`)"
             if pinned["server_cpu"] is not None else
             "not pinned (the suite found no two free CPUs; see Method)")
    lines = [
        "## Drop-in: unmodified HTTP servers", "",
        "Issue 6: the paper's Nginx experiment in Python ([drop-in.md](drop-in.md)). Two "
        "unmodified stdlib servers answer `GET /hello` with a 14-byte body over HTTP/1.1 "
        "keep-alive: `http.server`'s ThreadingHTTPServer (a SimpleHTTPRequestHandler subclass, "
        "TCP_NODELAY on, no request log) and a minimal asyncio server on protocols "
        "(`tests/dropin_targets/`). Each runs under the runner (`python -m impl.run`, client "
        "too: rings) and plain (`python`: kernel TCP loopback), the order alternating per "
        f"repeat; {where}. The client, another stdlib program on plain sockets, first does "
        f"request/response ping-pong on one keep-alive connection ({s['dropin_warmup']:,} "
        f"untimed, then up to {s['dropin_requests']:,} timed requests, at most "
        f"{s['dropin_budget']:g} s), then keeps {s['dropin_clients']} connections busy with "
        f"one request outstanding each for {s['dropin_seconds']:g} s (after "
        f"{s['dropin_rate_warmup']:g} s untimed) for requests/s. Every response is checked; "
        "every runner connection was a ring one by the programs' own report and the "
        "monitor's count, none fell back to the kernel. The part took "
        f"{dropin['duration_s']} s.", ""]
    lines += _failed_lines(results, "dropin-")
    rows = []
    for server in dropin["servers"].values():
        for mode, how in (("runner", "runner (rings)"), ("plain", "plain (TCP loopback)")):
            r = server["modes"].get(mode)
            if r is not None:
                rows.append([f"{server['label']}, {how}", _us(r["median_us"]), _us(r["p99_us"]),
                             _spread(r["repeat_median_us"], _us), f"{r['samples']:,}",
                             f"{r['per_s']:,.0f}",
                             _spread(r["repeat_per_s"], lambda v: f"{v:,.0f}")])
    lines += [*_table(["server, mode", "median µs", "p99 µs", "spread of medians µs",
                       "requests timed", f"requests/s ({s['dropin_clients']} connections)",
                       "spread of repeats /s"], rows), ""]
    ratio_rows = []
    for server in dropin["servers"].values():
        r = server["ratios"]
        if r:
            ratio_rows.append([server["label"], f"{r['median']:.2f}×", f"{r['p99']:.2f}×",
                               f"{r['per_s']:.2f}×"])
    if ratio_rows:
        lines += ["Ratios (plain / runner for latency: above 1 means lower under the runner; "
                  "runner / plain for requests/s):", "",
                  *_table(["server", "median latency", "p99 latency", "requests/s"],
                          ratio_rows), ""]
    goal_rows = []
    for g in dropin["goals"]:
        verdict = {True: "**pass**", False: "**FAIL**", None: "not measured"}[g["passed"]]
        goal_rows.append([g["what"], g["target"],
                          "-" if g["value"] is None else f"{g['value']:.2f}×", verdict])
    lines += [*_table(["goal", "target", "measured", "result"], goal_rows), ""]
    return lines
