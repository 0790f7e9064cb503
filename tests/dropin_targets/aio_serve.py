"""What the asyncio target servers share: listen, announce the port, serve until stdin's EOF.

Standard library only, like the programs that import it (their directory is
first on ``sys.path`` under ``python`` and under ``python -m impl.run``).
"""

import asyncio
import json
import sys
import threading


async def serve_until_eof(start, stats: dict) -> None:
    """Await ``start()`` (a server on 127.0.0.1, port 0), print its port and the loop's
    selector as JSON, serve until stdin reaches end of file, then print *stats*."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    # stdin is read by a thread: the event loop's selector need not support pipes.
    threading.Thread(target=lambda: (sys.stdin.read(), loop.call_soon_threadsafe(stop.set)),
                     daemon=True).start()
    server = await start()
    print(json.dumps({"port": server.sockets[0].getsockname()[1],
                      "selector": type(loop._selector).__name__}), flush=True)
    async with server:
        await stop.wait()
    print(json.dumps(stats), flush=True)
