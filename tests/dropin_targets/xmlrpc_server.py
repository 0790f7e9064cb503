"""An unmodified xmlrpc.server program: SimpleXMLRPCServer with a few functions.

Prints ``{"port": N}`` once it listens; at end of file on stdin it shuts
down and prints a report: calls served and the transport of every
connection it accepted.
"""

import json
import sys
import threading
from xmlrpc.server import SimpleXMLRPCRequestHandler, SimpleXMLRPCServer

transports = []


class Handler(SimpleXMLRPCRequestHandler):
    def setup(self) -> None:
        super().setup()
        transports.append(getattr(self.connection, "transport", "stdlib"))


def main() -> int:
    server = SimpleXMLRPCServer(("127.0.0.1", 0), Handler, logRequests=False, allow_none=True)
    calls = {"n": 0}

    def counted(func):
        def call(*args):
            calls["n"] += 1
            return func(*args)
        return call

    server.register_function(counted(lambda a, b: a + b), "add")
    server.register_function(counted(lambda s: s[::-1]), "reverse")
    server.register_function(counted(lambda n: list(range(n))), "upto")
    server.register_function(counted(lambda d: sorted(d)), "keys")
    server.register_multicall_functions()
    threading.Thread(target=lambda: (sys.stdin.read(), server.shutdown()), daemon=True).start()
    print(json.dumps({"port": server.server_address[1]}), flush=True)
    server.serve_forever()
    server.server_close()
    print(json.dumps({"calls": calls["n"], "transports": transports}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
