"""Data parallel is real: 2 ranks under the `deepspeed` launcher (gloo, CPU) with
micro-batch b give the per-step losses of 1 process with micro-batch 2b."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from helpers import child_env, losses, make_byte_data, make_cfg, write_run_config

from cgpt.train.ports import free_port

pytestmark = pytest.mark.slow


# fp32 matches to float tolerance; bf16 (the default: BF16_Optimizer, fp32 accumulation
# and all-reduce) rounds each rank's micro-batch gradients to bf16, so it matches loosely
@pytest.mark.parametrize("zero_stage, precision, tol", [(1, "fp32", 1e-5), (1, "bf16", 2e-2)])
def test_two_ranks_match_one_rank(tmp_path, zero_stage, precision, tol):
    launcher = shutil.which("deepspeed") or str(Path(os.sys.executable).parent / "deepspeed")
    data = make_byte_data(tmp_path / "data", n_files=6)
    d = make_cfg(
        tmp_path,
        data,
        steps=6,
        batch=8,
        eval_every=3,
        save_every=0,
        zero_stage=zero_stage,
        micro_batch=2,
        out_dir=str(tmp_path / "two"),
        precision=precision,
    )
    two = write_run_config(tmp_path, d, "two.yaml")
    d["runtime"].update(micro_batch=4, out_dir=str(tmp_path / "one"))
    one = write_run_config(tmp_path, d, "one.yaml")
    cmd = [
        launcher,
        "--num_gpus",
        "2",
        "--master_port",
        str(free_port()),
        "--module",
        "cgpt.train",
        str(two),
    ]
    env = child_env(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    r = subprocess.run(
        [os.sys.executable, "-m", "cgpt.train", str(one)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    from cgpt.train.checkpoints import checkpoint as ckpt

    for run, ranks in (("two", 2), ("one", 1)):  # really 2 processes, really 1
        newest = ckpt.newest(tmp_path / run / "checkpoints")[1]
        assert ckpt.read_state(newest)["world_size"] == ranks
    a, b = losses(tmp_path / "two"), losses(tmp_path / "one")
    assert len(a) == len(b) == 6
    torch.testing.assert_close(torch.tensor(a), torch.tensor(b), rtol=tol, atol=tol)
    va, vb = losses(tmp_path / "two", "val_loss"), losses(tmp_path / "one", "val_loss")
    torch.testing.assert_close(torch.tensor(va), torch.tensor(vb), rtol=tol, atol=tol)
    assert a[-1] < a[0]
