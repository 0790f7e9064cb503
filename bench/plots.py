"""The two figures of ``bench.md``, drawn with matplotlib's Agg backend (no display needed).

* Round trip: bars of the median per transport, a whisker up to the p99
  and a dot at the p99.9, for two cores and for one core side by side.
* Throughput: messages/s and GB/s against message size (log scales), one
  line per transport, with the spread of the repeats as error bars.
* Socket API: each socket-API goal's measured ratio against its target,
  connection set-up rates, and the asyncio echo round trip per loop.
* Tokens: the single owner's cost ratio per pair, frames/s of threads
  sharing one socket over rings and TCP, and the takeover latencies.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["latency_figure", "socket_figure", "throughput_figure", "tokens_figure"]

# Our ring in blues, the kernel in warm colours: the two families read apart at a glance.
_COLOURS = {
    "ring-c": "#1f5fa8",
    "ring-python": "#6fa8dc",
    "tcp": "#c0392b",
    "unix": "#e67e22",
    "pipe": "#7f8c8d",
    # The socket API in greens: ours, but through the library and the monitor.
    "socket": "#1e8449",
    "setup-ring": "#1e8449",
    "setup-tcp": "#c0392b",
    "setup-unix": "#e67e22",
    "asyncio-ring-selector": "#1e8449",
    "asyncio-ring-stock": "#82c99a",
    "asyncio-tcp": "#c0392b",
    "asyncio-unix": "#e67e22",
    # Takeover cases: rings in greens (darker: the slower path), TCP in reds.
    "fast-ring": "#82c99a",
    "thread-ring": "#27ae60",
    "process-ring": "#145a32",
    "fast-tcp": "#f1948a",
    "thread-tcp": "#c0392b",
    "process-tcp": "#78281f",
}
_MARKERS = {"ring-c": "o", "ring-python": "s", "tcp": "^", "unix": "D", "pipe": "v",
            "socket": "P"}
# Short names of the socket-API goals for the figure's left panel.
_GOAL_NAMES = {
    "sock_rtt_vs_tcp": "round trip\nvs TCP",
    "sock_rtt_vs_unix": "round trip\nvs Unix",
    "sock_64_vs_tcp": "64 B msg/s\nvs TCP",
    "sock_16k_vs_tcp": "16 KiB msg/s\nvs TCP",
    "setup_vs_tcp": "set-up rate\nvs TCP",
    "asyncio_vs_tcp": "asyncio echo\nvs stock on TCP",
}


def _pyplot():
    """Import pyplot on the Agg backend; late, so forked children never load it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colour(key: str) -> str:
    return _COLOURS.get(key, "#555555")


def _latency_panel(ax, latency: dict, labels: dict[str, str], title: str) -> None:
    """Draw median bars with p99 whiskers and p99.9 dots for the transports in *latency*."""
    from matplotlib import ticker

    keys = [k for k in labels if k in latency]
    if not keys:
        ax.set_title(title)
        ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
        return
    xs = range(len(keys))
    medians = [latency[k]["median_us"] for k in keys]
    p99 = [latency[k]["p99_us"] for k in keys]
    p999 = [latency[k]["p999_us"] for k in keys]
    ax.bar(xs, medians, color=[_colour(k) for k in keys], width=0.65, zorder=2)
    above = [max(p - m, 0) for p, m in zip(p99, medians, strict=True)]
    ax.errorbar(xs, medians, yerr=[[0] * len(keys), above], fmt="none", ecolor="black",
                capsize=5, linewidth=1.2, zorder=3, label="p99")
    ax.scatter(xs, p999, color="black", s=14, zorder=4, label="p99.9")
    for x, m in zip(xs, medians, strict=True):
        # Above the bar's top, left of the whisker: readable however short the bar.
        ax.annotate(f"{m:.3g}", (x - 0.3, m), xytext=(0, 3), textcoords="offset points",
                    ha="left", va="bottom", fontsize=8, fontweight="bold")
    ax.set_yscale("log")
    # Plain numbers at 1-2-5 steps read better than powers of ten for microseconds.
    ax.yaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1, 2, 5)))
    ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(ticker.NullFormatter())
    ax.set_xticks(list(xs), [labels[k] for k in keys], rotation=25, ha="right", fontsize=8)
    ax.set_ylabel("round trip, µs (log scale)")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", which="both", alpha=0.3, zorder=0)
    ax.legend(fontsize=8, loc="upper right")


def latency_figure(results: dict, path: str | Path) -> Path:
    """Draw the round-trip figure (two cores | one core) into the PNG *path*."""
    plt = _pyplot()
    labels = {t["key"]: t["label"] for t in results["transports"]}
    pin = results["pinning"]
    where = (f"CPUs {pin['parent_cpu']} and {pin['child_cpu']}" if pin["pinned"]
             else "not pinned")
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.6), sharey=True)
    _latency_panel(left, results["latency"], labels, f"Two processes ({where})")
    _latency_panel(right, results["one_core"]["latency"], labels,
                   f"Both on one core (CPU {results['one_core']['cpu']})")
    # Head room above the highest dot for the legend.
    top = max([r["p999_us"] for r in results["latency"].values()]
              + [r["p999_us"] for r in results["one_core"]["latency"].values()] + [1.0])
    left.set_ylim(top=top * 3)
    fig.suptitle("8-byte ping-pong round trip: median, p99 whisker, p99.9 dot")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def _plain(value: float, _pos: object = None) -> str:
    """Axis numbers without powers of ten: 0.01, 1, 100k, 1M."""
    if value >= 1e6:
        return f"{value / 1e6:g}M"
    if value >= 1e3:
        return f"{value / 1e3:g}k"
    return f"{value:g}"


def _size_label(n: int) -> str:
    return f"{n // 1024} KiB" if n >= 1024 else f"{n} B"


def throughput_figure(results: dict, path: str | Path) -> Path:
    """Draw messages/s and GB/s against message size into the PNG *path*."""
    plt = _pyplot()
    sizes = [int(n) for n in results["settings"]["sizes"]]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.4))
    for t in results["transports"]:
        key = t["key"]
        rows = [results["throughput"][key][str(n)] for n in sizes]
        for ax, metric in ((left, "msgs_per_s"), (right, "gb_per_s")):
            mid = [r[metric] for r in rows]
            # max(0, ...): the median and the repeats differ by rounding at one repeat.
            lo = [max(0.0, m - min(r[f"repeat_{metric}"])) for m, r in zip(mid, rows, strict=True)]
            hi = [max(0.0, max(r[f"repeat_{metric}"]) - m) for m, r in zip(mid, rows, strict=True)]
            ax.errorbar(sizes, mid, yerr=[lo, hi], label=t["label"], color=_colour(key),
                        marker=_MARKERS.get(key, "o"), capsize=3, linewidth=1.6)
    from matplotlib import ticker

    for ax, ylabel in ((left, "messages per second"), (right, "GB/s")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(ticker.FuncFormatter(_plain))
        ax.set_xticks(sizes, [_size_label(n) for n in sizes])
        ax.minorticks_off()
        ax.set_xlabel("message size")
        ax.set_ylabel(ylabel + " (log scale)")
        ax.grid(which="major", alpha=0.3)
    left.set_title("Messages per second", fontsize=10)
    right.set_title("Bytes per second", fontsize=10)
    if results["transports"]:  # none with --only tokens
        right.legend(fontsize=8, loc="lower right")
    fig.suptitle("Streaming throughput between two processes")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def _not_measured(ax, title: str) -> None:
    ax.set_title(title, fontsize=10)
    ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def _goals_panel(ax, goals: list[dict]) -> None:
    """Horizontal bars: each socket goal's measured ratio, a black tick at its target."""
    from matplotlib import ticker

    judged = [g for g in goals if g.get("group") == "socket"]
    if not judged:
        _not_measured(ax, "Socket API against its goals")
        return
    ys = range(len(judged))
    values = [g["value"] or 0.0 for g in judged]
    colours = ["#27ae60" if g["passed"] else "#c0392b" if g["passed"] is False else "#bbbbbb"
               for g in judged]
    # A ratio of 0.01 still shows as a stub on the log axis; None shows nothing.
    ax.barh(list(ys), [max(v, 0.01) if v else 0 for v in values], color=colours, zorder=2)
    ax.scatter([g["bound"] for g in judged], list(ys), marker="|", s=400, color="black",
               zorder=3, label="target")
    for y, g in zip(ys, judged, strict=True):
        text = "not measured" if g["value"] is None else f"{g['value']:.2g}×"
        ax.annotate(text, (max(g["value"] or 1.0, 0.01), y), xytext=(4, 0),
                    textcoords="offset points", va="center", fontsize=8)
    ax.axvline(1.0, color="#555555", linewidth=0.8, linestyle=":", zorder=1)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}×"))
    ax.set_yticks(list(ys), [_GOAL_NAMES.get(g["goal"], g["goal"]) for g in judged],
                  fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("times better than the kernel (log scale)")
    ax.set_title("Socket API against its goals\n(green: met, red: missed)", fontsize=10)
    ax.grid(axis="x", which="major", alpha=0.3, zorder=0)
    ax.legend(fontsize=8, loc="lower right")


def _setup_panel(ax, setup: dict) -> None:
    """Bars of connections per second, whiskers from the slowest to the fastest repeat."""
    cases = [c for c in setup.get("cases", []) if c["key"] in setup.get("rates", {})]
    title = "Connection set-up\n(connect + accept + close)"
    if not cases:
        _not_measured(ax, title)
        return
    rates = setup["rates"]
    xs = range(len(cases))
    mid = [rates[c["key"]]["per_s"] for c in cases]
    lo = [max(0.0, m - min(rates[c["key"]]["repeat_per_s"])) for m, c in zip(mid, cases,
                                                                              strict=True)]
    hi = [max(0.0, max(rates[c["key"]]["repeat_per_s"]) - m) for m, c in zip(mid, cases,
                                                                              strict=True)]
    ax.bar(list(xs), mid, color=[_colour(c["key"]) for c in cases], width=0.65, zorder=2)
    ax.errorbar(list(xs), mid, yerr=[lo, hi], fmt="none", ecolor="black", capsize=5,
                zorder=3)
    for x, m in zip(xs, mid, strict=True):
        ax.annotate(f"{m:,.0f}", (x - 0.3, m), xytext=(0, 3), textcoords="offset points",
                    ha="left", va="bottom", fontsize=8, fontweight="bold")
    ax.set_xticks(list(xs), [c["label"] for c in cases], rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("connections per second")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3, zorder=0)


def socket_figure(results: dict, path: str | Path) -> Path:
    """Draw the socket API figure (goals | set-up rate | asyncio echo) into the PNG *path*."""
    plt = _pyplot()
    fig, (goals, setup, echo) = plt.subplots(1, 3, figsize=(14, 4.8),
                                             gridspec_kw={"width_ratios": [1.2, 1, 1.2]})
    _goals_panel(goals, results.get("goals", []))
    _setup_panel(setup, results.get("setup", {}))
    asyncio_results = results.get("asyncio", {})
    labels = {v["key"]: v["label"] for v in asyncio_results.get("variants", [])}
    _latency_panel(echo, asyncio_results.get("latency", {}), labels,
                   "asyncio echo ping-pong, 8 B")
    fig.suptitle("Through the socket API: impl.socket against the kernel's sockets")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def _single_owner_panel(ax, single: dict, bound: float) -> None:
    """Each single-owner case: its pairs' ratios as dots, the median as a thick tick."""
    cases = single.get("cases", {})
    title = "Single owner: time with token checks ÷ without"
    if not cases:
        _not_measured(ax, title)
        return
    labels = single.get("labels", {})
    keys = list(cases)
    xs = list(range(len(keys)))
    for x, k in zip(xs, keys, strict=True):
        ratios, median = cases[k]["ratios"], cases[k]["ratio"]
        colour = "#27ae60" if median <= bound else "#c0392b"
        ax.scatter([x] * len(ratios), ratios, color="#555555", s=14, zorder=3,
                   label="one pair" if x == 0 else None)
        # The median is not a quantity from zero, so a tick, not a bar.
        ax.hlines(median, x - 0.3, x + 0.3, color=colour, linewidth=4, zorder=4,
                  label="median of the pairs" if x == 0 else None)
        ax.annotate(f"{median:.3f}", (x + 0.32, median), va="center", fontsize=8,
                    fontweight="bold")
    ax.axhline(1.0, color="#555555", linewidth=0.8, linestyle=":", zorder=1)
    ax.axhline(bound, color="black", linewidth=1.0, linestyle="--", zorder=1,
               label=f"goal: ≤ {bound:g}")
    every = [r for k in keys for r in cases[k]["ratios"]] + [bound, 1.0]
    span = max(every) - min(every)
    ax.set_ylim(min(every) - 0.1 * span - 0.02, max(every) + 0.6 * span + 0.04)
    ax.set_xlim(-0.6, len(keys) - 0.2)
    names = [labels.get(k, k).split(" (")[0] for k in keys]
    ax.set_xticks(xs, names, rotation=15, ha="right", fontsize=8)
    ax.set_ylabel("ratio of the time per operation")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3, zorder=0)
    ax.legend(fontsize=7, loc="upper left")


def _shared_panel(ax, shared: dict, threads: int) -> None:
    """Frames/s over rings and TCP side by side per case, the ratio written above."""
    rates = shared.get("rates", {})
    cases = [c for c in shared.get("cases", []) if c["key"] in rates]
    title = f"{threads} threads sharing one socket"
    if not cases:
        _not_measured(ax, title)
        return
    xs = range(len(cases))
    width = 0.38
    for offset, kind, label in ((-width / 2, "ring", "impl.socket (rings)"),
                                (width / 2, "tcp", "TCP loopback")):
        values = [rates[c["key"]][kind]["msgs_per_s"] for c in cases]
        ax.bar([x + offset for x in xs], values, width=width, label=label,
               color=_colour("socket" if kind == "ring" else "tcp"), zorder=2)
    for x, c in zip(xs, cases, strict=True):
        r = rates[c["key"]]
        top = max(r["ring"]["msgs_per_s"], r["tcp"]["msgs_per_s"])
        ax.annotate(f"{r['ratio']:.2g}×", (x, top), xytext=(0, 3), textcoords="offset points",
                    ha="center", va="bottom", fontsize=8, fontweight="bold")
    from matplotlib import ticker

    ax.yaxis.set_major_formatter(ticker.FuncFormatter(_plain))
    names = [f"{c['direction']} {_size_label(c['size'])}" for c in cases]
    ax.set_xticks(list(xs), names, fontsize=8)
    ax.set_ylabel("frames per second")
    ax.set_title(title + "\n(ratio: rings ÷ TCP; goal ≥ 3×)", fontsize=10)
    ax.grid(axis="y", alpha=0.3, zorder=0)
    ax.margins(y=0.15)
    ax.legend(fontsize=8, loc="upper right")


# Who used the socket last, in the takeover panel.
_LAST_USER = {"fast": "the same thread", "thread": "another thread",
              "process": "another process"}


def tokens_figure(results: dict, path: str | Path) -> Path:
    """Draw the token figure (single owner | shared socket | takeover) into the PNG *path*."""
    plt = _pyplot()
    tok = results.get("tokens") or {}
    fig, (single, shared, takeover) = plt.subplots(1, 3, figsize=(15, 4.8),
                                                   gridspec_kw={"width_ratios": [1, 1.2, 1.3]})
    bound = next((g["bound"] for g in tok.get("goals", []) if g["lower_is_better"]), 1.05)
    _single_owner_panel(single, tok.get("single", {}), bound)
    _shared_panel(shared, tok.get("shared", {}), tok.get("threads", 4))
    cases = tok.get("takeover", {}).get("cases", [])
    labels = {c["key"]: f"{_LAST_USER[c['across']]}, {'rings' if c['kind'] == 'ring' else 'TCP'}"
              for c in cases}
    _latency_panel(takeover, tok.get("takeover", {}).get("latency", {}), labels,
                   "Takeover: an 8-byte sendall; the socket's last user was ...")
    if labels:
        takeover.set_ylabel("sendall, µs (log scale)")
    fig.suptitle("Tokens: sharing a socket among threads and processes")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
