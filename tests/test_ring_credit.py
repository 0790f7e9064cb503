"""The two-copy ring with batched credits over the in-process channel.

A seeded random scheduler runs the sender's and receiver's actions in any
order the protocol allows and checks, after every step, the received stream,
the spec's safety invariants (spec/tla/RingCredit.tla) read through the
refinement mapping, and that each action is enabled exactly when the spec
says.  The other tests pin down single behaviours: the credit request that
breaks the credit deadlock, wrap-around writes, batching, bad input.
"""

from __future__ import annotations

import errno
import random
import socket
import struct

import pytest

from impl.ring import RingCorrupt
from impl.ring.credit import (
    CREDIT_WORD,
    IMM_POS_MASK,
    IMM_REQUEST,
    MAX_BATCH,
    CreditReceiver,
    CreditSender,
    credit_messages,
    local_pair,
    wire_messages,
)
from impl.ring.remote import (
    FLAG_IMM,
    FRAME_HEADER,
    MAX_FRAME_DATA,
    FrameError,
    LocalChannel,
    SocketChannel,
)

ACTIONS = ("write", "ask_credit", "get_credit", "deliver", "recv", "return_credit")


class Schedule:
    """A sender/receiver pair driven one spec action at a time.

    Keeps the application side (the stream sent so far, what was received,
    the message waiting to be written) and checks the implementation's
    state against it after each step.
    """

    def __init__(self, capacity: int, batch: int, max_message: int, total: int,
                 seed: int, credit_request: bool = True) -> None:
        self.rng = random.Random(seed)
        self.capacity, self.batch, self.total = capacity, batch, total
        self.credit_request = credit_request
        self.tx, self.rx = local_pair(capacity, batch, max_message=max_message,
                                      credit_request=credit_request)
        self.stream = self.rng.randbytes(total)
        self.sent = 0          # bytes the sender has written (== tx.tail)
        self.got = bytearray()
        self.msg: bytes | None = None

    # -- the spec's enabling conditions, from the mapped state -------------

    def expected_enabled(self, action: str) -> bool:
        tx, rx = self.tx, self.rx
        free = self.capacity - (tx.tail - tx.shead)
        if action == "write":
            return self.msg is not None and len(self.msg) <= free
        if action == "ask_credit":
            return (self.credit_request and self.msg is not None
                    and len(self.msg) > free and not tx.asked)
        if action == "get_credit":
            return bool(tx.credit_target.pending())
        if action == "deliver":
            return bool(tx.channel.pending())
        if action == "recv":
            return rx.rtail > rx.head
        if action == "return_credit":
            freed = rx.head - rx.credited
            return freed > 0 and (freed >= self.batch or rx.creq)
        raise AssertionError(action)

    def enabled(self) -> list[str]:
        return [a for a in ACTIONS if self.expected_enabled(a)]

    def done(self) -> bool:
        return len(self.got) == self.total and not self.rx.credit_due

    # -- steps --------------------------------------------------------------

    def new_message(self) -> None:
        """The app's Want(n): the next message, if the stream has bytes left."""
        left = self.total - self.sent
        if self.msg is None and left:
            n = self.rng.randint(1, min(self.tx.max_message, left))
            self.msg = self.stream[self.sent:self.sent + n]

    def run(self, action: str) -> bool:
        """Run one action; assert it did something iff the spec enables it."""
        expected = self.expected_enabled(action)
        before = self.snapshot()
        if action == "write":
            did = self.msg is not None and self.tx.write(self.msg) > 0
            if did:
                self.sent += len(self.msg)
                self.msg = None
        elif action == "ask_credit":
            did = self.tx.ask_credit(len(self.msg)) if self.msg is not None else False
        elif action == "get_credit":
            did = self.tx.get_credit()
        elif action == "deliver":
            did = self.rx.deliver()
        elif action == "recv":
            buf = bytearray(self.rng.randint(1, self.capacity))
            n = self.rx.read_into(buf)
            self.got += buf[:n]
            did = n > 0
        else:
            did = self.rx.return_credit()
        assert did == expected, f"{action} ran={did}, spec enables it: {expected}"
        if not did:
            assert self.snapshot() == before, f"disabled {action} changed the state"
        self.check()
        return did

    def snapshot(self) -> tuple:
        tx, rx = self.tx, self.rx
        return (tx.tail, tx.shead, tx.asked, tx.local_copy(), tx.channel.pending(),
                rx.head, rx.rtail, rx.credited, rx.creq, rx.ring_copy(),
                tx.credit_target.pending(), bytes(self.got))

    # -- invariants ---------------------------------------------------------

    def check(self) -> None:
        tx, rx, cap, s = self.tx, self.rx, self.capacity, self.stream
        assert tx.tail == self.sent
        # DeliveredPrefix
        assert rx.head == len(self.got)
        assert self.got == s[:len(self.got)]
        # Bounds, SenderViewSafe
        assert tx.shead <= rx.head <= rx.rtail <= tx.tail
        assert tx.tail - rx.head <= cap
        # CreditsAccounted
        cwire = credit_messages(tx.credit_target.pending())
        assert tx.shead <= rx.credited <= rx.head
        assert all(c <= rx.credited for c in cwire)
        assert all(a < b for a, b in zip(cwire, cwire[1:], strict=False))
        # NoOverwrite: the unread bytes in the receiver's copy are the stream's.
        ring = rx.ring_copy()
        assert all(ring[p % cap] == s[p] for p in range(rx.head, rx.rtail))
        # The sender's copy holds the last (up to) C bytes it wrote.
        local = tx.local_copy()
        assert all(local[p % cap] == s[p] for p in range(max(0, tx.tail - cap), tx.tail))
        # wire: data messages continue the stream from rtail to tail, in order.
        end = rx.rtail
        for m in wire_messages(tx.channel.pending(), rx.rtail):
            if m["kind"] == "data":
                assert m["pos"] == end
                assert m["vals"] == s[end:end + len(m["vals"])]
                end += len(m["vals"])
        assert end == tx.tail

    def play(self, max_steps: int) -> bool:
        """Run random enabled actions until done; False if all got stuck."""
        for _ in range(max_steps):
            self.new_message()
            if self.done():
                return True
            actions = self.enabled()
            if not actions:
                return False
            # Now and then, try a disabled action: it must do nothing.
            disabled = [a for a in ACTIONS if a not in actions]
            if disabled and self.rng.random() < 0.1:
                self.run(self.rng.choice(disabled))
            self.run(self.rng.choice(actions))
        raise AssertionError(f"not done after {max_steps} steps")


# C, B, MaxLen: the spec's configs, batches above, at and below the ring,
# and a capacity that is not a power of two.
CONFIGS = [
    (4, 5, 3), (6, 7, 4), (7, 2, 7), (16, 1, 5), (10, 100, 10), (64, 16, 64), (33, 8, 20),
]


@pytest.mark.parametrize("capacity,batch,max_message", CONFIGS)
@pytest.mark.parametrize("seed", range(4))
def test_random_schedule_delivers_the_stream(capacity, batch, max_message, seed):
    sched = Schedule(capacity, batch, max_message, total=1500, seed=seed)
    assert sched.play(max_steps=200_000), "no action enabled before the stream was through"
    assert bytes(sched.got) == sched.stream


def test_every_action_runs_in_random_schedules():
    """The schedules above exercise each action, requests included."""
    counts = dict.fromkeys(ACTIONS, 0)
    sched = Schedule(6, 7, 4, total=600, seed=1)
    original = sched.run

    def counting(action):
        did = original(action)
        counts[action] += did
        return did

    sched.run = counting
    assert sched.play(max_steps=50_000)
    assert all(counts.values()), counts


@pytest.mark.parametrize("seed", range(5))
def test_without_credit_request_a_large_batch_deadlocks(seed):
    # B > C: freed space never reaches a batch, so without a request no
    # credit ever comes back and the sender stops after C bytes.
    sched = Schedule(8, 9, 5, total=200, seed=seed, credit_request=False)
    assert not sched.play(max_steps=10_000)
    assert len(sched.got) == sched.rx.head <= 8
    assert sched.msg is not None and sched.tx.write(sched.msg) == 0
    assert not sched.tx.ask_credit(len(sched.msg))


def test_credit_request_breaks_the_deadlock_of_mcringcreditbad():
    """The counterexample of MCRingCreditBad.cfg (C=4, B=5, MaxLen=3), then the fix."""
    for credit_request in (False, True):
        tx, rx = local_pair(4, 5, max_message=3, credit_request=credit_request)
        assert tx.write(b"abc") == 3
        assert rx.deliver()
        buf = bytearray(4)
        assert rx.read_into(buf) == 3 and buf[:3] == b"abc"
        assert not rx.return_credit()       # 3 freed < B
        assert tx.write(b"def") == 0        # free = 1
        assert tx.want == 3
        if not credit_request:
            # Nothing is enabled: the sender and the receiver wait for ever.
            assert not tx.ask_credit() and not tx.get_credit()
            assert not rx.deliver() and not rx.return_credit()
            continue
        assert tx.ask_credit() and tx.asked
        assert not tx.ask_credit()          # one request at a time
        assert rx.deliver() and rx.creq
        assert rx.return_credit() and rx.credited == 3 and not rx.creq
        assert tx.get_credit() and tx.shead == 3 and not tx.asked
        assert tx.write(b"def") == 3


def _pump(rx: CreditReceiver, bufsize: int, got: bytearray):
    """A progress function: the receiving app reads what it can, never blocking."""
    buf = bytearray(bufsize)

    def progress():
        try:
            n = rx.recv_into(buf, timeout=0)
        except BlockingIOError:
            return
        got.extend(buf[:n])

    return progress


@pytest.mark.parametrize("capacity,batch", [(1000, 5000), (1000, 1), (777, 700)])
def test_send_all_streams_in_process(capacity, batch):
    tx, rx = local_pair(capacity, batch, max_message=capacity // 3)
    got = bytearray()
    tx.progress = _pump(rx, 300, got)
    data = random.Random(capacity + batch).randbytes(200_000)
    tx.send_all(data, timeout=60)
    while len(got) < len(data):
        before = len(got)
        tx.progress()
        assert len(got) > before, "data written but not readable"
    assert bytes(got) == data


def test_send_all_stalls_without_credit_request():
    # B > C and no request: the receiver drains the ring and never returns
    # credit; the blocking send must give up at its timeout, not hang.
    tx, rx = local_pair(100, 500, max_message=40, credit_request=False)
    got = bytearray()
    tx.progress = _pump(rx, 64, got)
    data = random.Random(5).randbytes(1000)
    with pytest.raises(TimeoutError):
        tx.send_all(data, timeout=0.3)
    assert 0 < tx.tail <= 100
    for _ in range(4):                  # let the reader take what was written
        tx.progress()
    assert bytes(got) == data[:tx.tail] and rx.credits_returned == 0
    assert tx.want == 40 and not tx.asked


def test_send_all_nonblocking_raises_blockingioerror():
    tx, _rx = local_pair(10, 1)
    tx.send_all(b"x" * 10, timeout=0)
    with pytest.raises(BlockingIOError):
        tx.send_all(b"y", timeout=0)


def test_recv_into_times_out_when_nothing_comes():
    _tx, rx = local_pair(10, 1)
    with pytest.raises(TimeoutError):
        rx.recv_into(bytearray(4), timeout=0.05)
    with pytest.raises(BlockingIOError):
        rx.recv_into(bytearray(4), timeout=0)
    assert rx.recv_into(bytearray(0)) == 0


def test_batching_returns_about_one_credit_per_batch():
    capacity, batch, total = 4096, 1024, 1 << 20
    tx, rx = local_pair(capacity, batch, max_message=512)
    got = bytearray()
    tx.progress = _pump(rx, 100, got)
    data = random.Random(7).randbytes(total)
    tx.send_all(data, timeout=120)
    while len(got) < total:
        tx.progress()
    assert bytes(got) == data
    # One credit per >= B bytes read: about total / B, far below one per read.
    credits = tx.credit_target.writes_issued
    assert credits == rx.credits_returned
    assert total // (batch + 100) <= credits <= total // batch
    assert credits < total // 100 // 8


def test_sender_asks_at_once_without_a_batch_hint():
    """Without knowing B the sender asks whenever it waits: correct, but chatty."""
    data_channel = LocalChannel(4096)
    tx = CreditSender(4096, data_channel, max_message=512)
    rx = CreditReceiver(4096, data_channel, tx.credit_target, 1024)
    got = bytearray()
    tx.progress = _pump(rx, 100, got)
    tx.send_all(random.Random(3).randbytes(1 << 18), timeout=60)
    assert rx.credits_returned > (1 << 18) // 1024 * 2


def test_wrapping_write_is_two_remote_writes():
    tx, rx = local_pair(10, 1)
    assert tx.write(b"0123456") == 7
    assert rx.deliver() and rx.read_into(bytearray(7)) == 7
    assert rx.return_credit() and tx.get_credit() and tx.shead == 7
    assert tx.write(b"abcdef") == 6
    # Slots 7..9 then 0..2; only the last write carries the new tail, 13.
    assert tx.channel.pending() == [(7, b"abc", None), (0, b"def", 13)]
    assert wire_messages(tx.channel.pending(), rx.rtail) == [
        {"kind": "data", "pos": 7, "vals": b"abcdef"}]
    assert tx.local_copy() == b"def3456abc"
    # The first half landing alone is not a message: rtail moves only with the imm.
    assert tx.channel.deliver_one()
    assert rx.rtail == 7 and rx.ring_copy()[7:] == b"abc"
    assert rx.deliver() and rx.rtail == 13
    out = bytearray(10)
    assert rx.read_into(out) == 6 and out[:6] == b"abcdef"


def test_message_ending_at_the_ring_end_is_one_write():
    tx, rx = local_pair(8, 1)
    assert tx.write(b"abc") == 3
    assert rx.deliver() and rx.read_into(bytearray(3)) == 3
    assert rx.return_credit() and tx.get_credit()
    assert tx.write(b"defgh") == 5
    assert tx.channel.pending() == [(3, b"defgh", 8)]


def test_write_is_all_or_nothing():
    tx, _rx = local_pair(10, 1)
    assert tx.write(b"x" * 8) == 8
    before = (tx.tail, tx.local_copy(), tx.channel.pending())
    assert tx.write(b"y" * 3) == 0
    assert (tx.tail, tx.local_copy(), tx.channel.pending()) == before
    assert tx.want == 3
    assert tx.write(b"yy") == 2 and tx.want == 0


def test_request_is_answered_even_below_the_batch():
    tx, rx = local_pair(10, 100)
    tx.write(b"x" * 9)
    rx.deliver()
    rx.read_into(bytearray(2))
    assert not rx.credit_due
    assert tx.write(b"yy") == 0 and tx.ask_credit()
    assert rx.deliver() and rx.creq and rx.credit_due
    assert rx.return_credit()
    assert credit_messages(tx.credit_target.pending()) == [2]
    assert tx.get_credit() and tx.free == 3


def test_request_before_anything_is_read_waits_for_a_read():
    tx, rx = local_pair(4, 100)
    tx.write(b"abcd")
    assert tx.write(b"e") == 0 and tx.ask_credit()
    assert rx.deliver() and rx.deliver() and rx.creq
    assert not rx.return_credit()           # nothing freed yet: head == credited
    rx.read_into(bytearray(1))
    assert rx.return_credit() and credit_messages(tx.credit_target.pending()) == [1]


def test_positions_survive_the_31_bit_imm_wrap():
    # Start near 2**31 so that the imm's position bits wrap during the test.
    tx, rx = local_pair(16, 1)
    start = IMM_POS_MASK - 20
    tx._tail = tx._shead = start
    rx._rtail = rx._head = rx._credited = start
    sched_bytes = bytearray()
    for i in range(20):
        msg = bytes([i]) * 5
        assert tx.write(msg) == 5
        assert rx.deliver()
        buf = bytearray(5)
        assert rx.read_into(buf) == 5
        sched_bytes += buf
        assert rx.return_credit() and tx.get_credit()
        assert rx.rtail == tx.tail == tx.shead == start + 5 * (i + 1)
    assert tx.tail > IMM_POS_MASK + 1
    assert bytes(sched_bytes) == b"".join(bytes([i]) * 5 for i in range(20))


# -- validation -------------------------------------------------------------

@pytest.mark.parametrize("capacity", [0, -1, (1 << 30) + 1, True, 4.0])
def test_bad_capacity(capacity):
    with pytest.raises(ValueError, match="capacity"):
        CreditSender(capacity, LocalChannel(8))


@pytest.mark.parametrize("batch", [0, -3, MAX_BATCH + 1, 2.5])
def test_bad_batch(batch):
    chan = LocalChannel(8)
    with pytest.raises(ValueError, match="batch"):
        CreditReceiver(8, chan, LocalChannel(8), batch)


def test_batch_above_capacity_is_allowed():
    _tx, rx = local_pair(8, 1000)
    assert rx.batch == 1000


@pytest.mark.parametrize("max_message", [0, 9])
def test_bad_max_message(max_message):
    with pytest.raises(ValueError, match="max_message"):
        CreditSender(8, LocalChannel(8), max_message=max_message)


def test_bad_message_size():
    tx, _rx = local_pair(8, 1, max_message=4)
    for data in (b"", b"12345"):
        with pytest.raises(ValueError, match="message size"):
            tx.write(data)


def test_region_smaller_than_the_ring():
    with pytest.raises(ValueError, match="fewer than the capacity"):
        CreditSender(16, LocalChannel(8))
    with pytest.raises(ValueError, match="fewer than the capacity"):
        CreditReceiver(16, LocalChannel(8), LocalChannel(8), 1)


@pytest.mark.parametrize("offset,data,imm", [
    (-1, b"x", None), (7, b"xy", None), (9, b"", None), (0, b"", -1), (0, b"", 1 << 32)])
def test_local_channel_rejects_bad_writes(offset, data, imm):
    chan = LocalChannel(8)
    with pytest.raises(ValueError):
        chan.write(offset, data, imm)
    assert chan.pending() == []


# -- inconsistent immediates and credits --------------------------------------

def _receiver_at(rtail_bytes: int, capacity: int = 8):
    tx, rx = local_pair(capacity, 1)
    if rtail_bytes:
        tx.write(b"x" * rtail_bytes)
        rx.deliver()
    return tx, rx


@pytest.mark.parametrize("imm,fault", [
    (5, "tail did not advance"),
    (3, "tail went backwards"),
    (5 + 9, r"tail beyond head \+ capacity"),
    (IMM_REQUEST | 4, "credit request names another tail"),
])
def test_inconsistent_data_imm_is_corrupt(imm, fault):
    tx, rx = _receiver_at(5)
    tx.channel.write(0, b"", imm)
    before = (rx.head, rx.rtail, rx.creq)
    with pytest.raises(RingCorrupt, match=fault) as info:
        rx.deliver()
    assert info.value.errno == errno.EBADMSG
    assert (rx.head, rx.rtail, rx.creq) == before


@pytest.mark.parametrize("head,imm,fault", [
    (6, 6, "credit beyond tail"),
    (0, 0, "credit did not advance"),
    (2, 2 | IMM_REQUEST, "credit with request bit"),
    (1, 2, "credit word behind its imm"),
])
def test_inconsistent_credit_is_corrupt(head, imm, fault):
    tx, _rx = _receiver_at(5)
    tx.credit_target.write(0, CREDIT_WORD.pack(head), imm)
    with pytest.raises(RingCorrupt, match=fault):
        tx.get_credit()


def test_credit_going_backwards_is_corrupt():
    tx, rx = _receiver_at(5)
    rx.read_into(bytearray(4))
    rx.return_credit()
    assert tx.get_credit() and tx.shead == 4
    tx.credit_target.write(0, CREDIT_WORD.pack(4), 2)
    with pytest.raises(RingCorrupt, match="credit went backwards"):
        tx.get_credit()


# -- the socket channel's frames ------------------------------------------------

def _frame(length, offset, flags, imm, data=b""):
    return FRAME_HEADER.pack(length, offset, flags, imm) + data


@pytest.fixture
def socket_target():
    a, b = socket.socketpair()
    chan = SocketChannel(b, local_size=16, remote_size=16)
    yield a, chan
    a.close()
    chan.close()


@pytest.mark.parametrize("raw,fault", [
    (_frame(1, 0, 0x02, 0, b"x"), "unknown flag"),
    (_frame(1, 0, 0, 7, b"x"), "without FLAG_IMM"),
    (_frame(MAX_FRAME_DATA + 1, 0, 0, 0), "exceeds"),
    (_frame(10, 10, 0, 0, b"y" * 10), "outside"),
    (_frame(1, (1 << 64) - 1, 0, 0, b"z"), "outside"),
    (_frame(17, 0, FLAG_IMM, 1, b"w" * 17), "outside"),
])
def test_malformed_frame_is_rejected_before_writing(socket_target, raw, fault):
    peer, chan = socket_target
    peer.sendall(raw)
    with pytest.raises(FrameError, match=fault) as info:
        chan.deliver_one()
    assert isinstance(info.value, RingCorrupt) and info.value.errno == errno.EBADMSG
    assert bytes(chan.region) == bytes(16)
    assert chan.poll_completion() is None


@pytest.mark.parametrize("cut", [3, FRAME_HEADER.size + 2])
def test_peer_closing_inside_a_frame_is_an_error(socket_target, cut):
    peer, chan = socket_target
    peer.sendall(_frame(4, 0, FLAG_IMM, 9, b"abcd")[:cut])
    assert not chan.deliver_one()       # incomplete: nothing to land yet
    peer.close()
    with pytest.raises(FrameError, match="peer closed inside a frame"):
        chan.deliver_one()
    assert bytes(chan.region) == bytes(16)


def test_frames_land_in_order_even_when_split(socket_target):
    peer, chan = socket_target
    raw = _frame(2, 14, 0, 0, b"ab") + _frame(3, 0, FLAG_IMM, 42, b"cde") + _frame(
        0, 0, FLAG_IMM, IMM_REQUEST, b"")
    for i in range(len(raw)):           # one byte at a time
        peer.sendall(raw[i:i + 1])
        if i < FRAME_HEADER.size + 1:
            assert not chan.deliver_one()
    assert chan.deliver_one() and chan.poll_completion() is None
    assert chan.deliver_one() and chan.poll_completion() == 42
    assert chan.deliver_one() and chan.poll_completion() == IMM_REQUEST
    assert not chan.deliver_one()
    assert bytes(chan.region) == b"cde" + bytes(11) + b"ab"
    peer.close()
    assert not chan.deliver_one() and chan.eof


def test_socket_channel_writes_frames_the_peer_can_parse():
    a, b = socket.socketpair()
    try:
        writer = SocketChannel(a, local_size=8, remote_size=16)
        target = SocketChannel(b, local_size=16, remote_size=8)
        writer.write(3, b"hello", 5)
        with pytest.raises(ValueError):
            writer.write(12, b"hello")
        assert writer.flush()
        assert target.deliver_one()
        assert target.poll_completion() == 5
        assert bytes(target.region[3:8]) == b"hello"
    finally:
        a.close()
        b.close()


def test_frame_header_layout():
    # Length-prefixed: u32 length, u64 offset, u8 flags, u32 imm, little-endian.
    assert FRAME_HEADER.size == 17
    assert FRAME_HEADER.pack(1, 2, 3, 4) == struct.pack("<IQBI", 1, 2, 3, 4)


def test_peer_closing_with_our_frames_unread_is_end_of_stream(socket_target):
    # A sender that closes before taking its last credits makes the kernel
    # report ECONNRESET; its frames sent before closing still land first.
    peer, chan = socket_target
    chan.write(0, b"credit", 1)
    peer.sendall(_frame(2, 0, FLAG_IMM, 3, b"ok"))
    peer.close()
    assert chan.deliver_one() and chan.poll_completion() == 3
    assert not chan.deliver_one()
    assert chan.eof and chan.reset_by_peer
