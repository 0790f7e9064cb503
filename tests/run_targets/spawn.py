"""An unmodified program that starts a Python child which connects back; prints a JSON report.

The child reports the class of socket.socket it sees and its connection's
transport; the parent reports the accepted connection's transport.
"""

import json
import socket
import subprocess
import sys

WAIT = 30.0

CHILD = """
import json, socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=30)
s.sendall(b"x")
print(json.dumps({"cls": socket.socket.__module__ + "." + socket.socket.__name__,
                  "transport": getattr(s, "transport", "stdlib")}), flush=True)
s.recv(1)
s.close()
"""


def main() -> int:
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(WAIT)
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(srv.getsockname()[1])],
                             stdout=subprocess.PIPE, text=True)
    try:
        conn, _ = srv.accept()
        with conn:
            conn.settimeout(WAIT)
            assert conn.recv(1) == b"x"
            report = json.loads(child.stdout.readline())
            report["parent_transport"] = getattr(conn, "transport", "stdlib")
            conn.sendall(b"y")
        report["child_rc"] = child.wait(WAIT)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()
        srv.close()
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
