"""``python -m impl.monitor`` (or ``socksdirect-monitor``): run the monitor.

Runs in the foreground until SIGTERM, SIGINT or ``impl.ctl stop`` (exit
status 0, socket removed); ``--daemon`` detaches once it listens.  Exit
status 1, with the reason on stderr, when it cannot start: the socket's
directory is not private to this user, another monitor runs on the same
path, or the ACL file is bad.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from impl.monitor.paths import default_socket_path


def _parser() -> argparse.ArgumentParser:
    prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    ap = argparse.ArgumentParser(
        prog=prog if prog == "socksdirect-monitor" else "python -m impl.monitor",
        description="The socksdirect monitor: sets up shared-memory connections between "
        "processes of this user and enforces the access rules.")
    ap.add_argument("--socket", default=None,
                    help=f"control socket path (default: {default_socket_path()})")
    ap.add_argument("--config", default=None, help="ACL rules, TOML (see docs/monitor.md)")
    ap.add_argument("--log-level", default="info", type=str.lower,
                    choices=["debug", "info", "warning", "error"])
    ap.add_argument("--ready-fd", type=int, default=None,
                    help="write 'ready\\n' to this descriptor once listening, then close it")
    ap.add_argument("--daemon", action="store_true",
                    help="detach (new session, double fork) once listening")
    return ap


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the monitor until it is stopped; return the exit status."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s monitor[%(process)d] %(levelname)s %(message)s")
    from impl.monitor.server import Monitor, raise_nofile_limit  # after logging is set up
    path = args.socket or default_socket_path()
    try:
        mon = Monitor(path, config=args.config)
    except (OSError, ValueError) as exc:
        print(f"impl.monitor: cannot start on {path}: {exc}", file=sys.stderr)
        _ready(args.ready_fd, f"error {exc}\n")
        return 1
    raise_nofile_limit()
    if args.daemon and _detach():
        return 0
    # "ready" only once the signal handlers are in place: a supervisor may
    # send SIGTERM or SIGHUP the moment it reads it.
    mon.serve_forever(ready=lambda: _ready(args.ready_fd, "ready\n"))
    return 0


def _ready(fd: int | None, line: str) -> None:
    if fd is None:
        return
    try:
        os.write(fd, line.encode())
    except OSError:
        pass    # whoever waited is gone: nothing to tell
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
