"""Where the monitor's socket lives, and the checks that make that place safe.

One monitor per user by default.  Its socket is
``$XDG_RUNTIME_DIR/socksdirect/monitor.sock``, or, without a usable
``XDG_RUNTIME_DIR``, ``/tmp/socksdirect-<uid>/monitor.sock``.  The
environment variable ``SOCKSDIRECT_MONITOR`` names another socket path.

The directory is created with mode 0700 and must be owned by the user and
closed to others: the directory, not the socket's own mode, is what keeps
other users from connecting (and the monitor checks SO_PEERCRED as well).
"""

from __future__ import annotations

import fcntl
import os
import stat
import time

__all__ = ["ENV_SOCKET", "ENV_AUTOSTART", "default_socket_path", "ensure_private_dir",
           "flock_by"]

#: Environment variable: the monitor socket's path (overrides the default).
ENV_SOCKET = "SOCKSDIRECT_MONITOR"
#: Environment variable: "0" stops the library from starting a monitor itself.
ENV_AUTOSTART = "SOCKSDIRECT_AUTOSTART"

_NAME = "monitor.sock"


def default_socket_path() -> str:
    """Return the monitor socket path for this user (see the module docstring)."""
    override = os.environ.get(ENV_SOCKET)
    if override:
        return override
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        try:
            st = os.stat(runtime)
        except OSError:
            st = None
        if st is not None and st.st_uid == os.geteuid():
            return os.path.join(runtime, "socksdirect", _NAME)
    return os.path.join(f"/tmp/socksdirect-{os.geteuid()}", _NAME)


def ensure_private_dir(path: str) -> str:
    """Create *path* (mode 0700) if needed and check that only we can use it.

    Raises PermissionError when the directory belongs to another user or is
    open to group or others: a monitor socket there could be someone else's.
    """
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise NotADirectoryError(f"{path} exists and is not a directory")
    if st.st_uid != os.geteuid():
        raise PermissionError(f"{path} belongs to uid {st.st_uid}, not to us "
                              f"(uid {os.geteuid()}); refusing to use it")
    if st.st_mode & 0o077:
        raise PermissionError(f"{path} has mode {stat.S_IMODE(st.st_mode):o}; it must be "
                              "0700 (run: chmod 700 " + path + ")")
    return path


def flock_by(fd: int, operation: int, deadline: float) -> bool:
    """Take ``flock(fd, operation)`` (LOCK_EX or LOCK_SH) by *deadline* (monotonic).

    Returns False if the deadline passes first.  flock() has no timeout of
    its own, and the locks here are held briefly (a monitor starting) or until
    a process exits (a monitor stopping), so a short poll is enough.
    """
    while True:
        try:
            fcntl.flock(fd, operation | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)
