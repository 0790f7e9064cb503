"""What this process's ring sockets are doing: a text dump, on demand or on a signal.

A program stuck in a socket call is usually waiting for something another
process or thread owes it: a token (the word names its owner; WANT says a
waiter flagged it), room or data in a ring (head and tail; the sleeping
flags say who waits on an eventfd), or a monitor GRANT (``asked``).  The
monitor's table (``python -m impl.ctl status``) shows its half; this module
shows the process's half, with the stack of every thread::

    SOCKSDIRECT_DUMP_SIGNAL=USR1 python prog.py &
    kill -USR1 <pid>       # writes socksdirect-<pid>.txt in $SOCKSDIRECT_DUMP_DIR
                           # (default: the temporary directory, $TMPDIR or /tmp)

Opt-in, because a library must not take a signal from its program.  The
variable is read at ``import impl``; fork children keep the handler and
subprocesses inherit the variable.  :func:`dump` writes the same text
anywhere, without a signal.

Why a snapshot without locks: the point is to look at a process that may
be stuck holding them.  Header and token words are aligned 8-byte loads,
never torn; the rest (``held``, ``asked``, the queue) is read without the
token's lock.  So fields can be slightly out of step with each other.
"""

from __future__ import annotations

import faulthandler
import os
import signal
import tempfile
import threading
from typing import TextIO

from impl.ring import layout

__all__ = ["dump", "install", "ENV_SIGNAL", "ENV_DIR", "END", "dump_dir", "dump_path"]

#: Name of the signal (``USR1``, ``SIGUSR2``, a number) that makes a process dump.
ENV_SIGNAL = "SOCKSDIRECT_DUMP_SIGNAL"
#: Directory of the dump files (default: the temporary directory).
ENV_DIR = "SOCKSDIRECT_DUMP_DIR"

# Header words worth showing, in the order shown (the constant ones are left out).
_FIELDS = ("tail", "head", "writer_sleeping", "reader_sleeping", "closed_wr", "closed_rd",
           "records")


def _ring_line(name: str, ring) -> str:
    try:
        if ring.closed:
            return f"    {name}: closed"
        q = ring._q
        words = {f: q[layout.word(layout.FIELDS[f])] for f in _FIELDS}
    except ValueError:              # closed by another thread meanwhile (released view)
        return f"    {name}: closed"
    shown = " ".join(f"{f}={v}" for f, v in words.items())
    used = words["tail"] - words["head"]
    return f"    {name}: capacity={ring.capacity} {shown} (bytes in it: {used})"


def _token_line(name: str, tok) -> str:
    if tok is None:
        return f"    {name} token: none (not checked)"
    owner, want, busy = tok.word()
    return (f"    {name} token: owner={owner} busy={int(busy)} want={int(want)} "
            f"held={int(tok.held)} asked={int(tok.asked)} closed={int(tok.closed)} "
            f"queue={list(tok.queue)}")


#: The dump's last line: a reader waiting for the file knows it is whole.
END = "end of socksdirect dump"


def _live_conns() -> list:
    from impl import sdsocket
    for _ in range(10):
        try:
            return list(sdsocket._live)
        except RuntimeError:        # another thread added or dropped one meanwhile
            continue
    return []


def dump(out: TextIO) -> None:
    """Write every ring connection of this process, its tokens, and every thread's stack."""
    conns = _live_conns()
    out.write(f"socksdirect dump of pid {os.getpid()}: {len(conns)} ring connection(s)\n")
    for conn in sorted(conns, key=lambda c: (c.cid or 0, c.end)):
        where = "socketpair" if conn.cid is None else f"connection {conn.cid} ({conn.end} end)"
        out.write(f"  {where}: family={conn.family} refs={conn.refs} local={conn.local!r} "
                  f"peer={conn.peer!r} shut_rd={int(conn.shut_rd)} "
                  f"shut_wr={int(conn.shut_wr)}\n")
        out.write(_ring_line("tx (we write)", conn.tx) + "\n")
        out.write(_ring_line("rx (we read)", conn.rx) + "\n")
        send, recv = conn.tokens()
        out.write(_token_line("send", send) + "\n")
        out.write(_token_line("recv", recv) + "\n")
    # The words name threads by their kernel id (native_id); the stacks below
    # by their pthread ident: this table joins the two.
    out.write("threads (native_id  ident  name):\n")
    for th in threading.enumerate():
        out.write(f"  {th.native_id}  {th.ident:#018x}  {th.name}\n")
    out.flush()
    # faulthandler writes to the descriptor, past Python's buffer: flushed first.
    faulthandler.dump_traceback(out, all_threads=True)
    out.write(END + "\n")
    out.flush()


def dump_dir() -> str:
    """The directory of the dump files: ``$SOCKSDIRECT_DUMP_DIR``, else the temporary one."""
    return os.environ.get(ENV_DIR) or tempfile.gettempdir()


def dump_path(pid: int | None = None, directory: str | None = None) -> str:
    """Where the signal handler of process *pid* (default: this one) writes its dump."""
    return os.path.join(directory or dump_dir(),
                        f"socksdirect-{os.getpid() if pid is None else pid}.txt")


_directory: str | None = None     # fixed at install(): no lookup inside the handler


def _on_signal(signum, frame) -> None:
    # Runs between two bytecodes of whatever the main thread was doing --
    # perhaps inside a token's bookkeeping: nothing may escape into it.
    try:
        with open(dump_path(directory=_directory), "a") as out:
            dump(out)
    except BaseException as exc:    # noqa: BLE001 - reported, never raised into the program
        try:
            os.write(2, f"socksdirect: no dump: {exc!r}\n".encode())
        except OSError:
            pass


def _signal_number(name: str) -> int:
    name = name.strip().upper()
    if name.isdigit():
        return int(name)
    try:
        return int(getattr(signal.Signals, name if name.startswith("SIG") else "SIG" + name))
    except AttributeError:
        raise ValueError(f"{ENV_SIGNAL}={name!r} names no signal") from None


def install(sig: int | str | None = None) -> int | None:
    """Dump to :func:`dump_path` on signal *sig* (default: ``$SOCKSDIRECT_DUMP_SIGNAL``).

    Returns the signal number, or None if none is asked for.  Called at
    ``import impl``; call it from the main thread, as :func:`signal.signal` requires
    (ValueError otherwise, as for a bad name; OSError for a signal that cannot be
    caught).  The directory is fixed now, from ``$SOCKSDIRECT_DUMP_DIR``.
    """
    if sig is None:
        sig = os.environ.get(ENV_SIGNAL)
        if not sig:
            return None
    global _directory
    num = _signal_number(sig) if isinstance(sig, str) else int(sig)
    _directory = dump_dir()
    signal.signal(num, _on_signal)
    return num
