"""The agent: one thread per process that talks tokens with the monitor.

Why a thread: a RECALL must be answered even while every thread of the
holder is busy elsewhere (blocked in another socket, computing), and the
request/reply control channel cannot carry pushes.  So each process that
shares sockets with another opens one more channel, HELLO role "agent",
and a daemon thread reads it: RECALL -> :meth:`Token.recall`, GRANT ->
:meth:`Token.granted`.  TAKE and RELEASE go out on the same channel from
whichever thread owes them (one-way messages: SOCK_SEQPACKET keeps each
whole).

The agent starts on demand: in a process that asks for a token, and in
the parent at a fork() while ring sockets are open (the parent must be able
to answer the child's TAKE).  It is an :class:`impl.fork.PerProcess`
resource ("token-agent"): a fork child never uses its parent's (whose
thread is not in the child anyway) and starts its own on first use.
"""

from __future__ import annotations

import logging
import os
import threading

from impl.fork import PerProcess
from impl.monitor import client as _client
from impl.monitor import protocol as P

__all__ = ["ensure", "send_take", "send_release", "register_child", "running"]

log = logging.getLogger("socksdirect.token")


class _Agent:
    """The agent channel and the thread that reads it."""

    def __init__(self, chan: _client.ControlChannel) -> None:
        self.chan = chan
        self.pid = os.getpid()
        self.thread = threading.Thread(target=self._run, name="socksdirect-token-agent",
                                       daemon=True)
        self.thread.start()

    def send(self, op: int, body: dict) -> bool:
        """Send a one-way message; False if the monitor is gone."""
        try:
            with self.chan._lock:
                P.send_msg(self.chan.sock, op, body)
        except OSError:
            return False
        return True

    def _run(self) -> None:
        from impl.token import _registry
        sock = self.chan.sock
        sock.settimeout(None)   # pushes come when they come
        while True:
            try:
                msg = P.recv_msg(sock)
            except P.ProtocolError as exc:
                log.warning("token agent: bad message from the monitor: %s", exc)
                continue
            except OSError:
                msg = None
            if msg is None:
                return          # the monitor went away: tokens stay where they are
            msg.close_fds()
            key = (msg.body.get("id"), msg.body.get("end"), msg.body.get("dir"))
            tok = _registry.get(key)
            if msg.op == P.RECALL:
                if tok is not None:
                    tok.recall()                         # TokenSharing!Recall
            elif msg.op == P.GRANT:
                if tok is None or tok.closed:
                    # Closed meanwhile: hand it straight back.
                    self.send(P.RELEASE, _body(key))
                else:
                    tok.granted(bool(msg.body.get("reclaimed")))  # TokenSharing!Grant
            elif msg.op == P.ERROR:
                # A TAKE or RELEASE the monitor could not parse: a bug on our side.
                log.warning("token agent: the monitor refused a message: %s",
                            msg.body.get("message"))
            else:
                log.warning("token agent: unexpected %s from the monitor", msg.name)


def _body(key: tuple) -> dict:
    cid, end, direction = key
    return {"id": cid, "end": end, "dir": direction}


def _start() -> _Agent | None:
    """Fork!CreateResource: open an agent channel and start its thread (None: no monitor)."""
    chan = _client.open_agent_channel()
    return None if chan is None else _Agent(chan)


def _close(agent: _Agent) -> None:
    # Its thread has ended (the monitor closed the channel), or the process
    # replaces it: the channel is ours to close.
    agent.chan.close()


def _orphan(agent: _Agent) -> None:
    # In a fork child: the parent's channel, silently dropped (its thread is not here).
    fd = agent.chan.sock.detach()
    if fd >= 0:
        os.close(fd)


_agent: PerProcess[_Agent] = PerProcess("token-agent", _start,
                                        alive=lambda a: a.thread.is_alive(),
                                        close=_close, orphan=_orphan)


def ensure() -> _Agent | None:
    """The running agent of this process, started if need be; None without a monitor."""
    return _agent.get()


def running() -> bool:
    """Is this process's agent up (for tests and diagnostics)?"""
    agent = _agent.peek()
    return agent is not None and agent.thread.is_alive()


def send_take(key: tuple) -> bool:
    """TokenSharing!Ask: TAKE to the monitor; False if there is no monitor."""
    agent = ensure()
    return agent is not None and agent.send(P.TAKE, _body(key))


def send_release(key: tuple) -> bool:
    """TokenSharing!Release: RELEASE to the monitor."""
    agent = ensure()
    return agent is not None and agent.send(P.RELEASE, _body(key))


def register_child(ends: list[list], proofs: list[int]) -> None:
    """In a fork child: tell the monitor it holds *ends* too (Fork!Register, FORKED).

    *proofs* are the child's copies of the ends' hold-pipe write ends, one
    per end, in order.  A request on the process's control channel, not
    the agent's: its reply must not reach the agent thread, and the child
    must be known as a holder before it runs on (its parent may exit at once).
    """
    for start in range(0, len(ends), P.MAX_ENDS):
        part = slice(start, start + P.MAX_ENDS)
        try:
            _client.request(P.FORKED, {"ends": ends[part]}, proofs[part])
        except OSError as exc:
            log.warning("the monitor did not take this fork child as a holder: %s", exc)
            return
