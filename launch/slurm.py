"""SLURM: an sbatch script that runs one launcher per node and survives the time limit.

The script (RUN_DIR/slurm.sbatch) starts one launcher per node with ``srun``. Before the time
limit USR1 reaches every rank (never SIGTERM to srun), each checkpoints the same step and exits
PREEMPTED, and only then is the job requeued to ``--resume``. Nothing the user typed can change
what the script does: values are checked or quoted and the file is written atomically. Signal
path and quoting rules: docs/DESIGN-NOTES.md, launch/slurm.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from cgpt.launch.launchers import Topology, build_command, check_count, find_program
from cgpt.model.errors import CgptError
from cgpt.model.files import write_atomic
from cgpt.train.exit_codes import PREEMPTED

SCRIPT_NAME = "slurm.sbatch"
# stand-ins for the launcher's master address and hostfile; the script's shell variables
# replace them by position (the word after --master_addr / --hostfile / --node_rank)
_MASTER, _HOSTFILE = "CGPT_MASTER_ADDR", "CGPT_HOSTFILE"

# values of #SBATCH lines: SLURM names (partition, account, job name) and, for the output
# file, a path; sbatch reads these lines itself (not bash), so nothing else may get in
_NAME_CHAR = re.compile(r"[A-Za-z0-9_.+,:=-]")
NAME_CHARS = "letters, digits and _ . - + , : ="
_PATH_CHAR = re.compile(r"[A-Za-z0-9_.+,:=/-]")
_TIME_CHAR = re.compile(r"[0-9:-]")
_TIME = re.compile(r"(?:([0-9]+)-)?([0-9]+)(?::([0-9]+))?(?::([0-9]+))?")
# the final guard on every #SBATCH argument as written (%j: the job id; @: the signal time)
_SBATCH_ARG = re.compile(r"--[a-z-]+(?:=[A-Za-z0-9_.+,:=/%@-]+)?")
SIGNAL_MAX_S = 65535  # SLURM's limit on --signal's time


def _bad_char(value: str, allowed: re.Pattern) -> str | None:
    return next((c for c in value if not allowed.fullmatch(c)), None)


def check_name(label: str, value: str, hint: str = "") -> str:
    """`value` if it is a valid SLURM name (partition, account, job name); else CgptError
    naming `label` and the first character that is not allowed."""
    if not isinstance(value, str) or not value:
        raise CgptError(f"{label} is empty{hint}")
    bad = _bad_char(value, _NAME_CHAR)
    if bad is not None:
        raise CgptError(
            f"{label} {value!r} contains {bad!r}; a SLURM name may only use {NAME_CHARS}{hint}"
        )
    return value


def check_printable(label: str, value: str) -> str:
    """`value` if it has no control character (newline, tab, NUL, ...) nor line separator:
    such a value would split a line of the script (or of SLURM's own files)."""
    bad = next((c for c in value if unicodedata.category(c) in ("Cc", "Zl", "Zp")), None)
    if bad is not None:
        raise CgptError(
            f"{label} {value!r} contains the control character {bad!r}, which "
            "cannot go into a job script"
        )
    return value


def output_in_header(run_dir: str | Path) -> bool:
    """True when the run folder's path can go into `#SBATCH --output`; otherwise the
    script redirects its own output into the run folder."""
    path = str(Path(run_dir).resolve())
    return _bad_char(path, _PATH_CHAR) is None


@dataclass(frozen=True)
class SlurmOptions:
    time: str = "24:00:00"
    partition: str | None = None
    account: str | None = None
    cpus_per_task: int | None = None  # default: 8 per GPU (data loading, launcher, NCCL)
    signal_lead_s: int = 300  # SIGUSR1 this long before the time limit
    job_name: str = "cgpt"


def time_limit_seconds(value: str) -> int:
    """Seconds in a SLURM --time value: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S."""
    if not isinstance(value, str):
        raise CgptError(f"--time {value!r} is not a SLURM time (e.g. 90, 12:00:00, 2-00:00:00)")
    bad = _bad_char(value, _TIME_CHAR)
    m = _TIME.fullmatch(value)
    if bad is not None or not m:
        why = f": {bad!r} is not allowed" if bad is not None else ""
        raise CgptError(
            f"--time {value!r} is not a SLURM time (e.g. 90, 12:00:00, 2-00:00:00){why}"
        )
    days, parts = m.group(1), [int(x) for x in m.groups()[1:] if x is not None]
    if days is not None:  # D-H, D-H:M, D-H:M:S
        h, mi, s = parts + [0] * (3 - len(parts))
        return int(days) * 86400 + h * 3600 + mi * 60 + s
    if len(parts) == 3:  # H:M:S
        return parts[0] * 3600 + parts[1] * 60 + parts[2]
    return parts[0] * 60 + (parts[1] if len(parts) == 2 else 0)  # M or M:S


def render_sbatch(
    topo: Topology,
    train_args: list[str],
    run_dir: str | Path,
    opts: SlurmOptions,
    launcher: str = "torchrun",
    workdir: str | Path = ".",
) -> str:
    """The sbatch script text for `topo.nodes` nodes × `topo.gpus_per_node` GPUs.

    Every value is checked first (CgptError, one line, nothing written): names in the
    #SBATCH lines against the SLURM name characters, the time format, the counts, and no
    control characters anywhere; every word of a command line is shell-quoted."""
    # all the checks before any text exists
    cpus = _check_options(topo, train_args, opts)
    run_dir = Path(run_dir).resolve()
    workdir = Path(workdir).resolve()
    check_printable("runtime.out_dir", str(run_dir))
    check_printable("the working directory", str(workdir))
    inner = _per_node_command(topo, train_args, launcher)
    head, redirect = _sbatch_header(topo, opts, cpus, run_dir)
    return _setup_text(topo, opts, run_dir, workdir, head, redirect) + _run_text(opts, cpus, inner)


def _check_options(topo: Topology, train_args: list[str], opts: SlurmOptions) -> int:
    """Check the counts, names, time limit and trainer arguments; the CPUs per task."""
    check_count("--nodes", topo.nodes, 1)
    check_count("--gpus-per-node", topo.gpus_per_node, 1)
    check_count("--master-port", topo.master_port, 1, 65535)
    check_count("--signal-lead", opts.signal_lead_s, 1, SIGNAL_MAX_S)
    cpus = 8 * topo.gpus_per_node if opts.cpus_per_task is None else opts.cpus_per_task
    check_count("--cpus-per-task", cpus, 1)
    check_name("--job-name", opts.job_name)
    for label, value in (("--partition", opts.partition), ("--account", opts.account)):
        if value is not None:
            check_name(label, value)
    limit = time_limit_seconds(opts.time)
    if opts.signal_lead_s >= limit:
        raise CgptError(
            f"--time {opts.time} is shorter than the {opts.signal_lead_s}s the job "
            "needs to checkpoint before its limit; ask for more time"
        )
    for i, arg in enumerate(train_args):
        check_printable(
            "the config path"
            if i == 0
            else "--set"
            if train_args[i - 1] == "--set"
            else "a trainer argument",
            arg,
        )
    return cpus


def _sbatch_header(topo: Topology, opts: SlurmOptions, cpus: int, run_dir: Path) -> tuple[str, str]:
    """The ``#SBATCH`` lines (each argument guarded by _SBATCH_ARG) and, when the run
    folder's path cannot go into ``--output``, the script's own redirect into it."""
    sbatch = [
        f"--job-name={opts.job_name}",
        f"--nodes={topo.nodes}",
        "--ntasks-per-node=1",
        f"--gpus-per-node={topo.gpus_per_node}",
        f"--cpus-per-task={cpus}",
        f"--time={opts.time}",
    ]
    sbatch += [f"--partition={opts.partition}"] if opts.partition is not None else []
    sbatch += [f"--account={opts.account}"] if opts.account is not None else []
    if output_in_header(run_dir):
        sbatch += [f"--output={run_dir}/slurm-%j.out", "--open-mode=append"]
        redirect = ""
    else:  # sbatch cannot take this path: the script sends its own output there
        redirect = (
            "# the run folder's path has characters an #SBATCH line cannot carry: the "
            "job's output goes there from here on\n"
            f'exec >>{shlex.quote(str(run_dir))}/"slurm-$SLURM_JOB_ID.out" 2>&1\n'
        )
    sbatch += [f"--signal=B:USR1@{opts.signal_lead_s}", "--requeue"]
    for arg in sbatch:  # the guard: only checked values can have got here
        if not _SBATCH_ARG.fullmatch(arg):
            raise CgptError(f"internal error: unsafe #SBATCH argument {arg!r}")
    return "\n".join(f"#SBATCH {arg}" for arg in sbatch), redirect


def _setup_text(
    topo: Topology, opts: SlurmOptions, run_dir: Path, workdir: Path, head: str, redirect: str
) -> str:
    """The script up to the launch: header, master address, hostfile, exit-code file."""
    q = shlex.quote
    grace = max(30, opts.signal_lead_s - 60)  # leave a minute for requeue and teardown
    return f"""#!/bin/bash
# Written by `cgpt launch --slurm`. Submit with: sbatch {q(str(run_dir / SCRIPT_NAME))}
{head}
set -uo pipefail
{redirect}cd {q(str(workdir))}

# node 0 of the allocation is the rendezvous master; every node gets the same hostfile
MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"
MASTER_PORT={topo.master_port}
HOSTFILE={q(str(run_dir))}/hostfile.$SLURM_JOB_ID
scontrol show hostnames "$SLURM_JOB_NODELIST" | sed 's/$/ slots={topo.gpus_per_node}/' > "$HOSTFILE"
export MASTER_ADDR MASTER_PORT HOSTFILE
# after a SIGTERM (scancel, the time limit itself) torchrun waits this long for the ranks
export TORCH_ELASTIC_SHUTDOWN_TIMEOUT={grace}
# rank 0 writes the run's exit code here: torchrun passes only 1 on for any failed rank
export CGPT_EXIT_FILE={q(str(run_dir))}/.exit-code.$SLURM_JOB_ID
rm -f "$CGPT_EXIT_FILE"
echo "cgpt: job $SLURM_JOB_ID on $SLURM_JOB_NUM_NODES node(s), master $MASTER_ADDR:$MASTER_PORT"

"""


def _run_text(opts: SlurmOptions, cpus: int, inner: str) -> str:
    """The rest: the USR1 trap, one launcher per node, the wait, requeue on PREEMPTED."""
    return f"""near_time_limit() {{
    echo "cgpt: SIGUSR1 (time limit in {opts.signal_lead_s}s, or scancel): every rank checkpoints"
    # every process of the job's steps, not this shell; the launchers ignore it (see srun)
    scancel --signal=USR1 "$SLURM_JOB_ID"
}}
trap near_time_limit USR1

# one launcher per node (SLURM_NODEID is the node rank), with USR1 ignored so that only the
# ranks, which install their own handler, act on it
srun --ntasks-per-node=1 --cpus-per-task={cpus} --kill-on-bad-exit=1 \\
    bash -c {shlex.quote('trap "" USR1; ' + inner)} &
srun_pid=$!
# a trapped signal ends `wait` early: keep waiting until the step has ended
while true; do
    wait "$srun_pid"
    rc=$?
    kill -0 "$srun_pid" 2>/dev/null || break
done
code="$(cat "$CGPT_EXIT_FILE" 2>/dev/null)"
case "$code" in
    ""|*[!0-9]*) code=$rc ;;  # rank 0 reported nothing (it died): srun's code
esac
rm -f "$CGPT_EXIT_FILE"
if [ "$code" = {PREEMPTED} ]; then
    echo "cgpt: checkpoint saved; requeueing job $SLURM_JOB_ID, the next start resumes from it"
    scontrol requeue "$SLURM_JOB_ID"
fi
echo "cgpt: exit $code"
exit "$code"
"""


def _per_node_command(topo: Topology, train_args: list[str], launcher: str) -> str:
    """The launcher command one srun task runs; node rank, master address and hostfile
    are left to the shell on that node. Every other word is shell-quoted."""
    templ = Topology(
        topo.nodes,
        topo.gpus_per_node,
        0,
        _MASTER,
        topo.master_port,
        _HOSTFILE if launcher == "deepspeed" else None,
    )
    cmd = build_command(
        launcher, templ, train_args, no_ssh=launcher == "deepspeed", resolve_binary=False
    )
    try:  # the launcher of this environment (shared filesystem); else whatever PATH has
        cmd[0] = find_program(launcher)
    except CgptError:
        pass
    check_printable(f"the {launcher} path", cmd[0])
    # by position, in the launcher's own options only (never inside the trainer's arguments)
    n_launcher = len(cmd) - len(train_args)
    assert cmd[n_launcher:] == list(train_args)
    shell = {
        "--node_rank": '"$SLURM_NODEID"',
        "--master_addr": '"$MASTER_ADDR"',
        "--hostfile": '"$HOSTFILE"',
    }
    words = []
    for i, word in enumerate(cmd):
        flag = cmd[i - 1] if 0 < i < n_launcher else None
        words.append(shell[flag] if flag in shell else shlex.quote(word))
    return "exec " + " ".join(words)


def write_sbatch(text: str, run_dir: str | Path) -> Path:
    """Write RUN_DIR/slurm.sbatch atomically (cgpt.model.files.write_atomic: no reader ever
    sees a partial script), executable as the umask allows."""
    path = Path(run_dir) / SCRIPT_NAME
    try:
        # surrogateescape: a path that is not UTF-8 is written back as its original bytes
        return write_atomic(path, text, executable=True)
    except OSError as e:
        raise CgptError(f"cannot write {path}: {e.strerror or e}") from None


def submit(path: str | Path) -> str:
    """sbatch the script; CgptError when sbatch is missing or refuses it."""
    sbatch = shutil.which("sbatch")
    if not sbatch:
        raise CgptError(
            f"sbatch not found: this machine is not a SLURM login node. The script "
            f"is at {path}; submit it on the cluster with: sbatch {path}"
        )
    res = subprocess.run([sbatch, str(path)], capture_output=True, text=True)
    if res.returncode:
        msg = (res.stderr or res.stdout).strip().splitlines()
        raise CgptError(f"sbatch refused {path}: {msg[-1] if msg else f'exit {res.returncode}'}")
    return res.stdout.strip()
