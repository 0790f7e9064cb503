"""asyncio over impl sockets, on the stock loop and on SelectorEventLoop(RingSelector()).

Every test runs on both loops (the ``run`` fixture): the stock loop sees a
ring socket only through its descriptor (an eventfd kept exact by the
library), the ring loop reads the rings themselves.  Every coroutine runs
under ``asyncio.wait_for`` and every child process is waited for with a
bound, so a lost wake-up fails a test instead of hanging it.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import select
import socket
import traceback

import pytest

import impl
import impl.selectors
from impl.selectors import RingSelector
from tests.monitor_util import no_fd_leaks  # noqa: F401 - a fixture

WAIT = 60.0   # bound on any test's coroutine; only a hang reaches it

LOOPS = {"stock": asyncio.new_event_loop, "ring": impl.selectors.new_event_loop}


# Every test here must close what it opens.
pytestmark = pytest.mark.usefixtures("no_fd_leaks")


@pytest.fixture(params=sorted(LOOPS))
def run(request):
    """run(coro) runs *coro* to completion (bounded) on a fresh loop of the param's kind."""
    def runner(coro, timeout: float = WAIT):
        with asyncio.Runner(loop_factory=LOOPS[request.param]) as r:
            return r.run(asyncio.wait_for(coro, timeout))
    runner.kind = request.param
    return runner


def payload(n: int, seed: int = 0) -> bytes:
    """n reproducible, non-repeating bytes (a lost or reordered chunk changes the digest)."""
    out = bytearray()
    i = 0
    while len(out) < n:
        out += hashlib.sha256(f"{seed}:{i}".encode()).digest()
        i += 1
    return bytes(out[:n])


class Child:
    """A forked child running fn(); its traceback (if any) comes back through a pipe."""

    def __init__(self, fn) -> None:
        rfd, wfd = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # never return into pytest
            code = 1
            try:
                os.close(rfd)
                fn(wfd)
                code = 0
            except BaseException:
                os.write(wfd, b"\nERROR\n" + traceback.format_exc().encode())
            finally:
                os._exit(code)
        os.close(wfd)
        self.rfd = rfd
        self._pidfd = os.pidfd_open(self.pid)

    def read_line(self, timeout: float = WAIT) -> str:
        """One line the child wrote on its pipe (bounded wait)."""
        buf = b""
        while not buf.endswith(b"\n"):
            assert select.select([self.rfd], [], [], timeout)[0], "child said nothing"
            chunk = os.read(self.rfd, 1)
            assert chunk, "child closed its pipe"
            buf += chunk
        return buf.decode().strip()

    def join(self, timeout: float = WAIT, expect: int = 0) -> None:
        """Wait (bounded) for the child; assert its exit code (0, or -signal)."""
        try:
            if not select.select([self._pidfd], [], [], timeout)[0]:
                os.kill(self.pid, 9)
            _, status = os.waitpid(self.pid, 0)
            rest = b""
            while chunk := os.read(self.rfd, 65536):
                rest += chunk
        finally:
            os.close(self.rfd)
            os.close(self._pidfd)
        code = os.waitstatus_to_exitcode(status)
        assert code == expect, rest.decode() or f"exit code {code}"


# -- the loop itself ---------------------------------------------------------------------


def test_new_event_loop_runs_on_a_ring_selector():
    loop = impl.selectors.new_event_loop()
    try:
        assert isinstance(loop, asyncio.SelectorEventLoop)
        assert isinstance(loop._selector, RingSelector)
        assert loop.run_until_complete(asyncio.sleep(0, "ok")) == "ok"
    finally:
        loop.close()


def test_event_loop_policy_makes_asyncio_run_use_it():
    async def which():
        return type(asyncio.get_running_loop()._selector)

    old = asyncio.get_event_loop_policy()
    asyncio.set_event_loop_policy(impl.selectors.EventLoopPolicy())
    try:
        assert asyncio.run(which()) is RingSelector
    finally:
        asyncio.set_event_loop_policy(old)


# -- loop.sock_* over a socketpair (rings, one process) -----------------------------------------


async def _echo_sock(loop, sock, nbytes: int) -> None:
    got = 0
    while got < nbytes:
        data = await loop.sock_recv(sock, 65536)
        assert data, "EOF too early"
        got += len(data)
        await loop.sock_sendall(sock, data)


@pytest.mark.parametrize("size", [1, 100, 65536, 1 << 20])
def test_sock_api_echo(run, size):
    a, b = impl.socketpair()
    a.setblocking(False)
    b.setblocking(False)

    async def main():
        loop = asyncio.get_running_loop()
        data = payload(size, size)
        echo = asyncio.create_task(_echo_sock(loop, b, size))
        sender = asyncio.create_task(loop.sock_sendall(a, data))
        back = bytearray()
        while len(back) < size:
            chunk = await loop.sock_recv(a, 65536)
            assert chunk
            back += chunk
        await sender
        await echo
        return bytes(back)

    try:
        assert run(main()) == payload(size, size)
    finally:
        a.close()
        b.close()


def test_sock_api_large_transfer_and_eof(run):
    """32 MiB through a 256 KiB ring: the writer waits for space many times."""
    a, b = impl.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    size = 32 << 20
    data = payload(size, 7)

    async def main():
        loop = asyncio.get_running_loop()

        async def send():
            view = memoryview(data)
            for off in range(0, size, 1 << 20):
                await loop.sock_sendall(a, view[off:off + (1 << 20)])
            a.shutdown(socket.SHUT_WR)

        sender = asyncio.create_task(send())
        h = hashlib.sha256()
        buf = bytearray(200_000)
        total = 0
        while True:
            n = await loop.sock_recv_into(b, buf)
            if n == 0:
                break  # EOF, after everything
            h.update(memoryview(buf)[:n])
            total += n
        await sender
        return total, h.hexdigest()

    try:
        assert run(main()) == (size, hashlib.sha256(data).hexdigest())
    finally:
        a.close()
        b.close()


# -- streams over the monitor -----------------------------------------------------------------


async def _stream_echo(reader, writer) -> None:
    """Echo until EOF, then report the byte count and close (half-close test)."""
    total = 0
    while data := await reader.read(1 << 16):
        total += len(data)
        writer.write(data)
        await writer.drain()
    writer.write(f"\nbytes={total}\n".encode())
    await writer.drain()
    writer.close()
    await writer.wait_closed()


def test_streams_echo_large_and_eof(run, monitor):
    lst = impl.create_server(("127.0.0.1", 0))
    size = 4 << 20
    data = payload(size, 3)

    async def main():
        server = await asyncio.start_server(_stream_echo, sock=lst)
        async with server:
            cli = impl.create_connection(lst.getsockname(), timeout=WAIT)
            assert cli.transport == "ring"
            reader, writer = await asyncio.open_connection(sock=cli)
            for i in range(50):  # ping-pong
                line = f"ping {i}\n".encode()
                writer.write(line)
                assert await reader.readexactly(len(line)) == line

            async def pump():
                view = memoryview(data)
                for off in range(0, size, 100_000):
                    writer.write(view[off:off + 100_000])
                    await writer.drain()
                writer.write_eof()  # the server sees EOF only after all of it

            p = asyncio.create_task(pump())
            back = await reader.readexactly(size)
            await p
            tail = await reader.read()  # to EOF: the server closed after its report
            writer.close()
            await writer.wait_closed()
            return back, tail

    back, tail = run(main())
    assert hashlib.sha256(back).digest() == hashlib.sha256(data).digest()
    pings = sum(len(f"ping {i}\n") for i in range(50))
    assert tail == f"\nbytes={size + pings}\n".encode()


def test_data_sent_before_the_server_accepts(run, monitor):
    """The client writes before the server's transport exists (and calls fileno())."""
    lst = impl.create_server(("127.0.0.1", 0))
    cli = impl.create_connection(lst.getsockname(), timeout=WAIT)
    try:
        assert cli.transport == "ring"
        cli.sendall(b"early bird\n")

        async def main():
            got = asyncio.get_running_loop().create_future()

            async def handle(reader, writer):
                got.set_result(await reader.readline())
                writer.close()
                await writer.wait_closed()

            server = await asyncio.start_server(handle, sock=lst)
            async with server:
                return await got

        assert run(main(), timeout=20) == b"early bird\n"
    finally:
        cli.close()


def test_kernel_and_ring_clients_on_one_server(run, monitor):
    lst = impl.create_server(("127.0.0.1", 0))
    port = lst.getsockname()[1]
    kserver = socket.create_server(("127.0.0.1", 0))  # a plain kernel listener

    async def talk(sock, msg: bytes) -> bytes:
        reader, writer = await asyncio.open_connection(sock=sock)
        writer.write(msg)
        writer.write_eof()
        out = await reader.read()
        writer.close()
        await writer.wait_closed()
        return out

    async def main():
        server = await asyncio.start_server(_stream_echo, sock=lst)
        kserve = await asyncio.start_server(_stream_echo, sock=kserver)
        async with server, kserve:
            ring_cli = impl.create_connection(("127.0.0.1", port), timeout=WAIT)
            kernel_cli = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
            fallback = impl.create_connection(kserver.getsockname(), timeout=WAIT)
            kinds = [impl.transport_of(s) for s in (ring_cli, kernel_cli, fallback)]
            outs = await asyncio.gather(talk(ring_cli, b"r" * 300_000),
                                        talk(kernel_cli, b"k" * 300_000),
                                        talk(fallback, b"f" * 300_000))
            return kinds, outs

    kinds, outs = run(main())
    assert kinds == ["ring", "kernel", "kernel"]
    for out, ch in zip(outs, b"rkf", strict=True):
        assert out == bytes([ch]) * 300_000 + b"\nbytes=300000\n"


# -- cancellation and timeouts ----------------------------------------------------------------


def test_cancelled_recv_leaves_no_reader_and_loses_nothing(run):
    a, b = impl.socketpair()
    a.setblocking(False)
    b.setblocking(False)

    async def main():
        loop = asyncio.get_running_loop()
        task = asyncio.create_task(loop.sock_recv(b, 100))
        await asyncio.sleep(0)  # let it register its reader
        await asyncio.sleep(0)
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert loop.remove_reader(b.fileno()) is False  # the cancelled recv cleaned up
        await loop.sock_sendall(a, b"after")
        return await loop.sock_recv(b, 100)

    try:
        assert run(main()) == b"after"
    finally:
        a.close()
        b.close()


def test_stream_read_timeout_then_data(run):
    a, b = impl.socketpair()

    async def main():
        reader, writer = await asyncio.open_connection(sock=a)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.read(10), 0.05)
        b.sendall(b"late")
        got = await reader.read(10)
        writer.close()
        await writer.wait_closed()
        return got

    try:
        assert run(main()) == b"late"
    finally:
        b.close()


def test_sendall_to_a_full_ring_times_out_and_unregisters(run):
    a, b = impl.socketpair()
    a.setblocking(False)

    async def main():
        loop = asyncio.get_running_loop()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(loop.sock_sendall(a, b"x" * (4 << 20)), 0.1)
        assert loop.remove_writer(a.fileno()) is False
        # The ring is full and nobody reads: writability must not be reported.
        fut = loop.create_future()
        loop.add_writer(a.fileno(), lambda: fut.done() or fut.set_result("writable"))
        try:
            await asyncio.wait_for(asyncio.shield(fut), 0.05)
        except TimeoutError:
            return "not writable"
        finally:
            loop.remove_writer(a.fileno())
        return fut.result()

    try:
        result = run(main())
        if run.kind == "ring":
            assert result == "not writable"
        # (The stock loop sees an eventfd, which is always writable: it cannot tell.)
    finally:
        a.close()
        b.close()


# -- a peer in another process ------------------------------------------------------------------


def _child_server(kind: str):
    """In the child: serve one echo connection on a new loop of *kind*; report the port."""
    def serve(wfd: int) -> None:
        async def main():
            lst = impl.create_server(("127.0.0.1", 0))
            done = asyncio.Event()

            async def handle(reader, writer):
                try:
                    await _stream_echo(reader, writer)
                finally:
                    done.set()

            server = await asyncio.start_server(handle, sock=lst)
            async with server:
                os.write(wfd, f"{lst.getsockname()[1]}\n".encode())
                await done.wait()

        with asyncio.Runner(loop_factory=LOOPS[kind]) as r:
            r.run(asyncio.wait_for(main(), WAIT))
    return serve


@pytest.mark.timeout(180)
def test_peer_in_another_process(run, monitor):
    kid = Child(_child_server(run.kind))
    try:
        port = int(kid.read_line())
        size = 8 << 20
        data = payload(size, 11)

        async def main():
            sock = impl.create_connection(("127.0.0.1", port), timeout=WAIT)
            assert sock.transport == "ring"
            reader, writer = await asyncio.open_connection(sock=sock)
            for i in range(200):
                msg = i.to_bytes(8, "little")
                writer.write(msg)
                assert await reader.readexactly(8) == msg

            async def pump():
                view = memoryview(data)
                for off in range(0, size, 1 << 18):
                    writer.write(view[off:off + (1 << 18)])
                    await writer.drain()
                writer.write_eof()

            p = asyncio.create_task(pump())
            h = hashlib.sha256()
            left = size
            while left:
                chunk = await reader.read(min(left, 1 << 16))
                assert chunk, "EOF before all data came back"
                h.update(chunk)
                left -= len(chunk)
            await p
            tail = await reader.read()
            writer.close()
            await writer.wait_closed()
            return h.digest(), tail

        digest, tail = run(main(), timeout=120)
        assert digest == hashlib.sha256(data).digest()
        assert tail == f"\nbytes={size + 8 * 200}\n".encode()
    finally:
        kid.join()


@pytest.mark.timeout(180)
def test_peer_killed_midway_gives_eof_or_reset(run, monitor):
    """A peer process that dies while we wait: the waiting read ends, it does not hang."""
    def victim(wfd: int) -> None:
        lst = impl.create_server(("127.0.0.1", 0))
        os.write(wfd, f"{lst.getsockname()[1]}\n".encode())
        conn, _ = lst.accept()
        conn.sendall(b"partial")
        os.kill(os.getpid(), 9)  # no clean-up: the monitor must notice

    kid = Child(victim)
    port = int(kid.read_line())

    async def main():
        sock = impl.create_connection(("127.0.0.1", port), timeout=WAIT)
        reader, writer = await asyncio.open_connection(sock=sock)
        got = b""
        try:
            while chunk := await reader.read(100):
                got += chunk
        except ConnectionResetError:
            pass
        writer.close()
        try:
            await writer.wait_closed()
        except ConnectionResetError:
            pass
        return got

    try:
        assert run(main()) == b"partial"
    finally:
        kid.join(expect=-9)
