"""What the benchmark runs on: machine facts, CPU pinning, the glibc memcpy probe.

The numbers of a benchmark mean little without the machine they came from,
and on a shared 2-core VM the two things that move them most are where the
two processes run and how fast glibc's ``memcpy`` is at the alignments the
rings produce.  This module finds out both and says what it decided.
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

__all__ = [
    "GLIBC_TUNABLE",
    "PinPlan",
    "cpu_idle",
    "machine_info",
    "memcpy_probe",
    "plan_pinning",
    "tunable_active",
]

# glibc switches x86 memcpy to `rep movsb` above this size; on the AMD EPYC VMs
# this project runs on, `rep movsb` crawls at 2-3 GB/s when the destination is
# 16 bytes past the source modulo 4 KiB (see the project's notes on IPC costs).
# A threshold above every copy the benchmark makes keeps the vector loop.
GLIBC_TUNABLE = "glibc.cpu.x86_rep_movsb_threshold=1000000"

# A CPU counts as free for pinning when at least this share of it was idle.
_FREE_IDLE = 0.7


def _cpu_model() -> str:
    """Return the CPU model name from /proc/cpuinfo, or the platform's guess."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _loadavg() -> list[float]:
    """Return the 1, 5 and 15 minute load averages."""
    return [round(x, 2) for x in os.getloadavg()]


def machine_info() -> dict[str, object]:
    """Describe the machine: CPU model, cores, kernel, Python, glibc, date, load."""
    libc, libc_version = platform.libc_ver()
    return {
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_allowed": sorted(os.sched_getaffinity(0)),
        "kernel": f"{platform.system()} {platform.release()}",
        "machine": platform.machine(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "libc": f"{libc} {libc_version}".strip(),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "loadavg_start": _loadavg(),
    }


def _cpu_times() -> dict[int, tuple[int, int]]:
    """Return {cpu: (idle jiffies, total jiffies)} from /proc/stat."""
    times: dict[int, tuple[int, int]] = {}
    with open("/proc/stat", encoding="ascii") as f:
        for line in f:
            name, *fields = line.split()
            if not name.startswith("cpu") or name == "cpu":
                continue
            values = [int(v) for v in fields[:8]]
            idle = values[3] + values[4]  # idle + iowait
            times[int(name[3:])] = (idle, sum(values))
    return times


def cpu_idle(window: float = 0.25) -> dict[int, float]:
    """Return the idle share (0..1) of each CPU over a sampling window of *window* s.

    This is a measurement over a time window, not a wait for anything.
    """
    if not 0 < window <= 5:
        raise ValueError(f"window must be in (0, 5] seconds, got {window!r}")
    try:
        before = _cpu_times()
        time.sleep(window)
        after = _cpu_times()
    except OSError:
        return {}
    idle: dict[int, float] = {}
    for cpu, (idle1, total1) in after.items():
        idle0, total0 = before.get(cpu, (idle1, total1))
        span = total1 - total0
        idle[cpu] = (idle1 - idle0) / span if span > 0 else 1.0
    return idle


@dataclass(frozen=True)
class PinPlan:
    """Where the two processes of a measurement run, and why.

    ``parent_cpu``/``child_cpu`` are None when the processes are left to the
    scheduler.  ``one_core_cpu`` is the CPU both share in the one-core runs.
    """

    pinned: bool
    parent_cpu: int | None
    child_cpu: int | None
    one_core_cpu: int | None
    reason: str
    idle: dict[int, float]

    def as_dict(self) -> dict[str, object]:
        """Return the plan as JSON-ready data."""
        data = asdict(self)
        data["idle"] = {str(cpu): round(share, 3) for cpu, share in self.idle.items()}
        return data


def plan_pinning(mode: str = "auto", idle: dict[int, float] | None = None) -> PinPlan:
    """Decide where the parent and the child of each measurement run.

    *mode* is ``"auto"`` (pin to two CPUs when two allowed CPUs are free, that
    is at least 70% idle in a short sample), ``"always"`` (pin whenever two
    CPUs are allowed) or ``"never"``.  The one-core runs always share the most
    idle allowed CPU: sharing one core is what they measure.
    """
    if mode not in ("auto", "always", "never"):
        raise ValueError(f"pin mode must be 'auto', 'always' or 'never', got {mode!r}")
    allowed = sorted(os.sched_getaffinity(0))
    if idle is None:
        idle = cpu_idle()
    idle = {cpu: share for cpu, share in idle.items() if cpu in allowed}
    # Most idle first; ties go to the lower CPU number so runs are repeatable.
    ranked = sorted(allowed, key=lambda cpu: (-idle.get(cpu, 0.0), cpu))
    one_core = ranked[0]
    if mode == "never":
        return PinPlan(False, None, None, one_core, "pinning turned off (--pin never)", idle)
    if len(ranked) < 2:
        return PinPlan(False, None, None, one_core, "only one CPU is allowed", idle)
    first, second = ranked[0], ranked[1]
    parent, child = sorted((first, second))
    shares = f"CPU {parent} {idle.get(parent, 0):.0%} idle, CPU {child} {idle.get(child, 0):.0%}"
    if mode == "auto" and min(idle.get(first, 0), idle.get(second, 0)) < _FREE_IDLE:
        reason = (f"two free CPUs are needed ({shares} in a 0.25 s sample); "
                  "pinned processes cannot escape foreign load")
        return PinPlan(False, None, None, one_core, reason, idle)
    reason = f"parent on CPU {parent}, child on CPU {child} ({shares} before the run)"
    return PinPlan(True, parent, child, one_core, reason, idle)


def tunable_active() -> bool:
    """Tell whether this interpreter was started with the memcpy tunable."""
    return "x86_rep_movsb_threshold" in os.environ.get("GLIBC_TUNABLES", "")


# Runs in a fresh interpreter, because glibc reads its tunables only at start.
_PROBE = r"""
import ctypes, mmap, sys, time
size = 64 * 1024
src = mmap.mmap(-1, 4 * size)
dst = mmap.mmap(-1, 4 * size)
base_s = ctypes.addressof(ctypes.c_char.from_buffer(src))
base_d = ctypes.addressof(ctypes.c_char.from_buffer(dst))
out = []
for skew in (16, 64):
    best = None
    for _ in range(200):
        t0 = time.perf_counter_ns()
        ctypes.memmove(base_d + 4096 + skew, base_s + 4096, size)
        dt = time.perf_counter_ns() - t0
        best = dt if best is None or dt < best else best
    out.append(size / best)
print(*out)
"""


def memcpy_probe(timeout: float = 30.0) -> dict[str, object]:
    """Measure glibc memcpy of 64 KiB with the destination 16 and 64 bytes past the source.

    Runs twice in fresh interpreters, without and with :data:`GLIBC_TUNABLE`,
    and returns GB/s (best of 200 copies) for each case, so the report can
    show whether this machine has the alignment trap.
    """
    result: dict[str, object] = {"copy_bytes": 64 * 1024, "setting": GLIBC_TUNABLE}
    for label, tunables in (("default", ""), ("tunable", GLIBC_TUNABLE)):
        env = dict(os.environ)
        if tunables:
            env["GLIBC_TUNABLES"] = tunables
        else:
            env.pop("GLIBC_TUNABLES", None)
        try:
            done = subprocess.run([sys.executable, "-c", _PROBE], env=env, timeout=timeout,
                                  capture_output=True, text=True, check=True)
            skew16, skew64 = (round(float(v), 2) for v in done.stdout.split())
        except (OSError, subprocess.SubprocessError, ValueError) as exc:
            result[label] = {"error": str(exc)}
            continue
        result[label] = {"skew16_gb_s": skew16, "skew64_gb_s": skew64}
    return result
