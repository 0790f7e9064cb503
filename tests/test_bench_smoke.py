"""Smoke test of the benchmark suite: tiny runs, well-formed outputs, no timing assertions.

The suite runs once per module with a few hundred iterations into a
temporary directory; the tests then check what ``make bench`` promises:
a table row for every transport in every table, the figures, the JSON
keys the report is built from, and goals judged from the numbers.  The
socket-API part (impl.socket through the bench's own monitor, set-up
rate, asyncio echo) is checked the same way, and against the monitor's
own count of the connections it set up.
"""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from bench import measure, report, sockets, suite
from bench.transports import Channel, Endpoint, Transport
from impl.monitor.paths import ENV_AUTOSTART, ENV_SOCKET

REPEATS = 2
RTT_ITERATIONS = 200
ONE_CORE_ITERATIONS = 100
SETUP_WARMUP = 5
ASYNCIO_ITERATIONS = 100
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
    deadline=60.0)


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
                   "img/bench-socket.png", "bench.json"):
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
    assert len(verdicts) == len([g for g in goals if g["passed"] is not None])


def _png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk; fails if the file is not a PNG."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_figures_written(run: tuple[dict, dict]) -> None:
    """Both figures are PNGs of a readable size."""
    _, paths = run
    for key in ("latency_png", "throughput_png", "socket_png"):
        width, height = _png_size(paths[key])
        assert width >= 800 and height >= 300


def test_json_keys_and_consistency(run: tuple[dict, dict]) -> None:
    """bench.json holds every number the page shows, in a consistent shape."""
    results, paths = run
    data = json.loads(paths["json"].read_text())
    for key in ("schema", "machine", "settings", "pinning", "memcpy_probe", "transports",
                "skipped", "failed", "latency", "throughput", "one_core", "goals",
                "duration_s", "setup", "asyncio", "monitor"):
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
    for name in ("bench.md", "bench.json", "img/bench-latency.png",
                 "img/bench-throughput.png", "img/bench-socket.png"):
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
    assert counters["connections"] == REPEATS * per_repeat + setup


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
    with use_monitor(str(tmp_path / "no-monitor.sock")):
        with pytest.raises((OSError, EOFError)):
            sockets.setup_rate(case, measure.Placement(), warmup=2, target=0.01,
                               min_count=1, max_count=2, seconds=30.0)


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
