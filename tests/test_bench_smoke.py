"""Smoke test of the benchmark suite: tiny runs, well-formed outputs, no timing assertions.

The suite runs once per module with a few hundred iterations into a
temporary directory; the tests then check what ``make bench`` promises:
a table row for every transport in every table, both figures, the JSON
keys the report is built from, and goals judged from the numbers.
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

from bench import measure, report, suite
from bench.transports import Channel, Endpoint, Transport, available_transports

REPEATS = 2
RTT_ITERATIONS = 200
ONE_CORE_ITERATIONS = 100
KERNEL_KEYS = {"tcp", "unix", "pipe"}
RING_KEYS = {"ring-c", "ring-python"}

# Budgets far beyond what a few hundred round trips take: the sample counts
# below are then exact, and a run that is slower fails by its deadline.
TINY = suite.Settings(
    repeats=REPEATS, rtt_warmup=20, rtt_iterations=RTT_ITERATIONS, rtt_budget=60.0,
    one_core_iterations=ONE_CORE_ITERATIONS, one_core_budget=60.0,
    stream_seconds=0.01, stream_min_count=4, stream_max_count=400,
    stream_warmup_bytes=64 * 1024, deadline=60.0)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict[str, Path]]:
    """Run the tiny suite once and write its report; return (results, paths)."""
    out = tmp_path_factory.mktemp("bench")
    results = suite.run_suite(TINY, log=lambda line: None)
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
    available, skipped = available_transports()
    assert _keys(results) == {t.key for t in available}
    assert set(results["skipped"]) == set(skipped)


def test_ring_measured() -> None:
    """Both ring paths take part (skips, naming the reason, while impl.ring cannot)."""
    available, skipped = available_transports()
    if skipped:
        pytest.skip("; ".join(f"{k}: {why}" for k, why in skipped.items()))
    assert RING_KEYS <= {t.key for t in available}


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
        if key in RING_KEYS or key in ("unix", "pipe"):
            (row,) = _rows(one, label)
            assert row[5] == f"{REPEATS * ONE_CORE_ITERATIONS:,}"
        else:
            assert _rows(one, label) == []


def test_markdown_links_and_machine(run: tuple[dict, dict]) -> None:
    """bench.md links the figures and the JSON, and names the machine and the method."""
    results, paths = run
    md = paths["markdown"].read_text()
    for target in ("img/bench-latency.png", "img/bench-throughput.png", "bench.json"):
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
    assert len(goals) == len(suite.GOALS) * len(rings)
    md = _section(paths["markdown"].read_text(), "Goals")
    for g in goals:
        assert g["passed"] in (True, False), g  # every input was measured
        # The verdict agrees with the value and the bound.
        if g["goal"] == "one_core_p99":
            assert g["passed"] == (g["value"] < g["bound"])
        else:
            assert g["passed"] == (g["value"] >= g["bound"])
    verdicts = re.findall(r"\*\*(pass|FAIL)\*\*", md)
    assert len(verdicts) == len(goals)


def _png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk; fails if the file is not a PNG."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_figures_written(run: tuple[dict, dict]) -> None:
    """Both figures are PNGs of a readable size."""
    _, paths = run
    for key in ("latency_png", "throughput_png"):
        width, height = _png_size(paths[key])
        assert width >= 800 and height >= 300


def test_json_keys_and_consistency(run: tuple[dict, dict]) -> None:
    """bench.json holds every number the page shows, in a consistent shape."""
    results, paths = run
    data = json.loads(paths["json"].read_text())
    for key in ("schema", "machine", "settings", "pinning", "memcpy_probe", "transports",
                "skipped", "failed", "latency", "throughput", "one_core", "goals",
                "duration_s"):
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
    for name in ("bench.md", "bench.json", "img/bench-latency.png",
                 "img/bench-throughput.png"):
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
