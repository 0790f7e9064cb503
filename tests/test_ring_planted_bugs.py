"""Planted bugs: the cross-check of tests/ring_machine.py must catch every one.

Each bug lives only in this file: a subclass of a credit class, or a
monkeypatched helper of the pure-Python ring path, used by a variant of the
machine.  Each test runs the machine on the buggy implementation, requires
it to FAIL, and asserts WHICH check caught the bug and at which spec action:

* a refinement mismatch (``StateCheckFailure.mismatched`` names the spec
  variable whose mapped value differs from the model's, or has none);
* a spec invariant (``StateCheckFailure.violated``);
* a disabled-action disagreement (``ActionDisagreement``);
* TLC trace validation (``spec.tracecheck``), for a bug that passes the
  machine's invariant-only mode.

The searches are derandomized (the same runs every time) and do not shrink:
a failure is reported in the run where it was found, which keeps the file
fast.  That costs nothing in precision, because the machine checks after
every step: every step before the failing one passed every check, and the
tests assert the spec action at which each bug was caught.
"""

from __future__ import annotations

import time

import pytest
from hypothesis import Phase, settings
from hypothesis.stateful import run_state_machine_as_test

from impl.ring import pyring
from impl.ring.credit import CREDIT_WORD, IMM_POS_MASK, CreditReceiver, CreditSender
from impl.ring.pyring import copy_in
from spec.refinement import spec_params
from tests import ring_machine as rm
from tests.gates import needs_tlc

# Derandomized: the same search on every run; no shrinking (see the docstring).
FIND = settings(max_examples=400, stateful_step_count=40, deadline=None, database=None,
                derandomize=True, phases=(Phase.explicit, Phase.generate))
CAUGHT = (rm.StateCheckFailure, rm.ActionDisagreement)


def _caught(machine: type[rm.RingMachine]) -> rm.StateCheckFailure | rm.ActionDisagreement:
    """Run *machine* until the cross-check fails; return the (shrunk) failure."""
    with pytest.raises(CAUGHT) as info:
        run_state_machine_as_test(machine, settings=FIND)
    return info.value


def _rdma(name: str, *, sender_cls: type = CreditSender, receiver_cls: type = CreditReceiver,
          **attrs: object) -> type[rm.RingMachine]:
    """The credit machine over the given (buggy) sender and receiver classes."""
    def make_system(self: rm.RingMachine, params):
        return rm.RdmaSystem(params, sender_cls=sender_cls, receiver_cls=receiver_cls)
    return rm.variant(rm.RdmaMachine, name, make_system=make_system,
                      collector=attrs.pop("collector", None), **attrs)


def _shm_python(name: str) -> type[rm.RingMachine]:
    return rm.variant(rm.ShmPythonMachine, name, collector=None)


# --------------------------------------------------------------------------
# (a) Credit leaks


class HeadMinusOneReceiver(CreditReceiver):
    """BUG: returns head - 1 as credit (while recording head as credited)."""

    def return_credit(self) -> bool:
        if not self.credit_due:
            return False
        head = self.head - 1  # the planted leak: one byte of credit lost per return
        self.credit_channel.write(0, CREDIT_WORD.pack(head), head & IMM_POS_MASK)
        self._credited = self.head
        self._creq = False
        return True


class DroppingReceiver(CreditReceiver):
    """BUG: every second credit return is recorded but never sent."""

    def return_credit(self) -> bool:
        if not self.credit_due:
            return False
        self.dropped = not getattr(self, "dropped", True)
        if self.dropped:  # the planted leak: the batch is lost
            self._credited = self.head
            self._creq = False
            return True
        return super().return_credit()


def test_credit_leak_head_minus_one_is_a_cwire_mismatch() -> None:
    """Caught by the refinement mapping, at the ReturnCredit step: the credit
    channel carries head - 1 where the spec's ReturnCredit appends head, so
    the mapped ``cwire`` differs from the model's.  No invariant fires: a
    smaller credit is always *safe* (CreditsAccounted only bounds it from
    above), which is exactly why a leak needs the step-by-step comparison."""
    exc = _caught(_rdma("HeadMinusOneMachine", receiver_cls=HeadMinusOneReceiver))
    assert isinstance(exc, rm.StateCheckFailure), exc
    assert exc.step.name == "ReturnCredit"
    assert exc.mismatched == ("cwire",)
    assert exc.violated == ()


def test_dropped_credit_batch_is_a_cwire_mismatch() -> None:
    """Caught by the refinement mapping at the second ReturnCredit: the spec
    appends head to ``cwire``, the dropped return leaves it empty.  Again no
    invariant fires (see the TLC test below)."""
    exc = _caught(_rdma("DroppingMachine", receiver_cls=DroppingReceiver))
    assert isinstance(exc, rm.StateCheckFailure), exc
    assert exc.step.name == "ReturnCredit"
    assert exc.mismatched == ("cwire",)
    assert exc.violated == ()


@pytest.mark.slow
@needs_tlc
def test_dropped_batch_passes_the_invariants_but_tlc_rejects_it(
        capsys: pytest.CaptureFixture[str]) -> None:
    """With the model comparison off (compare_model=False: only the spec's
    invariants are checked on each mapped state, and the enabling conditions
    follow the implementation), the dropped batch goes UNNOTICED by the
    machine: losing credit is safe, it only slows the sender down.  TLC
    trace validation of the same runs rejects them, each at exactly the
    ReturnCredit step that dropped the batch, where the Python model's
    replay (``first_bad_step``) rejects them too."""
    runs: list[rm.Run] = []
    machine = _rdma("DroppingInvariantsOnly", receiver_cls=DroppingReceiver,
                    compare_model=False, collector=runs)
    run_state_machine_as_test(machine, settings=settings(
        max_examples=150, stateful_step_count=40, deadline=None, database=None,
        derandomize=True))
    bad = {i: rm.first_bad_step(r) for i, r in enumerate(runs)}
    rejected = {i: s for i, s in bad.items() if s is not None}
    assert rejected, "no run dropped a batch: the search is too small"
    for i, s in rejected.items():
        e = runs[i].events[s]
        assert e.action == "ReturnCredit", (i, s, e.action)
        assert sum(x.action == "ReturnCredit" for x in runs[i].events[:s + 1]) == 2

    t0 = time.monotonic()
    res = rm.validate_runs(runs)
    seconds = time.monotonic() - t0
    assert not res.ok
    f = res.failure
    assert f is not None, res.output[-2000:]
    assert f.trace in rejected
    assert f.step == rejected[f.trace]
    assert f.action == "ReturnCredit"
    assert "cwire" in f.diff
    with capsys.disabled():
        print(f"\ndropped batch, invariants only: the machine passed {len(runs)} runs; "
              f"the model replay rejects {len(rejected)}; TLC rejected trace {f.trace} at "
              f"event {f.step} ({f.action}) in {seconds:.1f} s")


# --------------------------------------------------------------------------
# (b) Off-by-one at wrap-around


def _split_one_early(mem, data_off: int, cap: int, pos: int, src) -> None:
    """pyring._copy_in with the planted bug: the split point one byte early."""
    n = len(src)
    start = data_off + pos % cap
    first = data_off + cap - start - 1  # BUG: one byte short of the ring's end
    if n <= first:
        mem[start:start + n] = src
    else:
        mem[start:start + first] = src[:first]
        mem[data_off:data_off + n - first] = src[first:]


def test_wraparound_split_off_by_one_in_the_shm_writer(monkeypatch: pytest.MonkeyPatch) -> None:
    """Caught at the first Write that reaches the ring's last slot: the byte
    for slot C-1 lands in slot 0, so the mapped ``buf`` differs from the
    model's, and NoOverwrite fails (slot C-1 holds a stale byte between head
    and tail).  Monkeypatched into the pure-Python path only."""
    monkeypatch.setattr(pyring, "_copy_in", _split_one_early)
    exc = _caught(_shm_python("ShmSplitOffByOne"))
    assert isinstance(exc, rm.StateCheckFailure), exc
    assert exc.step.name == "Write"
    assert exc.mismatched == ("buf",)
    assert "NoOverwrite" in exc.violated


class SplitOffByOneReader(CreditReceiver):
    """BUG: the receiver's wrapping copy splits one byte early."""

    def read_into(self, buf) -> int:
        view = memoryview(buf).cast("B")
        k = min(len(view), self.rtail - self.head)
        if k <= 0:
            return 0
        ring = memoryview(bytearray(self.ring_copy()))
        _split_one_early_out(ring, self.capacity, self.head, view[:k])
        self._head += k
        return k


def _split_one_early_out(ring: memoryview, cap: int, pos: int, dst: memoryview) -> None:
    n = len(dst)
    start = pos % cap
    first = cap - start - 1  # BUG: one byte short of the ring's end
    if n <= first:
        dst[:] = ring[start:start + n]
    else:
        dst[:first] = ring[start:start + first]
        dst[first:] = ring[:n - first]


def test_wraparound_split_off_by_one_in_the_credit_reader() -> None:
    """Caught at the first Recv that reaches the ring's last slot: the app
    gets slot 0's byte instead, so the mapped ``got`` differs from the
    model's and DeliveredPrefix fails."""
    exc = _caught(_rdma("ReaderSplitOffByOne", receiver_cls=SplitOffByOneReader))
    assert isinstance(exc, rm.StateCheckFailure), exc
    assert exc.step.name == "Recv"
    assert exc.mismatched == ("got",)
    assert "DeliveredPrefix" in exc.violated


# --------------------------------------------------------------------------
# (c) The tail published before the data


def _deferred_copy_in():
    """pyring._copy_in whose bytes land only at the next copy (after the tail)."""
    real = pyring._copy_in
    held: dict[str, object] = {"mem": None}

    def copy_in_late(mem, data_off: int, cap: int, pos: int, src) -> None:
        # BUG: the writer stores tail right after this returns, so the tail is
        # published before the bytes, which wait for the next write.
        if held["mem"] is mem:
            real(mem, *held["args"])
        held["mem"], held["args"] = mem, (data_off, cap, pos, bytes(src))
    return copy_in_late


def test_shm_tail_published_before_the_data(monkeypatch: pytest.MonkeyPatch) -> None:
    """Caught at the Write itself: the mapped tail (= rtail, the reader's
    view) has moved but ``buf`` still holds the old bytes, so ``buf``
    mismatches and NoOverwrite fails -- a reader would read stale bytes."""
    monkeypatch.setattr(pyring, "_copy_in", _deferred_copy_in())
    exc = _caught(_shm_python("ShmTailBeforeData"))
    assert isinstance(exc, rm.StateCheckFailure), exc
    assert exc.step.name == "Write"
    assert exc.mismatched == ("buf",)
    assert "NoOverwrite" in exc.violated


class TailFirstSender(CreditSender):
    """BUG: the write carrying the new tail (the imm) is issued before the data."""

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        n = len(view)
        if n > self.free:
            self._want = n
            return 0
        cap = self.capacity
        copy_in(self._mem, 0, cap, self._tail, view)
        slot, new_tail = self._tail % cap, self._tail + n
        first = min(n, cap - slot)
        self._post_tail(slot, new_tail & IMM_POS_MASK)   # the planted bug: tail first
        self._post_data(slot, bytes(view[:first]))
        if first < n:
            self._post_data(0, bytes(view[first:]))
        self._tail, self._want = new_tail, 0
        return n

    def _post_tail(self, slot: int, imm: int) -> None:
        self.channel.write(slot, b"", imm)

    def _post_data(self, offset: int, data: bytes) -> None:
        self.channel.write(offset, data)


class TailFirstLateDataSender(TailFirstSender):
    """BUG: as TailFirstSender, and the data goes out only with the next write."""

    held: list[tuple[int, bytes]]

    def _post_tail(self, slot: int, imm: int) -> None:
        for offset, data in getattr(self, "held", []):
            self.channel.write(offset, data)
        self.held = []
        self.channel.write(slot, b"", imm)

    def _post_data(self, offset: int, data: bytes) -> None:
        self.held.append((offset, data))


def test_rdma_tail_imm_before_the_data_write() -> None:
    """Caught at the Write by the refinement mapping itself: the data channel
    holds a tail followed by data with no tail behind it, which is no
    sequence of spec messages, so ``wire`` has no value (a receiver landing
    the tail would see it before the bytes)."""
    exc = _caught(_rdma("TailFirstMachine", sender_cls=TailFirstSender))
    assert isinstance(exc, rm.StateCheckFailure), exc
    assert exc.step.name == "Write"
    assert exc.mismatched == ("wire",)
    assert exc.unmappable is not None and "no tail behind them" in exc.unmappable


def test_rdma_tail_before_late_data_receiver_reads_the_tail_first() -> None:
    """With the data held back to the next write, the wire maps, to a message
    of no bytes at the new tail: the refinement check catches it at the Write
    (``wire`` mismatch).  With the model comparison off, the spec's
    invariants catch it one step later, at the Deliver that lands the tail
    first: rtail moves over slots that still hold old bytes, and NoOverwrite
    fails.  The second part is scripted (no search), so the step is exact."""
    exc = _caught(_rdma("TailFirstLateData", sender_cls=TailFirstLateDataSender))
    assert isinstance(exc, rm.StateCheckFailure), exc
    assert exc.step.name == "Write"
    assert exc.mismatched == ("wire",)
    assert exc.unmappable is None

    m = _rdma("TailFirstLateDataInvOnly", sender_cls=TailFirstLateDataSender,
              compare_model=False)()
    m.start(spec_params(5, 1, 3, max_bytes=rm.MAX_BYTES))
    m.refines_model()
    m.want_n(3)
    m.refines_model()
    m.write()
    m.refines_model()           # the invariants alone let the Write pass
    m.deliver()
    with pytest.raises(rm.StateCheckFailure) as info:
        m.refines_model()
    m.teardown()
    assert info.value.step.name == "Deliver"
    assert info.value.mismatched == ()
    assert "NoOverwrite" in info.value.violated


# --------------------------------------------------------------------------
# (d) An action the spec disables


class EagerCreditReceiver(CreditReceiver):
    """BUG: returns credit after every read, ignoring the batch."""

    @property
    def credit_due(self) -> bool:
        return self.head > self.credited


def test_eager_credit_is_a_disabled_action_disagreement() -> None:
    """Caught by the always-enabled rule that tries every disabled action:
    below a full batch and with no request, the spec's ReturnCredit is
    disabled, but this receiver returns credit."""
    exc = _caught(_rdma("EagerCreditMachine", receiver_cls=EagerCreditReceiver))
    assert isinstance(exc, rm.ActionDisagreement), exc
    assert exc.action == "ReturnCredit"
    assert exc.enabled is False
