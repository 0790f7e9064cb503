"""CPython's own socket tests, run on kernel sockets and on impl's: ``python -m impl.run.compat``.

Usage::

    python -m impl.run.compat [-v] [--class NAME ...] [--json FILE] [--record]
                              [--monitor PATH] [--run-excluded] [--side SIDE]
                              [--test-timeout SECONDS] [--class-timeout SECONDS]

The stream-socket classes of the installed ``test.test_socket`` (AF_INET and
AF_UNIX) and every class of ``test.test_selectors`` are loaded with
:mod:`unittest` from the stdlib's ``test`` package -- nothing of CPython's is
copied here.  Each class runs twice, each time in a subprocess of its own:

* **kernel**: plain Python, the baseline (the subprocess never imports impl);
* **ours**: :func:`impl.patch` is applied *before* the test module is
  imported, against a monitor -- a private one this command starts, or the
  one ``--monitor`` names.

The command prints one markdown table row per class (tests; pass, fail, skip
on each side; excluded; ring connections the monitor set up meanwhile) and
the ratio: of the tests that pass on kernel sockets, how many pass on ours.
A test listed in ``tests/cpython_compat/exclusions.toml`` (with its reason)
is not run on ours unless ``--run-excluded``; it is reported as *excluded*
and counts as not passing.

Every test has a bounded time: the subprocess arms :mod:`faulthandler` to
end itself when one test (or a class fixture) runs longer than
``--test-timeout``; the test is then reported as ``timeout`` and the class
goes on in a fresh subprocess without it.  A class whose subprocesses run
longer than ``--class-timeout`` in total is reported as timed out, its
unfinished tests as not run.

Exit status: 0 when no test outside the exclusions fails on ours that passes
on kernel sockets, 1 otherwise, 2 for a bad command line.
"""

from __future__ import annotations

# Only the standard library at the top: the kernel side's subprocess loads
# this file by path (see _CHILD_BOOT) and must not import impl.
import argparse
import dataclasses
import faulthandler
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import unittest
from collections.abc import Iterable, Sequence
from pathlib import Path

__all__ = ["SOCKET_CLASSES", "SELECTORS_MODULE", "EXCLUSIONS", "RECORDED", "ClassResult",
           "Report", "all_targets", "load_exclusions", "run_class", "run", "table",
           "to_json", "record", "main"]

_ROOT = Path(__file__).resolve().parent.parent.parent
#: The exclusions (test id -> reason) and the recorded figures.
EXCLUSIONS = _ROOT / "tests" / "cpython_compat" / "exclusions.toml"
RECORDED = _ROOT / "tests" / "cpython_compat" / "recorded.json"

SOCKET_MODULE = "test.test_socket"
SELECTORS_MODULE = "test.test_selectors"
#: The stream-socket classes of test_socket, AF_INET then AF_UNIX (those
#: missing from this Python's test_socket are reported as absent).
SOCKET_CLASSES = (
    # AF_INET
    "GeneralModuleTests", "BasicTCPTest", "BasicTCPTest2", "TCPCloserTest",
    "NonBlockingTCPTests", "FileObjectClassTestCase", "UnbufferedFileObjectClassTestCase",
    "LineBufferedFileObjectClassTestCase", "SmallBufferedFileObjectClassTestCase",
    "UnicodeReadFileObjectClassTestCase", "UnicodeWriteFileObjectClassTestCase",
    "UnicodeReadWriteFileObjectClassTestCase", "BufferIOTest", "ContextManagersTest",
    "NetworkConnectionNoServer", "NetworkConnectionAttributesTest",
    "NetworkConnectionBehaviourTest", "TCPTimeoutTest", "CreateServerTest",
    "CreateServerFunctionalTest", "SendmsgTCPTest", "RecvmsgTCPTest", "RecvmsgIntoTCPTest",
    "SendfileUsingSendTest", "SendfileUsingSendfileTest",
    # AF_UNIX
    "TestUnixDomain", "TestLinuxAbstractNamespace", "BasicSocketPairTest",
    "SendmsgUnixStreamTest", "RecvmsgUnixStreamTest", "RecvmsgIntoUnixStreamTest",
    "RecvmsgSCMRightsStreamTest", "RecvmsgIntoSCMRightsStreamTest",
)
SIDES = ("kernel", "ours")
#: Defaults: bound on one test (or class fixture), and on all of one class's subprocesses.
TEST_TIMEOUT = 30.0
CLASS_TIMEOUT = 300.0
#: A class whose subprocess keeps dying is given up after this many fresh starts.
MAX_RESTARTS = 8


# -- the subprocess: run one class, one JSON line per event --------------------------------


def _first_line(err: tuple) -> str:
    """``Type: message`` of an exc_info triple, first line only, with the test's line."""
    etype, value, tb = err
    text = "".join(traceback.format_exception_only(etype, value)).strip()
    line = text.splitlines()[0] if text else etype.__name__
    where = ""
    for frame in traceback.extract_tb(tb):
        if "/unittest/" not in frame.filename:
            where = f" [{os.path.basename(frame.filename)}:{frame.lineno}]"
    return (line[:300] + where)


class _Recorder(unittest.TestResult):
    """A TestResult writing ``{"id", "outcome", "msg"}`` lines as tests end.

    Outcomes: pass, xfail (an expected failure; counts as passing), skip,
    fail (a failed assertion, an error, an unexpected success).  It also
    keeps :mod:`faulthandler`'s timer armed, from one test to the next, so
    a test or a class fixture that hangs ends the process.
    """

    def __init__(self, out, test_timeout: float) -> None:
        super().__init__()
        self._out = out
        self._timeout = test_timeout
        self._current: dict[str, tuple[str, str]] = {}
        self._arm()

    def _arm(self) -> None:
        faulthandler.dump_traceback_later(self._timeout, exit=True)

    def _write(self, obj: dict) -> None:
        self._out.write(json.dumps(obj) + "\n")
        self._out.flush()

    def _set(self, test, outcome: str, msg: str = "") -> None:
        tid = test.id() if hasattr(test, "id") else str(test)
        if tid not in self._current:
            # an error outside a test (setUpClass, tearDownModule): no start/stop
            self._write({"id": str(test), "outcome": outcome, "msg": msg, "fixture": True})
            return
        if self._current[tid][0] != "fail":    # the first failure is the one to tell
            self._current[tid] = (outcome, msg)

    def startTest(self, test) -> None:
        super().startTest(test)
        self._arm()
        self._current[test.id()] = ("pass", "")
        self._write({"start": test.id()})

    def stopTest(self, test) -> None:
        super().stopTest(test)
        outcome, msg = self._current.pop(test.id())
        self._write({"id": test.id(), "outcome": outcome, "msg": msg})
        self._arm()

    def addError(self, test, err) -> None:
        super().addError(test, err)
        self._set(test, "fail", _first_line(err))

    def addFailure(self, test, err) -> None:
        super().addFailure(test, err)
        self._set(test, "fail", _first_line(err))

    def addSubTest(self, test, subtest, err) -> None:
        super().addSubTest(test, subtest, err)
        if err is not None:
            self._set(test, "fail", f"{subtest._subDescription()}: {_first_line(err)}")

    def addSkip(self, test, reason) -> None:
        super().addSkip(test, reason)
        self._set(test, "skip", str(reason)[:300])

    def addExpectedFailure(self, test, err) -> None:
        super().addExpectedFailure(test, err)
        self._set(test, "xfail", _first_line(err))

    def addUnexpectedSuccess(self, test) -> None:
        super().addUnexpectedSuccess(test)
        self._set(test, "fail", "unexpected success")


def _iter_tests(suite: unittest.TestSuite) -> Iterable[unittest.TestCase]:
    for item in suite:
        if isinstance(item, unittest.TestSuite):
            yield from _iter_tests(item)
        else:
            yield item


def child_main(argv: Sequence[str]) -> int:
    """The subprocess: ``SIDE TARGET OUT SKIPFILE TIMEOUT`` -- run one class, write to OUT.

    *TARGET* is ``module.Class``; *SKIPFILE* holds test ids not to run (one
    a line).  On the ``ours`` side, :func:`impl.patch` comes first.
    """
    side, target, out_path, skip_path, timeout = argv
    module_name, _, class_name = target.rpartition(".")
    with open(skip_path) as f:
        skip = {line.strip() for line in f if line.strip()}
    with open(out_path, "a") as out:
        if side == "ours":
            sys.path.insert(0, str(_ROOT))
            import impl
            impl.patch()
        import importlib
        import socket
        module = importlib.import_module(module_name)
        cls = getattr(module, class_name)
        tests = [t for t in _iter_tests(unittest.defaultTestLoader.loadTestsFromTestCase(cls))]
        out.write(json.dumps({"tests": [t.id() for t in tests],
                              "socket_class": socket.socket.__module__}) + "\n")
        out.flush()
        suite = unittest.TestSuite([t for t in tests if t.id() not in skip])
        result = _Recorder(out, float(timeout))
        suite.run(result)
        faulthandler.cancel_dump_traceback_later()
        out.write(json.dumps({"done": True}) + "\n")
        out.flush()
    # Threads a test left behind (a hung client) must not keep the process.
    os._exit(0)


# Loads this file by path under another name, so that the kernel side never imports impl.
_CHILD_BOOT = (
    "import importlib.util, sys\n"
    "spec = importlib.util.spec_from_file_location('_sdcompat_child', sys.argv[1])\n"
    "mod = importlib.util.module_from_spec(spec)\n"
    "sys.modules['_sdcompat_child'] = mod\n"
    "spec.loader.exec_module(mod)\n"
    "sys.exit(mod.child_main(sys.argv[2:]))\n"
)


# -- the parent: classes, exclusions, subprocesses -----------------------------------------


def all_targets() -> list[str]:
    """Every class the command runs, as ``module.Class`` (absent socket classes included)."""
    targets = [f"{SOCKET_MODULE}.{name}" for name in SOCKET_CLASSES]
    try:
        import importlib
        mod = importlib.import_module(SELECTORS_MODULE)
    except ImportError:
        return targets
    for name, obj in sorted(vars(mod).items()):
        if (isinstance(obj, type) and issubclass(obj, unittest.TestCase)
                and obj.__module__ == SELECTORS_MODULE):
            targets.append(f"{SELECTORS_MODULE}.{name}")
    return targets


def load_exclusions(path: Path = EXCLUSIONS) -> dict[str, str]:
    """The excluded tests: full unittest id -> reason (ValueError if a reason is empty)."""
    import tomllib
    if not path.exists():
        return {}
    with open(path, "rb") as f:
        data = tomllib.load(f)
    excluded: dict[str, str] = {}
    for table, entries in data.items():
        if not isinstance(entries, dict):
            raise ValueError(f"{path}: [{table}] must be a table of test = reason")
        for test, reason in entries.items():
            if not isinstance(reason, str) or not reason.strip():
                raise ValueError(f"{path}: {table}.{test} has no reason")
            excluded[f"{table}.{test}"] = reason.strip()
    return excluded


@dataclasses.dataclass
class SideResult:
    """One class on one side: each test's outcome, and how the run went."""

    outcomes: dict[str, tuple[str, str]] = dataclasses.field(default_factory=dict)
    tests: list[str] = dataclasses.field(default_factory=list)
    fixtures: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    status: str = "ok"          # ok | absent | timeout | crashed
    seconds: float = 0.0
    socket_class: str = ""
    log: str = ""

    def count(self, outcome: str) -> int:
        """Tests with this outcome ("pass" counts expected failures too)."""
        wanted = {"pass", "xfail"} if outcome == "pass" else {outcome}
        return sum(1 for o, _ in self.outcomes.values() if o in wanted)

    def passed(self) -> set[str]:
        """Ids of the tests that passed."""
        return {t for t, (o, _) in self.outcomes.items() if o in ("pass", "xfail")}


@dataclasses.dataclass
class ClassResult:
    """One class, both sides."""

    target: str
    kernel: SideResult
    ours: SideResult
    excluded: dict[str, str]
    rings: int | None = None

    @property
    def name(self) -> str:
        return self.target.rpartition(".")[2]

    @property
    def module(self) -> str:
        return self.target.rpartition(".")[0]

    def tests(self) -> list[str]:
        """Ids of the class's tests (as the kernel side listed them)."""
        return self.kernel.tests or self.ours.tests

    def ours_passing(self) -> set[str]:
        """Tests that pass on ours and are not excluded."""
        return self.ours.passed() - set(self.excluded)

    def regressions(self) -> list[str]:
        """Tests passing on kernel sockets that fail on ours, not excluded."""
        return sorted(t for t in self.kernel.passed()
                      if t not in self.excluded and t not in self.ours_passing())


def _run_side(side: str, target: str, *, skip: set[str], env: dict[str, str],
              test_timeout: float, class_timeout: float, workdir: Path) -> SideResult:
    """Run one class on one side, in as many fresh subprocesses as hung tests need."""
    res = SideResult()
    start = time.monotonic()
    deadline = start + class_timeout
    done = False
    for attempt in range(MAX_RESTARTS + 1):
        out = workdir / f"{side}.{attempt}.jsonl"
        skipf = workdir / f"{side}.{attempt}.skip"
        log = workdir / f"{side}.{attempt}.log"
        skipf.write_text("".join(f"{t}\n" for t in sorted(skip | set(res.outcomes))))
        cwd = workdir / f"{side}.{attempt}.cwd"     # tests create files in the cwd
        cwd.mkdir()
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            res.status = "timeout"
            break
        cmd = [sys.executable, "-X", "faulthandler", "-c", _CHILD_BOOT, str(Path(__file__)),
               side, target, str(out), str(skipf), str(test_timeout)]
        timed_out = False
        with open(log, "wb") as logf:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                                    cwd=str(cwd), env=env, start_new_session=True)
            try:
                proc.wait(timeout=remaining)
            except subprocess.TimeoutExpired:
                timed_out = True
                _kill_group(proc)
        started = _read_events(out, res)
        if _finished(out):
            done = True
            break
        res.log = _tail(log)
        if timed_out:
            res.status = "timeout"
            break
        if started is None:            # died before its first test: nothing to retry
            res.status = "crashed"
            break
        res.outcomes[started] = ("timeout" if proc.returncode == 1 else "fail",
                                 _death(proc.returncode, test_timeout))
    if not done and res.status == "ok":
        res.status = "crashed"
    for t in res.tests:
        if t in skip and t not in res.outcomes:
            res.outcomes[t] = ("excluded", "")
        elif t not in res.outcomes:
            why = "" if res.status == "ok" else f" (class {res.status})"
            res.outcomes[t] = ("fail", "not run" + why)
    res.seconds = time.monotonic() - start
    return res


def _death(returncode: int, test_timeout: float) -> str:
    """Why a subprocess ended in the middle of a test."""
    if returncode == 1:     # faulthandler's exit status
        return f"timeout: still running after {test_timeout:g} s"
    if returncode < 0:
        return f"the process died of signal {-returncode}"
    return f"the process exited with status {returncode}"


def _kill_group(proc: subprocess.Popen) -> None:
    """Kill the subprocess we started (its own session) and reap it."""
    try:
        os.killpg(proc.pid, 9)
    except ProcessLookupError:
        pass
    proc.wait()


def _read_events(path: Path, res: SideResult) -> str | None:
    """Fold one subprocess's events into *res*; return the test that started last, unfinished."""
    started = None
    if not path.exists():
        return None
    for line in path.read_text().splitlines():
        try:
            ev = json.loads(line)
        except ValueError:
            continue      # a line cut short by the process's death
        if "tests" in ev:
            if not res.tests:
                res.tests = ev["tests"]
            res.socket_class = ev.get("socket_class", "")
        elif "start" in ev:
            started = ev["start"]
        elif "id" in ev:
            if ev.get("fixture"):
                res.fixtures.append((ev["id"], ev["msg"]))
            else:
                res.outcomes[ev["id"]] = (ev["outcome"], ev["msg"])
                if ev["id"] == started:
                    started = None
    return started


def _finished(path: Path) -> bool:
    return path.exists() and '{"done": true}' in path.read_text()


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class _Monitor:
    """The monitor the ours side uses: a private one we start, or a running one."""

    def __init__(self, path: str | None) -> None:
        self._dir: str | None = None
        self._proc: subprocess.Popen | None = None
        if path is None:
            self._dir = tempfile.mkdtemp(prefix="sdcompat-")
            os.chmod(self._dir, 0o700)
            path = os.path.join(self._dir, "monitor.sock")
            self._start(path)
        self.path = path

    def _start(self, path: str) -> None:
        r, w = os.pipe()
        env = dict(os.environ, PYTHONPATH=str(_ROOT))
        env.pop("SOCKSDIRECT_PATCH", None)
        log = open(os.path.join(self._dir, "monitor.log"), "ab")
        with log:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "impl.monitor", "--socket", path, "--ready-fd", str(w),
                 "--log-level", "warning"], pass_fds=(w,), stdin=subprocess.DEVNULL,
                stdout=log, stderr=log, env=env, cwd=str(_ROOT))
        os.close(w)
        with os.fdopen(r, "rb") as f:
            line = f.readline().strip()
        if line != b"ready":
            self.stop()
            raise RuntimeError(f"the monitor did not start ({line!r})")

    def connections(self) -> int | None:
        """The monitor's count of ring connections set up so far (None if unreachable)."""
        from impl.monitor import client
        from impl.monitor import protocol as P
        try:
            chan = client.ControlChannel.connect(self.path, role="ctl")
        except OSError:
            return None
        try:
            return chan.request(P.STATUS).body["counters"]["connections"]
        except (OSError, KeyError):
            return None
        finally:
            chan.close()

    def stop(self) -> None:
        """Stop the monitor we started (if any) and remove its directory."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)


def run_class(target: str, *, monitor: _Monitor, excluded: dict[str, str],
              run_excluded: bool = False, test_timeout: float = TEST_TIMEOUT,
              class_timeout: float = CLASS_TIMEOUT, sides: Sequence[str] = SIDES
              ) -> ClassResult:
    """Run one class (``module.Class``) on the given sides; kernel and ours run in parallel."""
    mine = {t: r for t, r in excluded.items() if t.startswith(target + ".")}
    kernel_env = {k: v for k, v in os.environ.items()
                  if not k.startswith("SOCKSDIRECT_") and k != "PYTHONPATH"}
    ours_env = dict(kernel_env, SOCKSDIRECT_MONITOR=monitor.path, SOCKSDIRECT_AUTOSTART="0",
                    PYTHONPATH=str(_ROOT))
    results: dict[str, SideResult] = {s: SideResult(status="not run") for s in SIDES}
    rings_before = monitor.connections() if "ours" in sides else None
    with tempfile.TemporaryDirectory(prefix="sdcompat-run-") as d:
        def one(side: str) -> None:
            work = Path(d) / side
            work.mkdir()
            skip = set() if side == "kernel" or run_excluded else set(mine)
            results[side] = _run_side(side, target, skip=skip,
                                      env=kernel_env if side == "kernel" else ours_env,
                                      test_timeout=test_timeout, class_timeout=class_timeout,
                                      workdir=work)
        threads = [threading.Thread(target=one, args=(s,)) for s in sides]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    rings = None
    if rings_before is not None:
        after = monitor.connections()
        rings = None if after is None else after - rings_before
    return ClassResult(target, results["kernel"], results["ours"], mine, rings)


@dataclasses.dataclass
class Report:
    """A whole run: the classes, in order."""

    classes: list[ClassResult]
    seconds: float = 0.0

    def totals(self) -> dict[str, int]:
        """Sums over the classes of the table's columns."""
        tot = dict.fromkeys(("tests", "kernel_pass", "kernel_fail", "kernel_skip", "ours_pass",
                             "ours_fail", "ours_skip", "excluded", "both_pass"), 0)
        for c in self.classes:
            for key, value in _row_counts(c).items():
                tot[key] += value
        return tot

    def ratio(self) -> float | None:
        """Of the tests passing on kernel sockets, the fraction passing on ours (not excluded)."""
        tot = self.totals()
        return tot["both_pass"] / tot["kernel_pass"] if tot["kernel_pass"] else None


def _row_counts(c: ClassResult) -> dict[str, int]:
    ours_pass = len(c.ours_passing())
    ours_fail = sum(1 for t, (o, _) in c.ours.outcomes.items()
                    if o not in ("pass", "xfail", "skip", "excluded") and t not in c.excluded)
    return {"tests": len(c.tests()), "kernel_pass": c.kernel.count("pass"),
            "kernel_fail": sum(1 for o, _ in c.kernel.outcomes.values()
                               if o not in ("pass", "xfail", "skip")),
            "kernel_skip": c.kernel.count("skip"), "ours_pass": ours_pass,
            "ours_fail": ours_fail,
            "ours_skip": sum(1 for t, (o, _) in c.ours.outcomes.items()
                             if o == "skip" and t not in c.excluded),
            "excluded": len([t for t in c.excluded if t in c.tests()]),
            "both_pass": len(c.kernel.passed() & c.ours_passing())}


def run(targets: Sequence[str], *, monitor_path: str | None = None,
        run_excluded: bool = False, test_timeout: float = TEST_TIMEOUT,
        class_timeout: float = CLASS_TIMEOUT, sides: Sequence[str] = SIDES,
        exclusions: dict[str, str] | None = None,
        progress=None) -> Report:
    """Run *targets* (``module.Class`` names) on both sides; return the report.

    *monitor_path* names a running monitor; without it, a private monitor is
    started and stopped.  *progress*, if given, is called with each
    :class:`ClassResult` as it completes.
    """
    excluded = load_exclusions() if exclusions is None else exclusions
    start = time.monotonic()
    mon = _Monitor(monitor_path) if "ours" in sides else None
    results = []
    try:
        for target in targets:
            res = run_class(target, monitor=mon, excluded=excluded, run_excluded=run_excluded,
                            test_timeout=test_timeout, class_timeout=class_timeout,
                            sides=sides)
            results.append(res)
            if progress is not None:
                progress(res)
    finally:
        if mon is not None and monitor_path is None:
            mon.stop()
    return Report(results, time.monotonic() - start)


# -- output ----------------------------------------------------------------------------------


_HEADER = ("| class | tests | kernel pass / fail / skip | ours pass / fail / skip "
           "| excluded | rings | status |\n|---|---:|---:|---:|---:|---:|---|")


def _status(c: ClassResult) -> str:
    bad = [f"{side} {r.status}" for side, r in (("kernel", c.kernel), ("ours", c.ours))
           if r.status != "ok"]
    if c.kernel.status == "absent":
        return "absent"
    return ", ".join(bad) or "ok"


def table(report: Report) -> str:
    """The per-class markdown table, the totals row, and the ratio line."""
    rows = [_HEADER]
    for c in report.classes:
        n = _row_counts(c)
        mod = "selectors" if c.module == SELECTORS_MODULE else "socket"
        rows.append(f"| {mod}.{c.name} | {n['tests']} | {n['kernel_pass']} / {n['kernel_fail']}"
                    f" / {n['kernel_skip']} | {n['ours_pass']} / {n['ours_fail']} / "
                    f"{n['ours_skip']} | {n['excluded']} | "
                    f"{'' if c.rings is None else c.rings} | {_status(c)} |")
    t = report.totals()
    rows.append(f"| **total** | {t['tests']} | {t['kernel_pass']} / {t['kernel_fail']} / "
                f"{t['kernel_skip']} | {t['ours_pass']} / {t['ours_fail']} / {t['ours_skip']}"
                f" | {t['excluded']} | | |")
    ratio = report.ratio()
    text = "n/a" if ratio is None else f"{100 * ratio:.1f}%"
    rows.append("")
    rows.append(f"Of the {t['kernel_pass']} tests passing on kernel sockets, {t['both_pass']} "
                f"pass on ours: {text} (goal >= 95%; excluded tests count as not passing).")
    return "\n".join(rows)


def failures(report: Report) -> list[str]:
    """One line per test that does not pass on ours but passes on kernel, and per excluded one."""
    lines = []
    for c in report.classes:
        kernel_ok = c.kernel.passed()
        for t, (o, msg) in sorted(c.ours.outcomes.items()):
            short = t.rpartition(".")[0].rpartition(".")[2] + "." + t.rpartition(".")[2]
            if t in c.excluded:
                state = "" if o == "excluded" else f" (ran: {o})"
                lines.append(f"  excluded{state}  {short}: {c.excluded[t]}")
            elif o not in ("pass", "xfail", "skip"):
                note = " (fails on kernel too)" if c.kernel.status == "ok" and (
                    t not in kernel_ok) else ""
                lines.append(f"  {o}{note}  {short}: {msg}")
        for side, r in (("kernel", c.kernel), ("ours", c.ours)):
            for fid, msg in r.fixtures:
                lines.append(f"  {side} fixture error  {fid}: {msg}")
            if r.status not in ("ok", "absent") and r.log:
                lines.append(f"  {side} {r.status}  {c.name}; log tail:\n"
                             + "\n".join("    " + x for x in r.log.splitlines()[-8:]))
    return lines


def to_json(report: Report) -> dict:
    """The machine-readable form of a report."""
    classes = []
    for c in report.classes:
        classes.append({
            "class": c.name, "module": c.module, "counts": _row_counts(c), "rings": c.rings,
            "status": {"kernel": c.kernel.status, "ours": c.ours.status},
            "seconds": {"kernel": round(c.kernel.seconds, 2), "ours": round(c.ours.seconds, 2)},
            "socket_class": {"kernel": c.kernel.socket_class, "ours": c.ours.socket_class},
            "tests": {t: {"kernel": c.kernel.outcomes.get(t, ("not run", ""))[0],
                          "ours": c.ours.outcomes.get(t, ("not run", ""))[0],
                          **({"ours_msg": c.ours.outcomes[t][1]}
                             if c.ours.outcomes.get(t, ("", ""))[1] else {}),
                          **({"excluded": c.excluded[t]} if t in c.excluded else {})}
                      for t in c.tests()},
            "fixtures": {"kernel": c.kernel.fixtures, "ours": c.ours.fixtures},
        })
    return {"python": sys.version.split()[0], "classes": classes, "totals": report.totals(),
            "ratio": report.ratio(), "seconds": round(report.seconds, 1)}


def record(report: Report, path: Path = RECORDED) -> None:
    """Write the figures the tests compare against: per class, counts and kernel's non-passing.

    Classes of *report* replace their entries in the file; other classes'
    entries stay (so ``--record --class NAME`` updates one class).
    """
    data = {"classes": {}}
    if path.exists():
        data = json.loads(path.read_text())
    data["python"] = sys.version.split()[0]
    for c in report.classes:
        if c.kernel.status == "absent":
            continue
        n = _row_counts(c)
        data["classes"][c.target] = {
            "tests": n["tests"], "kernel_pass": n["kernel_pass"], "ours_pass": n["ours_pass"],
            "both_pass": n["both_pass"], "excluded": n["excluded"],
            "kernel_not_passing": sorted(set(c.tests()) - c.kernel.passed()),
            "seconds": {"kernel": round(c.kernel.seconds, 1), "ours": round(c.ours.seconds, 1)},
        }
    kernel = sum(c["kernel_pass"] for c in data["classes"].values())
    both = sum(c["both_pass"] for c in data["classes"].values())
    data["ratio"] = round(both / kernel, 4) if kernel else None
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


# -- command line ----------------------------------------------------------------------------


def _resolve(names: Sequence[str], targets: Sequence[str]) -> list[str]:
    """Map ``--class`` names (``Class`` or ``module.Class``) to targets; ValueError if unknown."""
    chosen = []
    for name in names:
        found = [t for t in targets if t == name or t.rpartition(".")[2] == name]
        if not found:
            raise ValueError(f"unknown class {name!r}; the classes are: "
                             + ", ".join(t.rpartition(".")[2] for t in targets))
        chosen += [t for t in found if t not in chosen]
    return chosen


def _absent(target: str) -> bool:
    import importlib
    module, _, name = target.rpartition(".")
    try:
        return not hasattr(importlib.import_module(module), name)
    except ImportError:
        return True


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; see the module docstring.  Return the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:
        return child_main(argv[1:])
    ap = argparse.ArgumentParser(prog="python -m impl.run.compat",
                                 description="CPython's socket and selectors tests on kernel "
                                             "sockets and on impl's, side by side.")
    ap.add_argument("-v", "--verbose", action="store_true",
                    help="list each failing or excluded test with the first line of its error")
    ap.add_argument("--class", dest="classes", action="append", default=[], metavar="NAME",
                    help="run only this class (repeatable; Class or module.Class)")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE "
                                                    "('-' for stdout, then no table)")
    ap.add_argument("--record", action="store_true",
                    help=f"write the figures to {RECORDED.relative_to(_ROOT)}")
    ap.add_argument("--monitor", metavar="PATH",
                    help="use the monitor running at PATH (default: start a private one)")
    ap.add_argument("--run-excluded", action="store_true",
                    help="run the excluded tests on ours too (they still count as excluded)")
    ap.add_argument("--side", choices=("both", *SIDES), default="both",
                    help="run only the kernel baseline or only ours (default: both)")
    ap.add_argument("--test-timeout", type=float, default=TEST_TIMEOUT, metavar="SECONDS",
                    help=f"bound on one test (default {TEST_TIMEOUT:g})")
    ap.add_argument("--class-timeout", type=float, default=CLASS_TIMEOUT, metavar="SECONDS",
                    help=f"bound on one class's run on one side (default {CLASS_TIMEOUT:g})")
    ap.add_argument("--list", action="store_true", help="list the classes and exit")
    args = ap.parse_args(argv)
    try:
        import test.support  # noqa: F401  (the stdlib's test package)
    except ImportError:
        sys.stderr.write("impl.run.compat: this Python has no 'test' package "
                         "(the stdlib's tests; e.g. Debian's libpython3.x-testsuite)\n")
        return 2
    targets = all_targets()
    if args.list:
        print("\n".join(targets))
        return 0
    try:
        if args.classes:
            targets = _resolve(args.classes, targets)
        exclusions = load_exclusions()
    except ValueError as exc:
        ap.error(str(exc))
    if args.record and args.side != "both":
        ap.error("--record needs both sides (the kernel baseline and ours)")
    present = [t for t in targets if not _absent(t)]
    to_stdout = args.json == "-"

    def progress(c: ClassResult) -> None:
        if not to_stdout:
            n = _row_counts(c)
            print(f"  {c.name}: kernel {n['kernel_pass']}/{n['tests']}, ours "
                  f"{n['ours_pass']}/{n['tests']} ({c.kernel.seconds:.0f} s, "
                  f"{c.ours.seconds:.0f} s)", file=sys.stderr, flush=True)

    report = run(present, monitor_path=args.monitor, run_excluded=args.run_excluded,
                 test_timeout=args.test_timeout, class_timeout=args.class_timeout,
                 sides=SIDES if args.side == "both" else (args.side,), exclusions=exclusions,
                 progress=progress)
    for t in targets:
        if t not in present:
            report.classes.append(ClassResult(t, SideResult(status="absent"),
                                              SideResult(status="absent"), {}))
    if args.json:
        text = json.dumps(to_json(report), indent=1) + "\n"
        if to_stdout:
            sys.stdout.write(text)
        else:
            Path(args.json).write_text(text)
    if not to_stdout:
        print(table(report))
        print(f"\n{len(present)} classes in {report.seconds:.0f} s")
        if args.verbose:
            lines = failures(report)
            if lines:
                print("\nnot passing on ours:")
                print("\n".join(lines))
    if args.record:
        record(report)
    return 1 if any(c.regressions() for c in report.classes) else 0


if __name__ == "__main__":
    sys.exit(main())
