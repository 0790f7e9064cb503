"""Readiness: a ring socket's fileno() is readable exactly when recv would not block.

The same sequence of events runs on a kernel pair and on a ring pair, and
after each event select.select, select.poll and selectors.DefaultSelector
must report the same as the kernel does.  A listener's descriptor must be
readable exactly while a connection (ring or kernel) waits to be accepted.
Stock asyncio (its default selector event loop) must work on impl sockets
over rings.  Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import os
import select
import selectors
import socket as stdsocket
import threading

import pytest

import impl
from tests.test_socket_api import WAIT, Pair, in_thread, pair, wait_readable
from tests.test_socket_processes import Child

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(autouse=True)
def _monitor(monitor):
    return monitor


def readable_select(sock) -> bool:
    r, _, _ = select.select([sock], [], [], 0)
    return bool(r)


def readable_poll(sock) -> bool:
    p = select.poll()
    p.register(sock.fileno(), select.POLLIN)
    return any(ev & select.POLLIN for _, ev in p.poll(0))


def readable_selector(sock) -> bool:
    with selectors.DefaultSelector() as sel:
        sel.register(sock, selectors.EVENT_READ)
        return bool(sel.select(0))


CHECKS = {"select": readable_select, "poll": readable_poll, "selectors": readable_selector}


def would_block(sock) -> bool:
    """Does recv block now? (A non-blocking peek; the socket's mode is kept.)"""
    try:
        sock.recv(1, stdsocket.MSG_PEEK | stdsocket.MSG_DONTWAIT)
    except BlockingIOError:
        return True
    return False


def sequence(p: Pair, readable) -> list:
    """Events on the pair; after each, (readable, recv would not block) for the reader b."""
    a, b = p.a, p.b
    out = []

    def look(label: str) -> None:
        out.append((label, readable(b), not would_block(b)))

    look("empty")
    a.sendall(b"0123456789")
    wait_readable(b, 10)
    look("after a write")
    b.recv(4)
    look("part read")
    b.recv(6)
    look("drained")
    a.sendall(b"x")
    wait_readable(b)
    b.recv(1, stdsocket.MSG_PEEK)
    look("peeked")
    b.recv(1)
    look("drained again")
    a.shutdown(stdsocket.SHUT_WR)
    look("EOF")
    out.append(("eof read", b.recv(10)))
    look("EOF after read")
    out.append(("eof read 2", b.recv(10)))
    look("EOF stays")
    return out


@pytest.mark.parametrize("check", sorted(CHECKS))
def test_ring_readiness_follows_the_kernel(check):
    results = {}
    for kind in ("kernel", "ring"):
        with pair(kind) as p:
            results[kind] = sequence(p, CHECKS[check])
    assert results["ring"] == results["kernel"]
    # And readiness is exactly "recv would not block" at every step.
    assert all(step[1] == step[2] for step in results["ring"] if len(step) == 3)


def test_readiness_when_fileno_is_taken_late():
    """fileno() first asked for when data already waits, or after EOF, still tells the truth."""
    with pair("ring") as p:
        p.a.sendall(b"early")
        wait_readable(p.b, 5)
        assert readable_select(p.b)
        p.b.recv(5)
        assert not readable_select(p.b)
    with pair("ring") as p:
        p.a.close()
        assert readable_select(p.b) and p.b.recv(1) == b""


def test_readiness_when_fileno_was_taken_before_connect():
    """A number asked for before connect() (asyncore keeps it) stays exact once a ring is set up.

    The program never calls fileno() again: the ring must be armed at
    connect time, or select on the old number never sees the peer's bytes.
    """
    with impl.create_server(("127.0.0.1", 0)) as srv:
        srv.settimeout(WAIT)
        with impl.socket() as cli:
            fd = cli.fileno()
            cli.connect(srv.getsockname())
            assert cli.transport == "ring"
            acc, _ = srv.accept()
            with acc:
                assert select.select([fd], [], [], 0)[0] == []
                acc.sendall(b"x")
                assert select.select([fd], [], [], WAIT)[0] == [fd], "the peer's byte unseen"
                assert cli.recv(1) == b"x"
                assert select.select([fd], [], [], 0)[0] == []
                acc.close()
                assert select.select([fd], [], [], WAIT)[0] == [fd], "the EOF unseen"


def test_shutdown_rd_makes_it_readable():
    results = {}
    for kind in ("kernel", "ring"):
        with pair(kind) as p:
            before = readable_poll(p.b)
            p.b.shutdown(stdsocket.SHUT_RD)
            results[kind] = [before, readable_poll(p.b), p.b.recv(5), readable_poll(p.b)]
    assert results["ring"] == results["kernel"]


def test_readable_after_a_blocking_recv_that_left_data():
    """A recv that had to wait drains the eventfd; what is left must still show."""
    with pair("ring") as p:
        fd = p.b.fileno()          # readiness from the start
        reader = p.b._conn.reader
        waiting = threading.Event()
        block = reader._block

        def marked_block(*args, **kwargs):
            waiting.set()
            return block(*args, **kwargs)

        reader._block = marked_block

        def writer():
            assert waiting.wait(WAIT)
            p.a.sendall(b"0123456789")

        join = in_thread(writer)
        p.b.settimeout(WAIT)
        assert p.b.recv(4) == b"0123"
        join()
        assert waiting.is_set(), "the recv never waited: the test did not test the path"
        r, _, _ = select.select([fd], [], [], 0)
        assert r == [fd]
        assert p.b.recv(6) == b"456789"
        assert not readable_select(p.b)


def test_readable_after_a_recv_that_timed_out():
    """A timed-out wait must leave the descriptor armed: the next write shows."""
    with pair("ring") as p:
        p.b.fileno()
        p.b.settimeout(0.01)
        with pytest.raises(TimeoutError):
            p.b.recv(1)
        assert not readable_select(p.b)
        p.a.sendall(b"!")
        r, _, _ = select.select([p.b], [], [], WAIT)
        assert r == [p.b]


def test_readable_when_another_process_writes():
    with pair("ring") as p:
        fd = p.b.fileno()
        assert not readable_select(p.b)
        a = p.a

        def child() -> bool:
            a.sendall(b"from the child")
            return True

        c = Child(child)
        try:
            r, _, _ = select.select([fd], [], [], WAIT)
            assert r == [fd]
            assert p.b.recv(14, stdsocket.MSG_WAITALL) == b"from the child"
            assert not readable_select(p.b)
        finally:
            c.result()


# -- listeners ------------------------------------------------------------------------------------
def test_listener_readable_exactly_while_a_connection_waits():
    srv = impl.create_server(("127.0.0.1", 0))
    addr = srv.getsockname()
    clients = []
    try:
        assert srv.transport == "listener"
        for check in CHECKS.values():
            assert not check(srv)
        # A ring connection waits.
        clients.append(impl.create_connection(addr, timeout=WAIT))
        assert clients[-1].transport == "ring"
        for check in CHECKS.values():
            assert check(srv)
        conn, _ = srv.accept()
        assert conn.transport == "ring"
        conn.close()
        for check in CHECKS.values():
            assert not check(srv)
        # A kernel connection waits.
        clients.append(stdsocket.create_connection(addr, timeout=WAIT))
        r, _, _ = select.select([srv], [], [], WAIT)
        assert r == [srv]
        conn, _ = srv.accept()
        assert conn.transport == "kernel"
        conn.close()
        for check in CHECKS.values():
            assert not check(srv)
        # Both at once: readable until the second is taken.
        clients.append(impl.create_connection(addr, timeout=WAIT))
        clients.append(stdsocket.create_connection(addr, timeout=WAIT))
        r, _, _ = select.select([srv], [], [], WAIT)
        kinds = []
        for _ in range(2):
            assert select.select([srv], [], [], WAIT)[0] == [srv]
            conn, _ = srv.accept()
            kinds.append(conn.transport)
            conn.close()
        assert sorted(kinds) == ["kernel", "ring"]
        assert not readable_select(srv)
    finally:
        for c in clients:
            c.close()
        srv.close()


# -- asyncio --------------------------------------------------------------------------------------
def run(coro):
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(asyncio.wait_for(coro, WAIT))
    finally:
        loop.close()


def test_asyncio_sock_methods_over_rings():
    async def main():
        loop = asyncio.get_running_loop()
        srv = impl.create_server(("127.0.0.1", 0))
        srv.setblocking(False)
        cli = impl.socket()
        cli.setblocking(False)
        try:
            accept = asyncio.ensure_future(loop.sock_accept(srv))
            await loop.sock_connect(cli, srv.getsockname())
            conn, _ = await accept
            conn.setblocking(False)
            assert cli.transport == conn.transport == "ring"
            recv = asyncio.ensure_future(loop.sock_recv(conn, 100))
            await asyncio.sleep(0)            # let the receiver wait on the descriptor
            await loop.sock_sendall(cli, b"hello asyncio")
            got = await recv
            while len(got) < 13:
                got += await loop.sock_recv(conn, 100)
            # More than a ring holds, through sock_sendall / sock_recv_into.
            big = os.urandom(3 << 20)
            send = asyncio.ensure_future(loop.sock_sendall(conn, big))
            buf = bytearray(1 << 16)
            back = bytearray()
            while len(back) < len(big):
                n = await loop.sock_recv_into(cli, buf)
                assert n
                back += buf[:n]
            await send
            conn.close()
            eof = await loop.sock_recv(cli, 10)
            return got, bytes(back) == big, eof
        finally:
            cli.close()
            srv.close()

    got, same, eof = run(main())
    assert got == b"hello asyncio" and same and eof == b""


def test_asyncio_streams_over_rings():
    async def main():
        srv_sock = impl.create_server(("127.0.0.1", 0))
        transports = []

        async def echo(reader, writer):
            transports.append(writer.get_extra_info("socket").fileno() >= 0)
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
            writer.close()
            await writer.wait_closed()

        server = await asyncio.start_server(echo, sock=srv_sock)
        async with server:
            results = []
            for _ in range(3):
                sock = impl.create_connection(srv_sock.getsockname(), timeout=WAIT)
                assert sock.transport == "ring"
                reader, writer = await asyncio.open_connection(sock=sock)
                payload = os.urandom(700_000)
                writer.write(payload)
                await writer.drain()
                writer.write_eof()
                echoed = await reader.read()
                results.append(echoed == payload)
                writer.close()
                await writer.wait_closed()
            return results, transports

    results, transports = run(main())
    assert results == [True, True, True]
    assert transports == [True, True, True]


def test_asyncio_kernel_client_to_ring_listener():
    async def main():
        srv_sock = impl.create_server(("127.0.0.1", 0))

        async def hello(reader, writer):
            writer.write(b"hi " + await reader.readexactly(3))
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(hello, sock=srv_sock)
        async with server:
            reader, writer = await asyncio.open_connection(*srv_sock.getsockname()[:2])
            writer.write(b"you")
            got = await reader.read()
            writer.close()
            return got

    assert run(main()) == b"hi you"
