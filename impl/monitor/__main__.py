"""``python -m impl.monitor``: run the monitor in the foreground (or as a daemon)."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from impl.monitor.paths import default_socket_path


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the monitor until it is stopped."""
    ap = argparse.ArgumentParser(prog="python -m impl.monitor",
                                 description="The socksdirect monitor: sets up shared-memory "
                                 "connections between processes of this user and enforces "
                                 "the access rules.")
    ap.add_argument("--socket", default=None,
                    help=f"control socket path (default: {default_socket_path()})")
    ap.add_argument("--config", default=None, help="ACL rules, TOML (see docs/monitor.md)")
    ap.add_argument("--log-level", default="info",
                    choices=["debug", "info", "warning", "error"])
    ap.add_argument("--ready-fd", type=int, default=None,
                    help="write 'ready\\n' to this descriptor once listening, then close it")
    ap.add_argument("--daemon", action="store_true",
                    help="detach (new session, double fork) once listening")
    args = ap.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s monitor[%(process)d] %(levelname)s %(message)s")
    from impl.monitor.server import Monitor  # after logging is set up
    path = args.socket or default_socket_path()
    try:
        mon = Monitor(path, config=args.config)
    except (OSError, ValueError) as exc:
        print(f"impl.monitor: {exc}", file=sys.stderr)
        _ready(args.ready_fd, f"error {exc}\n")
        return 1
    if args.daemon and _detach():
        return 0
    _ready(args.ready_fd, "ready\n")
    mon.serve_forever()
    return 0


def _ready(fd: int | None, line: str) -> None:
    if fd is None:
        return
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def _detach() -> bool:
    """Double fork; return True in the processes that must exit now."""
    if os.fork():
        return True
    os.setsid()
    if os.fork():
        os._exit(0)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.close(devnull)
    return False


if __name__ == "__main__":
    sys.exit(main())
