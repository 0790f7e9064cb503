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
both processes at a fork() while ring sockets are open (the child must be
able to ask, the parent to answer).
"""

from __future__ import annotations

import logging
import os
import threading

from impl.monitor import client as _client
from impl.monitor import protocol as P

__all__ = ["ensure", "send_take", "send_release", "register_child", "running"]

log = logging.getLogger("socksdirect.token")

_lock = threading.Lock()
_agent: _Agent | None = None


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


def ensure() -> _Agent | None:
    """The running agent of this process, started if need be; None without a monitor."""
    global _agent
    agent = _agent
    if agent is not None and agent.pid == os.getpid() and agent.thread.is_alive():
        return agent
    with _lock:
        agent = _agent
        if agent is not None and agent.pid == os.getpid() and agent.thread.is_alive():
            return agent
        chan = _client.open_agent_channel()
        if chan is None:
            return None
        _agent = agent = _Agent(chan)
        return agent


def running() -> bool:
    """Is this process's agent up (for tests and diagnostics)?"""
    agent = _agent
    return agent is not None and agent.pid == os.getpid() and agent.thread.is_alive()


def send_take(key: tuple) -> bool:
    """TokenSharing!Ask: TAKE to the monitor; False if there is no monitor."""
    agent = ensure()
    return agent is not None and agent.send(P.TAKE, _body(key))


def send_release(key: tuple) -> bool:
    """TokenSharing!Release: RELEASE to the monitor."""
    agent = ensure()
    return agent is not None and agent.send(P.RELEASE, _body(key))


def register_child(parent: int, ends: list[list]) -> None:
    """In a fork child: tell the monitor it holds *ends* too (FORKED).

    A request on the process's control channel, not the agent's: its reply
    must not reach the agent thread, and the child must be known as a
    holder before it runs on (its parent may exit at once).
    """
    try:
        _client.request(P.FORKED, {"parent": parent, "ends": ends})
    except OSError as exc:
        log.warning("the monitor did not take this fork child as a holder: %s", exc)


def _after_fork_in_child() -> None:
    global _agent, _lock
    _lock = threading.Lock()
    if _agent is not None:
        fd = _agent.chan.sock.detach()  # the parent's: drop our copy silently
        if fd >= 0:
            os.close(fd)
        _agent = None


os.register_at_fork(after_in_child=_after_fork_in_child)
