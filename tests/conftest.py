"""Session set-up: the tests get a monitor of their own, never the user's."""

from __future__ import annotations

import os
import shutil

import pytest

from tests.monitor_util import MonitorProc, isolate_environment, start_monitor

_DIR = isolate_environment()


@pytest.fixture(scope="session")
def monitor() -> MonitorProc:
    """The session's monitor (default ACL), the one ``impl.socket`` talks to."""
    mon = start_monitor(os.path.join(_DIR, "monitor.sock"))
    yield mon
    mon.stop()
    shutil.rmtree(_DIR, ignore_errors=True)
