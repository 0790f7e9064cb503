"""``python -m impl.ctl`` (or ``socksdirect-ctl``): look at and steer a running monitor.

Commands::

    status [--json]    listeners, connections, tokens, processes and counters
    stats  [--json]    counters only
    reload             re-read the monitor's ACL file (a bad file keeps the old rules)
    stop               stop the monitor and wait until it has exited

``--socket PATH`` names the monitor (default: ``$SOCKSDIRECT_MONITOR``, else
the per-user path of :mod:`impl.monitor.paths`).  The ctl never starts a
monitor: with none running it says so and exits with status 1, as it does
for any request the monitor refuses.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from impl.monitor import client
from impl.monitor import protocol as P
from impl.monitor.paths import default_socket_path, flock_by

__all__ = ["main", "format_status", "format_stats", "COUNTER_LABELS"]

#: Bound on waiting for the monitor to answer, and for ``stop`` to finish.
TIMEOUT = 10.0

#: What each counter counts, in the order ``status`` and ``stats`` show them.
COUNTER_LABELS = {
    "connections": "ring connections set up",
    "accepted": "  of which accepted",
    "closed": "connections closed (both ends)",
    "resets": "queued connections reset",
    "kernel_fallbacks": "connects sent to the kernel",
    "backlog_full": "  of which: listener backlog full",
    "refused": "connects refused (bad request)",
    "denied": "connects denied by the ACL",
    "listens": "listeners registered",
    "listens_denied": "listens denied by the ACL",
    "deaths": "client processes exited",
    "forks": "fork children holding ends (FORKED)",
    "takes": "token requests (TAKE)",
    "grants": "tokens granted",
    "recalls": "tokens recalled from a holder",
    "reclaims": "tokens reclaimed (holder died or closed)",
    "bytes": "bytes through rings",
    "protocol_errors": "malformed control messages",
    "channels_refused": "control channels refused",
    "internal_errors": "internal errors (see the log)",
}


class CtlError(Exception):
    """A failure to report on stderr with exit status 1."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ctl command; return the exit status (0 ok, 1 failure, 2 usage)."""
    args = _parser().parse_args(argv)
    path = args.socket or args.socket_before or default_socket_path()
    try:
        return args.func(path, args, sys.stdout)
    except CtlError as exc:
        print(f"{_prog()}: {exc}", file=sys.stderr)
        return 1


def _prog() -> str:
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return name if name == "socksdirect-ctl" else "python -m impl.ctl"


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=_prog(),
                                 description="Show and control the socksdirect monitor.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--socket", default=None, metavar="PATH",
                        help="the monitor's control socket (default: $SOCKSDIRECT_MONITOR "
                        "or the per-user path)")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, func, text, has_json in (
            ("status", _cmd_status, "tables and counters", True),
            ("stats", _cmd_stats, "counters only", True),
            ("reload", _cmd_reload, "re-read the ACL file", False),
            ("stop", _cmd_stop, "stop the monitor", False)):
        p = sub.add_parser(name, parents=[common], help=text, description=text)
        if has_json:
            p.add_argument("--json", action="store_true", help="print JSON")
        p.set_defaults(func=func)
    # Also accepted before the command; a separate name, or the subcommand's
    # default would overwrite it.
    ap.add_argument("--socket", dest="socket_before", default=None, metavar="PATH",
                    help=argparse.SUPPRESS)
    return ap


# -- talking to the monitor ------------------------------------------------------------
def _ask(path: str, op: int) -> dict[str, Any]:
    """One request on a channel of our own; CtlError says what went wrong."""
    try:
        chan = client.ControlChannel.connect(path, role="ctl", timeout=TIMEOUT)
    except (FileNotFoundError, ConnectionRefusedError):
        raise CtlError(f"no monitor is running on {path} (start one with: "
                       "python -m impl.monitor)") from None
    except PermissionError as exc:
        raise CtlError(f"cannot reach the monitor on {path}: {exc.strerror} "
                       "(is it another user's?)") from None
    except TimeoutError:
        raise CtlError(f"the monitor on {path} did not answer within {TIMEOUT} s") from None
    except OSError as exc:
        raise CtlError(f"cannot talk to the monitor on {path}: {exc}") from None
    try:
        return chan.request(op).body
    except TimeoutError:
        raise CtlError(f"the monitor on {path} did not answer within {TIMEOUT} s") from None
    except OSError as exc:
        # An ERROR reply: its message is the monitor's own explanation.
        raise CtlError(exc.strerror or str(exc)) from None
    finally:
        chan.close()


def _cmd_status(path: str, args, out: TextIO) -> int:
    body = _ask(path, P.STATUS)
    out.write(json.dumps(body, indent=2) + "\n" if args.json else format_status(body))
    return 0


def _cmd_stats(path: str, args, out: TextIO) -> int:
    counters = _ask(path, P.STATS)["counters"]
    out.write(json.dumps(counters, indent=2) + "\n" if args.json else format_stats(counters))
    return 0


def _cmd_reload(path: str, args, out: TextIO) -> int:
    body = _ask(path, P.RELOAD)
    out.write(f"reloaded {body.get('rules', '?')} rules from {body.get('acl', '?')}\n")
    return 0


def _cmd_stop(path: str, args, out: TextIO) -> int:
    pid = _ask(path, P.STATUS)["monitor"]["pid"]
    _ask(path, P.STOP)
    if not _wait_gone(path, time.monotonic() + TIMEOUT):
        raise CtlError(f"the monitor (pid {pid}) accepted STOP but is still running "
                       f"after {TIMEOUT} s")
    out.write(f"monitor {pid} stopped\n")
    return 0


def _wait_gone(path: str, deadline: float) -> bool:
    """Wait until the monitor on *path* has let go of its lock (it has finished)."""
    try:
        fd = os.open(path + ".lock", os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return True
    try:
        return flock_by(fd, fcntl.LOCK_SH, deadline)
    finally:
        os.close(fd)


# -- formatting ---------------------------------------------------------------------------
def _table(title: str, rows: list[dict], columns: list[tuple[str, str | Callable]],
           total: int | None = None) -> list[str]:
    """A titled, aligned text table; each column is (header, key or function of the row)."""
    shown = len(rows) if total is None else total
    lines = [f"{title} ({shown})"]
    if not rows:
        return lines + ["  (none)"]
    cells = [[h for h, _ in columns]]
    for row in rows:
        cells.append([str(get(row) if callable(get) else row.get(get, "")) for _, get in columns])
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    for r in cells:
        lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True))
                     .rstrip())
    if total is not None and total > len(rows):
        lines.append(f"  ... and {total - len(rows)} more")
    return lines


def _addr(row: dict) -> str:
    addr = row.get("address", [])
    if len(addr) == 1:
        name = addr[0]
        return "@" + name[1:] if name.startswith("\0") else name
    if len(addr) == 2:
        host, port = addr
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(addr)


def _holders(row: dict) -> str:
    """A connection's holders when an end is shared: "client pids/server pids", else ""."""
    holders = row.get("holders") or {}
    ends = [holders.get(end, []) for end in ("client", "server")]
    if all(len(pids) <= 1 for pids in ends):
        return ""
    return "/".join(",".join(map(str, pids)) or "-" for pids in ends)


def _hold(row: dict) -> str:
    """Each end's hold pipe: "client/server", each "watched", "unheld" (no process holds
    it any more) or "-" (never forked); "" when neither end has one."""
    hold = row.get("hold") or {}
    states = [hold.get(end, "none") for end in ("client", "server")]
    if all(state == "none" for state in states):
        return ""
    return "/".join("-" if state == "none" else state for state in states)


def _pids(pids: list) -> str:
    return ",".join(map(str, pids)) or "-"


def _uptime(seconds: float) -> str:
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h {minutes}m"
    if hours:
        return f"{hours}h {minutes}m {secs}s"
    return f"{minutes}m {secs}s" if minutes else f"{secs}s"


def format_stats(counters: dict[str, int]) -> str:
    """The counters as labelled lines, known ones first in a fixed order."""
    keys = [k for k in COUNTER_LABELS if k in counters]
    keys += sorted(k for k in counters if k not in COUNTER_LABELS)
    width = max((len(COUNTER_LABELS.get(k, k)) for k in keys), default=0)
    lines = ["COUNTERS"]
    for k in keys:
        lines.append(f"  {COUNTER_LABELS.get(k, k).ljust(width)}  {counters[k]:>12,}")
    return "\n".join(lines) + "\n"


def format_status(status: dict[str, Any]) -> str:
    """A STATUS reply as readable text: the monitor, its ACL, four tables, the counters."""
    mon = status.get("monitor", {})
    acl = status.get("acl", {})
    counts = status.get("counts", {})
    rules = [r for r in acl.get("rules", []) if r.get("index") is not None]
    lines = [
        f"monitor  pid {mon.get('pid')}  up {_uptime(mon.get('uptime', 0))}  "
        f"protocol {mon.get('version')}",
        f"socket   {mon.get('socket')}",
        f"acl      {acl.get('source')}: {len(rules)} rules, default {acl.get('default')}",
    ]
    if "fds" in mon:
        lines.append(f"fds      {mon['fds']} open (limit {mon.get('fd_limit')}), "
                     f"{mon.get('pool', 0)} rings ready")
    lines.append("")
    lines += _table("LISTENERS", status.get("listeners", []),
                    [("ADDRESS", _addr), ("FAMILY", "family"), ("PID", "pid"),
                     ("BACKLOG", "backlog"), ("QUEUED", "queued")],
                    counts.get("listeners"))
    lines.append("")
    lines += _table("CONNECTIONS", status.get("connections", []),
                    [("ID", "id"), ("CLIENT", "client"), ("SERVER", "server"),
                     ("ADDRESS", _addr), ("CLIENT END", "client_side"),
                     ("SERVER END", "server_side"), ("BYTES", "bytes"),
                     ("HOLD PIPES", _hold), ("SHARED BY", _holders)],
                    counts.get("connections"))
    lines.append("")
    lines += _table("TOKENS", status.get("tokens", []),
                    [("ID", "id"), ("END", "end"), ("DIR", "dir"),
                     ("HOLDER", lambda t: "-" if t.get("holder") is None else t["holder"]),
                     ("QUEUE", lambda t: _pids(t.get("queue", []))),
                     ("RECALLED", lambda t: "yes" if t.get("recalled") else "no")],
                    counts.get("tokens"))
    lines.append("")
    lines += _table("PROCESSES", status.get("processes", []),
                    [("PID", "pid"), ("UID", "uid"), ("CHANNELS", "channels"),
                     ("LISTENERS", "listeners"), ("CONNECTIONS", "connections"),
                     ("AGENT", lambda p: "yes" if p.get("agent") else "no"),
                     ("PROGRAM", "program")],
                    counts.get("processes"))
    lines.append("")
    return "\n".join(lines) + "\n" + format_stats(status.get("counters", {}))


if __name__ == "__main__":
    sys.exit(main())
