"""Smoke test of the benchmark suite: tiny runs, well-formed outputs, no timing assertions.

The suite runs once per module with a few hundred iterations into a
temporary directory; the tests then check what ``make bench`` promises:
a table row for every transport in every table, the figures, the JSON
keys the report is built from, and goals judged from the numbers.  The
socket-API part (impl.socket through the bench's own monitor, set-up
rate, asyncio echo) is checked the same way, and against the monitor's
own count of the connections it set up; so is the token part (issue 4:
single owner with and without token checks, four threads on one socket,
takeover latency), and the fork part (issue 5: a ForkingTCPServer over
rings and TCP, fork() with open connections).
"""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from bench import forking, measure, report, sockets, suite, tokens
from bench.transports import Channel, Endpoint, Transport
from impl.monitor.paths import ENV_AUTOSTART, ENV_SOCKET

REPEATS = 2
RTT_ITERATIONS = 200
ONE_CORE_ITERATIONS = 100
SETUP_WARMUP = 5
ASYNCIO_ITERATIONS = 100
TOKEN_PAIRS = 1
TAKEOVER_FAST = 50
TAKEOVER_THREAD = 20
TAKEOVER_PROCESS = 10
TAKEOVER_WARMUP = 2
FORK_ITERATIONS = 2
KERNEL_KEYS = {"tcp", "unix", "pipe"}
RING_KEYS = {"ring-c", "ring-python"}
SOCKET_KEY = sockets.SOCKET_KEY
SETUP_KEYS = {"setup-ring", "setup-tcp", "setup-unix"}
ASYNCIO_KEYS = {"asyncio-ring-stock", "asyncio-tcp", "asyncio-unix"}

# Budgets far beyond what a few hundred round trips take: the sample counts
# below are then exact, and a run that is slower fails by its deadline.
TINY = suite.Settings(
    repeats=REPEATS, rtt_warmup=20, rtt_iterations=RTT_ITERATIONS, rtt_budget=60.0,
    one_core_iterations=ONE_CORE_ITERATIONS, one_core_budget=60.0,
    stream_seconds=0.01, stream_min_count=4, stream_max_count=400,
    stream_warmup_bytes=64 * 1024,
    setup_warmup=SETUP_WARMUP, setup_seconds=0.01, setup_min_count=4, setup_max_count=40,
    asyncio_warmup=10, asyncio_iterations=ASYNCIO_ITERATIONS, asyncio_budget=60.0,
    token_pairs=TOKEN_PAIRS, token_rtt_iterations=100, token_rtt_budget=60.0,
    token_stream_seconds=0.01, shared_warmup=20, shared_seconds=0.01, shared_min_count=10,
    shared_max_count=40, takeover_warmup=TAKEOVER_WARMUP, takeover_fast=TAKEOVER_FAST,
    takeover_thread=TAKEOVER_THREAD, takeover_process=TAKEOVER_PROCESS,
    fork_server_warmup=1, fork_server_seconds=0.01, fork_iterations=FORK_ITERATIONS,
    dropin_warmup=5, dropin_requests=50, dropin_budget=60.0, dropin_clients=2,
    dropin_rate_warmup=0.0, dropin_seconds=0.02, deadline=60.0)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict[str, Path]]:
    """Run the tiny suite once and write its report; return (results, paths)."""
    out = tmp_path_factory.mktemp("bench")
    before = {name: os.environ.get(name) for name in (ENV_SOCKET, ENV_AUTOSTART)}
    results = suite.run_suite(TINY, log=lambda line: None)
    # The bench's private monitor is gone and the environment is as it was.
    assert {name: os.environ.get(name) for name in before} == before
    paths = report.write_report(results, out)
    return results, paths


def _keys(results: dict) -> set[str]:
    return {t["key"] for t in results["transports"]}


def _section(markdown: str, title: str) -> str:
    """The text of the '## title...' section, up to the next '## ' heading."""
    match = re.search(rf"^## {re.escape(title)}.*?(?=^## |\Z)", markdown, re.M | re.S)
    assert match, f"no section {title!r} in bench.md"
    return match.group(0)


def _rows(text: str, label: str) -> list[list[str]]:
    """The cells of the table rows in *text* whose first cell is *label*."""
    rows = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] == label:
            rows.append(cells)
    return rows


def test_every_transport_measured(run: tuple[dict, dict]) -> None:
    """The kernel baselines always run; nothing that was available failed."""
    results, _ = run
    assert results["failed"] == {}
    assert KERNEL_KEYS <= _keys(results)
    available, skipped = suite.all_transports()
    assert _keys(results) == {t.key for t in available}
    # The run may skip more (the ring-first asyncio loop), never less.
    assert set(skipped) <= set(results["skipped"])
    assert set(results["skipped"]) - set(skipped) <= {sockets.ASYNCIO_RING_SELECTOR}


def test_ring_measured() -> None:
    """Both ring paths and impl.socket take part (skips, naming the reason, while they cannot)."""
    available, skipped = suite.all_transports()
    if skipped:
        pytest.skip("; ".join(f"{k}: {why}" for k, why in skipped.items()))
    assert RING_KEYS | {SOCKET_KEY} <= {t.key for t in available}


def test_markdown_has_a_row_per_transport(run: tuple[dict, dict]) -> None:
    """Round trip, both throughput tables and the one-core table list each transport."""
    results, paths = run
    md = paths["markdown"].read_text()
    labels = {t["key"]: t["label"] for t in results["transports"]}
    kernels = [k for k in labels if k in KERNEL_KEYS]
    rtt = _section(md, "Round trip")
    tput = _section(md, "Streaming throughput")
    one = _section(md, "Both processes on one core")
    for key, label in labels.items():
        (row,) = _rows(rtt, label)
        # label, median, p99, p99.9, spread, samples, then one ratio per kernel transport
        assert len(row) == 6 + len(kernels), row
        assert row[5] == f"{REPEATS * RTT_ITERATIONS:,}"
        # one row in the msg/s table and one in the GB/s table, a cell per size,
        # plus the ratio rows (two leading cells) when this is a ring
        cells = [r for r in _rows(tput, label) if len(r) == 1 + len(suite.SIZES)]
        assert len(cells) == 2, cells
        if key in RING_KEYS:
            ratio_rows = [r for r in _rows(tput, label) if len(r) == 2 + len(suite.SIZES)]
            assert [r[1] for r in ratio_rows] == [labels[k] for k in kernels]
        if key in RING_KEYS or key in (SOCKET_KEY, "unix", "pipe"):
            (row,) = _rows(one, label)
            assert row[5] == f"{REPEATS * ONE_CORE_ITERATIONS:,}"
        else:
            assert _rows(one, label) == []


def test_markdown_links_and_machine(run: tuple[dict, dict]) -> None:
    """bench.md links the figures and the JSON, and names the machine and the method."""
    results, paths = run
    md = paths["markdown"].read_text()
    for target in ("img/bench-latency.png", "img/bench-throughput.png",
                   "img/bench-socket.png", "img/bench-tokens.png", "bench.json"):
        assert f"]({target})" in md
    machine = _section(md, "Machine")
    for key in ("cpu_model", "kernel", "python", "date"):
        assert str(results["machine"][key]) in machine
    method = _section(md, "Method")
    assert "memcpy" in method and results["pinning"]["reason"] in method


def test_goals_table(run: tuple[dict, dict]) -> None:
    """Every goal is judged for every measured ring, and the table says pass or FAIL."""
    results, paths = run
    rings = sorted(_keys(results) & RING_KEYS)
    goals = results["goals"]
    socket_goals = len(suite.SOCKET_GOALS) if SOCKET_KEY in _keys(results) else 0
    assert len(goals) == len(suite.GOALS) * len(rings) + socket_goals
    md = _section(paths["markdown"].read_text(), "Goals")
    for g in goals:
        if g["passed"] is None:
            # Only the ring-first selector may be missing (impl.selectors not there yet).
            assert g["goal"] == "asyncio_vs_tcp", g
            assert sockets.ASYNCIO_RING_SELECTOR in results["skipped"]
            continue
        assert g["passed"] in (True, False), g  # every input was measured
        # The verdict agrees with the value and the bound.
        if g["goal"] == "one_core_p99":
            assert g["passed"] == (g["value"] < g["bound"])
        else:
            assert g["passed"] == (g["value"] >= g["bound"])
    verdicts = re.findall(r"\*\*(pass|FAIL)\*\*", md)
    dropin_goals = (results.get("dropin") or {}).get("goals", [])
    assert len(verdicts) == len([g for g in goals + dropin_goals if g["passed"] is not None])


def _png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk; fails if the file is not a PNG."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_figures_written(run: tuple[dict, dict]) -> None:
    """Both figures are PNGs of a readable size."""
    _, paths = run
    for key in ("latency_png", "throughput_png", "socket_png", "tokens_png"):
        width, height = _png_size(paths[key])
        assert width >= 800 and height >= 300


def test_json_keys_and_consistency(run: tuple[dict, dict]) -> None:
    """bench.json holds every number the page shows, in a consistent shape."""
    results, paths = run
    data = json.loads(paths["json"].read_text())
    for key in ("schema", "machine", "settings", "pinning", "memcpy_probe", "transports",
                "skipped", "failed", "latency", "throughput", "one_core", "goals",
                "duration_s", "setup", "asyncio", "tokens", "monitor"):
        assert key in data, key
    for key in ("cpu_model", "cpu_count", "kernel", "python", "date", "loadavg_end"):
        assert key in data["machine"], key
    for key in _keys(results):
        rtt = data["latency"][key]
        assert 0 < rtt["min_us"] <= rtt["median_us"] <= rtt["p99_us"] <= rtt["p999_us"]
        assert rtt["p999_us"] <= rtt["max_us"]
        assert len(rtt["repeat_median_us"]) == REPEATS
        assert set(data["throughput"][key]) == {str(n) for n in suite.SIZES}
        for size, row in data["throughput"][key].items():
            assert len(row["counts"]) == len(row["repeat_msgs_per_s"]) == REPEATS
            assert all(TINY.stream_min_count <= c <= TINY.stream_max_count
                       for c in row["counts"])
            assert min(row["repeat_msgs_per_s"]) <= row["msgs_per_s"] <= max(
                row["repeat_msgs_per_s"])
            assert row["gb_per_s"] == pytest.approx(row["msgs_per_s"] * int(size) / 1e9)
    pin = data["pinning"]
    assert pin["pinned"] == (pin["parent_cpu"] is not None)
    assert data["one_core"]["cpu"] in data["machine"]["cpus_allowed"]


def test_percentile_nearest_rank() -> None:
    """Nearest-rank percentiles, and ranges that are refused."""
    samples = list(range(1, 1001))
    assert suite.percentile(samples, 50) == 500
    assert suite.percentile(samples, 99) == 990
    assert suite.percentile(samples, 99.9) == 999
    assert suite.percentile(samples, 100) == 1000
    assert suite.percentile([7], 99.9) == 7
    with pytest.raises(ValueError):
        suite.percentile([], 50)
    with pytest.raises(ValueError):
        suite.percentile(samples, 101)


def _fake_results(ring_rtt: float, ring_64: float, one_core_p99: float) -> dict:
    """A minimal result set: TCP, Unix, one ring; the rest of the page from a real shape."""
    def rtt(median: float, p99: float) -> dict:
        return {"median_us": median, "p99_us": p99, "p999_us": p99}

    def tput(msgs: float, size: int) -> dict:
        return {"msgs_per_s": msgs, "gb_per_s": msgs * size / 1e9}

    return {
        "transports": [{"key": "ring-c", "label": "ring", "kernel": False},
                       {"key": "tcp", "label": "tcp", "kernel": True},
                       {"key": "unix", "label": "unix", "kernel": True}],
        "latency": {"ring-c": rtt(ring_rtt, 5), "tcp": rtt(30, 60), "unix": rtt(20, 40)},
        "throughput": {"ring-c": {"64": tput(ring_64, 64), "16384": tput(400_000, 16384)},
                       "tcp": {"64": tput(1e5, 64), "16384": tput(50_000, 16384)}},
        "one_core": {"latency": {"ring-c": rtt(10, one_core_p99)}},
    }


def test_goals_pass_and_fail_at_the_bounds() -> None:
    """Each goal passes just inside its bound and fails just outside it."""
    good = {g["goal"]: g["passed"] for g in suite.evaluate_goals(_fake_results(2.5, 1.2e6, 99))}
    assert good == dict.fromkeys(good, True)
    assert set(good) == {name for name, *_ in suite.GOALS}
    bad = {g["goal"]: g for g in suite.evaluate_goals(_fake_results(2.6, 1.19e6, 100))}
    assert bad["rtt_vs_tcp"]["passed"] is False  # 30 / 2.6 < 12
    assert bad["rtt_vs_unix"]["passed"] is False  # 20 / 2.6 < 8
    assert bad["msgs_64"]["passed"] is False
    assert bad["one_core_p99"]["passed"] is False
    assert bad["tput_16k_vs_tcp"]["value"] == pytest.approx(8.0)


def test_goals_not_measured_without_a_baseline() -> None:
    """A goal whose inputs are missing is 'not measured', never a pass."""
    results = _fake_results(2.0, 2e6, 50)
    del results["latency"]["tcp"]
    verdict = {g["goal"]: g for g in suite.evaluate_goals(results)}
    assert verdict["rtt_vs_tcp"]["value"] is None
    assert verdict["rtt_vs_tcp"]["passed"] is None


def _silent_echo_transport() -> Transport:
    """A Unix socketpair whose child never answers: the parent would wait forever."""
    from bench.transports import kernel_transports

    unix = next(t for t in kernel_transports() if t.key == "unix")

    def open_channel(same_cpu: bool) -> Channel:
        inner = unix.open(same_cpu)

        def child() -> Endpoint:
            ep = inner.child()
            return Endpoint(send_all=lambda data: None, recv_some=ep.recv_some,
                            close=ep.close)

        return Channel(parent=inner.parent, child=child)

    return Transport("silent", "silent", True, open_channel)


def test_stuck_peer_is_an_error_not_a_hang() -> None:
    """A child that never replies hits its deadline; the parent gets an error back."""
    with pytest.raises((OSError, EOFError)):
        measure.round_trips(_silent_echo_transport(), measure.Placement(), warmup=0,
                            iterations=10, budget=10.0, seconds=1.0)


def test_cli_quick(tmp_path: Path) -> None:
    """`python -m bench --quick --out DIR` writes the report and exits 0."""
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=str(root))
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--repeats", "1", "--pin", "never",
         "--out", str(tmp_path)],
        cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "goals:" in done.stdout and "not pinned" in done.stdout
    assert "connection set-up" in done.stdout and "asyncio echo" in done.stdout
    assert "tokens: single owner" in done.stdout
    for name in ("bench.md", "bench.json", "img/bench-latency.png",
                 "img/bench-throughput.png", "img/bench-socket.png", "img/bench-tokens.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    data = json.loads((tmp_path / "bench.json").read_text())
    assert data["settings"]["repeats"] == 1 and data["pinning"]["pinned"] is False


def test_stream_count_follows_the_warmup_pace() -> None:
    """The timed count is the warm-up's rate times the target, clamped to the bounds."""
    # 1,000 messages in 0.1 s is 10,000 msg/s: 0.5 s of that is 5,000 messages.
    assert measure._calibrated(1_000, 100_000_000, 0.5, 10, 10**6) == 5_000
    assert measure._calibrated(1_000, 100_000_000, 0.5, 10, 4_000) == 4_000
    assert measure._calibrated(1_000, 10**12, 0.5, 10, 10**6) == 10
    assert measure._calibrated(1_000, 0, 0.5, 10, 10**6) == 10**6  # no division by zero


# -- the socket API ---------------------------------------------------------------------


def _socket_api_or_skip(results: dict) -> None:
    if SOCKET_KEY not in _keys(results):
        pytest.skip(f"impl.socket not measured: {results['skipped'].get(SOCKET_KEY)}")


def test_socket_api_measured(run: tuple[dict, dict]) -> None:
    """Set-up rates and asyncio echo are there for every case, with the counts asked for."""
    results, _ = run
    _socket_api_or_skip(results)
    rates = results["setup"]["rates"]
    assert set(rates) == SETUP_KEYS
    for key, r in rates.items():
        assert len(r["counts"]) == len(r["repeat_per_s"]) == REPEATS, key
        assert all(TINY.setup_min_count <= c <= TINY.setup_max_count for c in r["counts"])
        assert min(r["repeat_per_s"]) <= r["per_s"] <= max(r["repeat_per_s"])
        assert r["us_per_connection"] == pytest.approx(1e6 / r["per_s"])
    echo = results["asyncio"]["latency"]
    expected = set(ASYNCIO_KEYS)
    if sockets.ASYNCIO_RING_SELECTOR not in results["skipped"]:
        expected.add(sockets.ASYNCIO_RING_SELECTOR)
    assert set(echo) == expected
    for key, r in echo.items():
        assert r["samples"] == REPEATS * ASYNCIO_ITERATIONS, key
        assert 0 < r["min_us"] <= r["median_us"] <= r["p99_us"] <= r["max_us"]


def test_monitor_counted_every_ring_connection(run: tuple[dict, dict]) -> None:
    """The monitor set up exactly the ring connections the run made, and none fell back.

    One per round-trip, streaming and one-core run, one per set-up cycle
    (warm-up included), one per asyncio run over rings: a connection that
    silently went over the kernel would break the count.
    """
    results, _ = run
    _socket_api_or_skip(results)
    counters = results["monitor"]["counters"]
    assert counters["kernel_fallbacks"] == 0
    assert counters["denied"] == counters["refused"] == 0
    setup = sum(SETUP_WARMUP + c for c in results["setup"]["rates"]["setup-ring"]["counts"])
    ring_echo = [k for k in results["asyncio"]["latency"] if k.startswith("asyncio-ring")]
    per_repeat = 1 + len(suite.SIZES) + 1 + len(ring_echo)
    fork = forking.ring_connections(results["fork"], TINY) if results.get("fork") else 0
    assert counters["connections"] == (REPEATS * per_repeat + setup
                                       + tokens.ring_connections(TINY) + fork)


def test_socket_section_rows(run: tuple[dict, dict]) -> None:
    """bench.md has the socket API section: side by side, set-up and asyncio tables."""
    results, paths = run
    _socket_api_or_skip(results)
    section = _section(paths["markdown"].read_text(), "Through the socket API")
    assert "](img/bench-socket.png)" in section
    for case in results["setup"]["cases"]:
        (row,) = _rows(section, case["label"])
        assert len(row) == 7, row
    for variant in results["asyncio"]["variants"]:
        (row,) = _rows(section, variant["label"])
        assert row[5] == f"{REPEATS * ASYNCIO_ITERATIONS:,}"
    (rtt,) = _rows(section, "round trip median, µs")
    tcp_over_socket = results["latency"]["tcp"]["median_us"] / results["latency"][SOCKET_KEY][
        "median_us"]
    assert rtt[4] == report._ratio(tcp_over_socket)
    (setup,) = _rows(section, "connection set-up, per s")
    assert setup[1] == report._count(results["setup"]["rates"]["setup-ring"]["per_s"])


def _fake_socket_results(rtt: float, msgs_64: float, msgs_16k: float, setup: float,
                         echo: float | None) -> dict:
    """Socket-API results: TCP at 30 µs, 100k msg/s, 1,000 set-ups/s, asyncio echo 100 µs."""
    def lat(median: float) -> dict:
        return {"median_us": median, "p99_us": median, "p999_us": median}

    def tput(m64: float, m16k: float) -> dict:
        return {"64": {"msgs_per_s": m64}, "16384": {"msgs_per_s": m16k}}

    echo_lat = {"asyncio-tcp": lat(100.0)}
    if echo is not None:
        echo_lat[sockets.ASYNCIO_RING_SELECTOR] = lat(echo)
    return {
        "transports": [{"key": SOCKET_KEY, "label": "impl.socket", "kernel": False},
                       {"key": "tcp", "label": "tcp", "kernel": True},
                       {"key": "unix", "label": "unix", "kernel": True}],
        "latency": {SOCKET_KEY: lat(rtt), "tcp": lat(30.0), "unix": lat(21.0)},
        "throughput": {SOCKET_KEY: tput(msgs_64, msgs_16k), "tcp": tput(1e5, 1e5)},
        "one_core": {"latency": {}},
        "setup": {"rates": {"setup-ring": {"per_s": setup}, "setup-tcp": {"per_s": 1000.0}}},
        "asyncio": {"latency": echo_lat},
    }


def test_socket_goals_pass_and_fail_at_the_bounds() -> None:
    """Each socket-API goal passes just inside its bound and fails just outside it."""
    good = {g["goal"]: g for g in suite.evaluate_goals(
        _fake_socket_results(3.0, 5e5, 5e5, 1000.0, 50.0))}
    assert set(good) == {name for name, *_ in suite.SOCKET_GOALS}
    assert all(g["passed"] is True and g["group"] == "socket" for g in good.values())
    bad = {g["goal"]: g for g in suite.evaluate_goals(
        _fake_socket_results(3.01, 4.99e5, 4.99e5, 999.0, 50.1))}
    assert all(g["passed"] is False for g in bad.values()), bad
    assert bad["sock_rtt_vs_tcp"]["value"] == pytest.approx(30 / 3.01)
    assert bad["setup_vs_tcp"]["value"] == pytest.approx(0.999)


def test_asyncio_goal_not_measured_without_the_selector() -> None:
    """Without the ring-first selector the asyncio goal is 'not measured', never a pass."""
    verdict = {g["goal"]: g for g in suite.evaluate_goals(
        _fake_socket_results(1.0, 1e6, 1e6, 2000.0, None))}
    assert verdict["asyncio_vs_tcp"]["value"] is None
    assert verdict["asyncio_vs_tcp"]["passed"] is None
    assert verdict["sock_rtt_vs_tcp"]["passed"] is True


def test_setup_without_a_monitor_is_an_error(tmp_path: Path) -> None:
    """With no monitor the ring set-up run fails; it never times kernel sockets as rings."""
    from tests.monitor_util import use_monitor

    case = next(c for c in sockets.setup_cases() if c.kind == "ring")
    scratch = set(Path(tempfile.gettempdir()).glob("sdbench-setup-*"))
    with use_monitor(str(tmp_path / "no-monitor.sock")):
        with pytest.raises((OSError, EOFError)):
            sockets.setup_rate(case, measure.Placement(), warmup=2, target=0.01,
                               min_count=1, max_count=2, seconds=30.0)
    # ... and leaves no scratch directory behind.
    assert set(Path(tempfile.gettempdir()).glob("sdbench-setup-*")) <= scratch


def test_private_monitor_restores_the_environment() -> None:
    """private_monitor points the library at its own monitor, then puts everything back."""
    before = {name: os.environ.get(name) for name in (ENV_SOCKET, ENV_AUTOSTART)}
    with sockets.private_monitor() as mon:
        assert os.environ[ENV_SOCKET] == mon.path != before[ENV_SOCKET]
        assert os.environ[ENV_AUTOSTART] == "0"
        assert mon.status()["listeners"] == []
        path = mon.path
    assert mon.proc.poll() is not None
    assert not os.path.exists(path)
    assert {name: os.environ.get(name) for name in before} == before


def _fake_selectors(monkeypatch: pytest.MonkeyPatch, **names: object) -> None:
    """Stand in an impl.selectors module offering *names* (the real one may not exist yet)."""
    import types

    module = types.ModuleType("impl.selectors")
    for name, value in names.items():
        setattr(module, name, value)
    monkeypatch.setitem(sys.modules, "impl.selectors", module)


def test_ring_loop_found_either_way(monkeypatch: pytest.MonkeyPatch) -> None:
    """new_event_loop() is preferred; SelectorEventLoop(RingSelector()) is the fallback."""
    import asyncio
    import selectors

    made = []

    def new_event_loop() -> asyncio.AbstractEventLoop:
        made.append("new_event_loop")
        return asyncio.SelectorEventLoop()

    _fake_selectors(monkeypatch, new_event_loop=new_event_loop,
                    RingSelector=selectors.DefaultSelector)
    factory, how = sockets.ring_loop_factory()
    assert how == "impl.selectors.new_event_loop()"
    factory().close()
    assert made == ["new_event_loop"]
    _fake_selectors(monkeypatch, RingSelector=selectors.PollSelector)
    factory, how = sockets.ring_loop_factory()
    loop = factory()
    try:
        assert isinstance(loop._selector, selectors.PollSelector)
    finally:
        loop.close()
    _fake_selectors(monkeypatch)
    factory, why = sockets.ring_loop_factory()
    assert factory is None and "RingSelector" in why


def test_asyncio_ring_selector_variant_runs(monkeypatch: pytest.MonkeyPatch,
                                            monitor: object) -> None:
    """With a selector module present the goal's variant runs over rings, in both processes."""
    import asyncio

    _fake_selectors(monkeypatch, new_event_loop=asyncio.SelectorEventLoop)
    variants, skipped = sockets.asyncio_variants()
    assert skipped == {}
    (ring,) = [v for v in variants if v.key == sockets.ASYNCIO_RING_SELECTOR]
    assert ring.kind == "ring"
    samples = sockets.asyncio_round_trips(ring, measure.Placement(), warmup=5, iterations=50,
                                          budget=60.0, seconds=60.0)
    assert len(samples) == 50 and min(samples) > 0


# -- the token benchmarks (issue 4) --------------------------------------------------------------


def _tokens_or_skip(results: dict) -> dict:
    tok = results.get("tokens")
    if not tok:
        pytest.skip(f"token benchmarks not run: {results['skipped'].get('tokens')}")
    return tok


def test_tokens_single_owner(run: tuple[dict, dict]) -> None:
    """Every single-owner case has one (on, off) cost per pair, and the ratio follows them."""
    tok = _tokens_or_skip(run[0])
    cases = tok["single"]["cases"]
    assert set(cases) == {key for key, _ in tokens.SINGLE_CASES}
    for key, r in cases.items():
        assert r["pairs"] == len(r["on_ns"]) == len(r["off_ns"]) == TOKEN_PAIRS, key
        assert min(r["on_ns"] + r["off_ns"]) > 0
        assert r["ratios"] == pytest.approx([a / b for a, b in zip(r["on_ns"], r["off_ns"],
                                                                    strict=True)])
        assert min(r["ratios"]) <= r["ratio"] <= max(r["ratios"])


def test_tokens_shared_sockets(run: tuple[dict, dict]) -> None:
    """Every shared case ran over rings and TCP in every repeat; rings delivered every frame."""
    tok = _tokens_or_skip(run[0])
    rates = tok["shared"]["rates"]
    assert set(rates) == {c.key for c in tokens.shared_cases()}
    for key, r in rates.items():
        for kind in ("ring", "tcp"):
            row = r[kind]
            assert len(row["counts"]) == len(row["repeat_msgs_per_s"]) == REPEATS, key
            assert all(tokens.THREADS * TINY.shared_min_count <= c
                       <= tokens.THREADS * TINY.shared_max_count for c in row["counts"])
            assert min(row["repeat_msgs_per_s"]) <= row["msgs_per_s"] <= max(
                row["repeat_msgs_per_s"])
        assert r["ring"]["bad_frames"] == 0
        assert r["ratio"] == pytest.approx(r["ring"]["msgs_per_s"] / r["tcp"]["msgs_per_s"])


def test_tokens_takeover_samples(run: tuple[dict, dict]) -> None:
    """Each takeover case has exactly the samples asked for, warm-up dropped."""
    tok = _tokens_or_skip(run[0])
    latency = tok["takeover"]["latency"]
    assert set(latency) == {c.key for c in tokens.TAKEOVER_CASES}
    per_repeat = {"fast": TAKEOVER_FAST, "thread": 2 * TAKEOVER_THREAD,
                  "process": 2 * TAKEOVER_PROCESS}
    for case in tokens.TAKEOVER_CASES:
        r = latency[case.key]
        assert r["samples"] == REPEATS * per_repeat[case.across], case.key
        assert 0 < r["min_us"] <= r["median_us"] <= r["p99_us"] <= r["max_us"]


def test_tokens_went_through_the_monitor(run: tuple[dict, dict]) -> None:
    """Each cross-process ring send took the token through the monitor: a TAKE per send."""
    results, _ = run
    _tokens_or_skip(results)
    counters = results["monitor"]["counters"]
    turns = TAKEOVER_WARMUP + TAKEOVER_PROCESS
    # Per repeat: every turn of the child and of the parent (after the parent's send
    # before the fork, which needs none).
    assert counters["takes"] >= REPEATS * 2 * turns
    assert counters["grants"] >= REPEATS * 2 * turns
    assert counters["forks"] >= REPEATS


def test_tokens_section(run: tuple[dict, dict]) -> None:
    """bench.md has the Tokens section: the figure, a verdict per goal, a row per case."""
    results, paths = run
    tok = _tokens_or_skip(results)
    md = paths["markdown"].read_text()
    section = _section(md, "Tokens: sharing a socket")
    assert "](img/bench-tokens.png)" in section
    for g in tok["goals"]:
        (row,) = _rows(section, g["what"])
        assert row[3] == {True: "**met**", False: "**missed**", None: "-"}[g["passed"]]
    labels = dict(tokens.SINGLE_CASES)
    for key, r in tok["single"]["cases"].items():
        (row,) = _rows(section, labels[key])
        assert row[1] == f"{r['ratio']:.3f}"
        assert row[4] == report._us(min(r["on_ns"]) / 1000)
    for case in tokens.shared_cases():
        (row,) = _rows(section, case.label)
        assert row[3] == report._ratio(tok["shared"]["rates"][case.key]["ratio"])
    for case in tokens.TAKEOVER_CASES:
        (row,) = _rows(section, case.label)
        assert row[5] == f"{tok['takeover']['latency'][case.key]['samples']:,}"
    goals = _section(md, "Goals")
    met = sum(1 for g in tok["goals"] if g["passed"])
    assert f"{met} of {len(tokens.TOKEN_GOALS)} goals met" in goals


def _fake_tokens(single: float, shared: float) -> dict:
    """Token results: every single-owner ratio *single*, every shared case *shared* × TCP."""
    cases = {key: {"ratio": single} for key, _ in tokens.SINGLE_CASES}
    rates = {c.key: {"ring": {"msgs_per_s": 1000.0 * shared}, "tcp": {"msgs_per_s": 1000.0}}
             for c in tokens.shared_cases()}
    return {"single": {"cases": cases}, "shared": {"rates": rates}}


def test_token_goals_pass_and_fail_at_the_bounds() -> None:
    """Single-owner goals pass at or below 1.05, shared ones at or above 3× TCP."""
    good = tokens.evaluate_token_goals(_fake_tokens(1.05, 3.0))
    assert {g["goal"] for g in good} == {name for name, *_ in tokens.TOKEN_GOALS}
    assert all(g["passed"] is True for g in good), good
    bad = tokens.evaluate_token_goals(_fake_tokens(1.051, 2.99))
    assert all(g["passed"] is False for g in bad), bad
    shared = next(g for g in bad if g["goal"] == "tok_send_64_vs_tcp")
    assert shared["value"] == pytest.approx(2.99)
    missing = _fake_tokens(1.0, 4.0)
    del missing["shared"]["rates"]["recv-64"]["tcp"]
    del missing["single"]["cases"]["rtt"]
    verdict = {g["goal"]: g for g in tokens.evaluate_token_goals(missing)}
    assert verdict["tok_recv_64_vs_tcp"]["passed"] is None
    assert verdict["tok_single_rtt"]["passed"] is None
    assert verdict["tok_send_64_vs_tcp"]["passed"] is True


@pytest.mark.parametrize("switched_off", [False, True])
def test_tokens_off_bypasses_the_token(switched_off: bool) -> None:
    """The private switch: with it a thread that does not own the send token still sends
    without taking it over; without it the same send moves the token to that thread."""
    import threading

    import impl

    a, b = impl.socketpair()
    try:
        tokens._check_tokens_on(a)
        if switched_off:
            tokens.tokens_off(a)
            with pytest.raises(ValueError):
                tokens._check_tokens_on(a)
        owner_before = a._conn.tx.token_word("writer") >> 2
        sender = {}

        def send() -> None:
            sender["tid"] = threading.get_native_id()
            a.sendall(b"12345678")

        t = threading.Thread(target=send)
        t.start()
        t.join(30)
        assert not t.is_alive()
        assert b.recv(8) == b"12345678"
        owner_after = a._conn.tx.token_word("writer") >> 2
        if switched_off:
            assert owner_after == owner_before == threading.get_native_id()
        else:
            assert owner_after == sender["tid"] != owner_before
    finally:
        a.close()
        b.close()


def test_shared_rate_rejects_bad_arguments() -> None:
    """Frame sizes below the two headers, zero warm-up or bad bounds are refused up front."""
    case = tokens.SharedCase("send-8", "tiny", "send", 8)
    with pytest.raises(ValueError):
        tokens.shared_rate(case, "tcp", measure.Placement(), warmup=10, target=0.01,
                           min_count=1, max_count=2)
    good = tokens.shared_cases()[0]
    with pytest.raises(ValueError):
        tokens.shared_rate(good, "unix", measure.Placement(), warmup=10, target=0.01,
                           min_count=1, max_count=2)
    with pytest.raises(ValueError):
        tokens.shared_rate(good, "tcp", measure.Placement(), warmup=10, target=0.01,
                           min_count=3, max_count=2)


def test_shared_tcp_counts_torn_frames_instead_of_failing() -> None:
    """Over TCP the same four-thread run completes and reports its frame count and checks."""
    case = next(c for c in tokens.shared_cases() if c.direction == "recv" and c.size == 64)
    frames, ns, bad = tokens.shared_rate(case, "tcp", measure.Placement(), warmup=5,
                                         target=0.01, min_count=5, max_count=10, seconds=60.0)
    assert tokens.THREADS * 5 <= frames <= tokens.THREADS * 10
    assert ns > 0 and bad >= 0


def test_sent_frame_check_finds_torn_and_missing_frames() -> None:
    """The reader's check counts a torn frame and a skipped sequence number, and no more."""
    size = 64
    frames = [tokens._sender_frames(k, size) for k in range(2)]
    good = frames[0][0] + frames[1][0] + frames[0][1] + frames[1][1]
    following = [0, 0]
    assert tokens._check_sent_frames(memoryview(good), size, following) == 0
    assert following == [2, 2]
    torn = frames[0][2][:32] + frames[1][2][32:]
    skipped = frames[1][4]  # sender 1's frames 2 and 3 never came
    following = [2, 2]
    assert tokens._check_sent_frames(memoryview(torn + skipped), size, following) == 2
    assert following == [2, 5]


def test_run_tokens_reports_a_failed_case_without_partial_data() -> None:
    """A case that fails in one repeat is left out altogether; the others are summarised.

    The measurements are stood in for by canned values (no processes), and
    the stand-in runner drops a key after its first failure, as the suite's does.
    """
    failures = {"tokens-send-64-ring": 2, "tokens-takeover-process-ring": 1}
    calls: dict[str, int] = {}
    failed: set[str] = set()

    def attempt(key: str, what: str, run: object) -> object:
        calls[key] = calls.get(key, 0) + 1
        if key in failed or failures.get(key) == calls[key]:
            failed.add(key)
            return None
        if key == "tokens-single":
            return 1000.0 if "on" in what else 800.0
        if key.startswith("tokens-takeover-thread"):
            return {"fast": [1000, 1000], "thread": [5000, 6000]}
        if key.startswith("tokens-takeover-process"):
            return {"process": [400_000, 500_000]}
        frames = 4_000
        return (frames, 10**7 if key.endswith("-ring") else 2 * 10**7, 0)

    tok = tokens.run_tokens(TINY, measure.Placement(), attempt, lambda line: None)
    assert set(tok["shared"]["rates"]) == {c.key for c in tokens.shared_cases()} - {"send-64"}
    for key, r in tok["shared"]["rates"].items():
        assert r["ratio"] == pytest.approx(2.0), key
        assert len(r["ring"]["counts"]) == REPEATS
    assert set(tok["takeover"]["latency"]) == {c.key for c in tokens.TAKEOVER_CASES} - {
        "process-ring"}
    assert tok["takeover"]["latency"]["thread-tcp"]["samples"] == 2 * REPEATS
    for r in tok["single"]["cases"].values():
        assert r["ratio"] == pytest.approx(1.25) and r["pairs"] == TOKEN_PAIRS
    verdict = {g["goal"]: g for g in tok["goals"]}
    assert verdict["tok_send_64_vs_tcp"]["passed"] is None
    assert verdict["tok_recv_64_vs_tcp"]["passed"] is False  # 2× TCP is short of 3×
    assert verdict["tok_single_rtt"]["passed"] is False  # 1.25 is over 1.05
    # Every pair measured every case once with token checks and once without ...
    assert calls["tokens-single"] == 2 * TOKEN_PAIRS * len(tokens.SINGLE_CASES)
    # ... in the other order than the pair before.
    assert list(tokens._pair_orders(3)) == [(True, False), (False, True), (True, False)]


def _fork_or_skip(results: dict) -> dict:
    fork = results.get("fork")
    if not fork:
        pytest.skip(f"fork benchmarks not run: {results['skipped'].get('fork')}")
    return fork


def test_forking_server_measured(run: tuple[dict, dict]) -> None:
    """The ForkingTCPServer ran over rings and TCP in every repeat; the ratio follows them."""
    fork = _fork_or_skip(run[0])
    rates = fork["server"]["rates"]
    assert set(rates) == {"ring", "tcp"}
    for kind, r in rates.items():
        assert len(r["repeat_per_s"]) == REPEATS, kind
        assert r["samples"] >= REPEATS, kind
        assert 0 < r["min_us"] <= r["median_us"] <= r["max_us"]
        assert r["per_s"] == pytest.approx(1e6 / r["median_us"])
    assert fork["server"]["ratio"] == pytest.approx(rates["ring"]["per_s"]
                                                    / rates["tcp"]["per_s"])


def test_fork_latency_samples(run: tuple[dict, dict]) -> None:
    """Every (kind, size) fork case has first and second forks, FORK_ITERATIONS each repeat."""
    fork = _fork_or_skip(run[0])
    latency = fork["fork"]["latency"]
    assert set(latency) == {f"{k}-{n}" for k in ("ring", "tcp") for n in forking.FORK_SIZES}
    for key, cases in latency.items():
        assert set(cases) == {"first-return", "first-ready", "again-return", "again-ready"}
        for which, r in cases.items():
            assert r["samples"] == REPEATS * FORK_ITERATIONS, (key, which)
        # The child reports after fork() returned in it, so never before the parent's return.
        assert cases["first-ready"]["min_us"] > 0


def test_fork_section(run: tuple[dict, dict]) -> None:
    """bench.md has the Fork section with a row per server kind and per fork case."""
    results, paths = run
    fork = _fork_or_skip(results)
    section = _section(paths["markdown"].read_text(), "Fork")
    assert _rows(section, "impl sockets (rings)") and _rows(section, "kernel TCP loopback")
    assert f"{fork['server']['ratio']:.2f}×" in section
    for n in forking.FORK_SIZES:
        suffix = "s" if n != 1 else ""
        assert _rows(section, f"{n} ring connection{suffix}"), n
        assert _rows(section, f"{n} TCP connection{suffix}"), n


def test_forking_server_checks_every_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that answers wrongly fails the measurement instead of counting it."""
    def wrong(self) -> None:
        forking._recv_exact(self.request, 64)
        self.request.sendall(b"\xff" * 64)   # no request reversed is all ones

    monkeypatch.setattr(forking._Handler, "handle", wrong)   # the server is forked after this
    with pytest.raises(AssertionError, match="wrong answer"):
        forking.forking_server_rate("tcp", measure.Placement(None, None), seconds=0.01,
                                    warmup=0, deadline=30.0)


def test_fork_benchmark_rejects_an_unknown_kind() -> None:
    """A kind other than ring or tcp is a ValueError that names the allowed ones."""
    with pytest.raises(ValueError, match="'ring' or 'tcp'"):
        forking.fork_latency("udp", 1, iterations=1, deadline=5.0)


def test_dropin_measured(run: tuple[dict, dict]) -> None:
    """Issue 6: both HTTP servers ran under the runner and plain in every repeat, every runner
    connection a ring one by the monitor's count; bench.md has their rows and the goal."""
    from bench import dropin

    results, paths = run
    d = results.get("dropin")
    if not d:
        pytest.skip(f"dropin benchmark not run: {results['skipped'].get('dropin')}")
    s = results["settings"]
    assert not [k for k in results["failed"] if k.startswith("dropin-")]
    section = _section(paths["markdown"].read_text(), "Drop-in")
    for key, server in d["servers"].items():
        assert set(server["modes"]) == set(dropin.MODES), key
        for mode, how in (("runner", "runner (rings)"), ("plain", "plain (TCP loopback)")):
            r = server["modes"][mode]
            assert len(r["repeat_median_us"]) == len(r["repeat_per_s"]) == REPEATS
            # The budget may end a run early, never make it longer.
            assert REPEATS <= r["samples"] <= REPEATS * s["dropin_requests"]
            (row,) = _rows(section, f"{server['label']}, {how}")
            assert row[4] == f"{r['samples']:,}"
        runner, plain = server["modes"]["runner"], server["modes"]["plain"]
        assert server["ratios"]["median"] == pytest.approx(plain["median_us"]
                                                           / runner["median_us"])
    # One ping-pong connection and the rate run's connections per runner measurement; the
    # plain ones none, and no connect went to the kernel.
    counters = d["monitor"]
    assert counters["connections"] == counters["accepted"] == (
        REPEATS * len(dropin.SERVERS) * (1 + s["dropin_clients"]))
    assert counters["kernel_fallbacks"] == 0
    (goal,) = d["goals"]
    assert goal["value"] == d["servers"][dropin.GOAL_SERVER]["ratios"]["median"]
    assert goal["passed"] == (goal["value"] >= dropin.GOAL_RATIO)
    (row,) = _rows(section, goal["what"])
    assert row[-1] == ("**pass**" if goal["passed"] else "**FAIL**")
