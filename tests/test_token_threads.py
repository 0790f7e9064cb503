"""Token sharing among the threads of one process (TokenSharing.tla, thread level; issue 4).

Two parts.  First the Token's behaviour, seen through real sockets (a
socketpair() and a connection set up by the monitor): who owns a token, a
direct takeover from an idle owner, a waiter behind a BUSY owner (WANT in
the word, its bytes after the whole of the owner's call), FIFO among
waiters, non-blocking and timed attempts, close() waking a waiter, and
recv(MSG_WAITALL) by two threads.  Then real programs: N threads sendall
framed messages on one socket while M threads read whole frames at the
other end; every frame must arrive whole, in each sender's order, once.

How the tests know where a thread is without sleeping: the token word
(owner tid, WANT, BUSY) and the Token's queue of waiting thread ids are
the state itself, so a test waits (bounded) until they say what it needs --
"the sender is BUSY", "the second sender is queued" -- before it acts.
Nobody reads a socket until the test has seen that state, so a sender on
a full ring stays BUSY for as long as the test wants.  Every wait is
bounded by WAIT; only a hang reaches it.
"""

from __future__ import annotations

import errno
import random
import socket as stdsocket
import struct
import threading
import time
from collections.abc import Callable, Iterator

import pytest

import impl
from impl.ring import _cring

pytestmark = pytest.mark.timeout(300)

WAIT = 60.0          # bound on any one wait; only a hang reaches it
UNIT_RING = 16384    # the monitor connection's ring in the unit tests
FRAME_RING = 4096    # the ring of the real-program tests: smaller than the large frames

needs_c = pytest.mark.skipif(_cring is None, reason="the compiled ring module (cffi build of "
                             "impl/ring/ring.h) is missing: without it no socket checks tokens")


@pytest.fixture(autouse=True)
def _monitor(monitor):
    return monitor


# -- helpers -------------------------------------------------------------------------------
def send_token(sock):
    """The send token of ring socket *sock* (impl.token.Token)."""
    return sock._conn.tokens()[0]


def recv_token(sock):
    """The receive token of ring socket *sock*."""
    return sock._conn.tokens()[1]


def wait_until(pred: Callable[[], bool], what: str) -> None:
    """Wait (bounded by WAIT) until *pred()* holds: polls a state, never guesses a duration."""
    deadline = time.monotonic() + WAIT
    while not pred():
        if time.monotonic() > deadline:
            pytest.fail(f"still not so after {WAIT} s: {what}")
        time.sleep(0.0002)


class Op(threading.Thread):
    """fn(*args) in a thread of its own, started at once; its result or exception kept."""

    def __init__(self, fn: Callable, *args) -> None:
        super().__init__(daemon=True)
        self.fn, self.args = fn, args
        self.value = None
        self.error: BaseException | None = None
        self.done = threading.Event()
        self.start()

    def run(self) -> None:
        try:
            self.value = self.fn(*self.args)
        except BaseException as exc:  # noqa: BLE001 - handed to the test by outcome()
            self.error = exc
        finally:
            self.done.set()

    @property
    def tid(self) -> int:
        """The thread's Linux id: what a token word names."""
        return self.native_id

    def outcome(self):
        """Join (bounded) and return fn's value, or raise what it raised."""
        self.join(WAIT)
        assert not self.is_alive(), f"{self.fn} still running after {WAIT} s"
        if self.error is not None:
            raise self.error
        return self.value


def busy_in(tok, op: Op, what: str) -> None:
    """Wait until thread *op* owns *tok* and is BUSY with it."""
    wait_until(lambda: tok.word()[0] == op.tid and tok.word()[2], f"{what} owns and is BUSY")


def queued(tok, ops: list[Op], what: str) -> None:
    """Wait until exactly *ops* wait for *tok*, in this order, and WANT is up (Flag)."""
    tids = [op.tid for op in ops]
    wait_until(lambda: list(tok.queue) == tids and tok.word()[1], f"{what} queued with WANT")


def piece_to_busy_reader(a, b, piece: bytes) -> None:
    """Send *piece* on *a* once *b*'s ring is empty and a reader of *b* is BUSY waiting."""
    reader, rt = b._conn.reader, recv_token(b)
    wait_until(lambda: reader.available == 0 and rt.word()[2], "a reader waits on the empty ring")
    a.sendall(piece)


def read_exactly(sock, n: int) -> bytes:
    """Read *n* bytes from *sock* (timeout WAIT each call); fail on EOF."""
    buf = bytearray()
    while len(buf) < n:
        piece = sock.recv(min(n - len(buf), 1 << 16))
        assert piece, f"EOF after {len(buf)} of {n} bytes"
        buf += piece
    return bytes(buf)


class Holder:
    """A thread that keeps *tok* BUSY (Token.hold) until told to let go.

    For the tests where the owner must be BUSY with nothing in the ring:
    then a waiter's failure can only be the token's, not a full ring's.
    """

    def __init__(self, tok) -> None:
        self.tok = tok
        self.entered = threading.Event()
        self.go = threading.Event()
        self.op = Op(self._run)
        assert self.entered.wait(WAIT), "the holder never got the token"

    def _run(self) -> None:
        with self.tok.hold():
            self.entered.set()
            assert self.go.wait(WAIT)

    def release(self) -> None:
        self.go.set()
        self.op.outcome()


def _ring_pair(sndbuf: int) -> tuple[list, object, object]:
    """A monitor connection whose client -> server ring holds *sndbuf* bytes.

    Returns (sockets to close, client end, server end); both are made by
    the calling thread, so it owns all four tokens.
    """
    srv = impl.socket(stdsocket.AF_INET, stdsocket.SOCK_STREAM)
    socks = [srv]
    try:
        # The ring's size is the larger of the client's SO_SNDBUF and the
        # listener's SO_RCVBUF (0 asks for the default): set both.
        srv.setsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_RCVBUF, sndbuf)
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        cli = impl.socket(stdsocket.AF_INET, stdsocket.SOCK_STREAM)
        socks.append(cli)
        cli.setsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_SNDBUF, sndbuf)
        cli.connect(srv.getsockname())
        srv.settimeout(WAIT)
        conn, _ = srv.accept()
        socks.append(conn)
        conn.settimeout(None)
        assert cli.transport == conn.transport == "ring"
        assert cli._conn.tx.capacity == sndbuf
    except BaseException:
        for s in socks:
            s.close()
        raise
    return socks, cli, conn


@pytest.fixture(params=["socketpair", "monitor"])
def pair(request) -> Iterator[tuple]:
    """(sending end, receiving end) of a ring socket made by this thread; the receiver
    has timeout WAIT.  "socketpair": no monitor; "monitor": a TCP connection over rings."""
    if request.param == "socketpair":
        a, b = impl.socketpair()
        socks = [a, b]
    else:
        socks, a, b = _ring_pair(UNIT_RING)
    try:
        if send_token(a) is None:
            pytest.skip("this socket checks no tokens (the pure-Python ring backend)")
        b.settimeout(WAIT)
        yield a, b
    finally:
        for s in socks:
            s.close()


def capacity(sock) -> int:
    """The size of the ring *sock* writes."""
    return sock._conn.tx.capacity


# -- who owns a token ----------------------------------------------------------------------
@needs_c
def test_socketpair_creator_thread_owns_all_four_tokens():
    made = Op(impl.socketpair)
    a, b = made.outcome()
    try:
        for sock in (a, b):
            for tok in (send_token(sock), recv_token(sock)):
                # The creator's thread, idle: not BUSY, nobody waiting, and not this thread.
                assert tok.word() == (made.tid, False, False)
                assert tok.held and not tok.queue
        assert made.tid != threading.get_native_id()
    finally:
        a.close()
        b.close()


@needs_c
def test_connecting_and_accepting_threads_own_their_ends(monitor):
    srv = impl.create_server(("127.0.0.1", 0))
    srv.settimeout(WAIT)
    try:
        accepting = Op(srv.accept)
        connecting = Op(impl.create_connection, srv.getsockname(), WAIT)
        cli = connecting.outcome()
        conn, _ = accepting.outcome()
        with cli, conn:
            assert cli.transport == conn.transport == "ring"
            assert connecting.tid != accepting.tid
            for tok in (send_token(cli), recv_token(cli)):
                assert tok.word() == (connecting.tid, False, False)
            for tok in (send_token(conn), recv_token(conn)):
                assert tok.word() == (accepting.tid, False, False)
            # The monitor has no row for them yet: nobody asked.
            cid = cli._conn.cid
            assert [t for t in monitor.status()["tokens"] if t["id"] == cid] == []
    finally:
        srv.close()


# -- takeover from an idle owner ------------------------------------------------------------
@needs_c
def test_send_on_idle_socket_takes_the_token_directly(pair, monitor):
    a, b = pair
    st, rt = send_token(a), recv_token(a)
    me = threading.get_native_id()
    assert st.word() == (me, False, False)
    takes = monitor.status()["counters"]["takes"]
    other = Op(a.sendall, b"from another thread")
    other.outcome()
    # The word names the new owner, idle; the receive token did not move.
    assert st.word() == (other.tid, False, False)
    assert rt.word() == (me, False, False)
    assert st.held and not st.queue
    assert read_exactly(b, 19) == b"from another thread"
    # Back to this thread, again directly.
    a.sendall(b"and back")
    assert st.word() == (me, False, False)
    assert read_exactly(b, 8) == b"and back"
    # Within one process the monitor is never asked.
    assert monitor.status()["counters"]["takes"] == takes


@needs_c
def test_recv_on_idle_socket_takes_the_token_directly(pair):
    a, b = pair
    rt = recv_token(b)
    a.sendall(b"abc")
    other = Op(b.recv, 3, stdsocket.MSG_WAITALL)
    assert other.outcome() == b"abc"
    assert rt.word() == (other.tid, False, False)
    assert send_token(b).word() == (threading.get_native_id(), False, False)


# -- a BUSY owner: waiting, WANT, FIFO ------------------------------------------------------
@needs_c
def test_send_waits_for_a_busy_sender_on_a_full_ring(pair):
    a, b = pair
    st = send_token(a)
    first = random.Random(1).randbytes(3 * capacity(a) + 123)
    second = random.Random(2).randbytes(1000)
    owner = Op(a.sendall, first)
    busy_in(st, owner, "the first sender (blocked on the full ring)")
    waiter = Op(a.sendall, second)
    queued(st, [waiter], "the second sender")
    # TokenSharing!Flag: WANT is up and the owner is still the first sender, BUSY.
    assert st.word() == (owner.tid, True, True)
    assert not waiter.done.is_set()
    got = read_exactly(b, len(first) + len(second))
    owner.outcome()
    waiter.outcome()
    # The waiter's bytes come after the whole of the first call: none inside it.
    assert got == first + second
    assert st.word() == (waiter.tid, False, False) and not st.queue


@needs_c
def test_senders_queued_behind_a_busy_owner_go_in_fifo_order(pair):
    a, b = pair
    st = send_token(a)
    size = 2 * capacity(a) + 7      # every call waits for room: each one stays BUSY
    data = [random.Random(i).randbytes(size) for i in range(4)]
    owner = Op(a.sendall, data[0])
    busy_in(st, owner, "the first sender")
    waiters: list[Op] = []
    for i in (1, 2, 3):
        waiters.append(Op(a.sendall, data[i]))
        queued(st, waiters, f"sender {i}")
    got = read_exactly(b, 4 * size)
    for op in [owner, *waiters]:
        op.outcome()
    assert got == b"".join(data)


@needs_c
def test_readers_queued_behind_a_busy_reader_go_in_fifo_order(pair):
    a, b = pair
    rt = recv_token(b)
    n = 1000
    owner = Op(b.recv, n, stdsocket.MSG_WAITALL)
    busy_in(rt, owner, "the first reader (waiting on the empty ring)")
    waiters: list[Op] = []
    for i in (1, 2, 3):
        waiters.append(Op(b.recv, n, stdsocket.MSG_WAITALL))
        queued(rt, waiters, f"reader {i}")
    data = random.Random(3).randbytes(4 * n)
    # In pieces, each once the last is read and a reader is BUSY: a reader
    # that let go in the middle of its call would get a piece of another's.
    for off in range(0, len(data), 100):
        piece_to_busy_reader(a, b, data[off:off + 100])
    got = [op.outcome() for op in [owner, *waiters]]
    assert got == [data[i:i + n] for i in range(0, 4 * n, n)]


# -- non-blocking and timed attempts ---------------------------------------------------------
@needs_c
@pytest.mark.parametrize("busy", ["blocked on a full ring", "holding an empty ring"])
def test_nonblocking_send_while_another_thread_is_busy_raises_eagain(pair, busy):
    a, b = pair
    st = send_token(a)
    if busy == "blocked on a full ring":
        first = random.Random(4).randbytes(2 * capacity(a))
        owner = Op(a.sendall, first)
        busy_in(st, owner, "the sender")
        tid, finish = owner.tid, owner.outcome
    else:
        # The ring is empty: EAGAIN can only be the token's doing.
        first = b""
        holder = Holder(st)
        tid, finish = holder.op.tid, holder.release
    nonblocking = a.dup()
    nonblocking.setblocking(False)
    try:
        attempts = [lambda: a.send(b"x", stdsocket.MSG_DONTWAIT),
                    lambda: a.sendall(b"x", stdsocket.MSG_DONTWAIT),
                    lambda: nonblocking.send(b"x"),
                    lambda: nonblocking.sendall(b"x")]
        for attempt in attempts:
            with pytest.raises(BlockingIOError) as info:
                attempt()
            assert info.value.errno == errno.EAGAIN
            assert not st.queue, "a non-blocking attempt stayed in the queue"
            assert st.word()[0] == tid and st.word()[2], "the owner lost the token"
    finally:
        nonblocking.close()
    got = read_exactly(b, len(first)) if first else b""
    finish()
    # The token still works, and not one byte of the attempts got in.
    a.sendall(b"end")
    assert got + read_exactly(b, 3) == first + b"end"


@needs_c
def test_nonblocking_recv_while_another_thread_is_busy_raises_eagain(pair):
    a, b = pair
    rt = recv_token(b)
    owner = Op(b.recv, 10, stdsocket.MSG_WAITALL)
    busy_in(rt, owner, "the reader")
    a.sendall(b"0123")          # data waits, but the token is the reader's
    nonblocking = b.dup()
    nonblocking.setblocking(False)
    try:
        with pytest.raises(BlockingIOError):
            nonblocking.recv(10)
        with pytest.raises(BlockingIOError):
            nonblocking.recv_into(bytearray(10))
        assert not rt.queue
    finally:
        nonblocking.close()
    a.sendall(b"456789")
    assert owner.outcome() == b"0123456789"


@needs_c
def test_timed_sendall_behind_a_busy_sender_times_out_and_leaves_the_queue(pair):
    a, b = pair
    st = send_token(a)
    first = random.Random(5).randbytes(2 * capacity(a))
    owner = Op(a.sendall, first)
    busy_in(st, owner, "the sender")
    timed = a.dup()
    timed.settimeout(0.2)
    try:
        with pytest.raises(TimeoutError):
            timed.sendall(b"never")
        assert not st.queue
        assert st.word()[0] == owner.tid
    finally:
        timed.close()
    got = read_exactly(b, len(first))
    owner.outcome()
    # The token still works after: another thread takes it, then this one.
    later = Op(a.sendall, b"later")
    later.outcome()
    assert st.word() == (later.tid, False, False)
    a.sendall(b"!")
    assert got + read_exactly(b, 6) == first + b"later!"


@needs_c
def test_timed_send_behind_a_busy_sender_reports_none_of_its_bytes(pair):
    """A send() that timed out in the queue sent nothing: the owner's progress is not its.

    The waiter times out while the owner, still BUSY, writes more; a
    send() that counted the ring's tail would report the owner's bytes as
    its own.
    """
    a, b = pair
    st = send_token(a)
    first = random.Random(6).randbytes(3 * capacity(a))
    owner = Op(a.sendall, first)
    busy_in(st, owner, "the sender")
    timed = a.dup()
    # Long enough that a stalled main thread still sees the waiter queued and
    # the owner write more before it gives up; the test waits this long.
    timed.settimeout(5.0)
    try:
        waiter = Op(timed.send, b"mine")
        queued(st, [waiter], "the timed sender")
        tail = a._conn.writer.tail
        got = read_exactly(b, 1000)              # room: the owner writes more
        wait_until(lambda: a._conn.writer.tail > tail, "the owner wrote more")
        assert st.word()[0] == owner.tid and st.word()[2]
        waiter.join(WAIT)
        assert isinstance(waiter.error, TimeoutError), (
            f"a send() that never had the token returned {waiter.value!r} "
            f"(raised {waiter.error!r}), not TimeoutError")
    finally:
        timed.close()
    got += read_exactly(b, len(first) - 1000)
    owner.outcome()
    a.sendall(b"end")
    assert got + read_exactly(b, 3) == first + b"end"


@needs_c
def test_timed_recv_behind_a_busy_reader_times_out_and_leaves_the_queue(pair):
    a, b = pair
    rt = recv_token(b)
    owner = Op(b.recv, 5, stdsocket.MSG_WAITALL)
    busy_in(rt, owner, "the reader")
    timed = b.dup()
    timed.settimeout(0.2)
    try:
        with pytest.raises(TimeoutError):
            timed.recv(5)
        assert not rt.queue
    finally:
        timed.close()
    a.sendall(b"abcde")
    assert owner.outcome() == b"abcde"
    a.sendall(b"fgh")
    assert b.recv(3, stdsocket.MSG_WAITALL) == b"fgh"
    assert rt.word() == (threading.get_native_id(), False, False)


# -- close ---------------------------------------------------------------------------------
@needs_c
@pytest.mark.parametrize("direction", ["send", "recv"])
def test_close_wakes_a_waiter_with_ebadf(pair, direction):
    a, b = pair
    tok = send_token(a) if direction == "send" else recv_token(a)
    holder = Holder(tok)           # BUSY, but in no ring call: close() unmaps nothing in use
    if direction == "send":
        waiter = Op(a.sendall, b"never sent")
    else:
        waiter = Op(a.recv, 10)
    queued(tok, [waiter], f"a {direction}er")
    a.close()
    with pytest.raises(OSError) as info:
        waiter.outcome()
    assert info.value.errno == errno.EBADF
    holder.release()
    assert b.recv(100) == b""      # EOF, and not one byte of the waiter's


# -- recv(MSG_WAITALL) by two threads --------------------------------------------------------
def _frame(seq: int, size: int) -> bytes:
    return struct.pack("<I", seq) + random.Random(seq).randbytes(size - 4)


@needs_c
def test_waitall_readers_never_split_a_frame(pair):
    a, b = pair
    size, count, piece = 8192, 60, 1000
    seen: list[list[int]] = [[], []]
    errors: list[str] = []

    def reader(mine: list[int]) -> None:
        while True:
            frame = b.recv(size, stdsocket.MSG_WAITALL)
            if not frame:
                return
            seq = struct.unpack_from("<I", frame)[0]
            if len(frame) != size or seq >= count or frame != _frame(seq, size):
                errors.append(f"frame {seq}: {len(frame)} bytes, not the frame sent")
                return
            mine.append(seq)

    readers = [Op(reader, seen[0]), Op(reader, seen[1])]
    data = b"".join(_frame(i, size) for i in range(count))
    # Each piece once the last is read: a frame's reader waits mid-frame
    # while the other reader waits for the token.
    for off in range(0, len(data), piece):
        piece_to_busy_reader(a, b, data[off:off + piece])
    a.shutdown(stdsocket.SHUT_WR)
    for op in readers:
        op.outcome()
    assert errors == []
    for mine in seen:
        assert mine == sorted(mine)
    assert sorted(seen[0] + seen[1]) == list(range(count))


# -- real programs: N senders, M readers, one socket ------------------------------------------
MAGIC = 0x5D70CE17
HEADER = struct.Struct("<IIII")    # magic, sender, seq, crc of the body


def make_frame(sender: int, seq: int, size: int) -> bytes:
    """Frame *seq* of *sender*: a header and a body only it has (any splice shows)."""
    body = random.Random(sender << 20 | seq).randbytes(size - HEADER.size)
    return HEADER.pack(MAGIC, sender, seq, len(body) ^ sender << 16) + body


def check_frame(frame: bytes, size: int, senders: int, count: int) -> tuple[int, int]:
    """(sender, seq) of a received frame; AssertionError unless it is one sent, whole."""
    assert len(frame) == size, f"a frame of {len(frame)} bytes, not {size}"
    magic, sender, seq, _ = HEADER.unpack_from(frame)
    assert magic == MAGIC and sender < senders and seq < count, "not a frame's start"
    assert frame == make_frame(sender, seq, size), f"frame {sender}.{seq} is not whole"
    return sender, seq


def frame_readers(sock, m: int, size: int, senders: int, count: int) -> list[Op]:
    """M threads that recv(size, MSG_WAITALL) whole frames from *sock* until EOF.

    Give them a blocking socket: a lost wake-up then hangs a reader, and the
    bounded join fails, where a timeout would hide it as a slow pass.
    """
    def read() -> list[tuple[int, int]]:
        got = []
        while True:
            frame = sock.recv(size, stdsocket.MSG_WAITALL)
            if not frame:
                return got
            got.append(check_frame(frame, size, senders, count))
    return [Op(read) for _ in range(m)]


def frame_senders(sock, ids: range, size: int, count: int) -> list[Op]:
    """One thread per sender id, each doing sendall of its *count* frames in order."""
    def send(sender: int) -> None:
        for seq in range(count):
            sock.sendall(make_frame(sender, seq, size))
    return [Op(send, i) for i in ids]


def check_delivery(per_reader: list[list[tuple[int, int]]], senders: int, count: int) -> None:
    """Per-sender order at every reader; every frame exactly once over all readers."""
    for got in per_reader:
        for s in range(senders):
            seqs = [q for (sender, q) in got if sender == s]
            assert seqs == sorted(set(seqs)), f"sender {s}'s frames out of order at a reader"
    everything = sorted(f for got in per_reader for f in got)
    assert everything == [(s, q) for s in range(senders) for q in range(count)]


# size -> frames per sender: the large ones are twice the ring, so every sendall waits
SIZES = {"small": (200, 300), "large": (2 * FRAME_RING + 100, 30)}


@needs_c
@pytest.mark.parametrize("size", sorted(SIZES))
@pytest.mark.parametrize("n,m", [(1, 1), (4, 4), (8, 8), (8, 1), (1, 8)])
def test_threads_send_and_read_whole_frames(n, m, size):
    frame, count = SIZES[size]
    socks, a, b = _ring_pair(FRAME_RING)
    try:
        if send_token(a) is None:
            pytest.skip("this socket checks no tokens (the pure-Python ring backend)")
        readers = frame_readers(b, m, frame, n, count)
        senders = frame_senders(a, range(n), frame, count)
        for op in senders:
            op.outcome()
        a.shutdown(stdsocket.SHUT_WR)      # EOF for the readers once all is read
        check_delivery([op.outcome() for op in readers], n, count)
    finally:
        for s in socks:
            s.close()


@needs_c
def test_threads_share_a_socketpair_with_whole_frames():
    # No monitor: a socketpair's waiters poll instead of being woken across processes.
    frame, count, n, m = 3000, 100, 4, 4
    a, b = impl.socketpair()
    try:
        readers = frame_readers(b, m, frame, n, count)
        for op in frame_senders(a, range(n), frame, count):
            op.outcome()
        a.shutdown(stdsocket.SHUT_WR)
        check_delivery([op.outcome() for op in readers], n, count)
    finally:
        a.close()
        b.close()
