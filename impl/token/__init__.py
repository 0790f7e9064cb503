"""Send and receive tokens: who may use one side of a socket end (TokenSharing.tla).

Every ring socket end has a send token (on the ring it writes) and a receive
token (on the ring it reads).  The token word in the ring header names the
owner thread (``owner_tid << 2 | WANT | BUSY``, see ``impl/ring/layout.py``).

Why tokens and not a lock: almost every socket is used by one thread at a
time.  The owner's operations check the word inside the ring's C call with
one CAS on a line that stays in its cache (TokenSharing!Enter/Exit): no
lock, no system call, no extra call from Python.  Only when another thread
or process wants the token does anything else run, and that is this module:

* threads of one process queue FIFO in a :class:`Token` (a Condition, the
  spec's ``lq``); the first takes the token as soon as the owner is not BUSY
  (TokenSharing!Take), flagging WANT first if it is, so that the owner's
  exit wakes it (Flag);
* between processes the monitor moves the token: a process that does not
  hold it sends TAKE; the monitor RECALLs the holder, whose agent thread
  (``impl.token.agent``) queues a release behind the holder's in-flight
  operation (Recall), sends RELEASE when it is done (Release); the monitor
  GRANTs the token to the next process in its FIFO (MonRelease, Grant).

A socketpair() has no monitor: both processes keep ``held`` after a fork and
take the word from each other with the same CAS; a waiter cannot be woken
across processes then, so it polls with a growing back-off.
"""

from __future__ import annotations

import errno
import threading
import time
import weakref
from collections import deque
from contextlib import contextmanager

from impl.ring import _cring, layout

__all__ = ["Token", "AGENT", "tokens", "self_tid"]

# None without the compiled ring module: then no endpoint checks tokens
# (enable_token is a C-backend method) and no Token is ever made.
_lib = _cring.lib if _cring is not None else None
_BUSY = layout.TOKEN_BUSY
_WANT = layout.TOKEN_WANT
_SHIFT = layout.TOKEN_SHIFT

#: The agent's place in a token's queue: a release to the monitor is owed.
AGENT = "agent"

#: (id, end, dir) -> Token, for the agent's RECALL and GRANT.
_registry: weakref.WeakValueDictionary[tuple, Token] = weakref.WeakValueDictionary()
#: Every live token of this process, for the fork hooks.
_live: weakref.WeakSet[Token] = weakref.WeakSet()

# How long the first waiter spins for a BUSY owner to finish, in C, before it
# sleeps: a few ring calls' worth.
_SPIN_NS = 20_000
# socketpair(): how long a cross-process waiter sleeps between looks.
_POLL_MIN = 50e-6
_POLL_MAX = 10e-3


def self_tid() -> int:
    """This thread's id as token words name it (gettid(), cached in C)."""
    return _lib.sd_token_self()


def tokens() -> list[Token]:
    """Every live token of this process (for diagnostics and tests)."""
    return list(_live)


class Token:
    """One token of one socket end, as this process sees it.

    *endpoint* is the C ring endpoint it guards (its word lives in that
    ring's header); *key* is ``(id, end, dir)`` for the monitor, or None for
    a socketpair(), which has no monitor.  *held*: this process holds it
    (the spec's ``pheld``); the creator of a socket end does.
    """

    def __init__(self, endpoint, key: tuple | None, *, held: bool = True) -> None:
        self.endpoint = endpoint
        self.key = key
        self.held = held
        self.asked = False          # a TAKE is outstanding
        self.closed = False
        self.queue: deque = deque()  # waiting thread ids, and AGENT, in FIFO order
        self.cond = threading.Condition(threading.Lock())
        _live.add(self)
        if key is not None:
            _registry[key] = self

    def __repr__(self) -> str:
        owner, want, busy = self.word()
        return (f"<Token {self.key or 'socketpair'} owner={owner} busy={busy} want={want} "
                f"held={self.held} queue={list(self.queue)}>")

    # -- the word ----------------------------------------------------------------
    def word(self) -> tuple[int, bool, bool]:
        """(owner tid, WANT, BUSY) as the word says now."""
        w = _lib.sd_token_load(self.endpoint._p)
        return w >> _SHIFT, bool(w & _WANT), bool(w & _BUSY)

    def claim(self) -> None:
        """Make the calling thread the owner of a fresh token (word 0), for its creator."""
        _lib.sd_token_cas(self.endpoint._p, 0, self_tid() << _SHIFT)

    # -- the owner's side -----------------------------------------------------------
    @contextmanager
    def hold(self, timeout: float | None = None):
        """Keep the token BUSY over several ring operations (one socket call).

        A recv(MSG_WAITALL) or a non-blocking sendall() takes several ring
        calls; the token must not change hands between them, or another
        thread's bytes would land inside this call's.  Inside, every ring
        call is a continuation and only this frame ends the operation.
        """
        ep = self.endpoint
        me = self_tid() << _SHIFT
        if _lib.sd_token_cas(ep._p, me, me | _BUSY) != 1:   # TokenSharing!Enter
            self.acquire(timeout)
        ep._outer = True
        try:
            yield
        finally:
            ep._outer = False
            self.exit()

    def exit(self) -> None:
        """TokenSharing!Exit for the calling thread, if it is BUSY with this token."""
        if _lib.sd_token_exit(self.endpoint._p) == 1:
            self.wanted()

    def wanted(self) -> None:
        """A waiter set WANT and the owner just left: let the queue move."""
        with self.cond:
            self._advance()
            self.cond.notify_all()

    # -- the waiters' side --------------------------------------------------------------
    def acquire(self, timeout: float | None = None) -> None:
        """Wait until the calling thread owns the token and is BUSY with it.

        The slow path of every operation that found the token elsewhere:
        TokenSharing!Queue, then Ask (the process does not hold it), Flag
        (the owner stays BUSY) and finally Take.  *timeout* 0 means "only if
        it can be had now" (BlockingIOError otherwise, as for a non-blocking
        socket); other timeouts raise TimeoutError.

        Why the first waiter spins before it sleeps: an owner is BUSY for
        the length of one ring call, typically a microsecond, and the spin
        runs in C with the GIL released, so the owner can finish meanwhile.
        Sleeping on the Condition instead costs two thread wake-ups through
        the GIL (about a hundred microseconds here).  Only when the spin
        fails -- the owner waits for room or data -- does the waiter set
        WANT, so that the owner's exit wakes it, and sleep.
        """
        me = self_tid()
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.cond:
            self.queue.append(me)                       # TokenSharing!Queue
        try:
            self._wait_turn(me, timeout, deadline)
        except BaseException:
            with self.cond:
                self._leave(me)
            raise

    def _wait_turn(self, me: int, timeout: float | None, deadline: float | None) -> None:
        p = self.endpoint._p
        spin = _SPIN_NS
        poll = _POLL_MIN
        while True:
            with self.cond:
                if self.closed:
                    raise OSError(errno.EBADF, "Bad file descriptor")
                if not self.held:
                    self._ask()                         # TokenSharing!Ask
                    poll = self._sleep(timeout, deadline, poll)  # until GRANT
                    continue
                if self.queue[0] != me:
                    poll = self._sleep(timeout, deadline, poll)  # until those before took it
                    continue
                # A release owed to the monitor waits behind us: our exit must
                # run it (the agent does not poll).  Threads behind us need no
                # WANT: the new first one is woken when we leave the queue and
                # spins for its turn.
                others = _WANT if AGENT in self.queue else 0
            # Our turn and our process's token: nobody else of ours may take
            # it now, and it cannot leave the process (a release waits behind
            # us in the queue), so the spin runs without the lock.
            if _lib.sd_token_take(p, others, 0 if timeout == 0 else spin) == 1:
                with self.cond:                         # TokenSharing!Take
                    self.queue.popleft()
                    if others == 0 and AGENT in self.queue:
                        # A RECALL came while we spun: our exit must run it.
                        _lib.sd_token_or(p, _WANT)      # TokenSharing!Flag
                    if self.queue:
                        self.cond.notify_all()          # the next one's turn to spin
                return
            spin = 0
            with self.cond:
                # Look again under the lock: whatever changed while we spun
                # notified nobody we could hear, so only a state that is still
                # ours to wait in may be slept in (no lost wake-up).
                if self.closed or not self.held or self.queue[0] != me:
                    continue
                if timeout != 0:
                    old = _lib.sd_token_or(p, _WANT)    # TokenSharing!Flag
                    if not old & _BUSY:
                        continue                        # it left meanwhile: take it
                # The owner's exit sees WANT and calls wanted(), which needs
                # the lock we hold until wait() lets it go.
                poll = self._sleep(timeout, deadline, poll)

    def _sleep(self, timeout: float | None, deadline: float | None, poll: float) -> float:
        """Under the lock: wait for a notify, the deadline, or (socketpair) a poll.

        Returns the next poll interval.
        """
        wait = None if deadline is None else deadline - time.monotonic()
        if wait is not None and wait <= 0:
            if timeout == 0:
                raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
            raise TimeoutError(errno.ETIMEDOUT, "timed out")
        if self.key is None:
            # No monitor (socketpair): the owner may be in another process and
            # cannot wake us.  Look again later, less often each time.
            wait = poll if wait is None else min(wait, poll)
            poll = min(poll * 2, _POLL_MAX)
        self.cond.wait(wait)
        return poll

    def _leave(self, me: int) -> None:
        """Under the lock: a waiter gives up (timeout, close, interrupt) and leaves."""
        try:
            self.queue.remove(me)
        except ValueError:
            pass
        self._advance()
        self.cond.notify_all()

    # -- the process level (agent) ------------------------------------------------------
    def _ask(self) -> None:
        """TokenSharing!Ask: request the token from the monitor, once."""
        if self.asked or self.key is None:
            return
        from impl.token import agent
        if agent.send_take(self.key):
            self.asked = True

    def recall(self) -> None:
        """The monitor wants the token for another process (TokenSharing!Recall)."""
        with self.cond:
            if not self.held or AGENT in self.queue:
                return
            self.queue.append(AGENT)
            # Threads queued before the agent flag for themselves (_wait_turn);
            # if the agent is first, _advance releases or flags.
            self._advance()

    def _advance(self) -> None:
        """Under the lock: if a release is owed, make it (TokenSharing!Release), or, while
        the owner is BUSY, flag it (Flag) so that its exit makes it."""
        if not self.queue or self.queue[0] is not AGENT:
            return
        if not self.held:
            self.queue.popleft()
            return
        p = self.endpoint._p
        # The owner may Enter (or Exit) between any two of our looks: its
        # fast path takes no lock.  So the word is only ever changed by a
        # CAS from the value just seen, and a failed CAS looks again.  A
        # "BUSY, return" without WANT set would leave the release to an
        # Exit that has no reason to call wanted(): the process then kept
        # the token for good (a sender hung in test_token_fork under load).
        while True:
            w = _lib.sd_token_load(p)
            if w & _BUSY and w & _WANT:
                return                  # flagged already: its Exit calls wanted()
            ok = _lib.sd_token_cas(p, w, w | _WANT if w & _BUSY else 0)
            if ok == 1 and w & _BUSY:
                return                  # TokenSharing!Flag: its Exit calls wanted()
            if ok == 1:
                break                   # parked: TokenSharing!Release
            if ok < 0:
                return                  # the endpoint is closed: nothing to hand on
        self.queue.popleft()
        self.held = False
        from impl.token import agent
        agent.send_release(self.key)
        if self.queue:                  # threads of ours still wait: back in line
            self._ask()
        self.cond.notify_all()

    def granted(self, reclaimed: bool) -> None:
        """The monitor granted the token to this process (TokenSharing!Grant)."""
        with self.cond:
            self.held = True
            self.asked = False
            if reclaimed:
                # The monitor reset the word of the dead holder; a thread of
                # ours whose word it still is cannot exist.
                pass
            self.cond.notify_all()

    def close(self) -> None:
        """This process closed the socket end: wake every waiter (EBADF)."""
        with self.cond:
            self.closed = True
            self.cond.notify_all()
        if self.key is not None:
            _registry.pop(self.key, None)

    # -- fork ------------------------------------------------------------------------------
    def _forked_child(self) -> None:
        """In a new child: it holds nothing until the monitor grants it (Fork.tla).

        The lock is made anew: a thread of the parent may have held it at
        the fork, and that thread is not in the child.  So may a send that
        was inside Token.hold(): its ``_outer`` mark is the parent's.
        """
        self.cond = threading.Condition(threading.Lock())
        self.queue = deque()
        self.asked = False
        self.endpoint._outer = False
        if self.key is not None:
            self.held = False


def _forked_child() -> None:
    """In a new fork child (called by impl.fork's hook): tokens are the parent's until asked."""
    if _lib is not None:
        _lib.sd_token_forget_self()
    for tok in list(_live):
        tok._forked_child()


# The hook that calls _forked_child: imported here so that a process using
# tokens without sockets has it too.
import impl.fork  # noqa: E402, F401
