"""The exit codes of `cgpt train`, `python -m cgpt.train` and `cgpt launch`: one definition.

A wrapper (the sbatch script, a retry loop, Kubernetes) acts on them: only ``PREEMPTED``
means "a checkpoint was just saved; start the same command again to continue". It is
EX_TEMPFAIL of sysexits.h ("a temporary failure ... the user is invited to retry later"),
a code no shell (126, 127, 128+N), Python (1, 2 for argparse) or launcher gives by itself.

torchrun does not pass a worker's code on (any failed worker makes it raise
ChildFailedError and exit 1; torch/distributed/elastic/multiprocessing/errors), so rank 0
also writes its code into the file named by ``$CGPT_EXIT_FILE`` when that is set: the
sbatch script and `cgpt launch` read the code from there.

Importable without torch.
"""

from __future__ import annotations

import os
from pathlib import Path

from cgpt.model.errors import CgptError

OK = 0  # completed, or stopped at runtime.max_steps
FAILURE = 1  # a crash, or another rank died
USER_ERROR = 2  # bad input: one line, nothing changed on disk
DIVERGED = 3  # non-finite loss or too many skipped steps: rewind with the printed command
COLLECTIVE_TIMEOUT = 4  # no answer from another rank within runtime.collective_timeout_s
PREEMPTED = 75  # stopped by a signal after saving a checkpoint: run the same command again
INTERRUPTED = 130  # Ctrl-C before training started: nothing saved (128 + SIGINT)

# code -> what it means (README's table is this table)
MEANING = {
    OK: "completed (or stopped at runtime.max_steps)",
    FAILURE: "failed: a crash, or another rank died",
    USER_ERROR: "bad input (one line; nothing on disk changed)",
    DIVERGED: "diverged: the message is the rewind command",
    COLLECTIVE_TIMEOUT: "a collective timed out: a rank stalled or died",
    PREEMPTED: "preempted: a checkpoint was saved; run the same command to continue",
    INTERRUPTED: "interrupted before training started; nothing saved",
}

EXIT_FILE_ENV = "CGPT_EXIT_FILE"


class Diverged(CgptError):
    """The run diverged (exit DIVERGED); the message is the command that rewinds it."""

    exit_code = DIVERGED


class CollectiveTimeout(CgptError):
    """A collective outlived runtime.collective_timeout_s (exit COLLECTIVE_TIMEOUT)."""

    exit_code = COLLECTIVE_TIMEOUT


class Preempted(CgptError):
    """Stopped by a signal after saving a checkpoint (exit PREEMPTED), for commands that
    report it as an error line (`cgpt demo`)."""

    exit_code = PREEMPTED


class RankDied(CgptError):
    """Another rank's process died mid-collective (exit FAILURE); the message says which.
    ``reporter``: this rank prints it (rank 0, or the rank that saw rank 0 die)."""

    exit_code = FAILURE
    reporter = False


def code_of(error: BaseException) -> int:
    """The exit code for an error that ended a command: its ``exit_code``, else USER_ERROR
    for a CgptError."""
    return int(getattr(error, "exit_code", USER_ERROR))


def write_exit_file(code: int, env: dict[str, str] | None = None) -> None:
    """Write ``code`` into ``$CGPT_EXIT_FILE`` (if set) for the wrapper that launched us;
    written whole (a temporary file renamed over it), never partly."""
    path = (os.environ if env is None else env).get(EXIT_FILE_ENV)
    if not path:
        return
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(f"{code}\n")
        os.replace(tmp, target)
    except OSError:  # the wrapper falls back on the launcher's own exit code
        tmp.unlink(missing_ok=True)


def read_exit_file(path: str | os.PathLike) -> int | None:
    """The code rank 0 wrote, or None when there is none (it died before writing)."""
    try:
        return int(Path(path).read_text().strip())
    except (OSError, ValueError):
        return None
