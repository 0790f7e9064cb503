"""Unmodified HTTP clients: urllib.request, and http.client keep-alive connections.

Usage: http_clients.py PORT FILE URLLIB_REQUESTS CONNECTIONS REQUESTS_PER_CONNECTION

urllib: URLLIB_REQUESTS times, a GET of /FILE and a POST of b"urllib <i>" to
/echo (urllib closes its connection after each request).  http.client:
CONNECTIONS connections, each making REQUESTS_PER_CONNECTION requests in
turn (GET /hello, POST /echo, GET /FILE, ...) on the same socket.  Prints a
JSON report with every status and body (latin-1 text).
"""

import http.client
import json
import sys
import urllib.request

WAIT = 30.0


def text(data: bytes) -> str:
    return data.decode("latin-1")


def with_urllib(base: str, name: str, n: int) -> list:
    out = []
    for i in range(n):
        with urllib.request.urlopen(f"{base}/{name}", timeout=WAIT) as r:
            out.append(["GET", r.status, text(r.read())])
        req = urllib.request.Request(f"{base}/echo", data=f"urllib {i}".encode(), method="POST")
        with urllib.request.urlopen(req, timeout=WAIT) as r:
            out.append(["POST", r.status, text(r.read())])
    return out


def keepalive(port: int, name: str, per_conn: int, c: int) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
    replies, same = [], True
    first = None
    for k in range(per_conn):
        kind = k % 3
        if kind == 0:
            conn.request("GET", "/hello")
        elif kind == 1:
            conn.request("POST", "/echo", body=f"conn {c} request {k}".encode())
        else:
            conn.request("GET", f"/{name}")
        r = conn.getresponse()
        replies.append([r.status, text(r.read())])
        first = conn.sock if first is None else first
        same = same and conn.sock is first     # the connection was kept, not reopened
    report = {"replies": replies, "one_socket": same,
              "transport": getattr(conn.sock, "transport", "stdlib")}
    conn.close()
    return report


def main() -> int:
    port, name = int(sys.argv[1]), sys.argv[2]
    n_urllib, n_conns, per_conn = (int(a) for a in sys.argv[3:6])
    report = {"urllib": with_urllib(f"http://127.0.0.1:{port}", name, n_urllib),
              "keepalive": [keepalive(port, name, per_conn, c) for c in range(n_conns)]}
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
