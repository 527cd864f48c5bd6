"""A closed terminal (window closed, ssh dropped) is a stop, not a crash: the console moves
to /dev/null once the terminal has hung up, and only then (cgpt.train.terminal). The
trainer, `cgpt launch` and `cgpt sweep` on a closed terminal: tests/test_resume.py,
tests/test_launch.py, tests/test_sweep.py."""

from __future__ import annotations

import sys

from helpers import Terminal, child_env, wait_until

CHILD = """
import os, signal, sys, time
from cgpt.train.terminal import leave_a_hung_up_terminal, surviving_a_hangup
hup = []
signal.signal(signal.SIGHUP, lambda *a: hup.append(1))
leave_a_hung_up_terminal()  # a live terminal: left alone
print("live terminal kept", flush=True)
while not hup:
    time.sleep(0.01)
with surviving_a_hangup():  # EIO: dropped, the console moves to /dev/null
    print("after the hangup", flush=True)
print("and again", flush=True)  # /dev/null now
open(sys.argv[1], "w").write("alive")
"""


def test_the_console_leaves_a_hung_up_terminal_and_only_then(tmp_path):
    mark = tmp_path / "alive"
    t = Terminal([sys.executable, "-c", CHILD, str(mark)], child_env())
    try:
        wait_until(lambda: b"live terminal kept" in t.output, 60, "the first line")
        t.close()
        assert t.proc.wait(timeout=60) == 0
    finally:
        t.kill()
    assert mark.read_text() == "alive"


FINISHING = """
import os, signal
from pathlib import Path
from cgpt.train.loop.components import StopRequests
with StopRequests(Path("."), 1, print):
    pass
os.kill(os.getpid(), signal.SIGHUP)  # the terminal closes while the run exports
print("finished", flush=True)
"""


def test_a_hangup_after_the_loop_lets_the_run_finish():
    """Once the step loop is over (the last save, the export, summary.json), SIGHUP no
    longer ends the process: it only moves the console off the dead terminal."""
    import subprocess

    res = subprocess.run(
        [sys.executable, "-c", FINISHING], env=child_env(), capture_output=True, text=True
    )
    assert res.returncode == 0 and res.stdout.strip() == "finished", res
