"""An unmodified program using multiprocessing's sockets; prints a JSON report.

multiprocessing.connection's Listener and Client (AF_UNIX and AF_INET), a
Manager, and process pools started by fork, spawn and forkserver (the
forkserver is reached over an AF_UNIX socket and is given its listener's
descriptor).  Each worker reports the class ``socket.socket`` names in it
and what carried a connection it made back to this program, which is
served by a plain socket server: multiprocessing's own sockets must work,
and everything else must still be patched.
"""

import json
import multiprocessing
import socket
import sys
import threading
from multiprocessing.connection import Client, Listener

WAIT = 30.0


def echo_twice(listener: Listener) -> None:
    """Accept one multiprocessing connection and answer its object doubled."""
    with listener.accept() as conn:
        conn.send(conn.recv() * 2)


def connection_round_trip(family: str, address) -> object:
    """Send 21 through a Listener/Client pair of *family*; return the answer."""
    with Listener(address, family=family) as listener:
        server = threading.Thread(target=echo_twice, args=(listener,))
        server.start()
        with Client(listener.address, family=family) as client:
            client.send(21)
            answer = client.recv() if client.poll(WAIT) else None
        server.join(WAIT)
    return answer


def worker(args: tuple[int, int]) -> dict:
    """In a pool process: connect back to the main program's server on *port*."""
    port, x = args
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as s:
        s.sendall(b"%d" % x)
        answer = int(s.recv(16))
        return {"answer": answer, "cls": socket.socket.__module__,
                "transport": getattr(s, "transport", "stdlib")}


def serve_doubles(server: socket.socket, count: int, transports: list) -> None:
    """Answer *count* connections with their number doubled."""
    for _ in range(count):
        conn, _ = server.accept()
        with conn:
            conn.settimeout(WAIT)
            conn.sendall(b"%d" % (2 * int(conn.recv(16))))
            transports.append(getattr(conn, "transport", "stdlib"))


def pool_round_trip(method: str, port: int) -> list[dict]:
    with multiprocessing.get_context(method).Pool(2) as pool:
        return pool.map(worker, [(port, 1), (port, 2)], chunksize=1)


def main() -> int:
    report: dict = {
        "unix": connection_round_trip("AF_UNIX", None),
        "inet": connection_round_trip("AF_INET", ("127.0.0.1", 0)),
    }
    with multiprocessing.Manager() as manager:
        shared = manager.dict()
        shared["a"] = 1
        report["manager"] = dict(shared)
    methods = ("fork", "spawn", "forkserver")
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(WAIT)
        transports: list = []
        serving = threading.Thread(target=serve_doubles,
                                   args=(server, 2 * len(methods), transports))
        serving.start()
        for method in methods:
            report[method] = pool_round_trip(method, server.getsockname()[1])
        serving.join(WAIT)
        report["server_transports"] = transports
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
