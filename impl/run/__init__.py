"""Run an unmodified Python program on socksdirect sockets.

Usage::

    python -m impl.run [options] script.py [args ...]
    python -m impl.run [options] -m module [args ...]
    socksdirect-run [options] script.py [args ...]

The runner calls :func:`impl.patch` (see :mod:`impl.run.patch`) and then
runs the target as Python would: as ``__main__``, with ``sys.argv`` as the
target expects (``[script, args...]``; for ``-m`` the module's file), the
script's directory (or, for ``-m``, the current one) first on ``sys.path``,
and its exit code -- ``SystemExit`` goes through, an uncaught exception
prints its traceback and exits 1.

Options (before the target):

``--subprocesses``
    Python subprocesses the program starts are patched too: a directory
    holding a ``sitecustomize`` module goes first on ``PYTHONPATH`` and
    ``SOCKSDIRECT_PATCH=1`` into the environment.  The monitor itself is
    never patched.
``--no-autostart``
    Do not start a monitor if none runs (``SOCKSDIRECT_AUTOSTART=0``):
    every socket is then a kernel socket.
"""

from __future__ import annotations

import os
import sys

from impl.run.patch import ENV_PATCH, is_patched, patch, unpatch

__all__ = ["main", "patch", "unpatch", "is_patched", "subprocess_env", "USAGE"]

USAGE = """\
usage: python -m impl.run [--subprocesses] [--no-autostart] script.py [args ...]
       python -m impl.run [--subprocesses] [--no-autostart] -m module [args ...]

Run a Python program with impl (socksdirect) in place of the socket module:
its stream connections to this host's socksdirect listeners run over
shared-memory rings; everything else stays a kernel socket.

options:
  -h, --help       show this help and exit
  -m module        run library module as a script (like python -m)
  --subprocesses   patch the Python subprocesses the program starts, too
                   (a sitecustomize on PYTHONPATH, and SOCKSDIRECT_PATCH=1)
  --no-autostart   never start a monitor (SOCKSDIRECT_AUTOSTART=0); without
                   a running monitor every socket is a kernel socket
"""

#: Exit code for a bad command line, a missing script or module (as argparse uses).
EXIT_USAGE = 2
# Where impl is imported from, and the directory holding the sitecustomize module.
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_SITE_DIR = os.path.join(_ROOT, "impl", "_sitecustomize")


class _Usage(Exception):
    """A command-line error: its message goes to stderr with the usage, exit 2."""


def _parse(argv: list[str]) -> tuple[dict[str, bool], str | None, str | None, list[str]]:
    """Split argv into (options, script, module, target args); raise _Usage."""
    opts = {"subprocesses": False, "no_autostart": False, "help": False}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-h", "--help"):
            opts["help"] = True
            return opts, None, None, []
        if arg == "--subprocesses":
            opts["subprocesses"] = True
        elif arg == "--no-autostart":
            opts["no_autostart"] = True
        elif arg == "-m" or (arg.startswith("-m") and not arg.startswith("--")):
            module = arg[2:] or (argv[i + 1] if i + 1 < len(argv) else "")
            if not module:
                raise _Usage("argument -m: expected a module name")
            rest = argv[i + (1 if arg[2:] else 2):]
            return opts, None, module, rest
        elif arg == "--":
            if i + 1 >= len(argv):
                raise _Usage("a script or -m module is required")
            return opts, argv[i + 1], None, argv[i + 2:]
        elif arg.startswith("-"):
            raise _Usage(f"unrecognized option {arg!r}")
        else:
            return opts, arg, None, argv[i + 1:]
        i += 1
    raise _Usage("a script or -m module is required")


def subprocess_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """Return *env* (default: os.environ) with what makes Python subprocesses patch themselves.

    The sitecustomize directory and impl's root go first on ``PYTHONPATH``,
    and ``SOCKSDIRECT_PATCH=1`` tells that sitecustomize to call
    :func:`impl.patch`.
    """
    env = dict(os.environ if env is None else env)
    parts = [_SITE_DIR, _ROOT]
    parts += [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p not in parts]
    env["PYTHONPATH"] = os.pathsep.join(parts)
    env[ENV_PATCH] = "1"
    return env


def _set_path(script: str | None) -> None:
    """Put first on sys.path what python would: the script's directory, or the current one.

    (Not the runner's own directory, nor the console script's.)
    """
    first = os.path.dirname(os.path.abspath(script)) if script is not None else os.getcwd()
    if sys.path and sys.path[0] != first:
        sys.path[0] = first
    if _ROOT not in sys.path:
        sys.path.append(_ROOT)   # impl still imports some modules lazily


def _check_target(script: str | None, module: str | None) -> None:
    """Raise _Usage if the script does not exist or the module cannot be found."""
    if script is not None:
        if not os.path.exists(script):
            raise _Usage(f"can't open file {os.path.abspath(script)!r}: "
                         "[Errno 2] No such file or directory")
        return
    import importlib.util
    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError) as exc:
        raise _Usage(f"no module named {module!r} ({exc})") from None
    if found is None:
        raise _Usage(f"no module named {module!r}")


def _run(script: str | None, module: str | None, args: list[str]) -> None:
    """Run the target as __main__ (returns normally, or raises what it raised)."""
    import runpy
    if script is not None:
        sys.argv = [script, *args]
        runpy.run_path(script, run_name="__main__")
    else:
        sys.argv = [module, *args]     # run_module puts the module's file in argv[0]
        runpy.run_module(module, run_name="__main__", alter_sys=True)


def _report(exc: BaseException) -> None:
    """Print an uncaught exception like python does, without the runner's own frames."""
    import runpy
    ours = (os.path.dirname(os.path.abspath(__file__)), os.path.abspath(runpy.__file__),
            "<frozen runpy>")
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename.startswith(ours):
        tb = tb.tb_next
    if tb is not None:
        exc = exc.with_traceback(tb)
    sys.excepthook(type(exc), exc, exc.__traceback__)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (``python -m impl.run``, ``socksdirect-run``); return the exit code.

    A ``SystemExit`` raised by the target propagates unchanged.
    """
    argv = sys.argv[1:] if argv is None else argv
    try:
        opts, script, module, args = _parse(argv)
        if opts["help"]:
            sys.stdout.write(USAGE)
            return 0
        _set_path(script)
        _check_target(script, module)
    except _Usage as exc:
        sys.stderr.write(USAGE.split("\n\n")[0] + f"\nimpl.run: error: {exc}\n")
        return EXIT_USAGE
    if opts["no_autostart"]:
        from impl.monitor.paths import ENV_AUTOSTART
        os.environ[ENV_AUTOSTART] = "0"
    if opts["subprocesses"]:
        env = subprocess_env()
        for name in ("PYTHONPATH", ENV_PATCH):
            os.environ[name] = env[name]
    patch()
    try:
        _run(script, module, args)
    except (SystemExit, KeyboardInterrupt):
        raise
    except BaseException as exc:   # an uncaught exception of the target: python's way
        _report(exc)
        return 1
    return 0
