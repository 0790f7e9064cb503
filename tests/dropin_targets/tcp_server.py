"""An unmodified socketserver program: ThreadingTCPServer with a StreamRequestHandler.

The protocol: each line ``<n> <text>`` is answered with ``<n>`` lines, the
k-th being ``k:<text reversed>``, then an empty line.  Prints ``{"port": N}``
once it listens; at end of file on stdin it shuts down and prints a report:
lines answered and the transport of every connection it accepted.
"""

import json
import socketserver
import sys
import threading

lock = threading.Lock()
stats = {"lines": 0, "transports": []}


class Handler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        with lock:
            stats["transports"].append(getattr(self.connection, "transport", "stdlib"))
        while line := self.rfile.readline():
            count, _, text = line.rstrip(b"\n").partition(b" ")
            out = b"".join(b"%d:%s\n" % (k, text[::-1]) for k in range(int(count)))
            self.wfile.write(out + b"\n")
            with lock:
                stats["lines"] += 1


def main() -> int:
    socketserver.ThreadingTCPServer.allow_reuse_address = True
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=lambda: (sys.stdin.read(), server.shutdown()), daemon=True).start()
    print(json.dumps({"port": server.server_address[1]}), flush=True)
    server.serve_forever()
    server.server_close()    # joins the handler threads
    print(json.dumps(stats), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
