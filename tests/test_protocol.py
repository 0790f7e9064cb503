"""The control protocol's codec (impl/monitor/protocol.py) under good and bad input.

Every message a peer can send must either decode to exactly what was
encoded or raise ProtocolError with the right ``fatal`` flag -- True when
the frame itself is bad (the monitor drops the channel), False when only
the body or the descriptor count is (the channel goes on) -- and a rejected
message must close every descriptor that came with it, or a hostile peer
could fill the monitor's descriptor table.  Descriptors are real (eventfds,
memfds) so that "closed" is checked with fstat, not assumed.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from impl.monitor import protocol as P

SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(autouse=True)
def no_fd_leaks():
    """Nothing a test decodes, sends or receives may stay open in this process."""
    before = sorted(os.listdir("/proc/self/fd"))
    yield
    assert sorted(os.listdir("/proc/self/fd")) == before, "file descriptors leaked"


# -- helpers -------------------------------------------------------------------------
def new_fds(n: int) -> list[int]:
    """*n* real descriptors (eventfds) to attach to a message."""
    return [os.eventfd(0, os.EFD_CLOEXEC) for _ in range(n)]


def is_open(fd: int) -> bool:
    """Is *fd* an open descriptor?  EBADF says it was closed."""
    try:
        os.fstat(fd)
    except OSError as exc:
        assert exc.errno == errno.EBADF
        return False
    return True


def close_all(fds) -> None:
    for fd in fds:
        if is_open(fd):
            os.close(fd)


def frame(op: int = P.PING, body: bytes = b"{}", *, magic: bytes = P.MAGIC,
          version: int = P.VERSION, length: int | None = None) -> bytes:
    """A packet built by hand, so each header field can be wrong on its own."""
    return P.HEADER.pack(magic, version, op, len(body) if length is None else length) + body


def reject(packet: bytes, nfds: int = 0, flags: int = 0) -> P.ProtocolError:
    """Decode *packet* with *nfds* fresh descriptors; it must fail and close them all."""
    fds = new_fds(nfds)
    try:
        with pytest.raises(P.ProtocolError) as info:
            P.decode(packet, fds, flags)
        still_open = [fd for fd in fds if is_open(fd)]
        assert not still_open, f"rejected message left descriptors {still_open} open"
    finally:
        close_all(fds)
    return info.value


def depth(value) -> int:
    """Nesting depth of a JSON value: 0 for a scalar, 1 for a flat array or object."""
    if isinstance(value, dict):
        return 1 + max((depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((depth(v) for v in value), default=0)
    return 0


# -- strategies ----------------------------------------------------------------------
# Lone surrogates included: abstract unix names travel as surrogate-escaped text.
texts = st.text(st.characters(blacklist_categories=()), max_size=12)
ints = st.integers(min_value=-(2**64), max_value=2**64)
scalars = (st.none() | st.booleans() | ints | texts
           | st.floats(allow_nan=False, allow_infinity=False))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(texts, inner, max_size=3), max_leaves=8)
addresses = st.lists(texts | st.integers(0, 65535), max_size=3)
_BY_TYPE = {int: ints, str: texts, list: addresses, type(None): st.none(), dict: st.dictionaries(
    texts, json_values, max_size=3), bool: st.booleans()}


def field_values(op: int, name: str) -> st.SearchStrategy:
    """Values that *op*'s schema allows for field *name* (one of its CHOICES, if it has any)."""
    choices = P.CHOICES.get(op, {}).get(name)
    if choices is not None:
        return st.sampled_from(sorted(choices))
    return st.one_of(*(_BY_TYPE[t] for t in P.SCHEMAS[op][name]))


def bodies(op: int) -> st.SearchStrategy[dict]:
    """Bodies that follow *op*'s schema (any JSON object for the free-form OK)."""
    if op in P._OPEN_SCHEMA:
        return st.dictionaries(texts, json_values, max_size=4)
    return st.fixed_dictionaries({name: field_values(op, name) for name in P.SCHEMAS[op]})


def wrong_values(types: tuple[type, ...]) -> st.SearchStrategy:
    """JSON values of none of *types* (bool counts as wrong for int)."""
    candidates = [st.booleans(), st.floats(allow_nan=False, allow_infinity=False), texts,
                  st.lists(ints, max_size=2), st.dictionaries(texts, ints, max_size=2),
                  st.none(), ints]
    return st.one_of(*candidates).filter(
        lambda v: not isinstance(v, types) or (isinstance(v, bool) and bool not in types))


ALL_OPS = sorted(P.OPS)
SCHEMA_OPS = [op for op in ALL_OPS if op not in P._OPEN_SCHEMA]
OPS_WITH_FIELDS = [op for op in SCHEMA_OPS if P.SCHEMAS[op]]


def raw_body(body: dict) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


# -- round trips -----------------------------------------------------------------------
@pytest.mark.parametrize("op", ALL_OPS, ids=P.OP_NAMES.get)
@SETTINGS
@given(data=st.data())
def test_encode_decode_round_trip(op, data):
    """decode(encode(body)) is the body, with the descriptors untouched and left open."""
    body = data.draw(bodies(op))
    nfds = data.draw(st.sampled_from(sorted(P.FD_COUNTS[op])))
    if depth(body) > P.MAX_DEPTH:
        with pytest.raises(P.ProtocolError):
            P.encode(op, body)
        return
    packet = P.encode(op, body)
    magic, version, op_field, length = P.HEADER.unpack_from(packet)
    assert (magic, version, op_field, length) == (P.MAGIC, P.VERSION, op,
                                                  len(packet) - P.HEADER.size)
    fds = new_fds(nfds)
    try:
        msg = P.decode(packet, fds)
        assert (msg.op, msg.body, msg.fds) == (op, body, fds)
        assert all(is_open(fd) for fd in fds), "a good message must hand its fds on"
    finally:
        close_all(fds)


def test_body_nested_exactly_max_depth_is_accepted():
    """The depth limit is MAX_DEPTH, not one less: a STATUS-like reply must get through."""
    body: dict = {"x": 1}
    for _ in range(P.MAX_DEPTH - 1):
        body = {"x": body}
    assert depth(body) == P.MAX_DEPTH
    assert P.decode(P.encode(P.OK, body)).body == body
    with pytest.raises(P.ProtocolError) as info:
        P.encode(P.OK, {"x": body})
    assert not info.value.fatal


def memfd_with(text: bytes) -> int:
    fd = os.memfd_create("protocol-test", os.MFD_CLOEXEC)
    os.write(fd, text)
    return fd


@pytest.mark.parametrize("op", ALL_OPS, ids=P.OP_NAMES.get)
@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_send_recv_over_seqpacket(op, data):
    """One message per packet over a real SOCK_SEQPACKET pair, fds passed by SCM_RIGHTS."""
    body = data.draw(bodies(op))
    nfds = data.draw(st.sampled_from(sorted(P.FD_COUNTS[op])))
    if depth(body) > P.MAX_DEPTH:
        return
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sent = [memfd_with(b"file %d" % i) for i in range(nfds)]
    msg = None
    try:
        b.settimeout(10)
        P.send_msg(a, op, body, sent)
        P.send_msg(a, P.PING)        # a second packet: the first must not swallow it
        msg = P.recv_msg(b)
        assert (msg.op, msg.body, len(msg.fds)) == (op, body, nfds)
        for fd, orig in zip(msg.fds, sent, strict=True):
            assert fd not in sent and is_open(orig), "the sender keeps its own fds"
            assert os.fstat(fd).st_ino == os.fstat(orig).st_ino, "not the same file"
            assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC, "must be close-on-exec"
        second = P.recv_msg(b)
        assert (second.op, second.body, second.fds) == (P.PING, {}, [])
        a.close()
        assert P.recv_msg(b) is None, "EOF must read as None"
    finally:
        if msg is not None:
            msg.close_fds()
        close_all(sent)
        a.close()
        b.close()


def test_received_fds_name_the_senders_files():
    """Data written through the sender's memfd is read through the receiver's copy."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    fd = memfd_with(b"")
    try:
        P.send_msg(a, P.CONNECT, {"family": "inet", "address": ["127.0.0.1", 1],
                                  "rcvbuf": 0, "sndbuf": 0}, [fd])
        msg = P.recv_msg(b)
        os.write(fd, b"through the ring")
        assert os.pread(msg.fds[0], 64, 0) == b"through the ring"
        msg.close_fds()
        assert msg.fds == []
    finally:
        os.close(fd)
        a.close()
        b.close()


# -- frames that are not this protocol: fatal -------------------------------------------
GOOD = frame()
FATAL_FRAMES = {
    "empty": b"",
    "one byte": b"S",
    "header minus one": GOOD[:P.HEADER.size - 1],
    "bad magic": frame(magic=b"XX"),
    "magic swapped": frame(magic=P.MAGIC[::-1]),
    "magic lower case": frame(magic=P.MAGIC.lower()),
    "version 0": frame(version=0),
    "version + 1": frame(version=P.VERSION + 1),
    "version 255": frame(version=255),
    "op 0": frame(op=0),
    "op between ranges": frame(op=max(P.OPS - {P.OK, P.ERROR}) + 1),
    "op after ERROR": frame(op=P.ERROR + 1),
    "op 255": frame(op=255),
    "length one too big": frame(length=3),
    "length one too small": frame(length=1),
    "length 0 with a body": frame(length=0),
    "length MAX_BODY + 1": frame(length=P.MAX_BODY + 1),
    "length 2**32 - 1": frame(length=2**32 - 1),
    "body of MAX_BODY + 1 bytes": frame(body=b" " * (P.MAX_BODY - 1) + b"{}"),
    "two messages in one packet": GOOD + GOOD,
}


@pytest.mark.parametrize("nfds", [0, 1, P.MAX_FDS])
@pytest.mark.parametrize("packet", FATAL_FRAMES.values(), ids=FATAL_FRAMES.keys())
def test_bad_frame_is_fatal(packet, nfds):
    """A frame that is not this protocol's: fatal, and every attached fd closed."""
    assert reject(packet, nfds).fatal


@pytest.mark.parametrize("flag", [socket.MSG_TRUNC, socket.MSG_CTRUNC],
                         ids=["MSG_TRUNC", "MSG_CTRUNC"])
@pytest.mark.parametrize("nfds", [0, 2, P.MAX_FDS])
def test_truncated_by_the_kernel_is_fatal(flag, nfds):
    """A packet or its descriptors cut by the kernel: fatal even when what is left parses."""
    exc = reject(GOOD, nfds, flag)
    assert exc.fatal
    assert ("longer" if flag == socket.MSG_TRUNC else "descriptors") in str(exc)


@SETTINGS
@given(junk=st.binary(max_size=64), nfds=st.integers(0, P.MAX_FDS))
def test_random_bytes_never_escape_as_another_exception(junk, nfds):
    """Anything at all: a Message or a ProtocolError, never another exception or a leak."""
    fds = new_fds(nfds)
    try:
        msg = P.decode(junk, fds)
    except P.ProtocolError:
        assert not any(is_open(fd) for fd in fds)
        return
    msg.close_fds()
    assert junk[:2] == P.MAGIC and junk[2] == P.VERSION and junk[3] in P.OPS


def sample_body(op: int) -> dict:
    """A fixed valid body for *op*."""
    sample = {int: 7, str: "inet", list: ["127.0.0.1", 80], type(None): None, bool: False}
    choices = P.CHOICES.get(op, {})
    return {name: min(choices[name]) if name in choices else sample[types[0]]
            for name, types in P.SCHEMAS[op].items()}


@SETTINGS
@given(op=st.sampled_from(ALL_OPS), position=st.integers(0, P.HEADER.size - 1),
       xor=st.integers(1, 255))
def test_corrupted_header_byte(op, position, xor):
    """One corrupted header byte: fatal -- unless it is the op byte and names another op."""
    packet = bytearray(P.encode(op, sample_body(op)))
    packet[position] ^= xor
    try:
        msg = P.decode(bytes(packet))
    except P.ProtocolError as exc:
        # Only a changed op can leave a sound frame whose body is wrong for the new op.
        assert exc.fatal or (position == 3 and packet[3] in P.OPS)
        return
    assert position == 3 and msg.op == packet[3] != op


# -- bodies that are not this op's: not fatal --------------------------------------------
NOT_JSON = {
    "empty body": (P.PING, b""),
    "not UTF-8": (P.PING, b"\xff\xfe{}"),
    "cut UTF-8 sequence": (P.OK, b'{"a":"\xc3"}'),
    "truncated object": (P.PING, b'{"a":'),
    "trailing garbage": (P.PING, b"{} x"),
    "single quotes": (P.PING, b"{'a':1}"),
    "array": (P.PING, b"[]"),
    "number": (P.PING, b"1"),
    "string": (P.PING, b'"x"'),
    "null": (P.PING, b"null"),
    "true": (P.OK, b"true"),
    "NaN": (P.OK, b'{"x":NaN}'),
    "Infinity": (P.OK, b'{"x":Infinity}'),
    "-Infinity": (P.OK, b'{"x":-Infinity}'),
    "number overflowing to inf": (P.OK, b'{"x":1e999}'),
    "integer of 5000 digits": (P.ACCEPTED, b'{"id":' + b"7" * 5000 + b"}"),
    "duplicate key, free-form op": (P.OK, b'{"a":1,"a":2}'),
    "duplicate key, schema op": (P.ACCEPTED, b'{"id":1,"id":2}'),
    "duplicate key, nested": (P.OK, b'{"a":{"b":1,"b":1}}'),
    "nested MAX_DEPTH + 1": (P.OK, b'{"a":' + b"[" * P.MAX_DEPTH + b"]" * P.MAX_DEPTH + b"}"),
    "nested 100000 deep": (P.PING, b'{"a":' + b"[" * 100000 + b"]" * 100000 + b"}"),
    "bool where int": (P.ACCEPTED, b'{"id":true}'),
    "float where int": (P.CLOSE, b'{"id":1.0}'),
    "string where int": (P.CLOSE, b'{"id":"1"}'),
    "null where list": (P.CONNECT, b'{"family":"inet","address":null,"rcvbuf":0,"sndbuf":0}'),
    "int where str": (P.HELLO, b'{"version":1,"role":1}'),
    "missing field": (P.ERROR, b'{"errno":1}'),
    "extra field on an empty schema": (P.PING, b'{"x":1}'),
}


@pytest.mark.parametrize("nfds", [0, 1])
@pytest.mark.parametrize("op,body", NOT_JSON.values(), ids=NOT_JSON.keys())
def test_bad_body_is_not_fatal(op, body, nfds):
    """A well-framed message with a bad body: an error the channel survives; fds closed."""
    exc = reject(frame(op, body), nfds)
    assert not exc.fatal
    assert P.OP_NAMES[op] in str(exc)


@pytest.mark.parametrize("op", OPS_WITH_FIELDS, ids=P.OP_NAMES.get)
@SETTINGS
@given(data=st.data())
def test_missing_field(op, data):
    body = data.draw(bodies(op))
    name = data.draw(st.sampled_from(sorted(body)))
    del body[name]
    exc = reject(frame(op, raw_body(body)), min(P.FD_COUNTS[op]))
    assert not exc.fatal and repr(name) in str(exc)


@pytest.mark.parametrize("op", SCHEMA_OPS, ids=P.OP_NAMES.get)
@SETTINGS
@given(data=st.data())
def test_extra_field(op, data):
    body = data.draw(bodies(op))
    name = data.draw(texts.filter(lambda n: n not in P.SCHEMAS[op]))
    body[name] = data.draw(json_values)
    exc = reject(frame(op, raw_body(body)), min(P.FD_COUNTS[op]))
    assert not exc.fatal and "unknown field" in str(exc)


@pytest.mark.parametrize("op", OPS_WITH_FIELDS, ids=P.OP_NAMES.get)
@SETTINGS
@given(data=st.data())
def test_mistyped_field(op, data):
    body = data.draw(bodies(op))
    name = data.draw(st.sampled_from(sorted(body)))
    body[name] = data.draw(wrong_values(P.SCHEMAS[op][name]))
    exc = reject(frame(op, raw_body(body)), min(P.FD_COUNTS[op]))
    assert not exc.fatal and repr(name) in str(exc)


WRONG_COUNTS = [(op, n) for op in ALL_OPS for n in range(P.MAX_FDS + 1)
                if n not in P.FD_COUNTS[op]]


@pytest.mark.parametrize("op,nfds", WRONG_COUNTS,
                         ids=[f"{P.OP_NAMES[op]}-{n}" for op, n in WRONG_COUNTS])
def test_wrong_descriptor_count(op, nfds):
    """Descriptors where none belong, or too few/many: not fatal, and all closed."""
    exc = reject(P.encode(op, sample_body(op)), nfds)
    assert not exc.fatal and "descriptors" in str(exc)


# -- what a sender may not send -----------------------------------------------------------
def test_encode_refuses_what_decode_would_refuse():
    """The sender finds its own mistakes: schema, unknown op, NaN, depth, size."""
    cases = [
        (P.ACCEPTED, {}, False),
        (P.ACCEPTED, {"id": True}, False),
        (P.PING, {"x": 1}, False),
        (P.OK, {"x": float("nan")}, False),
        (P.OK, {"x": float("inf")}, False),
        (P.OK, {"x": object()}, False),
        (P.OK, {"x": "y" * P.MAX_BODY}, True),
        (99, {}, True),
    ]
    for op, body, fatal in cases:
        with pytest.raises(P.ProtocolError) as info:
            P.encode(op, body)
        assert info.value.fatal is fatal, (op, body)


def test_send_msg_refuses_a_wrong_descriptor_count_before_sending():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    fds = new_fds(2)
    try:
        with pytest.raises(P.ProtocolError):
            P.send_msg(a, P.PING, None, fds[:1])
        with pytest.raises(P.ProtocolError):
            P.send_msg(a, P.CONNECT, sample_body(P.CONNECT), fds)
        b.setblocking(False)
        with pytest.raises(BlockingIOError):
            b.recv(100)              # nothing half-sent
        assert all(is_open(fd) for fd in fds)
    finally:
        close_all(fds)
        a.close()
        b.close()


def test_error_reply_always_fits_a_default_socket():
    """An ERROR quoting a huge message is cut so that it can always be sent back.

    Worst case for size: characters that JSON escapes to 12 bytes each.
    """
    huge = "\U0001f600" * (P.MAX_BODY // 2)
    body = P.error_body(errno.EINVAL, huge)
    assert len(body["message"]) <= P.MAX_ERROR_MESSAGE
    assert body["message"].startswith(huge[:100])
    assert P.error_body(errno.EINVAL, "short") == {"errno": errno.EINVAL, "message": "short"}
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        b.settimeout(10)
        P.send_msg(a, P.ERROR, body)
        assert P.recv_msg(b).body == body
    finally:
        a.close()
        b.close()


def test_error_message_quotes_wire_data_briefly():
    """A field name of 200 KB must not come back 5x larger in the error (monitor B4)."""
    body = json.dumps({"\x7f" * 200_000: 1, "a": 2, "b": 3, "c": 4}, ensure_ascii=False)
    exc = reject(frame(P.PING, body.encode()))
    assert not exc.fatal
    assert len(str(exc)) < P.MAX_ERROR_MESSAGE
    assert "and 1 more" in str(exc)


# -- recv_msg over a real socket: what the kernel delivers ----------------------------------
def fd_table() -> list[str]:
    return sorted(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("packet,fatal", [
    (b"garbage!", True), (frame(P.PING, b"[]"), False), (b"", True)],
    ids=["garbage", "bad body", "empty with fds"])
def test_recv_msg_closes_fds_of_a_rejected_packet(packet, fatal):
    """The receiver's copies of the descriptors, which only recv_msg knows, are closed."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    fds = new_fds(3)
    try:
        b.settimeout(10)
        socket.send_fds(a, [packet], fds)
        before = fd_table()
        with pytest.raises(P.ProtocolError) as info:
            P.recv_msg(b)
        assert info.value.fatal is fatal
        assert fd_table() == before, "received descriptors leaked"
    finally:
        close_all(fds)
        a.close()
        b.close()


def test_recv_msg_too_many_fds():
    """More than MAX_FDS: the kernel keeps what fits (MSG_CTRUNC), recv_msg closes those."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    fds = new_fds(P.MAX_FDS + 5)
    try:
        b.settimeout(10)
        socket.send_fds(a, [GOOD], fds)
        before = fd_table()
        with pytest.raises(P.ProtocolError) as info:
            P.recv_msg(b)
        assert info.value.fatal and "descriptors" in str(info.value)
        assert fd_table() == before
        P.send_msg(a, P.PING)
        assert P.recv_msg(b).op == P.PING, "the next packet is intact"
    finally:
        close_all(fds)
        a.close()
        b.close()


def test_recv_msg_oversized_packet():
    """A packet longer than any message: MSG_TRUNC, fatal, and the next packet intact."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        size = P.HEADER.size + P.MAX_BODY + 100
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 2 * size)
        if a.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) < size + 4096:
            pytest.skip("net.core.wmem_max too small to send an oversized packet")
        b.settimeout(10)
        a.sendall(frame(body=b" " * (size - P.HEADER.size)))
        with pytest.raises(P.ProtocolError) as info:
            P.recv_msg(b)
        assert info.value.fatal and "longer" in str(info.value)
        P.send_msg(a, P.PING)
        assert P.recv_msg(b).op == P.PING
    finally:
        a.close()
        b.close()


def test_empty_packet_without_fds_reads_as_eof():
    """SOCK_SEQPACKET cannot tell an empty packet from EOF: both end the channel."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        b.settimeout(10)
        a.send(b"")
        assert P.recv_msg(b) is None
    finally:
        a.close()
        b.close()
