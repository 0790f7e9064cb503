"""An unmodified program: a TCP echo in two threads, a UDP pair, select(); prints a JSON report.

Usage: echo.py [--exit N] [args ...]: exits with N after printing the report.
"""

import json
import select
import socket
import sys
import threading

WAIT = 30.0


def serve(srv: socket.socket, out: dict) -> None:
    conn, _ = srv.accept()
    with conn:
        out["server_transport"] = getattr(conn, "transport", "stdlib")
        conn.settimeout(WAIT)
        # select() on the accepted socket's descriptor must see the client's bytes.
        out["select_ready"] = select.select([conn], [], [], WAIT)[0] == [conn]
        while data := conn.recv(65536):
            conn.sendall(data)


def main() -> int:
    report: dict = {"argv": sys.argv, "name": __name__, "path0": sys.path[0]}
    srv = socket.create_server(("127.0.0.1", 0))
    out: dict = {}
    t = threading.Thread(target=serve, args=(srv, out))
    t.start()
    with socket.create_connection(srv.getsockname(), timeout=WAIT) as cli:
        report["client_transport"] = getattr(cli, "transport", "stdlib")
        report["isinstance"] = isinstance(cli, socket.socket)
        msg = b"hello over whatever carries it" * 1000
        cli.sendall(msg)
        cli.shutdown(socket.SHUT_WR)
        got = b""
        while chunk := cli.recv(65536):
            got += chunk
        report["echo_ok"] = got == msg
    t.join(WAIT)
    srv.close()
    report.update(out)
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with a, b:
        b.bind(("127.0.0.1", 0))
        b.settimeout(WAIT)
        a.sendto(b"datagram", b.getsockname())
        report["udp"] = b.recvfrom(100)[0].decode()
        report["udp_transport"] = getattr(a, "transport", "stdlib")
        report["udp_isinstance"] = isinstance(a, socket.socket)
    print(json.dumps(report), flush=True)
    if "--exit" in sys.argv:
        return int(sys.argv[sys.argv.index("--exit") + 1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
