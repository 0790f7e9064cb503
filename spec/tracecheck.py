"""Batched validation of implementation traces against a TLA+ spec, with TLC.

A trace is a list of :class:`Event` values: the first event is the initial
state, each later one names the spec action that was taken (with its
parameters) and the values of all the spec's variables after it.  All traces
of a batch go into one generated module, ``XTrace.tla``, that EXTENDS the
spec and is checked by one TLC run (``-workers 2``, deadlock checked):

* ``Traces == << <<e1, e2, ...>>, ... >>`` holds every event, one per line
  (one very long line makes TLC's parser quadratic).  An event is a record
  ``[a |-> action, p |-> params, s |-> ..., q |-> ..., f |-> ...]``; the
  first holds the whole state in ``s``, later ones only what changed (new
  values in ``s``, queue-like sequence updates in ``q``, changed entries of
  functions in ``f``), because the parser's time grows with the text: 1,000
  traces of 50 steps of RingCredit are 25 MB written out in full (TLC did not
  finish in 10 minutes) and 6 MB as changes (about 40 s).  ``XNew`` rebuilds
  each next value, so every variable is still compared.
* ``XInit`` picks a trace ``tid`` and sets the variables to its first logged
  state, cursor ``l = 1``; the invariant ``XInitOK`` requires that state to
  satisfy the spec's ``Init``.
* ``XNext`` takes the real spec action named by the next event, with its
  parameters, AND requires the variables' next values to equal the logged
  ones; a completed trace stutters.

So a trace that the spec cannot follow deadlocks, at exactly the step that
fails.  On a failure, two one-step TLC runs from the last good state compute
what the logged action can reach there (the report shows which variables
differ from the logged state) and which of the spec's actions would have
produced the logged state.

The module also reads TLC's output: :func:`parse_state` turns a state as TLC
prints it into a dict of Python values (with ``spec.tlavalue.parse``) and
:func:`read_dot` loads a ``-dump dot,actionlabels`` state graph.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from spec.tlavalue import ModelValue, normalize, parse, to_tla
from spec.tlc import TLCResult, run_tlc

__all__ = [
    "Event",
    "TraceFailure",
    "TraceResult",
    "canonical",
    "check_traces",
    "parse_state",
    "read_dot",
    "spec_variables",
]


# --------------------------------------------------------------------------
# Events and results


@dataclass(frozen=True)
class Event:
    """One step of a trace.

    ``action`` is the name of the spec action taken and ``params`` its
    parameters in the spec's order (``Event("Want", (3,), ...)`` for
    ``Want(3)``, ``Event("Write", (), ...)`` for ``Write``).  ``state`` maps
    every variable of the spec to its value after the step, as Python values
    that ``spec.tlavalue.to_tla`` renders (tuple -> sequence, dict with str
    keys -> record, dict with other keys -> function, bool, int, str); for
    RingCredit, ``spec.ring.to_tla_state`` gives exactly that.  The first
    event of a trace is its initial state; by convention its action is
    ``"Init"`` and its params are empty (both are ignored).
    """

    action: str
    params: tuple = ()
    state: Mapping[str, object] = field(default_factory=dict)


@dataclass
class TraceFailure:
    """Where and why a trace was rejected.

    ``trace`` and ``step`` are 0-based indices into the list of traces and
    into that trace's events: ``step`` is the event that could not be
    followed (0: the initial state).  ``tid`` and ``cursor`` are the same
    place in the generated module's terms (its variables ``tid`` and ``l``,
    1-based, in the last state reached).  ``reached`` is that last state,
    ``logged`` the state the trace claims next, ``successors`` every state the
    spec's action (with the logged parameters) reaches from ``reached``, and
    ``diff`` maps each variable in which ``logged`` differs from the closest
    successor to the pair (logged, spec) in canonical TLA+ text; no successor
    means the action is not enabled in ``reached``.  ``explained_by`` names
    the spec actions that do lead from ``reached`` to ``logged`` (a wrong
    action label shows up here).
    """

    trace: int
    step: int
    tid: int
    cursor: int
    reason: str
    action: str
    params: tuple
    logged: dict[str, object]
    reached: dict[str, object] | None = None
    successors: list[dict[str, object]] = field(default_factory=list)
    diff: dict[str, tuple[str, str]] = field(default_factory=dict)
    explained_by: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        call = self.action
        if self.params:
            call += "(" + ", ".join(canonical(p) for p in self.params) + ")"
        lines = [
            f"trace {self.trace} (tid {self.tid}) rejected at event {self.step} "
            f"(l = {self.cursor}): {self.reason}",
            f"  logged action: {call}",
        ]
        if self.reached is None or self.step == 0:
            lines.append("  logged state:")
            lines.extend(f"    {k} = {canonical(v)}" for k, v in self.logged.items())
            return "\n".join(lines)
        if not self.successors:
            lines.append(f"  {call} is not enabled in the last reached state")
        else:
            lines.append(
                f"  {call} has {len(self.successors)} successor(s); the closest differs "
                "from the logged state in:"
            )
            for var, (logged, spec) in self.diff.items():
                lines.append(f"    {var}: logged {logged}")
                lines.append(f"    {' ' * len(var)}  spec   {spec}")
        if self.explained_by:
            lines.append(f"  the logged state follows by: {', '.join(self.explained_by)}")
        changes = _diff(self.logged, self.reached)
        lines.append("  the logged step changes:" if changes else "  the logged step is a stutter")
        lines.extend(f"    {var}: {old} -> {new}" for var, (new, old) in changes.items())
        lines.append("  last reached state:")
        lines.extend(f"    {k} = {canonical(v)}" for k, v in self.reached.items())
        return "\n".join(lines)


@dataclass
class TraceResult:
    """The outcome of :func:`check_traces`.

    ``ok`` is true when every trace was followed to its end.  ``failure``
    says where the first rejected trace TLC found went wrong.  ``seconds`` is
    the wall time of the TLC run, ``distinct_states`` TLC's count (one state
    per event when all traces are valid).
    """

    ok: bool
    traces: int
    events: int
    distinct_states: int | None
    seconds: float
    failure: TraceFailure | None = None
    output: str = ""

    def check(self) -> None:
        """Raise AssertionError with the failure report unless ``ok``."""
        if not self.ok:
            raise AssertionError(str(self.failure) if self.failure else self.output[-4000:])


# --------------------------------------------------------------------------
# Reading TLC's values


_CONJUNCT = re.compile(r"^/\\ ([A-Za-z_][A-Za-z0-9_]*) = ", re.MULTILINE)


def parse_state(text: str) -> dict[str, object]:
    """Parse a state as TLC prints it: ``/\\ x = 1`` lines, values may span lines."""
    text = text.strip()
    starts = list(_CONJUNCT.finditer(text))
    if not starts:
        m = re.match(r"([A-Za-z_][A-Za-z0-9_]*) = (.*)\Z", text, re.DOTALL)
        if m is None:
            raise ValueError(f"not a TLC state: {text[:80]!r}")
        return {m.group(1): parse(m.group(2))}
    state = {}
    for m, nxt in itertools.pairwise([*starts, None]):
        end = nxt.start() if nxt is not None else len(text)
        state[m.group(1)] = parse(text[m.end():end])
    return state


_DOT_NODE = re.compile(r'^(-?\d+) \[label="((?:[^"\\]|\\.)*)"(.*)\];?$')
_DOT_EDGE = re.compile(r'^(-?\d+) -> (-?\d+)(?: \[label="((?:[^"\\]|\\.)*)"[^\]]*\])?;?$')
_DOT_ESCAPES = {"n": "\n", "l": "\n", "r": "\n", '"': '"', "\\": "\\"}


def _dot_unescape(s: str) -> str:
    return re.sub(r"\\(.)", lambda m: _DOT_ESCAPES.get(m.group(1), "\\" + m.group(1)), s)


def read_dot(
    path: str | os.PathLike[str],
) -> tuple[dict[str, dict[str, object]], set[str], list[tuple[str, str, str]]]:
    """Load TLC's ``-dump dot,actionlabels`` graph.

    Returns ``(states, initial, edges)``: ``states`` maps TLC's node id to the
    parsed state, ``initial`` holds the ids of initial states (drawn filled),
    ``edges`` lists ``(source id, action name, target id)``, self-loops
    (stuttering steps such as ``Done``) included.
    """
    states: dict[str, dict[str, object]] = {}
    initial: set[str] = set()
    edges: list[tuple[str, str, str]] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            m = _DOT_EDGE.match(line)
            if m:
                edges.append((m.group(1), _dot_unescape(m.group(3) or ""), m.group(2)))
                continue
            m = _DOT_NODE.match(line)
            if m:
                states[m.group(1)] = parse_state(_dot_unescape(m.group(2)))
                if "filled" in m.group(3):
                    initial.add(m.group(1))
    return states, initial, edges


# --------------------------------------------------------------------------
# Canonical text, for comparing and showing values


def canonical(v: object) -> str:
    """Canonical TLA+ text of a Python value: equal TLA+ values give equal text.

    A function on 1..n is written as a sequence, as TLC prints it, and
    records, functions and sets are sorted.
    """
    return to_tla(normalize(v))


def _diff(logged: Mapping[str, object], other: Mapping[str, object]) -> dict[str, tuple[str, str]]:
    out = {}
    for var in logged:
        a = canonical(logged[var])
        b = canonical(other[var]) if var in other else "(absent)"
        if a != b:
            out[var] = (a, b)
    return out


# --------------------------------------------------------------------------
# Reading the spec


def _strip_comments(text: str) -> str:
    text = re.sub(r"\(\*.*?\*\)", " ", text, flags=re.DOTALL)  # no nesting in our specs
    return re.sub(r"\\\*[^\n]*", " ", text)


def spec_variables(spec_dir: str | os.PathLike[str], module: str) -> list[str]:
    """The variables a module declares (``VARIABLE``/``VARIABLES``), in order.

    Follows ``EXTENDS`` of modules found in ``spec_dir``.
    """
    text = _strip_comments(Path(spec_dir, f"{module}.tla").read_text(encoding="utf-8"))
    names: list[str] = []
    ext = re.search(r"^\s*EXTENDS\s+([\w\s,]+?)\s*$", text, re.MULTILINE)
    if ext:
        for parent in re.split(r"\s*,\s*", ext.group(1).strip()):
            if Path(spec_dir, f"{parent}.tla").exists():
                names += [n for n in spec_variables(spec_dir, parent) if n not in names]
    keywords = r"CONSTANTS?|VARIABLES?|ASSUME|EXTENDS|LOCAL|INSTANCE|THEOREM|={4,}|-{4,}"
    for m in re.finditer(rf"\bVARIABLES?\b(.*?)(?=\b(?:{keywords})\b|\w+\s*(?:\(.*?\))?\s*==)",
                         text, re.DOTALL):
        for name in re.findall(r"[A-Za-z_]\w*", m.group(1)):
            if name not in names:
                names.append(name)
    return names


def _defined_operators(spec_dir: Path, module: str) -> set[str]:
    text = _strip_comments((spec_dir / f"{module}.tla").read_text(encoding="utf-8"))
    names = set(re.findall(r"^\s*([A-Za-z_]\w*)\s*(?:\([^)]*\))?\s*==", text, re.MULTILINE))
    ext = re.search(r"^\s*EXTENDS\s+([\w\s,]+?)\s*$", text, re.MULTILINE)
    if ext:
        for parent in re.split(r"\s*,\s*", ext.group(1).strip()):
            if (spec_dir / f"{parent}.tla").exists():
                names |= _defined_operators(spec_dir, parent)
    return names


# --------------------------------------------------------------------------
# Generating the trace module

_RESERVED = {"tid", "l", "Traces"}


def _formula_for(
    action_formula: Mapping[str, str] | Callable[[str], str | None] | None, name: str, arity: int
) -> str:
    """The TLA+ action for events named ``name``; ``p`` is the params tuple."""
    if action_formula is None:
        if arity == 0:
            return name
        return f"{name}(" + ", ".join(f"p[{i}]" for i in range(1, arity + 1)) + ")"
    if callable(action_formula):
        text = action_formula(name)
    else:
        text = action_formula.get(name)
    if text is None:
        raise ValueError(f"no TLA+ formula for action {name!r}")
    return text


def _norm(v: object) -> object:
    """tlavalue.normalize, with a fast path for the common flat sequences."""
    if type(v) is tuple and all(type(x) is int for x in v):
        return v
    return normalize(v)


def _same(a: object, b: object) -> bool:
    """Equal as TLA+ values.  Python's True == 1 is not TLA+'s; repr tells them
    apart (a dict's repr depends on its order, which only costs compactness)."""
    return a == b and repr(a) == repr(b)


def _seq_delta(old: tuple, new: tuple) -> tuple[int, tuple]:
    """``(k, t)`` with ``new == old[k:] + t`` and ``k`` smallest: a queue step."""
    for k in range(len(old) + 1):
        n = len(old) - k
        if _same(new[:n], old[k:]):
            return k, new[n:]
    raise AssertionError("unreachable: k = len(old) always matches")


def _event_line(e: Event, prev: Mapping[str, object] | None, variables: Sequence[str]) -> str:
    """One event as a TLA+ record, relative to the previous logged state.

    The record holds only what changed, so that the module stays small
    (TLC's parser is slow on big ones): ``s`` new values, ``q`` sequences
    that dropped ``k`` items at the front and gained ``t`` at the end, ``f``
    functions (and records) with the entries that changed.  ``XNew`` in the
    module rebuilds the full next state from it.
    """
    full: list[str] = []
    queue: list[str] = []
    fn: list[str] = []
    for v in variables:
        new = e.state[v]
        if prev is None:
            full.append(f"{v} |-> {to_tla(new)}")
            continue
        old = prev[v]
        if _same(old, new):
            continue
        if type(old) is tuple and type(new) is tuple and old:
            k, t = _seq_delta(old, new)
            if k < len(old):
                queue.append(f"{v} |-> [k |-> {k}, t |-> {to_tla(t)}]")
                continue
        if isinstance(old, dict) and isinstance(new, dict) and old.keys() == new.keys():
            changed = {key: x for key, x in new.items() if not _same(old[key], x)}
            if changed and len(changed) < len(new):
                fn.append(f"{v} |-> {_fn_tla(changed)}")
                continue
        full.append(f"{v} |-> {to_tla(new)}")
    params = "<<" + ", ".join(to_tla(x) for x in e.params) + ">>"

    def rec(fields: list[str]) -> str:
        return "[" + ", ".join(fields) + "]" if fields else "<<>>"

    return (f"[a |-> {to_tla(e.action)}, p |-> {params}, "
            f"s |-> {rec(full)}, q |-> {rec(queue)}, f |-> {rec(fn)}]")


def _fn_tla(entries: Mapping[object, object]) -> str:
    """A partial function (or record) as TLA+: the changed entries only."""
    if all(isinstance(k, str) for k in entries):
        return to_tla(dict(entries))
    return "(" + " @@ ".join(f"{to_tla(k)} :> {to_tla(x)}" for k, x in entries.items()) + ")"


def _write_trace_module(
    out: Path,
    module: str,
    constants: Mapping[str, object],
    traces: Sequence[Sequence[Event]],
    variables: Sequence[str],
    formulas: Mapping[str, str],
    init: str,
    invariants: Sequence[str],
) -> None:
    lines = [
        "---------------------------- MODULE XTrace ----------------------------",
        f"(* Generated by spec.tracecheck: {len(traces)} traces of {module}. *)",
        f"EXTENDS {module}, Naturals, Sequences, TLC",
        "",
        "VARIABLES tid, l",
        "",
    ]
    for name, value in constants.items():
        if not isinstance(value, ModelValue):  # model values are assigned in the .cfg
            lines.append(f"XConst_{name} == {to_tla(value)}")
    lines += ["", "Traces == <<"]
    for t, trace in enumerate(traces):
        lines.append("<<")
        prev = None
        for i, e in enumerate(trace):
            state = {v: _norm(e.state[v]) for v in variables}
            lines.append(_event_line(Event(e.action, e.params, state), prev, variables)
                         + ("," if i + 1 < len(trace) else ""))
            prev = state
        lines.append(">>" + ("," if t + 1 < len(traces) else ""))
    lines += [">>", ""]
    # The action of an event: dispatch on its name; unknown names cannot step.
    lines.append("XAction(a, p) ==")
    if formulas:
        arms = [f'a = {to_tla(n)} -> {f}' for n, f in sorted(formulas.items())]
        lines.append("    CASE " + "\n      [] ".join(arms) + "\n      [] OTHER -> FALSE")
    else:
        lines.append("    FALSE")
    assign_init = "\n".join(f"    /\\ {v} = Traces[tid][1].s.{v}" for v in variables)
    assign_next = "\n".join(f'         /\\ {v}\' = XNew(e, "{v}", {v})' for v in variables)
    all_vars = ", ".join([*variables, "tid", "l"])
    lines += [
        "",
        "XInit ==",
        "    /\\ tid \\in 1..Len(Traces)",
        "    /\\ l = 1",
        assign_init,
        "",
        "\\* The first logged state must be an initial state of the spec.",
        f"XInitOK == l = 1 => {init}",
        "",
        "\\* The value of variable `name` after event e, from its value `old` before",
        "\\* (events hold only what changed: see spec/tracecheck.py).",
        "XNew(e, name, old) ==",
        "    IF name \\in DOMAIN e.s THEN e.s[name]",
        "    ELSE IF name \\in DOMAIN e.q",
        "         THEN SubSeq(old, e.q[name].k + 1, Len(old)) \\o e.q[name].t",
        "    ELSE IF name \\in DOMAIN e.f THEN e.f[name] @@ old",
        "    ELSE old",
        "",
        "\\* Follow the trace: the spec's action AND the logged next state.",
        "XStep ==",
        "    /\\ l < Len(Traces[tid])",
        "    /\\ LET e == Traces[tid][l + 1] IN",
        "         /\\ XAction(e.a, e.p)",
        assign_next,
        "    /\\ l' = l + 1",
        "    /\\ tid' = tid",
        "",
        "\\* A completed trace stutters, so only a trace that cannot go on deadlocks.",
        "XEnd ==",
        "    /\\ l = Len(Traces[tid])",
        f"    /\\ UNCHANGED <<{all_vars}>>",
        "",
        "XNext == XStep \\/ XEnd",
        "",
        "\\* State predicates every logged state must satisfy (check_traces' invariants).",
        *(f"XInv{i} == {text}" for i, text in enumerate(invariants, start=1)),
        "=" * 72,
        "",
    ]
    (out / "XTrace.tla").write_text("\n".join(lines), encoding="utf-8")
    cfg = ["CONSTANTS"]
    cfg += [f"    {name} = {value}" if isinstance(value, ModelValue)
            else f"    {name} <- XConst_{name}" for name, value in constants.items()]
    cfg += ["INIT XInit", "NEXT XNext", "INVARIANTS XInitOK"]
    cfg += [f"    XInv{i}" for i in range(1, len(invariants) + 1)] + [""]
    (out / "XTrace.cfg").write_text("\n".join(cfg), encoding="utf-8")


def _write_step_module(
    out: Path,
    name: str,
    module: str,
    constants: Mapping[str, object],
    variables: Sequence[str],
    start: Mapping[str, object],
    next_formula: str,
) -> None:
    """Module ``name`` whose behaviours are one step of ``next_formula`` from ``start``.

    The state constraint stops TLC after one step (the initial state is at
    level 0), so its state graph is ``start`` and its successors.
    """
    lines = [
        f"---------------------------- MODULE {name} ----------------------------",
        f"EXTENDS {module}, Naturals, Sequences, TLC",
    ]
    # Model values are assigned in the .cfg, as in XTrace: "XConst_X == X"
    # would define the constant by itself (TLC overflows its stack on it).
    lines += [f"XConst_{c} == {to_tla(value)}" for c, value in constants.items()
              if not isinstance(value, ModelValue)]
    lines += ["XInit ==", *(f"    /\\ {v} = {to_tla(start[v])}" for v in variables)]
    lines += [f"XNext == {next_formula}", 'XOneStep == TLCGet("level") < 2', "=" * 72, ""]
    (out / f"{name}.tla").write_text("\n".join(lines), encoding="utf-8")
    cfg = ["CONSTANTS", *(f"    {c} = {value}" if isinstance(value, ModelValue)
                          else f"    {c} <- XConst_{c}" for c, value in constants.items())]
    cfg += ["INIT XInit", "NEXT XNext", "CONSTRAINT XOneStep", ""]
    (out / f"{name}.cfg").write_text("\n".join(cfg), encoding="utf-8")


def _link_spec(spec_dir: Path, out: Path) -> None:
    """Make the spec's modules visible next to the generated one (TLC looks there)."""
    if out.resolve() == spec_dir:
        raise ValueError("keep_dir must not be the spec's own directory")
    for src in spec_dir.glob("*.tla"):
        if src.stem in ("XTrace", "XStep"):
            continue  # ours, left by an earlier run that kept its files there
        dst = out / src.name
        if dst.is_symlink() or dst.exists():
            dst.unlink()  # a link or copy from an earlier run in keep_dir
        try:
            os.symlink(src, dst)
        except OSError:
            shutil.copyfile(src, dst)


# --------------------------------------------------------------------------
# Running TLC and explaining a rejection


def _validate(traces: Sequence[Sequence[Event]], variables: Sequence[str]) -> None:
    want = set(variables)
    for t, trace in enumerate(traces):
        if not trace:
            raise ValueError(f"trace {t} is empty; a trace needs at least its initial state")
        for i, e in enumerate(trace):
            if not isinstance(e, Event):
                raise ValueError(f"trace {t} event {i} is {type(e).__name__}, not Event")
            keys = set(e.state)
            if keys != want:
                missing = ", ".join(sorted(want - keys)) or "-"
                extra = ", ".join(sorted(keys - want)) or "-"
                raise ValueError(
                    f"trace {t} event {i}: state must give exactly the spec's variables "
                    f"(missing: {missing}; unknown: {extra})"
                )
            if not isinstance(e.params, tuple):
                raise ValueError(f"trace {t} event {i}: params must be a tuple")


def _successors(
    work: Path,
    name: str,
    module: str,
    constants: Mapping[str, object],
    variables: Sequence[str],
    start: Mapping[str, object],
    next_formula: str,
    timeout: float | None,
) -> tuple[list[tuple[str, dict[str, object]]], str | None]:
    """Every ``(action name, state)`` that ``next_formula`` reaches from ``start``.

    Computed by TLC (so by the spec itself, not by a Python model).  Returns
    the successors and, if TLC could not compute them, its complaint.
    """
    _write_step_module(work, name, module, constants, variables, start, next_formula)
    dot = work / f"{name}.dot"
    res = run_tlc(work, name, f"{name}.cfg", workers=1, deadlock=False,
                  dump_dot=dot, timeout=timeout)
    if not res.ok:
        return [], "; ".join(str(v) for v in res.violations) or "TLC failed"
    states, initial, edges = read_dot(dot)
    return [(label, states[dst]) for src, label, dst in edges if src in initial], None


def _closest_diff(
    logged: Mapping[str, object], successors: Sequence[Mapping[str, object]]
) -> dict[str, tuple[str, str]]:
    """The variables in which ``logged`` differs from the nearest successor."""
    diffs = [_diff(logged, s) for s in successors]
    return min(diffs, key=len) if diffs else {}


def _explain(
    work: Path,
    module: str,
    constants: Mapping[str, object],
    traces: Sequence[Sequence[Event]],
    variables: Sequence[str],
    formulas: Mapping[str, str],
    invariants: Sequence[str],
    res: TLCResult,
    next_name: str | None,
    timeout: float | None,
) -> TraceFailure:
    """Turn TLC's verdict on the trace module into a TraceFailure.

    Raises RuntimeError when TLC failed for a reason that is not a trace
    being rejected (a parse error, say): that is a bug in the spec or in the
    inputs, and TLC's own report says more.
    """
    v = res.violations[0] if res.violations else None
    if v is None or not res.counterexample or "tid" not in res.counterexample[-1].variables:
        raise RuntimeError(f"TLC could not check the traces:\n{res.report()}")
    last = res.counterexample[-1].variables
    tid, cursor = last["tid"], last["l"]
    trace = traces[tid - 1]
    if v.kind == "invariant" and v.name == "XInitOK":
        e = trace[0]
        return TraceFailure(
            trace=tid - 1, step=0, tid=tid, cursor=cursor,
            reason="the first logged state is not an initial state of the spec",
            action=e.action, params=e.params, logged=dict(e.state),
        )
    if v.kind == "invariant" and v.name and re.fullmatch(r"XInv\d+", v.name):
        e = trace[cursor - 1]
        return TraceFailure(
            trace=tid - 1, step=cursor - 1, tid=tid, cursor=cursor,
            reason=f"the logged state violates {invariants[int(v.name[4:]) - 1]}",
            action=e.action, params=e.params, logged=dict(e.state),
        )
    if v.kind not in ("deadlock", "error"):
        raise RuntimeError(f"TLC could not check the traces:\n{res.report()}")
    # The trace got to event `cursor` (1-based), i.e. index cursor - 1, and no further.
    step = cursor
    e, before = trace[step], trace[step - 1]
    reason = "the spec cannot take the logged step"
    if v.kind == "error":
        reason = f"TLC failed evaluating the logged step: {v.message.strip()}"
    logged_call = f"LET p == {to_tla(tuple(e.params))} IN {formulas[e.action]}"
    found, trouble = _successors(work, "XStep", module, constants, variables, before.state,
                                 logged_call, timeout)
    successors = [st for _, st in found]
    if trouble is not None:
        reason += f" (and the spec's successors could not be computed: {trouble})"
    explained_by: list[str] = []
    if next_name is not None:
        # Which of the spec's actions would have produced the logged state?
        found, _ = _successors(work, "XAny", module, constants, variables, before.state,
                               next_name, timeout)
        explained_by = sorted({label for label, st in found if not _diff(e.state, st)})
    return TraceFailure(
        trace=tid - 1, step=step, tid=tid, cursor=cursor, reason=reason,
        action=e.action, params=e.params, logged=dict(e.state), reached=dict(before.state),
        successors=successors, diff=_closest_diff(e.state, successors),
        explained_by=explained_by,
    )


def check_traces(
    spec_dir: str | os.PathLike[str],
    module: str,
    constants: Mapping[str, object],
    traces: Sequence[Sequence[Event]],
    action_formula: Mapping[str, str] | Callable[[str], str | None] | None = None,
    *,
    init: str = "Init",
    next: str | None = "Next",
    invariants: Iterable[str] = (),
    workers: int = 2,
    timeout: float | None = 600,
    keep_dir: str | os.PathLike[str] | None = None,
) -> TraceResult:
    """Check that every trace is a behaviour of ``module`` under ``constants``.

    ``constants`` maps each CONSTANT of the spec to its value.
    ``action_formula`` gives, for an action name, the TLA+ action formula
    that an event with that name takes, in which ``p`` is the event's params
    tuple (``{"Want": "Want(p[1])", "Write": "Write"}``); a callable maps a
    name to the formula (or None if unknown).  By default an event named
    ``X`` with n params takes the spec's ``X(p[1], ..., p[n])``.  ``init``
    names the spec's initial predicate and ``next`` its next-state relation
    (used only to explain a rejection; None to skip).  ``invariants`` are
    state predicates (names of the spec's invariants, or TLA+ expressions
    over its variables and constants) that every logged state must satisfy:
    useful where the trace's constants were never model-checked.  The generated
    files stay in ``keep_dir`` when given (for inspection), else in a
    temporary directory that is removed.

    TLC stops at the first rejected trace it meets, so ``failure`` reports
    one trace (the one rejected earliest in TLC's breadth-first search).
    Returns a :class:`TraceResult`; raises ValueError for malformed traces,
    RuntimeError when TLC fails for a reason other than a rejected trace and
    TimeoutError when it runs longer than ``timeout`` seconds.
    """
    spec_dir = Path(spec_dir).resolve()
    traces = [list(t) for t in traces]
    invariants = list(invariants)
    variables = spec_variables(spec_dir, module)
    if not variables:
        raise ValueError(f"module {module} in {spec_dir} declares no variables")
    clash = _RESERVED & set(variables)
    if clash:
        raise ValueError(f"spec variables clash with the trace module's: {sorted(clash)}")
    _validate(traces, variables)
    n_events = sum(len(t) for t in traces)
    if not traces:
        return TraceResult(ok=True, traces=0, events=0, distinct_states=0, seconds=0.0)
    arities: dict[str, int] = {}
    for t, trace in enumerate(traces):
        for i, e in enumerate(trace[1:], start=1):
            if arities.setdefault(e.action, len(e.params)) != len(e.params):
                raise ValueError(
                    f"trace {t} event {i}: action {e.action} with {len(e.params)} params, "
                    f"elsewhere with {arities[e.action]}"
                )
    formulas = {a: _formula_for(action_formula, a, n) for a, n in arities.items()}
    if action_formula is None:
        unknown = sorted(set(formulas) - _defined_operators(spec_dir, module))
        if unknown:
            raise ValueError(f"actions not defined in {module}: {', '.join(unknown)}")

    tmp = None
    if keep_dir is not None:
        work = Path(keep_dir)
        work.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="xtrace-")
        work = Path(tmp.name)
    try:
        _link_spec(spec_dir, work)
        _write_trace_module(work, module, constants, traces, variables, formulas, init,
                            invariants)
        t0 = time.monotonic()
        res = run_tlc(work, "XTrace", "XTrace.cfg", workers=workers, deadlock=True,
                      timeout=timeout)
        result = TraceResult(
            ok=res.ok, traces=len(traces), events=n_events,
            distinct_states=res.distinct_states, seconds=time.monotonic() - t0,
            output=res.output,
        )
        if not res.ok:
            result.failure = _explain(work, module, constants, traces, variables, formulas,
                                      invariants, res, next, timeout)
        return result
    finally:
        if tmp is not None:
            tmp.cleanup()
