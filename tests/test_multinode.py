"""Multi-node for real on one machine: two `cgpt launch` processes are node 0 and node 1 of
a two-node job on loopback (master 127.0.0.1, gloo on the CPU), with torchrun
(--nnodes 2 --node_rank R) and with DeepSpeed's launcher (hostfile, --no_ssh --node_rank R).

They must train ONE model together: the two-node run's losses equal those of a single
process training the same plan (the loader gives a global step the same sequences whatever
the split, and the loss is averaged over ranks), each step consumes the global batch, and
the checkpoint records a world size of 2.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import child_env

from cgpt.train.data.shards import write_token_data
from cgpt.train.ports import free_port

pytestmark = pytest.mark.slow

VOCAB, SEQ, GLOBAL_BATCH, STEPS = 128, 16, 4, 3


def _config(tmp_path: Path, out: str) -> Path:
    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    if not data.exists():
        write_token_data(
            data, rng.integers(1, VOCAB, 4000), rng.integers(1, VOCAB, 400), VOCAB, eos_id=0
        )
    cfg = {
        "model": {"n_layer": 2, "n_embd": 32, "n_head": 2, "n_positions": SEQ, "vocab_size": VOCAB},
        "data": {"path": str(data)},
        "plan": {
            "params": 30000,
            "seq_len": SEQ,
            "tokens": STEPS * GLOBAL_BATCH * SEQ,
            "steps": STEPS,
            "global_batch_seqs": GLOBAL_BATCH,
            "lr": 3e-3,
            "min_lr": 3e-4,
            "warmup_steps": 1,
            "decay_steps": 2,
        },
        "runtime": {
            "out_dir": str(tmp_path / out),
            "micro_batch": 2,
            "precision": "fp32",
            "zero_stage": 1,
            "device": "cpu",
            "eval_every": 0,
            "eval_batches": 2,
            "save_every": 0,
            "wandb": "off",
            "export_hf": False,
            "log_every": 1,
        },
    }
    path = tmp_path / f"{out}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _train_losses(run_dir: Path) -> list[tuple[int, int, float]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["tokens"], r["loss"]) for r in rows if "loss" in r]


@pytest.fixture(scope="module")
def alone(tmp_path_factory) -> list[tuple[int, int, float]]:
    """Losses of one process training the same plan (the reference)."""
    tmp = tmp_path_factory.mktemp("reference")
    one = _config(tmp, "one-process")
    res = subprocess.run(
        [sys.executable, "-m", "cgpt.launch", "train", str(one)],
        env=child_env(OMP_NUM_THREADS="1"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return _train_losses(tmp / "one-process")


# torchrun: --nnodes 2 --node_rank R; deepspeed: a two-host hostfile, --no_ssh --node_rank R
NODE_ARGS = {
    "torchrun": ["--launcher", "torchrun", "--nodes", "2", "--gpus-per-node", "1"],
    "deepspeed": ["--launcher", "deepspeed", "--hostfile", "HOSTS", "--no-ssh"],
}


@pytest.mark.parametrize("launcher", list(NODE_ARGS))
def test_two_nodes_on_loopback_train_one_model(tmp_path, launcher, alone):
    (tmp_path / "hosts").write_text("node0 slots=1\nnode1 slots=1\n")
    extra = [str(tmp_path / "hosts") if a == "HOSTS" else a for a in NODE_ARGS[launcher]]
    two = _config(tmp_path, "two-nodes")
    port = str(free_port())
    nodes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cgpt.launch",
                "launch",
                str(two),
                *extra,
                "--node-rank",
                str(rank),
                "--master-addr",
                "127.0.0.1",
                "--master-port",
                port,
            ],
            env=child_env(OMP_NUM_THREADS="1"),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    outs = [n.communicate(timeout=300)[0] for n in nodes]
    for rank, (node, out) in enumerate(zip(nodes, outs)):
        assert node.returncode == 0, f"node {rank} failed:\n{out[-3000:]}"
        assert f"--node_rank {rank}" in out  # the printed command

    together = _train_losses(tmp_path / "two-nodes")
    assert [s for s, _, _ in together] == list(range(1, STEPS + 1))
    # every optimizer step consumed the whole global batch, split over the two nodes
    assert [t for _, t, _ in together] == [s * GLOBAL_BATCH * SEQ for s in range(1, STEPS + 1)]
    np.testing.assert_allclose([v for *_, v in together], [v for *_, v in alone], rtol=1e-4)
    from cgpt.train.checkpoints import checkpoint as ckpt

    _, newest = ckpt.newest(tmp_path / "two-nodes" / "checkpoints")
    assert ckpt.read_state(newest)["world_size"] == 2
