"""The control protocol between the library and the monitor: the one place that defines it.

Transport: a Unix ``SOCK_SEQPACKET`` socket.  Each packet is one message,
so framing is the kernel's and descriptors (``SCM_RIGHTS``) arrive with the
message they belong to::

    offset 0   2    3     4         8
           +---+----+-----+---------+----------------------------+
           | "SD"   | ver | op      | length  | body: UTF-8 JSON object   |
           +---+----+-----+---------+----------------------------+
           magic: b"SD"; ver: VERSION; op: one of OPS; length: u32 LE = len(body)

The body is a JSON object whose fields each op defines in :data:`SCHEMAS`.
A packet that does not parse -- short, truncated, oversized, wrong magic or
version, unknown op, a length that disagrees with the packet, invalid JSON,
a missing or mistyped field or one outside its :data:`CHOICES`, descriptors
where none belong or too few where some do -- raises :class:`ProtocolError`,
and the descriptors that came with it are closed, so a bad message can never
leak descriptors into the receiver.  The body must be strict JSON: no
``NaN``/``Infinity`` or numbers that overflow to them, no duplicate keys, at
most :data:`MAX_DEPTH` levels of nesting -- anything one JSON parser might
read differently from another, or that would make the receiver recurse
without bound, is refused.  Error messages quote values from the wire only
in short excerpts and an ERROR's message is cut to :data:`MAX_ERROR_MESSAGE`
characters, so an ERROR reply is always small enough to send back.  The
monitor answers a ProtocolError with an ``ERROR`` message (and closes the
channel when the frame itself was bad); it never changes state for a message
it rejected.

Ops and who sends them (request -> reply; "->" one-way):

=============  =========================  ======================================
op             sender, channel            meaning
=============  =========================  ======================================
HELLO          library, any               first message: protocol version -> OK
CONNECT        library, process channel   set up a connection; fds: the client's
                                          kernel socket (its bound local address)
                                          -> OK {route} (+6 ring fds if "ring",
                                          +1 side channel end for "unix")
LISTEN         library, listener channel  register a listener; fds: the kernel
                                          listening socket -> OK; the channel
                                          then carries NEWCONN pushes
NEWCONN        monitor, listener channel  -> a connection to accept (+6 ring fds,
                                          +1 side channel end for "unix")
ACCEPTED       acceptor, process channel  -> this process took connection ``id``
                                          from a listener; fds: the memfd of the
                                          ring it reads (proof)
CLOSE          library, process channel   -> this process closed connection ``id``
                                          {id, end?}; ``shared`` (version 2) is
                                          accepted and ignored
PING           anyone                     -> OK (orders: earlier one-way messages
                                          on the same channel are processed)
STATUS, STATS  ctl                        -> OK {tables and counters}
RELOAD, STOP   ctl                        -> OK (re-read the ACL; shut down)
TAKE           library, agent channel     -> the process asks for token
                                          {id, end, dir}
RECALL         monitor, agent channel     -> the holder is to give the token back
RELEASE        library, agent channel     -> the holder gives the token back
GRANT          monitor, agent channel     -> the token is now this process's
                                          {id, end, dir, reclaimed}
HOLD           library, process channel   {ends: [[id, end], ...]}; fds: the read
                                          end of each end's hold pipe, in order:
                                          count its holders from now on -> OK {ends}
FORKED         fork child, process chan.  {ends: [[id, end], ...]}; fds: the child's
                                          copy of each hold pipe's write end, in
                                          order (proof) -> OK {ends}
OK, ERROR      monitor                    replies; ERROR {errno, message}
=============  =========================  ======================================

Token sharing (``spec/tla/TokenSharing.tla``): each connection end has a
send and a recv token, named ``(id, end, dir)`` with ``end`` "client" or
"server" and ``dir`` "send" or "recv" (:data:`CHOICES`; any other value is
a ProtocolError like a mistyped field).  A process says HELLO with role
``"agent"`` on a channel of its own, its *agent channel*: the monitor pushes
RECALL and GRANT there, and the process sends TAKE and RELEASE there, so
that its TAKEs and RELEASEs reach the monitor in the order they were sent.
GRANT's ``reclaimed`` is true when the token was taken from a holder that
died or closed its copy of the end (its token word was reset by the monitor).
FORKED is a request: send it on the process channel, not the agent channel,
whose pushes would otherwise be read as its reply.

Fork (``spec/tla/Fork.tla``, ``impl/fork``): before the first fork() that an
open end lives through, its process makes the end's *hold pipe* and sends
the monitor the pipe's read end (HOLD).  Every process holding the end has
a copy of the write end, so the read end reports POLLHUP exactly when no
process holds the end any more: the kernel's count, which the monitor
watches.  A child proves that it holds an end by sending its copy of the
write end (FORKED); an acceptor proves that it took a connection by sending
the memfd of the ring it reads (ACCEPTED).  A proof that does not match is
refused with EPERM, a malformed list or descriptor count with EINVAL.

Ring descriptors travel in the order of :data:`RING_FDS`: the ring this end
writes (memfd, data eventfd, space eventfd), then the ring it reads.  An
AF_UNIX connection's ends get one more (version 4): their end of the
connection's *side channel*, a kernel ``socketpair(AF_UNIX, SOCK_SEQPACKET)``
made by the monitor, which carries the descriptors (``SCM_RIGHTS``) that the
program passes over the connection; the monitor keeps no copy of it.
"""

from __future__ import annotations

import array
import errno
import json
import math
import mmap
import os
import socket
import struct
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "MAGIC", "VERSION", "HEADER", "MAX_BODY", "MAX_FDS", "MAX_ENDS", "MAX_DEPTH",
    "MAX_ERROR_MESSAGE",
    "RING_FDS", "OPS", "OP_NAMES",
    "HELLO", "CONNECT", "LISTEN", "NEWCONN", "ACCEPTED", "CLOSE", "PING", "STATUS",
    "STATS", "RELOAD", "STOP", "TAKE", "RECALL", "RELEASE", "GRANT", "FORKED", "HOLD", "OK",
    "ERROR",
    "SCHEMAS", "OPTIONAL", "CHOICES", "FD_COUNTS", "TOKEN_OPS", "ENDS", "DIRS",
    "FAMILIES", "Message", "ProtocolError", "encode", "decode", "send_msg", "recv_msg",
    "error_body", "errno_name",
]

MAGIC = b"SD"
#: Bumped on any incompatible change to this file (2: the token ops; 3: HOLD, and the
#: proofs of FORKED and ACCEPTED; 4: the side channel of AF_UNIX connections).
VERSION = 4
HEADER = struct.Struct("<2sBBI")
#: Largest body accepted; STATUS replies of big tables are the largest messages.
MAX_BODY = 1 << 20
#: Most descriptors one message may carry (6 ring fds and a side channel; HOLD and
#: FORKED carry one per end, so the library sends them in batches of at most MAX_ENDS).
MAX_FDS = 8
#: Most ends one HOLD or FORKED names (one descriptor each).
MAX_ENDS = MAX_FDS
#: Deepest nesting of arrays and objects in a body (a STATUS reply needs 4).
MAX_DEPTH = 16
#: Longest ``message`` of an ERROR body; longer ones are cut, so that a reply
#: to any request -- however large -- fits in one packet the socket can take.
MAX_ERROR_MESSAGE = 1024
#: How many characters of a value from the wire an error message quotes.
_QUOTE = 60
_FD_SIZE = array.array("i").itemsize
_CMSG_SPACE = socket.CMSG_SPACE(MAX_FDS * _FD_SIZE)
_RECV_SIZE = HEADER.size + MAX_BODY
# Plain ints: testing flags against the IntFlag members costs ~1 us a message.
_MSG_TRUNC = int(socket.MSG_TRUNC)
_MSG_CTRUNC = int(socket.MSG_CTRUNC)
_MSG_CMSG_CLOEXEC = int(socket.MSG_CMSG_CLOEXEC)
_SOL_SOCKET = int(socket.SOL_SOCKET)
_SCM_RIGHTS = int(socket.SCM_RIGHTS)
#: The six descriptors of a connection, in the order they travel.
RING_FDS = ("tx_memfd", "tx_data_efd", "tx_space_efd", "rx_memfd", "rx_data_efd",
            "rx_space_efd")

HELLO, CONNECT, LISTEN, NEWCONN, ACCEPTED, CLOSE, PING = 1, 2, 3, 4, 5, 6, 7
STATUS, STATS, RELOAD, STOP = 8, 9, 10, 11
TAKE, RECALL, RELEASE, GRANT, FORKED, HOLD = 12, 13, 14, 15, 16, 17
OK, ERROR = 20, 21

OP_NAMES = {HELLO: "HELLO", CONNECT: "CONNECT", LISTEN: "LISTEN", NEWCONN: "NEWCONN",
            ACCEPTED: "ACCEPTED", CLOSE: "CLOSE", PING: "PING", STATUS: "STATUS",
            STATS: "STATS", RELOAD: "RELOAD", STOP: "STOP", TAKE: "TAKE", RECALL: "RECALL",
            RELEASE: "RELEASE", GRANT: "GRANT", FORKED: "FORKED", HOLD: "HOLD", OK: "OK",
            ERROR: "ERROR"}
OPS = frozenset(OP_NAMES)
#: The one-way ops that name one token by (id, end, dir).
TOKEN_OPS = frozenset({TAKE, RECALL, RELEASE, GRANT})
#: A connection's two ends, and a token's two directions.
ENDS = ("client", "server")
DIRS = ("send", "recv")

_INT = (int,)
_STR = (str,)
_ADDR = (list,)          # [host, port] for inet/inet6, [path] for unix
_OPT_ADDR = (list, type(None))
_OBJ = (dict,)
_BOOL = (bool,)
_TOKEN = {"id": _INT, "end": _STR, "dir": _STR}

#: op -> {field: allowed JSON types}; every listed field is required, others are refused.
SCHEMAS: dict[int, dict[str, tuple[type, ...]]] = {
    HELLO: {"version": _INT, "role": _STR},
    CONNECT: {"family": _STR, "address": _ADDR, "rcvbuf": _INT, "sndbuf": _INT},
    LISTEN: {"family": _STR, "backlog": _INT, "rcvbuf": _INT, "sndbuf": _INT},
    NEWCONN: {"id": _INT, "family": _STR, "peer": _OPT_ADDR, "local": _ADDR},
    ACCEPTED: {"id": _INT},
    CLOSE: {"id": _INT},
    PING: {},
    STATUS: {},
    STATS: {},
    RELOAD: {},
    STOP: {},
    TAKE: _TOKEN,
    RECALL: _TOKEN,
    RELEASE: _TOKEN,
    GRANT: {**_TOKEN, "reclaimed": _BOOL},
    FORKED: {"ends": _ADDR},     # ends: [[id, "client"/"server"], ...]
    HOLD: {"ends": _ADDR},
    OK: {},        # free-form: replies carry what their request asks for
    ERROR: {"errno": _INT, "message": _STR},
}
_OPEN_SCHEMA = frozenset({OK})
#: op -> {field: allowed types} of fields that may be left out.  CLOSE's
#: "end" ("client" or "server") says which end a process closes when it holds
#: both ends of one connection (it connected to its own listener).
OPTIONAL: dict[int, dict[str, tuple[type, ...]]] = {CLOSE: {"end": _STR, "shared": _BOOL}}
#: op -> {field: the values it may take}, for string fields that name one of a few things.
CHOICES: dict[int, dict[str, frozenset[str]]] = {
    op: {"end": frozenset(ENDS), "dir": frozenset(DIRS)} for op in TOKEN_OPS}
# Per op, made once: (name, allowed types, required) of each field, and every
# field name allowed -- _check_body runs on every message sent or received.
_FIELDS = {op: (*((name, types, True) for name, types in SCHEMAS[op].items()),
                *((name, types, False) for name, types in OPTIONAL.get(op, {}).items()))
           for op in OPS}
_ALLOWED = {op: frozenset(SCHEMAS[op]) | frozenset(OPTIONAL.get(op, {})) for op in OPS}

#: op -> allowed descriptor counts.
FD_COUNTS: dict[int, frozenset[int]] = {op: frozenset({0}) for op in OPS}
FD_COUNTS[CONNECT] = frozenset({1})
FD_COUNTS[LISTEN] = frozenset({1})
# The ring fds, and for an AF_UNIX connection its end of the side channel.
FD_COUNTS[NEWCONN] = frozenset({len(RING_FDS), len(RING_FDS) + 1})
FD_COUNTS[OK] = frozenset({0, len(RING_FDS), len(RING_FDS) + 1})
# The proof; one without is the monitor's to refuse (a one-way message: it logs it).
FD_COUNTS[ACCEPTED] = frozenset({0, 1})
# One per end named; that the two agree is the monitor's check (EINVAL).
FD_COUNTS[HOLD] = frozenset(range(MAX_ENDS + 1))
FD_COUNTS[FORKED] = frozenset(range(MAX_ENDS + 1))

FAMILIES = {"inet": socket.AF_INET, "inet6": socket.AF_INET6, "unix": socket.AF_UNIX}


class ProtocolError(ValueError):
    """A control message that does not follow this protocol.

    ``fatal`` is True when the frame itself was bad (the channel can no
    longer be trusted to speak this protocol) and False when only a field
    was wrong.
    """

    def __init__(self, message: str, *, fatal: bool = True) -> None:
        super().__init__(message)
        self.fatal = fatal


@dataclass
class Message:
    """One decoded message: its op, JSON body and the descriptors it carried.

    The receiver owns ``fds`` and must close them (or hand them on).
    """

    op: int
    body: dict[str, Any] = field(default_factory=dict)
    fds: list[int] = field(default_factory=list)

    @property
    def name(self) -> str:
        """The op's name, for logs."""
        return OP_NAMES.get(self.op, f"op{self.op}")

    def close_fds(self) -> None:
        """Close every descriptor this message still holds."""
        _close(self.fds)
        self.fds = []


def _close(fds: Sequence[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def error_body(code: int, message: str) -> dict[str, Any]:
    """The body of an ERROR reply for errno *code*; *message* is cut to MAX_ERROR_MESSAGE."""
    if len(message) > MAX_ERROR_MESSAGE:
        message = message[:MAX_ERROR_MESSAGE - 3] + "..."
    return {"errno": code, "message": message}


def _quote(value: Any) -> str:
    """repr() of a value from the wire, shortened: error messages must stay small."""
    text = repr(value)
    return text if len(text) <= _QUOTE else text[:_QUOTE - 3] + "..."


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 parses to inf without any NaN/Infinity token
        raise ValueError(f"number {_quote(text)} is out of range")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # A duplicate key would mean whatever the last parser to see it decides.
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {_quote(key)}")
        out[key] = value
    return out


_DECODER = json.JSONDecoder(parse_float=_finite_float, parse_constant=_no_constant,
                            object_pairs_hook=_no_duplicates)
# Made once: json.dumps with any option builds a new encoder per call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def _may_be_too_deep(text: str) -> bool:
    """Could JSON *text* nest deeper than MAX_DEPTH?  False is certain.

    Each level of nesting opens one bracket, so fewer than MAX_DEPTH + 1
    brackets (counting those inside strings too) cannot nest too deep; the
    exact walk (_too_deep) is only needed past that.
    """
    return text.count("[") + text.count("{") > MAX_DEPTH


def _too_deep(value: Any) -> bool:
    """Is *value* nested deeper than MAX_DEPTH?  Iterative: depth is what is in doubt."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        if depth > MAX_DEPTH:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def encode(op: int, body: dict[str, Any] | None = None) -> bytes:
    """Return the packet for *op* with *body* (checked against its schema)."""
    body = {} if body is None else body
    _check_body(op, body)
    try:
        text = _ENCODER.encode(body)
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"{OP_NAMES[op]} body is not JSON: {exc}", fatal=False) from None
    except RecursionError:
        text = None     # nested far deeper than MAX_DEPTH
    if text is None or (_may_be_too_deep(text) and _too_deep(body)):
        raise ProtocolError(f"{OP_NAMES[op]} body nests deeper than {MAX_DEPTH}", fatal=False)
    data = text.encode()
    if len(data) > MAX_BODY:
        raise ProtocolError(f"{OP_NAMES[op]} body of {len(data)} bytes exceeds {MAX_BODY}")
    return HEADER.pack(MAGIC, VERSION, op, len(data)) + data


def _check_body(op: int, body: Any) -> None:
    if op not in OPS:
        raise ProtocolError(f"unknown op {op}")
    if not isinstance(body, dict):
        raise ProtocolError(f"{OP_NAMES[op]} body must be a JSON object", fatal=False)
    if op in _OPEN_SCHEMA:
        return
    for name, types, required in _FIELDS[op]:
        if name not in body:
            if not required:
                continue
            raise ProtocolError(f"{OP_NAMES[op]} lacks field {name!r}", fatal=False)
        value = body[name]
        # bool is an int in Python, never in this protocol.
        if not isinstance(value, types) or (value.__class__ is bool and bool not in types):
            want = "/".join(t.__name__ for t in types)
            raise ProtocolError(f"{OP_NAMES[op]} field {name!r} must be {want}, "
                                f"got {type(value).__name__}", fatal=False)
    for name, values in CHOICES.get(op, {}).items():
        if body[name] not in values:
            raise ProtocolError(f"{OP_NAMES[op]} field {name!r} must be one of "
                                f"{', '.join(sorted(values))}, got {_quote(body[name])}",
                                fatal=False)
    allowed = _ALLOWED[op]
    if not allowed.issuperset(body):
        extra = sorted(set(body) - allowed, key=str)
        shown = ", ".join(_quote(name) for name in extra[:3])
        more = f" and {len(extra) - 3} more" if len(extra) > 3 else ""
        raise ProtocolError(f"{OP_NAMES[op]} has unknown fields {shown}{more}", fatal=False)


def decode(packet: bytes, fds: Sequence[int] = (), msg_flags: int = 0) -> Message:
    """Parse one received packet and its descriptors into a Message.

    Raises ProtocolError (and closes *fds*) for anything that is not a
    well-formed message of this protocol version.
    """
    fds = list(fds)
    try:
        if msg_flags & _MSG_TRUNC:
            raise ProtocolError(f"message longer than {HEADER.size + MAX_BODY} bytes")
        if msg_flags & _MSG_CTRUNC:
            raise ProtocolError(f"more than {MAX_FDS} descriptors attached")
        if len(packet) < HEADER.size:
            raise ProtocolError(f"truncated header: {len(packet)} of {HEADER.size} bytes")
        magic, version, op, length = HEADER.unpack_from(packet)
        if magic != MAGIC:
            raise ProtocolError(f"bad magic {magic!r}, expected {MAGIC!r}")
        if version != VERSION:
            raise ProtocolError(f"protocol version {version}, this monitor speaks {VERSION}")
        if op not in OPS:
            raise ProtocolError(f"unknown op {op}")
        if length > MAX_BODY:
            raise ProtocolError(f"body length {length} exceeds {MAX_BODY}")
        if length != len(packet) - HEADER.size:
            raise ProtocolError(f"length field says {length} bytes, "
                                f"packet holds {len(packet) - HEADER.size}")
        try:
            text = str(packet[HEADER.size:], "utf-8")
            body = _DECODER.decode(text)
        except (UnicodeDecodeError, ValueError) as exc:
            raise ProtocolError(f"{OP_NAMES[op]} body is not JSON: {exc}", fatal=False) from None
        except RecursionError:
            # The C parser recurses per level; MAX_DEPTH cannot be checked before it.
            raise ProtocolError(f"{OP_NAMES[op]} body nests deeper than {MAX_DEPTH}",
                                fatal=False) from None
        _check_body(op, body)
        if _may_be_too_deep(text) and _too_deep(body):
            raise ProtocolError(f"{OP_NAMES[op]} body nests deeper than {MAX_DEPTH}",
                                fatal=False)
        if len(fds) not in FD_COUNTS[op]:
            raise ProtocolError(f"{OP_NAMES[op]} carries {len(fds)} descriptors, expected "
                                f"{' or '.join(map(str, sorted(FD_COUNTS[op])))}", fatal=False)
    except BaseException:
        _close(fds)
        raise
    return Message(op, body, fds)


def send_msg(sock: socket.socket, op: int, body: dict[str, Any] | None = None,
             fds: Sequence[int] = ()) -> None:
    """Send one message; *fds* are duplicated into the receiver, ours stay open.

    Raises ProtocolError, before sending anything, for a body or a number of
    descriptors that the receiver would refuse.
    """
    data = encode(op, body)
    if len(fds) not in FD_COUNTS[op]:
        raise ProtocolError(f"{OP_NAMES[op]} cannot carry {len(fds)} descriptors",
                            fatal=False)
    if fds:
        # What socket.send_fds does, without its extra call and list.
        sock.sendmsg((data,), ((_SOL_SOCKET, _SCM_RIGHTS, array.array("i", fds)),))
    else:
        sock.send(data)


_tls = threading.local()


def _buffer() -> mmap.mmap:
    """This thread's receive buffer: HEADER + MAX_BODY bytes of address space, pages on use.

    recvmsg() allocates a buffer of the size asked for every message: for
    MAX_BODY that costs tens of microseconds, more than the rest of a
    CONNECT.  A private anonymous mapping reused costs nothing, and stays
    private to each process after fork and to each thread.
    """
    buf = getattr(_tls, "buf", None)
    if buf is None or buf.closed:
        buf = _tls.buf = mmap.mmap(-1, _RECV_SIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    return buf


def recv_msg(sock: socket.socket, buf: mmap.mmap | bytearray | None = None) -> Message | None:
    """Receive and decode one message; None at EOF (the peer closed).

    The packet is received into *buf* (writable, at least HEADER + MAX_BODY
    bytes; default: a buffer of this thread's, reused) and copied out, so
    *buf* is free again on return.  Received descriptors are close-on-exec,
    like every descriptor Python opens (PEP 446): a program the receiver
    execs must not inherit a ring.  Raises ProtocolError for a malformed
    message (its descriptors closed), OSError from the socket.
    """
    if buf is None:
        buf = _buffer()
    elif len(buf) < _RECV_SIZE:
        raise ValueError(f"receive buffer of {len(buf)} bytes, needs at least {_RECV_SIZE}")
    # Not socket.recv_fds: up to 3.12 it drops its flags argument, and with
    # it MSG_CMSG_CLOEXEC.
    n, ancdata, flags, _ = sock.recvmsg_into((buf,), _CMSG_SPACE, _MSG_CMSG_CLOEXEC)
    fds = array.array("i")
    for level, kind, payload in ancdata:
        if level == _SOL_SOCKET and kind == _SCM_RIGHTS:
            fds.frombytes(payload[:len(payload) - len(payload) % _FD_SIZE])
    if n == 0 and not fds:
        return None
    return decode(buf[:n], fds.tolist(), flags)


def errno_name(code: int) -> str:
    """Return 'ECONNREFUSED' for errno.ECONNREFUSED, for messages."""
    return errno.errorcode.get(code, str(code))
