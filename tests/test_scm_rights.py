"""Descriptor passing (SCM_RIGHTS) over AF_UNIX ring connections, against the kernel's.

Each scenario runs on a kernel AF_UNIX stream pair (the oracle) and on ring
pairs -- one the monitor connected (``ring``), one from ``impl.socketpair``
(``ringpair``) -- and the outcomes must be equal: the data, the flags, the
errors, and which open file each received descriptor refers to (by
``os.fstat`` device and inode, named after the files the test made) and
whether it is inheritable.  Received descriptors are closed as they are
recorded, and every test checks that no descriptor leaked.

The side channel itself is described in ``impl/sdsocket.py`` (``_RingConn``)
and docs/socket.md.
"""

from __future__ import annotations

import array
import contextlib
import errno
import gc
import os
import select
import socket as stdsocket
import tempfile
import threading
from collections.abc import Callable

import pytest

import impl
from impl import sdsocket
from impl.token import agent
from tests.monitor_util import open_fds
from tests.proc_util import Child
from tests.test_monitor import fd_count, library_status

pytestmark = pytest.mark.timeout(120)

WAIT = 30.0   # bound on a wait that only a bug makes long
SOL, RIGHTS = stdsocket.SOL_SOCKET, stdsocket.SCM_RIGHTS
CTRUNC = int(stdsocket.MSG_CTRUNC)
MAX_FD = 253  # the kernel's SCM_MAX_FD
RING_KINDS = ("ring", "ringpair")
_names = iter(range(1 << 30))


@pytest.fixture(autouse=True)
def _monitor_and_no_leaks(monitor):
    """The session monitor; and no descriptor of this process outlives a test."""
    agent.ensure()   # the token agent's channel, opened once per process at the first fork
    gc.collect()
    before = open_fds()
    yield monitor
    gc.collect()
    assert open_fds() == before, "file descriptors leaked"


# -- pairs and files ------------------------------------------------------------------------------
class Pair:
    """A connected AF_UNIX stream pair: ``a`` (client) and ``b`` (accepted), of one kind."""

    def __init__(self, kind: str, tmp_path) -> None:
        self.kind = kind
        self.srv = None
        if kind == "ringpair":
            self.a, self.b = impl.socketpair()
        else:
            mod = impl if kind == "ring" else stdsocket
            path = str(tmp_path / f"s{next(_names)}")
            self.srv = mod.socket(stdsocket.AF_UNIX, stdsocket.SOCK_STREAM)
            self.srv.bind(path)
            self.srv.listen()
            self.a = mod.socket(stdsocket.AF_UNIX, stdsocket.SOCK_STREAM)
            self.a.connect(path)
            self.b, _ = self.srv.accept()
        if kind != "kernel":
            assert (self.a.transport, self.b.transport) == ("ring", "ring")
        for s in (self.a, self.b):
            s.settimeout(WAIT)

    def close(self) -> None:
        for s in (self.a, self.b, self.srv):
            if s is not None:
                s.close()


@contextlib.contextmanager
def pair(kind: str, tmp_path):
    p = Pair(kind, tmp_path)
    try:
        yield p
    finally:
        p.close()


class Files:
    """Open files the scenarios pass; a received descriptor is named by the file it opens."""

    def __init__(self, count: int) -> None:
        self.fds: list[int] = []
        self.names: dict[tuple[int, int], str] = {}
        for i in range(count):
            fd, path = tempfile.mkstemp()
            os.unlink(path)
            os.write(fd, f"file{i}".encode())
            st = os.fstat(fd)
            self.fds.append(fd)
            self.names[(st.st_dev, st.st_ino)] = f"file{i}"

    def name(self, fd: int) -> str:
        st = os.fstat(fd)
        return self.names.get((st.st_dev, st.st_ino), "unknown")

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)


@pytest.fixture
def files():
    f = Files(4)
    yield f
    f.close()


def rights(*fds: int) -> list:
    return [(SOL, RIGHTS, array.array("i", fds))]


def received(files: Files, ancdata: list) -> list:
    """ancdata as (level, type, [(file name, inheritable), ...]); closes the descriptors."""
    out = []
    for level, kind, data in ancdata:
        if (level, kind) != (SOL, RIGHTS):
            out.append((level, kind, bytes(data)))
            continue
        fds = array.array("i")
        fds.frombytes(data[:len(data) - len(data) % fds.itemsize])
        got = []
        for fd in fds:
            got.append((files.name(fd), os.get_inheritable(fd)))
            os.close(fd)
        out.append((level, kind, got, len(data) % fds.itemsize))
    return out


def outcome(fn: Callable[[], object]) -> tuple:
    """("ok", value) or ("raise", exception type name, errno): comparable across kinds."""
    try:
        return ("ok", fn())
    except Exception as exc:  # noqa: BLE001 - the exception is the outcome
        return ("raise", type(exc).__name__, getattr(exc, "errno", None))


def recvmsg(p: Pair, files: Files, bufsize: int = 100, ancbufsize: int = 1024,
            flags: int = 0) -> tuple:
    def call():
        data, anc, msg_flags, _ = p.b.recvmsg(bufsize, ancbufsize, flags)
        return data, received(files, anc), msg_flags
    return outcome(call)


def drain(p: Pair, files: Files, ancbufsize: int = 1024) -> list:
    """recvmsg until EAGAIN (everything was sent before)."""
    p.b.setblocking(False)
    out = []
    for _ in range(20):
        got = recvmsg(p, files, ancbufsize=ancbufsize)
        out.append(got)
        if got[0] == "raise":
            break
    p.b.settimeout(WAIT)
    return out


# -- scenarios: each returns a comparable list of outcomes ----------------------------------------
def sc_simple(p, f):
    sent = p.a.sendmsg([b"hello"], rights(f.fds[0]))
    return [sent, recvmsg(p, f), *drain(p, f)]


def sc_several(p, f):
    p.a.sendmsg([b"one", b"two"], rights(f.fds[0], f.fds[1], f.fds[2], f.fds[3]))
    return drain(p, f)


def sc_interleaved(p, f):
    # A read merges plain bytes before a message with descriptors, stops at
    # its end, and never merges two such messages.
    p.a.send(b"aaa")
    p.a.sendmsg([b"bbb"], rights(f.fds[0]))
    p.a.send(b"ccc")
    p.a.sendmsg([b"ddd"], rights(f.fds[1], f.fds[2]))
    p.a.sendmsg([b"eee"], rights(f.fds[3]))
    p.a.send(b"fff")
    return drain(p, f)


def sc_separate_items(p, f):
    p.a.sendmsg([b"xy"], rights(f.fds[0]) + rights(f.fds[1]))
    return drain(p, f)


def sc_partial_read(p, f):
    # The descriptors come with the first bytes read; the rest of the message
    # is plain and merges with what follows (up to the next descriptors).
    p.a.sendmsg([b"12345"], rights(f.fds[0]))
    p.a.send(b"678")
    p.a.sendmsg([b"9"], rights(f.fds[1]))
    return [recvmsg(p, f, bufsize=2), *drain(p, f)]


@pytest.mark.parametrize("ancbufsize", [
    0, 1, 8, stdsocket.CMSG_LEN(0) - 1, stdsocket.CMSG_LEN(0), stdsocket.CMSG_LEN(1),
    stdsocket.CMSG_LEN(4), stdsocket.CMSG_LEN(8), stdsocket.CMSG_LEN(12),
    stdsocket.CMSG_SPACE(16)])
def test_truncation(tmp_path, files, ancbufsize):
    """Too small an ancillary buffer: the descriptors that fit, MSG_CTRUNC, the rest closed."""
    def sc(p, f):
        p.a.sendmsg([b"data"], rights(*f.fds))
        p.a.send(b"more")
        return [recvmsg(p, f, ancbufsize=ancbufsize), *drain(p, f)]
    compare(sc, tmp_path, files)


def sc_peek(p, f):
    # Each peek gets new descriptors; they stay queued until a real read.
    p.a.send(b"ab")
    p.a.sendmsg([b"cd"], rights(f.fds[0]))
    p.a.send(b"ef")
    return [recvmsg(p, f, flags=stdsocket.MSG_PEEK),
            recvmsg(p, f, bufsize=3, flags=stdsocket.MSG_PEEK),
            recvmsg(p, f, bufsize=1, flags=stdsocket.MSG_PEEK),
            *drain(p, f)]


def sc_plain_recv(p, f):
    # recv() stops at the end of a message with descriptors and closes them.
    p.a.send(b"ab")
    p.a.sendmsg([b"cd"], rights(f.fds[0], f.fds[1]))
    p.a.sendmsg([b"ef"], rights(f.fds[2]))
    p.a.send(b"gh")
    buf = bytearray(10)
    return [p.b.recv(100), p.b.recv_into(buf), bytes(buf[:2]), *drain(p, f)]


def sc_recvmsg_into(p, f):
    p.a.sendmsg([b"abc"], rights(f.fds[0]))
    p.a.sendmsg([b"defg"], rights(f.fds[1]))
    bufs = [bytearray(2), bytearray(3)]
    n, anc, flags, _ = p.b.recvmsg_into(bufs, 1024)
    first = (n, [bytes(b) for b in bufs], received(f, anc), flags)
    one = bytearray(10)
    n, anc, flags, _ = p.b.recvmsg_into([one], 1024)
    return [first, (n, bytes(one[:n]), received(f, anc), flags), *drain(p, f)]


def sc_cloexec(p, f):
    p.a.sendmsg([b"a"], rights(f.fds[0]))
    p.a.sendmsg([b"b"], rights(f.fds[1]))
    p.a.sendmsg([b"c"], rights(f.fds[2]))
    return [recvmsg(p, f, flags=stdsocket.MSG_CMSG_CLOEXEC),
            recvmsg(p, f, flags=stdsocket.MSG_CMSG_CLOEXEC | stdsocket.MSG_PEEK),
            recvmsg(p, f)]


def sc_waitall(p, f):
    # MSG_WAITALL still stops after a message with descriptors.
    p.a.send(b"aa")
    p.a.sendmsg([b"bb"], rights(f.fds[0]))
    p.a.send(b"cc")
    return [recvmsg(p, f, bufsize=6, flags=stdsocket.MSG_WAITALL), *drain(p, f)]


def sc_no_data(p, f):
    # Descriptors without data: nothing is sent on a stream socket.
    return [outcome(lambda: p.a.sendmsg([], rights(f.fds[0]))),
            outcome(lambda: p.a.sendmsg([b""], rights(f.fds[0]))),
            outcome(lambda: p.a.sendmsg([], rights(-1))),
            p.a.send(b"z"), *drain(p, f)]


def sc_empty_and_partial_arrays(p, f):
    out = [outcome(lambda: p.a.sendmsg([b"e"], [(SOL, RIGHTS, b"")])),
           outcome(lambda: p.a.sendmsg([b"p"], [(SOL, RIGHTS, b"\1\2\3")])),
           outcome(lambda: p.a.sendmsg(
               [b"m"], [(SOL, RIGHTS, array.array("i", [f.fds[0], -0x5555]).tobytes()[:-1]),
                        (SOL, RIGHTS, array.array("i", [f.fds[1]]))]))]
    return out + drain(p, f)


def sc_errors(p, f):
    bad = os.open(os.devnull, os.O_RDONLY)
    os.close(bad)
    cases = [
        lambda: p.a.sendmsg([b"x"], rights(bad)),                      # EBADF
        lambda: p.a.sendmsg([b"x"], rights(*[f.fds[0]] * (MAX_FD + 1))),  # EINVAL
        lambda: p.a.sendmsg([b"x"], [(SOL, RIGHTS)]),                  # TypeError
        lambda: p.a.sendmsg([b"x"], [(SOL, "x", b"")]),
        lambda: p.a.sendmsg([b"x"], [(SOL, RIGHTS, 5)]),
        lambda: p.a.sendmsg([b"x"], 5),
        lambda: p.a.sendmsg([b"x"], [(1 << 40, RIGHTS, b"")]),
        lambda: p.a.sendmsg([b"x"], rights(f.fds[0]), 0, 5),           # bad address
        lambda: p.a.sendmsg([b"x"], rights(f.fds[0]), 0, "/nowhere"),  # EISCONN
        lambda: p.a.sendmsg([b"x"], [(stdsocket.IPPROTO_IP, 1, b"")]),  # ignored
    ]
    return [outcome(c) for c in cases] + drain(p, f)


def sc_many(p, f):
    p.a.sendmsg([b"m"], rights(*[f.fds[i % 4] for i in range(MAX_FD)]))
    p.a.sendmsg([b"n"], rights(*[f.fds[i % 4] for i in range(MAX_FD)]))
    return [recvmsg(p, f, ancbufsize=stdsocket.CMSG_SPACE(MAX_FD * 4)),
            recvmsg(p, f, ancbufsize=stdsocket.CMSG_LEN(100 * 4))]


def sc_blocked_receiver(p, f):
    # The receiver waits first; the message arrives while it sleeps.
    box: dict = {}
    t = threading.Thread(target=lambda: box.setdefault("r", recvmsg(p, f)), daemon=True)
    t.start()
    p.a.sendmsg([b"late"], rights(f.fds[1]))
    t.join(WAIT)
    assert not t.is_alive()
    return [box["r"], *drain(p, f)]


def sc_nonblocking_sender(p, f):
    p.a.setblocking(False)
    sent = p.a.sendmsg([b"nb"], rights(f.fds[2]), stdsocket.MSG_DONTWAIT)
    p.a.settimeout(WAIT)
    return [sent, *drain(p, f)]


SCENARIOS = {name[3:]: fn for name, fn in dict(globals()).items() if name.startswith("sc_")}


def run(kind: str, scenario, tmp_path, files) -> list:
    with pair(kind, tmp_path) as p:
        return scenario(p, files)


def compare(scenario, tmp_path, files) -> None:
    want = run("kernel", scenario, tmp_path, files)
    for kind in RING_KINDS:
        assert run(kind, scenario, tmp_path, files) == want, kind


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_same_as_kernel(tmp_path, files, name):
    compare(SCENARIOS[name], tmp_path, files)


def test_scenarios_see_descriptors(tmp_path, files):
    """The oracle is not vacuous: the kernel run receives the files that were sent."""
    out = run("kernel", sc_interleaved, tmp_path, files)
    names = [item[2] for got in out if got[0] == "ok" for item in got[1][1]]
    assert names == [[("file0", True)], [("file1", True), ("file2", True)], [("file3", True)]]


def test_comparison_catches_a_lost_ctrunc(tmp_path, files, monkeypatch):
    """A ring that forgets MSG_CTRUNC is caught by the truncation scenario."""
    real = sdsocket._scm_deliver

    def no_ctrunc(fds, ancbufsize, flags):
        anc, _ = real(fds, ancbufsize, flags)
        return anc, 0
    monkeypatch.setattr(sdsocket, "_scm_deliver", no_ctrunc)

    def sc(p, f):
        p.a.sendmsg([b"data"], rights(*f.fds))
        return [recvmsg(p, f, ancbufsize=stdsocket.CMSG_LEN(4))]
    assert run("ring", sc, tmp_path, files) != run("kernel", sc, tmp_path, files)


def test_comparison_catches_merged_messages(tmp_path, files, monkeypatch):
    """A ring read that runs past a message with descriptors is caught."""
    monkeypatch.setattr(sdsocket, "_scm_prune", lambda conn, head: None)
    real = sdsocket._scm_read

    def greedy(conn, view, peek, hold):
        n, fds = real(conn, view, peek, hold)
        if fds is not None and n < len(view) and not peek:
            n += conn.reader.read_into(view[n:])
        return n, fds
    monkeypatch.setattr(sdsocket, "_scm_read", greedy)
    assert (run("ringpair", sc_interleaved, tmp_path, files)
            != run("kernel", sc_interleaved, tmp_path, files))


# -- where rings differ on purpose ----------------------------------------------------------------
def test_other_socket_level_items_are_refused(tmp_path):
    with pair("ring", tmp_path) as p:
        with pytest.raises(OSError) as info:
            p.a.sendmsg([b"x"], [(SOL, stdsocket.SCM_CREDENTIALS, b"\0" * 12)])
        assert info.value.errno == errno.EOPNOTSUPP and "SCM_RIGHTS" in str(info.value)
        p.b.setblocking(False)
        with pytest.raises(BlockingIOError):
            p.b.recv(1)   # nothing was sent


def test_inet_ignores_rights_like_tcp(files):
    """TCP ignores SCM_RIGHTS (no error, no descriptors); so does an AF_INET ring."""
    results = {}
    for mod in (stdsocket, impl):
        with mod.create_server(("127.0.0.1", 0)) as srv:
            with mod.create_connection(srv.getsockname(), timeout=WAIT) as a:
                b, _ = srv.accept()
                with b:
                    b.settimeout(WAIT)
                    sent = a.sendmsg([b"x"], rights(files.fds[0]))
                    data, anc, flags, _ = b.recvmsg(10, 1024)
                    results[mod.__name__] = (sent, data, anc, flags,
                                             getattr(a, "transport", "kernel"))
    assert results["impl"][:4] == results["socket"][:4]
    assert results["impl"][4] == "ring"


# -- processes ------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ("kernel", *RING_KINDS))
def test_receiver_in_a_fork_child(tmp_path, files, kind):
    """A child inherits the socket and receives the descriptor the parent sends after fork."""
    with pair(kind, tmp_path) as p:
        def child():
            data, anc, flags, _ = p.b.recvmsg(100, 1024)
            got = received(files, anc)
            return [data.decode(), got[0][2][0][0], flags]
        c = Child(child, wait=WAIT)
        p.a.sendmsg([b"to child"], rights(files.fds[3]))
        assert c.result() == ["to child", "file3", 0]
        # The child read it: nothing is left for the parent.
        p.b.setblocking(False)
        with pytest.raises(BlockingIOError):
            p.b.recvmsg(100, 1024)


@pytest.mark.parametrize("kind", ("kernel", *RING_KINDS))
def test_sender_in_a_fork_child(tmp_path, kind):
    """A descriptor opened only in the child reaches the parent and names the same file."""
    r, w = os.pipe()
    try:
        with pair(kind, tmp_path) as p:
            def child():
                fd = os.open(os.devnull, os.O_RDONLY)
                ino = os.fstat(fd).st_ino
                p.a.sendmsg([b"x"], rights(fd, w))
                return ino
            c = Child(child, wait=WAIT)
            data, anc, _, _ = p.b.recvmsg(10, 1024)
            ino = c.result()
            fds = array.array("i")
            fds.frombytes(anc[0][2])
            try:
                assert data == b"x" and len(fds) == 2
                assert os.fstat(fds[0]).st_ino == ino
                os.write(fds[1], b"!")       # the pipe's write end, through the child
                assert os.read(r, 1) == b"!"
            finally:
                for fd in fds:
                    os.close(fd)
    finally:
        os.close(r)
        os.close(w)


def _hung_up(fd: int) -> bool:
    """Wait (bounded) for the pipe's read end to see every write end closed."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return any(ev & select.POLLHUP for _, ev in poller.poll(WAIT * 1000))


@pytest.mark.parametrize("kind", ("kernel", *RING_KINDS))
@pytest.mark.parametrize("looked", (False, True))
def test_close_with_descriptors_in_flight(tmp_path, kind, looked):
    """Closing the receiver closes descriptors nobody read (queued, or drained by a peek)."""
    r, w = os.pipe()
    try:
        with pair(kind, tmp_path) as p:
            p.a.sendmsg([b"x"], rights(w))
            p.a.send(b"tail")
            if looked:
                p.b.recv(1, stdsocket.MSG_PEEK)
            os.close(w)
            w = -1
            p.b.close()
            assert _hung_up(r), "a write end in flight stayed open after the reader closed"
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


def test_monitor_keeps_no_side_channel(tmp_path, monitor):
    """Connections with descriptors in flight leave the monitor's descriptors as they were."""
    path = str(tmp_path / "mon")
    with impl.socket(stdsocket.AF_UNIX, stdsocket.SOCK_STREAM) as srv:
        srv.bind(path)
        srv.listen()
        srv.settimeout(WAIT)

        def cycle(n: int) -> None:
            fd = os.open(os.devnull, os.O_RDONLY)
            try:
                for _ in range(n):
                    with impl.socket(stdsocket.AF_UNIX, stdsocket.SOCK_STREAM) as a:
                        a.connect(path)
                        b, _ = srv.accept()
                        with b:
                            assert b.transport == "ring"
                            a.sendmsg([b"x"], rights(fd, fd))    # left in flight
            finally:
                os.close(fd)

        cycle(1)    # warm: channels, ring pool
        gc.collect()
        library_status()
        base = fd_count(monitor.pid)
        cycle(20)
        gc.collect()
        library_status()   # orders our CLOSEs before the count
        assert fd_count(monitor.pid) == base


# -- rings only: a full ring, a message larger than the ring --------------------------------------
def fill(sock) -> int:
    """Write into *sock* until its ring is full; return how much."""
    sock.setblocking(False)
    total = 0
    chunk = b"p" * 65536
    while True:
        try:
            total += sock.send(chunk)
        except BlockingIOError:
            break
    sock.settimeout(WAIT)
    return total


def read_all(sock, files: Files, total: int) -> list:
    """recvmsg until *total* bytes came; [(length, received descriptors), ...]."""
    got, out = 0, []
    while got < total:
        data, anc, _, _ = sock.recvmsg(65536, 1024)
        assert data, "EOF before all the data came"
        out.append((len(data), received(files, anc)))
        got += len(data)
    return out


def test_full_ring_nonblocking_and_timeout_send_nothing(files):
    """EAGAIN or TimeoutError on a full ring: neither the bytes nor the descriptors travel."""
    a, b = impl.socketpair()
    with a, b:
        b.settimeout(WAIT)
        total = fill(a)
        a.settimeout(None)   # MSG_DONTWAIT counts on a blocking socket (with a timeout, it waits)
        with pytest.raises(BlockingIOError):
            a.sendmsg([b"x"], rights(files.fds[0]), stdsocket.MSG_DONTWAIT)
        a.setblocking(False)
        with pytest.raises(BlockingIOError):
            a.sendmsg([b"x"], rights(files.fds[0]))
        a.settimeout(0.05)
        with pytest.raises(TimeoutError):
            a.sendmsg([b"x"], rights(files.fds[0]))
        assert read_all(b, files, total) == [(65536, [])] * (total // 65536)
        b.setblocking(False)
        with pytest.raises(BlockingIOError):
            b.recvmsg(10, 1024)


def test_sender_waits_for_space_then_passes(files):
    """A blocking sendmsg on a full ring waits; its descriptors come with its first byte."""
    a, b = impl.socketpair()
    with a, b:
        b.settimeout(WAIT)
        total = fill(a)
        box: dict = {}
        t = threading.Thread(target=lambda: box.setdefault(
            "sent", a.sendmsg([b"after"], rights(files.fds[1]))), daemon=True)
        t.start()
        plain = read_all(b, files, total)
        t.join(WAIT)
        assert not t.is_alive() and box["sent"] == 5
        assert all(anc == [] for _, anc in plain)
        data, anc, flags, _ = b.recvmsg(100, 1024)
        assert (data, received(files, anc), flags) == (
            b"after", [(SOL, RIGHTS, [("file1", True)], 0)], 0)


def test_message_larger_than_the_ring(files):
    """1 MiB through a 256 KiB ring: the descriptors come once, with the first bytes."""
    a, b = impl.socketpair()
    with a, b:
        b.settimeout(WAIT)
        a.settimeout(WAIT)
        payload = bytes(range(256)) * 4096
        box: dict = {}
        t = threading.Thread(target=lambda: box.setdefault(
            "sent", a.sendmsg([payload], rights(files.fds[2]))), daemon=True)
        t.start()
        got = bytearray()
        with_fds = []
        while len(got) < len(payload):
            data, anc, _, _ = b.recvmsg(65536, 1024)
            assert data
            if anc:
                with_fds.append((len(got), received(files, anc)))
            got += data
        t.join(WAIT)
        assert box["sent"] == len(payload) and bytes(got) == payload
        assert with_fds == [(0, [(SOL, RIGHTS, [("file2", True)], 0)])]


def test_plain_recv_already_waiting_closes_what_it_read_past():
    """A blocking recv() that slept through a message with descriptors: they are closed.

    The read may run past the message's end (it did not look at the side
    channel); the next read prunes the record, closing its descriptors --
    the write end of a pipe here, so the pipe's read end sees the hang-up.
    """
    r, w = os.pipe()
    a, b = impl.socketpair()   # blocking, no timeout: recv takes the fast path
    try:
        box: dict = {}
        t = threading.Thread(target=lambda: box.setdefault("got", b.recv(100)), daemon=True)
        t.start()
        a.sendmsg([b"abc"], rights(w))
        os.close(w)
        w = -1
        t.join(WAIT)
        assert not t.is_alive() and box["got"] == b"abc"
        a.send(b"z")
        assert b.recv(100) == b"z"
        assert _hung_up(r), "the descriptor read past stayed open"
    finally:
        a.close()
        b.close()
        os.close(r)
        if w >= 0:
            os.close(w)


def test_recvmsg_waitall_larger_than_a_chunk(files):
    """recvmsg(n, MSG_WAITALL) for n above the read chunk still waits for all n bytes."""
    a, b = impl.socketpair()
    with a, b:
        a.settimeout(WAIT)
        b.settimeout(WAIT)
        payload = os.urandom(200_000)
        t = threading.Thread(target=lambda: a.sendall(payload), daemon=True)
        t.start()
        data, anc, flags, _ = b.recvmsg(len(payload), 1024, stdsocket.MSG_WAITALL)
        t.join(WAIT)
        assert (data == payload, anc, flags) == (True, [], 0)
