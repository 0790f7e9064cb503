"""``python -m bench``: run the benchmark suite and write the report.

Usage::

    python -m bench                  # full run, about 3-5 minutes; writes docs/
    python -m bench --quick --out /tmp/b   # seconds; rough numbers
    python -m bench --quick --only socket,tcp,unix --out /tmp/b   # the socket API only
    python -m bench --quick --only tokens --out /tmp/b   # the token benchmarks only
    python -m bench --quick --only fork --out /tmp/b     # the fork benchmarks only
    python -m bench --quick --only dropin --out /tmp/b   # unmodified HTTP servers only
    python -m bench --glibc-tunable  # re-run under the glibc memcpy tunable
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import replace

from bench.dropin import summary_lines as _dropin_summary
from bench.forking import summary_lines as _fork_summary
from bench.machine import GLIBC_TUNABLE, tunable_active
from bench.report import write_report
from bench.suite import Settings, run_suite

# Set in the environment of the re-executed interpreter, so it cannot loop.
_REEXEC_MARK = "SOCKSDIRECT_BENCH_REEXEC"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Measure the ring and impl.socket against TCP loopback, Unix sockets "
                    "and pipes.")
    p.add_argument("--quick", action="store_true",
                   help="few iterations (seconds, rough numbers); for smoke tests")
    p.add_argument("--out", default="docs", metavar="DIR",
                   help="where bench.md, bench.json and img/ go (default: docs)")
    p.add_argument("--repeats", type=int, metavar="N",
                   help="repeats of every measurement (default 3, --quick 2)")
    p.add_argument("--pin", choices=("auto", "always", "never"), default="auto",
                   help="pin parent and child to their own CPUs: auto (when two are free), "
                        "always, never (default auto)")
    p.add_argument("--only", metavar="KEYS",
                   help="comma-separated transports to run, e.g. ring-c,tcp "
                        "(keys: ring-c, ring-python, socket, tcp, unix, pipe, tokens, fork, "
                        "dropin; the set-up and asyncio runs follow socket, tcp and unix; "
                        "tokens, fork and dropin are the benchmarks of issues 4, 5 and 6)")
    p.add_argument("--glibc-tunable", action="store_true",
                   help=f"re-run the interpreter with GLIBC_TUNABLES={GLIBC_TUNABLE}, "
                        "which removes glibc's memcpy alignment trap")
    return p


def _reexec_with_tunable(argv: Sequence[str]) -> None:
    """Start this command again with the memcpy tunable: glibc reads it only at start-up."""
    env = dict(os.environ)
    current = env.get("GLIBC_TUNABLES")
    env["GLIBC_TUNABLES"] = f"{current}:{GLIBC_TUNABLE}" if current else GLIBC_TUNABLE
    env[_REEXEC_MARK] = "1"
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, "-m", "bench", *argv], env)


def _summary(results: dict, paths: dict) -> list[str]:
    """The lines printed at the end: goals, then where the report went."""
    labels = {t["key"]: t["label"] for t in results["transports"]}
    lines = ["", "headline (round-trip median; 64 B msg/s; 16 KiB GB/s):"]
    for key, label in labels.items():
        rtt = results["latency"][key]["median_us"]
        tput = results["throughput"][key]
        small = tput.get("64", {}).get("msgs_per_s")
        large = tput.get("16384", {}).get("gb_per_s")
        lines.append(f"  {label:<24} {rtt:8.2f} µs"
                     + (f" {small / 1e6:8.3f} M msg/s" if small else "")
                     + (f" {large:8.2f} GB/s" if large else ""))
    lines += _socket_summary(results)
    lines += _token_summary(results.get("tokens") or {})
    lines += _fork_summary(results.get("fork") or {})
    lines += _dropin_summary(results.get("dropin") or {})
    lines += ["", "goals:"]
    for g in results["goals"]:
        verdict = {True: "pass", False: "FAIL", None: "not measured"}[g["passed"]]
        value = "-" if g["value"] is None else f"{g['value']:.3g}"
        lines.append(f"  {verdict:<12} {g['what']} ({g['target']}): "
                     f"{labels[g['transport']]} {value}")
    for g in (results.get("tokens") or {}).get("goals", []):
        verdict = {True: "pass", False: "FAIL", None: "not measured"}[g["passed"]]
        value = "-" if g["value"] is None else f"{g['value']:.3g}"
        lines.append(f"  {verdict:<12} {g['what']} ({g['target']}): {value}")
    lines += ["", f"finished in {results['duration_s']} s; wrote:"]
    lines += [f"  {path}" for path in paths.values()]
    return lines


def _socket_summary(results: dict) -> list[str]:
    """Headline lines of the set-up rate and the asyncio echo."""
    lines = []
    setup = results.get("setup", {})
    if setup.get("rates"):
        lines += ["", "connection set-up (connect + accept + close):"]
        for case in setup["cases"]:
            rate = setup["rates"][case["key"]]["per_s"]
            lines.append(f"  {case['label']:<24} {rate:10,.0f} /s")
    echo = results.get("asyncio", {})
    if echo.get("latency"):
        lines += ["", "asyncio echo round trip (median):"]
        for variant in echo["variants"]:
            median = echo["latency"][variant["key"]]["median_us"]
            lines.append(f"  {variant['label']:<32} {median:8.2f} µs")
    return lines


def _token_summary(tok: dict) -> list[str]:
    """Headline lines of the token benchmarks (issue 4)."""
    if not tok:
        return []
    lines = ["", "tokens: single owner, time with token checks / without (median of pairs):"]
    labels = tok["single"]["labels"]
    for key, r in tok["single"]["cases"].items():
        lines.append(f"  {labels.get(key, key):<40} {r['ratio']:8.3f}")
    if tok["shared"]["rates"]:
        lines += ["", f"tokens: {tok['threads']} threads on one socket, frames/s "
                  "(rings, TCP, ratio):"]
    for case in tok["shared"]["cases"]:
        r = tok["shared"]["rates"].get(case["key"])
        if r is not None:
            lines.append(f"  {case['key']:<12} {r['ring']['msgs_per_s']:12,.0f} "
                         f"{r['tcp']['msgs_per_s']:12,.0f} {r['ratio']:6.2f}x")
    if tok["takeover"]["latency"]:
        lines += ["", "tokens: sendall after the socket's last user (median, p99):"]
    for case in tok["takeover"]["cases"]:
        r = tok["takeover"]["latency"].get(case["key"])
        if r is not None:
            lines.append(f"  {case['label']:<56} {r['median_us']:8.2f} µs "
                         f"{r['p99_us']:8.2f} µs")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    """Run the suite as the command line asks; return the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    if args.glibc_tunable and not tunable_active():
        if os.environ.get(_REEXEC_MARK):
            print("bench: GLIBC_TUNABLES did not take effect", file=sys.stderr)
            return 2
        _reexec_with_tunable(argv)
    settings = Settings.quick() if args.quick else Settings()
    if args.repeats is not None:
        settings = replace(settings, repeats=args.repeats)
    settings = replace(settings, pin=args.pin)
    if args.only:
        settings = replace(settings, only=tuple(k.strip() for k in args.only.split(",")))
    results = run_suite(settings, log=lambda line: print(line, flush=True))
    paths = write_report(results, args.out)
    print("\n".join(_summary(results, paths)))
    if not results["transports"] and not any(results.get(k) for k in ("tokens", "fork",
                                                                      "dropin")):
        print("bench: no transport was measured", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
