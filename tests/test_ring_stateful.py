"""The real ring, step by step against the RingCredit model, then against TLC.

Three machines of ``tests/ring_machine.py`` run here: the shared-memory ring
over the C path and over the pure-Python path (transport "shm"), and the
two-copy mode with batched credits (transport "rdma").  Each step runs one
spec action on the implementation and on the executable model
(``spec/ring.py``), compares the mapped state (``spec/refinement.py``) with
the model's variable by variable and checks the spec's invariants.  Every
run is logged as a trace, and one TLC run then replays all of them against
``spec/tla/RingCredit.tla`` (:func:`test_all_traces_validate_in_tlc`).

The last tests pin the refinement mapping itself on hand-made states.
"""

from __future__ import annotations

import time

import pytest
from hypothesis import settings
from hypothesis.stateful import run_state_machine_as_test

from impl.ring import Ring
from impl.ring.credit import local_pair
from spec import ring as model
from spec.refinement import (
    AppState,
    RefinementError,
    format_diff,
    ring_state,
    spec_params,
    state_diff,
    stream_bytes,
)
from tests import ring_machine as rm
from tests.gates import c_missing, needs_c, needs_tlc

# Enough to wrap the ring several times and to run out of credit, within
# about 20 s per machine on two shared cores.  Hypothesis switches rules off
# at random per run ("swarm testing"), so some runs only read or only write;
# the coverage test below checks that the interesting cases still happened.
SETTINGS = {
    rm.ShmCMachine: settings(max_examples=250, stateful_step_count=60, deadline=None),
    rm.ShmPythonMachine: settings(max_examples=250, stateful_step_count=60, deadline=None),
    rm.RdmaMachine: settings(max_examples=400, stateful_step_count=80, deadline=None),
}
MACHINES = list(SETTINGS)
TLC_TIMEOUT = 400  # seconds; the batch takes 15-40 s here


def _run(machine: type[rm.RingMachine]) -> list[rm.Run]:
    """Run *machine* with its settings; return the runs it logged."""
    start = len(rm.COLLECTED)
    run_state_machine_as_test(machine, settings=SETTINGS[machine])
    return rm.COLLECTED[start:]


def _runs_of(machine: type[rm.RingMachine]) -> list[rm.Run]:
    return [r for r in rm.COLLECTED if r.machine == machine.__name__]


# --------------------------------------------------------------------------
# The machines


@needs_c
def test_shm_c_ring_refines_ringcredit() -> None:
    assert _run(rm.ShmCMachine)


def test_shm_python_ring_refines_ringcredit() -> None:
    assert _run(rm.ShmPythonMachine)


@pytest.mark.slow
def test_credit_ring_refines_ringcredit() -> None:
    assert _run(rm.RdmaMachine)


def _ensure_runs() -> list[rm.Run]:
    """The runs of every machine: those of this process, or fresh ones.

    Robust to test selection: a machine whose test did not run here (``-k``,
    a single test id) is run now.
    """
    for machine in MACHINES:
        if machine is rm.ShmCMachine and c_missing():
            continue
        if not _runs_of(machine):
            _run(machine)
    return [r for m in MACHINES for r in _runs_of(m)]


@pytest.mark.slow
def test_runs_cover_wraparound_and_credit_requests(capsys: pytest.CaptureFixture[str]) -> None:
    """Each machine went through every case of ring_machine.FEATURES at least once."""
    _ensure_runs()
    lines = []
    for machine in MACHINES:
        if machine is rm.ShmCMachine and c_missing():
            continue
        runs = _runs_of(machine)
        seen: dict[str, int] = {}
        for r in runs:
            for f in rm.features(r):
                seen[f] = seen.get(f, 0) + 1
        wanted = rm.FEATURES[machine.transport]
        missing = [f for f in wanted if f not in seen]
        assert not missing, f"{machine.__name__}: no run had {missing}; seen {seen}"
        lines.append(f"{machine.__name__}: {len(runs)} runs, "
                     + ", ".join(f"{f} {seen[f]}" for f in wanted))
    with capsys.disabled():
        print("\n" + "\n".join(lines))


@pytest.mark.slow
@needs_tlc
def test_all_traces_validate_in_tlc(capsys: pytest.CaptureFixture[str]) -> None:
    """ONE TLC run replays every logged run against RingCredit.tla.

    Each event must be a step of the spec action it names, to exactly the
    logged state, and every state must satisfy the spec's invariants.  The
    Python model must agree that each run is a behaviour (it is the same
    question, asked of spec/ring.py).
    """
    runs = _ensure_runs()
    assert runs
    assert [rm.first_bad_step(r) for r in runs] == [None] * len(runs)
    t0 = time.monotonic()
    res = rm.validate_runs(runs, timeout=TLC_TIMEOUT)
    seconds = time.monotonic() - t0
    res.check()
    events = sum(len(r.events) for r in runs)
    assert res.traces == len(runs)
    assert res.events == events
    # Every event is one distinct state of the trace module (its tid and cursor differ).
    assert res.distinct_states == events
    with capsys.disabled():
        print(f"\nTLC trace validation: {len(runs)} traces, {events} events, "
              f"{len({r.params for r in runs})} sets of constants, "
              f"{seconds:.1f} s (TLC {res.seconds:.1f} s)")


# --------------------------------------------------------------------------
# The refinement mapping on hand-made states


def test_fresh_shm_ring_maps_to_init() -> None:
    p = spec_params(7, 1, 3)
    with Ring.create(7, backend="python") as ring:
        s = ring_state("shm", ring, AppState())
    assert s in model.init_states(p)
    assert s.transport == "shm"


def test_shm_mapping_reads_slots_in_order_after_a_wrap() -> None:
    with Ring.create(5, backend="python") as ring:
        w, r = ring.writer(), ring.reader()
        app = AppState()
        assert w.write(stream_bytes(0, 4)) == 4
        app.got += r.read(3)
        assert w.write(stream_bytes(4, 3)) == 3   # positions 4, 5, 6: slots 4, 0, 1
        s = ring_state("shm", ring, app)
    assert s.buf == (6, 7, 3, 4, 5)
    assert (s.head, s.shead, s.tail, s.rtail) == (3, 3, 7, 7)
    assert s.got == (1, 2, 3)


def test_rdma_mapping_of_a_wrapping_message_and_a_request() -> None:
    tx, rx = local_pair(5, 1, max_message=4)
    app = AppState()
    assert tx.write(stream_bytes(0, 4)) == 4
    assert rx.deliver()
    assert rx.read_into(bytearray(4)) == 4
    assert rx.return_credit() and tx.get_credit()
    assert tx.write(stream_bytes(4, 3)) == 3          # two remote writes: slot 4, then 0..1
    assert tx.write(stream_bytes(7, 3)) == 0          # does not fit: 5 - (7 - 4) < 3
    assert tx.ask_credit(3)
    s = ring_state("rdma", (tx, rx), app)
    assert s.wire == (model.DataMsg(4, (5, 6, 7)), model.ASK)
    assert [len(d) for _, d, _ in tx.channel.pending()] == [1, 2, 0]
    assert s.sbuf == (6, 7, 3, 4, 5)
    assert s.buf == (1, 2, 3, 4, 0)
    assert (s.tail, s.shead, s.asked, s.rtail, s.head, s.credited) == (7, 4, True, 4, 4, 4)


def test_rdma_mapping_rejects_a_piece_at_the_wrong_offset() -> None:
    tx, rx = local_pair(5, 9)
    tx.channel.write(1, stream_bytes(0, 2), 2)   # position 0 lives in slot 0, not 1
    with pytest.raises(RefinementError, match="slot 0") as info:
        ring_state("rdma", (tx, rx), AppState())
    assert info.value.variable == "wire"


def test_rdma_mapping_rejects_data_without_a_tail() -> None:
    tx, rx = local_pair(5, 9)
    tx.channel.write(0, stream_bytes(0, 2))
    with pytest.raises(RefinementError, match="no tail") as info:
        ring_state("rdma", (tx, rx), AppState())
    assert info.value.variable == "wire"


def test_rdma_mapping_counts_a_landed_untaken_credit_as_in_flight() -> None:
    tx, rx = local_pair(5, 1)
    tx.write(stream_bytes(0, 3))
    rx.deliver()
    rx.read_into(bytearray(2))
    assert rx.return_credit()
    tx.credit_target.deliver_one()         # landed, but get_credit() has not run
    s = ring_state("rdma", (tx, rx), AppState())
    assert s.cwire == (2,) and s.shead == 0
    assert tx.get_credit()
    assert ring_state("rdma", (tx, rx), AppState()).cwire == ()


def test_state_diff_names_the_variables_and_slots() -> None:
    p = spec_params(5, 1, 2)
    s = model.init_states(p)[0]
    t = s._replace(buf=(0, 0, 9, 0, 0), head=1)
    diff = state_diff(t, s)
    assert list(diff) == ["buf", "head"]
    text = format_diff(diff)
    assert "[2] 9 != 0" in text and "head: impl 1" in text


def test_stream_bytes_are_the_specs_values() -> None:
    p = spec_params(7, 1, 3)
    assert tuple(stream_bytes(250, 10)) == tuple(model.Val(p, q) for q in range(250, 260))
    assert 0 not in stream_bytes(0, 600)
    with pytest.raises(ValueError, match="must not divide"):
        spec_params(255, 1, 3)
