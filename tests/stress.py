"""Run tests again and again on loaded cores, and dump every process of a run that hangs.

``python -m tests.stress [--runs N] [--load K] [--hang S] TEST_ID...``
(``make stress`` runs, by default, the token tests that share one socket
between threads and between processes).

Why: a race between a lock-free fast path and a slower one shows up about
once in tens of runs, and mostly when the cores are busy -- CI's shared
machine, not a quiet desk.  The token hang of issue 6 needed both cores
loaded to show in 1 run of 40.  So this starts *K* busy processes (default:
one per core), runs pytest on the given tests *N* times, and when a run
takes longer than *S* seconds, signals every process of its tree to write
an :mod:`impl.diag` dump (tokens, ring headers, every thread's stack) and
stops.  *S* bounds a whole pytest run: keep it above a healthy run's time
on loaded cores, and below the tests' own 60 s bound on one wait (the test
would fail first, without dumps) -- or raise it and read the failure.  Not part of ``make test``: it
takes minutes by design.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from impl import diag

ROOT = Path(__file__).resolve().parent.parent
#: What ``make stress`` runs: sharing between threads and processes.
DEFAULT_TESTS = [
    "tests/test_token_fork.py::test_processes_send_and_read_whole_frames",
    "tests/test_token_threads.py::test_threads_send_and_read_whole_frames",
    "tests/test_token_fork.py::test_processes_share_a_socketpair_with_whole_frames",
]


def _burn() -> None:
    while True:
        pass


def _tree(pid: int) -> list[int]:
    """*pid* and its descendants, from /proc."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return out


def _dump_tree(pid: int, where: Path) -> list[int]:
    pids = _tree(pid)
    for p in pids:
        try:
            os.kill(p, signal.SIGUSR1)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:      # bounded: a process may not be ours
        if all(_whole(where / f"socksdirect-{p}.txt") for p in pids):
            break
        time.sleep(0.05)
    return pids


def _whole(path: Path) -> bool:
    """Has the dump at *path* been written to its end?"""
    try:
        return path.read_text().rstrip().endswith(diag.END)
    except OSError:
        return False


def run(tests: list[str], runs: int, load: int, hang: float, out: Path) -> int:
    """Run *tests* up to *runs* times under *load* burners; 0 if every run passed."""
    burners = [multiprocessing.Process(target=_burn, daemon=True) for _ in range(load)]
    for b in burners:
        b.start()
    env = dict(os.environ, **{diag.ENV_SIGNAL: "USR1", diag.ENV_DIR: str(out)})
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    try:
        for i in range(1, runs + 1):
            log = out / f"run-{i}.log"
            with open(log, "w") as logf:
                proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=logf,
                                        stderr=subprocess.STDOUT, start_new_session=True)
                try:
                    rc = proc.wait(hang)
                except subprocess.TimeoutExpired:
                    pids = _dump_tree(proc.pid, out)
                    print(f"run {i}: still running after {hang} s; dumps of {pids} in {out}")
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                    return 2
            if rc != 0:
                print(f"run {i}: failed (exit {rc}); see {log}")
                return 1
            log.unlink()
            print(f"run {i}/{runs}: passed", flush=True)
        return 0
    finally:
        for b in burners:
            b.terminate()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.stress", description=__doc__.split("\n")[0])
    ap.add_argument("tests", nargs="*", default=DEFAULT_TESTS)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--load", type=int, default=os.cpu_count() or 2,
                    help="busy processes beside the tests (default: one per core)")
    ap.add_argument("--hang", type=float, default=45.0,
                    help="seconds after which a run counts as hung (below the tests' 60 s bound)")
    ap.add_argument("--out", type=Path, default=None, help="where logs and dumps go")
    args = ap.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="socksdirect-stress-"))
    out.mkdir(parents=True, exist_ok=True)
    return run(args.tests, args.runs, args.load, args.hang, out)


if __name__ == "__main__":
    sys.exit(main())
