"""impl.diag: the dump of what a process's ring sockets wait for."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

import impl
from impl import diag
from impl.ring import layout
from tests.monitor_util import ROOT

WAIT = 30.0


def _dump_text(tmp_path) -> str:
    path = tmp_path / "dump.txt"
    with open(path, "w") as out:
        diag.dump(out)
    return path.read_text()


def test_dump_shows_a_sender_asleep_on_a_full_ring(tmp_path):
    """The sender BUSY with its token, asleep, the ring full, and its stack in sendall."""
    a, b = impl.socketpair()
    with a, b:
        cap = a._conn.tx.capacity
        q = a._conn.tx._q
        data = b"x" * (cap + 1000)
        sender = threading.Thread(target=a.sendall, args=(data,), daemon=True)
        sender.start()
        deadline = time.monotonic() + WAIT
        while q[layout.word(layout.OFF_WRITER_SLEEPING)] != 1:    # a state, not a duration
            assert time.monotonic() < deadline, "the sender never went to sleep"
            time.sleep(0.001)
        text = _dump_text(tmp_path)
        assert f"socksdirect dump of pid {os.getpid()}: " in text
        assert text.rstrip().endswith(diag.END)
        assert f"capacity={cap} tail={cap} head=0 writer_sleeping=1" in text
        assert f"(bytes in it: {cap})" in text
        if a._conn.tokens()[0] is not None:      # the C backend checks tokens
            assert f"send token: owner={sender.native_id} busy=1" in text
        # The owner's id in the word leads to its stack through the thread table.
        assert f"  {sender.native_id}  {sender.ident:#018x}  " in text
        assert f"Thread {sender.ident:#018x}" in text
        assert "in sendall" in text, "the sender's stack is missing"
        got = bytearray()
        b.settimeout(WAIT)
        while len(got) < len(data):
            got += b.recv(1 << 16)
        sender.join(WAIT)
        assert not sender.is_alive() and bytes(got) == data


def test_dump_lists_every_thread_and_ends_with_its_marker(tmp_path):
    text = _dump_text(tmp_path)
    assert text.startswith(f"socksdirect dump of pid {os.getpid()}: ")
    me = threading.current_thread()
    assert f"  {me.native_id}  {me.ident:#018x}  {me.name}\n" in text
    assert "in test_dump_lists_every_thread_and_ends_with_its_marker" in text
    assert text.endswith(diag.END + "\n")


_TARGET = """
import os, sys, impl
a, b = impl.socketpair()
a.sendall(b"seven b")
if os.fork() == 0:          # the child keeps the handler
    sys.stdin.read()
    os._exit(0)
print("ready", flush=True)
sys.stdin.read()
os.wait()
"""


def test_signal_dumps_the_process_and_its_fork_child(tmp_path):
    env = dict(os.environ, **{diag.ENV_SIGNAL: "USR2", diag.ENV_DIR: str(tmp_path)})
    proc = subprocess.Popen([sys.executable, "-c", _TARGET], cwd=ROOT, env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "ready\n"
        children = open(f"/proc/{proc.pid}/task/{proc.pid}/children").read().split()
        assert len(children) == 1
        for pid in (proc.pid, int(children[0])):
            os.kill(pid, signal.SIGUSR2)
        for pid in (proc.pid, int(children[0])):
            path = tmp_path / f"socksdirect-{pid}.txt"
            deadline = time.monotonic() + WAIT
            while not (path.exists() and "File " in path.read_text()):
                assert time.monotonic() < deadline, f"pid {pid} wrote no dump"
                time.sleep(0.01)
            text = path.read_text()
            assert f"pid {pid}: 2 ring connection(s)" in text
            assert "(bytes in it: 7)" in text
    finally:
        proc.stdin.close()
        assert proc.wait(WAIT) == 0


@pytest.mark.parametrize("name,why", [("NOSUCH", "'NOSUCH' names no signal"),
                                      ("KILL", "Invalid argument")])
def test_a_bad_signal_warns_and_imports(name, why):
    env = dict(os.environ, **{diag.ENV_SIGNAL: name})
    res = subprocess.run([sys.executable, "-c", "import impl; print(impl.socket)"], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=WAIT)
    assert res.returncode == 0, res.stderr
    assert "RuntimeWarning: socksdirect: no dump on a signal" in res.stderr
    assert why in res.stderr


def test_a_dump_that_cannot_be_written_does_not_disturb_the_program(tmp_path):
    """The handler runs inside whatever the main thread was doing: an error is reported
    on stderr, never raised into the program."""
    env = dict(os.environ, **{diag.ENV_SIGNAL: "USR1", diag.ENV_DIR: str(tmp_path / "none")})
    code = ("import os, signal, impl\n"
            "a, b = impl.socketpair()\n"
            "os.kill(os.getpid(), signal.SIGUSR1)\n"
            "a.sendall(b'ok'); print(b.recv(2).decode())\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=WAIT)
    assert res.returncode == 0 and res.stdout == "ok\n", res.stderr
    assert "socksdirect: no dump: FileNotFoundError" in res.stderr


@pytest.mark.parametrize("name,num", [("USR1", signal.SIGUSR1), ("sigusr2", signal.SIGUSR2),
                                      (str(int(signal.SIGUSR1)), signal.SIGUSR1)])
def test_signal_names(name, num):
    assert diag._signal_number(name) == num


def test_stress_runner_dumps_a_hung_run(tmp_path):
    """tests.stress: a run past --hang gets every process of its tree dumped, exit 2."""
    from tests import stress
    hung = tmp_path / "test_hangs.py"
    hung.write_text("import impl\n\n"
                    "def test_waits_for_ever():\n"
                    "    a, b = impl.socketpair()\n"
                    "    b.recv(1)\n")
    out = tmp_path / "out"
    out.mkdir()
    assert stress.run([str(hung)], runs=1, load=0, hang=8.0, out=out) == 2
    dumps = list(out.glob("socksdirect-*.txt"))
    assert dumps, "no process of the hung run wrote a dump"
    text = "\n".join(d.read_text() for d in dumps)
    assert "2 ring connection(s)" in text and "in test_waits_for_ever" in text
