"""Patch this Python process for ``python -m impl.run --subprocesses``.

``impl.run --subprocesses`` puts this directory first on ``PYTHONPATH`` and
``SOCKSDIRECT_PATCH=1`` in the environment, so every Python process the
program starts imports this module at start-up and calls :func:`impl.patch`.
The monitor (``python -m impl.monitor``, which the library may start) is
left alone: it is the one process that must use kernel sockets only.  A
``sitecustomize`` that this one hides on ``sys.path`` is run afterwards.
"""

import os
import sys


def _is_monitor() -> bool:
    """True in ``python [options] -m impl.monitor[.x] ...`` (the interpreter's own -m)."""
    argv = sys.orig_argv
    for i, arg in enumerate(argv[1:-1], 1):
        if arg == "-m":
            return argv[i + 1] == "impl.monitor" or argv[i + 1].startswith("impl.monitor.")
        if not arg.startswith("-") or arg == "-c":
            return False    # a script or -c: what follows is the program's arguments
    return False


def _patch() -> None:
    if os.environ.get("SOCKSDIRECT_PATCH") != "1" or _is_monitor():
        return
    try:
        import impl
        impl.patch()
    except Exception as exc:  # a child that cannot be patched still runs, on kernel sockets
        sys.stderr.write(f"socksdirect: not patched: {exc!r}\n")


def _chain() -> None:
    """Run the sitecustomize module this one hides, if there is one."""
    import importlib.machinery
    import importlib.util
    here = os.path.dirname(os.path.abspath(__file__))
    path = [p for p in sys.path if os.path.abspath(p or ".") != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", path)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)


_patch()
_chain()
