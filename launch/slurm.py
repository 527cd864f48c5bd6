"""SLURM: an sbatch script that runs one launcher per node and survives the time limit.

The script (written to RUN_DIR/slurm.sbatch) derives node 0's address and a DeepSpeed
hostfile from ``SLURM_JOB_NODELIST``, starts one ``torchrun`` (or ``deepspeed --no_ssh``)
per node with ``srun``, asks SLURM for SIGUSR1 some minutes before the time limit, forwards
it as SIGTERM so the trainer writes a checkpoint, then requeues the job; the requeued job
runs the same command, whose ``--resume`` continues from the newest checkpoint.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from cgpt.model.errors import CgptError
from cgpt.train.config import write_text_atomic

from cgpt.launch.launchers import Topology, build_command, find_program

SCRIPT_NAME = "slurm.sbatch"
# stand-ins replaced by shell variables after quoting (plain words: shlex leaves them alone)
_NODE_RANK, _MASTER, _HOSTFILE = "CGPT_NODE_RANK", "CGPT_MASTER_ADDR", "CGPT_HOSTFILE"

_TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")


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
    m = _TIME.match(value.strip())
    if not m:
        raise CgptError(f"--time {value!r} is not a SLURM time (e.g. 90, 12:00:00, 2-00:00:00)")
    days, parts = m.group(1), [int(x) for x in m.groups()[1:] if x is not None]
    if days is not None:  # D-H, D-H:M, D-H:M:S
        h, mi, s = parts + [0] * (3 - len(parts))
        return int(days) * 86400 + h * 3600 + mi * 60 + s
    if len(parts) == 3:  # H:M:S
        return parts[0] * 3600 + parts[1] * 60 + parts[2]
    return parts[0] * 60 + (parts[1] if len(parts) == 2 else 0)  # M or M:S


def render_sbatch(topo: Topology, train_args: list[str], run_dir: str | Path,
                  opts: SlurmOptions, launcher: str = "torchrun",
                  workdir: str | Path = ".") -> str:
    """The sbatch script text for `topo.nodes` nodes × `topo.gpus_per_node` GPUs."""
    limit = time_limit_seconds(opts.time)
    if opts.signal_lead_s >= limit:
        raise CgptError(f"--time {opts.time} is shorter than the {opts.signal_lead_s}s the job "
                        "needs to checkpoint before its limit; ask for more time")
    grace = max(30, opts.signal_lead_s - 60)  # leave a minute for requeue and teardown
    run_dir = Path(run_dir).resolve()
    cpus = opts.cpus_per_task or 8 * topo.gpus_per_node
    inner = _per_node_command(topo, train_args, launcher)
    sbatch = [f"--job-name={opts.job_name}", f"--nodes={topo.nodes}", "--ntasks-per-node=1",
              f"--gpus-per-node={topo.gpus_per_node}", f"--cpus-per-task={cpus}",
              f"--time={opts.time}"]
    sbatch += [f"--partition={opts.partition}"] if opts.partition else []
    sbatch += [f"--account={opts.account}"] if opts.account else []
    sbatch += [f"--output={run_dir}/slurm-%j.out", "--open-mode=append",
               f"--signal=B:USR1@{opts.signal_lead_s}", "--requeue"]
    head = "\n".join(f"#SBATCH {shlex.quote(s)}" for s in sbatch)
    return f"""#!/bin/bash
# Written by `cgpt launch --slurm`. Submit with: sbatch {shlex.quote(str(run_dir / SCRIPT_NAME))}
{head}
set -uo pipefail
cd {shlex.quote(str(Path(workdir).resolve()))}

# node 0 of the allocation is the rendezvous master; every node gets the same hostfile
MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"
MASTER_PORT={topo.master_port}
HOSTFILE={shlex.quote(str(run_dir))}/hostfile.$SLURM_JOB_ID
scontrol show hostnames "$SLURM_JOB_NODELIST" | sed 's/$/ slots={topo.gpus_per_node}/' > "$HOSTFILE"
export MASTER_ADDR MASTER_PORT HOSTFILE
# after SIGTERM, torchrun waits this long for the trainer's checkpoint before SIGKILL
export TORCH_ELASTIC_SHUTDOWN_TIMEOUT={grace}
echo "cgpt: job $SLURM_JOB_ID on $SLURM_JOB_NUM_NODES node(s), master $MASTER_ADDR:$MASTER_PORT"

requeue=0
near_time_limit() {{
    echo "cgpt: time limit in {opts.signal_lead_s}s: SIGTERM to the trainer (it checkpoints)"
    requeue=1
    kill -TERM "$srun_pid" 2>/dev/null  # srun forwards it to the launcher on every node
}}
trap near_time_limit USR1

# one launcher per node; SLURM_NODEID is the node rank
srun --ntasks-per-node=1 --cpus-per-task={cpus} --kill-on-bad-exit=1 \\
    bash -c {shlex.quote(inner)} &
srun_pid=$!
# a trapped signal ends `wait` early: keep waiting until the checkpoint is written
while true; do
    wait "$srun_pid"
    rc=$?
    kill -0 "$srun_pid" 2>/dev/null || break
done
if [ "$requeue" = 1 ]; then
    echo "cgpt: requeueing job $SLURM_JOB_ID; the next start resumes from the last checkpoint"
    scontrol requeue "$SLURM_JOB_ID"
fi
exit "$rc"
"""


def _per_node_command(topo: Topology, train_args: list[str], launcher: str) -> str:
    """The launcher command one srun task runs; node rank, master address and hostfile
    are left to the shell on that node."""
    templ = Topology(topo.nodes, topo.gpus_per_node, 0, _MASTER, topo.master_port,
                     _HOSTFILE if launcher == "deepspeed" else None)
    cmd = build_command(launcher, templ, train_args, no_ssh=launcher == "deepspeed",
                        resolve_binary=False)
    try:  # the launcher of this environment (shared filesystem); else whatever PATH has
        cmd[0] = find_program(launcher)
    except CgptError:
        pass
    shell = {_MASTER: '"$MASTER_ADDR"', _HOSTFILE: '"$HOSTFILE"'}
    words = []
    for i, word in enumerate(cmd):
        if i and cmd[i - 1] == "--node_rank":
            words.append('"$SLURM_NODEID"')
        else:
            words.append(shell.get(word, shlex.quote(word)))
    return "exec " + " ".join(words)


def write_sbatch(text: str, run_dir: str | Path) -> Path:
    path = Path(run_dir) / SCRIPT_NAME
    write_text_atomic(path, text)
    path.chmod(0o755)
    return path


def submit(path: str | Path) -> str:
    """sbatch the script; CgptError when sbatch is missing or refuses it."""
    sbatch = shutil.which("sbatch")
    if not sbatch:
        raise CgptError(f"sbatch not found: this machine is not a SLURM login node. The script "
                        f"is at {path}; submit it on the cluster with: sbatch {path}")
    res = subprocess.run([sbatch, str(path)], capture_output=True, text=True)
    if res.returncode:
        msg = (res.stderr or res.stdout).strip().splitlines()
        raise CgptError(f"sbatch refused {path}: {msg[-1] if msg else f'exit {res.returncode}'}")
    return res.stdout.strip()
