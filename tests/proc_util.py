"""Forked children for tests: run a function in a child, get its result back, never hang."""

from __future__ import annotations

import json
import os
import select
import signal
import traceback

import pytest

__all__ = ["Child"]


class Child:
    """A forked child running fn(); its return value comes back as JSON through a pipe."""

    def __init__(self, fn, wait: float = 60.0) -> None:
        """Fork; the child runs *fn*; *wait* bounds every later wait for it."""
        self.wait = wait
        rfd, wfd = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # the child: never return into pytest
            code = 1
            try:
                os.close(rfd)
                result = {"ok": fn()}
                code = 0
            except BaseException:
                result = {"error": traceback.format_exc()}
            try:
                os.write(wfd, json.dumps(result).encode())
            finally:
                os._exit(code)
        os.close(wfd)
        self._rfd = rfd
        self._pidfd = os.pidfd_open(self.pid)
        self.done = False

    def result(self, timeout: float | None = None):
        """Wait (bounded) for the child to exit; return what fn() returned."""
        if self.done:
            raise RuntimeError("child already reaped")
        self.done = True
        timeout = self.wait if timeout is None else timeout
        try:
            ready, _, _ = select.select([self._pidfd], [], [], timeout)
            if not ready:
                os.kill(self.pid, signal.SIGKILL)
            _, status = os.waitpid(self.pid, 0)
            out = _read_written(self._rfd)
        finally:
            os.close(self._pidfd)
            os.close(self._rfd)
        if not ready:
            pytest.fail(f"child {self.pid} still running after {timeout} s: killed")
        report = json.loads(out) if out else {}
        assert "error" not in report, "child failed:\n" + report["error"]
        assert os.waitstatus_to_exitcode(status) == 0, report
        return report["ok"]

    def kill(self) -> int:
        """SIGKILL and reap the child; return its wait status (no report expected)."""
        if self.done:
            return 0
        self.done = True
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            select.select([self._pidfd], [], [], self.wait)
            _, status = os.waitpid(self.pid, 0)
        finally:
            os.close(self._pidfd)
            os.close(self._rfd)
        return status


def _read_written(fd: int) -> bytes:
    """What is in the pipe now: the child wrote it before it exited.

    Not "until EOF": a grandchild that fn() forked holds a copy of the write
    end and may outlive the child by any time.
    """
    os.set_blocking(fd, False)
    out = b""
    while True:
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            return out
        if not chunk:
            return out
        out += chunk
