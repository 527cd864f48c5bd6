"""Stand-in for scancel(1) with --signal (what our sbatch script and tests use).

scancel(1): ``scancel --signal=SIG JOB`` signals every step of the job and, "By default,
signals other than SIGKILL are not sent to the batch step (the shell script)"; ``JOB.STEP``
signals that step only; ``-b, --batch``: "signals only the batch step, but not any other
steps. ... Children of the batch step are not signaled with this option"; ``-f, --full``:
"also signals the batch script and its children processes". A step is signaled by
slurmstepd, which signals every process of the step's container (fake_slurm.signal_container).
"""

from __future__ import annotations

import signal
import sys

import psutil
from fake_slurm import parse_signal, record, say, signal_container, state, step_pids


def main(argv: list[str]) -> int:
    record("scancel", argv)
    sig, batch, full, ids = signal.SIGKILL, False, False, []
    it = iter(argv)
    for a in it:
        if a.startswith("--signal="):
            sig = parse_signal(a.split("=", 1)[1])
        elif a in ("-s", "--signal"):
            sig = parse_signal(next(it))
        elif a in ("-b", "--batch"):
            batch = True
        elif a in ("-f", "--full"):
            full = True
        elif a.startswith("-"):
            say("scancel", f"error: this stand-in does not know {a}")
            return 1
        else:
            ids.append(a)
    for spec in ids:
        job, _, step = spec.partition(".")
        batch_file = state() / f"batch.{job}"
        if (batch or full or sig == signal.SIGKILL) and not step and batch_file.exists():
            pid = int(batch_file.read_text())
            if full:
                signal_container(pid, sig)  # the batch script and all its children
            else:
                try:
                    psutil.Process(pid).send_signal(sig)
                except psutil.Error:
                    pass
        if not batch or full or step:
            for pid in step_pids(job, step or None):
                signal_container(pid, sig)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
