"""State shared by the SLURM stand-ins (srun, scancel, scontrol, sbatch) of tests/test_slurm.py.

One folder, ``$CGPT_FAKE_SLURM``, plays slurmctld's part: ``steps/JOB.STEP`` holds the pid of
a running step's task (written by srun), ``batch.JOB`` the pid of the batch shell (written by
the test harness, which plays slurmd starting the batch script), ``requeue.log`` one line per
``scontrol requeue``. With ``$CGPT_TEST_LOG`` set, every call also records its argv there
(NUL-separated, one file per call). Only the behaviour our sbatch script relies on is here;
each stand-in cites where the real program's behaviour is documented or implemented
(Slurm source: github.com/SchedMD/slurm at 284c3b9).
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import psutil


def state() -> Path:
    return Path(os.environ["CGPT_FAKE_SLURM"])


def record(name: str, argv: list[str]) -> None:
    log = os.environ.get("CGPT_TEST_LOG")
    if log:
        data = "".join(a + "\0" for a in argv).encode("utf-8", "surrogateescape")
        (Path(log) / f"{name}.{os.getpid()}").write_bytes(data)


def say(program: str, message: str) -> None:
    print(f"{program}: {message}", file=sys.stderr, flush=True)


def parse_signal(value: str) -> int:
    """USR1, SIGUSR1 or 10, as scancel --signal and sbatch --signal accept it."""
    if value.isdigit():
        return int(value)
    name = value.upper()
    return int(getattr(signal, name if name.startswith("SIG") else "SIG" + name))


def step_pids(job: str, step: str | None = None) -> list[int]:
    """Task pids of the job's running steps (all of them, or one)."""
    folder = state() / "steps"
    files = [folder / f"{job}.{step}"] if step is not None else sorted(folder.glob(f"{job}.*"))
    pids = []
    for f in files:
        try:
            pids.append(int(f.read_text()))
        except (OSError, ValueError):
            pass
    return pids


def signal_container(task_pid: int, sig: int) -> None:
    """What slurmstepd does to a step (src/slurmd/slurmstepd/req.c, _handle_signal_container:
    ``proctrack_g_signal(step->cont_id, sig)``): every process in the step's container
    (cgroup), i.e. the task and all its descendants, whatever session or process group they
    made for themselves (torchrun starts each worker in a session of its own)."""
    try:
        root = psutil.Process(task_pid)
        procs = [root] + root.children(recursive=True)
    except psutil.NoSuchProcess:
        return
    for p in procs:
        try:
            p.send_signal(sig)
        except psutil.Error:
            pass


def default_signals() -> None:
    """The signal state a batch script or task starts with under slurmstepd: slurmd and
    slurmstepd are daemons that catch USR1, USR2, TERM, INT, HUP, ... themselves
    (src/slurmd/slurmstepd/slurmstepd.c, conmgr_add_work_signal), and a caught signal is
    SIG_DFL after execve(2), so the job never inherits what the submitting shell ignored.
    A test runner started with SIGUSR1 ignored would otherwise make the batch script's
    `trap ... USR1` a silent no-op (bash(1): "Signals ignored upon entry to the shell cannot
    be trapped or reset"), as CI found. Use as ``preexec_fn``."""
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    for sig in signal.valid_signals():
        if sig not in (signal.SIGKILL, signal.SIGSTOP):
            try:
                signal.signal(sig, signal.SIG_DFL)
            except (OSError, ValueError):
                pass  # reserved real-time signals
