"""An unmodified http.server program: ThreadingHTTPServer speaking HTTP/1.1 keep-alive.

Usage: http_server.py [--dir DIR] [--quiet] [--nodelay]

Serves the files under DIR with SimpleHTTPRequestHandler, and besides:

* ``GET /hello``: a small fixed body, ``HELLO`` (the benchmark's request);
* ``POST /echo``: the request body, reversed.

Prints ``{"port": N}`` once it listens; at end of file on stdin it shuts
down and prints a report: requests served, and the transport of every
connection it accepted.  ``--quiet`` drops the per-request log lines;
``--nodelay`` sets TCP_NODELAY on accepted connections (the handler's
``disable_nagle_algorithm``), as a latency-minded deployment would.
"""

import argparse
import functools
import http.server
import json
import sys
import threading

HELLO = b"Hello, world!\n"


class Handler(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"      # keep-alive
    quiet = False
    lock = threading.Lock()
    transports: list = []
    requests = 0

    def setup(self) -> None:
        super().setup()
        with self.lock:
            # What carried this connection (a kernel socket has no such attribute).
            self.transports.append(getattr(self.connection, "transport", "stdlib"))

    def _count(self) -> None:
        with self.lock:
            type(self).requests += 1

    def _reply(self, body: bytes, ctype: str = "text/plain") -> None:
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._count()
        if self.path == "/hello":
            self._reply(HELLO)
        else:
            super().do_GET()

    def do_POST(self) -> None:
        self._count()
        if self.path != "/echo":
            self.send_error(404)
            return
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self._reply(body[::-1], "application/octet-stream")

    def log_message(self, format: str, *args) -> None:
        if not self.quiet:
            super().log_message(format, *args)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default=".")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--nodelay", action="store_true")
    args = ap.parse_args()
    Handler.quiet = args.quiet
    Handler.disable_nagle_algorithm = args.nodelay
    handler = functools.partial(Handler, directory=args.dir)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=lambda: (sys.stdin.read(), server.shutdown()), daemon=True).start()
    print(json.dumps({"port": server.server_address[1],
                      "listener": getattr(server.socket, "transport", "stdlib")}), flush=True)
    server.serve_forever()
    server.server_close()
    print(json.dumps({"requests": Handler.requests, "transports": Handler.transports}),
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
