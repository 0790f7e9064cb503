"""The real pure-Python ring's sleep/wake handshake, step by step, against spec/wakeup.py.

A Hypothesis state machine runs the real writer (``w.write`` of one byte
per message, then ``_signal``) and the real reader (``_block`` with
``_op(..., ARM, 0)``) each in its own thread, stopped at gates placed between
the steps of RingWakeup.tla: the reader's ``_try``, ``_fence`` and poll, the
writer's ``_try``, ``_fence`` and ``_signal`` are wrapped.  Only one thread
runs at a time and Hypothesis picks which one moves on, so every run is a
sequentially consistent interleaving at the spec's step granularity (store
buffers stay empty: within one thread the real stores are immediate).

After every step the real state -- header words read with ``os.pread``, the
eventfd counter, the gate each thread waits at -- is mapped to the model's
variables (:func:`observe`), must equal the model's successor (the
"refinement" check), and must satisfy the spec's invariants.

The writer's flag load and clear run as one step: the Python path stores 0
after its load rather than exchanging, so the spec's ClearFlag (which does
not signal a flag already taken down) is not what it does when the reader
acts in between; that case costs only a spurious wake-up.
"""

from __future__ import annotations

import os
import select
import threading
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from impl.ring import Ring, _core, layout, pyring
from spec import wakeup

N = 4               # messages of one byte each; the ring holds them all
CAPACITY = 8
STEP_TIMEOUT = 10   # seconds a thread may take to reach its next gate
FINISHED = "finished"

SETTINGS = settings(max_examples=60, stateful_step_count=40, deadline=None,
                    database=None, suppress_health_check=[HealthCheck.too_slow])


class _Stop(Exception):
    """Raised at a gate when the machine tears down: unwinds the real call."""


class Stepper:
    """Runs *body* in a thread that stops at every ``gate(label)`` until released."""

    def __init__(self, name: str, body: Callable[[Callable[[str], None]], None]) -> None:
        self._cond = threading.Condition()
        self._at: str | None = None      # the gate the thread waits at, or FINISHED
        self._go = False
        self._stop = False
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, args=(body,), name=name, daemon=True)
        self._thread.start()
        self._wait_parked()

    def gate(self, label: str) -> None:
        """Called by the thread: park at *label* until the machine says go."""
        with self._cond:
            self._at, self._go = label, False
            self._cond.notify_all()
            if not self._cond.wait_for(lambda: self._go or self._stop, STEP_TIMEOUT * 3):
                self._stop = True
            if self._stop:
                raise _Stop

    def _main(self, body: Callable[[Callable[[str], None]], None]) -> None:
        try:
            body(self.gate)
        except _Stop:
            pass
        except BaseException as exc:  # reported to the machine by the next step
            self.error = exc
        with self._cond:
            self._at = FINISHED
            self._cond.notify_all()

    def _wait_parked(self) -> None:
        with self._cond:
            ok = self._cond.wait_for(lambda: self._at is not None, STEP_TIMEOUT)
        assert ok, f"{self._thread.name} reached no gate within {STEP_TIMEOUT} s"
        if self.error is not None:
            raise AssertionError(f"{self._thread.name} raised {self.error!r}") from self.error

    @property
    def at(self) -> str:
        """The gate the thread is parked at (FINISHED once its body returned)."""
        assert self._at is not None
        return self._at

    def step(self) -> None:
        """Let the thread run to its next gate (or to its end); bounded wait."""
        with self._cond:
            assert self._at not in (None, FINISHED)
            self._at, self._go = None, True
            self._cond.notify_all()
        self._wait_parked()

    def stop(self) -> None:
        """Unwind the thread from its gate and join it (bounded)."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join(STEP_TIMEOUT)


def header(ring: Ring, name: str) -> int:
    """One header word, read through the memfd (not through the endpoints' view)."""
    return int.from_bytes(os.pread(ring.fds().memfd, 8, layout.FIELDS[name]), "little")


def efd_count(fd: int) -> int:
    """The eventfd's counter, left as it was: read it (non-blocking), write it back."""
    try:
        n = os.eventfd_read(fd)
    except BlockingIOError:
        return 0
    os.eventfd_write(fd, n)
    return n


class _FakePoller:
    """The reader's poller: a gate where the reader blocks, then a real readiness check."""

    def __init__(self, gate: Callable[[str], None], efd: int, on_wake: Callable[[], None]) -> None:
        self._gate, self._efd, self._on_wake = gate, efd, on_wake

    def poll(self, timeout: int | None = None) -> list[tuple[int, int]]:
        self._gate("block")
        self._on_wake()
        # Released only when the model's Wake is enabled: the real eventfd must agree.
        real = select.poll()
        real.register(self._efd, select.POLLIN)
        ready = real.poll(0)
        assert ready, "woken with an empty eventfd"
        return ready


def reader_body(r: _core.RingReader, efd: int) -> Callable[[Callable[[str], None]], None]:
    """The reader: _block (poll, drain, _op(ARM)) forever, gated between spec steps."""
    def body(gate: Callable[[str], None]) -> None:
        real_try, real_fence = r._try, r._fence
        # "recheck" between _op's fence and its next _try; "inside" while in _try,
        # whose own fence (after storing head: the space side) is no gate.
        st = {"recheck": False, "inside": False}

        def gated_try(q, buf, off, n, flags):
            recheck = st["recheck"]
            gate("recheck" if recheck else "try")   # RingWakeup!RecheckTail / TryRead
            st["recheck"], st["inside"] = False, True
            try:
                res = real_try(q, buf, off, n, flags)
            finally:
                st["inside"] = False
            if not recheck and res == 0:
                gate("arm")                         # RingWakeup!Arm: the flag store follows
            return res

        def gated_fence():
            if st["inside"]:
                real_fence()
                return
            gate("fence")                           # RingWakeup!ReaderFence
            real_fence()
            st["recheck"] = True

        def woken():
            st["recheck"] = False

        r._try, r._fence = gated_try, gated_fence
        poller = _FakePoller(gate, efd, woken)      # RingWakeup!Wake after the poll gate
        r._new_poller = lambda: poller
        buf = bytearray(CAPACITY)
        dst, n = r._target(buf)
        while True:
            res = r._block(dst, 0, n, None, spun=True)
            assert res > 0 and not res & 1, res    # bytes read, no writer to wake
    return body


def writer_body(w: _core.RingWriter) -> Callable[[Callable[[str], None]], None]:
    """The writer: N one-byte writes, each store, fence, flag check, maybe signal."""
    def body(gate: Callable[[str], None]) -> None:
        real_try, real_fence, real_signal = w._try, w._fence, w._signal

        def gated_try(q, src, off, n, flags):
            gate("idle")                            # RingWakeup!Write: copy, store tail
            return real_try(q, src, off, n, flags)

        def gated_fence():
            gate("fence")                           # RingWakeup!WriterFence
            real_fence()
            gate("load")                            # RingWakeup!LoadFlag (+ ClearFlag)

        def gated_signal():
            gate("signal")                          # RingWakeup!Signal
            real_signal()

        w._try, w._fence, w._signal = gated_try, gated_fence, gated_signal
        for _ in range(N):
            assert w.write(b"m") == 1
    return body


# What each side's next step is, by the gate it waits at.
READER_STEP = {"try": "TryRead", "arm": "Arm", "fence": "ReaderFence",
               "recheck": "RecheckTail", "block": "Wake"}
WRITER_STEP = {"idle": "Write", "fence": "WriterFence", "load": "LoadFlag",
               "signal": "Signal"}


class WakeupMachine(RuleBasedStateMachine):
    """Drives the real ring and the model in lockstep (see the module docstring)."""

    PARAMS = wakeup.Params(N=N)
    # Test-only bug plants: a function (ring, writer, reader) -> None.
    plant: Callable[[Ring, _core.RingWriter, _core.RingReader], None] | None = None

    def __init__(self) -> None:
        super().__init__()
        self.ring = Ring.create(CAPACITY, backend="python", spin_ns=0, yields=0)
        w, r = self.ring.writer(), self.ring.reader()
        if self.plant is not None:
            type(self).plant(self.ring, w, r)
        self.data_efd = self.ring.fds().data_efd
        self.model = wakeup.init_states(self.PARAMS)[0]
        self.reader = Stepper("reader", reader_body(r, self.data_efd))
        self.writer = Stepper("writer", writer_body(w))
        self.check("Init")

    def observe(self) -> wakeup.State:
        """The real state as the model's variables (both threads are parked)."""
        tail = header(self.ring, "tail")
        wpc = self.writer.at
        return wakeup.State(
            mem=wakeup.Mem(tail=tail, flag=header(self.ring, "reader_sleeping")),
            wbuf=(), rbuf=(),                       # sequentially consistent schedules
            sent=tail,                              # one byte per message
            head=header(self.ring, "head"),
            efd=efd_count(self.data_efd),
            wpc="idle" if wpc == FINISHED else wpc,
            rpc=self.reader.at,
        )

    def check(self, action: str) -> None:
        real = self.observe()
        assert real == self.model, (
            f"refinement: after {action} the real ring is\n  {real}\nbut the model is\n"
            f"  {self.model}")
        for name in wakeup.invariants(self.PARAMS, real):
            raise AssertionError(f"{name} violated after {action}: {real}")

    def advance(self, *actions: str) -> None:
        """Take *actions* in the model, each store flushed at once (SC)."""
        for action in actions:
            t = getattr(wakeup, action)(self.PARAMS, self.model)
            assert t is not None, f"refinement: {action} not enabled in the model {self.model}"
            for proc in ("w", "r"):
                while (f := wakeup.Flush(self.PARAMS, t, proc)) is not None:
                    t = f                           # RingWakeup!Flush
            self.model = t

    @precondition(lambda self: self.writer.at not in (FINISHED,))
    @rule()
    def writer_step(self) -> None:
        action = WRITER_STEP[self.writer.at]
        self.writer.step()
        self.advance(action)
        if action == "LoadFlag" and self.model.wpc == "xchg":
            self.advance("ClearFlag")              # the load and the clear are one step here
        self.check(action)

    @precondition(lambda self: self.reader.at != "block" or self.model.efd > 0)
    @rule()
    def reader_step(self) -> None:
        action = READER_STEP[self.reader.at]
        self.reader.step()
        self.advance(action)
        self.check(action)

    @precondition(lambda self: self.writer.at == FINISHED and self.reader.at == "block"
                  and self.model.efd == 0)
    @rule()
    def done(self) -> None:
        # Nothing can move: this must be the spec's terminal state, not a lost wake-up.
        assert wakeup.Done(self.PARAMS, self.model) is not None, f"stuck in {self.model}"
        self.check("Done")

    @invariant()
    def threads_healthy(self) -> None:
        for side in (self.reader, self.writer):
            assert side.error is None, side.error

    def teardown(self) -> None:
        self.reader.stop()
        self.writer.stop()
        self.ring.close()


def test_the_real_handshake_refines_the_spec() -> None:
    run_state_machine_as_test(WakeupMachine, settings=SETTINGS)


# --------------------------------------------------------------------------
# Planted bugs: the machine must catch each, and say which check did.


def _op_without_recheck(self, buf, off: int, n: int, flags: int, spin_ns: int) -> int:
    """The reader's _op with the re-check after the flag store left out."""
    q = self._q
    r = self._try(q, buf, off, n, flags)
    if r or not flags & _core.ARM:
        return r
    q[self._my_flag] = 1
    self._fence()
    return 0


def _plant_no_recheck(ring: Ring, w: _core.RingWriter, r: _core.RingReader) -> None:
    r._op = _op_without_recheck.__get__(r)


def _plant_no_flag_load(ring: Ring, w: _core.RingWriter, r: _core.RingReader) -> None:
    """The writer's _try with the flag load left out: store tail, fence, never signal."""
    cap = w._cap

    def try_without_flag(q, src, off, n, flags):
        head, tail = q[layout.word(layout.OFF_HEAD)], q[layout.word(layout.OFF_TAIL)]
        k = min(n, cap - (tail - head))
        if k == 0:
            return 0
        pyring._copy_in(w._mem, layout.DATA_OFF, cap, tail, src[off:off + k])
        q[layout.word(layout.OFF_TAIL)] = tail + k
        w._fence()
        return k << 1

    w._try = try_without_flag


# Finding is enough here: shrinking the counterexample only costs time.
BUG_SETTINGS = settings(SETTINGS, max_examples=1000, phases=[Phase.explicit, Phase.generate])


def _catch(machine: type[WakeupMachine]) -> str:
    with pytest.raises(AssertionError) as info:
        run_state_machine_as_test(machine, settings=BUG_SETTINGS)
    return str(info.value)


def test_machine_catches_a_reader_that_does_not_recheck() -> None:
    # Checked against the spec's NoRecheck variant, every step agrees with the
    # model: it is the safety invariant that catches the lost wake-up.
    class NoRecheck(WakeupMachine):
        PARAMS = wakeup.Params(N=N, Recheck=False)
        plant = _plant_no_recheck

    text = _catch(NoRecheck)
    assert text.startswith("NoLostWakeup violated"), text
    # Against the real spec, the skipped step itself is the divergence.
    class NoRecheckVsSpec(WakeupMachine):
        plant = _plant_no_recheck

    text = _catch(NoRecheckVsSpec)
    assert text.startswith("refinement: after ReaderFence"), text


def test_machine_catches_a_writer_that_skips_the_flag() -> None:
    class NoFlagLoad(WakeupMachine):
        plant = _plant_no_flag_load

    text = _catch(NoFlagLoad)
    assert text.startswith("refinement: after LoadFlag"), text
    assert "flag=1" in text and "wpc='idle'" in text
