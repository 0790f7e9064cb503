"""An unmodified xmlrpc.client program: ServerProxy calls, and one multicall.

Usage: xmlrpc_client.py PORT N

N calls of each function in turn, then one MultiCall of N adds.  Prints
the results as JSON.
"""

import json
import sys
import xmlrpc.client


def main() -> int:
    port, n = int(sys.argv[1]), int(sys.argv[2])
    results = []
    with xmlrpc.client.ServerProxy(f"http://127.0.0.1:{port}/", allow_none=True) as proxy:
        for i in range(n):
            results.append(proxy.add(i, i * i))
            results.append(proxy.reverse(f"call {i} " + "z" * (i * 100)))
            results.append(proxy.upto(i))
            results.append(proxy.keys({f"k{j}": j for j in range(i, -1, -1)}))
        multi = xmlrpc.client.MultiCall(proxy)
        for i in range(n):
            multi.add(i, -2 * i)
        results.append(list(multi()))
    print(json.dumps({"results": results}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
