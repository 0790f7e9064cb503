"""Write the results of a run: ``bench.json``, ``bench.md`` and the figures under ``img/``.

The markdown page is generated, never edited by hand: it gives the
machine, the method, every number in absolute terms and as a ratio against
each kernel transport, and a pass/fail line per goal.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from bench import dropin, plots
from bench.machine import GLIBC_TUNABLE
from bench.sockets import ASYNCIO_RING_SELECTOR, SOCKET_KEY
from bench.transports import RING_CAPACITY

__all__ = ["render_markdown", "write_report"]

LATENCY_PNG = "img/bench-latency.png"
THROUGHPUT_PNG = "img/bench-throughput.png"
SOCKET_PNG = "img/bench-socket.png"
TOKENS_PNG = "img/bench-tokens.png"


# -- formatting ---------------------------------------------------------------------------


def _size(n: int) -> str:
    """64 -> '64 B', 16384 -> '16 KiB'."""
    for unit, scale in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale} {unit}"
    return f"{n} B"


def _us(x: float) -> str:
    """Microseconds with three significant digits."""
    return f"{x:.3g}" if x < 1000 else f"{x:,.0f}"


def _rate(x: float) -> str:
    """Messages per second: 1234567 -> '1.23 M'."""
    if x >= 1e6:
        return f"{x / 1e6:.2f} M"
    if x >= 1e3:
        return f"{x / 1e3:.0f} k"
    return f"{x:.0f}"


def _gbs(x: float) -> str:
    """GB/s with three significant digits."""
    return f"{x:.3g}"


def _spread(values: Sequence[float], fmt) -> str:
    """'lo-hi' of the repeats, or '-' for a single repeat."""
    if len(values) < 2:
        return "-"
    return f"{fmt(min(values))}–{fmt(max(values))}"


def _ratio(x: float | None) -> str:
    """A ratio such as '12.3x'; '-' when not measured."""
    return "-" if x is None else f"{x:.2g}×" if x < 10 else f"{x:.0f}×"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]],
           numeric: bool = True) -> list[str]:
    """A GitHub markdown table: the first column left-aligned, the others right if *numeric*."""
    rest = "---:" if numeric else ":---"
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join([":---"] + [rest] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _failed_lines(results: dict, prefix: str) -> list[str]:
    """The section's line naming the measurements (keys starting *prefix*) that failed."""
    failed = {k: v for k, v in results["failed"].items() if k.startswith(prefix)}
    if not failed:
        return []
    return ["Failed and left out: " + "; ".join(f"`{k}`: {v}" for k, v in failed.items())
            + ".", ""]


# -- sections -----------------------------------------------------------------------------


def _labels(results: dict) -> dict[str, str]:
    return {t["key"]: t["label"] for t in results["transports"]}


def _kernel_keys(results: dict) -> list[str]:
    return [t["key"] for t in results["transports"] if t["kernel"]]


def _machine_section(results: dict) -> list[str]:
    m = results["machine"]
    allowed = m["cpus_allowed"]
    tunables = m.get("glibc_tunables") or "not set"
    rows = [
        ("CPU", f"{m['cpu_model']}, {m['cpu_count']} CPUs ({len(allowed)} allowed: "
                f"{', '.join(map(str, allowed))})"),
        ("Kernel", m["kernel"] + f" ({m['machine']})"),
        ("Python", m["python"]),
        ("C library", f"{m['libc']}; GLIBC_TUNABLES {tunables}"),
        ("Date", m["date"]),
        ("Load average (1/5/15 min)",
         f"{'/'.join(map(str, m['loadavg_start']))} at the start, "
         f"{'/'.join(map(str, m.get('loadavg_end', [])))} at the end"),
        ("Run time", f"{results['duration_s']} s"),
    ]
    return ["## Machine", "", *_table(["", ""], rows, numeric=False), ""]


def _probe_text(results: dict) -> str:
    probe = results["memcpy_probe"]
    default, tuned = probe.get("default", {}), probe.get("tunable", {})
    if "skew16_gb_s" not in default or "skew16_gb_s" not in tuned:
        return "The memcpy probe could not run here."
    return (f"On this machine a 64 KiB `memcpy` ran at {default['skew16_gb_s']:.3g} GB/s with "
            f"the destination 16 bytes past the source (mod 4 KiB) and "
            f"{default['skew64_gb_s']:.3g} GB/s at 64 bytes past; with `GLIBC_TUNABLES="
            f"{GLIBC_TUNABLE}` the 16-byte case ran at {tuned['skew16_gb_s']:.3g} GB/s.")


def _method_section(results: dict) -> list[str]:
    s = results["settings"]
    pin = results["pinning"]
    tuned = "x86_rep_movsb_threshold" in results["machine"].get("glibc_tunables", "")
    warm = ", ".join(f"{_size(n)}: {_warmup(s, n):,}" for n in s["sizes"])
    timed = _timed_counts(results)
    lines = [
        "## Method", "",
        "- **Processes.** Each measurement opens its transport, forks, and runs the "
        "parent and the child in the same loop code for every transport, so the "
        "ratios compare transports, not harnesses. The garbage collector is off in "
        "both processes while they measure.",
        f"- **Pinning.** {'Pinned' if pin['pinned'] else 'Not pinned'}: {pin['reason']}. "
        f"The one-core runs pin both processes to CPU {pin['one_core_cpu']}.",
        f"- **Round trip.** The parent sends 8 bytes, the child answers with 8 bytes. "
        f"{s['rtt_warmup']:,} untimed round trips warm up, then up to "
        f"{s['rtt_iterations']:,} are timed one by one with `time.perf_counter_ns` "
        f"(at most {s['rtt_budget']:g} s per run). Percentiles (nearest rank) pool the "
        "samples of all repeats; the spread is the lowest to highest median of the "
        "single repeats.",
        f"- **Streaming.** The parent sends equal messages back to back; the child "
        "drains them into a 256 KiB buffer and acknowledges the last byte with one "
        f"byte. First come untimed messages ({warm}); their pace sets how many are "
        f"timed, so that a run lasts about {s['stream_seconds']:g} s whatever the "
        f"transport (at least {s['stream_min_count']:,}; this run timed {timed}). Time "
        "runs from the first timed send to the acknowledgement. msg/s counts the "
        "parent's messages; GB/s is 10^9 bytes/s. Each cell is the median of the "
        "repeats, with the lowest to highest in brackets. Messages under 4 KiB are "
        "`bytes` objects, larger ones a page-aligned buffer (see the memcpy trap below).",
        f"- **Repeats.** {s['repeats']}, interleaved: every transport once, then every "
        "transport again, so a burst of foreign load hits all of them alike.",
        "- **Kernel transports.** TCP over 127.0.0.1 with `TCP_NODELAY` on both ends; a "
        "Unix `SOCK_STREAM` socketpair; two `os.pipe()`s, one per direction. All "
        "blocking, without socket timeouts (CPython would add a `poll()` per call); an "
        "interval timer bounds each run instead.",
        _ring_text(results),
        "- **The glibc memcpy alignment trap.** " + _probe_text(results) + " The ring "
        "puts its payload half a page into its mapping, and the benchmark sends "
        "messages of 4 KiB and more from, and always drains into, page-aligned buffers, "
        "so every run sees the same alignment "
        "instead of whatever the allocator hands out. "
        + (f"This run had `GLIBC_TUNABLES={GLIBC_TUNABLE}` set (`--glibc-tunable`)."
           if tuned else "This run used glibc's defaults, as a user's program would; "
           "`python -m bench --glibc-tunable` re-runs with the tunable."),
        *_socket_method(results),
        "- **Caveat.** The machine is a shared 2-CPU VM; foreign load widens p99 and "
        "p99.9 most. Compare ratios within one run rather than absolute numbers "
        "across runs.",
        "",
    ]
    return lines


def _socket_method(results: dict) -> list[str]:
    """The method's bullets on the socket API: impl.socket, set-up rate, asyncio echo."""
    s = results["settings"]
    lines = []
    if SOCKET_KEY in _labels(results) or results.get("setup", {}).get("rates"):
        ring_kib = results.get("monitor", {}).get("ring_bytes", 0) // 1024
        lines.append(
            "- **Socket API.** The `impl.socket` rows go through the library as a program "
            "does. The benchmark starts a monitor of its own (`python -m impl.monitor`, "
            "log level warning) in a private temporary directory and points "
            "`SOCKSDIRECT_MONITOR` at it. For every measurement the child connects to a "
            "listener of the parent through the monitor *after* the fork, so each end "
            "belongs to the process that uses it; the parent accepts; both then run the "
            "same loops as every other transport on the sockets' `sendall` and "
            f"`recv_into`. The rings have the monitor's default size ({ring_kib} KiB per "
            "direction, where the ring benchmark uses 1 MiB) and the waiters choose "
            "their spin themselves.")
        lines.append(
            "- **Connection set-up.** The child listens (`impl.create_server` on "
            "127.0.0.1; a kernel TCP listener on 127.0.0.1; a kernel Unix listener on a "
            "path), the parent runs cycles of: new socket, `connect`, wait for end of "
            "stream (the child accepts and closes at once), `close`. One connection "
            "lives at a time, so the client never outruns the backlog (a ring connect "
            "that found the backlog full would fall back to the kernel; every ring "
            "connection is checked to be one, on both sides). "
            f"{s['setup_warmup']:,} untimed cycles set the pace; the timed count lasts "
            f"about {s['setup_seconds']:g} s (at least {s['setup_min_count']:,}).")
    echo = results.get("asyncio", {})
    if echo.get("latency"):
        if ASYNCIO_RING_SELECTOR in results["skipped"]:
            selector = ("the ring-first selector of `impl.selectors` (not available in this "
                        f"run: {results['skipped'][ASYNCIO_RING_SELECTOR]})")
        else:
            selector = f"the ring-first selector (`{echo.get('ring_loop', '?')}`)"
        lines.append(
            "- **asyncio echo.** Both processes run an asyncio event loop with protocols "
            "(`connect_accepted_socket` for the echo server, `create_connection(sock=...)` "
            "for the client, which writes 8 bytes and awaits a future that "
            "`data_received` resolves once the 8 bytes are back). The loops: "
            f"{selector} over an `impl.socket` connection; the stock "
            "`asyncio.SelectorEventLoop` (epoll) over the same kind of connection, over "
            "TCP loopback and over a Unix socketpair. "
            f"{s['asyncio_warmup']:,} untimed round trips, then up to "
            f"{s['asyncio_iterations']:,} timed (at most {s['asyncio_budget']:g} s).")
    return lines


def _count(x: float) -> str:
    """A rate in full: 4567.2 -> '4,567'."""
    return f"{x:,.0f}"


def _ring_text(results: dict) -> str:
    """The method's bullet on how the ring was set up."""
    ring = results.get("ring") or {}
    text = (f"- **Our ring.** `impl.ring.Ring`, one ring of {_size(RING_CAPACITY)} per "
            "direction, created before the fork and used by both processes through the "
            "inherited mapping; the C path (`backend=\"c\"`, cffi) and the pure-Python "
            "path (`backend=\"python\"`) are measured separately, through `send_all` and "
            "`recv_into`.")
    if ring:
        text += (f" A waiter spins for {ring['spin_ns'] / 1000:g} µs (the ring's default), "
                 f"then calls `sched_yield` up to {ring['yields']} times, then blocks on "
                 "its eventfd; with both processes on one CPU it does not spin. The budget "
                 "is passed explicitly so that every run starts with it; the ring's "
                 "automatic choice (drop the spin only while both ends are pinned to the "
                 "same CPU) arrives at the same values once both ends have published "
                 "their CPUs.")
    return text


def _warmup(settings: dict, size: int) -> int:
    """The untimed message count for *size*, as Settings.stream_warmup computes it."""
    return max(20, min(20_000, settings["stream_warmup_bytes"] // size))


def _timed_counts(results: dict) -> str:
    """'64 B: 120,000-700,000, ...': the range of timed messages per size, all runs."""
    parts = []
    for n in results["settings"]["sizes"]:
        counts = [c for per_size in results["throughput"].values()
                  for c in per_size[str(n)]["counts"]]
        if counts:
            parts.append(f"{_size(n)}: {min(counts):,}–{max(counts):,}")
    return ", ".join(parts) or "nothing"


def _goal_rows(goals: list[dict], labels: dict[str, str]) -> list[tuple[str, ...]]:
    rows = []
    for g in goals:
        value = g["value"]
        if value is None:
            shown, verdict = "not measured", "-"
        else:
            shown = (_rate(value) + " msg/s" if g["goal"] == "msgs_64"
                     else f"{_us(value)} µs" if g["goal"] == "one_core_p99"
                     else _ratio(value))
            verdict = "**pass**" if g["passed"] else "**FAIL**"
        rows.append((g["what"], g["target"], labels[g["transport"]],
                     shown, verdict))
    return rows


def _goals_section(results: dict) -> list[str]:
    labels = _labels(results)
    header = ["goal", "target", "transport", "measured", "result"]
    ring = [g for g in results["goals"] if g.get("group", "ring") == "ring"]
    socket_api = [g for g in results["goals"] if g.get("group") == "socket"]
    if not ring and not socket_api and not results.get("tokens", {}).get("goals") \
            and not results.get("dropin", {}).get("goals"):
        return ["## Goals", "", "No ring transport was measured, so no goal is judged.", ""]
    lines = ["## Goals", "",
             "Judged on this run's medians (the p99 for the one-core goal). A ratio says "
             "how many times better than the kernel transport named in the goal, in the "
             "same run.", ""]
    if ring:
        lines += ["### The ring (`impl.ring`, driven directly)", "",
                  *_table(header, _goal_rows(ring, labels)), ""]
    if socket_api:
        lines += ["### Through the socket API (`impl.socket`, issue 3)", "",
                  *_table(header, _goal_rows(socket_api, labels)), ""]
        if any(g["value"] is None for g in socket_api):
            lines += [_not_measured_note(results), ""]
    token_goals = results.get("tokens", {}).get("goals", [])
    if token_goals:
        met = sum(1 for g in token_goals if g["passed"])
        judged = sum(1 for g in token_goals if g["passed"] is not None)
        lines += ["### Token sharing (`impl.token`, issue 4)", "",
                  f"{met} of {len(token_goals)} goals met ({len(token_goals) - judged} not "
                  "measured); the table is in [Tokens](#tokens-sharing-a-socket).", ""]
    for g in results.get("dropin", {}).get("goals", []):
        verdict = {True: "**pass**", False: "**FAIL**", None: "not measured"}[g["passed"]]
        value = "-" if g["value"] is None else f"{g['value']:.2f}×"
        lines += ["### Drop-in (`python -m impl.run`, issue 6)", "",
                  *_table(["goal", "target", "measured", "result"],
                          [[g["what"], g["target"], value, verdict]]), "",
                  "The servers' numbers are in [Drop-in](#drop-in-unmodified-http-servers).", ""]
    return lines


def _not_measured_note(results: dict) -> str:
    """Why a socket-API goal has no value: what was skipped or failed."""
    reasons = [f"`{key}`: {why}" for key, why in {**results["skipped"],
                                                  **results["failed"]}.items()]
    return "Not measured: " + ("; ".join(reasons) if reasons else "an input is missing") + "."


def _latency_rows(latency: dict, labels: dict, kernels: list[str]) -> list[list[str]]:
    rows = []
    for key, label in labels.items():
        if key not in latency:
            continue
        r = latency[key]
        row = [label, _us(r["median_us"]), _us(r["p99_us"]), _us(r["p999_us"]),
               _spread(r["repeat_median_us"], _us), f"{r['samples']:,}"]
        row += [_ratio(latency[k]["median_us"] / r["median_us"]) for k in kernels]
        rows.append(row)
    return rows


def _latency_section(results: dict) -> list[str]:
    labels = _labels(results)
    kernels = _kernel_keys(results)
    header = ["transport", "median µs", "p99 µs", "p99.9 µs", "spread of medians µs",
              "samples"] + [f"{labels[k]} ÷ this" for k in kernels]
    return ["## Round trip: 8-byte ping-pong", "",
            f"![Round trip latency]({LATENCY_PNG})", "",
            "Bars are medians, whiskers reach the p99, dots mark the p99.9. A ratio "
            "column says how many times the kernel transport's median is this "
            "transport's median (above 1: this one is faster).", "",
            *_table(header, _latency_rows(results["latency"], labels, kernels)), ""]


def _throughput_section(results: dict) -> list[str]:
    labels = _labels(results)
    kernels = _kernel_keys(results)
    tput = results["throughput"]
    sizes = [str(n) for n in results["settings"]["sizes"]]
    size_names = [_size(int(n)) for n in sizes]

    def cells(key: str, metric: str, fmt) -> list[str]:
        out = []
        for n in sizes:
            r = tput[key][n]
            spread = _spread(r[f"repeat_{metric}"], fmt)
            out.append(fmt(r[metric]) + ("" if spread == "-" else f" ({spread})"))
        return out

    msgs = [[labels[k], *cells(k, "msgs_per_s", _rate)] for k in labels]
    gbs = [[labels[k], *cells(k, "gb_per_s", _gbs)] for k in labels]
    # Rings against each kernel transport; kernel against kernel only when
    # there is no ring to compare.
    compared = [k for k in labels if k not in kernels] or list(labels)
    ratios = []
    for key in compared:
        for kernel in kernels:
            if key == kernel:
                continue
            ratios.append([labels[key], labels[kernel]]
                          + [_ratio(tput[key][n]["msgs_per_s"] / tput[kernel][n]["msgs_per_s"])
                             for n in sizes])
    ratio_header = ["transport", "against"] + size_names
    return ["## Streaming throughput", "",
            f"![Throughput against message size]({THROUGHPUT_PNG})", "",
            "### Messages per second", "", *_table(["transport"] + size_names, msgs), "",
            "### GB/s", "", *_table(["transport"] + size_names, gbs), "",
            "### Ratio against each kernel transport (times its throughput)", "",
            *_table(ratio_header, ratios), ""]


def _one_core_section(results: dict) -> list[str]:
    labels = _labels(results)
    one = results["one_core"]["latency"]
    kernels = [k for k in _kernel_keys(results) if k in one]
    header = ["transport", "median µs", "p99 µs", "p99.9 µs", "spread of medians µs",
              "samples"] + [f"{labels[k]} ÷ this" for k in kernels]
    return [f"## Both processes on one core (CPU {results['one_core']['cpu']})", "",
            "The same 8-byte ping-pong with parent and child pinned to one CPU: every "
            "round trip needs two context switches, so how a waiter gives up the CPU "
            "decides the result (see the right panel of the round-trip figure).", "",
            *_table(header, _latency_rows(one, labels, kernels)), ""]


def _better(ours: float | None, theirs: float | None, lower_is_better: bool) -> str:
    """How many times *ours* beats *theirs*, as a ratio cell."""
    if not ours or not theirs:
        return "-"
    return _ratio(theirs / ours if lower_is_better else ours / theirs)


def _side_by_side(results: dict) -> list[list[str]]:
    """Rows of the socket API against TCP and Unix: measure, values, then the ratios."""
    lat, tput = results["latency"], results["throughput"]
    rates = results.get("setup", {}).get("rates", {})
    echo = results.get("asyncio", {}).get("latency", {})
    rows: list[tuple[str, dict, tuple[str, str, str], str, object, bool]] = [
        ("round trip median, µs", lat, (SOCKET_KEY, "tcp", "unix"), "median_us", _us, True),
        ("round trip p99, µs", lat, (SOCKET_KEY, "tcp", "unix"), "p99_us", _us, True),
    ]
    for n in results["settings"]["sizes"]:
        sized = {k: v[str(n)] for k, v in tput.items()}
        rows.append((f"streaming {_size(n)}, msg/s", sized, (SOCKET_KEY, "tcp", "unix"),
                     "msgs_per_s", _rate, False))
    rows.append(("connection set-up, per s", rates, ("setup-ring", "setup-tcp", "setup-unix"),
                 "per_s", _count, False))
    rows.append(("asyncio echo median, µs (ring-first selector)", echo,
                 (ASYNCIO_RING_SELECTOR, "asyncio-tcp", "asyncio-unix"), "median_us", _us, True))
    rows.append(("asyncio echo median, µs (stock loop on rings)", echo,
                 ("asyncio-ring-stock", "asyncio-tcp", "asyncio-unix"), "median_us", _us, True))
    out = []
    for name, table, (ours, tcp, unix), metric, fmt, lower in rows:
        values = [table.get(k, {}).get(metric) for k in (ours, tcp, unix)]
        if values[0] is None and values[1] is None:
            continue
        cells = [fmt(v) if v is not None else "-" for v in values]
        out.append([name, *cells, _better(values[0], values[1], lower),
                    _better(values[0], values[2], lower)])
    return out


def _setup_rows(results: dict) -> list[list[str]]:
    setup = results["setup"]
    rates = setup["rates"]
    tcp = rates.get("setup-tcp", {}).get("per_s")
    unix = rates.get("setup-unix", {}).get("per_s")
    rows = []
    for case in setup["cases"]:
        r = rates[case["key"]]
        rows.append([case["label"], _count(r["per_s"]), _us(r["us_per_connection"]),
                     _spread(r["repeat_per_s"], _count),
                     f"{min(r['counts']):,}–{max(r['counts']):,}",
                     _better(r["per_s"], tcp, False), _better(r["per_s"], unix, False)])
    return rows


def _asyncio_rows(results: dict) -> list[list[str]]:
    echo = results["asyncio"]["latency"]
    base = [k for k in ("asyncio-tcp", "asyncio-unix") if k in echo]
    rows = []
    for variant in results["asyncio"]["variants"]:
        r = echo[variant["key"]]
        rows.append([variant["label"], _us(r["median_us"]), _us(r["p99_us"]),
                     _us(r["p999_us"]), _spread(r["repeat_median_us"], _us),
                     f"{r['samples']:,}"]
                    + [_ratio(echo[k]["median_us"] / r["median_us"]) for k in base])
    return rows


def _socket_section(results: dict) -> list[str]:
    """The socket API: side by side with the kernel, set-up rate, asyncio echo."""
    setup = results.get("setup", {})
    echo = results.get("asyncio", {})
    if SOCKET_KEY not in _labels(results) and not setup.get("rates") and not echo.get("latency"):
        return []
    lines = ["## Through the socket API", "",
             f"![Socket API: goals, set-up rate, asyncio echo]({SOCKET_PNG})", "",
             "`impl.socket` connections set up by the monitor, against the kernel's TCP "
             "loopback and Unix sockets in the same run. Ratio columns say how many times "
             "better `impl.socket` is (above 1: faster); the round-trip and streaming "
             "rows repeat the tables above.", ""]
    counters = results.get("monitor", {}).get("counters")
    if counters:
        lines += [f"The monitor set up {counters.get('connections', 0):,} ring connections "
                  f"in this run; {counters.get('kernel_fallbacks', 0):,} connects fell back "
                  f"to the kernel ({counters.get('backlog_full', 0):,} for a full backlog) "
                  f"and {counters.get('bytes', 0) / 1e9:.3g} GB went through rings.", ""]
    header = ["measure", "impl.socket", "TCP loopback", "Unix socket", "× better than TCP",
              "× better than Unix"]
    lines += ["### Side by side", "", *_table(header, _side_by_side(results)), ""]
    if setup.get("rates"):
        lines += ["### Connection set-up: connect + accept + close", "",
                  "Client and server are two processes; each cycle is one connection's "
                  "whole life. The spread is the lowest to highest rate of the repeats.", "",
                  *_table(["connections", "per second", "µs per connection",
                           "spread per s", "timed per run", "× TCP", "× Unix"],
                          _setup_rows(results)), ""]
    if echo.get("latency"):
        base = [k for k in ("asyncio-tcp", "asyncio-unix") if k in echo["latency"]]
        names = {v["key"]: v["label"] for v in echo["variants"]}
        header = (["loop, connection", "median µs", "p99 µs", "p99.9 µs",
                   "spread of medians µs", "samples"]
                  + [f"{names[k]} ÷ this" for k in base])
        lines += ["### asyncio echo ping-pong, 8 B", "", *_table(header, _asyncio_rows(results)),
                  ""]
        if ASYNCIO_RING_SELECTOR in results["skipped"]:
            lines += ["The ring-first selector was not measured: "
                      f"{results['skipped'][ASYNCIO_RING_SELECTOR]}.", ""]
    return lines


def _ns(x: float) -> str:
    """Nanoseconds as microseconds with three significant digits."""
    return _us(x / 1000)


def _token_goal_rows(goals: list[dict]) -> list[tuple[str, ...]]:
    rows = []
    for g in goals:
        if g["value"] is None:
            shown, verdict = "not measured", "-"
        else:
            shown = f"{g['value']:.3f}" if g["lower_is_better"] else _ratio(g["value"])
            verdict = "**met**" if g["passed"] else "**missed**"
        rows.append((g["what"], g["target"], shown, verdict))
    return rows


def _token_method(tok: dict, results: dict) -> list[str]:
    """The bullets that say how the token benchmarks were run."""
    s = results["settings"]
    threads = tok["threads"]
    return [
        f"- **Single owner.** The round trip and streaming loops above, on an "
        "`impl.socket` connection as every program gets it (token checks on: each ring "
        "call takes and leaves its token with one CAS each) and on one whose token checks "
        "are switched off on both endpoints of both ends (`tok_off = 0`, no `Token`; a "
        "private switch for this comparison only). The two run as pairs, "
        f"{tok['single']['pairs']} of them, the order alternating (on then off, off then "
        "on, ...); each pair gives one ratio *with ÷ without* of the time per operation "
        "(the round trip's median; elapsed time per streamed message), and the goal "
        f"judges the median ratio. Round trips: up to {s['token_rtt_iterations']:,} per "
        f"run (at most {s['token_rtt_budget']:g} s); streams last about "
        f"{s['token_stream_seconds']:g} s.",
        f"- **{threads} threads on one socket.** *Send:* {threads} threads of the parent "
        "call `sendall` with whole frames on one connected socket; the child reads and "
        "checks every frame (sender id and sequence number at both ends: whole, in order "
        f"per sender). *Receive:* the child writes numbered frames; {threads} threads of "
        "the parent each call `recv_into(buf, n, MSG_WAITALL)` for one frame at a time "
        "and check it is whole and later than their last; the sum of all sequence "
        "numbers shows none was lost or read twice. The same code runs over "
        "`impl.socket` (rings, through the monitor) and over kernel TCP loopback "
        f"(`TCP_NODELAY`). {s['shared_warmup']:,} untimed frames per thread set the pace; "
        f"a timed run lasts about {s['shared_seconds']:g} s (at least "
        f"{s['shared_min_count']:,} frames per thread), from the threads' start to the "
        "child's acknowledgement (send) or the last thread's end (receive). A bad frame "
        "over rings fails the run; over TCP bad frames are counted, since Linux does "
        "not keep a `send` or a `MSG_WAITALL` receive whole among threads sharing a "
        f"socket once it has to wait. {s['repeats']} repeats, rings and TCP interleaved; "
        "the median of the repeats is shown.",
        "- **Takeover.** An 8-byte `sendall` is timed (`perf_counter_ns` around the call) "
        "when the socket's last user was the same thread (the fast path, "
        f"{s['takeover_fast']:,} sends in a row), another thread of the same process (two "
        f"threads take turns, {s['takeover_thread']:,} turns each), or another process: a "
        f"process and its fork child take turns ({s['takeover_process']:,} each), so every "
        "send of the child takes the token from the parent through the monitor (TAKE, "
        "RECALL to the parent's agent, RELEASE, GRANT to the child's agent) and every send "
        "of the parent takes it back. The turn is passed outside the timed call (a lock "
        f"between threads, a pipe between processes); the first {s['takeover_warmup']} "
        "sends of each sender are dropped. The senders run on the child's CPU (a fork "
        "child inherits it), the parent drains the connection. TCP shared the same way "
        "shows what a kernel send costs from any thread or process; it has no takeover.",
    ]


def _single_rows(tok: dict) -> list[list[str]]:
    rows = []
    labels = tok["single"]["labels"]
    for key, r in tok["single"]["cases"].items():
        rows.append([labels.get(key, key), f"{r['ratio']:.3f}",
                     f"{min(r['ratios']):.3f}–{max(r['ratios']):.3f}", str(r["pairs"]),
                     _ns(min(r["on_ns"])), _ns(min(r["off_ns"]))])
    return rows


def _run_range(tok: dict) -> str:
    """' (the round trips' medians ranged 2.4-4.5 µs over the runs)', or '' if not measured."""
    rtt = tok["single"]["cases"].get("rtt")
    if rtt is None:
        return ""
    runs = rtt["on_ns"] + rtt["off_ns"]
    return (f" (the round trips' medians ranged {_ns(min(runs))}–{_ns(max(runs))} µs "
            "over the runs)")


def _shared_rows(tok: dict) -> list[list[str]]:
    rows = []
    rates = tok["shared"]["rates"]
    for case in tok["shared"]["cases"]:
        r = rates.get(case["key"])
        if r is None:
            continue
        ring, tcp = r["ring"], r["tcp"]
        rows.append([case["label"], _rate(ring["msgs_per_s"]), _rate(tcp["msgs_per_s"]),
                     _ratio(r["ratio"]), _spread(ring["repeat_msgs_per_s"], _rate),
                     _spread(tcp["repeat_msgs_per_s"], _rate),
                     f"{tcp['bad_frames']:,} of {sum(tcp['counts']):,}"])
    return rows


def _takeover_rows(tok: dict) -> list[list[str]]:
    latency = tok["takeover"]["latency"]
    rows = []
    for case in tok["takeover"]["cases"]:
        r = latency.get(case["key"])
        if r is None:
            continue
        fast = latency.get(f"fast-{case['kind']}")
        times = "-" if fast is None else _ratio(r["median_us"] / fast["median_us"])
        rows.append([case["label"], _us(r["median_us"]), _us(r["p99_us"]), _us(r["p999_us"]),
                     _spread(r["repeat_median_us"], _us), f"{r['samples']:,}", times])
    return rows


def _tokens_section(results: dict) -> list[str]:
    """Issue 4: what the tokens cost a single owner, shared-socket rates, takeover latency."""
    tok = results.get("tokens") or {}
    if not tok:
        why = results["skipped"].get("tokens")
        return ["## Tokens: sharing a socket", "", f"Not measured: {why}.", ""] if why else []
    lines = ["## Tokens: sharing a socket", "",
             f"![Tokens: single owner, {tok['threads']} threads on one socket, takeover]"
             f"({TOKENS_PNG})", "",
             "Issue 4: every ring socket end has a send and a receive token "
             "([tokens.md](tokens.md)). These runs measure what the tokens cost the single "
             "owner, what sharing one socket among threads gets against kernel TCP shared "
             f"the same way, and what a takeover costs. The token part took "
             f"{tok['duration_s']} s of the run.", "",
             *_token_method(tok, results), "",
             "### Goals", "",
             *_table(["goal", "target", "measured", "result"],
                     _token_goal_rows(tok["goals"])), ""]
    lines += _failed_lines(results, "tokens-")
    if tok["single"]["cases"]:
        lines += ["### Single owner: token checks on against off", "",
                  "The ratio is the median of the pairs' ratios of the time per operation "
                  "(with ÷ without; at most 1.05 is within 5%). The last two columns give "
                  "the fastest run of each variant for scale: from run to run the time "
                  f"per operation moves more than the tokens cost{_run_range(tok)}, and "
                  "the two runs of a pair mostly move together, which is why pairs are "
                  "compared.", "",
                  *_table(["operation", "ratio", "ratios of the pairs", "pairs",
                           "fastest run with tokens µs", "fastest without µs"],
                          _single_rows(tok)), ""]
    if tok["shared"]["rates"]:
        lines += [f"### {tok['threads']} threads sharing one socket", "",
                  "Frames per second (median of the repeats, lowest to highest in the spread "
                  "columns). The last column counts the frames TCP delivered torn or out of "
                  "order (none over rings, or the run would have failed).", "",
                  *_table(["case", "impl.socket (rings)", "TCP loopback", "× TCP",
                           "spread, rings", "spread, TCP", "bad frames over TCP"],
                          _shared_rows(tok)), ""]
    if tok["takeover"]["latency"]:
        lines += ["### Takeover latency: an 8-byte sendall", "",
                  "The last column is this median over the fast path's (the same thread "
                  "again) on the same kind of connection.", "",
                  *_table(["last user of the socket", "median µs", "p99 µs", "p99.9 µs",
                           "spread of medians µs", "samples", "× fast path"],
                          _takeover_rows(tok)), ""]
    return lines


def _fork_section(results: dict) -> list[str]:
    """Issue 5: a ForkingTCPServer over rings and TCP, and what fork() costs with sockets open."""
    fork = results.get("fork") or {}
    if not fork:
        why = results["skipped"].get("fork")
        return ["## Fork", "", f"Not measured: {why}.", ""] if why else []
    lines = ["## Fork", "",
             "Issue 5: sockets stay usable in both processes after `fork()` "
             "([fork.md](fork.md)). The fork part took "
             f"{fork['duration_s']} s of the run.", ""]
    lines += _failed_lines(results, "fork-")
    rates = fork["server"]["rates"]
    if rates:
        rows = []
        for kind, label in (("ring", "impl sockets (rings)"), ("tcp", "kernel TCP loopback")):
            r = rates.get(kind)
            if r is not None:
                rows.append([label, f"{r['per_s']:,.0f}", _us(r["median_us"]),
                             _us(r["p99_us"]), _spread(r["repeat_per_s"], lambda v: f"{v:,.0f}"),
                             f"{r['samples']:,}"])
        ratio = fork["server"]["ratio"]
        lines += ["### socketserver.ForkingTCPServer", "",
                  "One client makes requests one after another: connect, send "
                  f"{fork['server']['request_bytes']} bytes, read the answer, close. The server "
                  "forks a child per request (accept in the parent, the parent closes its "
                  "copy). Requests per second from the median request time."
                  + ("" if ratio is None else f" Rings / TCP: **{ratio:.2f}×**."), "",
                  *_table(["server and client sockets", "requests/s", "median µs", "p99 µs",
                           "spread of repeats /s", "requests"], rows), ""]
    latency = fork["fork"]["latency"]
    if latency:
        rows = []
        for key in sorted(latency, key=lambda k: (k.split("-")[0], int(k.split("-")[1]))):
            kind, n = key.split("-")
            v = latency[key]
            rows.append([f"{n} {'ring' if kind == 'ring' else 'TCP'} connection"
                         + ("s" if n != "1" else ""),
                         _us(v["first-return"]["median_us"]), _us(v["first-ready"]["median_us"]),
                         _us(v["again-return"]["median_us"]), _us(v["again-ready"]["median_us"]),
                         f"{v['first-ready']['samples']:,}"])
        lines += ["### fork() with open connections", "",
                  "Median µs until `os.fork()` returned in the parent and until the child, "
                  "its fork hooks done, reported back over a pipe; the first fork of fresh "
                  "connections (the parent hands the monitor their hold pipes) and a second "
                  "fork of the same ones. Both ends of each connection are in the forking "
                  "process.", "",
                  *_table(["held", "first: returned", "first: child ready", "again: returned",
                           "again: child ready", "forks"], rows), ""]
    return lines


def _left_out_section(results: dict) -> list[str]:
    lines = []
    for key, reason in results["skipped"].items():
        lines.append(f"- `{key}` skipped: {reason}")
    for key, reason in results["failed"].items():
        lines.append(f"- `{key}` failed and was dropped: {reason}")
    return ["## Left out", "", *lines, ""] if lines else []


def render_markdown(results: dict) -> str:
    """Return ``bench.md`` for *results* (as returned by :func:`bench.suite.run_suite`)."""
    lines = [
        "# Benchmarks", "",
        "Generated by `make bench` (`python -m bench`); do not edit by hand. The raw "
        "numbers are in [bench.json](bench.json).", "",
    ]
    for section in (_goals_section, _machine_section, _method_section, _latency_section,
                    _throughput_section, _one_core_section, _socket_section,
                    _tokens_section, _fork_section, dropin.markdown_section,
                    _left_out_section):
        lines += section(results)
    return "\n".join(lines).rstrip() + "\n"


def write_report(results: dict, out_dir: str | Path) -> dict[str, Path]:
    """Write bench.json, bench.md and the figures under *out_dir*; return their paths."""
    out = Path(out_dir)
    (out / "img").mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out / "bench.json",
        "markdown": out / "bench.md",
        "latency_png": out / LATENCY_PNG,
        "throughput_png": out / THROUGHPUT_PNG,
        "socket_png": out / SOCKET_PNG,
        "tokens_png": out / TOKENS_PNG,
    }
    paths["json"].write_text(json.dumps(results, indent=1, sort_keys=False) + "\n")
    plots.latency_figure(results, paths["latency_png"])
    plots.throughput_figure(results, paths["throughput_png"])
    plots.socket_figure(results, paths["socket_png"])
    plots.tokens_figure(results, paths["tokens_png"])
    paths["markdown"].write_text(render_markdown(results))
    return paths
