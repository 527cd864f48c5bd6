"""`cgpt launch --slurm`: the sbatch script's text, and its behaviour run under stand-ins
for SLURM's programs (scontrol, srun) and the launcher, including the time-limit path:
SIGUSR1 -> SIGTERM to the launcher -> wait for it -> scontrol requeue."""

import os
import shlex
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest

from cgpt.launch import slurm
from cgpt.launch.cli import main
from cgpt.launch.launchers import Topology, train_args
from cgpt.model.errors import CgptError
from test_launch import write_config


def sbatch_lines(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        if line.startswith("#SBATCH --"):
            key, _, value = line[len("#SBATCH --"):].partition("=")
            out[key] = value
    return out


def srun_command(text: str) -> list[str]:
    """The per-node command inside `bash -c '...'` of the srun line."""
    line = text[text.index("bash -c ") + len("bash -c "):].splitlines()[0]
    inner = shlex.split(line)[0]
    return shlex.split(inner)


def test_script_is_valid_bash_with_the_topology(tmp_path, capsys):
    cfg = write_config(tmp_path, global_batch=64)
    assert main(["launch", str(cfg), "--slurm", "--nodes", "4", "--gpus-per-node", "8",
                 "--partition", "gpu", "--account", "proj1", "--time", "2-00:00:00"]) == 0
    path = tmp_path / "run" / "slurm.sbatch"
    assert str(path) in capsys.readouterr().out
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0
    text = path.read_text()
    opts = sbatch_lines(text)
    assert opts["nodes"] == "4" and opts["gpus-per-node"] == "8"
    assert opts["ntasks-per-node"] == "1" and opts["cpus-per-task"] == "64"
    assert opts["partition"] == "gpu" and opts["account"] == "proj1"
    assert opts["time"] == "2-00:00:00" and opts["signal"] == "B:USR1@300" and "requeue" in opts
    assert 'scontrol show hostnames "$SLURM_JOB_NODELIST"' in text
    cmd = srun_command(text)
    assert cmd[0] == "exec" and Path(cmd[1]).name == "torchrun"
    i = cmd.index
    assert cmd[i("--nnodes") + 1] == "4" and cmd[i("--nproc_per_node") + 1] == "8"
    assert cmd[i("--node_rank") + 1] == "$SLURM_NODEID"
    assert cmd[i("--master_addr") + 1] == "$MASTER_ADDR"
    assert cmd[i("-m") + 1:] == ["cgpt.train", str(cfg.resolve()), "--set",
                                  "runtime.micro_batch=2", "--resume"]


def test_deepspeed_variant_uses_the_allocation_hostfile(tmp_path, capsys):
    cfg = write_config(tmp_path, global_batch=16)
    assert main(["launch", str(cfg), "--slurm", "--nodes", "2", "--gpus-per-node", "8",
                 "--launcher", "deepspeed", "--dry-run"]) == 0
    text = capsys.readouterr().out
    cmd = srun_command(text)
    assert Path(cmd[1]).name == "deepspeed"
    assert cmd[cmd.index("--hostfile") + 1] == "$HOSTFILE"
    assert "--no_ssh" in cmd and cmd[cmd.index("--node_rank") + 1] == "$SLURM_NODEID"
    assert not (tmp_path / "run" / "slurm.sbatch").exists()  # --dry-run writes nothing


def test_time_limits():
    assert slurm.time_limit_seconds("90") == 5400
    assert slurm.time_limit_seconds("10:30") == 630
    assert slurm.time_limit_seconds("12:00:00") == 43200
    assert slurm.time_limit_seconds("1-02") == 93600
    assert slurm.time_limit_seconds("1-00:00:10") == 86410
    with pytest.raises(CgptError, match="not a SLURM time"):
        slurm.time_limit_seconds("tomorrow")
    with pytest.raises(CgptError, match="shorter than"):
        slurm.render_sbatch(Topology(1, 8), ["x.yaml"], "run", slurm.SlurmOptions(time="4"))


def test_submit_without_sbatch_says_so(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    cfg = write_config(tmp_path)
    assert main(["launch", str(cfg), "--slurm", "--gpus-per-node", "4", "--submit"]) == 2
    err = capsys.readouterr().err.strip()
    path = tmp_path / "run" / "slurm.sbatch"
    assert "sbatch not found" in err and f"sbatch {path}" in err and path.is_file()


def _shim(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def test_submit_with_sbatch(tmp_path, capsys, monkeypatch):
    _shim(tmp_path, "sbatch", 'echo "Submitted batch job 42 ($1)"\n')
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    assert main(["launch", str(write_config(tmp_path)), "--slurm", "--gpus-per-node", "4",
                 "--submit"]) == 0
    script = tmp_path / "run" / "slurm.sbatch"
    assert f"Submitted batch job 42 ({script})" in capsys.readouterr().out


def test_slurm_needs_gpu_count(tmp_path, capsys):
    assert main(["launch", str(write_config(tmp_path)), "--slurm"]) == 2
    assert "--gpus-per-node" in capsys.readouterr().err


def test_time_limit_checkpoints_then_requeues(tmp_path, monkeypatch):
    """Run the script with stand-in scontrol/srun/torchrun: USR1 must reach the launcher as
    SIGTERM, the script must wait for it to finish its checkpoint, then requeue the job."""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    log = tmp_path / "log"
    _shim(bin_, "scontrol", f'''
if [ "$1 $2" = "show hostnames" ]; then printf 'node-a\\nnode-b\\n'; exit 0; fi
echo "scontrol $*" >> {log}
''')
    _shim(bin_, "srun", 'while [[ "$1" == --* ]]; do shift; done\nexec "$@"\n')
    _shim(bin_, "torchrun", f'''
echo "torchrun $* master=$MASTER_ADDR:$MASTER_PORT grace=$TORCH_ELASTIC_SHUTDOWN_TIMEOUT" >> {log}
trap 'sleep 1; echo "checkpoint written" >> {log}; exit 0' TERM
echo started > {tmp_path}/started
while true; do sleep 0.1; done
''')
    monkeypatch.setattr(slurm, "find_program", lambda name: (_ for _ in ()).throw(CgptError("")))
    run_dir = tmp_path / "run"
    text = slurm.render_sbatch(Topology(2, 4), train_args(tmp_path / "run.yaml", [], True),
                               run_dir, slurm.SlurmOptions(), workdir=tmp_path)
    path = slurm.write_sbatch(text, run_dir)
    env = dict(os.environ, PATH=f"{bin_}:{os.environ['PATH']}", SLURM_JOB_ID="77",
               SLURM_JOB_NODELIST="node-[a-b]", SLURM_JOB_NUM_NODES="2", SLURM_NODEID="1")
    job = subprocess.Popen(["bash", str(path)], env=env, stdout=subprocess.PIPE, text=True)
    deadline = time.time() + 20
    while not (tmp_path / "started").exists():
        assert time.time() < deadline and job.poll() is None, "the launcher never started"
        time.sleep(0.05)
    job.send_signal(signal.SIGUSR1)
    out, _ = job.communicate(timeout=30)
    lines = log.read_text().splitlines()
    assert lines[0].startswith("torchrun --nnodes 2 --nproc_per_node 4 --node_rank 1 ")
    assert "master=node-a:29500 grace=240" in lines[0] and lines[0].count("--resume") == 1
    assert lines[1:] == ["checkpoint written", "scontrol requeue 77"]  # in this order
    assert (run_dir / "hostfile.77").read_text() == "node-a slots=4\nnode-b slots=4\n"
    assert "requeueing job 77" in out and job.returncode == 0
