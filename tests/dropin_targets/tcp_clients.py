"""Unmodified socket clients of tcp_server.py: CLIENTS threads, one connection each.

Usage: tcp_clients.py PORT CLIENTS LINES

Each thread connects with socket.create_connection and sends LINES
requests ``<k % 7 + 1> c<client>l<k>`` one after another, reading each
answer up to its empty line.  Prints the answers as JSON.
"""

import json
import socket
import sys
import threading

WAIT = 30.0


def client(port: int, c: int, lines: int, out: list) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        f = sock.makefile("rwb")
        answers = []
        for k in range(lines):
            f.write(b"%d c%dl%d\n" % (k % 7 + 1, c, k))
            f.flush()
            answer = []
            while (line := f.readline()) not in (b"\n", b""):
                answer.append(line.decode().rstrip("\n"))
            answers.append(answer)
        out[c] = {"answers": answers, "transport": getattr(sock, "transport", "stdlib")}
        f.close()


def main() -> int:
    port, clients, lines = (int(a) for a in sys.argv[1:4])
    out: list = [None] * clients
    threads = [threading.Thread(target=client, args=(port, c, lines, out))
               for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT * 2)
    print(json.dumps({"clients": out}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
