"""Training one sweep point: ``python -m cgpt.train`` in a subprocess (so a crashing or
diverging point cannot take the sweep down), its output appended to ``OUT/logs/NAME.log``,
and its result record."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from cgpt.model.errors import CgptError
from cgpt.model.files import open_append
from cgpt.train.exit_codes import PREEMPTED
from cgpt.train.lock import FolderLock
from cgpt.train.ports import PROCESS_GROUP_VARS
from cgpt.train.sweeps.points import Point
from cgpt.train.sweeps.records import make_record
from cgpt.train.terminal import leave_a_hung_up_terminal


def run_summary(run_dir: Path) -> dict | None:
    try:
        return json.loads((run_dir / "summary.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _failure_reason(log_path: Path, rc: int) -> str:
    lines = [ln.strip() for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error:" in ln.lower()]
    tail = errors[-1] if errors else " | ".join(lines[-3:])
    return f"exit code {rc}: {tail[-600:]}" if tail else f"exit code {rc} (no output)"


def _child_env() -> dict:
    """os.environ without the process-group variables: each point is its own group."""
    return {k: v for k, v in os.environ.items() if k not in PROCESS_GROUP_VARS}


# stops that can reach the sweep without its trainer (`kill PID`, `docker stop`, a supervisor
# that signals only the process it started) and are passed on to the point's trainer; Ctrl-C
# and a closed terminal's SIGHUP reach both through the terminal's process group
STOPS = (signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1)


def _wait_passing_stops(proc: subprocess.Popen) -> int:
    """Wait for the point's trainer. A first stop signal to the sweep becomes SIGTERM to the
    trainer, which saves a checkpoint and exits PREEMPTED, so the sweep never dies leaving it
    training on its own; a second one kills the trainer without saving (as `cgpt launch`)."""
    stops: list[int] = []

    def stop(signum, _frame):
        stops.append(signum)
        leave_a_hung_up_terminal()  # SIGHUP: a closed terminal, where the sweep's lines fail
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM if len(stops) == 1 else signal.SIGKILL)

    old = {s: signal.signal(s, stop) for s in STOPS}
    try:
        return proc.wait()
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _check_free(name: str, run_dir: Path) -> None:
    """Refuse, recording nothing, when a live trainer holds the point's run folder (one left
    running by a sweep that was killed with SIGKILL): a failure record would skip the point,
    and the sweep would go on to train the next one beside it."""
    if run_dir.is_dir():
        try:
            FolderLock(run_dir).acquire().release()
        except CgptError as e:
            raise CgptError(f"point {name}: {e}") from None


def run_point(p: Point, out: Path, did: str, log=print) -> dict:
    """Train one point in a subprocess (resuming its run folder if there is one)."""
    cfg_path = out / "configs" / f"{p.name}.yaml"
    p.cfg.save(cfg_path)
    run_dir = Path(p.cfg.runtime.out_dir)
    _check_free(p.name, run_dir)
    resume = (run_dir / "config.yaml").is_file()
    cmd = [sys.executable, "-m", "cgpt.train", str(cfg_path)] + (["--resume"] if resume else [])
    log_path = out / "logs" / f"{p.name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with open_append(log_path, "sweep log") as f:  # never through a link
        f.write(f"\n$ {' '.join(cmd)}\n")
        f.flush()
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=_child_env())
        try:
            rc = _wait_passing_stops(proc)
        except KeyboardInterrupt:  # the child got the same Ctrl-C: let it save its checkpoint
            rc = proc.wait()
            if rc != PREEMPTED:  # it stopped before training: nothing to record
                raise
    wall = round(time.time() - t0, 2)
    summary = run_summary(run_dir)
    if rc == 0 and summary and summary.get("status") == "completed":
        return make_record(p, "ok", did, summary, wall_s=wall)
    if rc in (0, PREEMPTED) and summary:  # PREEMPTED: stopped by a signal after a save
        return make_record(
            p,
            "interrupted",
            did,
            summary,
            wall_s=wall,
            reason=f"run {summary.get('status')} at step {summary.get('steps')}; "
            "it resumes from its checkpoint on the next `cgpt sweep`",
        )
    if rc < 0:
        return make_record(
            p,
            "interrupted",
            did,
            wall_s=wall,
            reason=f"killed by signal {-rc}; resumes on the next `cgpt sweep`",
        )
    return make_record(p, "failed", did, reason=_failure_reason(log_path, rc), wall_s=wall)
