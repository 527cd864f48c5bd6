"""Stand-in for srun(1) inside an allocation: one task, the command after srun's options.

What our script relies on, as the real srun does it:
- the task runs under slurmstepd, not as srun's child in srun's process group: here it gets
  a session of its own, so a signal to srun's group never reaches it directly;
- signals srun itself receives (src/srun/signals.c, _forward_signal; srun(1) "SIGNALS AND
  ESCAPE SEQUENCES": "Signals sent to the srun command are automatically forwarded to the
  tasks it is controlling with a few exceptions"):
  * SIGTERM, SIGHUP: "forcing job termination", SIGKILL to the tasks (launch_fwd_signal
    (SIGKILL)); SIGQUIT: "Quit", then the same;
  * SIGINT: the first only reports the tasks' state ("interrupt (one more within 1 sec to
    abort)", _handle_intr); a second within one second sends SIGINT to the tasks and then
    forces termination (job_force_termination in src/srun/srun_job.c: SIGKILL);
  * SIGCONT: logged ("got SIGCONT"), not forwarded;
  * any other (SIGUSR1, SIGUSR2, ...): forwarded to the step (launch_fwd_signal), which
    slurmstepd delivers to every process of the step's container;
- srun exits with the task's exit code (128 + N for a task killed by signal N).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from fake_slurm import default_signals, record, say, signal_container, state


def main(argv: list[str]) -> int:
    record("srun", argv)
    i = 0
    while i < len(argv) and argv[i].startswith("-"):  # srun's own options: --name=value
        i += 1
    cmd = argv[i:]
    job = os.environ["SLURM_JOB_ID"]
    steps = state() / "steps"
    steps.mkdir(parents=True, exist_ok=True)
    step = len(list(steps.glob(f"{job}.*"))) + len(list(steps.glob(f".done.{job}.*")))
    env = dict(os.environ, SLURM_STEP_ID=str(step), SLURM_STEPID=str(step))
    # slurmstepd, not srun, starts the task: default dispositions (fake_slurm.default_signals)
    task = subprocess.Popen(cmd, env=env, start_new_session=True, preexec_fn=default_signals)
    (steps / f"{job}.{step}").write_text(str(task.pid))
    last_int = [0.0]

    def kill_tasks() -> None:
        signal_container(task.pid, signal.SIGKILL)

    def on_signal(signum, _frame):
        if signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
            if signum == signal.SIGQUIT:
                say("srun", "Quit")
            say("srun", "forcing job termination")
            kill_tasks()
        elif signum == signal.SIGINT:
            now = time.monotonic()
            if now - last_int[0] <= 1.0:
                say("srun", f"sending Ctrl-C to StepId={job}.{step}")
                signal_container(task.pid, signal.SIGINT)
                say("srun", "forcing job termination")
                kill_tasks()
            else:
                say("srun", "interrupt (one more within 1 sec to abort)")
                say("srun", f"StepId={job}.{step} task 0: running")
            last_int[0] = now
        elif signum == signal.SIGCONT:
            say("srun", "got SIGCONT")
        else:
            signal_container(task.pid, signum)

    for s in (
        signal.SIGTERM,
        signal.SIGHUP,
        signal.SIGQUIT,
        signal.SIGINT,
        signal.SIGCONT,
        signal.SIGUSR1,
        signal.SIGUSR2,
    ):
        signal.signal(s, on_signal)
    rc = task.wait()
    os.replace(steps / f"{job}.{step}", steps / f".done.{job}.{step}")
    return rc if rc >= 0 else 128 - rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
