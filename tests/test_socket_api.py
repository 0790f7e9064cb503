"""impl.socket against socket.socket: the same scenario on a kernel pair and a ring pair.

Most tests here run one scenario twice -- once on stdlib sockets over the
kernel, once on impl sockets that the monitor connected over rings -- and
require the same outcome (the value returned, or the exception's type and
errno).  The kernel is the oracle; where a ring deliberately differs (see
docs/socket.md) the test says so and checks the ring's own behaviour.

Every test uses the session monitor (``monitor`` fixture) unless it starts
its own; every blocking call is bounded by a socket timeout or pytest-timeout.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import random
import socket as stdsocket
import threading
from collections.abc import Callable

import pytest

import impl
from impl import sdsocket
from impl.monitor import client as monclient
from impl.monitor import protocol as P

pytestmark = pytest.mark.timeout(120)

WAIT = 30.0   # bound on a wait that only a bug makes long


@pytest.fixture(autouse=True)
def _monitor(monitor):
    """Every test here talks to the session monitor."""
    return monitor


# -- helpers --------------------------------------------------------------------------------------
def outcome(fn: Callable[[], object]) -> tuple:
    """("ok", value) or ("raise", exception type name, errno): comparable across transports."""
    try:
        return ("ok", fn())
    except Exception as exc:  # noqa: BLE001 - the exception is the outcome
        return ("raise", type(exc).__name__, getattr(exc, "errno", None))


_names = iter(range(1 << 30))


def bind_address(family: str, tmp_path) -> tuple[int, object]:
    """(address family, address to bind) for one of "inet", "inet6", "unix", "abstract"."""
    if family == "inet":
        return stdsocket.AF_INET, ("127.0.0.1", 0)
    if family == "inet6":
        return stdsocket.AF_INET6, ("::1", 0)
    if family == "unix":
        return stdsocket.AF_UNIX, str(tmp_path / f"s{next(_names)}")
    return stdsocket.AF_UNIX, f"\0sdtest-{os.getpid()}-{next(_names)}"


class Pair:
    """A connected pair made by *mod* (stdlib socket or impl): client ``a``, accepted ``b``."""

    def __init__(self, kind: str, family: str = "inet", tmp_path=None) -> None:
        self.kind = kind
        self.mod = impl if kind == "ring" else stdsocket
        fam, addr = bind_address(family, tmp_path)
        self.srv = self.mod.socket(fam, stdsocket.SOCK_STREAM)
        self.srv.bind(addr)
        self.srv.listen()
        self.a = self.mod.socket(fam, stdsocket.SOCK_STREAM)
        # Blocking, without a timeout: after a connect with a timeout (a
        # non-blocking one inside), the kernel lets one more connect succeed.
        self.a.connect(self.srv.getsockname())
        self.b, self.accepted_addr = self.srv.accept()
        if kind == "ring":
            assert (self.a.transport, self.b.transport) == ("ring", "ring")
        self.extra: list = []

    def close(self) -> None:
        for s in (self.a, self.b, self.srv, *self.extra):
            s.close()


@contextlib.contextmanager
def pair(kind: str, family: str = "inet", tmp_path=None):
    p = Pair(kind, family, tmp_path)
    try:
        yield p
    finally:
        p.close()


def in_thread(fn: Callable[[], object]) -> Callable[[], object]:
    """Start fn in a thread; return a function that joins it (bounded) and gives its result."""
    box: dict = {}

    def run() -> None:
        try:
            box["ok"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the joiner
            box["exc"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()

    def join():
        t.join(WAIT)
        assert not t.is_alive(), "thread still running"
        if "exc" in box:
            raise box["exc"]
        return box.get("ok")
    return join


def wait_readable(sock, n: int = 1) -> None:
    """Wait (bounded) until *n* bytes can be peeked: data sent has arrived."""
    sock.settimeout(WAIT)
    try:
        got = b""
        while len(got) < n:
            got = sock.recv(n, stdsocket.MSG_PEEK | stdsocket.MSG_WAITALL)
            assert got, "EOF while waiting for data"
    finally:
        sock.settimeout(None)


# -- the class itself -----------------------------------------------------------------------------
def test_every_method_of_socket_socket_is_defined_on_the_class():
    missing, undocumented = [], []
    for name in dir(stdsocket.socket):
        if name.startswith("_") or not callable(getattr(stdsocket.socket, name)):
            continue
        if name not in impl.socket.__dict__:
            missing.append(name)
        elif not (getattr(impl.socket.__dict__[name], "__doc__", None) or "").strip():
            undocumented.append(name)
    assert not missing, f"not defined on impl.socket: {missing}"
    assert not undocumented, f"no docstring: {undocumented}"


def test_module_is_a_drop_in_for_socket():
    assert issubclass(impl.socket, stdsocket.socket)
    assert impl.SocketType is impl.socket
    for name in ("socketpair", "create_connection", "create_server", "fromfd"):
        assert getattr(impl, name) is getattr(sdsocket, name), name
    # Constants, exceptions and helpers come from the socket module.
    for name in ("AF_INET", "SOCK_STREAM", "MSG_PEEK", "timeout", "gaierror", "getaddrinfo",
                 "has_dualstack_ipv6", "SHUT_WR"):
        assert getattr(impl, name) is getattr(stdsocket, name), name
    assert set(impl.__all__) >= {"socket", "socketpair", "create_connection", "create_server"}


# -- scenarios on a connected pair, kernel vs ring ------------------------------------------------
SCENARIOS: dict[str, Callable[[Pair], list]] = {}


def scenario(fn):
    SCENARIOS[fn.__name__] = fn
    return fn


@scenario
def echo_both_ways(p: Pair) -> list:
    p.a.sendall(b"hello")
    p.b.sendall(b"world!")
    return [outcome(lambda: p.b.recv(5, stdsocket.MSG_WAITALL)),
            outcome(lambda: p.a.recv(6, stdsocket.MSG_WAITALL))]


@scenario
def recv_variants(p: Pair) -> list:
    p.a.sendall(b"0123456789abcdefghij")
    wait_readable(p.b, 20)
    buf = bytearray(8)
    out = [outcome(lambda: p.b.recv_into(buf, 3)), bytes(buf)]
    out.append(outcome(lambda: p.b.recvfrom(2)))
    buf2 = bytearray(4)
    out.append(outcome(lambda: p.b.recvfrom_into(buf2)))
    out.append(bytes(buf2))
    out.append(outcome(lambda: p.b.recvmsg(3, 64)))
    b1, b2 = bytearray(2), bytearray(3)
    out.append(outcome(lambda: p.b.recvmsg_into([b1, b2])))
    out.append((bytes(b1), bytes(b2)))
    out.append(outcome(lambda: p.b.recv(0)))
    out.append(outcome(lambda: p.b.recv(100)))
    return out


@scenario
def recv_argument_errors(p: Pair) -> list:
    return [outcome(lambda: p.b.recv(-1)),
            outcome(lambda: p.b.recv_into(bytearray(2), 5)),
            outcome(lambda: p.b.recv_into(bytearray(2), -1)),
            outcome(lambda: p.b.recv("x"))]


@scenario
def msg_peek(p: Pair) -> list:
    p.a.sendall(b"abcdef")
    wait_readable(p.b, 6)
    return [outcome(lambda: p.b.recv(2, stdsocket.MSG_PEEK)),
            outcome(lambda: p.b.recv(4, stdsocket.MSG_PEEK)),
            outcome(lambda: p.b.recv(3)),
            outcome(lambda: p.b.recv(10, stdsocket.MSG_PEEK)),
            outcome(lambda: p.b.recv(10))]


@scenario
def msg_dontwait(p: Pair) -> list:
    out = [outcome(lambda: p.b.recv(4, stdsocket.MSG_DONTWAIT))]
    p.a.sendall(b"xyz")
    wait_readable(p.b, 3)
    out.append(outcome(lambda: p.b.recv(4, stdsocket.MSG_DONTWAIT)))
    out.append(outcome(lambda: p.b.recv(4, stdsocket.MSG_DONTWAIT)))
    out.append(p.b.gettimeout())   # the flag does not change the mode
    return out


@scenario
def msg_waitall_collects_pieces(p: Pair) -> list:
    rng = random.Random(7)
    pieces = [rng.randbytes(rng.randint(1, 5000)) for _ in range(12)]
    join = in_thread(lambda: [p.a.sendall(x) for x in pieces])
    total = sum(map(len, pieces))
    # No timeout: with one, the kernel's MSG_WAITALL returns what is there.
    got = outcome(lambda: p.b.recv(total, stdsocket.MSG_WAITALL) == b"".join(pieces))
    join()
    return [got]


@scenario
def msg_waitall_stops_at_eof(p: Pair) -> list:
    p.a.sendall(b"abc")
    p.a.shutdown(stdsocket.SHUT_WR)
    return [outcome(lambda: p.b.recv(10, stdsocket.MSG_WAITALL)),
            outcome(lambda: p.b.recv(10, stdsocket.MSG_WAITALL))]


@scenario
def timeouts(p: Pair) -> list:
    out = [p.b.gettimeout(), p.b.timeout, p.b.getblocking()]
    p.b.settimeout(0.05)
    out += [p.b.gettimeout(), p.b.timeout, p.b.getblocking()]
    try:
        p.b.recv(1)
        out.append("no timeout")
    except TimeoutError as exc:
        out.append(("TimeoutError", str(exc), isinstance(exc, stdsocket.timeout)))
    out.append(outcome(lambda: p.b.recv_into(bytearray(1))))
    # With a timeout, socket.socket waits first: MSG_DONTWAIT does not make it EAGAIN.
    out.append(outcome(lambda: p.b.recv(1, stdsocket.MSG_DONTWAIT)))
    p.b.settimeout(2)
    out.append(p.b.gettimeout())
    out.append(outcome(lambda: p.b.settimeout(-1)))
    out.append(outcome(lambda: p.b.settimeout("x")))
    out.append(outcome(lambda: p.b.settimeout(float("nan"))))
    p.b.settimeout(None)
    out += [p.b.gettimeout(), p.b.getblocking()]
    return out


@scenario
def non_blocking(p: Pair) -> list:
    p.b.setblocking(False)
    out = [p.b.getblocking(), p.b.gettimeout(), p.b.timeout]
    out.append(outcome(lambda: p.b.recv(1)))
    out.append(outcome(lambda: p.b.recv_into(bytearray(3))))
    out.append(outcome(lambda: p.b.recvmsg(3)))
    p.a.sendall(b"q")
    p.b.setblocking(True)
    wait_readable(p.b)
    p.b.setblocking(False)
    out.append(outcome(lambda: p.b.recv(5)))
    p.b.setblocking(True)
    out += [p.b.getblocking(), p.b.gettimeout()]
    return out


@scenario
def send_until_full_then_timeout(p: Pair) -> list:
    chunk = b"z" * 65536
    p.a.setblocking(False)
    sent, full = 0, None
    while sent < (256 << 20):
        try:
            sent += p.a.send(chunk)
        except BlockingIOError as exc:
            full = ("BlockingIOError", exc.errno)
            break
    out = [full]
    out.append(outcome(lambda: p.a.sendall(chunk)))
    p.a.settimeout(0.05)
    out.append(outcome(lambda: p.a.send(chunk)))
    out.append(outcome(lambda: p.a.sendall(chunk)))
    out.append(outcome(lambda: p.a.send(chunk, stdsocket.MSG_DONTWAIT)))
    # Drain, then it works again.
    p.a.settimeout(None)
    p.b.settimeout(WAIT)
    got = 0
    while got < sent:
        got += len(p.b.recv(1 << 20))
    out.append(outcome(lambda: p.a.send(b"again")))
    return out


@scenario
def shutdown_wr(p: Pair) -> list:
    p.a.sendall(b"last")
    p.a.shutdown(stdsocket.SHUT_WR)
    return [outcome(lambda: p.b.recv(10, stdsocket.MSG_WAITALL)),
            outcome(lambda: p.b.recv(10)),
            outcome(lambda: p.b.recv(10)),
            outcome(lambda: p.a.send(b"x")),
            outcome(lambda: p.a.sendall(b"x")),
            outcome(lambda: p.a.sendmsg([b"x"])),
            outcome(lambda: p.b.sendall(b"back")),     # the other direction still works
            outcome(lambda: p.a.recv(4, stdsocket.MSG_WAITALL)),
            outcome(lambda: p.a.shutdown(stdsocket.SHUT_WR))]


@scenario
def shutdown_rd(p: Pair) -> list:
    p.b.sendall(b"queued")
    wait_readable(p.a, 6)
    p.a.shutdown(stdsocket.SHUT_RD)
    # What was queued is still read; then b"" at once, never a wait.
    out = [outcome(lambda: p.a.recv(10)), outcome(lambda: p.a.recv(10))]
    p.a.setblocking(False)
    out.append(outcome(lambda: p.a.recv(10)))
    out.append(outcome(lambda: p.a.send(b"ok")))    # writing is not affected
    out.append(outcome(lambda: p.b.recv(2, stdsocket.MSG_WAITALL)))
    return out


@scenario
def shutdown_rdwr_and_bad_how(p: Pair) -> list:
    out = [outcome(lambda: p.a.shutdown(7)), outcome(lambda: p.a.shutdown(-1))]
    out.append(outcome(lambda: p.a.shutdown(stdsocket.SHUT_RDWR)))
    out.append(outcome(lambda: p.b.recv(5)))
    out.append(outcome(lambda: p.a.recv(5)))
    out.append(outcome(lambda: p.a.send(b"x")))
    return out


@scenario
def close_with_dup_copies(p: Pair) -> list:
    a2 = p.a.dup()
    p.extra.append(a2)
    out = [a2.fileno() != p.a.fileno(), a2.family == p.a.family, a2.type == p.a.type]
    p.a.close()
    p.b.setblocking(False)
    out.append(outcome(lambda: p.b.recv(1)))       # no EOF: a copy is still open
    a2.sendall(b"from the copy")
    p.b.setblocking(True)
    out.append(outcome(lambda: p.b.recv(13, stdsocket.MSG_WAITALL)))
    a3 = a2.dup()
    p.extra.append(a3)
    a2.close()
    a3.sendall(b"3")
    out.append(outcome(lambda: p.b.recv(1)))
    a3.close()
    p.b.settimeout(WAIT)
    out.append(outcome(lambda: p.b.recv(1)))       # the last copy closed: EOF
    return out


@scenario
def detach_and_adopt(p: Pair) -> list:
    fd = p.a.detach()
    out = [fd >= 0, p.a.fileno(), outcome(lambda: p.a.send(b"x"))]
    a2 = p.mod.socket(fileno=fd)
    p.extra.append(a2)
    out.append(a2.fileno() == fd)
    out.append((a2.family, a2.type))
    a2.sendall(b"adopted")
    out.append(outcome(lambda: p.b.recv(7, stdsocket.MSG_WAITALL)))
    p.b.sendall(b"back")
    out.append(outcome(lambda: a2.recv(4, stdsocket.MSG_WAITALL)))
    a2.close()
    out.append(outcome(lambda: p.b.recv(1)))
    return out


@scenario
def closed_socket_errors(p: Pair) -> list:
    p.a.settimeout(3)
    p.a.close()
    a = p.a
    return [outcome(lambda: a.recv(1)), outcome(lambda: a.recv_into(bytearray(1))),
            outcome(lambda: a.send(b"x")), outcome(lambda: a.sendall(b"x")),
            outcome(a.fileno), outcome(a.getsockname), outcome(a.getpeername),
            outcome(lambda: a.shutdown(stdsocket.SHUT_RD)),
            outcome(lambda: a.settimeout(1)), outcome(a.gettimeout),
            outcome(lambda: a.setsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_KEEPALIVE, 1)),
            outcome(lambda: a.getsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_TYPE)),
            outcome(a.dup), outcome(a.detach), outcome(a.get_inheritable),
            outcome(lambda: a.connect(("127.0.0.1", 9))), outcome(a.close),
            "[closed]" in repr(a)]


@scenario
def connected_socket_misuse(p: Pair) -> list:
    addr = p.srv.getsockname()
    return [outcome(lambda: p.a.connect(addr)), outcome(lambda: p.a.connect_ex(addr)),
            outcome(lambda: p.a.listen()), outcome(p.a.accept),
            outcome(lambda: p.a.bind(("127.0.0.1", 0))),
            outcome(lambda: p.b.connect(addr))]


@scenario
def addresses(p: Pair) -> list:
    a, b, srv = p.a, p.b, p.srv
    return [a.getpeername() == srv.getsockname(), b.getsockname() == srv.getsockname(),
            b.getpeername() == a.getsockname(), p.accepted_addr == b.getpeername(),
            type(a.getsockname()), len(a.getsockname()), a.getsockname()[0],
            a.getsockname()[1] != 0]


def option_round_trip(sock, level: int, opt: int) -> list:
    return [outcome(lambda: sock.setsockopt(level, opt, 5)),
            outcome(lambda: sock.getsockopt(level, opt)),
            outcome(lambda: sock.getsockopt(level, opt, 4)),
            outcome(lambda: sock.setsockopt(level, opt, b"\0\0\0\0")),
            outcome(lambda: sock.getsockopt(level, opt))]


@scenario
def socket_options(p: Pair) -> list:
    SOL, TCP = stdsocket.SOL_SOCKET, stdsocket.IPPROTO_TCP
    a = p.a
    out = [outcome(lambda o=o: a.getsockopt(SOL, o)) for o in (
        stdsocket.SO_TYPE, stdsocket.SO_ERROR, stdsocket.SO_KEEPALIVE, stdsocket.SO_REUSEADDR,
        stdsocket.SO_REUSEPORT, stdsocket.SO_ACCEPTCONN, stdsocket.SO_DOMAIN,
        stdsocket.SO_PROTOCOL)]
    out.append(outcome(lambda: a.getsockopt(TCP, stdsocket.TCP_NODELAY)))
    for level, opt in ((SOL, stdsocket.SO_KEEPALIVE), (SOL, stdsocket.SO_REUSEADDR),
                       (SOL, stdsocket.SO_REUSEPORT), (TCP, stdsocket.TCP_NODELAY)):
        out += option_round_trip(a, level, opt)
    out.append(outcome(lambda: a.getsockopt(SOL, 9999)))
    out.append(outcome(lambda: a.setsockopt(SOL, 9999, 1)))
    out.append(outcome(lambda: a.setsockopt(SOL, stdsocket.SO_KEEPALIVE, "x")))
    out.append(outcome(lambda: a.setsockopt(SOL, stdsocket.SO_KEEPALIVE, None, 4)))
    out.append(outcome(lambda: a.getsockopt(SOL, stdsocket.SO_KEEPALIVE, 0)))
    out.append(outcome(lambda: a.setsockopt(SOL, stdsocket.SO_LINGER, b"\1\0\0\0\5\0\0\0")))
    out.append(outcome(lambda: a.getsockopt(SOL, stdsocket.SO_LINGER, 8)))
    out.append(isinstance(a.getsockopt(SOL, stdsocket.SO_RCVBUF), int))
    out.append(len(a.getsockopt(SOL, stdsocket.SO_SNDBUF, 4)))
    out.append(outcome(lambda: a.setsockopt(SOL, stdsocket.SO_RCVBUF, 65536)))
    return out


@scenario
def descriptor_flags_and_attributes(p: Pair) -> list:
    a = p.a
    out = [a.get_inheritable(), a.family, a.type, a.proto, p.b.family, p.b.type, p.b.proto]
    a.set_inheritable(True)
    out.append(a.get_inheritable())
    a.set_inheritable(False)
    out.append(a.get_inheritable())
    out.append(isinstance(a, stdsocket.socket))
    out.append(outcome(lambda: __import__("pickle").dumps(a)))
    r = repr(a)
    out.append((r.startswith("<"), "laddr=" in r, "raddr=" in r, f"fd={a.fileno()}" in r))
    return out


@scenario
def context_manager(p: Pair) -> list:
    with p.a as s:
        same = s is p.a
        s.sendall(b"in with")
    out = [same, p.a._closed, p.a.fileno()]
    p.b.settimeout(WAIT)
    out.append(outcome(lambda: p.b.recv(7, stdsocket.MSG_WAITALL)))
    out.append(outcome(lambda: p.b.recv(1)))
    return out


@scenario
def makefile_binary_and_text(p: Pair) -> list:
    w = p.a.makefile("wb")
    r = p.b.makefile("rb")
    w.write(b"line one\nline two\n")
    w.write(b"tail")
    w.flush()
    out = [r.readline(), r.readline(), r.read(2)]
    tw = p.b.makefile("w", encoding="utf-8", newline="")
    tr = p.a.makefile("r", encoding="utf-8", newline="")
    tw.write("héllo\nwörld\n")
    tw.flush()
    out += [tr.readline(), tr.readline()]
    rw = p.a.makefile("rwb", buffering=0)
    rw.write(b"raw")
    out.append(r.read(5))          # "il" + "raw"
    w.close()
    tw.close()
    p.a.close()                     # the files still hold the sockets open
    rw.write(b"!")
    out.append(r.read(1))
    rw.close()
    tr.close()
    out.append(outcome(lambda: r.read()))   # every reference gone: EOF
    r.close()
    out.append(isinstance(tr, io.TextIOBase))
    return out


@scenario
def sendfile_and_sendmsg(p: Pair) -> list:
    data = random.Random(3).randbytes(300_000)
    f = io.BytesIO(data)
    f.mode = "rb"
    out = []
    join = in_thread(lambda: p.b.recv(len(data) - 1000, stdsocket.MSG_WAITALL))
    import tempfile
    with tempfile.TemporaryFile() as tf:
        tf.write(data)
        tf.flush()
        out.append(outcome(lambda: p.a.sendfile(tf, 1000)))
        out.append(tf.tell())
    out.append(join() == data[1000:])
    with tempfile.TemporaryFile() as tf:
        tf.write(data)
        tf.flush()
        out.append(outcome(lambda: p.a.sendfile(tf, 10, 50)))
        out.append(tf.tell())
    out.append(p.b.recv(50, stdsocket.MSG_WAITALL) == data[10:60])
    out.append(outcome(lambda: p.a.sendmsg([b"ab", memoryview(b"cd"), bytearray(b"e")])))
    out.append(outcome(lambda: p.a.sendto(b"fg", ("127.0.0.1", 9))))
    out.append(outcome(lambda: p.a.sendto(b"h", 0, ("127.0.0.1", 9))))
    out.append(outcome(lambda: p.b.recv(8, stdsocket.MSG_WAITALL)))
    return out


@scenario
def peer_closed(p: Pair) -> list:
    p.a.sendall(b"bye")
    p.a.close()
    p.b.settimeout(WAIT)
    return [outcome(lambda: p.b.recv(10, stdsocket.MSG_WAITALL)), outcome(lambda: p.b.recv(1)),
            outcome(lambda: p.b.recv(1))]


@scenario
def large_transfer_random_sizes(p: Pair) -> list:
    rng = random.Random(11)
    data = rng.randbytes(4 << 20)

    def send() -> None:
        view = memoryview(data)
        off = 0
        srng = random.Random(12)
        while off < len(data):
            n = min(len(data) - off, max(1, int(2 ** srng.uniform(0, 18))))
            if srng.random() < 0.5:
                p.a.sendall(view[off:off + n])
                off += n
            else:
                off += p.a.send(view[off:off + n])
        p.a.shutdown(stdsocket.SHUT_WR)

    join = in_thread(send)
    p.b.settimeout(WAIT)
    chunks, buf = [], bytearray(1 << 18)
    while True:
        n = rng.randint(1, 1 << 18)
        if rng.random() < 0.5:
            piece = p.b.recv(n)
        else:
            k = p.b.recv_into(buf, n)
            piece = bytes(buf[:k])
        if not piece:
            break
        chunks.append(piece)
    join()
    return [b"".join(chunks) == data]


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_same_outcome_as_kernel(name):
    results = {}
    for kind in ("kernel", "ring"):
        with pair(kind) as p:
            results[kind] = SCENARIOS[name](p)
    assert results["ring"] == results["kernel"]


# -- the scenarios are able to fail: each finds a planted difference ------------------------------
def test_comparison_catches_a_wrong_errno(monkeypatch):
    """A ring socket that reports EAGAIN with another errno is caught by the comparison."""
    real = sdsocket._eagain
    monkeypatch.setattr(sdsocket, "_eagain", lambda: BlockingIOError(errno.EWOULDBLOCK + 1, ""))
    results = {}
    for kind in ("kernel", "ring"):
        with pair(kind) as p:
            results[kind] = SCENARIOS["msg_dontwait"](p)
    monkeypatch.setattr(sdsocket, "_eagain", real)
    assert results["ring"] != results["kernel"]


# -- where rings differ on purpose ----------------------------------------------------------------
def test_ring_refuses_ancillary_data_and_unknown_flags():
    with pair("ring") as p:
        with pytest.raises(OSError) as info:
            # SCM_RIGHTS travels on AF_UNIX (tests/test_scm_rights.py) and TCP
            # ignores it; other SOL_SOCKET items are refused.
            p.a.sendmsg([b"x"], [(stdsocket.SOL_SOCKET, 99, memoryview(b"\0\0\0\0"))])
        assert info.value.errno == errno.EOPNOTSUPP
        assert "ancillary" in str(info.value)
        with pytest.raises(OSError) as info:
            p.a.send(b"x", stdsocket.MSG_OOB)
        assert info.value.errno == errno.EOPNOTSUPP
        with pytest.raises(OSError) as info:
            p.b.recv(1, stdsocket.MSG_OOB)
        assert info.value.errno == errno.EOPNOTSUPP
        with pytest.raises(OSError) as info:
            p.a.sendmsg_afalg([b"x"], op=0)
        assert info.value.errno == errno.EOPNOTSUPP
        # Nothing was sent by the refused calls.
        p.b.setblocking(False)
        with pytest.raises(BlockingIOError):
            p.b.recv(1)


def _sends_after_peer_close(p) -> list:
    """The peer closes; then send(b"x"), send(b"y"), sendall(b""): each one's result or errno."""
    p.b.close()
    assert p.a.recv(1) == b""       # the close has arrived (EOF), on either transport
    out = []
    for call in (lambda: p.a.send(b"x"), lambda: p.a.send(b"y"), lambda: p.a.sendall(b"")):
        try:
            out.append(call())
        except OSError as exc:
            out.append(errno.errorcode[exc.errno])
    # (TCP over loopback: the peer's reset is delivered within the first send's call.)
    return out


@pytest.mark.parametrize("family", ["inet", "unix"])
def test_send_to_a_closed_peer_like_the_kernel(family, tmp_path):
    """TCP lets one send through (the peer answers it with RST) and fails the next with
    EPIPE; AF_UNIX fails at once. Sending nothing fails once the reset came."""
    with pair("kernel", family, tmp_path) as k:
        want = _sends_after_peer_close(k)
    with pair("ring", family, tmp_path) as r:
        assert _sends_after_peer_close(r) == want
    assert want == ([1, "EPIPE", "EPIPE"] if family == "inet" else ["EPIPE"] * 3)


def test_ring_transport_and_repr():
    with pair("ring") as p:
        assert p.srv.transport == "listener"
        assert impl.transport_of(p.a) == "ring"
        assert impl.transport_of(stdsocket.socket) == "kernel"
        assert "transport=ring" in repr(p.a)
        assert "transport=listener" in repr(p.srv)
        assert repr(p.a).startswith("<impl.socket fd=")
    plain = impl.socket()
    try:
        assert plain.transport == "kernel"
        assert repr(plain).startswith("<impl.socket fd=")
    finally:
        plain.close()
    assert "[closed]" in repr(plain)


def test_fromfd_of_a_ring_socket_shares_the_connection():
    with pair("ring") as p:
        c = impl.fromfd(p.a.fileno(), p.a.family, p.a.type)
        p.extra.append(c)
        assert c.transport == "ring" and c.fileno() != p.a.fileno()
        c.sendall(b"via fromfd")
        assert p.b.recv(10, stdsocket.MSG_WAITALL) == b"via fromfd"
        p.a.close()
        c.sendall(b"!")
        assert p.b.recv(1) == b"!"
        c.close()
        p.b.settimeout(WAIT)
        assert p.b.recv(1) == b""


def test_socket_of_an_open_ring_sockets_number_then_detach():
    """http.client's tunnel pattern: socket(fileno=response.fileno()), use it, detach() it.

    detach() gives the number back still open, as the kernel's does, and
    the original socket goes on working; nothing is left behind.
    """
    fds = set(os.listdir("/proc/self/fd"))
    with pair("ring") as p:
        alias = impl.socket(fileno=p.a.fileno())
        assert alias.transport == "ring" and alias.family == p.a.family
        alias.sendall(b"tunnelled")
        assert p.b.recv(9, stdsocket.MSG_WAITALL) == b"tunnelled"
        assert alias.detach() == p.a.fileno() and alias.fileno() == -1
        p.a.sendall(b"!")
        assert p.b.recv(1) == b"!"
        other = impl.socket(fileno=p.a.fileno())
        other.close()                 # closes its own hold, not the connection
        p.b.sendall(b"?")
        assert p.a.recv(1) == b"?"
        p.a.close()
        p.b.settimeout(WAIT)
        assert p.b.recv(1) == b"", "a hold on the connection was left behind"
    assert set(os.listdir("/proc/self/fd")) == fds


def test_socket_of_the_number_of_a_closed_socket_whose_file_is_open():
    """http.client closes its connection before the tunnel: its makefile() keeps it open."""
    with pair("ring") as p:
        f = p.a.makefile("rb")
        fd = f.fileno()
        p.a.close()                   # deferred while the file is open
        alias = impl.socket(fileno=fd)
        alias.sendall(b"x")
        assert p.b.recv(1) == b"x"
        assert alias.detach() == fd
        f.close()
        p.b.settimeout(WAIT)
        assert p.b.recv(1) == b""


def test_listener_dup_and_detach():
    srv = impl.create_server(("127.0.0.1", 0))
    try:
        copy = srv.dup()
        assert copy.transport == "listener"
        srv.close()
        c = impl.create_connection(copy.getsockname(), timeout=WAIT)
        conn, _ = copy.accept()
        assert c.transport == conn.transport == "ring"
        c.close()
        conn.close()
        fd = copy.detach()
        again = impl.socket(fileno=fd)
        assert again.transport == "listener"
        c = impl.create_connection(again.getsockname(), timeout=WAIT)
        again.settimeout(WAIT)
        conn, _ = again.accept()
        assert conn.transport == "ring"
        c.close()
        conn.close()
        again.close()
    finally:
        srv.close()


# -- unconnected sockets and listeners, impl vs stdlib --------------------------------------------
def unconnected_and_listener_errors(mod) -> list:
    lst = mod.create_server(("127.0.0.1", 0))
    fresh = mod.socket()
    try:
        if mod is impl:
            assert lst.transport == "listener"
        SOL = stdsocket.SOL_SOCKET
        return [
            outcome(lambda: fresh.recv(1)), outcome(lambda: fresh.send(b"x")),
            outcome(fresh.getpeername), outcome(lambda: fresh.shutdown(stdsocket.SHUT_RD)),
            outcome(lambda: lst.send(b"x")), outcome(lambda: lst.sendall(b"x")),
            outcome(lambda: lst.recv(1)), outcome(lambda: lst.recv_into(bytearray(1))),
            outcome(lambda: lst.sendto(b"x", ("127.0.0.1", 9))),
            outcome(lst.getpeername), outcome(lambda: lst.bind(("127.0.0.1", 0))),
            outcome(lambda: lst.getsockopt(SOL, stdsocket.SO_ACCEPTCONN)),
            outcome(lambda: lst.getsockopt(SOL, stdsocket.SO_TYPE)),
            outcome(lambda: lst.getsockopt(SOL, stdsocket.SO_REUSEADDR)),
            outcome(lambda: lst.shutdown(stdsocket.SHUT_WR)),
            outcome(lambda: lst.listen(5)),
            lst.getsockname()[0], lst.getsockname()[1] > 0, lst.gettimeout(),
        ]
    finally:
        lst.close()
        fresh.close()


def test_unconnected_and_listener_errors_match_kernel():
    assert unconnected_and_listener_errors(impl) == unconnected_and_listener_errors(stdsocket)


def test_non_blocking_accept_and_accept_timeout_match_kernel():
    results = {}
    for name, mod in (("kernel", stdsocket), ("ring", impl)):
        lst = mod.create_server(("127.0.0.1", 0))
        try:
            lst.setblocking(False)
            out = [outcome(lst.accept)]
            lst.settimeout(0.05)
            out.append(outcome(lst.accept))
            out.append(lst.gettimeout())
            results[name] = out
        finally:
            lst.close()
    assert results["ring"] == results["kernel"]


def test_listener_shutdown_stops_listening_like_the_kernel():
    def run(mod) -> list:
        lst = mod.create_server(("127.0.0.1", 0))
        addr = lst.getsockname()
        try:
            out = [outcome(lambda: lst.shutdown(stdsocket.SHUT_RDWR))]
            with mod.socket() as c:
                c.settimeout(WAIT)
                out.append(outcome(lambda: c.connect(addr)))
            lst.setblocking(False)
            out.append(outcome(lst.accept))
            return out
        finally:
            lst.close()

    assert run(impl) == run(stdsocket)


BAD_ADDRESSES = [
    (stdsocket.AF_INET, "x"), (stdsocket.AF_INET, ("127.0.0.1",)), (stdsocket.AF_INET, (1, 80)),
    (stdsocket.AF_INET, ("127.0.0.1", "x")), (stdsocket.AF_INET, ("127.0.0.1", 70000)),
    (stdsocket.AF_INET, ("127.0.0.1", -1)), (stdsocket.AF_INET, ("127.0.0.1", 80, 1)),
    (stdsocket.AF_INET, ("no.such.host.invalid", 80)), (stdsocket.AF_INET, None),
    (stdsocket.AF_INET6, ("127.0.0.1", 80)), (stdsocket.AF_INET6, ("::1",)),
    (stdsocket.AF_INET6, ("::1", 1, 2, 3, 4)), (stdsocket.AF_INET6, ("::1", 2.5)),
    (stdsocket.AF_UNIX, ("::1", 1)), (stdsocket.AF_UNIX, 5), (stdsocket.AF_UNIX, None),
    (stdsocket.AF_UNIX, "/" + "x" * 200), (stdsocket.AF_UNIX, "/nonexistent/sd/x"),
    (stdsocket.AF_UNIX, "\0sdtest-nobody-listens-here"),
]


@pytest.mark.parametrize("family,address", BAD_ADDRESSES,
                         ids=[f"{f.name}-{a!r:.30}" for f, a in BAD_ADDRESSES])
def test_bad_or_dead_address_like_the_kernel(family, address):
    results = {}
    for name, mod in (("kernel", stdsocket), ("ring", impl)):
        with mod.socket(family, stdsocket.SOCK_STREAM) as s:
            s.settimeout(WAIT)
            results[name] = [outcome(lambda: s.connect(address))]
            # connect_ex raises what connect raises, except errors with an errno.
            with mod.socket(family, stdsocket.SOCK_STREAM) as s2:
                s2.settimeout(WAIT)
                results[name].append(outcome(lambda: s2.connect_ex(address)))
    assert results["ring"] == results["kernel"]


def test_bad_address_shapes_to_a_live_listener_like_the_kernel():
    """Malformed addresses naming a port that a ring listener owns: the kernel's TypeError."""
    for family, host in ((stdsocket.AF_INET, "127.0.0.1"), (stdsocket.AF_INET6, "::1")):
        srv = impl.create_server((host, 0), family=family)
        port = srv.getsockname()[1]
        try:
            bad = [(host, port, 0), (host, port, 0, 0, 0), (host, float(port)), (host, str(port)),
                   [host, port], (host.encode(), port)]
            results = {}
            for name, mod in (("kernel", stdsocket), ("ring", impl)):
                results[name] = []
                for addr in bad:
                    with mod.socket(family) as s:
                        s.settimeout(WAIT)
                        results[name].append(outcome(lambda s=s, addr=addr: s.connect(addr)))
                        results[name].append(s.getsockname()[1] != 0)   # connected or not
            assert results["ring"] == results["kernel"]
            # A good one gets a ring (the bytes host is the kernel's too).
            with impl.socket(family) as s:
                s.settimeout(WAIT)
                s.connect((host, port))
                assert s.transport == "ring"
        finally:
            srv.close()


# -- families -------------------------------------------------------------------------------------
FAMILIES = ["inet", "inet6", "unix", "abstract"]


def _shape(p: Pair) -> dict:
    a, b, srv = p.a, p.b, p.srv
    p.a.sendall(b"ping")
    got = p.b.recv(4, stdsocket.MSG_WAITALL)
    return {
        "data": got,
        "a_name": (type(a.getsockname()).__name__, a.getsockname() == "" or
                   (isinstance(a.getsockname(), tuple) and len(a.getsockname()))),
        "a_peer_is_srv": a.getpeername() == srv.getsockname(),
        "b_name_is_srv": b.getsockname() == srv.getsockname(),
        "b_peer_is_a": b.getpeername() == a.getsockname(),
        "accept_addr": p.accepted_addr == b.getpeername(),
        "srv_name_type": type(srv.getsockname()).__name__,
        "families": (a.family, b.family, srv.family),
    }


@pytest.mark.parametrize("family", FAMILIES)
def test_families_get_rings_with_kernel_addresses(family, tmp_path):
    shapes = {}
    for kind in ("kernel", "ring"):
        with pair(kind, family, tmp_path) as p:
            if kind == "ring":
                assert p.a.transport == p.b.transport == "ring"
                assert p.srv.transport == "listener"
            shapes[kind] = _shape(p)
    assert shapes["ring"] == shapes["kernel"]


def test_relative_unix_path_is_the_kernel_file(tmp_path, monkeypatch):
    """A relative name is resolved where the client stands, as the kernel does."""
    monkeypatch.chdir(tmp_path)
    srv = impl.socket(stdsocket.AF_UNIX)
    srv.bind(str(tmp_path / "abs.sock"))
    srv.listen()
    try:
        c = impl.socket(stdsocket.AF_UNIX)
        c.settimeout(WAIT)
        c.connect("abs.sock")
        conn, _ = srv.accept()
        assert c.transport == conn.transport == "ring"
        c.sendall(b"x")
        assert conn.recv(1) == b"x"
        c.close()
        conn.close()
        (tmp_path / "sub").mkdir()
        monkeypatch.chdir(tmp_path / "sub")
        c = impl.socket(stdsocket.AF_UNIX)
        with pytest.raises(FileNotFoundError):
            c.connect("abs.sock")       # another file: the kernel says it does not exist
        c.close()
        # A relative name that is short only relative: the kernel's connection.
        deep = tmp_path / "sub" / ("d" * 60) / ("e" * 60)
        deep.mkdir(parents=True)
        monkeypatch.chdir(deep)
        k = stdsocket.socket(stdsocket.AF_UNIX)
        k.bind("k.sock")
        k.listen()
        with k, impl.socket(stdsocket.AF_UNIX) as c:
            c.settimeout(WAIT)
            c.connect("k.sock")
            assert c.transport == "kernel"
            conn, _ = k.accept()
            conn.close()
    finally:
        srv.close()


# -- kernel fallback ------------------------------------------------------------------------------
def test_impl_client_to_kernel_listener_is_a_kernel_connection():
    lst = stdsocket.create_server(("127.0.0.1", 0))
    try:
        c = impl.socket()
        c.connect(lst.getsockname())
        conn, addr = lst.accept()
        assert c.transport == "kernel"
        assert addr == c.getsockname()
        c.sendall(b"to kernel")
        assert conn.recv(9, stdsocket.MSG_WAITALL) == b"to kernel"
        conn.sendall(b"back")
        assert c.recv(4, stdsocket.MSG_WAITALL) == b"back"
        # Still the kernel's after: connect again is its EISCONN.
        with pytest.raises(OSError) as info:
            c.connect(lst.getsockname())
        assert info.value.errno == errno.EISCONN
        c.close()
        conn.close()
    finally:
        lst.close()


def test_stdlib_client_to_impl_listener_comes_out_of_accept(tmp_path):
    for family in ("inet", "inet6", "unix"):
        fam, addr = bind_address(family, tmp_path)
        lst = impl.socket(fam)
        lst.bind(addr)
        lst.listen()
        try:
            assert lst.transport == "listener"
            k = stdsocket.socket(fam)
            k.settimeout(WAIT)
            k.connect(lst.getsockname())
            lst.settimeout(WAIT)
            conn, peer = lst.accept()
            assert conn.transport == "kernel" and isinstance(conn, impl.socket)
            assert peer == k.getsockname()
            k.sendall(b"k")
            assert conn.recv(1) == b"k"
            k.close()
            conn.close()
        finally:
            lst.close()


def test_connect_to_nothing_is_refused():
    lst = impl.create_server(("127.0.0.1", 0))
    addr = lst.getsockname()
    lst.close()
    c = impl.socket()
    try:
        with pytest.raises(ConnectionRefusedError):
            c.connect(addr)
    finally:
        c.close()
    with pytest.raises(ConnectionRefusedError):
        impl.create_connection(addr, timeout=WAIT)


def test_non_local_address_skips_the_monitor(monitor, monkeypatch):
    def no_monitor(*a, **k):
        raise AssertionError("the monitor was asked about a non-local address")

    before = monitor.status()["counters"]
    monkeypatch.setattr(monclient, "channel", no_monitor)
    results = {}
    for name, mod in (("kernel", stdsocket), ("ring", impl)):
        with mod.socket() as s:
            s.setblocking(False)
            results[name] = outcome(lambda: s.connect_ex(("192.0.2.1", 9)))
            if mod is impl:
                assert s.transport == "kernel"
    assert results["ring"] == results["kernel"]
    monkeypatch.undo()
    after = monitor.status()["counters"]
    assert after["kernel_fallbacks"] == before["kernel_fallbacks"]


def test_denied_connect_is_refused_and_not_sent_to_the_kernel(tmp_path):
    from tests.monitor_util import running_monitor
    acl = ('default = "allow"\n[[rule]]\nname = "no-port"\naction = "deny"\n'
           'direction = "connect"\nport = PORT\n')
    lst = impl.create_server(("127.0.0.1", 0))
    port = lst.getsockname()[1]
    lst.close()
    with running_monitor(acl_text=acl.replace("PORT", str(port))) as mon:
        srv = impl.socket()
        srv.setsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_REUSEADDR, 1)
        srv.bind(("127.0.0.1", port))
        srv.listen()
        try:
            c = impl.socket()
            with pytest.raises(ConnectionRefusedError):
                c.connect(("127.0.0.1", port))
            assert c.connect_ex(("127.0.0.1", port)) == errno.ECONNREFUSED
            c.close()
            srv.setblocking(False)
            with pytest.raises(BlockingIOError):
                srv.accept()      # nothing reached the kernel listener either
            assert mon.status()["counters"]["denied"] == 2
        finally:
            srv.close()


def test_denied_listen_is_permission_error_and_leaves_no_listener():
    from tests.monitor_util import running_monitor
    acl = 'default = "allow"\n[[rule]]\nname = "no-listen"\naction = "deny"\ndirection = "listen"\n'
    with running_monitor(acl_text=acl) as mon:
        srv = impl.socket()
        srv.bind(("127.0.0.1", 0))
        addr = srv.getsockname()
        try:
            with pytest.raises(PermissionError):
                srv.listen()
            assert srv.transport == "kernel"
            with stdsocket.socket() as k:    # nor does the kernel socket take connections
                assert k.connect_ex(addr) == errno.ECONNREFUSED
            assert mon.status()["listeners"] == []
        finally:
            srv.close()


# -- buffer sizes ---------------------------------------------------------------------------------
def test_buffer_options_before_connect_and_listen_size_the_rings():
    big_rcv, big_snd = 1 << 20, 3 << 19
    srv = impl.socket()
    srv.setsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_RCVBUF, big_snd)   # client -> server
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    c = impl.socket()
    c.setsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_RCVBUF, big_rcv)     # server -> client
    try:
        c.settimeout(WAIT)
        c.connect(srv.getsockname())
        conn, _ = srv.accept()
        assert c.transport == "ring"
        assert c.getsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_RCVBUF) == big_rcv
        assert conn.getsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_SNDBUF) == big_rcv
        assert conn.getsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_RCVBUF) == big_snd
        assert c.getsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_SNDBUF) == big_snd
        # The size is real: exactly that much fits without a reader.
        c.setblocking(False)
        c.sendall(b"x" * big_snd)
        with pytest.raises(BlockingIOError):
            c.send(b"y")
        conn.setblocking(False)
        conn.sendall(b"z" * big_rcv)
        with pytest.raises(BlockingIOError):
            conn.send(b"y")
        conn.close()
        c.close()
    finally:
        srv.close()


# -- socketpair, create_connection, create_server -------------------------------------------------
def test_socketpair_in_one_process():
    a, b = impl.socketpair()
    try:
        assert a.transport == b.transport == "ring"
        assert (a.family, a.type) == (stdsocket.AF_UNIX, stdsocket.SOCK_STREAM)
        k1, k2 = stdsocket.socketpair()
        with k1, k2:
            assert (a.getsockname(), a.getpeername()) == (k1.getsockname(), k1.getpeername())
        a.sendall(b"one")
        assert b.recv(3, stdsocket.MSG_WAITALL) == b"one"
        b.sendall(b"two")
        assert a.recv(3, stdsocket.MSG_WAITALL) == b"two"
        a.close()
        b.settimeout(WAIT)
        assert b.recv(1) == b""
        with pytest.raises(BrokenPipeError):
            b.send(b"x")
    finally:
        a.close()
        b.close()
    # Other kinds are the kernel's.
    d1, d2 = impl.socketpair(stdsocket.AF_UNIX, stdsocket.SOCK_DGRAM)
    with d1, d2:
        assert d1.transport == "kernel" and isinstance(d1, impl.socket)
        d1.send(b"dgram")
        assert d2.recv(10) == b"dgram"


def test_create_connection_arguments():
    srv = impl.create_server(("127.0.0.1", 0))
    try:
        addr = srv.getsockname()
        c = impl.create_connection(addr, timeout=7.5)
        assert c.transport == "ring" and c.gettimeout() == 7.5
        c.close()
        srv.accept()[0].close()
        # source_address: the local address is the one asked for.
        probe = stdsocket.socket()
        probe.bind(("127.0.0.1", 0))
        src = probe.getsockname()
        probe.close()
        c = impl.create_connection(addr, timeout=WAIT, source_address=src)
        conn, peer = srv.accept()
        assert c.getsockname() == src and peer == src and conn.getpeername() == src
        c.close()
        conn.close()
    finally:
        srv.close()
    # all_errors: an ExceptionGroup of every attempt, else the error itself.
    with pytest.raises(ConnectionRefusedError):
        impl.create_connection(addr, timeout=WAIT)
    with pytest.raises(ExceptionGroup) as info:
        impl.create_connection(addr, timeout=WAIT, all_errors=True)
    assert all(isinstance(e, ConnectionRefusedError) for e in info.value.exceptions)


@pytest.mark.skipif(not stdsocket.has_dualstack_ipv6(), reason="no dual-stack IPv6 here")
def test_create_server_dualstack():
    srv = impl.create_server(("::", 0), family=stdsocket.AF_INET6, dualstack_ipv6=True)
    try:
        port = srv.getsockname()[1]
        assert srv.getsockopt(stdsocket.IPPROTO_IPV6, stdsocket.IPV6_V6ONLY) == 0
        c6 = impl.create_connection(("::1", port), timeout=WAIT)
        conn6, _ = srv.accept()
        c4 = impl.create_connection(("127.0.0.1", port), timeout=WAIT)
        srv.settimeout(WAIT)
        conn4, peer4 = srv.accept()
        assert c6.transport == "ring"
        assert c4.transport == "kernel"          # an IPv4 client reaches it through the kernel
        assert peer4[0] == "::ffff:127.0.0.1"
        for c, conn in ((c6, conn6), (c4, conn4)):
            c.sendall(b"dual")
            assert conn.recv(4, stdsocket.MSG_WAITALL) == b"dual"
            c.close()
            conn.close()
    finally:
        srv.close()
    with pytest.raises(ValueError):
        impl.create_server(("127.0.0.1", 0), dualstack_ipv6=True)


def test_create_server_reuse_port():
    s1 = impl.create_server(("127.0.0.1", 0), reuse_port=True)
    try:
        port = s1.getsockname()[1]
        s2 = impl.create_server(("127.0.0.1", port), reuse_port=True)
        try:
            assert s2.getsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_REUSEPORT) == 1
            accepted = 0
            clients = [impl.create_connection(("127.0.0.1", port), timeout=WAIT)
                       for _ in range(6)]
            for s in (s1, s2):
                s.setblocking(False)
                while True:
                    try:
                        conn, _ = s.accept()
                    except BlockingIOError:
                        break
                    accepted += 1
                    conn.close()
            for c in clients:
                c.close()
            assert accepted == len(clients)
        finally:
            s2.close()
    finally:
        s1.close()


def test_create_server_port_in_use_is_the_kernels():
    s1 = impl.create_server(("127.0.0.1", 0))
    try:
        with pytest.raises(OSError) as info:
            impl.create_server(s1.getsockname())
        with pytest.raises(OSError) as kinfo:
            stdsocket.create_server(s1.getsockname())
        assert info.value.errno == kinfo.value.errno == errno.EADDRINUSE
    finally:
        s1.close()


def test_stale_close_never_reaches_a_restarted_monitor(monkeypatch):
    """CLOSE names a connection id; a new monitor's ids start again, so it must not get ours."""
    with pair("ring") as p:
        sent = []
        chan = monclient.current()
        assert chan is not None
        monkeypatch.setattr(chan, "notify", lambda op, body: sent.append((op, body)))
        conn = p.a._conn
        conn.monitor += 1            # as if set up by a monitor that has since been replaced
        p.a.close()
        assert sent == []
        p.b.close()
        assert [op for op, _ in sent] == [P.CLOSE]
        assert sent[0][1]["end"] in ("client", "server")


# -- nothing leaks --------------------------------------------------------------------------------
def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def one_of_everything() -> None:
    srv = impl.create_server(("127.0.0.1", 0))
    c = impl.create_connection(srv.getsockname(), timeout=WAIT)
    conn, _ = srv.accept()
    c.fileno()
    copy = conn.dup()
    again = impl.socket(fileno=copy.detach())
    c.sendall(b"x")
    assert again.recv(1) == b"x"
    for s in (c, conn, again):
        s.close()
    lst2 = srv.dup()
    srv.close()
    lst2.close()
    a, b = impl.socketpair()
    a.close()
    b.close()


def test_no_descriptor_or_table_leaks(monitor):
    one_of_everything()            # the process channel and caches, once
    before = open_fds()
    monclient.current().request(P.PING)
    old_conns = {c["id"] for c in monitor.status()["connections"]}
    old_listeners = {tuple(x["address"]) for x in monitor.status()["listeners"]}
    for _ in range(30):
        one_of_everything()
    assert open_fds() == before
    # CLOSE is one-way; a PING on the same channel orders it before the status.
    monclient.current().request(P.PING)
    status = monitor.status()
    assert [c for c in status["connections"] if c["id"] not in old_conns] == []
    assert {tuple(x["address"]) for x in status["listeners"]} <= old_listeners


@pytest.mark.parametrize("timeout", [None, 0.0])
def test_listen_without_a_monitor_keeps_the_kernel_blocking_mode(monkeypatch, timeout):
    """No monitor: the listener stays the kernel's, blocking exactly as its timeout says.

    The listener's copy of the descriptor shares O_NONBLOCK with it; a
    failed registration must not leave it set (a blocking accept() would
    raise EAGAIN), nor clear it on a non-blocking socket.
    """
    monkeypatch.setattr(monclient, "open_listener_channel", lambda: None)
    with impl.socket() as srv:
        srv.settimeout(timeout)
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        assert srv.transport == "kernel"
        assert srv.gettimeout() == timeout
        assert os.get_blocking(srv.fileno()) is (timeout is None)
        if timeout is None:
            done = []
            t = threading.Thread(target=lambda: done.append(srv.accept()), daemon=True)
            t.start()
            with stdsocket.create_connection(srv.getsockname(), timeout=WAIT):
                t.join(WAIT)
            assert done and done[0][0].transport == "kernel"
            done[0][0].close()


def test_another_thread_waits_for_a_ring_connect_in_progress(monitor, monkeypatch):
    """The listener's accept() can return before connect() has its rings (the monitor tells
    both at once). A thread that uses the client socket then -- CPython's TCPCloserTest
    does -- must wait for the connect, not act on the unconnected kernel socket (ENOTCONN)."""
    in_window, waiting = threading.Event(), threading.Event()
    become_ring = sdsocket.socket._become_ring
    meanwhile = sdsocket.socket._connected_meanwhile

    def gated_become_ring(self, conn):
        in_window.set()
        assert waiting.wait(WAIT), "the other thread never waited for the connect"
        become_ring(self, conn)

    def noted_meanwhile(self):
        waiting.set()
        return meanwhile(self)

    monkeypatch.setattr(sdsocket.socket, "_become_ring", gated_become_ring)
    monkeypatch.setattr(sdsocket.socket, "_connected_meanwhile", noted_meanwhile)
    with impl.create_server(("127.0.0.1", 0)) as srv:
        cli = impl.socket(stdsocket.AF_INET, stdsocket.SOCK_STREAM)
        with cli:
            cli.settimeout(WAIT)
            done = in_thread(lambda: cli.connect(srv.getsockname()))
            assert in_window.wait(WAIT)
            srv.settimeout(WAIT)
            conn, _ = srv.accept()            # before the client has its rings
            with conn:
                conn.sendall(b"early")
                assert cli.recv(5) == b"early"    # waits for the connect, then reads
                assert cli.getpeername() == srv.getsockname()
            done()
            assert cli.transport == "ring"
