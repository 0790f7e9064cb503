"""The two-copy ring between two processes over the socket channel.

The parent sends a pseudo-random stream in messages of random size; a forked
child receives it with reads of random size and reports a SHA-256 of what it
got.  Batches below and above the capacity: above it, every credit comes
back on request, so a lost or ignored request hangs the stream (bounded here
by the calls' timeouts).  A receiver that goes away is a broken pipe.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import random
import socket

import pytest

from impl.ring.credit import socket_receiver, socket_sender

# Bound every blocking call and the child; generous for a shared 2-core box.
CALL_TIMEOUT = 120
JOIN_TIMEOUT = 600

MiB = 1 << 20


def _receive(sock: socket.socket, capacity: int, batch: int, total: int, seed: int,
             report, parents: list) -> None:
    """Child: read the stream with random read sizes; report (count, digest, credits)."""
    # The fork copied the parent's ends too; with them open, the parent's
    # close would never look like end of stream here.
    for obj in parents:
        obj.close()
    try:
        rx = socket_receiver(sock, capacity, batch)
        rng = random.Random(seed)
        digest = hashlib.sha256()
        buf = bytearray(min(capacity, 256 * 1024) * 2)
        view = memoryview(buf)
        got = 0
        while got < total:
            n = rx.recv_into(view[:rng.randint(1, len(buf))], timeout=CALL_TIMEOUT)
            if n == 0:
                break
            digest.update(view[:n])
            got += n
        # The sender closes after its last byte: end of stream is seen as 0.
        tail = rx.recv_into(view[:1], timeout=CALL_TIMEOUT)
        report.send((got, digest.hexdigest(), rx.credits_returned, tail))
    except BaseException as exc:  # report, don't let the parent wait blind
        report.send(("error", repr(exc)))
        raise
    finally:
        report.close()


def _log_uniform_size(rng: random.Random, largest: int) -> int:
    """Message sizes spread over orders of magnitude: many small, some large."""
    return max(1, min(largest, int(2 ** rng.uniform(0, largest.bit_length()))))


def _stream(capacity: int, batch: int, max_message: int, total: int, seed: int):
    ctx = multiprocessing.get_context("fork")
    parent_sock, child_sock = socket.socketpair()
    report_rx, report_tx = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_receive,
                        args=(child_sock, capacity, batch, total, seed, report_tx,
                              [parent_sock, report_rx]))
    child.start()
    child_sock.close()
    report_tx.close()
    try:
        tx = socket_sender(parent_sock, capacity, batch=batch, max_message=max_message)
        rng = random.Random(seed)
        data = rng.randbytes(total)
        view = memoryview(data)
        pos = 0
        while pos < total:
            n = min(_log_uniform_size(rng, max_message), total - pos)
            tx.send_all(view[pos:pos + n], timeout=CALL_TIMEOUT)
            pos += n
        assert tx.tail == total
        parent_sock.close()
        assert report_rx.poll(JOIN_TIMEOUT), "the receiver reported nothing"
        result = report_rx.recv()
        child.join(JOIN_TIMEOUT)
        assert child.exitcode == 0, result
        return result, hashlib.sha256(data).hexdigest(), tx
    finally:
        if child.is_alive():
            child.kill()
            child.join(JOIN_TIMEOUT)
        parent_sock.close()
        report_rx.close()


@pytest.mark.parametrize("capacity,batch", [
    (256 * 1024, 32 * 1024),        # B < C: credit comes back in batches, unasked
    (256 * 1024 + 13, 1 * MiB),     # B > C: only requests move credit; odd size wraps
])
def test_stream_64mib_between_processes(capacity, batch):
    total = 64 * MiB
    (got, digest, credits, tail), expected, tx = _stream(
        capacity, batch, max_message=64 * 1024, total=total, seed=capacity)
    assert got == total
    assert digest == expected
    assert tail == 0
    if batch < capacity:
        # Batching holds across processes: at most one credit per batch.
        assert 0 < credits <= total // batch
    else:
        assert credits > 0
    assert tx.shead <= total


@pytest.mark.parametrize("capacity,batch,max_message", [
    (97, 200, 40),      # tiny ring, B > C: a request almost every message
    (1000, 10, 999),    # messages nearly the ring's size, small batches
])
def test_small_ring_between_processes(capacity, batch, max_message):
    total = 300_000
    (got, digest, _credits, tail), expected, _tx = _stream(
        capacity, batch, max_message=max_message, total=total, seed=batch)
    assert (got, digest, tail) == (total, expected, 0)


def _read_some_then_exit(sock: socket.socket, capacity: int, parents: list) -> None:
    for obj in parents:
        obj.close()
    rx = socket_receiver(sock, capacity, 1)
    rx.recv_into(bytearray(100), timeout=CALL_TIMEOUT)


def test_sender_sees_a_receiver_that_went_away():
    ctx = multiprocessing.get_context("fork")
    parent_sock, child_sock = socket.socketpair()
    child = ctx.Process(target=_read_some_then_exit, args=(child_sock, 4096, [parent_sock]))
    child.start()
    child_sock.close()
    try:
        tx = socket_sender(parent_sock, 4096, batch=1)
        # Far more than the ring holds: the sender must wait for credit that
        # can no longer come, and report the broken pipe instead.
        with pytest.raises((BrokenPipeError, ConnectionResetError)):
            tx.send_all(bytes(1 * MiB), timeout=CALL_TIMEOUT)
        child.join(JOIN_TIMEOUT)
        assert child.exitcode == 0
    finally:
        if child.is_alive():
            child.kill()
            child.join(JOIN_TIMEOUT)
        parent_sock.close()
