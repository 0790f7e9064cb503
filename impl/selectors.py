"""A ring-first selector: readiness of shared-memory sockets without system calls.

:class:`RingSelector` (also :data:`DefaultSelector`) is a complete
:class:`selectors.BaseSelector`.  It accepts any file object or descriptor,
like the stock selectors, and treats socksdirect ring sockets specially:

* :meth:`RingSelector.select` first looks at the rings themselves, in
  shared memory: bytes to read or the writer's close make a ring socket
  readable; free space or the reader's close make it writable.  No system
  call is made while some ring socket is ready (a kernel descriptor is
  still polled every :data:`KERNEL_EVERY` such calls, so it cannot starve).
* Only when nothing is ready does it spin over the rings for a while that
  adapts to how fast events have been coming (never with ``timeout=0``,
  never longer than ``spin_ns``), and then block in one epoll set
  over everything: a ring socket by its readiness eventfds (reading: its
  own descriptor, kept exact by ``RingReader.settle``; writing: the ring's
  space eventfd, armed by ``RingWriter.settle_space``), listeners and
  kernel descriptors as they are.  The peer signals an eventfd only when
  this side has published that it sleeps (the RingWakeup handshake), so a
  busy connection costs the peer nothing.

A full ring does not make ``select`` spin: writability waits on the space
eventfd.  A ring socket closed while registered is reported ready for the
events it was registered for (as ``poll`` reports POLLNVAL), so whoever
waits on it finds the error instead of hanging.

With asyncio (Python 3.11)::

    import asyncio
    import impl.selectors

    async def main():
        ...

    # asyncio.run(main(), loop_factory=...) is Python 3.12+; on 3.11 use a Runner:
    with asyncio.Runner(loop_factory=impl.selectors.new_event_loop) as runner:
        runner.run(main())

    # or by hand:
    loop = impl.selectors.new_event_loop()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()

    # or for code that calls asyncio.run() itself:
    asyncio.set_event_loop_policy(impl.selectors.EventLoopPolicy())
    asyncio.run(main())

Sockets reach the loop as usual: ``loop.sock_recv(sock, n)``,
``asyncio.open_connection(sock=sock)``, ``asyncio.start_server(cb,
sock=listener)`` with ``impl`` sockets (create them with :mod:`impl`; the
loop's own ``create_connection(host, port)`` makes stdlib sockets).

Not thread-safe, like the stock selectors; unregistering from another
thread while :meth:`~RingSelector.select` waits is tolerated (the key is
not reported), but a ring socket registered meanwhile is only watched from
the next call on (asyncio never does either: it wakes its loop through a
kernel self-pipe, which is always watched).  A descriptor registered
while it was a kernel socket and later turned into a ring socket
(``connect`` after ``register``) keeps being watched as the kernel socket it
was: register after connecting.
"""

from __future__ import annotations

import asyncio
import math
import os
import select
import selectors
import socket as _stdsocket
import time
from collections.abc import Iterator, Mapping

# The stdlib module's names too, so that this module can stand in for it.
from selectors import (
    EVENT_READ,
    EVENT_WRITE,
    BaseSelector,
    EpollSelector,
    PollSelector,
    SelectorKey,
    SelectSelector,
)

from impl import sdsocket
from impl.ring import layout

__all__ = ["RingSelector", "DefaultSelector", "EventLoopPolicy", "new_event_loop",
           "SPIN_NS", "KERNEL_EVERY", "EVENT_READ", "EVENT_WRITE", "BaseSelector",
           "SelectorKey", "SelectSelector", "PollSelector", "EpollSelector"]

_EVENTS = EVENT_READ | EVENT_WRITE

#: Default upper bound (nanoseconds) of the spin over the rings before
#: blocking in epoll.  The spin actually used adapts (see
#: :attr:`RingSelector.spin_budget`): twice the recent time a ring event took
#: to come, and none at all while that exceeds this bound.  A reply caught
#: spinning saves our sleep and wake-up and the peer's eventfd write; an
#: asyncio peer takes tens of microseconds to answer, hence the size.
SPIN_NS = 100_000
# Spin this long before each look at the rings starts with a sched_yield().
_SPIN_BEFORE_YIELD_NS = 5_000
#: After this many consecutive ``select`` calls answered from the rings alone,
#: the next one also polls the kernel descriptors (without waiting).
KERNEL_EVERY = 16

# Header words read on the fast path (see impl/ring/layout.py).
_W_TAIL = layout.word(layout.OFF_TAIL)
_W_HEAD = layout.word(layout.OFF_HEAD)
_W_CLOSED_WR = layout.word(layout.OFF_CLOSED_WR)
_W_CLOSED_RD = layout.word(layout.OFF_CLOSED_RD)

_ONE_CPU = (os.cpu_count() or 1) == 1


def _fileobj_to_fd(fileobj) -> int:
    """Return the descriptor of *fileobj* (an int or an object with fileno())."""
    if isinstance(fileobj, int):
        fd = fileobj
    elif isinstance(fileobj, sdsocket.socket):
        # The kernel-level number, without impl.socket.fileno()'s side effect
        # of switching the socket's eventfd to exact mode: select() arms it
        # itself, and only when it is about to block.
        fd = _stdsocket.socket.fileno(fileobj)
    else:
        try:
            fd = int(fileobj.fileno())
        except (AttributeError, TypeError, ValueError):
            raise ValueError(f"Invalid file object: {fileobj!r}") from None
    if fd < 0:
        raise ValueError(f"Invalid file descriptor: {fd}")
    return fd


def _ring_socket(fileobj, fd: int):
    """The open impl ring or listener socket behind *fileobj* / *fd*, or None."""
    if isinstance(fileobj, sdsocket.socket):
        if fileobj._closed or (fileobj._conn is None and fileobj._lst is None):
            return None
        return fileobj
    return sdsocket.socket_for_fd(fd)


class _Ring:
    """What select() needs of one registered ring socket (a key's view of its rings)."""

    __slots__ = ("key", "sock", "conn", "reader", "writer", "cap", "rd", "wr", "space_fd")

    def __init__(self, key: selectors.SelectorKey, sock) -> None:
        conn = sock._conn
        self.sock = sock
        self.conn = conn
        self.reader = conn.reader
        self.writer = conn.writer
        self.cap = conn.tx.capacity
        self.space_fd = conn.tx.fds().space_efd
        self.set_key(key)

    def set_key(self, key: selectors.SelectorKey) -> None:
        """Follow a modify(): the key select() reports, and the directions it watches."""
        self.key = key
        self.rd = bool(key.events & EVENT_READ)
        self.wr = bool(key.events & EVENT_WRITE)

    def ready(self) -> int:
        """The registered events that would not block now, read from the ring headers."""
        conn = self.conn
        if self.sock._conn is not conn:  # closed (or detached) since registration
            return self.key.events
        ev = 0
        if self.rd:
            q = self.reader._q  # None once the endpoint is closed
            if q is None or conn.shut_rd or q[_W_TAIL] != q[_W_HEAD] or q[_W_CLOSED_WR]:
                ev = EVENT_READ
        if self.wr:
            q = self.writer._q
            if (q is None or conn.shut_wr or q[_W_CLOSED_RD]
                    or q[_W_TAIL] - q[_W_HEAD] < self.cap):
                ev |= EVENT_WRITE
        return ev

    def arm(self) -> bool:
        """Prepare the eventfds for a sleep; True if something is ready after all.

        RingWakeup!Arm for each direction registered: afterwards the peer's
        next write (read) sets the eventfd that epoll watches.
        """
        try:
            if self.rd:
                conn = self.conn
                if not conn.readiness:
                    conn.arm()  # exact mode from now on (what fileno() does)
                if self.reader.settle():
                    return True
            if self.wr and self.writer.settle_space():
                return True
        except OSError:
            return True  # closed meanwhile: ready() reports it
        return False

    def woken_spuriously(self, fd: int) -> None:
        """Epoll reported *fd* but the ring is not ready: drop the stale signal, re-arm.

        A signal that precedes the drain follows the position store it
        announces, so ready() after this sees that store; a signal still to
        come sets the eventfd again.  Either way nothing is lost.
        """
        try:
            os.eventfd_read(fd)  # RingWakeup!Wake
        except OSError:
            pass  # empty already (or closed: ready() reports it)
        try:
            if fd == self.key.fd and self.rd:
                self.reader.settle()
            elif fd == self.space_fd and self.wr:
                self.writer.settle_space()
        except OSError:
            pass


class _KeyMap(Mapping):
    """The read-only file object -> SelectorKey mapping that get_map() returns."""

    def __init__(self, selector: RingSelector) -> None:
        self._selector = selector

    def __len__(self) -> int:
        return len(self._selector._keys)

    def __getitem__(self, fileobj) -> selectors.SelectorKey:
        try:
            fd = self._selector._lookup_fd(fileobj)
        except ValueError:
            raise KeyError(fileobj) from None
        return self._selector._keys[fd]

    def __iter__(self) -> Iterator[int]:
        return iter(self._selector._keys)


class RingSelector(selectors.BaseSelector):
    """A selector that reads ring sockets' readiness from shared memory, then blocks in epoll.

    *spin_ns*: the most (nanoseconds, 0 .. 10**6) :meth:`select` keeps
    looking at the rings before it blocks; default :data:`SPIN_NS` (0 on a
    one-CPU machine); the budget used adapts below it (:attr:`spin_budget`).
    *kernel_every*: see :data:`KERNEL_EVERY` (1 .. 10**6).
    """

    def __init__(self, *, spin_ns: int | None = None, kernel_every: int = KERNEL_EVERY) -> None:
        """Create an empty selector (one epoll descriptor)."""
        if spin_ns is None:
            spin_ns = 0 if _ONE_CPU else SPIN_NS
        if not (isinstance(spin_ns, int) and 0 <= spin_ns <= 10**6):
            raise ValueError(f"spin_ns must be an int from 0 to 10**6 (1 ms), got {spin_ns!r}")
        if not (isinstance(kernel_every, int) and 1 <= kernel_every <= 10**6):
            raise ValueError(f"kernel_every must be an int from 1 to 10**6, got {kernel_every!r}")
        self.spin_ns = spin_ns
        self.kernel_every = kernel_every
        self._wait_est = spin_ns // 2   # ns: moving average of how long ring events took
        self._epoll: select.epoll | None = select.epoll()
        self._keys: dict[int, selectors.SelectorKey] = {}   # fd -> key
        self._rings: dict[int, _Ring] = {}                  # fd -> ring view, ring keys only
        self._ring_list: tuple[_Ring, ...] = ()             # snapshot that select() iterates
        self._kernel: dict[int, selectors.SelectorKey] = {} # fd -> key, epoll-only keys
        # Epoll bookkeeping: a watched descriptor may serve several keys (the
        # space eventfd of a ring shared by dup()ed sockets).
        self._owners: dict[int, dict[int, int]] = {}        # watched fd -> {key fd: event}
        self._want: dict[int, int] = {}                     # watched fd -> epoll mask
        self._have: dict[int, int] = {}                     # watched fd -> mask in epoll now
        self._dirty: set[int] = set()                       # ring watches not synced yet
        self._streak = 0
        self._map = _KeyMap(self)

    # -- the registry ---------------------------------------------------------------
    def _check_open(self) -> None:
        if self._epoll is None:
            raise RuntimeError("Selector is closed")

    def _lookup_fd(self, fileobj) -> int:
        """The fd *fileobj* is registered under; search by identity if it is closed."""
        try:
            return _fileobj_to_fd(fileobj)
        except ValueError:
            # A closed socket's fileno() is -1: find it among the keys.
            for key in self._keys.values():
                if key.fileobj is fileobj:
                    return key.fd
            raise

    def register(self, fileobj, events: int, data=None) -> selectors.SelectorKey:
        """Watch *fileobj* for *events* (EVENT_READ | EVENT_WRITE); return its key.

        Raises ValueError for a bad file object or event mask, KeyError if it
        is already registered, OSError if the kernel refuses to watch it.
        """
        self._check_open()
        if not events or events & ~_EVENTS:
            raise ValueError(f"Invalid events: {events!r}")
        fd = _fileobj_to_fd(fileobj)
        if fd in self._keys:
            raise KeyError(f"{fileobj!r} (FD {fd}) is already registered")
        key = selectors.SelectorKey(fileobj, fd, events, data)
        sock = _ring_socket(fileobj, fd)
        if sock is not None and sock._conn is not None:
            ring = _Ring(key, sock)
            # Lazily added to epoll (select() syncs before it blocks): a key
            # that is ready, served and unregistered costs no epoll_ctl.
            if ring.rd:
                self._watch(fd, fd, EVENT_READ, lazy=True)
            if ring.wr:
                self._watch(ring.space_fd, fd, EVENT_WRITE, lazy=True)
            self._rings[fd] = ring
            self._ring_list = tuple(self._rings.values())
        else:
            # Kernel descriptors and listeners: at once, so that a bad one
            # fails here, as with the stock selectors.
            try:
                self._watch(fd, fd, events, lazy=False)
            except BaseException:
                self._unwatch(fd, fd)
                raise
            self._kernel[fd] = key
        self._keys[fd] = key
        return key

    def unregister(self, fileobj) -> selectors.SelectorKey:
        """Stop watching *fileobj*; return its key (KeyError if not registered)."""
        self._check_open()
        try:
            key = self._keys.pop(self._lookup_fd(fileobj))
        except (KeyError, ValueError):
            raise KeyError(f"{fileobj!r} is not registered") from None
        fd = key.fd
        ring = self._rings.pop(fd, None)
        if ring is not None:
            self._ring_list = tuple(self._rings.values())
            if ring.rd:
                self._unwatch(fd, fd)
            if ring.wr:
                self._unwatch(ring.space_fd, fd)
        else:
            del self._kernel[fd]
            self._unwatch(fd, fd)
        return key

    def modify(self, fileobj, events: int, data=None) -> selectors.SelectorKey:
        """Change the events or data of a registered *fileobj*; return the new key."""
        self._check_open()
        try:
            fd = self._lookup_fd(fileobj)
            key = self._keys[fd]
        except (KeyError, ValueError):
            raise KeyError(f"{fileobj!r} is not registered") from None
        if events != key.events:
            if not events or events & ~_EVENTS:
                raise ValueError(f"Invalid events: {events!r}")
            ring = self._rings.get(fd)
            if ring is None:
                self._watch(fd, fd, events, lazy=False)  # one EPOLL_CTL_MOD
            else:
                # Touch only the direction that changed (asyncio adds and
                # removes a writer while the reader stays).
                self._rewatch(ring, events)
            key = key._replace(events=events, data=data)
            self._keys[fd] = key
            if ring is not None:
                ring.set_key(key)
            else:
                self._kernel[fd] = key
            return key
        if data is not key.data:
            # asyncio does this on every add_reader/remove_reader: keep it cheap.
            key = key._replace(data=data)
            self._keys[fd] = key
            ring = self._rings.get(fd)
            if ring is not None:
                ring.set_key(key)
            else:
                self._kernel[fd] = key
        return key

    def get_key(self, fileobj) -> selectors.SelectorKey:
        """Return the key of *fileobj* (KeyError if it is not registered)."""
        self._check_open()
        try:
            return self._keys[self._lookup_fd(fileobj)]
        except (KeyError, ValueError):
            raise KeyError(f"{fileobj!r} is not registered") from None

    def get_map(self) -> Mapping | None:
        """Return the file object -> key mapping (None once closed)."""
        return None if self._epoll is None else self._map

    def close(self) -> None:
        """Forget every key and close the epoll descriptor (not the watched ones)."""
        ep = self._epoll
        if ep is None:
            return
        self._epoll = None
        self._keys.clear()
        self._rings.clear()
        self._ring_list = ()
        self._owners.clear()
        self._want.clear()
        self._have.clear()
        self._dirty.clear()
        self._kernel.clear()
        ep.close()

    # -- epoll bookkeeping ---------------------------------------------------------------
    @staticmethod
    def _mask(events: int) -> int:
        return ((select.EPOLLIN if events & EVENT_READ else 0)
                | (select.EPOLLOUT if events & EVENT_WRITE else 0))

    def _watch(self, wfd: int, key_fd: int, event: int, *, lazy: bool) -> None:
        """Let *wfd* in epoll stand for *event* of the key on *key_fd*."""
        owners = self._owners.setdefault(wfd, {})
        owners[key_fd] = event
        # A ring's eventfds signal by becoming readable, whatever they stand for.
        want = select.EPOLLIN if lazy else self._mask(event)
        self._want[wfd] = want
        if lazy:
            self._dirty.add(wfd)
        else:
            self._ctl(wfd, want)

    def _unwatch(self, wfd: int, key_fd: int) -> None:
        """Undo _watch; drop *wfd* from epoll at once when no key needs it any more."""
        owners = self._owners.get(wfd)
        if owners is not None:
            owners.pop(key_fd, None)
            if owners:
                return
            del self._owners[wfd]
        self._want.pop(wfd, None)
        self._dirty.discard(wfd)
        if self._have.pop(wfd, None) is not None:
            # Now, not lazily: the caller may close the descriptor next, and
            # an epoll entry outlives its number while the file lives on.
            try:
                self._epoll.unregister(wfd)
            except OSError:
                pass  # closed already: the kernel dropped it or keeps it harmlessly

    def _rewatch(self, ring: _Ring, events: int) -> None:
        """Watch a ring key's eventfds for *events* instead of its current ones."""
        fd = ring.key.fd
        for event, wfd in ((EVENT_READ, fd), (EVENT_WRITE, ring.space_fd)):
            if events & event and not ring.key.events & event:
                self._watch(wfd, fd, event, lazy=True)
            elif ring.key.events & event and not events & event:
                self._unwatch(wfd, fd)

    def _ctl(self, wfd: int, mask: int) -> None:
        """Make epoll watch *wfd* with *mask* (ADD or MOD as needed)."""
        have = self._have.get(wfd)
        if have == mask:
            return
        if have is None:
            try:
                self._epoll.register(wfd, mask)
            except FileExistsError:
                # The same file under the same number is still in the set
                # (closed and dup2()ed back in): take it over.
                self._epoll.modify(wfd, mask)
        else:
            self._epoll.modify(wfd, mask)
        self._have[wfd] = mask

    def _sync(self) -> None:
        """Add the ring watches registered since the last sleep to epoll."""
        if not self._dirty:
            return
        dirty, self._dirty = self._dirty, set()
        for wfd in dirty:
            want = self._want.get(wfd)
            if want is None:
                continue
            try:
                self._ctl(wfd, want)
            except OSError:
                pass  # its socket was closed: the ring view reports it ready

    # -- select ----------------------------------------------------------------------------
    def _scan(self) -> list[tuple[selectors.SelectorKey, int]]:
        """The ring sockets that are ready, from shared memory alone."""
        out = []
        for ring in self._ring_list:
            ev = ring.ready()
            if ev:
                out.append((ring.key, ev))
        return out

    def _kernel_events(self, polled) -> tuple[list, list[int]]:
        """Split epoll's answer: (ready kernel keys with events, ring eventfds seen)."""
        out = []
        ring_fds = []
        kernel = self._kernel
        for wfd, mask in polled:
            key = kernel.get(wfd)
            if key is None:
                # A ring's eventfd (ring and kernel keys never share a
                # descriptor), or a key unregistered meanwhile by another thread.
                ring_fds.append(wfd)
                continue
            # As the stock EpollSelector: HUP and ERR wake both directions.
            ev = 0
            if mask & ~select.EPOLLIN:
                ev |= EVENT_WRITE
            if mask & ~select.EPOLLOUT:
                ev |= EVENT_READ
            ev &= key.events
            if ev:
                out.append((key, ev))
        return out, ring_fds

    def _poll(self, timeout: float) -> tuple[list, list[int]]:
        """epoll_wait for up to *timeout* seconds (-1: forever); split as _kernel_events."""
        self._streak = 0
        polled = self._epoll.poll(timeout, max(len(self._want), 1))
        return self._kernel_events(polled)

    def _current(self, ready: list) -> list:
        """Drop keys that another thread unregistered while we slept."""
        rings = self._rings
        return [(key, ev) for key, ev in ready if key.fd in rings]

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        """Wait until some registered file object is ready, or *timeout* seconds pass.

        Returns a list of (key, events) pairs, empty after a timeout.
        *timeout* None waits for ever; <= 0 does not wait.  Ring sockets are
        answered from shared memory first (see the module docstring).
        """
        self._check_open()
        ready = self._scan()
        if ready:
            self._streak += 1
            if self._kernel and self._streak >= self.kernel_every:
                kernel, _ = self._poll(0)
                return ready + kernel
            return ready
        if timeout is not None and timeout <= 0:
            if not self._kernel:
                return []
            return self._poll(0)[0]
        deadline = None if timeout is None else time.monotonic() + timeout
        start = time.monotonic_ns()
        budget = self.spin_budget if self._ring_list else 0
        if budget:
            ready = self._spin(start, budget, deadline)
            if ready:
                return ready
        ready, kernel = self._block(deadline)
        if self.spin_ns and self._ring_list:
            # Without a ring event (a kernel event or a timeout), a spin would
            # only have delayed this wake-up: count it as a long wait.
            self._learn(time.monotonic_ns() - start if ready else self._LONG)
        return ready + kernel if kernel else ready

    @property
    def spin_budget(self) -> int:
        """Nanoseconds the next waiting select() spins over the rings before it blocks.

        Twice the moving average of how long ring events took to come while
        select() waited, capped at ``spin_ns``; 0 while that average exceeds
        ``spin_ns`` (an idle peer: spinning would only burn CPU) or when
        ``spin_ns`` is 0.  A wait that ended with a kernel event or a
        timeout counts as a long one: the spin cannot see those, only delay
        them.  No spin without ring sockets registered.
        """
        est = self._wait_est
        return 0 if est > self.spin_ns else min(self.spin_ns, 2 * est)

    def _learn(self, waited_ns: int) -> None:
        """Fold one wait for a ring event into the moving average (weight 1/4)."""
        # Capped, so one long idle gap does not stop the spin for long.
        waited_ns = min(waited_ns, 4 * self.spin_ns + 1)
        self._wait_est += (waited_ns - self._wait_est) // 4

    _LONG = 10**12  # a wait "longer than any spin"; _learn caps it

    def _spin(self, start: int, budget: int, deadline: float | None) -> list:
        """Look at the rings again for up to *budget* ns from *start* (never past *deadline*)."""
        stop = start + budget
        if deadline is not None:
            stop = min(stop, int(deadline * 1e9))
        scan = self._scan
        clock = time.monotonic_ns
        polite = start + _SPIN_BEFORE_YIELD_NS
        now = start
        while now < stop:
            ready = scan()
            if ready:
                self._streak += 1
                self._learn(clock() - start)
                return ready
            now = clock()
            if now > polite:
                # Past the first microseconds, give the CPU to whoever wants
                # it (the peer, if it shares our CPU); costs ~1 us if nobody does.
                os.sched_yield()
                now = clock()
        return []

    def _block(self, deadline: float | None) -> tuple[list, list]:
        """Arm the rings, sleep in epoll, and sort out what woke us: (ring, kernel) events."""
        while True:
            armed = True
            for ring in self._ring_list:
                if ring.arm():
                    armed = False
                    break
            self._sync()
            if not armed:
                wait = 0.0  # ready after all: still collect the kernel side, without waiting
            elif deadline is None:
                wait = -1
            else:
                left = deadline - time.monotonic()
                # epoll counts milliseconds: round up, or we would wake early and spin.
                wait = math.ceil(left * 1000) / 1000 if left > 0 else 0.0
            kernel, ring_fds = self._poll(wait)
            ready = self._scan()
            if ring_fds:
                self._drop_stale(ring_fds, ready)
            if ready:
                return self._current(ready), kernel
            if kernel:
                return ready, kernel
            if deadline is not None and time.monotonic() >= deadline:
                return [], []
            # Spurious: a stale signal or a race with arming.  Sleep again.

    def _drop_stale(self, ring_fds: list[int], ready: list) -> None:
        """Drain the eventfds that woke us for rings that are not ready after all."""
        seen = {key.fd for key, _ in ready}
        for wfd in ring_fds:
            for key_fd in tuple(self._owners.get(wfd, ())):
                ring = self._rings.get(key_fd)
                if ring is not None and key_fd not in seen:
                    ring.woken_spuriously(wfd)


#: The selector this module recommends, as in :mod:`selectors`.
DefaultSelector = RingSelector


def new_event_loop(*, spin_ns: int | None = None) -> asyncio.AbstractEventLoop:
    """Return a new ``asyncio.SelectorEventLoop`` over a :class:`RingSelector`.

    For ``asyncio.Runner(loop_factory=impl.selectors.new_event_loop)`` on
    Python 3.11 (``asyncio.run(..., loop_factory=...)`` needs 3.12).
    """
    return asyncio.SelectorEventLoop(RingSelector(spin_ns=spin_ns))


class EventLoopPolicy(asyncio.DefaultEventLoopPolicy):
    """The default asyncio policy, with loops over a :class:`RingSelector`.

    ``asyncio.set_event_loop_policy(impl.selectors.EventLoopPolicy())`` makes
    ``asyncio.run()`` and ``asyncio.new_event_loop()`` use them.
    """

    def new_event_loop(self) -> asyncio.AbstractEventLoop:
        """Return a new event loop over a RingSelector."""
        return new_event_loop()
