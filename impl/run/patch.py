"""``impl.patch()``: put :mod:`impl` in place of the socket module for a whole program.

``impl.patch()`` replaces, in the :mod:`socket` module, ``socket`` and
``fromfd`` with impl's; in :mod:`selectors`, ``DefaultSelector`` with the ring-first
:class:`impl.selectors.RingSelector`; and, unless a program already chose
one, asyncio's event loop policy with :class:`impl.selectors.EventLoopPolicy`.
``impl.unpatch()`` puts every one of them back.  Code that looks the names
up when it runs (``socket.socket(...)``: http.client, socketserver, asyncio,
xmlrpc, ...) then gets impl's; code that bound them at import time (``from
socket import socket``) before the patch keeps the kernel's.

Left as they are, because they already do the right thing: the stdlib's
``create_connection`` and ``create_server`` look ``socket`` up when called,
so they make impl sockets (and a program or test that replaces
``socket.socket`` is obeyed); ``SocketType`` stays ``_socket.socket``, the
base class every socket object, ours included, derives from.

What stays the kernel's, on purpose:

* ``socket.socketpair``: asyncio's self-pipe is one, and a signal handler
  writes single bytes to its descriptor (``signal.set_wakeup_fd``), which an
  eventfd would refuse.  The stdlib function still returns objects of the
  patched class, but on kernel descriptors (``transport == "kernel"``).
* ``select.select``/``poll``/``epoll``: nothing to patch; a ring socket's
  ``fileno()`` is an eventfd readable exactly when ``recv`` would not block.
* Datagram, raw and other-family sockets: impl.socket is then a plain kernel
  socket (it only routes AF_INET/AF_INET6/AF_UNIX stream connects).
* TLS: ``ssl.SSLContext.wrap_socket`` is given a kernel socket in place of a
  ring or listener one (:mod:`impl.run.tls`), since OpenSSL uses the
  descriptor itself.
* multiprocessing's own sockets (``multiprocessing.connection``: Listener,
  Client, managers; ``multiprocessing.forkserver``): they ``detach()`` the
  descriptor and then ``os.read``/``os.write`` it, or hand a listener's
  descriptor to a new process, neither of which a ring socket's eventfd (or
  a listener's epoll descriptor) can serve.  Their ``socket`` global is the
  frozen kernel copy described below, whether they were imported before
  ``patch()`` or while patched (an import hook, :class:`_KernelSocketFinder`).

impl's own modules keep using the kernel's socket and selectors modules
while patched: each global of an ``impl.*`` module that names one of them
is pointed at a frozen copy taken before patching, so the library's
control channel and kernel sockets never go through itself.

``isinstance(s, socket.socket)`` holds for every socket made while patched
(impl.socket subclasses the kernel class), but not for stdlib sockets made
before ``patch()``, whose class is no longer ``socket.socket``.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import selectors
import socket
import sys
import threading
import types

import impl.sdsocket
from impl.run import tls

__all__ = ["patch", "unpatch", "is_patched", "ENV_PATCH"]

#: Environment variable: "1" makes the sitecustomize of ``impl.run --subprocesses`` patch.
ENV_PATCH = "SOCKSDIRECT_PATCH"

_SOCKET_NAMES = {
    "socket": impl.sdsocket.socket,
    "fromfd": impl.sdsocket.fromfd,
}

#: Modules that keep the kernel's socket module while patched (see the docstring):
#: they give a socket's raw descriptor to code that is not a socket.
KERNEL_SOCKET_MODULES = frozenset({"multiprocessing.connection", "multiprocessing.forkserver"})

# Reentrant: the import hook records what it shields under it, and an import
# may in principle happen in the thread that holds it inside patch().
_lock = threading.RLock()
# (object, attribute) -> value before patch(); None while not patched.
_saved: dict[tuple[object, str], object] | None = None
# The asyncio policy as it was (None: the default, not yet made), if we set ours.
_old_policy: object = None
_set_policy = False


def is_patched() -> bool:
    """Return True between :func:`patch` and :func:`unpatch`."""
    return _saved is not None


def patch(*, event_loop_policy: bool = True) -> None:
    """Put impl in place of the socket module's socket classes and helpers (idempotent).

    With *event_loop_policy* (the default), asyncio's policy becomes
    :class:`impl.selectors.EventLoopPolicy` if the program has not set one.
    """
    global _saved, _old_policy, _set_policy
    # Imported here, not at the top: ``import impl`` should not cost asyncio's import.
    import asyncio

    import impl.selectors
    with _lock:
        if _saved is not None:
            return
        saved: dict[tuple[object, str], object] = {}
        kernel_socket = _frozen(socket)
        _shield_library(saved, kernel_socket)
        selector_names = {"DefaultSelector": impl.selectors.RingSelector}
        for module, names in ((socket, _SOCKET_NAMES), (selectors, selector_names)):
            for name, value in names.items():
                saved[module, name] = getattr(module, name)
                setattr(module, name, value)
        _patch_ssl(saved)
        _set_policy = False
        # asyncio.events._event_loop_policy is None until someone asks for the
        # policy: only then is it certain that the program did not choose one.
        if event_loop_policy and asyncio.events._event_loop_policy is None:
            _old_policy = None
            asyncio.set_event_loop_policy(impl.selectors.EventLoopPolicy())
            _set_policy = True
        for name in KERNEL_SOCKET_MODULES & sys.modules.keys():
            _keep_kernel_socket(sys.modules[name], kernel_socket, saved)
        _saved = saved
        # Last: from here on, importing one of them is shielded as it loads.
        sys.meta_path.insert(0, _KernelSocketFinder(kernel_socket))


def unpatch() -> None:
    """Put back everything :func:`patch` replaced (idempotent)."""
    global _saved, _set_policy
    import asyncio

    import impl.selectors
    with _lock:
        if _saved is None:
            return
        sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _KernelSocketFinder)]
        for (obj, name), value in _saved.items():
            setattr(obj, name, value)
        if _set_policy and isinstance(asyncio.events._event_loop_policy,
                                      impl.selectors.EventLoopPolicy):
            asyncio.set_event_loop_policy(_old_policy)
        _set_policy = False
        _saved = None


def _patch_ssl(saved: dict[tuple[object, str], object]) -> None:
    """ssl.SSLContext.wrap_socket gets kernel sockets (see impl.run.tls); recorded in *saved*."""
    try:
        import ssl
    except ImportError:     # Python built without OpenSSL: nothing to protect
        return
    original = ssl.SSLContext.wrap_socket
    saved[ssl.SSLContext, "wrap_socket"] = original
    ssl.SSLContext.wrap_socket = tls.patched_wrap_socket(original)


def _frozen(module: types.ModuleType) -> types.ModuleType:
    """A module object holding *module*'s current names (taken before patching)."""
    copy = types.ModuleType(module.__name__, module.__doc__)
    copy.__dict__.update(vars(module))
    return copy


def _shield_library(saved: dict[tuple[object, str], object],
                    kernel_socket: types.ModuleType) -> None:
    """Point impl's own references to socket/selectors at unpatched copies; record them."""
    copies = {id(socket): kernel_socket, id(selectors): _frozen(selectors)}
    for name, module in list(sys.modules.items()):
        if module is None or name == __name__ or not (name == "impl"
                                                       or name.startswith("impl.")):
            continue
        for attr, value in list(vars(module).items()):
            copy = copies.get(id(value))
            if copy is not None and value is not copy:
                saved[module, attr] = value
                setattr(module, attr, copy)


def _keep_kernel_socket(module: types.ModuleType, kernel_socket: types.ModuleType,
                        saved: dict[tuple[object, str], object]) -> None:
    """Point *module*'s ``socket`` global at the kernel copy; record the old value."""
    if getattr(module, "socket", None) is socket:
        saved[module, "socket"] = socket
        module.socket = kernel_socket


class _KernelSocketFinder(importlib.abc.MetaPathFinder):
    """An import hook, installed while patched, for the KERNEL_SOCKET_MODULES.

    It finds them as the rest of ``sys.meta_path`` would, and wraps the
    loader so that the module's ``socket`` global is the kernel copy as soon
    as the module has run: the functions look ``socket.socket`` up when
    called, so nothing made at import time needs changing.
    """

    def __init__(self, kernel_socket: types.ModuleType) -> None:
        self.kernel_socket = kernel_socket

    def find_spec(self, fullname, path, target=None):
        """Return the usual spec of a shielded module, with a wrapping loader; else None."""
        if fullname not in KERNEL_SOCKET_MODULES:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if spec is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _KernelSocketLoader(spec.loader, self.kernel_socket)
        return spec


class _KernelSocketLoader(importlib.abc.Loader):
    """Runs the module with its own loader, then points its ``socket`` at the kernel copy."""

    def __init__(self, loader, kernel_socket: types.ModuleType) -> None:
        self.loader = loader
        self.kernel_socket = kernel_socket

    def create_module(self, spec):
        """Let the real loader create the module (None: the default)."""
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        """Run the module, then shield it (if still patched)."""
        self.loader.exec_module(module)
        with _lock:
            if _saved is not None:
                _keep_kernel_socket(module, self.kernel_socket, _saved)

    def __getattr__(self, name: str):
        # get_source, get_code, is_package, ...: tracebacks and inspect use them.
        if name == "loader":        # not set yet (a copy being made): no recursion
            raise AttributeError(name)
        return getattr(self.loader, name)
